"""Tracer frames: shapes, gap filling and the image-model first guess ``x_b = (0, I₀)``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..observation import Observations

__all__ = ["as_frames", "fill_gaps", "inpaint", "motion_first_guess"]


def as_frames(frames: torch.Tensor | Observations) -> torch.Tensor:
    """Tracer frames ``(batch, T, ny, nx)`` with NaN where missing.

    Accepts ``(batch, T, ny, nx)`` or ``(batch, T, 1, ny, nx)`` tensors (NaN =
    missing), or single-channel :class:`~xda_hybrid.observation.Observations`
    (missing where ``inv_var == 0``).
    """
    if isinstance(frames, Observations):
        v = frames.values
        if v.ndim != 5 or v.shape[2] != 1:
            raise ValueError(f"expected one observed channel, (batch, T, 1, ny, nx), got {tuple(v.shape)}")
        return torch.where(frames.mask, v, torch.full_like(v, float("nan")))[:, :, 0]
    if not isinstance(frames, torch.Tensor) or not frames.is_floating_point():
        raise TypeError("frames must be a floating-point tensor or Observations")
    if frames.ndim == 5:
        if frames.shape[2] != 1:
            raise ValueError(f"expected one channel, (batch, T, 1, ny, nx), got {tuple(frames.shape)}")
        frames = frames[:, :, 0]
    if frames.ndim != 4:
        raise ValueError(f"frames must be (batch, T, ny, nx) or (batch, T, 1, ny, nx), got {tuple(frames.shape)}")
    return frames


def inpaint(field: torch.Tensor, valid: torch.Tensor, max_iter: int = 10000) -> torch.Tensor:
    """Fill invalid points of ``(..., ny, nx)`` fields from their valid neighbours.

    Normalised 3×3 averaging, repeated until every point is filled (a front
    moving one cell per pass), then a few smoothing passes on the filled points
    only (valid points never change).  A field with no valid point stays 0.
    """
    shape = field.shape
    f = torch.where(valid, field, torch.zeros_like(field)).reshape(-1, 1, *shape[-2:])
    m = valid.to(field.dtype).expand(shape).reshape(-1, 1, *shape[-2:]).clone()
    orig = m.clone()
    k = torch.ones(1, 1, 3, 3, dtype=field.dtype, device=field.device)
    filled = m > 0
    it = 0
    while not bool(filled.all()) and it < max_iter:
        s = F.conv2d(F.pad(f * m, (1, 1, 1, 1), mode="replicate"), k)
        c = F.conv2d(F.pad(m, (1, 1, 1, 1), mode="replicate"), k)
        new = (~filled) & (c > 0)
        if not bool(new.any()):
            break
        f = torch.where(new, s / c.clamp_min(1e-30), f)
        m = torch.where(new, torch.ones_like(m), m)
        filled = filled | new
        it += 1
    # smooth the filled region (harmonic-like), keeping data points fixed
    for _ in range(20):
        s = F.conv2d(F.pad(f, (1, 1, 1, 1), mode="replicate"), k) / 9.0
        f = torch.where(orig > 0, f, s)
    return f.reshape(shape)


def fill_gaps(frames: torch.Tensor, mode: str = "last") -> torch.Tensor:
    """Fill cloud gaps (NaN) of ``(batch, T, ny, nx)`` frames.

    ``mode="last"``: each missing pixel takes its last valid value in time
    (the next valid one before its first observation); ``"nearest"``: the
    valid value nearest in time (earlier on ties).  Pixels never observed in the
    window are then inpainted spatially (:func:`inpaint`) frame by frame.
    """
    if mode not in ("last", "nearest"):
        raise ValueError(f"mode must be 'last' or 'nearest', got {mode!r}")
    frames = as_frames(frames)
    T = frames.shape[1]
    out = frames.clone()
    if mode == "last":
        # forward fill, then backward fill what precedes the first observation
        for t in range(1, T):
            out[:, t] = torch.where(torch.isnan(out[:, t]), out[:, t - 1], out[:, t])
        for t in range(T - 2, -1, -1):
            out[:, t] = torch.where(torch.isnan(out[:, t]), out[:, t + 1], out[:, t])
    else:
        for t in range(T):
            for d in range(1, T):
                for s in (t - d, t + d):
                    if 0 <= s < T:
                        out[:, t] = torch.where(torch.isnan(out[:, t]), frames[:, s], out[:, t])
                if not bool(torch.isnan(out[:, t]).any()):
                    break
    still = torch.isnan(out)
    if bool(still.any()):
        out = inpaint(out, ~still)
    return out


def motion_first_guess(frames: torch.Tensor | Observations, n_channels: int = 3) -> torch.Tensor:
    """Image-model background ``x_b = (u, v, I) = (0, 0, I₀)``, shape (batch, n_channels, ny, nx).

    ``I₀`` is the first frame with each cloud gap taken from the first later
    frame that sees the pixel (what :func:`fill_gaps` gives the first frame in
    either mode), pixels never seen inpainted spatially; velocity channels 0.
    The tracer is the last channel.
    """
    fr = as_frames(frames)
    i0 = fr[:, 0]
    for t in range(1, fr.shape[1]):
        gap = torch.isnan(i0)
        if not bool(gap.any()):
            break
        i0 = torch.where(gap, fr[:, t], i0)
    gap = torch.isnan(i0)
    if bool(gap.any()):
        i0 = inpaint(i0, ~gap)
    x = torch.zeros(fr.shape[0], n_channels, *fr.shape[2:], dtype=fr.dtype, device=fr.device)
    x[:, -1] = i0
    return x
