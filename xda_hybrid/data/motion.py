"""Synthetic tracer-motion twin: an SST-like image carried by a smooth flow, seen through clouds.

Tensor level (no xarray).  Everything is drawn from one seeded
:class:`torch.Generator` and computed in float64 on CPU, so a ``seed`` gives
the same numbers on every run of the same floating-point environment.

Units are grid cells and frames: the velocity is in cells per frame, the
tracer in degrees Celsius.  :mod:`xda_hybrid.data.datasets` attaches physical
coordinates (metres, seconds) and converts.

Ingredients
-----------
* velocity: a random stream function (energy peaked at ``wavelength`` cells)
  plus a small potential part (``potential`` of the rms speed), scaled so
  that the largest speed is ``speed`` cells per frame (default 0.3);
* tracer: a large-scale meridional gradient (warm south, cold north) plus
  mesoscale structure with a steep (k⁻³-like) spectrum, like a sea-surface
  temperature map;
* truth: the image model (:class:`~xda_hybrid.models.image.ImageModel`,
  velocity self-advection + tracer transport); before the first recorded
  frame the tracer is stirred for ``spinup`` frames by the initial flow held
  steady, so that it already carries the flow's filaments while the velocity
  is still smooth (the pressureless self-advection of the image model
  steepens velocity fronts with time: keep records short, ~50-100 frames);
* clouds: a smooth random field drifting with a "cloud wind" and slowly
  evolving, thresholded frame by frame so that exactly ``cloud_fraction`` of
  the pixels are covered (spatially coherent, moving cloud masks);
* observations: the true tracer plus Gaussian noise of std
  ``noise × std(true tracer)``, NaN under clouds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models.advection import Advection
from ..models.image import ImageModel

__all__ = [
    "TracerMotionTwin",
    "cloud_masks",
    "random_field",
    "random_velocity",
    "sst_tracer",
    "tracer_motion_twin",
]

_F64 = torch.float64


def _wavenumbers(ny: int, nx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Angular wavenumbers (radians per cell) of an ``(ny, nx)`` FFT grid, as (ky, kx) 2D tensors."""
    ky = 2 * math.pi * torch.fft.fftfreq(ny, dtype=_F64)
    kx = 2 * math.pi * torch.fft.fftfreq(nx, dtype=_F64)
    return torch.meshgrid(ky, kx, indexing="ij")


def _spectral_noise(ny: int, nx: int, generator: torch.Generator) -> torch.Tensor:
    """FFT of real white noise, shape (ny, nx), complex128."""
    return torch.fft.fft2(torch.randn(ny, nx, generator=generator, dtype=_F64))


def random_field(
    ny: int, nx: int, wavelength: float, generator: torch.Generator, slope: float | None = None
) -> torch.Tensor:
    """Periodic zero-mean, unit-std random field of shape (ny, nx), float64.

    Parameters
    ----------
    wavelength : float
        Wavelength (cells) where the amplitude spectrum peaks.
    slope : float, optional
        If given, the amplitude spectrum decays as ``k^-slope`` beyond the peak
        (a power-law "mesoscale" field); otherwise it is the band-limited
        ``(k/k0)² exp(-(k/k0)²)`` bump.
    """
    ky, kx = _wavenumbers(ny, nx)
    k = torch.sqrt(kx**2 + ky**2)
    k0 = 2 * math.pi / float(wavelength)
    r = k / k0
    if slope is None:
        amp = r**2 * torch.exp(-(r**2))
    else:
        amp = torch.where(r < 1, r**2, r.clamp_min(1e-12) ** (-float(slope)))
    amp[0, 0] = 0.0
    f = torch.fft.ifft2(_spectral_noise(ny, nx, generator) * amp).real
    return (f - f.mean()) / f.std().clamp_min(1e-300)


def _taper(ny: int, nx: int, width: float) -> torch.Tensor:
    """(ny, nx) taper: 0 on the border cells, rising smoothly to 1 over ``width`` cells."""

    def ramp(n: int) -> torch.Tensor:
        d = torch.minimum(torch.arange(n, dtype=_F64), torch.arange(n - 1, -1, -1, dtype=_F64))
        return torch.clamp(d / max(width, 1.0), 0, 1).mul(math.pi / 2).sin() ** 2

    return ramp(ny)[:, None] * ramp(nx)[None, :]


