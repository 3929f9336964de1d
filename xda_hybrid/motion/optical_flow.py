"""Classical optical flow baselines (OpenCV Farneback and DIS) on tracer frames.

OpenCV is optional: ``pip install opencv-python-headless`` (the ``bench`` extra).
Cloud gaps are filled first (:func:`~xda_hybrid.motion.frames.fill_gaps`, last
valid value in time, then inpainting), for DIS each window is mapped to 8-bit grey
levels with one scale for all its frames (Farneback takes float32 frames), and the flow
is converted to the model's convention: ``u`` along ``x`` (last axis), ``v``
along ``y``, in ``dx`` units per ``dt`` unit (cells per frame by default), a
positive ``u`` moving the pattern towards larger ``x`` — the same sign as the
image model's velocity.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..observation import Observations
from .frames import as_frames, fill_gaps
from .variational import MotionEstimate

__all__ = ["FARNEBACK_DEFAULTS", "DIS_DEFAULTS", "optical_flow", "require_cv2"]

#: Farneback options (OpenCV names) used unless overridden
#: (tuned once on a separate 64×64 tracer_motion-like twin, seed 100, 30 % clouds, 2 % noise:
#: small windows suit the sub-pixel motion; the benchmarks use other seeds)
FARNEBACK_DEFAULTS: dict[str, Any] = dict(pyr_scale=0.5, levels=2, winsize=7, iterations=10, poly_n=5,
                                          poly_sigma=1.1, flags=0)
#: DIS options: preset name, then setters (``finest_scale`` → ``setFinestScale``...); tuned as above
DIS_DEFAULTS: dict[str, Any] = dict(preset="medium", finest_scale=0, patch_size=6, patch_stride=2,
                                    variational_refinement_alpha=10.0)


def require_cv2():
    """Import OpenCV or raise an ImportError saying how to install it."""
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the optical-flow baselines need OpenCV: pip install opencv-python-headless "
            "(or the project's 'bench' extra)"
        ) from e
    return cv2


def _grey(win: np.ndarray, quantise: bool) -> np.ndarray:
    """Frames of one window mapped to grey levels 0…255 (one scale for all frames)."""
    lo, hi = float(win.min()), float(win.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    g = (win - lo) * scale
    return np.clip(np.rint(g), 0, 255).astype(np.uint8) if quantise else g.astype(np.float32)


def _setter_name(key: str) -> str:
    return "set" + "".join(p.capitalize() for p in key.split("_"))


def optical_flow(
    frames: torch.Tensor | Observations,
    method: str = "farneback",
    pairs: str = "span",
    dt: float = 1.0,
    dx: float = 1.0,
    dy: float = 1.0,
    periodic: bool = False,
    fill: str = "last",
    float_input: bool = True,
    **options,
) -> MotionEstimate:
    """Velocity at the first frame of each window by OpenCV optical flow.

    Parameters
    ----------
    frames : Tensor (batch, T, [1,] ny, nx) with NaN = missing, or Observations
    method : {"farneback", "dis"}
    pairs : {"span", "mean", "first"}
        ``"first"``: the flow from frame 0 to frame 1; ``"mean"``: the mean of
        the flows between consecutive frames; ``"span"``: the least-squares
        velocity ``Σ_k k d_k / Σ_k k²`` of the displacements ``d_k`` from frame 0
        to frame ``k`` (larger displacements: far less sensitive to noise and
        grey-level quantisation for sub-pixel motion).  ``"mean"`` and ``"span"``
        take the flow as steady over the window.
    dt, dx, dy : float
        Frame interval and grid spacings: velocity = displacement · (dx, dy) / dt.
    periodic : bool
        Wrap-pad the frames by a quarter of their size before the flow and crop
        after (for periodic domains).
    fill : {"last", "nearest"}
        Gap filling in time (:func:`~xda_hybrid.motion.frames.fill_gaps`).
    float_input : bool
        Farneback only: feed float32 frames (no 8-bit quantisation); DIS always
        takes 8-bit frames (one grey-level scale per window).
    **options
        Override :data:`FARNEBACK_DEFAULTS`, or :data:`DIS_DEFAULTS` (``preset``
        in {"ultrafast", "fast", "medium"}, and DIS setters in snake case, e.g.
        ``finest_scale=0``, ``patch_size=8``, ``variational_refinement_iterations=5``).

    Returns
    -------
    MotionEstimate
        ``u, v`` in the dtype and on the device of ``frames``.

    Raises
    ------
    ImportError
        When OpenCV is not installed.
    """
    cv2 = require_cv2()
    if method not in ("farneback", "dis"):
        raise ValueError(f"method must be 'farneback' or 'dis', got {method!r}")
    if pairs not in ("span", "mean", "first"):
        raise ValueError(f"pairs must be 'span', 'mean' or 'first', got {pairs!r}")
    fr = as_frames(frames)
    if fr.shape[1] < 2:
        raise ValueError("optical flow needs at least two frames per window")
    t0 = time.perf_counter()
    filled = fill_gaps(fr, fill).detach().cpu().double().numpy()
    b, T, ny, nx = filled.shape
    py, px = (ny // 4, nx // 4) if periodic else (0, 0)
    if method == "farneback":
        opts = {**FARNEBACK_DEFAULTS, **options}
        unknown = set(opts) - set(FARNEBACK_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown Farneback options {sorted(unknown)}")

        def flow(a, c):
            return cv2.calcOpticalFlowFarneback(a, c, None, opts["pyr_scale"], opts["levels"], opts["winsize"],
                                                opts["iterations"], opts["poly_n"], opts["poly_sigma"], opts["flags"])
    else:
        opts = {**DIS_DEFAULTS, **options}
        presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                   "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
        if opts["preset"] not in presets:
            raise ValueError(f"DIS preset must be one of {sorted(presets)}, got {opts['preset']!r}")
        dis = cv2.DISOpticalFlow_create(presets[opts["preset"]])
        for k, val in opts.items():
            if k == "preset":
                continue
            setter = getattr(dis, _setter_name(k), None)
            if setter is None:
                raise TypeError(f"unknown DIS option {k!r}")
            setter(val)

        def flow(a, c):
            return dis.calc(a, c, None)

    out = np.zeros((b, 2, ny, nx))
    for i in range(b):
        win = _grey(filled[i], quantise=method == "dis" or not float_input)
        if periodic:
            win = np.pad(win, ((0, 0), (py, py), (px, px)), mode="wrap")
        acc = np.zeros((ny + 2 * py, nx + 2 * px, 2))
        if pairs == "span":
            for k in range(1, T):
                acc += k * flow(np.ascontiguousarray(win[0]), np.ascontiguousarray(win[k]))
            acc /= sum(k * k for k in range(1, T))
        else:
            last = 1 if pairs == "first" else T - 1
            for k in range(last):
                acc += flow(np.ascontiguousarray(win[k]), np.ascontiguousarray(win[k + 1]))
            acc /= last
        out[i] = acc[py:py + ny, px:px + nx].transpose(2, 0, 1)
    vel = torch.as_tensor(out, dtype=fr.dtype, device=fr.device)
    u, v = vel[:, 0] * (dx / dt), vel[:, 1] * (dy / dt)
    return MotionEstimate(u=u, v=v, method=method, wall_time=time.perf_counter() - t0,
                          extra={"pairs": pairs, "options": opts})
