"""Strong-constraint 4DVAR cost, batched over independent windows.

    J(x₀) = ½‖x₀ − x_b‖²_{B⁻¹} + ½ Σ_t ‖H(M_{0→t}(x₀)) − y_t‖²_{R_t⁻¹}
            + α ½‖∇w₀‖² + β ½‖∇·w₀‖²

Each term is returned per window, shape ``(batch,)``, so that a sum over the
batch is a sum of independent problems.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.base import DynamicalModel
from ..observation import ObservationOperator, Observations
from .regularisers import divergence_penalty, gradient_penalty


@dataclass(frozen=True)
class Background:
    """Background state and diagonal inverse covariance.

    Attributes
    ----------
    state : Tensor, shape (batch, channel, *space)
        ``x_b``.
    inv_var : Tensor broadcastable to ``state``
        Diagonal of ``B⁻¹`` (0 switches a component off).
    """

    state: torch.Tensor
    inv_var: torch.Tensor | float

    def __getitem__(self, idx) -> "Background":
        iv = self.inv_var
        if isinstance(iv, torch.Tensor) and iv.ndim == self.state.ndim and iv.shape[0] == self.state.shape[0]:
            iv = iv[idx]
        return Background(self.state[idx], iv)


class FourDVarCost(torch.nn.Module):
    """4DVAR cost of initial states for a window of observations.

    Parameters
    ----------
    model : DynamicalModel
    obs_operator : ObservationOperator
    window : int
        Frames in the window (the model runs ``window - 1`` steps).
    grad_weight, div_weight : float
        Weights α, β of the Tikhonov terms on the initial velocity (models
        with ``velocity_names`` only).
    compile : bool
        Run the model's trajectory through :func:`torch.compile` (the model
        itself is left as it is).  It pays off for long trainings of the
        explicit models: on 2 CPU cores, forward + adjoint 2.0x faster for
        Lorenz96 and 1.6x for shallow water, after a one-off compilation of
        2-20 s; it slows the semi-Lagrangian models down
        (``benchmarks/compile_speedup.py``).
    """

    def __init__(
        self,
        model: DynamicalModel,
        obs_operator: ObservationOperator,
        window: int,
        grad_weight: float = 0.0,
        div_weight: float = 0.0,
        compile: bool = False,
    ):
        super().__init__()
        if int(window) < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        if obs_operator.steps is not None and obs_operator.steps[-1] >= window:
            raise ValueError(f"observed step {obs_operator.steps[-1]} is outside a window of {window} frames")
        if (grad_weight or div_weight) and not model.velocity_names:
            raise ValueError(f"{type(model).__name__} has no velocity: grad_weight/div_weight must be 0")
        if grad_weight < 0 or div_weight < 0:
            raise ValueError("grad_weight and div_weight must be >= 0")
        self.model = model
        self.obs_operator = obs_operator
        self.window = int(window)
        self.grad_weight = float(grad_weight)
        self.div_weight = float(div_weight)
        self.compile = bool(compile)
        self._compiled = None  # built on first use; shares the model's parameters, not a submodule

    @property
    def n_obs_steps(self) -> int:
        s = self.obs_operator.steps
        return self.window if s is None else len(s)

    def check(self, x0: torch.Tensor, obs: Observations) -> None:
        """Raise ``ValueError`` if ``x0`` and ``obs`` do not fit the model and window."""
        self.model.check_state(x0)
        want = (x0.shape[0], self.n_obs_steps, len(self.obs_operator.channels), *x0.shape[2:])
        if tuple(obs.values.shape) != want:
            raise ValueError(f"observations must have shape {want} (batch, obs steps, obs channels, *space), "
                             f"got {tuple(obs.values.shape)}")

    def trajectory(self, x0: torch.Tensor) -> torch.Tensor:
        """Model trajectory over the window, ``(batch, window, channel, *space)``."""
        if not self.compile:
            return self.model(x0, self.window - 1)
        if self._compiled is None:
            object.__setattr__(self, "_compiled", torch.compile(self.model))
        return self._compiled(x0, self.window - 1)

    def forward(
        self, x0: torch.Tensor, obs: Observations, background: Background | None = None
    ) -> dict[str, torch.Tensor]:
        """Cost terms per window.

        Parameters
        ----------
        x0 : Tensor, shape (batch, channel, *space)
        obs : Observations, values of shape (batch, n_obs_steps, n_obs_channels, *space)
        background : Background, optional

        Returns
        -------
        dict of Tensor, each of shape (batch,)
            ``total``, ``obs``, ``background``, ``grad``, ``div``.
        """
        self.check(x0, obs)
        terms = self.obs_and_prior_terms(x0, self.trajectory(x0), obs, background)
        terms["total"] = terms["obs"] + terms["background"] + terms["grad"] + terms["div"]
        return terms

    def obs_and_prior_terms(
        self, x0: torch.Tensor, traj: torch.Tensor, obs: Observations, background: Background | None
    ) -> dict[str, torch.Tensor]:
        """``obs``, ``background``, ``grad`` and ``div`` terms, each ``(batch,)``, of the
        trajectory ``traj (batch, window, channel, *space)`` starting from ``x0``."""
        hx = self.obs_operator(traj)
        terms = {"obs": 0.5 * (obs.inv_var * (hx - obs.values) ** 2).flatten(1).sum(1)}
        zero = torch.zeros_like(terms["obs"])
        if background is not None:
            d = x0 - background.state
            terms["background"] = 0.5 * (background.inv_var * d**2).flatten(1).sum(1)
        else:
            terms["background"] = zero
        terms["grad"] = terms["div"] = zero
        if self.grad_weight or self.div_weight:
            u = x0[:, self.model.channel(self.model.velocity_names[0])]
            v = x0[:, self.model.channel(self.model.velocity_names[1])]
            if self.grad_weight:
                terms["grad"] = self.grad_weight * gradient_penalty(u, v)
            if self.div_weight:
                terms["div"] = self.div_weight * divergence_penalty(u, v)
        return terms
