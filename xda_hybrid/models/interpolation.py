"""Differentiable bilinear interpolation and semi-Lagrangian departure points.

The interpolation itself runs on :func:`torch.nn.functional.grid_sample`
(its native kernels and their reverse rule) wrapped in a
:class:`torch.autograd.Function` that adds the forward-mode rule grid_sample
lacks; the stencil's integer index arithmetic and ``gather`` supply that rule
(and the whole computation for a closed grid with a single row or column).
Reverse-mode AD (``backward``, :func:`torch.func.vjp`), forward-mode AD
(:func:`torch.func.jvp`) and double backward all work.  On the 240×240 image
model the grid_sample path halves the cost of a forward + adjoint evaluation
against the gather/scatter one (benchmarks/motion_large_window.py).

Conventions
-----------
* Fields are laid out ``(batch, channel, ny, nx)``: ``y`` is the second-last
  axis, ``x`` the last.
* Positions are in **grid-index units**: ``x = 3.25`` lies a quarter of a cell
  to the right of column 3.  Cell centres sit on integer positions.
* ``boundary="closed"``: positions are clamped into ``[0, n - 1]`` (the border
  value is extended outwards: a zero-gradient / Neumann border).
  ``boundary="periodic"``: positions wrap around (``x`` and ``x + nx`` are the
  same point).

Bilinear interpolation is a convex combination of the four surrounding grid
values (weights in ``[0, 1]`` summing to one), so it is monotone: the result
lies within the field's min/max, up to rounding.  Any position is accepted —
NaN is read as 0, infinite or huge values are clamped before any integer
conversion — so the output is finite whenever the field is (and its values
stay below ``finfo.max / 4`` in magnitude).

Derivatives with respect to a position are those of the bilinear interpolant:
zero where a closed boundary clamps the point, undefined (one-sided) exactly on
a grid line.

For repeated interpolations at the same points (several fields, or the same
departure points over many time steps), compute the :class:`Stencil` once with
:func:`bilinear_stencil` and apply it with :func:`apply_stencil`; all channels
of a field are read with one index computation.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch.nn import functional as F

#: accepted values of the ``boundary`` argument
BOUNDARIES = ("closed", "periodic")

# Periodic positions are clamped to +-(this many domain lengths) before the
# integer conversion; beyond ~2**24 cells float32 has no fractional part left
# anyway, and the clamp keeps the conversion well defined for +-inf.
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


def sanitize(t: torch.Tensor, bound: float) -> torch.Tensor:
    """Replace NaN by 0 and clamp into ``[-bound, bound]`` (differentiable).

    Finite values inside the bound pass unchanged (derivative 1); values
    outside, ``+-inf`` included, become ``+-bound`` (derivative 0).
    """
    bound = float(bound)
    return torch.nan_to_num(t, nan=0.0, posinf=bound, neginf=-bound).clamp(-bound, bound)


class Stencil(NamedTuple):
    """Bilinear stencil: the points at which a grid is read.

    Attributes
    ----------
    pos : Tensor, shape (batch, 2, M)
        Positions ``(x, y)`` of the ``M = my * mx`` target points in
        grid-index units, NaN-free; wrapped into ``[0, n]`` for a periodic
        boundary, as given for a closed one (clamped when read, with zero
        derivative outside ``(0, n - 1)``).  Differentiable.
    src_shape : (int, int)
        ``(ny, nx)`` of the source grid.
    out_shape : (int, int)
        ``(my, mx)`` of the target points.
    boundary : {"closed", "periodic"}
    """

    pos: torch.Tensor
    src_shape: tuple[int, int]
    out_shape: tuple[int, int]
    boundary: str


@functools.lru_cache(maxsize=64)
def _grid_constants(ny: int, nx: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Per-grid constant tensors (never written to, never requiring grad)."""
    # normal tensors even when first called under inference_mode
    with torch.inference_mode(False), torch.no_grad():
        kw = dict(dtype=dtype, device=device)
        gx = torch.arange(nx, **kw).view(1, nx).expand(ny, nx)
        gy = torch.arange(ny, **kw).view(ny, 1).expand(ny, nx)
        n = torch.tensor([nx, ny], **kw).view(1, 2, 1)
        return {
            "grid": torch.stack([gx, gy]).unsqueeze(0),  # (1, 2, ny, nx): x, y
            "n": n,
            "n_max": float(max(ny, nx)),
            "inv_n": 1.0 / n,
            "n_minus_1": n - 1,
            "n_minus_2": (n - 2).clamp_(min=0),
        }


