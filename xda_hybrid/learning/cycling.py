"""Cycled assimilation: consecutive windows chained, the forecast of one is the background of the next.

Windows are laid out chain-major along the batch axis: with ``n_chains``
independent chains of ``n_cycles`` consecutive windows each, window ``k`` of
chain ``c`` is at index ``c·n_cycles + k``, and window ``k + 1`` starts
``stride`` model steps after window ``k``.  All chains advance together (one
batched analysis per cycle).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..models.base import DynamicalModel
from ..observation import Observations
from ..variational.cost import Background, FourDVarCost
from ..variational.solver import fourdvar
from .data import TrainingData
from .inversion import InversionNetwork
from .methods import hybrid, predict

__all__ = [
    "CycleResult",
    "background_inv_var",
    "cycle",
    "cycled_fourdvar",
    "cycled_network",
    "cycled_training_data",
    "forecast",
]


@torch.no_grad()
def forecast(model: DynamicalModel, x0: torch.Tensor, n_steps: int) -> torch.Tensor:
    """State after ``n_steps`` model steps from ``x0`` (batch, C, *space), without gradients."""
    return model(x0, n_steps)[:, -1]


def _expand_inv_var(inv_var: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Diagonal ``B⁻¹`` (scalar or per channel, shape (C,)) broadcast to ``like`` (batch, C, *space)."""
    iv = torch.as_tensor(inv_var, dtype=like.dtype, device=like.device)
    if iv.ndim == 1:
        iv = iv.reshape(1, -1, *([1] * (like.ndim - 2)))
    return iv.expand_as(like)


@torch.no_grad()
def background_inv_var(
    cost: FourDVarCost, backgrounds: torch.Tensor, obs: Observations, unobserved: float = 0.0
) -> torch.Tensor:
    """Diagonal ``B⁻¹`` per state channel from innovation statistics (observations only).

    At the first observed step, ``E[(y − H M(x_b))²] = σ_b² + σ_o²`` for each
    observed channel, so ``σ_b² = mean innovation² − mean(1/R⁻¹)`` over observed
    points (clamped to ≥ 1 % of the innovation variance).

    Parameters
    ----------
    cost : FourDVarCost
        Gives the model, window and observation operator.
    backgrounds : Tensor, shape (batch, C, *space)
        Forecasts valid at the windows' first frame.
    obs : Observations
        The windows' observations, values (batch, T, C_o, *space).
    unobserved : float
        ``B⁻¹`` of channels that no observation sees.

    Returns
    -------
    Tensor, shape (C,), float64
        ``1/σ_b²`` per state channel.
    """
    hx = cost.obs_operator(cost.trajectory(backgrounds.to(obs.values.dtype)))[:, 0]
    m = obs.mask[:, 0]
    d2 = ((hx - obs.values[:, 0]) ** 2 * m).transpose(0, 1).flatten(1).double().sum(1)
    n = m.transpose(0, 1).flatten(1).double().sum(1).clamp_min(1)
    err = (torch.where(m, 1.0 / obs.inv_var[:, 0].clamp_min(1e-30), 0.0)).transpose(0, 1).flatten(1).double().sum(1)
    innov = d2 / n
    var_b = torch.maximum(innov - err / n, 0.01 * innov)
    out = torch.full((cost.model.n_channels,), float(unobserved), dtype=torch.float64)
    out[list(cost.obs_operator.channels)] = 1.0 / var_b
    return out


@dataclass
class CycleResult:
    """Outcome of :func:`cycle`.

    Attributes
    ----------
    analyses : Tensor, shape (n_windows, C, *space)
        Analysis initial state of every window (chain-major order, as the input).
    backgrounds : Tensor, shape (n_windows, C, *space)
        Background used by every window (the first of each chain: ``first_background``).
    wall_time : float
        Seconds, analyses and forecasts included.
    """

    analyses: torch.Tensor
    backgrounds: torch.Tensor
    wall_time: float


