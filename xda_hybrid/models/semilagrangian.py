"""One semi-Lagrangian step of a self-advected state as a single autograd node with a hand-written adjoint.

The image model's step (:class:`~xda_hybrid.models.image.ImageModel`) reads
every channel of the state at the departure points of its own velocity:

    D = w · (dt/dx, dt/dy)                      displacement per step (cells)
    d₀ = D,  d_{i+1} = D(r − d_i / 2)           midpoint fixed point, i < iterations
    x⁺ = x(r − d_n)                             all channels at the departure points

each read being a bilinear interpolation (:func:`F.grid_sample`).  Composed of
autograd operations, the adjoint of this step spends more time in the small
elementwise nodes around the interpolations (position arithmetic, layout
changes, the periodic wrap, zero-filled buffers) than in grid_sample's own
reverse kernels.  :class:`SemiLagrangianStep` computes the positions directly
in grid_sample's normalised coordinates, keeps the grids for the adjoint, and
runs the adjoint as three native reverse kernels and a few fused updates:

    g_x, g_g = grid_sample_backward(ḡ, x, grid_n)
    g_d ← −s·g_g;  for i = n−1 … 0:  g_D += grid_sample_backward(g_d, D, grid_i);  g_d ← −½ s·g_{grid_i}
    ḡ_w = (g_D + g_d) · (dt/dx, dt/dy),  ḡ_x[:, :2] += ḡ_w

(``s``: index-to-normalised scale).  The forward-mode rule (tangent-linear
model) is written separately from the flat-index stencil's corner differences,
so the adjoint dot-product test compares two independent derivations; under
``create_graph=True`` (double backward) the step is recomputed with the
differentiable reference operations of :mod:`xda_hybrid.models.interpolation`.
"""
from __future__ import annotations

import functools

import torch
from torch.nn import functional as F

from .interpolation import (
    _bilinear_tangent,
    _grid_affine,
    _grid_constants,
    _grid_sample,
    _grid_sample_backward,
    _make_stencil,
    apply_stencil,
    departure_stencil,
)

__all__ = ["SemiLagrangianStep", "self_advection_step"]

# torch.func.vjp runs reverse rules with grad mode on, on tensors of its own level
_functorch_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda t: False)


@functools.lru_cache(maxsize=32)
def _normalised_grid(ny: int, nx: int, periodic: bool, dtype: torch.dtype, device: torch.device):
    """``(grid, scale)``: the identity grid in grid_sample coordinates ``(1, 2, ny, nx)`` (x, y) and the
    index-to-normalised scale ``(1, 2, 1, 1)``, a float when the same along x and y (a square grid:
    cheaper scalar products)."""
    with torch.inference_mode(False), torch.no_grad():
        scale, offset = (t.view(1, 2, 1, 1) for t in _grid_affine(ny, nx, periodic, dtype, device))
        grid = _grid_constants(ny, nx, dtype, device)["grid"] * scale + offset
        if float(scale[0, 0]) == float(scale[0, 1]):
            scale = float(scale[0, 0])
    return grid, scale


def _position_adjoint(ggrid: torch.Tensor, scale, c: float) -> torch.Tensor:
    """Adjoint of ``grid = (r − c·d)·s + o`` for ``d``: ``(b, ny, nx, 2)`` -> ``(b, 2, ny, nx)`` (a view)."""
    if isinstance(scale, float):
        return _channels_first(ggrid.mul(-c * scale))
    return _channels_first(ggrid.mul(scale.view(1, 1, 1, 2)).mul_(-c))


def _as_grid(p: torch.Tensor) -> torch.Tensor:
    """``(b, 2, ny, nx)`` channel-first coordinates -> grid_sample's ``(b, ny, nx, 2)`` (a view)."""
    return p.permute(0, 2, 3, 1)


def _channels_first(g: torch.Tensor) -> torch.Tensor:
    """grid_sample's ``(b, ny, nx, 2)`` grid gradient -> ``(b, 2, ny, nx)`` (a view)."""
    return g.permute(0, 3, 1, 2)


def _fold_periodic(gp: torch.Tensor) -> torch.Tensor:
    """Adjoint of the one-cell circular padding: ``(b, c, ny + 2, nx + 2)`` -> ``(b, c, ny, nx)``."""
    g = gp[..., 1:-1, :].clone()
    g[..., 0, :] += gp[..., -1, :]
    g[..., -1, :] += gp[..., 0, :]
    out = g[..., 1:-1].clone()
    out[..., 0] += g[..., -1]
    out[..., -1] += g[..., 0]
    return out


