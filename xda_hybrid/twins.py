"""Twin experiments with classical 4DVAR on the published setups (REFERENCES.md).

Each function generates a twin (``xda_hybrid.data.synthetic``), assimilates
it with batched L-BFGS 4DVAR and scores the analysis against the truth, which
is read only for scoring.
"""
from __future__ import annotations

import time

import torch

from . import metrics
from .data.synthetic import lorenz96_twin, shallow_water_twin
from .observation import ObservationOperator, Observations
from .variational import FourDVarCost, fourdvar


def observed_first_guess(obs: Observations, n_channels: int, channel_of_obs: list[int]) -> torch.Tensor:
    """First guess from the first observed frame: observed channels take their values
    at step 0 where observed and the window's mean observation elsewhere; other channels 0.

    Parameters
    ----------
    obs : Observations, values (batch, n_obs_steps, n_obs_channels, *space)
    n_channels : int
        Channels of the model state.
    channel_of_obs : list of int
        State channel of each observed channel.

    Returns
    -------
    Tensor, shape (batch, n_channels, *space)
    """
    v, m = obs.values, obs.mask
    mean = (v * m).sum(dim=(1, *range(3, v.ndim)), keepdim=True) / m.sum(dim=(1, *range(3, v.ndim)), keepdim=True).clamp_min(1)
    guess_obs = torch.where(m[:, 0], v[:, 0], mean[:, 0].expand_as(v[:, 0]))
    x = torch.zeros(v.shape[0], n_channels, *v.shape[3:], dtype=v.dtype, device=v.device)
    x[:, channel_of_obs] = guess_obs
    return x


def lorenz96_4dvar(
    n_windows: int = 100, max_iter: int = 50, seed: int = 0, dtype: torch.dtype = torch.float64, progress: bool = False, **twin
) -> dict[str, float]:
    """Lorenz96 twin (N=40, F=8, dt=0.05, window 10, 50 % observed, noise 1 by default).

    Returns
    -------
    dict
        ``trajectory_rmse`` and ``initial_rmse`` (means over windows), ``first_guess_rmse``,
        ``iterations`` (mean), ``seconds_per_window``, ``n_windows``.
    """
    tw = lorenz96_twin(n_windows=n_windows, seed=seed, dtype=dtype, **twin)
    window = tw.truth.shape[1]
    obs = Observations.from_values(tw.obs, noise_std=tw.noise_std)
    cost = FourDVarCost(tw.model, ObservationOperator(tw.model), window)
    x_init = observed_first_guess(obs, 1, [0])
    res = fourdvar(cost, obs, x_init, max_iter=max_iter, progress=progress)
    with torch.no_grad():
        traj = cost.trajectory(res.x)
        traj0 = cost.trajectory(x_init)
    return {
        "trajectory_rmse": metrics.rmse(traj, tw.truth).mean().item(),
        "initial_rmse": metrics.rmse(res.x, tw.truth[:, 0]).mean().item(),
        "first_guess_rmse": metrics.rmse(traj0, tw.truth).mean().item(),
        "iterations": res.n_iter.double().mean().item(),
        "seconds_per_window": res.wall_time / n_windows,
        "n_windows": n_windows,
    }


def shallow_water_4dvar(
    n_windows: int = 100,
    max_iter: int = 250,
    grad_weight: float = 0.0,
    div_weight: float = 0.0,
    seed: int = 0,
    n: int = 64,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> dict[str, float]:
    """Shallow-water twin of REFERENCES.md: height observed at steps 0, 3, 6, 9, velocity retrieved.

    First guess: zero velocity and the observed height of step 0.  ``grad_weight``
    and ``div_weight`` weight the Tikhonov terms ½‖∇w₀‖², ½‖∇·w₀‖² (neighbouring-cell
    differences, m²/s²) against the observation term (normalised by σ² = 0.05² m²).

    Returns
    -------
    dict
        ``endpoint_error`` (m/s), ``angular_error`` (degrees), ``laplacian`` (‖Δw₀‖ of the
        analysis, m/s), ``laplacian_true``, ``iterations``, ``seconds_per_window``, ``n_windows``.
    """
    tw = shallow_water_twin(n_windows=n_windows, n=n, seed=seed, dtype=torch.float64)
    model = tw.model
    truth = tw.truth.to(dtype)
    obs = Observations.from_values(tw.obs.to(dtype), noise_std=tw.noise_std)
    op = ObservationOperator(model, channels=["eta"], steps=tw.obs_steps)
    cost = FourDVarCost(model, op, truth.shape[1], grad_weight=grad_weight, div_weight=div_weight)
    x_init = torch.zeros_like(truth[:, 0])
    x_init[:, 2] = obs.values[:, 0, 0]
    t0 = time.perf_counter()
    res = fourdvar(cost, obs, x_init, max_iter=max_iter, progress=progress)
    wall = time.perf_counter() - t0
    u, v = res.x[:, 0], res.x[:, 1]
    ut, vt = truth[:, 0, 0], truth[:, 0, 1]
    return {
        "endpoint_error": metrics.endpoint_error(u, v, ut, vt).mean().item(),
        "angular_error": metrics.angular_error(u, v, ut, vt).mean().item(),
        "laplacian": metrics.smoothness(u, v)["laplacian"].mean().item(),
        "laplacian_true": metrics.smoothness(ut, vt)["laplacian"].mean().item(),
        "mean_speed_true": torch.sqrt(ut**2 + vt**2).mean().item(),
        "iterations": res.n_iter.double().mean().item(),
        "seconds_per_window": wall / n_windows,
        "n_windows": n_windows,
    }
