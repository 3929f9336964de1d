"""Synthetic twin experiments (truth + noisy observations) for the packaged models."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..models.lorenz96 import Lorenz96
from ..models.shallow_water import ShallowWater

__all__ = [
    "Lorenz96Twin",
    "ShallowWaterTwin",
    "gaussian_bump",
    "lorenz96_trajectory",
    "lorenz96_twin",
    "shallow_water_twin",
]

#: side of the square shallow-water basin [m]
DOMAIN_LENGTH = 1000e3
#: amplitude of the initial height bump [m]
BUMP_AMPLITUDE = 5.0
#: range of the bump's Gaussian width sigma [m]
BUMP_WIDTH_RANGE = (20e3, 100e3)


@dataclass
class ShallowWaterTwin:
    """Output of :func:`shallow_water_twin`.

    Attributes
    ----------
    truth : Tensor, shape (n_windows, window, 3, n, n)
        True states ``(u, v, eta)`` (m/s, m/s, m) of each window, C-grid storage
        of :class:`~xda_hybrid.models.shallow_water.ShallowWater`.
    obs : Tensor, shape (n_windows, len(obs_steps), 1, n, n)
        ``eta`` at ``obs_steps`` plus Gaussian noise of std ``noise_std`` [m].
    obs_steps : tuple of int
        Window steps (0-based frame indices) that are observed.
    noise_std : float
        Observation noise standard deviation [m].
    model : ShallowWater
        The model that generated the truth (``dx``, ``dt``, ``H``, ``g``).
    bumps : dict of Tensor
        Initial bumps before spin-up: ``amplitude`` [m], ``width`` [m]
        (Gaussian sigma), ``x0`` and ``y0`` [m] (centres), each (n_windows,).
    """

    truth: torch.Tensor
    obs: torch.Tensor
    obs_steps: tuple[int, ...]
    noise_std: float
    model: ShallowWater
    bumps: dict = field(default_factory=dict)

    def __getitem__(self, key: str):
        """Dict-style access (``twin["truth"]``)."""
        return getattr(self, key)

    def keys(self) -> list[str]:
        return ["truth", "obs", "obs_steps", "noise_std", "model", "bumps"]


def gaussian_bump(
    model: ShallowWater,
    n: int,
    x0: torch.Tensor,
    y0: torch.Tensor,
    width: torch.Tensor,
    amplitude: float | torch.Tensor = BUMP_AMPLITUDE,
) -> torch.Tensor:
    """Resting states with a Gaussian height bump, shape (batch, 3, n, n).

    ``eta = amplitude · exp(-((x - x0)² + (y - y0)²) / (2 width²))`` on the cell
    centres of ``model`` (origin at the south-west corner), ``u = v = 0``.
    ``x0``, ``y0``, ``width`` [m] are tensors of shape (batch,); the dtype and
    device are theirs.
    """
    y, x = model.coordinates(n, n, dtype=x0.dtype, device=x0.device)
    amp = torch.as_tensor(amplitude, dtype=x0.dtype, device=x0.device).reshape(-1, 1, 1)
    r2 = (x.view(1, 1, n) - x0.view(-1, 1, 1)) ** 2 + (y.view(1, n, 1) - y0.view(-1, 1, 1)) ** 2
    eta = amp * torch.exp(-r2 / (2.0 * width.view(-1, 1, 1) ** 2))
    state = torch.zeros(x0.shape[0], 3, n, n, dtype=x0.dtype, device=x0.device)
    state[:, 2] = eta
    return state


def shallow_water_twin(
    n_windows: int = 100,
    window: int = 10,
    obs_steps: Sequence[int] = (0, 3, 6, 9),
    noise_std: float = 0.05,
    n: int = 64,
    spinup: int = 1000,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> ShallowWaterTwin:
    """Shallow-water twin of the 64×64 benchmark (height observed, velocity never).

    Each window starts from a Gaussian height bump (amplitude 5 m, width sigma
    drawn uniformly in 20–100 km, centre uniform in the 1000 km basin) at
    rest, is spun up for ``spinup`` model steps and then records ``window``
    frames (``window - 1`` further steps).  All windows are integrated as one
    batch, on CPU, in ``dtype`` (float64 by default); the result is
    deterministic for a ``seed``.

    Parameters
    ----------
    n_windows : int
        Number of independent windows (batch size).
    window : int
        Frames per window (steps 0 … window-1).
    obs_steps : sequence of int
        Observed frames, each in ``[0, window)``.
    noise_std : float
        Std of the Gaussian noise added to the observed height [m].
    n : int
        Cells per side; ``dx = dy = 1000 km / n``, ``dt = 0.5 dx / √(gH)``.
    spinup : int
        Model steps from the bump to the first frame of the window.
    seed : int
        Seed of the ``torch.Generator`` drawing bumps and noise.
    dtype : torch.dtype
        Floating dtype of the integration and of the returned tensors.

    Returns
    -------
    ShallowWaterTwin
        ``truth`` (n_windows, window, 3, n, n), ``obs`` (n_windows,
        len(obs_steps), 1, n, n), ``obs_steps``, ``noise_std``, ``model``,
        ``bumps``.
    """
    n_windows, window, n, spinup = int(n_windows), int(window), int(n), int(spinup)
    if n_windows < 1 or window < 1 or n < 2 or spinup < 0:
        raise ValueError(
            f"need n_windows >= 1, window >= 1, n >= 2, spinup >= 0; got {n_windows}, {window}, {n}, {spinup}"
        )
    obs_steps = tuple(int(s) for s in obs_steps)
    if any(s < 0 or s >= window for s in obs_steps):
        raise ValueError(f"obs_steps {obs_steps} must lie in [0, window={window})")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")

    model = ShallowWater(dx=DOMAIN_LENGTH / n)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    lo, hi = BUMP_WIDTH_RANGE
    width = lo + (hi - lo) * torch.rand(n_windows, generator=gen, dtype=dtype)
    x0 = DOMAIN_LENGTH * torch.rand(n_windows, generator=gen, dtype=dtype)
    y0 = DOMAIN_LENGTH * torch.rand(n_windows, generator=gen, dtype=dtype)
    state = gaussian_bump(model, n, x0, y0, width, BUMP_AMPLITUDE)

    with torch.no_grad():
        for _ in range(spinup):
            state = model.step(state, check_cfl=False)
        model.check_stability(state)
        truth = model(state, window - 1)

    eta = truth[:, list(obs_steps), 2:3]
    noise = torch.randn(eta.shape, generator=gen, dtype=dtype)
    obs = eta + float(noise_std) * noise
    bumps = {
        "amplitude": torch.full((n_windows,), BUMP_AMPLITUDE, dtype=dtype),
        "width": width,
        "x0": x0,
        "y0": y0,
    }
    return ShallowWaterTwin(
        truth=truth, obs=obs, obs_steps=obs_steps, noise_std=float(noise_std), model=model, bumps=bumps
    )


@dataclass
class Lorenz96Twin:
    """Output of :func:`lorenz96_twin`.

    Attributes
    ----------
    truth : Tensor, shape (n_windows, window, 1, n_sites)
        True trajectory of each window.
    obs : Tensor, same shape
        Truth plus Gaussian noise of std ``noise_std`` where observed, NaN elsewhere.
    noise_std : float
    model : Lorenz96
    """

    truth: torch.Tensor
    obs: torch.Tensor
    noise_std: float
    model: Lorenz96


def lorenz96_trajectory(
    n_steps: int, n_sites: int = 40, forcing: float = 8.0, dt: float = 0.05, spinup: int = 2000, seed: int = 0
) -> torch.Tensor:
    """A Lorenz96 trajectory on the attractor, float64, shape (n_steps, 1, n_sites).

    Starts from ``forcing`` plus unit Gaussian noise (seeded) and discards ``spinup`` steps.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    model = Lorenz96(forcing=forcing, dt=dt)
    x = forcing + torch.randn(1, 1, n_sites, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        x = model(x, spinup)[:, -1]
        return model(x, n_steps - 1)[0]


def lorenz96_twin(
    n_windows: int = 100,
    window: int = 10,
    n_sites: int = 40,
    forcing: float = 8.0,
    dt: float = 0.05,
    obs_fraction: float = 0.5,
    noise_std: float = 1.0,
    gap: int = 10,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> Lorenz96Twin:
    """Lorenz96 twin: windows cut from one trajectory, sites observed at random.

    Windows of ``window`` frames are separated by ``gap`` unobserved steps
    along one trajectory (spun up 2000 steps).  Each site at each frame is
    observed with probability ``obs_fraction``, with Gaussian noise of std
    ``noise_std``.  Deterministic for a ``seed``; integrated in float64.
    """
    if not 0 < obs_fraction <= 1:
        raise ValueError(f"obs_fraction must be in (0, 1], got {obs_fraction}")
    if noise_std <= 0:
        raise ValueError(f"noise_std must be > 0, got {noise_std}")
    stride = window + gap
    traj = lorenz96_trajectory(n_windows * stride, n_sites, forcing, dt, seed=seed)
    truth = traj.reshape(n_windows, stride, 1, n_sites)[:, :window]
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 1_000_003)
    observed = torch.rand(truth.shape, generator=gen, dtype=torch.float64) < obs_fraction
    noisy = truth + noise_std * torch.randn(truth.shape, generator=gen, dtype=torch.float64)
    obs = torch.where(observed, noisy, torch.full_like(noisy, float("nan")))
    return Lorenz96Twin(truth.to(dtype), obs.to(dtype), float(noise_std), Lorenz96(forcing=forcing, dt=dt))
