"""Numerical checks for user-supplied models: gradient check and adjoint dot-product test."""
from __future__ import annotations

from typing import Callable

import torch


def adjoint_dot_product(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, seed: int = 0
) -> float:
    """Relative mismatch of ``<J v, w>`` and ``<v, Jᵀ w>`` for ``fn`` at ``x``.

    The tangent-linear ``J v`` comes from forward-mode AD (:func:`torch.func.jvp`)
    and the adjoint ``Jᵀ w`` from reverse mode (:func:`torch.func.vjp`), so the
    two code paths are independent.  Use float64 inputs; a correct model gives
    ~1e-14.

    Parameters
    ----------
    fn : callable
        Maps a tensor of the shape of ``x`` to a tensor.
    x : Tensor
        Linearisation point.

    Returns
    -------
    float
        ``|<Jv, w> - <v, Jᵀw>| / max(|<Jv, w>|, tiny)``.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
    y, jv = torch.func.jvp(fn, (x,), (v,))
    w = torch.randn(y.shape, generator=g, dtype=y.dtype).to(y.device)
    _, vjp_fn = torch.func.vjp(fn, x)
    (jtw,) = vjp_fn(w)
    lhs = (jv * w).sum()
    rhs = (v * jtw).sum()
    return float((lhs - rhs).abs() / lhs.abs().clamp_min(torch.finfo(x.dtype).tiny))