@functools.lru_cache(maxsize=64)
def _grid_affine(ny: int, nx: int, periodic: bool, dtype: torch.dtype, device: torch.device):
    """``(scale, offset)``, each ``(1, 2, 1)`` (x, y): grid_sample coordinates ``pos * scale + offset``.

    ``align_corners=True`` on the source as read: the grid itself (closed),
    or the grid padded by one periodic row and column on each side
    (periodic, positions shifted by one).
    """
    with torch.inference_mode(False), torch.no_grad():
        if periodic:
            scale = [2.0 / (nx + 1), 2.0 / (ny + 1)]
            offset = [s - 1.0 for s in scale]
        else:
            scale = [2.0 / max(nx - 1, 1), 2.0 / max(ny - 1, 1)]
            offset = [-1.0, -1.0]
        kw = dict(dtype=dtype, device=device)
        return torch.tensor(scale, **kw).view(1, 2, 1), torch.tensor(offset, **kw).view(1, 2, 1)


def _constants(ny: int, nx: int, like: torch.Tensor) -> dict:
    return _grid_constants(int(ny), int(nx), like.dtype, like.device)


class _Fraction(torch.autograd.Function):
    """Lower grid index and fractional part of positions, both axes at once.

    ``pos (b, 2, M)`` (channels x, y; any float) -> ``(frac, i0, mask)`` with
    ``i0`` a float holding an integer in ``[0, n - 2]`` (closed) or
    ``[0, n - 1]`` (periodic) and ``frac`` in ``[0, 1]``.  ``d frac / d pos``
    is 1, or 0 where a closed border clamps (``mask``).
    """

    @staticmethod
    def forward(pos, const, periodic):
        if periodic:
            big = min(_PERIODIC_WRAPS * const["n_max"], torch.finfo(pos.dtype).max / 4)
            q = pos.clamp(-big, big)
            # wrap into [0, n]; rounding may land on 0 or n, both fine
            q = q - const["n"] * torch.floor(q * const["inv_n"])
            q = q.clamp_(min=0.0)
            i0 = torch.floor(q)
            i0 = torch.minimum(i0, const["n_minus_1"], out=i0)
            mask = None
        else:
            q = torch.maximum(pos, torch.zeros((), dtype=pos.dtype, device=pos.device))
            q = torch.minimum(q, const["n_minus_1"], out=q)
            i0 = torch.floor(q)
            i0 = torch.minimum(i0, const["n_minus_2"], out=i0)
            mask = (q == pos).to(pos.dtype)
        return q - i0, i0, mask

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, i0, mask = output
        ctx.mark_non_differentiable(*(t for t in (i0, mask) if t is not None))
        ctx.has_mask = mask is not None
        ctx.save_for_backward(mask)
        ctx.save_for_forward(mask)

    @staticmethod
    def backward(ctx, g, *_):
        if not ctx.has_mask:
            return g, None, None
        (mask,) = ctx.saved_tensors
        return g * mask, None, None

    @staticmethod
    def jvp(ctx, p_t, *_):
        if not ctx.has_mask:
            return p_t.clone(), None, None
        (mask,) = ctx.saved_tensors
        return p_t * mask, None, None


def _make_stencil(pos: torch.Tensor, ny: int, nx: int, boundary: str, const=None) -> Stencil:
    """Stencil from NaN-free positions ``pos (b, 2, my, mx)`` (channels x, y)."""
    b, _, my, mx = pos.shape
    pos = pos.reshape(b, 2, my * mx)
    if boundary == "periodic":
        if const is None:
            const = _constants(ny, nx, pos)
        big = min(_PERIODIC_WRAPS * const["n_max"], torch.finfo(pos.dtype).max / 4)
        q = pos.clamp(-big, big)
        # wrap into [0, n] (derivative 1); rounding may land on 0 or n, both fine
        pos = torch.sub(q, const["n"] * torch.floor(q * const["inv_n"])).clamp_(min=0.0)
    return Stencil(pos, (ny, nx), (my, mx), boundary)


