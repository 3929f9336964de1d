"""Glue between window tensors and the public numerical API (observation, variational, learning).

No numerics are implemented here: the 4DVAR cost and solver come from
:mod:`xda_hybrid.variational`, networks and training from
:mod:`xda_hybrid.learning`; this module only assembles their inputs.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..observation import Observations
from ..variational import FourDVarCost, fourdvar
from ._problem import Problem

#: default relative smoothness weight of the velocity (see :func:`regularisation_weights`)
DEFAULT_SMOOTHNESS = {"ImageModel": 5.0, "Advection": 5.0}
DEFAULT_ITERATIONS = {"4dvar": 100, "hybrid": 10, "learned": 0}


def observations(batch: dict[str, torch.Tensor], dtype: torch.dtype, device=None) -> Observations:
    """Observations of a window batch (``values`` with NaN, ``inv_var``) with missing values zeroed."""
    iv = batch["inv_var"].to(dtype=dtype, device=device)
    v = batch["values"].to(dtype=dtype, device=device)
    v = torch.where(iv > 0, v, torch.zeros((), dtype=dtype, device=device))
    return Observations(v, iv)


def nonempty(obs: Observations) -> torch.Tensor:
    """Bool (batch,): windows with at least one observed value."""
    return obs.inv_var.flatten(1).amax(1) > 0


def first_guess(obs: Observations, n_channels: int, obs_channels: list[int]) -> torch.Tensor:
    """Initial state of each window from its observations only.

    An observed channel takes, at each point, the first value observed there
    in the window, or the window's mean of that channel where the point is
    never observed; unobserved channels (e.g. velocity) start at 0.
    """
    v, m = obs.values, obs.mask  # (B, T, Co, *space)
    b = v.shape[0]
    x = torch.zeros(b, n_channels, *v.shape[3:], dtype=v.dtype, device=v.device)
    red = (1, *range(3, v.ndim))
    mean = (v * m).sum(red) / m.sum(red).clamp_min(1)  # (B, Co)
    for k, c in enumerate(obs_channels):
        mk = m[:, :, k]
        first = mk.to(torch.int8).argmax(1, keepdim=True)  # first observed step per point
        val = torch.gather(v[:, :, k], 1, first).squeeze(1)
        seen = mk.any(1)
        fill = mean[:, k].reshape(b, *([1] * (v.ndim - 3))).expand_as(val)
        x[:, c] = torch.where(seen, val, fill)
    return x


def motion_state(model, obs_operator) -> bool:
    """Whether the model's state is ``(u, v, <tracer>)`` on a 2D grid with only the last channel observed
    (what :class:`~xda_hybrid.motion.learned.MotionInversionNetwork` inverts)."""
    return (len(model.spatial_dims) == 2 and tuple(model.state_names[:2]) == ("u", "v") and model.n_channels == 3
            and tuple(model.velocity_names) == ("u", "v") and list(obs_operator.channels) == [2])


def regularisation_weights(problem: Problem, smoothness: float | None, divergence: float | None) -> tuple[float, float]:
    """``grad_weight``, ``div_weight`` of :class:`FourDVarCost` from relative, unit-free weights.

    The cost's penalties act on neighbour differences of the velocity in the
    model's units.  The weights given here are relative: they are multiplied by
    ``(dt/dx)²`` (velocity in grid cells per frame) and by the observations'
    gradient signal-to-noise ``mean(Δy²/σ²)``
    (:meth:`~xda_hybrid.front._problem.Problem.gradient_snr`), so the same
    value suits any coordinate units, tracer units and noise level.
    """
    model = problem.model
    if not model.velocity_names:
        if smoothness or divergence:
            raise ValueError(f"{type(model).__name__} has no velocity: smoothness/divergence must be 0 or None")
        return 0.0, 0.0
    name = type(model).__name__
    s = DEFAULT_SMOOTHNESS.get(name, 0.0) if smoothness is None else float(smoothness)
    d = 0.0 if divergence is None else float(divergence)
    if s < 0 or d < 0 or not (math.isfinite(s) and math.isfinite(d)):
        raise ValueError(f"smoothness and divergence must be finite and >= 0, got {s}, {d}")
    if s == 0 and d == 0:
        return 0.0, 0.0
    dt = float(getattr(model, "dt", 1.0))
    dx = math.sqrt(float(getattr(model, "dx", 1.0)) * float(getattr(model, "dy", getattr(model, "dx", 1.0))))
    scale = (dt / dx) ** 2 * problem.gradient_snr()
    return s * scale, d * scale


def make_cost(problem: Problem, window: int, grad_weight: float, div_weight: float) -> FourDVarCost:
    return FourDVarCost(problem.model, problem.obs_operator(), window, grad_weight=grad_weight, div_weight=div_weight)


def velocity_scale(problem: Problem, obs: Observations) -> float:
    """Typical speed (model units) for the output scale of never-observed velocity channels."""
    model = problem.model
    name = type(model).__name__
    if name == "ShallowWater" and "eta" in problem.obs_states:
        k = problem.obs_states.index("eta")
        m = obs.mask[:, :, k]
        v = obs.values[:, :, k][m]
        std = float(v.double().std()) if v.numel() > 1 else 1.0
        g, h = float(model.g.detach()), float(model.H.detach())
        return max(math.sqrt(g / h) * std, 1e-6)
    dt, dx = float(getattr(model, "dt", 1.0)), float(getattr(model, "dx", 1.0))
    return 0.3 * dx / dt


def _check_finite_start(cost: FourDVarCost, obs: Observations, x_init: torch.Tensor) -> None:
    """A clear error when the cost of the first guess is already non-finite (model or data overflow)."""
    with torch.no_grad():
        j = cost(x_init, obs)["total"]
    bad = ~torch.isfinite(j)
    if bool(bad.any()):
        model = cost.model
        params = {k: float(v.detach().flatten()[0]) for k, v in model.physical_parameters.items() if v.numel() >= 1}
        raise ValueError(
            f"the 4DVAR cost of the first guess (from the observations) is not finite in {int(bad.sum())} of "
            f"{len(j)} windows: {type(model).__name__} (dt={getattr(model, 'dt', None)}, {params}) or the "
            f"observations overflow {str(x_init.dtype).replace('torch.', '')}; check the model options or rescale the "
            f"data" + ("" if x_init.dtype == torch.float64 else ", or use dtype='float64'")
        )


def analyse(
    method: str,
    cost: FourDVarCost,
    obs: Observations,
    net: torch.nn.Module | None,
    iterations: int,
    progress: bool = False,
) -> dict[str, Any]:
    """Initial states of a batch of windows by one method, with their final cost.

    Returns ``x0`` (B, C, *space), ``trajectory`` (B, T, C, *space), ``cost``
    (B,), ``n_iter`` (B,).
    """
    from ..learning import hybrid, predict

    model = cost.model
    if method == "4dvar":
        x_init = first_guess(obs, model.n_channels, list(cost.obs_operator.channels))
        if iterations > 0:
            _check_finite_start(cost, obs, x_init)
        res = fourdvar(cost, obs, x_init, max_iter=int(iterations), progress=progress) if iterations > 0 else None
    elif method == "hybrid":
        res = hybrid(net, cost, obs, max_iter=int(iterations), progress=progress) if iterations > 0 else None
        x_init = None if res is not None else predict(net, obs)
    elif method == "learned":
        res, x_init = None, predict(net, obs)
    else:  # pragma: no cover - checked by the caller
        raise ValueError(method)
    if res is not None:
        x0, n_iter = res.x.detach(), res.n_iter
    else:
        x0, n_iter = x_init.detach(), torch.zeros(obs.values.shape[0], dtype=torch.int64)
    with torch.no_grad():
        traj = cost.trajectory(x0)
        j = cost(x0, obs)["total"]
    return {"x0": x0, "trajectory": traj, "cost": j, "n_iter": n_iter}
