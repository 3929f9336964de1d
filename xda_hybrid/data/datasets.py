"""The packaged synthetic datasets as CF-style :class:`xarray.Dataset` objects.

Each builder runs a tensor-level generator (float64, CPU, seeded) and wraps
the result with coordinates, units and attributes; data variables are stored
as float32.  These are the functions behind the catalog entries
(:mod:`xda_hybrid.data.catalog`); :mod:`xda_hybrid.data.cache` writes their
output once to netCDF3 and reuses it.

Conventions (see DESIGN.md): a uniform ``time`` coordinate with ``units``,
spatial coordinates ``site`` (Lorenz96) or ``y``/``x`` in metres, observation
variables ``<state>_obs`` (NaN = missing, ``attrs["noise_std"]``), truth
variables ``<state>_true`` and ``ds.attrs`` carrying the model name and
parameters.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np
import torch
import xarray as xr

from .motion import tracer_motion_twin
from .synthetic import lorenz96_trajectory, shallow_water_twin

__all__ = [
    "BUILDERS",
    "default_parameters",
    "lorenz96_dataset",
    "normalise_parameters",
    "shallow_water_dataset",
    "tracer_motion_dataset",
]

#: bump when the content written for the same parameters changes (part of the cache key)
FORMAT_VERSION = 1
#: reference date of the CF time axes of the gridded datasets
EPOCH = np.datetime64("2020-01-01T00:00:00", "ns")
#: tracer_motion grid spacing [m] and frame interval [s]
MOTION_DX = 4000.0
MOTION_DT = 3600.0

_COMMON = {"Conventions": "CF-1.8", "institution": "xda-hybrid synthetic generator", "format_version": FORMAT_VERSION}


def _f32(a) -> np.ndarray:
    return np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a, dtype=np.float32)


def _xy_coords(ny: int, nx: int, dx: float, dy: float) -> dict[str, xr.DataArray]:
    """Cell-centre coordinates in metres."""
    return {
        "y": xr.DataArray((np.arange(ny) + 0.5) * dy, dims="y",
                          attrs={"units": "m", "long_name": "y (northward distance)", "standard_name": "projection_y_coordinate", "axis": "Y"}),
        "x": xr.DataArray((np.arange(nx) + 0.5) * dx, dims="x",
                          attrs={"units": "m", "long_name": "x (eastward distance)", "standard_name": "projection_x_coordinate", "axis": "X"}),
    }


def _time_coord(n: int, dt_seconds: float) -> xr.DataArray:
    """CF time axis starting at :data:`EPOCH`, every ``dt_seconds``."""
    t = EPOCH + np.round(np.arange(n) * dt_seconds * 1e9).astype("timedelta64[ns]")
    return xr.DataArray(t, dims="time", attrs={"long_name": "time", "standard_name": "time", "axis": "T"})


def _time_encoding(dt_seconds: float) -> dict[str, Any]:
    return {"units": "seconds since 2020-01-01 00:00:00", "calendar": "proleptic_gregorian", "dtype": "float64"}


def lorenz96_dataset(
    size: int = 40,
    length: int = 3000,
    obs_fraction: float = 0.5,
    noise_std: float = 1.0,
    forcing: float = 8.0,
    dt: float = 0.05,
    seed: int = 0,
) -> xr.Dataset:
    """One Lorenz96 trajectory on the attractor, sites observed at random with noise.

    Parameters
    ----------
    size : int
        Sites on the ring (>= 4).
    length : int
        Time steps recorded (after a 2000-step spin-up).
    obs_fraction : float in (0, 1]
        Probability that a site is observed at a step.
    noise_std : float > 0
        Observation noise standard deviation.
    forcing, dt : float
        Model forcing ``F`` and RK4 step (time in model units).
    seed : int
        Seed of the trajectory's initial state and of the observation draw.
    """
    if size < 4:
        raise ValueError(f"size (sites) must be >= 4, got {size}")
    if length < 2:
        raise ValueError(f"length must be >= 2 steps, got {length}")
    if not 0 < obs_fraction <= 1:
        raise ValueError(f"obs_fraction must be in (0, 1], got {obs_fraction}")
    if not noise_std > 0:
        raise ValueError(f"noise_std must be > 0, got {noise_std}")
    truth = lorenz96_trajectory(length, n_sites=size, forcing=forcing, dt=dt, seed=seed)[:, 0].numpy()
    rng = np.random.default_rng(int(seed) + 1_000_003)
    observed = rng.random(truth.shape) < obs_fraction
    obs = np.where(observed, truth + noise_std * rng.standard_normal(truth.shape), np.nan)
    coords = {
        "time": xr.DataArray(np.arange(length) * dt, dims="time",
                             attrs={"units": "1", "long_name": "time in model units (1 = 5 days)", "axis": "T"}),
        "site": xr.DataArray(np.arange(size), dims="site", attrs={"units": "1", "long_name": "site index on the ring"}),
    }
    ds = xr.Dataset(
        {
            "x_true": (("time", "site"), _f32(truth), {"units": "1", "long_name": "Lorenz96 state (truth)"}),
            "x_obs": (("time", "site"), _f32(obs), {"units": "1", "long_name": "observed Lorenz96 state",
                                                     "noise_std": float(noise_std), "comment": "NaN = not observed"}),
        },
        coords=coords,
        attrs={**_COMMON, "title": "Lorenz96 twin: one trajectory, random partial noisy observations",
               "model": "lorenz96", "forcing": float(forcing), "dt": float(dt), "seed": int(seed),
               "obs_fraction": float(obs_fraction), "noise_std": float(noise_std)},
    )
    return ds


def tracer_motion_dataset(
    size: int = 64,
    length: int = 64,
    cloud_fraction: float = 0.3,
    noise: float = 0.02,
    seed: int = 0,
    boundary: str = "periodic",
) -> xr.Dataset:
    """SST-like tracer moved by an image-model flow, observed hourly through moving clouds.

    Grid: ``size × size`` cells of 4 km, one frame per hour; velocity up to
    ~0.3 cells per frame (≈ 0.33 m/s).  See :func:`~xda_hybrid.data.motion.tracer_motion_twin`.

    Parameters
    ----------
    size : int
        Cells per side (>= 8).
    length : int
        Frames (>= 2).
    cloud_fraction : float in [0, 1)
        Fraction of each frame under cloud (NaN in ``tracer_obs``).
    noise : float >= 0
        Observation noise std as a fraction of the true tracer's std.
    seed : int
    boundary : {"periodic", "closed"}
    """
    tw = tracer_motion_twin(size=size, length=length, cloud_fraction=cloud_fraction, noise=noise, seed=seed, boundary=boundary)
    ny, nx = tw.truth.shape[-2:]
    vel = MOTION_DX / MOTION_DT  # cells/frame -> m/s
    dims = ("time", "y", "x")
    coords = {"time": _time_coord(length, MOTION_DT), **_xy_coords(ny, nx, MOTION_DX, MOTION_DX)}
    ds = xr.Dataset(
        {
            "u_true": (dims, _f32(tw.truth[:, 0] * vel), {"units": "m s-1", "long_name": "eastward velocity (truth)",
                                                          "standard_name": "surface_eastward_sea_water_velocity"}),
            "v_true": (dims, _f32(tw.truth[:, 1] * vel), {"units": "m s-1", "long_name": "northward velocity (truth)",
                                                          "standard_name": "surface_northward_sea_water_velocity"}),
            "tracer_true": (dims, _f32(tw.truth[:, 2]), {"units": "degC", "long_name": "sea surface temperature (truth)",
                                                        "standard_name": "sea_surface_temperature"}),
            "tracer_obs": (dims, _f32(tw.obs[:, 0]), {"units": "degC", "long_name": "observed sea surface temperature",
                                                     "standard_name": "sea_surface_temperature",
                                                     "noise_std": float(np.float32(tw.noise_std)),
                                                     "comment": "NaN = under cloud"}),
        },
        coords=coords,
        attrs={**_COMMON, "title": "Tracer motion twin: SST-like images moved by an image-model flow, with clouds",
               "model": "image", "boundary": boundary, "dx": MOTION_DX, "dy": MOTION_DX, "dt": MOTION_DT,
               "seed": int(seed), "cloud_fraction": float(cloud_fraction), "noise": float(noise)},
    )
    ds["time"].encoding.update(_time_encoding(MOTION_DT))
    return ds


def shallow_water_dataset(
    size: int = 64,
    length: int = 120,
    obs_every: int = 3,
    obs_fraction: float = 1.0,
    noise_std: float = 0.05,
    spinup: int = 1000,
    seed: int = 0,
) -> xr.Dataset:
    """One continuous shallow-water trajectory (1000 km basin), height observed, velocity not.

    A Gaussian height bump at rest is spun up ``spinup`` model steps, then
    ``length`` consecutive model steps are recorded (one frame per step, so
    windows can start anywhere).  ``eta`` is observed every ``obs_every``
    frames, at a random ``obs_fraction`` of the cells, with Gaussian noise.
    Velocities are stored on the C-grid faces but labelled with the cell
    centres (``u`` is at ``x + dx/2``, ``v`` at ``y + dy/2``), as the model
    stores them.

    Parameters
    ----------
    size : int
        Cells per side; ``dx = 1000 km / size``, ``dt = 0.5 dx / √(gH)``.
    length : int
        Frames (model steps) recorded.
    obs_every : int >= 1
        Observed frame interval.
    obs_fraction : float in (0, 1]
        Fraction of cells observed in an observed frame.
    noise_std : float >= 0
        Height observation noise [m].
    spinup : int >= 0
    seed : int
    """
    if obs_every < 1:
        raise ValueError(f"obs_every must be >= 1, got {obs_every}")
    if not 0 < obs_fraction <= 1:
        raise ValueError(f"obs_fraction must be in (0, 1], got {obs_fraction}")
    if length < 2:
        raise ValueError(f"length must be >= 2 frames, got {length}")
    steps = list(range(0, length, int(obs_every)))
    tw = shallow_water_twin(n_windows=1, window=length, obs_steps=steps, noise_std=noise_std, n=size, spinup=spinup, seed=seed)
    model = tw.model
    truth = tw.truth[0].numpy()  # (length, 3, n, n)
    obs = np.full((length, size, size), np.nan)
    obs[steps] = tw.obs[0, :, 0].numpy()
    if obs_fraction < 1:
        rng = np.random.default_rng(int(seed) + 2_000_003)
        obs[rng.random(obs.shape) >= obs_fraction] = np.nan
    dims = ("time", "y", "x")
    coords = {"time": _time_coord(length, model.dt), **_xy_coords(size, size, model.dx, model.dy)}
    ds = xr.Dataset(
        {
            "u_true": (dims, _f32(truth[:, 0]), {"units": "m s-1", "long_name": "eastward velocity (truth)",
                                                "comment": "C-grid: at the east face of the cell, x + dx/2"}),
            "v_true": (dims, _f32(truth[:, 1]), {"units": "m s-1", "long_name": "northward velocity (truth)",
                                                "comment": "C-grid: at the north face of the cell, y + dy/2"}),
            "eta_true": (dims, _f32(truth[:, 2]), {"units": "m", "long_name": "sea surface height anomaly (truth)",
                                                  "standard_name": "sea_surface_height_above_mean_sea_level"}),
            "eta_obs": (dims, _f32(obs), {"units": "m", "long_name": "observed sea surface height anomaly",
                                         "noise_std": float(noise_std), "comment": "NaN = not observed"}),
        },
        coords=coords,
        attrs={**_COMMON, "title": "Shallow-water twin: one spun-up trajectory in a closed 1000 km basin, height observed",
               "model": "shallow_water", "dx": float(model.dx), "dy": float(model.dy), "dt": float(model.dt),
               "H": float(model.H), "g": float(model.g), "seed": int(seed), "obs_every": int(obs_every),
               "obs_fraction": float(obs_fraction), "noise_std": float(noise_std), "spinup": int(spinup)},
    )
    ds["time"].encoding.update(_time_encoding(model.dt))
    return ds


#: catalog entry name -> dataset builder
BUILDERS: dict[str, Callable[..., xr.Dataset]] = {
    "lorenz96": lorenz96_dataset,
    "tracer_motion": tracer_motion_dataset,
    "shallow_water": shallow_water_dataset,
}


def default_parameters(name: str) -> dict[str, Any]:
    """Parameters of entry ``name`` with their default values."""
    if name not in BUILDERS:
        raise KeyError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}")
    sig = inspect.signature(BUILDERS[name])
    return {k: p.default for k, p in sig.parameters.items()}


def normalise_parameters(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in, values coerced to the defaults' types, unknown names refused.

    Raises
    ------
    KeyError
        Unknown dataset.
    TypeError
        Unknown parameter name, or a value that does not convert.
    """
    out = default_parameters(name)
    for k, v in params.items():
        if k not in out:
            raise TypeError(f"dataset {name!r} has no parameter {k!r}; expected some of {sorted(out)}")
        typ = type(out[k])
        if typ is int and (isinstance(v, bool) or (isinstance(v, float) and not float(v).is_integer())):
            raise TypeError(f"parameter {k!r} of {name!r} must be an integer, got {v!r}")
        try:
            out[k] = typ(v)
        except (TypeError, ValueError):
            raise TypeError(f"parameter {k!r} of {name!r} must be {typ.__name__}, got {v!r}") from None
    return out