def _gather_stencil(pos: torch.Tensor, ny: int, nx: int, boundary: str):
    """Flat-index form of a stencil: ``(base, frac, row, pad)``.

    The four corners of point ``k`` are read at the flat indices
    ``base[k] + (0, 1, row, row + 1)`` of the source, extended first by one
    row and column when ``pad`` is set (``"circular"`` for a periodic
    boundary, ``"replicate"`` for a closed grid with a single row or column,
    whose extra values get zero weight; ``row = nx + 1``), else
    ``row = nx``.  ``base (b, 1, M)`` int64; ``frac (b, 2, M)`` in ``[0, 1]``
    (x, y), differentiable with respect to ``pos``.
    """
    const = _constants(ny, nx, pos)
    periodic = boundary == "periodic"
    frac, i0, _ = _Fraction.apply(pos, const, periodic)
    if periodic:
        pad = "circular"
    else:
        pad = "replicate" if ny == 1 or nx == 1 else None
    row = nx + 1 if pad else nx
    if (ny + 1) * (nx + 1) < 1.0 / torch.finfo(i0.dtype).eps:
        # exact: small integers in floating point
        base = torch.add(i0[:, 0:1], i0[:, 1:2], alpha=row).long()
    else:
        base = i0[:, 1:2].long() * row + i0[:, 0:1].long()
    return base, frac, row, pad


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
        are handled either way.

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
    pos = torch.stack([xdep, ydep], 1)
    if not finite:
        pos = torch.nan_to_num(pos, nan=0.0)
    return _make_stencil(pos, ny, nx, boundary)


def _corner_differences(src, fx, base, row):
    """Four-corner read: interpolated lower row and the x, x, y differences."""
    b, c = src.shape[:2]
    idx = base.expand(b, c, base.shape[-1])
    # the four corners: one index into views shifted by 0, 1, row, row + 1
    v00 = src.gather(2, idx)
    dtop = src[..., 1:].gather(2, idx).sub_(v00)
    v10 = src[..., row:].gather(2, idx)
    dbot = src[..., row + 1 :].gather(2, idx).sub_(v10)
    top = torch.addcmul(v00, fx, dtop)
    dy = torch.addcmul(v10, fx, dbot).sub_(top)
    return top, dtop, dbot, dy


class _Bilinear(torch.autograd.Function):
    """``out = bilinear(src)`` at a fixed integer stencil with fractions ``frac``.

    Hand-written reverse rule (one scatter per corner into a single buffer)
    and forward rule; under ``create_graph=True`` the reverse rule recomputes
    the corner differences from ``src`` with differentiable ops, so double
    backward is exact too.

    Inputs: ``src (b, c, L)`` flat (possibly padded) source, ``frac`` (x, y)
    broadcastable to ``(b, 2, m)``, ``base (b or 1, 1, m)`` int64, ``row``.
    Outputs: ``out (b, c, m)`` and three non-differentiable saved tensors.
    """

    @staticmethod
    def forward(src, frac, base, row):
        top, dtop, dbot, dy = _corner_differences(src, frac[:, 0:1], base, row)
        return torch.addcmul(top, frac[:, 1:2], dy), dtop, dbot, dy

    @staticmethod
    def setup_context(ctx, inputs, output):
        src, frac, base, row = inputs
        _, dtop, dbot, dy = output
        ctx.mark_non_differentiable(dtop, dbot, dy)
        ctx.row = row
        ctx.save_for_backward(src, frac, base, dtop, dbot, dy)
        ctx.save_for_forward(frac, base, dtop, dbot, dy)

    @staticmethod
    def backward(ctx, g, *_):
        src, frac, base, dtop, dbot, dy = ctx.saved_tensors
        row = ctx.row
        fx, fy = frac[:, 0:1], frac[:, 1:2]
        need_src, need_frac = ctx.needs_input_grad[:2]
        create_graph = torch.is_grad_enabled()
        if create_graph:
            # higher-order derivatives: make the corner terms depend on src
            _, dtop, dbot, dy = _corner_differences(src, fx, base, row)
        gsrc = gfrac = None
        if need_src:
            b, c, m = g.shape
            idx = base.expand(b, c, m)
            gb = g * fy
            ga = g - gb
            gax = ga * fx
            gbx = gb * fx
            length = src.shape[-1]
            if create_graph:
                parts = ((0, ga - gax), (1, gax), (row, gb - gbx), (row + 1, gbx))
                gsrc = sum(
                    F.pad(g.new_zeros(b, c, length - off).scatter_add(2, idx, val), (off, 0))
                    for off, val in parts
                )
            else:
                parts = ((0, ga.sub_(gax)), (1, gax), (row, gb.sub_(gbx)), (row + 1, gbx))
                gsrc = g.new_zeros(b, c, length)
                for off, val in parts:
                    gsrc[..., off:].scatter_add_(2, idx, val)
        if need_frac:
            shape = (frac.shape[0], 1, frac.shape[2])
            gfx = (g * torch.lerp(dtop, dbot, fy)).sum_to_size(shape)
            gfy = (g * dy).sum_to_size(shape)
            gfrac = torch.cat([gfx, gfy], 1)
        return gsrc, gfrac, None, None

    @staticmethod
    def jvp(ctx, src_t, frac_t, base_t, row_t):
        frac, base, dtop, dbot, dy = ctx.saved_tensors
        fx, fy = frac[:, 0:1], frac[:, 1:2]
        out_t = None
        if src_t is not None:
            top, _, _, dyt = _corner_differences(src_t, fx, base, ctx.row)
            out_t = torch.addcmul(top, fy, dyt)
        if frac_t is not None:
            t = frac_t[:, 0:1] * torch.lerp(dtop, dbot, fy) + frac_t[:, 1:2] * dy
            out_t = t if out_t is None else out_t + t
        if out_t is None:
            out_t = torch.zeros_like(dy)
        return out_t, None, None, None