def cycle(
    analyse: Callable[[Observations, Background], torch.Tensor],
    model: DynamicalModel,
    obs: Observations,
    first_background: torch.Tensor,
    inv_var: float | torch.Tensor,
    stride: int,
    n_chains: int = 1,
) -> CycleResult:
    """Run cycled assimilation with any per-window analysis.

    Parameters
    ----------
    analyse : callable
        ``analyse(obs_k, background_k) → x0`` for one cycle of all chains,
        ``x0`` of shape (n_chains, C, *space).
    model : DynamicalModel
        Forecast model.
    obs : Observations
        ``n_chains · n_cycles`` windows, chain-major.
    first_background : Tensor, shape (n_chains, C, *space)
        Background of each chain's first window.
    inv_var : float or Tensor of shape (C,)
        Diagonal ``B⁻¹`` (see :func:`background_inv_var`).
    stride : int
        Model steps between the first frames of consecutive windows.
    n_chains : int
    """
    n = obs.values.shape[0]
    if n % n_chains:
        raise ValueError(f"{n} windows do not split into {n_chains} chains")
    if first_background.shape[0] != n_chains:
        raise ValueError(f"first_background must have {n_chains} rows, got {first_background.shape[0]}")
    n_cycles = n // n_chains
    t0 = time.perf_counter()
    xb = first_background.to(obs.values.dtype)
    analyses, backgrounds = [], []
    for k in range(n_cycles):
        idx = torch.arange(n_chains, device=obs.values.device) * n_cycles + k
        bg = Background(xb, _expand_inv_var(inv_var, xb))
        x0 = analyse(obs[idx], bg).detach()
        analyses.append(x0)
        backgrounds.append(xb)
        xb = forecast(model, x0, stride)
    order = lambda ts: torch.stack(ts, dim=1).flatten(0, 1)  # (cycle, chain) → chain-major  # noqa: E731
    return CycleResult(order(analyses), order(backgrounds), time.perf_counter() - t0)


def cycled_fourdvar(
    cost: FourDVarCost,
    obs: Observations,
    first_background: torch.Tensor,
    inv_var: float | torch.Tensor,
    stride: int,
    n_chains: int = 1,
    max_iter: int = 50,
) -> CycleResult:
    """Cycled 4DVAR: each window minimises ``J`` with the previous forecast as background
    (diagonal ``B⁻¹ = inv_var``), starting from that background."""

    def analyse(o, bg):
        return fourdvar(cost, o, bg.state, background=bg, max_iter=max_iter).x

    return cycle(analyse, cost.model, obs, first_background, inv_var, stride, n_chains)


def cycled_network(
    net: InversionNetwork,
    cost: FourDVarCost,
    obs: Observations,
    first_background: torch.Tensor,
    inv_var: float | torch.Tensor,
    stride: int,
    n_chains: int = 1,
    refine_iter: int = 0,
) -> CycleResult:
    """Cycled learned inversion (``net`` built with ``background=True``), optionally
    refined by ``refine_iter`` 4DVAR iterations with the background term (cycled hybrid)."""
    if not net.config["background"]:
        raise ValueError("cycling a network needs one built with background=True")

    def analyse(o, bg):
        if refine_iter > 0:
            return hybrid(net, cost, o, max_iter=refine_iter, background=bg).x
        return predict(net, o, bg)

    return cycle(analyse, cost.model, obs, first_background, inv_var, stride, n_chains)


def cycled_training_data(
    model: DynamicalModel,
    obs: Observations,
    analyses: torch.Tensor,
    inv_var: float | torch.Tensor,
    stride: int,
    n_chains: int = 1,
) -> TrainingData:
    """Training windows with backgrounds forecast from the previous window's analysis.

    Each chain's first window (which has no predecessor) is dropped, so the
    result holds ``n_chains · (n_cycles − 1)`` windows, chain-major.

    Parameters
    ----------
    model : DynamicalModel
    obs : Observations
        Consecutive windows, chain-major.
    analyses : Tensor, shape (n_windows, C, *space)
        Analyses of those windows from observations only (e.g. a learned
        inversion without background, or 4DVAR).
    inv_var, stride, n_chains
        As in :func:`cycle`.
    """
    n = obs.values.shape[0]
    if n % n_chains or analyses.shape[0] != n:
        raise ValueError(f"need {n} analyses split into {n_chains} equal chains")
    n_cycles = n // n_chains
    k = torch.arange(n, device=obs.values.device)
    keep = k % n_cycles != 0
    xb = forecast(model, analyses[keep.nonzero().flatten() - 1].to(obs.values.dtype), stride)
    return TrainingData(obs[keep], Background(xb, _expand_inv_var(inv_var, xb)))
