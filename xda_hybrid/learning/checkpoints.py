"""Atomic checkpoints of plain tensors and containers (``torch.load(weights_only=True)``-safe)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, then :func:`os.replace`).

    ``state`` must hold only tensors, numbers, strings, ``None`` and
    lists / tuples / dicts of those, so that it loads with ``weights_only=True``.
    A reader never sees a half-written file: it gets the previous checkpoint or
    the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)