class _GridBilinear(torch.autograd.Function):
    """``out = bilinear(src)`` at the positions ``pos``, by :func:`F.grid_sample`.

    Inputs: ``src (b, c, H, W)`` the source as read (padded by one row and
    column on each side for a periodic boundary), ``pos (b or 1, 2, m)`` the
    positions (x, y) of a :class:`Stencil`, ``scale``/``offset`` from
    :func:`_grid_affine`, ``meta = (ny, nx, boundary, (my, mx))``.  Outputs
    ``(b, c, my, mx)`` and the grid (non-differentiable, kept for the
    adjoint).  grid_sample runs with ``align_corners=True`` and border
    padding: closed positions are clamped into the grid (derivative 0 outside
    the open interval ``(0, n - 1)``).

    Reverse rule: grid_sample's native backward kernel (itself
    differentiable, so double backward is exact).  Forward rule, which
    grid_sample lacks: grid_sample of the source tangent, plus the position
    tangent times the corner differences of the flat-index stencil.
    """

    @staticmethod
    def forward(src, pos, scale, offset, meta):
        grid = _to_grid(pos, scale, offset, meta[3], src.shape[0])
        return _grid_sample(src, grid), grid

    @staticmethod
    def setup_context(ctx, inputs, output):
        src, pos, scale, offset, meta = inputs
        grid = output[1]
        ctx.mark_non_differentiable(grid)
        ctx.meta = meta
        ctx.save_for_backward(src, grid, scale, offset, pos)
        ctx.save_for_forward(src, pos, scale, offset)

    @staticmethod
    def backward(ctx, g, _):
        src, grid, scale, offset, pos = ctx.saved_tensors
        need_src, need_pos = ctx.needs_input_grad[:2]
        b = src.shape[0]
        if torch.is_grad_enabled():  # create_graph: the grid as a function of pos (double backward)
            grid = _to_grid(pos, scale, offset, ctx.meta[3], b)
        gsrc, ggrid = _grid_sample_backward(g, src, grid, need_src, need_pos)
        gpos = None
        if need_pos:
            gpos = ggrid.reshape(b, -1, 2).transpose(1, 2).mul(scale).sum_to_size(pos.shape)
        return (gsrc if need_src else None), gpos, None, None, None

    @staticmethod
    def jvp(ctx, src_t, pos_t, *_):
        src, pos, scale, offset = ctx.saved_tensors
        return _bilinear_tangent(src, src_t, pos, pos_t, scale, offset, ctx.meta), None


def _bilinear_tangent(src, src_t, pos, pos_t, scale, offset, meta):
    """Tangent ``(b, c, my, mx)`` of ``bilinear(src)`` at ``pos`` for tangents ``src_t``, ``pos_t`` (or None).

    Arguments as the inputs of :class:`_GridBilinear`: ``src`` as read (padded
    for a periodic boundary), ``pos (b or 1, 2, m)`` the stencil's positions.
    The position term is the tangent times the corner differences of the
    flat-index stencil (zero where a closed border clamps).
    """
    ny, nx, boundary, out_shape = meta
    b, c = src.shape[:2]
    out_t = None
    if src_t is not None:
        out_t = _grid_sample(src_t, _to_grid(pos, scale, offset, out_shape, b))
    if pos_t is not None:
        base, frac, row, pad = _gather_stencil(pos, ny, nx, boundary)
        if boundary == "periodic":  # the (0, 1, 0, 1) periodic extension of the flat stencil
            src = src[..., 1:, 1:]
        else:  # grid_sample's clamp: no derivative on or beyond the border
            lim = torch.tensor([nx - 1, ny - 1], dtype=pos.dtype, device=pos.device).view(1, 2, 1)
            pos_t = pos_t * ((pos > 0) & (pos < lim)).to(pos.dtype)
        _, dtop, dbot, dy = _corner_differences(src.reshape(b, c, -1), frac[:, 0:1], base, row)
        t = pos_t[:, 0:1] * torch.lerp(dtop, dbot, frac[:, 1:2]) + pos_t[:, 1:2] * dy
        t = t.view(b, c, *out_shape)
        out_t = t if out_t is None else out_t + t
    if out_t is None:
        out_t = src.new_zeros(b, c, *out_shape)
    return out_t