class SemiLagrangianStep(torch.autograd.Function):
    """``x⁺ = x`` read at the midpoint departure points of its velocity ``x[:, :2]`` (see the module notes).

    Inputs: ``x (b, c, ny, nx)`` with a clean velocity in channels 0, 1
    (``u`` along ``x`` and ``v`` along ``y``: no NaN, bounded), ``meta =
    (sx, sy, boundary, iterations)`` with ``sx = dt/dx``, ``sy = dt/dy``.
    Output ``(b, c, ny, nx)``.  Reverse, forward and double-reverse rules.
    """

    @staticmethod
    def forward(x, meta):
        sx, sy, boundary, iterations = meta
        periodic = boundary == "periodic"
        ny, nx = x.shape[-2:]
        grid0, scale = _normalised_grid(ny, nx, periodic, x.dtype, x.device)
        d = _displacement(x[:, :2], sx, sy)
        xsrc, dsrc = _padded(x, periodic), _padded(d, periodic)
        grids = []
        for _ in range(iterations):
            grids.append(_step_grid(grid0, d, 0.5, scale, periodic))
            d = _grid_sample(dsrc, grids[-1])
        grids.append(_step_grid(grid0, d, 1.0, scale, periodic))
        return (_grid_sample(xsrc, grids[-1]), *grids)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, meta = inputs
        grids = output[1:]
        ctx.mark_non_differentiable(*grids)
        ctx.meta = meta
        ctx.save_for_backward(x, *grids)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, g, *_):
        x, *grids = ctx.saved_tensors
        sx, sy, boundary, iterations = ctx.meta
        if torch.is_grad_enabled() and x.requires_grad and not _functorch_wrapped(x):
            # create_graph=True (double backward): recompute with differentiable operations
            return torch.autograd.grad(_reference_step(x, ctx.meta), x, g, create_graph=True)[0], None
        periodic = boundary == "periodic"
        scale = _normalised_grid(x.shape[-2], x.shape[-1], periodic, x.dtype, x.device)[1]
        xsrc = _padded(x, periodic)
        dsrc = _padded(_displacement(x[:, :2], sx, sy), periodic) if iterations else None
        gx, ggrid = _grid_sample_backward(g, xsrc, grids[-1], True, True)
        gd = _position_adjoint(ggrid, scale, 1.0)  # the last grid is (r − d_n) s + o
        gdsrc = None
        for grid in reversed(grids[:-1]):
            gsrc, ggrid = _grid_sample_backward(gd, dsrc, grid, True, True)
            gdsrc = gsrc if gdsrc is None else gdsrc.add_(gsrc)
            gd = _position_adjoint(ggrid, scale, 0.5)  # the grid is (r − d_i / 2) s + o
        if periodic:
            gx = _fold_periodic(gx)
            if gdsrc is not None:
                gdsrc = _fold_periodic(gdsrc)
        gdisp = gd if gdsrc is None else gdsrc.add_(gd)
        gx[:, :2] += _displacement(gdisp, sx, sy)
        return gx, None

    @staticmethod
    def jvp(ctx, x_t, _):
        (x,) = ctx.saved_tensors
        sx, sy, boundary, iterations = ctx.meta
        periodic = boundary == "periodic"
        ny, nx = x.shape[-2:]
        scale, offset = _grid_affine(ny, nx, periodic, x.dtype, x.device)
        grid = _grid_constants(ny, nx, x.dtype, x.device)["grid"]
        disp, disp_t = _displacement(x[:, :2], sx, sy), _displacement(x_t[:, :2], sx, sy)
        dsrc, dsrc_t = _padded(disp, periodic), _padded(disp_t, periodic)
        meta = (ny, nx, boundary, (ny, nx))
        d, d_t = disp, disp_t
        for _ in range(iterations):
            pos = _make_stencil(torch.sub(grid, d, alpha=0.5), ny, nx, boundary).pos
            pos_t = d_t.reshape(pos.shape) * -0.5
            d, d_t = (
                _grid_sample(dsrc, _grid_of(pos, scale, offset, ny, nx)),
                _bilinear_tangent(dsrc, dsrc_t, pos, pos_t, scale, offset, meta),
            )
        pos = _make_stencil(grid - d, ny, nx, boundary).pos
        xsrc, xsrc_t = _padded(x, periodic), _padded(x_t, periodic)
        out_t = _bilinear_tangent(xsrc, xsrc_t, pos, -d_t.reshape(pos.shape), scale, offset, meta)
        return (out_t,) + (None,) * (iterations + 1)


def _padded(t: torch.Tensor, periodic: bool) -> torch.Tensor:
    """A source as grid_sample reads it: padded by one periodic cell on each side if ``periodic``."""
    return F.pad(t, (1, 1, 1, 1), mode="circular") if periodic else t


def _displacement(w: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """``(b, 2, ny, nx)`` velocity (or its adjoint) times ``(sx, sy)`` per channel."""
    if sx == sy:
        return w if sx == 1.0 else w * sx
    return w * torch.tensor([sx, sy], dtype=w.dtype, device=w.device).view(1, 2, 1, 1)


def _grid_of(pos, scale, offset, ny, nx):
    """grid_sample grid from stencil positions ``(b, 2, ny·nx)`` in index units."""
    return _as_grid(torch.addcmul(offset, pos, scale).view(pos.shape[0], 2, ny, nx))


def _step_grid(grid0, d, c, scale, periodic):
    """grid_sample grid ``(b, ny, nx, 2)`` of the points ``r − c·d`` (periodic: wrapped into the padded source)."""
    if not periodic:  # (r − c d) s + o = grid0 − c s d; clamped by grid_sample's border padding
        if isinstance(scale, float):
            return _as_grid(torch.add(grid0, d, alpha=-c * scale))
        return _as_grid(torch.addcmul(grid0, d, scale, value=-c))
    ny, nx = d.shape[-2:]
    const = _grid_constants(ny, nx, d.dtype, d.device)
    pos = _make_stencil(torch.sub(const["grid"], d, alpha=c), ny, nx, "periodic", const).pos
    return _grid_of(pos, *_grid_affine(ny, nx, True, d.dtype, d.device), ny, nx)


def _reference_step(x: torch.Tensor, meta) -> torch.Tensor:
    """The same step from the differentiable interpolation operations (double backward, tests)."""
    sx, sy, boundary, iterations = meta
    return apply_stencil(x, departure_stencil(_displacement(x[:, :2], sx, sy), boundary, iterations, clean=True))


def self_advection_step(x: torch.Tensor, sx: float, sy: float, boundary: str, iterations: int) -> torch.Tensor:
    """Every channel of ``x (b, c, ny, nx)`` read at the departure points of its clean velocity ``x[:, :2]``.

    ``sx = dt/dx``, ``sy = dt/dy``; see :class:`SemiLagrangianStep`.
    """
    return SemiLagrangianStep.apply(x, (float(sx), float(sy), boundary, int(iterations)))[0]
