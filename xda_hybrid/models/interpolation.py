"""Differentiable bilinear interpolation and semi-Lagrangian departure points.

Everything here is written with plain torch operations (``floor``, integer
index arithmetic and one ``gather`` per interpolation), so that reverse-mode
AD (``backward``, :func:`torch.func.vjp`), forward-mode AD
(:func:`torch.func.jvp`) and double backward all work.  ``F.grid_sample`` is
deliberately not used: it has no forward-mode derivative.

Conventions
-----------
* Fields are laid out ``(batch, channel, ny, nx)``: ``y`` is the second-last
  axis, ``x`` the last.
* Positions are in **grid-index units**: ``x = 3.25`` lies a quarter of a cell
  to the right of column 3.  Cell centres sit on integer positions.
* ``boundary="closed"``: positions are clamped into ``[0, n - 1]`` (the value
  on the border is extended outwards, i.e. a zero-gradient / Neumann border).
  ``boundary="periodic"``: positions wrap around (``x`` and ``x + nx`` are the
  same point).

Bilinear interpolation is a convex combination of the four surrounding grid
values (weights in ``[0, 1]`` summing to one), so it is monotone: the result
always lies within the field's min/max, up to one rounding error.  Any
departure point is accepted — NaN is read as 0 and infinite or huge values are
clamped before any integer conversion — so the output is finite whenever the
field is finite.

For repeated interpolations at the same points (several fields, or the same
departure points over many time steps), compute the :class:`Stencil` once with
:func:`bilinear_stencil` and apply it with :func:`apply_stencil`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

#: accepted values of the ``boundary`` argument
BOUNDARIES = ("closed", "periodic")

# Periodic positions are clamped to +-(this many domain lengths) before the
# integer conversion; beyond ~2**24 cells float32 has no fractional part left
# anyway, and the clamp keeps ``long`` conversion well defined for +-inf.
_PERIODIC_WRAPS = 2.0**20


def check_boundary(boundary: str, name: str = "boundary") -> str:
    """Return ``boundary`` if it is one of :data:`BOUNDARIES`, else raise.

    Raises
    ------
    ValueError
        Naming the argument ``name`` and the accepted values.
    """
    if not isinstance(boundary, str) or boundary not in BOUNDARIES:
        raise ValueError(f"{name} must be one of {list(BOUNDARIES)}, got {boundary!r}")
    return boundary


def sanitize(t: torch.Tensor, bound: float | torch.Tensor) -> torch.Tensor:
    """Replace NaN by 0 and clamp into ``[-bound, bound]`` (differentiable).

    Finite values inside the bound pass unchanged (derivative 1); values
    outside, including ``+-inf``, become ``+-bound`` (derivative 0).
    """
    if isinstance(bound, torch.Tensor):
        t = torch.where(t == t, t, torch.zeros((), dtype=t.dtype, device=t.device))
        return torch.clamp(t, min=-bound, max=bound)
    bound = float(bound)
    return torch.nan_to_num(t, nan=0.0, posinf=bound, neginf=-bound).clamp(-bound, bound)


class Stencil(NamedTuple):
    """Bilinear stencil: where to read and with which weights.

    The four corners of target point ``k`` are read at the flat indices
    ``base[k] + (0, 1, row, row + 1)`` of the source grid, which for
    ``padded=True`` is first extended periodically by one row and one column
    (``row = nx + 1``), else ``row = nx``.

    Attributes
    ----------
    base : Tensor, int64, shape (batch, 1, M)
        Flat index of the lower-left corner ``(y0, x0)`` of each of the
        ``M = my * mx`` target points.
    fy, fx : Tensor, shape (batch, 1, M)
        Fractional positions in ``[0, 1]`` between the corners, along ``y``
        and ``x``; differentiable with respect to the positions.
    src_shape : (int, int)
        ``(ny, nx)`` of the source grid.
    out_shape : (int, int)
        ``(my, mx)`` of the target points.
    pad : {"circular", "replicate", None}
        How the source is extended by one row and column before reading:
        ``"circular"`` for a periodic boundary, ``"replicate"`` for a closed
        grid with a single row or column (the extra values get zero weight).
    """

    base: torch.Tensor
    fy: torch.Tensor
    fx: torch.Tensor
    src_shape: tuple[int, int]
    out_shape: tuple[int, int]
    pad: str | None


def _axis(p: torch.Tensor, n: int, boundary: str, finite: bool):
    """Lower corner (as a float holding an integer) and fraction along one axis."""
    if not finite:
        p = torch.nan_to_num(p, nan=0.0)
    # integer parts are computed on detached values: their derivative is zero
    # and this keeps them (and their backward) out of the autograd graph
    if boundary == "closed":
        p = p.clamp(0.0, float(n - 1))
        i0f = torch.floor(p.detach()).clamp_(max=float(max(n - 2, 0)))
    else:
        # wrap into [0, n]; rounding may land exactly on 0 or n, both fine
        big = min(_PERIODIC_WRAPS * n, torch.finfo(p.dtype).max / 4)
        p = p.clamp(-big, big)
        p = p - float(n) * torch.floor(p.detach() * (1.0 / n))
        p = p.clamp(min=0.0)
        i0f = torch.floor(p.detach()).clamp_(max=float(n - 1))
    return i0f, p - i0f


def bilinear_stencil(
    ydep: torch.Tensor,
    xdep: torch.Tensor,
    src_shape: tuple[int, int],
    boundary: str = "closed",
    finite: bool = False,
) -> Stencil:
    """Bilinear stencil reading a ``src_shape`` grid at the points ``(ydep, xdep)``.

    Parameters
    ----------
    ydep, xdep : Tensor, shape (batch, my, mx) or (my, mx)
        Positions in grid-index units along ``y`` (rows) and ``x`` (columns).
        Any value is accepted (see the module notes on NaN/inf).
    src_shape : (int, int)
        ``(ny, nx)`` of the grid to be read.
    boundary : {"closed", "periodic"}
    finite : bool
        Promise that the positions hold no NaN (skips one pass); infinities
        are always handled.

    Returns
    -------
    Stencil
    """
    check_boundary(boundary)
    ny, nx = int(src_shape[0]), int(src_shape[1])
    if ny < 1 or nx < 1:
        raise ValueError(f"src_shape must be positive, got {tuple(src_shape)}")
    ydep, xdep = torch.broadcast_tensors(ydep, xdep)
    if ydep.ndim == 2:
        ydep, xdep = ydep.unsqueeze(0), xdep.unsqueeze(0)
    if ydep.ndim != 3:
        raise ValueError(f"positions must be (batch, my, mx) or (my, mx), got {tuple(ydep.shape)}")
    if not ydep.is_floating_point():
        raise TypeError(f"positions must be floating point, got {ydep.dtype}")
    b, my, mx = ydep.shape
    m = my * mx
    y0, fy = _axis(ydep.reshape(b, 1, m), ny, boundary, finite)
    x0, fx = _axis(xdep.reshape(b, 1, m), nx, boundary, finite)
    if boundary == "periodic":
        pad = "circular"
    else:
        pad = "replicate" if ny == 1 or nx == 1 else None
    row = nx + 1 if pad else nx
    if (ny + 1) * (nx + 1) < 1.0 / torch.finfo(y0.dtype).eps:
        base = (y0 * float(row) + x0).long()  # exact: integers below 2**mantissa
    else:
        base = y0.long() * row + x0.long()
    return Stencil(base, fy, fx, (ny, nx), (my, mx), pad)


def apply_stencil(field: torch.Tensor, stencil: Stencil) -> torch.Tensor:
    """Interpolate all channels of ``field`` with a precomputed stencil.

    Parameters
    ----------
    field : Tensor, shape (batch, channel, ny, nx)
        ``(ny, nx)`` must equal ``stencil.src_shape``; ``batch`` must equal the
        stencil's batch, or either may be 1 (broadcast).

    Returns
    -------
    Tensor, shape (batch, channel, my, mx)
    """
    ny, nx = stencil.src_shape
    if field.ndim != 4 or tuple(field.shape[-2:]) != (ny, nx):
        raise ValueError(
            f"field must be (batch, channel, {ny}, {nx}), got {tuple(field.shape)}"
        )
    base = stencil.base
    bf, c = field.shape[0], field.shape[1]
    bs = base.shape[0]
    if bf != bs and 1 not in (bf, bs):
        raise ValueError(f"batch of field ({bf}) and stencil ({bs}) do not match")
    b = max(bf, bs)
    my, mx = stencil.out_shape
    m = my * mx
    if stencil.pad:
        # one extra row and column: periodic copy, or (closed, n == 1) a
        # replica that gets zero weight
        field = torch.nn.functional.pad(field, (0, 1, 0, 1), mode=stencil.pad)
        row = nx + 1
    else:
        row = nx
    src = field.reshape(bf, c, -1)
    if bf != b:
        src = src.expand(b, c, src.shape[-1])
    return _Bilinear.apply(src, stencil.fy, stencil.fx, stencil.base, row)[0].view(b, c, my, mx)


def _corner_differences(src, fx, base, row):
    """Four-corner read: lower-row value and the x, x and y differences."""
    b, c = src.shape[:2]
    idx = base.expand(b, c, base.shape[-1])
    # the four corners: one index into views shifted by 0, 1, row, row + 1
    v00 = src.gather(2, idx)
    dtop = src[..., 1:].gather(2, idx) - v00
    v10 = src[..., row:].gather(2, idx)
    dbot = src[..., row + 1 :].gather(2, idx) - v10
    top = torch.addcmul(v00, fx, dtop)
    dy = torch.addcmul(v10, fx, dbot) - top
    return top, dtop, dbot, dy


class _Bilinear(torch.autograd.Function):
    """``out = bilinear(src)`` at a fixed integer stencil with fractions ``(fy, fx)``.

    Hand-written reverse (one scatter per corner into a single buffer) and
    forward-mode rules; a double backward (``create_graph=True``) recomputes
    the corner differences from ``src`` with plain differentiable ops.

    Inputs: ``src (b, c, L)`` flat (possibly padded) source, ``fy, fx``
    broadcastable to ``(b, 1, m)``, ``base (bs, 1, m)`` int64, ``row`` int.
    Outputs: ``out (b, c, m)`` and three non-differentiable saved tensors.
    """

    @staticmethod
    def forward(src, fy, fx, base, row):
        top, dtop, dbot, dy = _corner_differences(src, fx, base, row)
        return torch.addcmul(top, fy, dy), dtop, dbot, dy

    @staticmethod
    def setup_context(ctx, inputs, output):
        src, fy, fx, base, row = inputs
        _, dtop, dbot, dy = output
        ctx.mark_non_differentiable(dtop, dbot, dy)
        ctx.row = row
        ctx.save_for_backward(src, fy, fx, base, dtop, dbot, dy)
        ctx.save_for_forward(fy, fx, base, dtop, dbot, dy)

    @staticmethod
    def backward(ctx, g, *_):
        src, fy, fx, base, dtop, dbot, dy = ctx.saved_tensors
        row = ctx.row
        need_src, need_fy, need_fx = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            # higher-order derivatives: make the corner terms depend on src
            _, dtop, dbot, dy = _corner_differences(src, fx, base, row)
        gsrc = gfy = gfx = None
        if need_src:
            b, c, m = g.shape
            idx = base.expand(b, c, m)
            gb = g * fy
            ga = g - gb
            gax = ga * fx
            gbx = gb * fx
            gsrc = torch.zeros(b, c, src.shape[-1], dtype=g.dtype, device=g.device)
            if torch.is_grad_enabled():
                parts = ((0, ga - gax), (1, gax), (row, gb - gbx), (row + 1, gbx))
                for off, val in parts:
                    gsrc = gsrc + torch.nn.functional.pad(
                        torch.zeros_like(gsrc[..., off:]).scatter_add(2, idx, val), (off, 0)
                    )
            else:
                gsrc.scatter_add_(2, idx, ga.sub_(gax))
                gsrc[..., 1:].scatter_add_(2, idx, gax)
                gsrc[..., row:].scatter_add_(2, idx, gb.sub_(gbx))
                gsrc[..., row + 1 :].scatter_add_(2, idx, gbx)
        if need_fx:
            gfx = (g * torch.lerp(dtop, dbot, fy)).sum_to_size(fx.shape)
        if need_fy:
            gfy = (g * dy).sum_to_size(fy.shape)
        return gsrc, gfy, gfx, None, None

    @staticmethod
    def jvp(ctx, src_t, fy_t, fx_t, base_t, row_t):
        fy, fx, base, dtop, dbot, dy = ctx.saved_tensors
        out_t = None
        if src_t is not None:
            top, _, _, dyt = _corner_differences(src_t, fx, base, ctx.row)
            out_t = torch.addcmul(top, fy, dyt)
        if fx_t is not None:
            t = fx_t * torch.lerp(dtop, dbot, fy)
            out_t = t if out_t is None else out_t + t
        if fy_t is not None:
            t = fy_t * dy
            out_t = t if out_t is None else out_t + t
        if out_t is None:
            out_t = torch.zeros_like(dy)
        return out_t, None, None, None


def interp2d(
    field: torch.Tensor,
    ydep: torch.Tensor,
    xdep: torch.Tensor,
    boundary: str = "closed",
) -> torch.Tensor:
    """Bilinear interpolation of ``field`` at the points ``(ydep, xdep)``.

    Parameters
    ----------
    field : Tensor, shape (batch, channel, ny, nx)
    ydep, xdep : Tensor, shape (batch, my, mx) or (my, mx)
        Positions in grid-index units (row, column); usually ``my, mx = ny, nx``.
    boundary : {"closed", "periodic"}
        ``"closed"`` clamps the points into the grid, ``"periodic"`` wraps them.

    Returns
    -------
    Tensor, shape (batch, channel, my, mx)
        Differentiable (forward and reverse mode) with respect to ``field`` and
        the positions; values lie within the min/max of ``field``.
    """
    if field.ndim != 4:
        raise ValueError(f"field must be (batch, channel, ny, nx), got {tuple(field.shape)}")
    st = bilinear_stencil(ydep.to(field.dtype), xdep.to(field.dtype), field.shape[-2:], boundary)
    return apply_stencil(field, st)


def grid_coordinates(ny: int, nx: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices as ``(ny, 1)`` and ``(1, nx)`` tensors like ``like``."""
    gy = torch.arange(ny, dtype=like.dtype, device=like.device).view(ny, 1)
    gx = torch.arange(nx, dtype=like.dtype, device=like.device).view(1, nx)
    return gy, gx