def _row_blocks(src: torch.Tensor, grid: torch.Tensor) -> int:
    """How many row blocks to split a single-window CPU grid_sample into.

    The CPU kernels of grid_sample and its backward run in parallel over the
    batch only: a single window (the classical 4DVAR of one large window) runs
    on one thread.  Its target rows are cut into as many blocks as threads
    (a divisor of the row count), read as a batch of the same source.
    """
    if src.shape[0] != 1 or src.device.type != "cpu" or grid.shape[1] * grid.shape[2] < 4096:
        return 1
    k, rows = torch.get_num_threads(), grid.shape[1]
    while rows % k:
        k -= 1
    return k


def _grid_sample(src: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``F.grid_sample`` (bilinear, border, align_corners) of ``src (b, c, H, W)`` at ``grid (b, my, mx, 2)``."""
    k = _row_blocks(src, grid)
    if k == 1:
        return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True)
    c, my, mx = src.shape[1], grid.shape[1], grid.shape[2]
    out = F.grid_sample(src.expand(k, *src.shape[1:]), grid.reshape(k, my // k, mx, 2), mode="bilinear",
                        padding_mode="border", align_corners=True)
    return out.view(1, k, c, my // k, mx).transpose(1, 2).reshape(1, c, my, mx)


def _grid_sample_backward(g, src, grid, need_src, need_grid):
    """grid_sample's native reverse rule, split into row blocks as :func:`_grid_sample`: ``(gsrc, ggrid)``."""
    mask = [bool(need_src), bool(need_grid)]
    k = _row_blocks(src, grid)
    if k == 1:
        g = g if g.device.type == "cpu" else g.contiguous()  # the CPU kernel reads any strides
        return torch.ops.aten.grid_sampler_2d_backward(g, src, grid, 0, 1, True, mask)
    c, my, mx = src.shape[1], grid.shape[1], grid.shape[2]
    gk = g.reshape(1, c, k, my // k, mx).transpose(1, 2).reshape(k, c, my // k, mx)
    gsrc, ggrid = torch.ops.aten.grid_sampler_2d_backward(
        gk, src.expand(k, *src.shape[1:]), grid.reshape(k, my // k, mx, 2), 0, 1, True, mask
    )
    if need_src:
        gsrc = gsrc.sum(0, keepdim=True)
    if need_grid:
        ggrid = ggrid.reshape(1, my, mx, 2)
    return gsrc, ggrid


def _to_grid(pos, scale, offset, out_shape, batch):
    """grid_sample grid ``(batch, my, mx, 2)`` from positions ``(b or 1, 2, m)``."""
    g = torch.addcmul(offset, pos, scale)
    g = g.view(g.shape[0], 2, *out_shape).permute(0, 2, 3, 1)
    return g if g.shape[0] == batch else g.expand(batch, *g.shape[1:])


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
        raise ValueError(f"field must be (batch, channel, {ny}, {nx}), got {tuple(field.shape)}")
    bf, c = field.shape[0], field.shape[1]
    pos = stencil.pos
    bs = pos.shape[0]
    if bf != bs and 1 not in (bf, bs):
        raise ValueError(f"batch of field ({bf}) and stencil ({bs}) do not match")
    b = max(bf, bs)
    my, mx = stencil.out_shape
    periodic = stencil.boundary == "periodic"
    if periodic or (ny > 1 and nx > 1):
        if periodic:  # one periodic row and column on each side
            field = F.pad(field, (1, 1, 1, 1), mode="circular")
        if bf != b:
            field = field.expand(b, *field.shape[1:])
        scale, offset = _grid_affine(ny, nx, periodic, field.dtype, field.device)
        return _GridBilinear.apply(field, pos, scale, offset, (ny, nx, stencil.boundary, (my, mx)))[0]
    # a closed grid with a single row or column: flat-index gather
    base, frac, row, pad = _gather_stencil(pos, ny, nx, stencil.boundary)
    if pad:
        field = F.pad(field, (0, 1, 0, 1), mode=pad)
    src = field.reshape(bf, c, -1)
    if bf != b:
        src = src.expand(b, c, src.shape[-1])
    out = _Bilinear.apply(src, frac, base, row)[0]
    return out.view(b, c, my, mx)


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
        Positions in grid-index units (row, column); usually ``(my, mx) =
        (ny, nx)``.  NaN is read as 0; infinite values are clamped.
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


def _check_disp(disp: torch.Tensor) -> None:
    if disp.ndim != 4 or disp.shape[1] != 2:
        raise ValueError(f"disp must be (batch, 2, ny, nx), got {tuple(disp.shape)}")


def _sanitize_disp(disp: torch.Tensor) -> torch.Tensor:
    # a displacement beyond a million domain lengths is meaningless; the bound
    # keeps infinities out of the interpolation (inf * 0 weight = NaN)
    n = max(disp.shape[-2:])
    return sanitize(disp, min(_PERIODIC_WRAPS * n, torch.finfo(disp.dtype).max / 8))


def _midpoint_positions(disp: torch.Tensor, boundary: str, iterations: int) -> torch.Tensor:
    """Departure points ``(b, 2, ny, nx)`` (x, y) by fixed-point iterations
    ``d <- D(r - d / 2)`` from ``d = D(r)``."""
    ny, nx = disp.shape[-2:]
    const = _constants(ny, nx, disp)
    grid = const["grid"]
    d = disp
    for _ in range(int(iterations)):
        st = _make_stencil(torch.sub(grid, d, alpha=0.5), ny, nx, boundary, const)
        d = apply_stencil(disp, st)
    return grid - d


def departure_from_displacement(
    disp: torch.Tensor,
    boundary: str = "closed",
    iterations: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Departure points of a steady displacement field (midpoint rule).

    Solves ``d = D(r - d / 2)`` for the displacement ``d`` over one step that
    ends on the grid point ``r`` by ``iterations`` fixed-point iterations from
    ``d = D(r)``, ``D`` being bilinearly interpolated (with ``boundary``); the
    departure point is ``r - d``.  Second order in time.

    Parameters
    ----------
    disp : Tensor, shape (batch, 2, ny, nx)
        Displacement per time step in grid cells, channel 0 along ``x``
        (columns), channel 1 along ``y`` (rows).  NaN is read as 0, values
        beyond ``2**20`` domain lengths (``+-inf`` included) are clamped.
    boundary : {"closed", "periodic"}
    iterations : int >= 0

    Returns
    -------
    ydep, xdep : Tensor, shape (batch, ny, nx)
        Departure points in grid-index units (not clamped or wrapped).
    """
    check_boundary(boundary)
    _check_disp(disp)
    pos = _midpoint_positions(_sanitize_disp(disp), boundary, iterations)
    return pos[:, 1], pos[:, 0]


def departure_stencil(
    disp: torch.Tensor,
    boundary: str = "closed",
    iterations: int = 2,
    clean: bool = False,
) -> Stencil:
    """Bilinear stencil at the departure points of :func:`departure_from_displacement`.

    ``clean=True`` promises that ``disp`` holds no NaN and nothing beyond
    ``finfo.max / 8`` in magnitude (skips :func:`sanitize`).
    """
    check_boundary(boundary)
    _check_disp(disp)
    if not clean:
        disp = _sanitize_disp(disp)
    ny, nx = disp.shape[-2:]
    return _make_stencil(_midpoint_positions(disp, boundary, iterations), ny, nx, boundary)


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
    ``iterations`` (default 2) fixed-point iterations from ``d = dt * w(r)``;
    the departure point is ``r - d``.  The velocity is held fixed during the
    step.

    Parameters
    ----------
    u, v : Tensor, shape (batch, ny, nx)
        Velocity components along ``x`` (last axis) and ``y`` (second-last
        axis), in length units of ``dx``/``dy`` per time unit of ``dt``.
    dt : float
        Time step (> 0).
    dx, dy : float
        Grid spacings along ``x`` and ``y`` (> 0).
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
    "departure_stencil",
    "grid_coordinates",
    "interp2d",
    "sanitize",
]
