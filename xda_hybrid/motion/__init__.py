"""Motion estimation from tracer images: 4DVAR (Tikhonov, stream function, weak constraint),
classical optical flow baselines, and the learned inversion / hybrid on the same windows.

Tensor level (no xarray).  Frames are ``(batch, T, ny, nx)`` (or ``(batch, T, 1, ny, nx)``)
with NaN under clouds; velocities ``(batch, ny, nx)`` in the model's units (cells per frame
with the default grid), ``u`` along ``x`` (last axis).
"""
from .frames import as_frames, fill_gaps, inpaint, motion_first_guess
from .learned import MotionInversionNetwork, hybrid_motion, learned_motion, motion_cost, train_motion_inversion
from .optical_flow import optical_flow, require_cv2
from .stream import StreamFunctionCost, stream_to_velocity, velocity_to_stream
from .twins import MotionTwin, forced_tracer_twin
from .variational import MotionEstimate, fourdvar_motion, motion_observations

__all__ = [
    "MotionEstimate",
    "MotionInversionNetwork",
    "MotionTwin",
    "StreamFunctionCost",
    "as_frames",
    "fill_gaps",
    "forced_tracer_twin",
    "fourdvar_motion",
    "hybrid_motion",
    "inpaint",
    "learned_motion",
    "motion_cost",
    "motion_first_guess",
    "motion_observations",
    "optical_flow",
    "require_cv2",
    "stream_to_velocity",
    "train_motion_inversion",
    "velocity_to_stream",
]