def random_velocity(
    ny: int,
    nx: int,
    generator: torch.Generator,
    speed: float = 0.4,
    wavelength: float | None = None,
    potential: float = 0.1,
    boundary: str = "periodic",
) -> torch.Tensor:
    """Smooth random velocity ``(2 [u, v], ny, nx)`` in cells per frame, float64.

    ``u = -∂ψ/∂y + p ∂φ/∂x``, ``v = ∂ψ/∂x + p ∂φ/∂y`` with random stream
    function ``ψ`` and potential ``φ`` (spectral derivatives, periodic), ``p``
    set so that the potential part has ``potential`` times the rms of the
    rotational part; the result is scaled to a largest speed of ``speed``.
    With ``boundary="closed"`` the field is tapered to 0 on the border cells.
    """
    if not speed > 0:
        raise ValueError(f"speed must be > 0 cells per frame, got {speed}")
    if not potential >= 0:
        raise ValueError(f"potential must be >= 0, got {potential}")
    wavelength = float(wavelength or max(ny, nx) / 1.5)
    ky, kx = _wavenumbers(ny, nx)

    def grad(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fh = torch.fft.fft2(f)
        return torch.fft.ifft2(1j * kx * fh).real, torch.fft.ifft2(1j * ky * fh).real

    psi = random_field(ny, nx, wavelength, generator)
    phi = random_field(ny, nx, wavelength, generator)
    psi_x, psi_y = grad(psi)
    phi_x, phi_y = grad(phi)
    rot = torch.stack([-psi_y, psi_x])
    pot = torch.stack([phi_x, phi_y])
    scale = rot.pow(2).sum(0).mean().sqrt() / pot.pow(2).sum(0).mean().sqrt().clamp_min(1e-300)
    w = rot + potential * scale * pot
    if boundary == "closed":
        w = w * _taper(ny, nx, wavelength / 4)
    elif boundary != "periodic":
        raise ValueError(f"boundary must be 'closed' or 'periodic', got {boundary!r}")
    return w * (speed / w.pow(2).sum(0).sqrt().max())


def sst_tracer(
    ny: int,
    nx: int,
    generator: torch.Generator,
    mean: float = 18.0,
    gradient: float = 4.0,
    mesoscale: float = 0.8,
    wavelength: float | None = None,
    boundary: str = "periodic",
) -> torch.Tensor:
    """SST-like tracer (°C), shape (ny, nx), float64.

    ``mean − gradient/2 · g(y) + mesoscale · m(y, x)``: ``g`` goes from −1
    (south, ``y = 0``) to +1 (north) — a cosine for periodic domains so that
    the field wraps, a straight line otherwise — and ``m`` is a unit-std
    random field with a steep spectrum (peak at ``wavelength`` cells, then
    ``k⁻³``).
    """
    wavelength = float(wavelength or max(ny, nx) / 4)
    y = torch.arange(ny, dtype=_F64)[:, None]
    if boundary == "periodic":
        g = -torch.cos(2 * math.pi * y / ny)
    else:
        g = 2 * y / max(ny - 1, 1) - 1
    m = random_field(ny, nx, wavelength, generator, slope=3.0)
    return (mean - 0.5 * gradient * g + mesoscale * m).expand(ny, nx).clone()


def cloud_masks(
    n_frames: int,
    ny: int,
    nx: int,
    fraction: float,
    generator: torch.Generator,
    wind: float = 1.0,
    wavelength: float | None = None,
    evolution: float = 0.05,
) -> torch.Tensor:
    """Moving, spatially coherent cloud masks, bool ``(n_frames, ny, nx)``, True = cloudy.

    A band-limited random field (peak at ``wavelength`` cells) drifts at
    ``wind`` cells per frame in a random direction, each Fourier mode's phase
    also drifting by ``evolution`` radians per frame (random sign); each frame
    is thresholded at its ``1 − fraction`` quantile, so ``fraction`` of the
    pixels are covered in every frame (0: clear sky).
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"cloud fraction must be in [0, 1), got {fraction}")
    n_frames = int(n_frames)
    wavelength = float(wavelength or max(ny, nx) / 3)
    ky, kx = _wavenumbers(ny, nx)
    r = torch.sqrt(kx**2 + ky**2) / (2 * math.pi / wavelength)
    amp = r**2 * torch.exp(-(r**2))
    amp[0, 0] = 0.0
    base = _spectral_noise(ny, nx, generator) * amp
    angle = 2 * math.pi * torch.rand((), generator=generator, dtype=_F64)
    cx, cy = wind * torch.cos(angle), wind * torch.sin(angle)
    # Hermitian-symmetric random phase speed: odd in k keeps the field real
    drift = evolution * torch.randn(ny, nx, generator=generator, dtype=_F64)
    drift = 0.5 * (drift - torch.roll(torch.flip(drift, (0, 1)), (1, 1), (0, 1)))
    t = torch.arange(n_frames, dtype=_F64)[:, None, None]
    phase = -(kx * cx + ky * cy) * t + drift * t
    field = torch.fft.ifft2(base * torch.exp(1j * phase)).real
    if fraction == 0:
        return torch.zeros(n_frames, ny, nx, dtype=torch.bool)
    # per-frame threshold at the (1 - fraction) quantile, exact count of cloudy pixels
    flat = field.reshape(n_frames, -1)
    n_cloud = int(round(fraction * flat.shape[1]))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if n_cloud > 0:
        idx = torch.topk(flat, n_cloud, dim=1).indices
        mask.scatter_(1, idx, True)
    return mask.reshape(n_frames, ny, nx)


@dataclass
class TracerMotionTwin:
    """Output of :func:`tracer_motion_twin` (cells/frame units).

    Attributes
    ----------
    truth : Tensor, shape (length, 3, ny, nx)
        ``(u, v, tracer)``: velocity in cells per frame, tracer in °C.
    obs : Tensor, shape (length, 1, ny, nx)
        Tracer plus noise, NaN under clouds.
    clouds : Tensor, bool, shape (length, ny, nx)
    noise_std : float
        Observation noise std (°C) = ``noise × std(true tracer)``.
    model : ImageModel
        The model (``dt = dx = dy = 1``) that produced the truth.
    """

    truth: torch.Tensor
    obs: torch.Tensor
    clouds: torch.Tensor
    noise_std: float
    model: ImageModel


def tracer_motion_twin(
    size: int | tuple[int, int] = 64,
    length: int = 80,
    cloud_fraction: float = 0.3,
    noise: float = 0.02,
    seed: int = 0,
    boundary: str = "periodic",
    speed: float = 0.3,
    spinup: int = 20,
) -> TracerMotionTwin:
    """Tracer images moved by an image-model flow, observed through moving clouds.

    Parameters
    ----------
    size : int or (ny, nx)
        Grid cells per side (>= 8).
    length : int
        Recorded frames (>= 2).
    cloud_fraction : float in [0, 1)
        Fraction of pixels under cloud in every frame.
    noise : float >= 0
        Observation noise std as a fraction of the true tracer's std.
    seed : int
        Seed of the only random generator used.
    boundary : {"periodic", "closed"}
        Borders of the image model (and of the generated fields).
    speed : float
        Largest initial speed, cells per frame (≲ 1 for realistic motion).
    spinup : int
        Frames during which the tracer is stirred by the initial flow (held
        steady) before the first recorded frame; the recorded frames are the
        image model's, velocity included.

    Returns
    -------
    TracerMotionTwin
    """
    ny, nx = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
    length, spinup = int(length), int(spinup)
    if ny < 8 or nx < 8:
        raise ValueError(f"size must be >= 8 cells per side, got {(ny, nx)}")
    if length < 2:
        raise ValueError(f"length must be >= 2 frames, got {length}")
    if spinup < 0:
        raise ValueError(f"spinup must be >= 0, got {spinup}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0 (a fraction of the tracer std), got {noise}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    w = random_velocity(ny, nx, gen, speed=speed, boundary=boundary)
    c = sst_tracer(ny, nx, gen, boundary=boundary)
    model = ImageModel(dt=1.0, dx=1.0, dy=1.0, boundary=boundary)
    x0 = torch.cat([w, c[None]], 0)[None]
    with torch.no_grad():
        if spinup:  # stir the tracer with the initial (steady) flow: smooth velocity at frame 0
            x0 = Advection(dt=1.0, dx=1.0, dy=1.0, boundary=boundary)(x0, spinup)[:, -1]
        truth = model(x0, length - 1)[0]
    clouds = cloud_masks(length, ny, nx, float(cloud_fraction), gen)
    tracer = truth[:, 2:3]
    noise_std = float(noise) * float(tracer.std())
    noisy = tracer + noise_std * torch.randn(tracer.shape, generator=gen, dtype=_F64)
    obs = torch.where(clouds[:, None], torch.full_like(noisy, float("nan")), noisy)
    return TracerMotionTwin(truth=truth, obs=obs, clouds=clouds, noise_std=noise_std, model=model)