def departure_from_displacement(
    disp: torch.Tensor,
    boundary: str = "closed",
    iterations: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Departure points of a steady displacement field (midpoint rule).

    Solves ``d = D(r - d / 2)`` for the displacement ``d`` over one step that
    ends on the grid point ``r`` by ``iterations`` fixed-point iterations from
    ``d = D(r)``, ``D`` being bilinearly interpolated; the departure point is
    ``r - d``.  Second order in time.

    Parameters
    ----------
    disp : Tensor, shape (batch, 2, ny, nx)
        Displacement per time step in grid cells, channel 0 along ``x``
        (columns), channel 1 along ``y`` (rows).  NaN is read as 0.
    boundary : {"closed", "periodic"}
    iterations : int >= 0

    Returns
    -------
    ydep, xdep : Tensor, shape (batch, ny, nx)
        Departure points in grid-index units (not yet clamped or wrapped).
    """
    check_boundary(boundary)
    if disp.ndim != 4 or disp.shape[1] != 2:
        raise ValueError(f"disp must be (batch, 2, ny, nx), got {tuple(disp.shape)}")
    ny, nx = disp.shape[-2:]
    # a displacement beyond a few million cells is meaningless; the bound
    # keeps infinities out of the interpolation (inf * 0 weight = NaN)
    disp = sanitize(disp, min(_PERIODIC_WRAPS * max(ny, nx), torch.finfo(disp.dtype).max / 8))
    gy, gx = grid_coordinates(ny, nx, disp)
    d = disp
    for _ in range(int(iterations)):
        st = bilinear_stencil(
            gy - 0.5 * d[:, 1], gx - 0.5 * d[:, 0], (ny, nx), boundary, finite=True
        )
        d = apply_stencil(disp, st)
    return gy - d[:, 1], gx - d[:, 0]


def departure_points(
    u: torch.Tensor,
    v: torch.Tensor,
    dt: float,
    dx: float = 1.0,
    dy: float = 1.0,
    boundary: str = "closed",
    iterations: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Semi-Lagrangian departure points of a velocity field over one step.

    Second-order midpoint rule: the displacement ``d`` over ``dt`` ending on
    the grid point ``r`` solves ``d = dt * w(r - d / 2)``, found by
    ``iterations`` (default 2) fixed-point iterations; the departure point is
    ``r - d``.  The velocity is held fixed during the step.

    Parameters
    ----------
    u, v : Tensor, shape (batch, ny, nx)
        Velocity components along ``x`` (last axis) and ``y`` (second-last
        axis), in grid-spacing units per time unit (``dx`` per ``dt`` unit).
    dt : float
        Time step (> 0).
    dx, dy : float
        Grid spacings along ``x`` and ``y`` (> 0), same length unit as the
        velocity times the time unit.
    boundary : {"closed", "periodic"}
    iterations : int
        Fixed-point iterations (0 gives the first-order Euler departure point).

    Returns
    -------
    ydep, xdep : Tensor, shape (batch, ny, nx)
        Departure points in grid-index units, ready for :func:`interp2d`.
    """
    disp = torch.stack([u * (dt / dx), v * (dt / dy)], dim=1)
    return departure_from_displacement(disp, boundary, iterations)


__all__ = [
    "BOUNDARIES",
    "Stencil",
    "apply_stencil",
    "bilinear_stencil",
    "check_boundary",
    "departure_from_displacement",
    "departure_points",
    "grid_coordinates",
    "interp2d",
    "sanitize",
]
