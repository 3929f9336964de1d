"""Learned inversion (U-Net trained on the 4DVAR cost only) and hybrid, for tracer windows."""
from __future__ import annotations

__all__ = ["hybrid_motion", "learned_motion", "train_motion_inversion"]


def train_motion_inversion(*args, **kwargs):  # placeholder, filled below
    raise NotImplementedError


def learned_motion(*args, **kwargs):
    raise NotImplementedError


def hybrid_motion(*args, **kwargs):
    raise NotImplementedError
