"""Weak-constraint 4DVAR: initial state plus a smooth model-error forcing, batched over windows.

The model is taken as imperfect: each step adds a forcing ``η`` to the
tendency of some state variables (by default the velocity)

    x_{k+1} = M(x_k) + dt · P η_k ,        k = 0 … window − 2,

``P`` placing the ``η`` channels into the state.  ``η`` is either one field per
window (``error="constant"``: a steady forcing, e.g. a missing wind stress or
Coriolis-like drift) or one field per step (``error="per_step"``).  The control
is ``(x₀, η)`` and the cost adds the model-error term ``½‖η‖²_{Q⁻¹}`` to the
strong-constraint terms of :class:`~xda_hybrid.variational.cost.FourDVarCost`:

    J(x₀, η) = ½‖x₀ − x_b‖²_{B⁻¹} + ½ Σ_t ‖H(x_t) − y_t‖²_{R_t⁻¹}
               + α ½‖∇w₀‖² + β ½‖∇·w₀‖²
               + Σ_k [ q ½‖η_k‖² + q_∇ ½‖∇η_k‖² ] + q_t ½ Σ_k ‖η_{k+1} − η_k‖²

(``∇`` from neighbouring-cell differences, as in the Tikhonov terms).  ``η`` is
in state units per model time unit.  The control is packed in one tensor
``(batch, C + F·E, *space)`` — the ``C`` state channels then ``F`` fields of
``E`` model-error channels — so that the existing batched
:func:`~xda_hybrid.variational.lbfgs.lbfgs` minimises it unchanged;
:meth:`WeakFourDVarCost.split` / :meth:`WeakFourDVarCost.join` convert.

The stored control holds ``η / error_scale`` (a diagonal preconditioner: with
``error_scale`` of the order of the expected forcing, the L-BFGS sees
variables of comparable size); the cost, :meth:`split` and the results are in
physical units.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..models.base import CFLError, DynamicalModel
from ..observation import ObservationOperator, Observations
from .cost import Background, FourDVarCost
from .lbfgs import LBFGSResult, lbfgs
from .regularisers import _dx, _dy

__all__ = ["WeakFourDVarCost", "WeakResult", "weak_fourdvar"]

_ERRORS = ("constant", "per_step")


class WeakFourDVarCost(FourDVarCost):
    """Weak-constraint 4DVAR cost of controls ``(x₀, η)`` for a window of observations.

    Parameters
    ----------
    model : DynamicalModel
    obs_operator : ObservationOperator
    window : int
        Frames in the window (``window − 1`` model steps, hence ``window − 1``
        forcing fields with ``error="per_step"``).
    grad_weight, div_weight : float
        Tikhonov weights α, β on the initial velocity (as in :class:`FourDVarCost`).
    error : {"constant", "per_step"}
        One forcing field per window, or one per step.
    error_channels : sequence of str, optional
        State variables that receive the forcing (default: the model's
        velocity, else every channel).
    error_weight : float
        ``q``: inverse variance of each forcing value (units of η⁻²), > 0.
    error_grad_weight : float
        ``q_∇``: weight of the spatial smoothness of η (neighbouring-cell differences), >= 0.
    error_time_weight : float
        ``q_t``: weight of the step-to-step changes of η (``"per_step"`` only), >= 0.
    error_scale : float
        Scale of η in the packed control (preconditioning only; the minimum does not depend on it).

    Raises
    ------
    ValueError
        For an invalid option, or a window with no model step.
    """

    def __init__(
        self,
        model: DynamicalModel,
        obs_operator: ObservationOperator,
        window: int,
        grad_weight: float = 0.0,
        div_weight: float = 0.0,
        error: str = "constant",
        error_channels: Sequence[str] | None = None,
        error_weight: float = 1.0,
        error_grad_weight: float = 0.0,
        error_time_weight: float = 0.0,
        error_scale: float = 1.0,
    ):
        super().__init__(model, obs_operator, window, grad_weight=grad_weight, div_weight=div_weight)
        if error not in _ERRORS:
            raise ValueError(f"error must be one of {_ERRORS}, got {error!r}")
        if self.window < 2:
            raise ValueError("weak-constraint 4DVAR needs a window of at least 2 frames (one model step)")
        for name, val in (("error_grad_weight", error_grad_weight), ("error_time_weight", error_time_weight)):
            if not (math.isfinite(val) and val >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {val!r}")
        if not (math.isfinite(error_weight) and error_weight > 0):
            raise ValueError(f"error_weight must be a finite number > 0 (a bounded model error), got {error_weight!r}")
        if not (math.isfinite(error_scale) and error_scale > 0):
            raise ValueError(f"error_scale must be a finite number > 0, got {error_scale!r}")
        if error_time_weight and error == "constant":
            raise ValueError("error_time_weight applies to error='per_step' only")
        if error_channels is None:
            error_channels = model.velocity_names or model.state_names
        if isinstance(error_channels, str):
            error_channels = [error_channels]
        self.error = error
        self.error_channels = tuple(model.channel(c) for c in error_channels)
        if len(set(self.error_channels)) != len(self.error_channels):
            raise ValueError(f"error_channels repeat a variable: {list(error_channels)}")
        self.error_weight = float(error_weight)
        self.error_grad_weight = float(error_grad_weight)
        self.error_time_weight = float(error_time_weight)
        self.error_scale = float(error_scale)
        dt = getattr(model, "dt", 1.0)
        self.dt = float(dt) if isinstance(dt, (int, float)) else 1.0

    # -- packing -----------------------------------------------------------
    @property
    def n_error_fields(self) -> int:
        """Forcing fields per window (1, or ``window − 1``)."""
        return 1 if self.error == "constant" else self.window - 1

    @property
    def n_control_channels(self) -> int:
        return self.model.n_channels + self.n_error_fields * len(self.error_channels)

    def split(self, control: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``control (batch, C + F·E, *space)`` → ``x₀ (batch, C, *space)``, ``η (batch, F, E, *space)``.

        ``η`` in physical units (state units per model time unit).
        """
        c = self.model.n_channels
        if control.ndim < 2 or control.shape[1] != self.n_control_channels:
            raise ValueError(
                f"control must be (batch, {self.n_control_channels} = {c} state + "
                f"{self.n_error_fields}×{len(self.error_channels)} model-error channels, *space), "
                f"got {tuple(control.shape)}"
            )
        x0 = control[:, :c]
        eta = control[:, c:].reshape(control.shape[0], self.n_error_fields, len(self.error_channels),
                                     *control.shape[2:])
        return x0, eta * self.error_scale

    def join(self, x0: torch.Tensor, eta: torch.Tensor | None = None) -> torch.Tensor:
        """Pack ``x₀`` and ``η`` (default 0) into a control; inverse of :meth:`split`."""
        self.model.check_state(x0)
        shape = (x0.shape[0], self.n_error_fields, len(self.error_channels), *x0.shape[2:])
        if eta is None:
            eta = x0.new_zeros(shape)
        elif tuple(eta.shape) != shape:
            raise ValueError(f"eta must have shape {shape} (batch, fields, error channels, *space), got {tuple(eta.shape)}")
        return torch.cat([x0, (eta / self.error_scale).flatten(1, 2).to(x0)], 1)

    # -- dynamics ----------------------------------------------------------
    def _forcing(self, eta_k: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``dt · P η_k`` as a full state increment ``(batch, C, *space)``."""
        chans = list(self.error_channels)
        if chans == list(range(like.shape[1])):
            return self.dt * eta_k
        inc = like.new_zeros(like.shape)
        inc[:, chans] = self.dt * eta_k
        return inc

    def trajectory(self, control: torch.Tensor) -> torch.Tensor:
        """Forced trajectory over the window, ``(batch, window, C, *space)``.

        Accepts a control ``(batch, C + F·E, *space)``, or a plain state
        ``(batch, C, *space)`` (then ``η = 0``: the strong-constraint trajectory).
        """
        if control.shape[1] == self.model.n_channels:
            return self.model(control, self.window - 1)
        x, eta = self.split(control)
        self.model.check_state(x)
        increments = [self._forcing(eta[:, f], x) for f in range(self.n_error_fields)]
        return self.model.forced(x, self.window - 1, increments)

    def check(self, control: torch.Tensor, obs: Observations) -> None:
        x0, _ = self.split(control)
        super().check(x0, obs)

    # -- cost --------------------------------------------------------------
    def _spatial_grad_sq(self, f: torch.Tensor) -> torch.Tensor:
        """Σ squared neighbouring-cell differences over the spatial axes, per batch row."""
        nd = len(self.model.spatial_dims)
        tot = f.new_zeros(f.shape[0])
        if nd >= 1:
            tot = tot + (_dx(f) ** 2).flatten(1).sum(1)
        if nd >= 2:
            tot = tot + (_dy(f) ** 2).flatten(1).sum(1)
        return tot

    def model_error_penalty(self, eta: torch.Tensor) -> torch.Tensor:
        """``½ Σ_k [q‖η_k‖² + q_∇‖∇η_k‖²] + q_t ½ Σ_k ‖η_{k+1} − η_k‖²`` per window, shape (batch,).

        With ``error="constant"`` the single field stands for every step of the
        window, so its terms are counted ``window − 1`` times (the same prior
        per step as a per-step forcing that happens to be constant).
        """
        reps = self.window - 1 if self.error == "constant" else 1
        pen = self.error_weight * (eta**2).flatten(1).sum(1)
        if self.error_grad_weight:
            pen = pen + self.error_grad_weight * self._spatial_grad_sq(eta)
        pen = 0.5 * reps * pen
        if self.error_time_weight and eta.shape[1] > 1:
            pen = pen + 0.5 * self.error_time_weight * ((eta[:, 1:] - eta[:, :-1]) ** 2).flatten(1).sum(1)
        return pen

    def forward(
        self, control: torch.Tensor, obs: Observations, background: Background | None = None
    ) -> dict[str, torch.Tensor]:
        """Cost terms per window.

        Parameters
        ----------
        control : Tensor, shape (batch, C + F·E, *space)
            Packed ``(x₀, η)`` (see :meth:`join`).
        obs : Observations
        background : Background, optional
            On ``x₀`` only.

        Returns
        -------
        dict of Tensor, each of shape (batch,)
            ``total``, ``obs``, ``background``, ``grad``, ``div``, ``model_error``.
        """
        self.check(control, obs)
        x0, eta = self.split(control)
        terms = self.obs_and_prior_terms(x0, self.trajectory(control), obs, background)
        terms["model_error"] = self.model_error_penalty(eta)
        terms["total"] = terms["obs"] + terms["background"] + terms["grad"] + terms["div"] + terms["model_error"]
        return terms


@dataclass
class WeakResult(LBFGSResult):
    """:class:`~xda_hybrid.variational.lbfgs.LBFGSResult` of :func:`weak_fourdvar`.

    ``x`` is the analysed initial state ``x₀`` (batch, C, *space), as for
    strong-constraint 4DVAR; in addition:

    Attributes
    ----------
    model_error : Tensor, shape (batch, F, E, *space)
        The analysed forcing ``η`` (state units per model time unit).
    control : Tensor, shape (batch, C + F·E, *space)
        The packed optimum (for warm starts).
    """

    model_error: torch.Tensor | None = None
    control: torch.Tensor | None = None


def weak_fourdvar(
    cost: WeakFourDVarCost,
    obs: Observations,
    x_init: torch.Tensor,
    eta_init: torch.Tensor | None = None,
    background: Background | None = None,
    max_iter: int = 100,
    history_size: int = 10,
    gtol: float = 1e-7,
    ftol: float = 1e-10,
    progress: bool = False,
) -> WeakResult:
    """Minimise the weak-constraint cost of every window, independently, by batched L-BFGS.

    Parameters
    ----------
    cost : WeakFourDVarCost
    obs : Observations
    x_init : Tensor, shape (batch, C, *space)
        First guess of ``x₀``; or a packed control ``(batch, C + F·E, *space)`` (warm start).
    eta_init : Tensor, shape (batch, F, E, *space), optional
        First guess of ``η`` (default 0; not with a packed ``x_init``).
    background : Background, optional
        On ``x₀``.
    max_iter, history_size, gtol, ftol, progress
        See :func:`~xda_hybrid.variational.lbfgs.lbfgs`.

    Returns
    -------
    WeakResult
    """
    if not isinstance(cost, WeakFourDVarCost):
        raise TypeError(f"cost must be a WeakFourDVarCost, got {type(cost).__name__}")
    if x_init.ndim >= 2 and x_init.shape[1] == cost.n_control_channels and x_init.shape[1] != cost.model.n_channels:
        if eta_init is not None:
            raise ValueError("give eta_init only with a state x_init, not with a packed control")
        c0 = x_init.detach()
    else:
        c0 = cost.join(x_init.detach(), None if eta_init is None else eta_init.detach())
    cost.check(c0, obs)
    res = lbfgs(
        lambda c: cost(c, obs, background)["total"],
        c0,
        max_iter=max_iter,
        history_size=history_size,
        gtol=gtol,
        ftol=ftol,
        progress=progress,
        reject=(CFLError,),
    )
    x0, eta = cost.split(res.x)
    return WeakResult(
        x=x0, cost=res.cost, history=res.history, n_iter=res.n_iter, n_eval=res.n_eval,
        converged=res.converged, wall_time=res.wall_time, message=res.message,
        model_error=eta, control=res.x,
    )
