"""Batched L-BFGS with a strong-Wolfe line search, one independent problem per row.

Every window keeps its own curvature pairs, line search and stopping test; the
windows only share the (batched) function evaluations.  The iterates of a
window therefore do not depend on the other windows in the batch, so a batched
run equals per-window runs up to floating-point round-off.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class LBFGSResult:
    """Outcome of :func:`lbfgs`.

    Attributes
    ----------
    x : Tensor, shape (batch, ...)
        Best finite iterate of each problem.
    cost : Tensor, shape (batch,)
        Cost at ``x``.
    history : Tensor, shape (n_iterations + 1, batch)
        Cost after each iteration (frozen rows repeat their last value).
    n_iter : Tensor, shape (batch,)
        Iterations done by each problem.
    n_eval : int
        Batched function + gradient evaluations.
    converged : Tensor of bool, shape (batch,)
        Stopped by the gradient or cost tolerance (not by ``max_iter`` or a failure).
    wall_time : float
        Seconds.
    message : list of str
        Why each problem stopped.
    """

    x: torch.Tensor
    cost: torch.Tensor
    history: torch.Tensor
    n_iter: torch.Tensor
    n_eval: int
    converged: torch.Tensor
    wall_time: float
    message: list[str] = field(default_factory=list)


def _cubic_min(t1, f1, g1, t2, f2, g2):
    """Minimiser of the cubic through (t1, f1, g1), (t2, f2, g2), safeguarded to [min, max]
    (bisection where the cubic is not usable).  All arguments are (batch,) tensors."""
    lo = torch.minimum(t1, t2)
    hi = torch.maximum(t1, t2)
    d1 = g1 + g2 - 3 * (f1 - f2) / (t1 - t2)
    d2sq = d1 * d1 - g1 * g2
    d2 = torch.sqrt(d2sq.clamp_min(0))
    t = t2 - (t2 - t1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    ok = (d2sq >= 0) & torch.isfinite(t) & (t > lo) & (t < hi)
    t = torch.where(ok, t, 0.5 * (lo + hi))
    # keep away from the ends (avoids stalling)
    width = hi - lo
    return t.clamp(lo + 0.1 * width, hi - 0.1 * width)


def lbfgs(
    fun: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    max_iter: int = 100,
    history_size: int = 10,
    gtol: float = 1e-7,
    ftol: float = 1e-10,
    max_ls: int = 25,
    c1: float = 1e-4,
    c2: float = 0.9,
    progress: bool = False,
    reject: tuple[type[BaseException], ...] = (),
) -> LBFGSResult:
    """Minimise ``fun`` independently for each row of ``x0``.

    Parameters
    ----------
    fun : callable
        Maps ``x`` of shape (batch, ...) to the cost of each row, shape (batch,);
        row ``i`` of the cost may depend on row ``i`` of ``x`` only.
    x0 : Tensor, shape (batch, ...)
        Starting points (warm start); not modified.
    max_iter : int
        Iterations per problem.
    history_size : int
        Curvature pairs kept.
    gtol : float
        Stop when ``max|∇f| <= gtol · max(1, |f|)``.
    ftol : float
        Stop when the relative decrease of ``f`` in an iteration is below ``ftol``.
    max_ls : int
        Function evaluations per line search.
    c1, c2 : float
        Strong-Wolfe constants.
    progress : bool
        Show a tqdm bar.
    reject : tuple of exception types
        Exceptions of ``fun`` (e.g. a model's CFL error) that mark a trial point
        as unacceptable (infinite cost) for every problem of the batch instead of
        aborting; raised as usual at the starting point.

    Returns
    -------
    LBFGSResult
    """
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    t_start = time.perf_counter()
    shape = x0.shape
    nb = shape[0]
    n_eval = 0

    def evaluate(x_flat, start=False):
        nonlocal n_eval
        n_eval += 1
        x = x_flat.detach().reshape(shape).requires_grad_(True)
        with torch.enable_grad():
            try:
                f = fun(x)
            except reject:
                if start:
                    raise
                return torch.full((nb,), math.inf, dtype=x.dtype, device=x.device), torch.full_like(x_flat, math.nan)
            if f.shape != (nb,):
                raise ValueError(f"fun must return one cost per row, shape ({nb},), got {tuple(f.shape)}")
            (g,) = torch.autograd.grad(f.sum(), x)
        return f.detach(), g.reshape(nb, -1)

    x = x0.detach().reshape(nb, -1).clone()
    f, g = evaluate(x, start=True)
    if not torch.isfinite(f).all():
        bad = (~torch.isfinite(f)).nonzero().flatten().tolist()
        raise ValueError(f"the cost is not finite at the starting point of problems {bad[:10]}")
    g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))

    dtype = x.dtype
    m = history_size
    S = torch.zeros(m, nb, x.shape[1], dtype=dtype, device=x.device)
    Y = torch.zeros_like(S)
    rho = torch.zeros(m, nb, dtype=dtype, device=x.device)
    n_pairs = 0
    active = torch.ones(nb, dtype=torch.bool, device=x.device)
    converged = torch.zeros_like(active)
    n_iter = torch.zeros(nb, dtype=torch.long, device=x.device)
    messages = ["max_iter reached"] * nb
    history = [f.clone()]
    failed_nonfinite = False

    def stop(mask, why, conv):
        nonlocal active, converged
        for i in mask.nonzero().flatten().tolist():
            messages[i] = why
        active = active & ~mask
        converged = converged | (mask & conv)

    scale = lambda f_: torch.clamp(f_.abs(), min=1.0)  # noqa: E731
    stop(active & (g.abs().amax(1) <= gtol * scale(f)), "gradient tolerance", True)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc="4DVAR L-BFGS", unit="it", leave=False)
    for it in range(max_iter):
        if not active.any():
            break
        # --- two-loop recursion, masked per problem ---
        q = -g
        alphas = []
        order = [(n_pairs - 1 - k) % m for k in range(min(n_pairs, m))]
        for k in order:
            a = rho[k] * (S[k] * q).sum(1)
            alphas.append(a)
            q = q - a[:, None] * Y[k]
        if order:
            k = order[0]
            yy = (Y[k] * Y[k]).sum(1)
            gamma = torch.where(rho[k] > 0, 1.0 / (rho[k] * yy).clamp_min(torch.finfo(dtype).tiny), torch.ones_like(yy))
            q = q * gamma[:, None]
        for k, a in zip(reversed(order), reversed(alphas)):
            b = rho[k] * (Y[k] * q).sum(1)
            q = q + (a - b)[:, None] * S[k]
        d = q
        gtd = (g * d).sum(1)
        bad_dir = ~(gtd < 0) | ~torch.isfinite(gtd)
        d = torch.where(bad_dir[:, None], -g, d)
        gtd = (g * d).sum(1)
        # first step of a fresh direction: scaled so that the move is of order 1
        first = torch.full_like(f, 1.0)
        if n_pairs == 0:
            first = torch.clamp(1.0 / g.abs().sum(1).clamp_min(torch.finfo(dtype).tiny), max=1.0)
        first = torch.where(bad_dir & (n_pairs > 0), torch.clamp(1.0 / g.abs().sum(1).clamp_min(1e-30), max=1.0), first)

        # --- vectorised strong-Wolfe line search ---
        t = torch.where(active, first, torch.zeros_like(first))
        ls_done = ~active
        t_prev = torch.zeros_like(f)
        f_prev, g_prev = f.clone(), gtd.clone()
        lo_t, lo_f, lo_g = torch.zeros_like(f), f.clone(), gtd.clone()
        hi_t, hi_f, hi_g = torch.zeros_like(f), f.clone(), gtd.clone()
        zoom = torch.zeros_like(active)
        best_t, best_f = torch.zeros_like(f), f.clone()
        best_g = g.clone()
        acc_t, acc_f, acc_g = torch.zeros_like(f), f.clone(), g.clone()
        for ls in range(max_ls):
            f_new, g_new = evaluate(x + t[:, None] * d)
            finite = torch.isfinite(f_new) & torch.isfinite(g_new).all(1)
            if not bool(finite[~ls_done].all()):
                failed_nonfinite = True
            f_new = torch.where(finite, f_new, torch.full_like(f_new, math.inf))
            gtd_new = torch.where(finite, (g_new * d).sum(1), torch.full_like(f_new, math.nan))
            live = ~ls_done
            # track the best decrease seen (fallback if Wolfe never holds)
            better = live & finite & (f_new < best_f)
            best_t = torch.where(better, t, best_t)
            best_f = torch.where(better, f_new, best_f)
            best_g = torch.where(better[:, None], g_new, best_g)

            armijo = finite & (f_new <= f + c1 * t * gtd)
            curv = finite & (gtd_new.abs() <= -c2 * gtd)
            accept = live & armijo & curv & (~zoom | (f_new <= lo_f))
            acc_t = torch.where(accept, t, acc_t)
            acc_f = torch.where(accept, f_new, acc_f)
            acc_g = torch.where(accept[:, None], g_new, acc_g)
            ls_done = ls_done | accept
            live = live & ~accept

            # bracketing phase
            br = live & ~zoom
            to_zoom_a = br & (~armijo | ((ls > 0) & (f_new >= f_prev)))
            to_zoom_b = br & ~to_zoom_a & (gtd_new >= 0)
            lo_t = torch.where(to_zoom_a, t_prev, torch.where(to_zoom_b, t, lo_t))
            lo_f = torch.where(to_zoom_a, f_prev, torch.where(to_zoom_b, f_new, lo_f))
            lo_g = torch.where(to_zoom_a, g_prev, torch.where(to_zoom_b, gtd_new, lo_g))
            hi_t = torch.where(to_zoom_a, t, torch.where(to_zoom_b, t_prev, hi_t))
            hi_f = torch.where(to_zoom_a, f_new, torch.where(to_zoom_b, f_prev, hi_f))
            hi_g = torch.where(to_zoom_a, gtd_new, torch.where(to_zoom_b, g_prev, hi_g))
            extend = br & ~to_zoom_a & ~to_zoom_b
            # zoom phase update (for problems already zooming)
            zm = live & zoom
            shrink_hi = zm & (~armijo | (f_new >= lo_f))
            move_lo = zm & ~shrink_hi
            flip = move_lo & (gtd_new * (hi_t - lo_t) >= 0)
            hi_t = torch.where(shrink_hi, t, torch.where(flip, lo_t, hi_t))
            hi_f = torch.where(shrink_hi, f_new, torch.where(flip, lo_f, hi_f))
            hi_g = torch.where(shrink_hi, gtd_new, torch.where(flip, lo_g, hi_g))
            lo_t = torch.where(move_lo, t, lo_t)
            lo_f = torch.where(move_lo, f_new, lo_f)
            lo_g = torch.where(move_lo, gtd_new, lo_g)
            zoom = zoom | to_zoom_a | to_zoom_b

            # next trial step
            t_ext = 2.0 * t
            t_zoom = _cubic_min(lo_t, lo_f, lo_g, hi_t, hi_f, hi_g)
            t_zoom = torch.where(torch.isfinite(hi_f) & torch.isfinite(hi_g), t_zoom, 0.5 * (lo_t + hi_t))
            t_prev = torch.where(extend, t, t_prev)
            f_prev = torch.where(extend, f_new, f_prev)
            g_prev = torch.where(extend, gtd_new, g_prev)
            t = torch.where(extend, t_ext, torch.where(zoom & ~ls_done, t_zoom, t))
            tiny = zoom & ~ls_done & ((hi_t - lo_t).abs() * d.abs().amax(1) < 1e-12 * (1 + x.abs().amax(1)))
            if tiny.any():
                # bracket collapsed: accept the best point found if it decreases f
                take = tiny & (best_f < f)
                acc_t = torch.where(take, best_t, acc_t)
                acc_f = torch.where(take, best_f, acc_f)
                acc_g = torch.where(take[:, None], best_g, acc_g)
                ls_done = ls_done | take
            if bool(ls_done.all()):
                break
        # problems whose line search did not satisfy Wolfe: take the best decrease, else stop
        unfinished = ~ls_done
        take = unfinished & (best_f < f)
        acc_t = torch.where(take, best_t, acc_t)
        acc_f = torch.where(take, best_f, acc_f)
        acc_g = torch.where(take[:, None], best_g, acc_g)
        stuck = unfinished & ~take & active
        stop(stuck, "line search found no decrease", False)

        moved = active & ~stuck
        s = acc_t[:, None] * d
        x_new = torch.where(moved[:, None], x + s, x)
        f_new = torch.where(moved, acc_f, f)
        g_new = torch.where(moved[:, None], acc_g, g)
        y = g_new - g
        sy = (s * y).sum(1)
        valid = moved & (sy > 1e-10 * (y * y).sum(1).sqrt() * s.norm(dim=1))
        k = n_pairs % m
        S[k] = torch.where(valid[:, None], s, torch.zeros_like(s))
        Y[k] = torch.where(valid[:, None], y, torch.zeros_like(y))
        rho[k] = torch.where(valid, 1.0 / sy.where(valid, torch.ones_like(sy)), torch.zeros_like(sy))
        n_pairs += 1
        n_iter = n_iter + moved.long()
        df = f - f_new
        x, g = x_new, g_new
        f_old, f = f, f_new
        history.append(f.clone())
        stop(moved & (g.abs().amax(1) <= gtol * scale(f)), "gradient tolerance", True)
        stop(active & moved & (df <= ftol * torch.maximum(scale(f_old), scale(f))), "cost tolerance", True)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(cost=f"{float(f.mean()):.4g}", active=int(active.sum()))
    if bar is not None:
        bar.close()
    if failed_nonfinite:
        warnings.warn(
            "4DVAR: the cost or its gradient was not finite at some trial points; "
            "those steps were rejected and the best finite iterate is returned",
            RuntimeWarning,
            stacklevel=2,
        )
    return LBFGSResult(
        x=x.reshape(shape),
        cost=f,
        history=torch.stack(history),
        n_iter=n_iter,
        n_eval=n_eval,
        converged=converged,
        wall_time=time.perf_counter() - t_start,
        message=messages,
    )
