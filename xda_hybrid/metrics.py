"""Error and smoothness metrics for states, trajectories and velocity fields.

All functions take tensors whose leading axis is the batch (windows) and
return one value per batch element unless stated otherwise, so that results
can be averaged, or reported per window.
"""
from __future__ import annotations


import torch

from .variational.regularisers import _dx, _dy, divergence, laplacian


def rmse(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Root-mean-square error over all but the first axis.

    Parameters
    ----------
    estimate, truth : Tensor, shape (batch, ...)
        E.g. initial states ``(batch, channel, *space)`` or trajectories
        ``(batch, time, channel, *space)``.

    Returns
    -------
    Tensor, shape (batch,)
    """
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and truth {tuple(truth.shape)} differ in shape")
    return ((estimate - truth) ** 2).flatten(1).mean(1).sqrt()


def trajectory_rmse(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """RMSE of trajectories ``(batch, time, channel, *space)`` per time step: shape (batch, time)."""
    if estimate.shape != truth.shape or estimate.ndim < 3:
        raise ValueError(f"expected equal (batch, time, ...) shapes, got {tuple(estimate.shape)} and {tuple(truth.shape)}")
    return ((estimate - truth) ** 2).flatten(2).mean(2).sqrt()


def endpoint_error(u: torch.Tensor, v: torch.Tensor, u_true: torch.Tensor, v_true: torch.Tensor) -> torch.Tensor:
    """Mean endpoint error ``|w − w_true|`` over the grid, in velocity units.

    Parameters
    ----------
    u, v, u_true, v_true : Tensor, shape (batch, ny, nx)

    Returns
    -------
    Tensor, shape (batch,)
    """
    return torch.sqrt((u - u_true) ** 2 + (v - v_true) ** 2).flatten(1).mean(1)


def angular_error(
    u: torch.Tensor,
    v: torch.Tensor,
    u_true: torch.Tensor,
    v_true: torch.Tensor,
    kind: str = "2d",
) -> torch.Tensor:
    """Mean angular error in degrees.

    Parameters
    ----------
    u, v, u_true, v_true : Tensor, shape (batch, ny, nx)
    kind : {"2d", "barron"}
        ``"2d"``: angle between the planar vectors ``w`` and ``w_true``
        (points where either vanishes are skipped).  ``"barron"``: the optical-flow
        convention of Barron et al. (1994), angle between ``(u, v, 1)`` and
        ``(u_t, v_t, 1)`` — meaningful for velocities in pixels per frame.

    Returns
    -------
    Tensor, shape (batch,)
    """
    if kind == "2d":
        dot = u * u_true + v * v_true
        n = torch.sqrt(u**2 + v**2) * torch.sqrt(u_true**2 + v_true**2)
        ok = n > 0
        cos = torch.where(ok, dot / torch.where(ok, n, torch.ones_like(n)), torch.ones_like(n))
        ang = torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))
        return (ang * ok).flatten(1).sum(1) / ok.flatten(1).sum(1).clamp_min(1)
    if kind == "barron":
        dot = u * u_true + v * v_true + 1
        n = torch.sqrt((u**2 + v**2 + 1) * (u_true**2 + v_true**2 + 1))
        return torch.rad2deg(torch.arccos((dot / n).clamp(-1, 1))).flatten(1).mean(1)
    raise ValueError(f"kind must be '2d' or 'barron', got {kind!r}")


def smoothness(u: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
    """Smoothness statistics of a velocity field from neighbouring-cell differences.

    Parameters
    ----------
    u, v : Tensor, shape (batch, ny, nx)

    Returns
    -------
    dict of Tensor, shape (batch,)
        ``grad``: ‖∇w‖₂, ``div``: ‖∇·w‖₂, ``laplacian``: ‖Δw‖₂ (L2 norms over the grid).
    """
    g2 = sum((d(f) ** 2).flatten(1).sum(1) for f in (u, v) for d in (_dx, _dy))
    l2 = sum((laplacian(f) ** 2).flatten(1).sum(1) for f in (u, v))
    return {
        "grad": g2.sqrt(),
        "div": (divergence(u, v) ** 2).flatten(1).sum(1).sqrt(),
        "laplacian": l2.sqrt(),
    }


__all__ = ["angular_error", "endpoint_error", "rmse", "smoothness", "trajectory_rmse"]
