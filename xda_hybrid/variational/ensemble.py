"""Randomised 4DVAR: perturbed observations and priors, the randomised cost and the EDA baseline.

Randomised maximum likelihood (RML; Kitanidis 1995, Oliver et al. 1996) draws a
sample of the posterior of ``x₀`` by minimising the 4DVAR cost whose data and
prior means are perturbed by draws of their own error laws:

    x_k = argmin_x  ½‖x − (x_b + η_k)‖²_{B⁻¹} + ½ Σ_t ‖H M_t(x) − (y_t + ε_k,t)‖²_{R⁻¹}
                    + α ½‖∇(w − w_p,k)‖²,        ε ~ N(0, R), η ~ N(0, B), w_p ~ N(0, (α L)⁺)

For a linear model and observation operator the ``x_k`` are exact draws of the
Gaussian posterior; for a weakly nonlinear window they approximate it (the
approximation degrades where the cost has several minima).  The Tikhonov
smoothness term of velocity models is a Gaussian prior with precision ``α L``
(``L = DᵀD``, the Neumann Laplacian of the cell differences used by
:func:`~xda_hybrid.variational.regularisers.gradient_penalty`); its
perturbation is a prior-mean shift ``w_p`` drawn exactly in the DCT basis
(the constant mode, which the penalty leaves free, is not perturbed).  The
divergence penalty, when used, is kept unperturbed (its prior spread is then
missing from the samples).

The ensemble of data assimilations (EDA) is RML with L-BFGS per member:
:func:`eda` stacks the ``K`` perturbed copies of each window along the batch
axis and solves them together.

Tensors of members are ``(K, batch, ...)`` (member first) in the public
functions and ``(K·batch, ...)`` (member-major) inside :class:`Perturbed`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..observation import Observations
from .cost import Background, FourDVarCost
from .lbfgs import LBFGSResult, lbfgs
from .regularisers import _dx, _dy

__all__ = [
    "EDAResult",
    "Perturbed",
    "eda",
    "perturb",
    "perturb_background",
    "perturb_observations",
    "perturbs_prior",
    "randomised_cost",
    "randomised_fourdvar",
    "smoothness_prior_sample",
]


def _randn(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal draws from a (CPU) generator, cast to ``like``'s dtype and device."""
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype=like.dtype, device=like.device)


def perturb_observations(obs: Observations, generator: torch.Generator | None = None) -> Observations:
    """``Y + ε``, ``ε ~ N(0, R)`` at observed points (``σ = (R⁻¹)^-½``), missing points left at 0."""
    iv = obs.inv_var
    sd = torch.where(iv > 0, iv.clamp_min(1e-300).rsqrt(), torch.zeros_like(iv))
    return Observations(obs.values + sd * _randn(iv.shape, generator, iv), iv)


def perturb_background(background: Background, generator: torch.Generator | None = None) -> Background:
    """``x_b + η``, ``η ~ N(0, B)`` for the diagonal ``B⁻¹`` (components with ``B⁻¹ = 0`` unperturbed)."""
    x = background.state
    iv = torch.as_tensor(background.inv_var, dtype=x.dtype, device=x.device).expand_as(x)
    sd = torch.where(iv > 0, iv.clamp_min(1e-300).rsqrt(), torch.zeros_like(iv))
    return Background(x + sd * _randn(x.shape, generator, x), background.inv_var)


