"""Smoothness penalties on a velocity field ``(u, v)`` given on a regular grid.

Differences are taken between neighbouring cells (no division by the grid
spacing), so the penalties are in velocity units squared whatever the grid.
"""
from __future__ import annotations

import torch


def _dx(f: torch.Tensor) -> torch.Tensor:
    return f[..., :, 1:] - f[..., :, :-1]


def _dy(f: torch.Tensor) -> torch.Tensor:
    return f[..., 1:, :] - f[..., :-1, :]


def gradient_penalty(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``½ Σ |∇u|² + |∇v|²`` per batch element.

    Parameters
    ----------
    u, v : Tensor, shape (batch, ny, nx)

    Returns
    -------
    Tensor, shape (batch,)
    """
    tot = sum((d(f) ** 2).flatten(1).sum(1) for f in (u, v) for d in (_dx, _dy))
    return 0.5 * tot


def divergence(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Cell-difference divergence ``∂u/∂x + ∂v/∂y`` on the ``(ny-1, nx-1)`` interior."""
    return _dx(u)[..., :-1, :] + _dy(v)[..., :, :-1]


def divergence_penalty(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``½ Σ (∇·w)²`` per batch element, shape (batch,)."""
    return 0.5 * (divergence(u, v) ** 2).flatten(1).sum(1)


def laplacian(f: torch.Tensor) -> torch.Tensor:
    """Five-point Laplacian on the ``(ny-2, nx-2)`` interior."""
    c = f[..., 1:-1, 1:-1]
    return f[..., 2:, 1:-1] + f[..., :-2, 1:-1] + f[..., 1:-1, 2:] + f[..., 1:-1, :-2] - 4 * c
