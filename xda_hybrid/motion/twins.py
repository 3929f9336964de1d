"""Tracer twins for motion estimation, including twins whose truth dynamics differ from the model.

Built from the ingredients of :mod:`xda_hybrid.data.motion` (random flow, SST-like
tracer, moving clouds); cells and frames as units.  The truth may carry dynamics
that the image model lacks — a steady forcing of the velocity tendency and/or an
inertial rotation of the velocity (a Coriolis-like term) — to test
weak-constraint 4DVAR.  True states are returned for scoring only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..data.motion import cloud_masks, random_field, random_velocity, sst_tracer
from ..models.advection import Advection
from ..models.image import ImageModel

__all__ = ["MotionTwin", "forced_tracer_twin"]


@dataclass
class MotionTwin:
    """A batch of tracer windows (float64, cells and frames).

    Attributes
    ----------
    truth : Tensor, shape (batch, window, 3, ny, nx)
        True ``(u, v, tracer)`` trajectories.
    obs : Tensor, shape (batch, window, 1, ny, nx)
        Observed tracer (noise added), NaN under clouds.
    noise_std : Tensor, shape (batch,)
        Observation noise std of each window.
    forcing : Tensor, shape (batch, 2, ny, nx)
        Steady forcing of the velocity tendency in the truth (0 for a perfect model).
    model : ImageModel
        The (possibly misspecified) model to assimilate with.
    """

    truth: torch.Tensor
    obs: torch.Tensor
    noise_std: torch.Tensor
    forcing: torch.Tensor
    model: ImageModel


def forced_tracer_twin(
    n_windows: int = 4,
    size: int = 64,
    window: int = 10,
    speed: float = 0.3,
    forcing: float = 0.0,
    rotation: float = 0.0,
    cloud_fraction: float = 0.3,
    noise: float = 0.02,
    boundary: str = "periodic",
    spinup: int = 20,
    tracer: str = "sst",
    tracer_wavelength: float | None = None,
    seed: int = 0,
    cloud_wind: float = 1.0,
    cloud_wavelength: float | None = None,
) -> MotionTwin:
    """Tracer windows whose truth is the image model plus optional unmodelled dynamics.

    Each step of the truth is ``x ← M(x)``, then the velocity is rotated by
    ``rotation`` radians (inertial oscillation, the effect of a Coriolis term)
    and incremented by a steady forcing ``F`` (a smooth random field of largest
    magnitude ``forcing`` cells per frame², at the domain scale).

    Parameters
    ----------
    n_windows : int
        Independent windows (each its own flow, tracer, clouds and forcing).
    size : int
        Grid cells per side.
    window : int
        Frames per window.
    speed : float
        Largest initial speed, cells per frame.
    forcing : float
        Largest steady forcing, cells per frame² (0: none).
    rotation : float
        Rotation of the velocity per frame, radians (0: none).
    cloud_fraction, noise
        As in :func:`~xda_hybrid.data.motion.tracer_motion_twin` (noise: fraction of the tracer std).
    boundary : {"periodic", "closed"}
    spinup : int
        Frames of tracer stirring by the initial flow before the window.
    tracer : {"sst", "texture"}
        ``"sst"``: the SST-like field of :func:`~xda_hybrid.data.motion.sst_tracer`
        (large-scale gradient plus mesoscale eddies); ``"texture"``: a unit-std
        band-limited random field (peak at ``tracer_wavelength`` cells, default
        ``size / 6``), rich in structure at every place — a well-posed motion problem.
    tracer_wavelength : float, optional
        Peak wavelength of the tracer's mesoscale part, cells.
    seed : int
    cloud_wind : float
        Drift of the cloud field, cells per frame (slow clouds keep pixels clouded for most of the window).
    cloud_wavelength : float, optional
        Peak wavelength of the cloud field, cells (default ``size / 3``; larger: bigger clouds).
    """
    gen = torch.Generator().manual_seed(int(seed))
    model = ImageModel(boundary=boundary)
    x0s, fs, masks = [], [], []
    for _ in range(int(n_windows)):
        w = random_velocity(size, size, gen, speed=speed, boundary=boundary)
        if tracer == "sst":
            c = sst_tracer(size, size, gen, boundary=boundary, wavelength=tracer_wavelength)
        elif tracer == "texture":
            c = random_field(size, size, tracer_wavelength or size / 6, gen)
        else:
            raise ValueError(f"tracer must be 'sst' or 'texture', got {tracer!r}")
        f = random_velocity(size, size, gen, speed=1.0, wavelength=size, boundary=boundary)
        x0s.append(torch.cat([w, c[None]])[None])
        fs.append(float(forcing) * f[None])
        masks.append(cloud_masks(window, size, size, float(cloud_fraction), gen, wind=float(cloud_wind),
                                 wavelength=cloud_wavelength)[None])
    x = torch.cat(x0s)
    f = torch.cat(fs)
    clouds = torch.cat(masks)
    with torch.no_grad():
        if spinup:
            x = Advection(boundary=boundary)(x, int(spinup))[:, -1]
        states = [x]
        cs, sn = math.cos(rotation), math.sin(rotation)
        for _ in range(int(window) - 1):
            x = model.step(x)
            u, v = x[:, 0], x[:, 1]
            if rotation:
                u, v = cs * u - sn * v, sn * u + cs * v
            x = torch.cat([torch.stack([u, v], 1) + f, x[:, 2:]], 1)
            if boundary == "closed":
                x = torch.cat([x[:, :2] * model._border_mask(x), x[:, 2:]], 1)
            states.append(x)
        truth = torch.stack(states, 1)
    tracer = truth[:, :, 2:3]
    std = noise * tracer.flatten(1).std(1)
    noisy = tracer + std.view(-1, 1, 1, 1, 1) * torch.randn(tracer.shape, generator=gen, dtype=tracer.dtype)
    obs = torch.where(clouds[:, :, None], torch.full_like(noisy, math.nan), noisy)
    return MotionTwin(truth=truth, obs=obs, noise_std=std, forcing=f, model=model)