def _neumann_eigenvalues(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    return 4 * torch.sin(math.pi * k / (2 * n)) ** 2


def smoothness_prior_sample(
    shape: tuple[int, ...], weight: float, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64, device=None,
) -> torch.Tensor:
    """Draws of the Gaussian prior whose negative log density is ``weight · ½‖∇f‖²``.

    ``‖∇f‖²`` sums the squared differences between neighbouring cells along the
    last two axes (as :func:`~xda_hybrid.variational.regularisers.gradient_penalty`),
    i.e. ``fᵀ L f`` with ``L`` the Neumann Laplacian, diagonal in the DCT-II
    basis with eigenvalues ``4 sin²(π k_y / 2n_y) + 4 sin²(π k_x / 2n_x)``.  The
    draw is ``f = IDCT(z / √(weight · λ))``, ``z ~ N(0, 1)``, with the constant
    mode (``λ = 0``, unconstrained by the penalty) set to 0.

    Parameters
    ----------
    shape : tuple of int
        ``(..., ny, nx)``.
    weight : float
        ``α > 0``.
    """
    from scipy.fft import idctn

    if not weight > 0:
        raise ValueError(f"weight must be > 0, got {weight}")
    ny, nx = shape[-2:]
    lam = _neumann_eigenvalues(ny)[:, None] + _neumann_eigenvalues(nx)[None, :]
    inv_sd = torch.where(lam > 0, (float(weight) * lam).clamp_min(1e-300).rsqrt(), torch.zeros_like(lam))
    z = torch.randn(tuple(shape), generator=generator, dtype=torch.float64) * inv_sd
    f = idctn(z.numpy(), type=2, axes=(-2, -1), norm="ortho")
    return torch.from_numpy(f).to(dtype=dtype, device=device)


@dataclass(frozen=True)
class Perturbed:
    """``K`` perturbed copies of a batch of windows, stacked member-major along the batch axis.

    Attributes
    ----------
    obs : Observations
        ``Y + ε_k``, values of shape (K·batch, T, C_o, *space).
    background : Background or None
        ``x_b + η_k`` (its ``B⁻¹`` unchanged), when the problem has a background term.
    prior : Tensor or None
        Shift of the smoothness prior's mean, shape (K·batch, C, *space): ``w_p,k``
        on the velocity channels, 0 elsewhere; ``None`` when the cost has no
        smoothness term (or it is not perturbed).
    n_members : int
    """

    obs: Observations
    background: Background | None
    prior: torch.Tensor | None
    n_members: int

    @property
    def network_input(self) -> torch.Tensor | None:
        """What a generative network takes as its extra (background-slot) input: ``x_b + η`` or ``w_p``."""
        if self.background is not None:
            return self.background.state
        return self.prior


def _repeat(t: torch.Tensor, k: int) -> torch.Tensor:
    return t.repeat(k, *([1] * (t.ndim - 1)))


def _repeat_background(bg: Background, k: int, n: int) -> Background:
    iv = bg.inv_var
    if isinstance(iv, torch.Tensor) and iv.ndim == bg.state.ndim and iv.shape[0] == n:
        iv = _repeat(iv, k)
    return Background(_repeat(bg.state, k), iv)


def perturbs_prior(cost: FourDVarCost) -> bool:
    """Whether the randomised cost perturbs a smoothness prior (a velocity model with ``grad_weight > 0``)."""
    return bool(cost.grad_weight > 0 and cost.model.velocity_names)


def perturb(
    cost: FourDVarCost,
    obs: Observations,
    n_members: int = 1,
    background: Background | None = None,
    generator: torch.Generator | None = None,
    prior: bool | None = None,
    zero: bool = False,
) -> Perturbed:
    """``n_members`` randomised copies of each window of ``obs`` (and ``background``).

    Parameters
    ----------
    cost : FourDVarCost
        Tells the state shape and whether a smoothness prior is perturbed.
    obs : Observations
        Values of shape (batch, T, C_o, *space).
    n_members : int
    background : Background, optional
    generator : torch.Generator, optional
        CPU generator of the draws (seeded: reproducible members).
    prior : bool, optional
        Perturb the smoothness prior (default: :func:`perturbs_prior`).
    zero : bool
        Return the unperturbed copies (``ε = η = w_p = 0``): the "central" member.
    """
    k = int(n_members)
    if k < 1:
        raise ValueError(f"n_members must be >= 1, got {n_members}")
    n = obs.values.shape[0]
    o = Observations(_repeat(obs.values, k), _repeat(obs.inv_var, k))
    bg = None if background is None else _repeat_background(background, k, n)
    if not zero:
        o = perturb_observations(o, generator)
        if bg is not None:
            bg = perturb_background(bg, generator)
    p = None
    if perturbs_prior(cost) if prior is None else prior:
        model = cost.model
        space = tuple(obs.values.shape[3:])
        p = torch.zeros(k * n, model.n_channels, *space, dtype=obs.values.dtype, device=obs.values.device)
        if not zero:
            for name in model.velocity_names[:2]:
                p[:, model.channel(name)] = smoothness_prior_sample(
                    (k * n, *space), cost.grad_weight, generator, obs.values.dtype, obs.values.device)
    return Perturbed(o, bg, p, k)


def randomised_cost(cost: FourDVarCost, x0: torch.Tensor, perturbed: Perturbed) -> torch.Tensor:
    """The 4DVAR cost of ``x0`` (K·batch, C, *space) for the perturbed data, per row.

    ``J(x₀; Y + ε, x_b + η)`` plus, with a smoothness prior shift ``w_p``,
    ``α(½‖∇(w − w_p)‖² − ½‖∇w‖²)`` — the smoothness term measured from the
    shifted prior mean.
    """
    total = cost(x0, perturbed.obs, perturbed.background)["total"]
    if perturbed.prior is not None and cost.grad_weight > 0:
        model = cost.model
        corr = 0.0
        for name in model.velocity_names[:2]:
            c = model.channel(name)
            w, wp = x0[:, c], perturbed.prior[:, c].to(x0)
            for d in (_dx, _dy):
                dw, dp = d(w), d(wp)
                corr = corr + (0.5 * dp**2 - dw * dp).flatten(1).sum(1)
        total = total + cost.grad_weight * corr
    return total


def randomised_fourdvar(
    cost: FourDVarCost, perturbed: Perturbed, x_init: torch.Tensor, max_iter: int = 100, **lbfgs_options
) -> LBFGSResult:
    """L-BFGS on :func:`randomised_cost` for every perturbed row (``x_init`` of shape (K·batch, C, *space))."""
    from ..models.base import CFLError

    cost.check(x_init, perturbed.obs)
    return lbfgs(lambda x: randomised_cost(cost, x, perturbed), x_init, max_iter=max_iter,
                 reject=(CFLError,), **lbfgs_options)


@dataclass
class EDAResult:
    """Outcome of :func:`eda`.

    Attributes
    ----------
    members : Tensor, shape (K, batch, C, *space)
        The ``x₀`` of each member (one 4DVAR per member and window).
    result : LBFGSResult
        The batched solver's outcome over the K·batch rows.
    wall_time : float
        Seconds (perturbation and 4DVAR).
    """

    members: torch.Tensor
    result: LBFGSResult
    wall_time: float


def eda(
    cost: FourDVarCost,
    obs: Observations,
    n_members: int,
    x_init: torch.Tensor,
    background: Background | None = None,
    generator: torch.Generator | None = None,
    max_iter: int = 50,
    **lbfgs_options,
) -> EDAResult:
    """Ensemble of data assimilations: one 4DVAR per member on perturbed observations (and background).

    Parameters
    ----------
    cost : FourDVarCost
    obs : Observations
        Values of shape (batch, T, C_o, *space).
    n_members : int
        ``K``.
    x_init : Tensor, shape (batch, C, *space)
        First guess of every member of a window (e.g. from the unperturbed observations).
    background : Background, optional
        Perturbed by ``N(0, B)`` per member.
    generator : torch.Generator, optional
    max_iter : int
        L-BFGS iterations per member.
    """
    t0 = time.perf_counter()
    p = perturb(cost, obs, n_members, background, generator)
    res = randomised_fourdvar(cost, p, _repeat(x_init, p.n_members).to(obs.values), max_iter=max_iter,
                              **lbfgs_options)
    members = res.x.reshape(p.n_members, -1, *res.x.shape[1:])
    return EDAResult(members, res, time.perf_counter() - t0)
