"""Passive tracer transported by a steady velocity field (semi-Lagrangian).

Also holds :class:`SemiLagrangian2D`, the grid/boundary plumbing shared with
the image model (:mod:`xda_hybrid.models.image`).
"""
from __future__ import annotations

import math

import torch

from .base import DynamicalModel
from .interpolation import Stencil, apply_stencil, check_boundary, departure_stencil, sanitize

# velocities are clamped to this many grid cells per step (keeps +-inf finite)
_MAX_CELLS_PER_STEP = 2.0**20


class SemiLagrangian2D(DynamicalModel):
    """Common base of the 2-D semi-Lagrangian models on a ``(y, x)`` grid.

    The state is ``(batch, channel, ny, nx)`` with channels
    :attr:`state_names`, the first two being the velocity ``u`` (along ``x``,
    the last axis) and ``v`` (along ``y``, the second-last axis), in ``dx``
    units per ``dt`` unit (with ``dx = dt = 1``: cells per step).

    Parameters
    ----------
    dt : float
        Time step, > 0.
    dx, dy : float
        Grid spacings along ``x`` and ``y``, > 0.
    boundary : {"closed", "periodic"}
        ``"closed"``: departure points are clamped into the domain (the tracer
        has a zero-gradient border).  ``"periodic"``: the domain wraps.
    iterations : int
        Fixed-point iterations of the midpoint departure-point rule (2 gives
        a second-order scheme, 0 the first-order one).
    """

    spatial_dims = ("y", "x")
    velocity_names = ("u", "v")

    def __init__(
        self,
        dt: float = 1.0,
        dx: float = 1.0,
        dy: float = 1.0,
        boundary: str = "closed",
        iterations: int = 2,
    ):
        super().__init__()
        for name, val in (("dt", dt), ("dx", dx), ("dy", dy)):
            if not isinstance(val, (int, float)) or isinstance(val, bool) or not (
                math.isfinite(val) and val > 0
            ):
                raise ValueError(f"{name} must be a finite number > 0, got {val!r}")
        self.dt, self.dx, self.dy = float(dt), float(dx), float(dy)
        self.boundary = check_boundary(boundary)
        if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 0:
            raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
        self.iterations = int(iterations)

    def extra_repr(self) -> str:
        return f"dt={self.dt}, dx={self.dx}, dy={self.dy}, boundary={self.boundary!r}"

    # -- helpers -----------------------------------------------------------
    def clean_velocity(self, w: torch.Tensor) -> torch.Tensor:
        """NaN -> 0, clamp ``|u|, |v|`` to 2**20 max(dx, dy) per ``dt`` (identity on sane values)."""
        bound = _MAX_CELLS_PER_STEP * max(self.dx, self.dy) / self.dt
        return sanitize(w, min(bound, torch.finfo(w.dtype).max / 8))

    def displacement(self, w: torch.Tensor) -> torch.Tensor:
        """Velocity ``(batch, 2 [u, v], ny, nx)`` -> displacement per step in cells."""
        sx, sy = self.dt / self.dx, self.dt / self.dy
        if sx == sy:
            return w * sx
        return w * torch.tensor([sx, sy], dtype=w.dtype, device=w.device).view(1, 2, 1, 1)

    def stencil(self, w: torch.Tensor) -> Stencil:
        """Bilinear stencil at the departure points of the velocity ``w``.

        ``w`` must have gone through :meth:`clean_velocity`.
        """
        return departure_stencil(self.displacement(w), self.boundary, self.iterations, clean=True)


class Advection(SemiLagrangian2D):
    """Tracer advected by a steady velocity: ``∂c/∂t + u ∂c/∂x + v ∂c/∂y = 0``.

    State ``(batch, 3, ny, nx)`` with channels ``("u", "v", "tracer")``; ``u``
    is the velocity along ``x`` (last axis), ``v`` along ``y``, in ``dx`` units
    per ``dt`` unit.  The velocity is steady: :meth:`step` returns it
    unchanged, and the tracer is interpolated (bilinear) at second-order
    semi-Lagrangian departure points, so the scheme is unconditionally stable
    and monotone (the tracer stays within its initial min/max).

    Parameters
    ----------
    dt, dx, dy, boundary, iterations
        See :class:`SemiLagrangian2D`.
    """

    state_names = ("u", "v", "tracer")

    def step(self, x: torch.Tensor) -> torch.Tensor:
        self.check_state(x)
        st = self.stencil(self.clean_velocity(x[:, :2]))
        return torch.cat([x[:, :2], apply_stencil(x[:, 2:], st)], 1)

    def forward(self, x0: torch.Tensor, n_steps: int) -> torch.Tensor:
        """Trajectory ``(batch, n_steps + 1, 3, ny, nx)``, as repeated :meth:`step`.

        The velocity being steady, the departure-point stencil is computed
        once and reused for every step (identical result, one interpolation
        of one channel per step instead of three).
        """
        self.check_state(x0)
        n_steps = int(n_steps)
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        b, _, ny, nx = x0.shape
        c = x0[:, 2:]
        tracers = [c]
        if n_steps > 0:
            st = self.stencil(self.clean_velocity(x0[:, :2]))
            for _ in range(n_steps):
                c = apply_stencil(c, st)
                tracers.append(c)
        vel = x0[:, None, :2].expand(b, n_steps + 1, 2, ny, nx)
        return torch.cat([vel, torch.stack(tracers, 1)], 2)


__all__ = ["Advection", "SemiLagrangian2D"]
