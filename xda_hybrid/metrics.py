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


# ---------------------------------------------------------------------- ensembles
# Members are on the first axis: ``members`` of shape (K, *shape), ``truth`` of shape ``shape``.


def _members(members: torch.Tensor, truth: torch.Tensor) -> None:
    if members.ndim < 1 or tuple(members.shape[1:]) != tuple(truth.shape):
        raise ValueError(f"members {tuple(members.shape)} must be (K, *truth.shape), truth {tuple(truth.shape)}")
    if members.shape[0] < 2:
        raise ValueError("an ensemble score needs at least 2 members")


def crps_ensemble(members: torch.Tensor, truth: torch.Tensor, estimator: str = "fair") -> torch.Tensor:
    """Continuous ranked probability score of an ensemble at every point (lower is better).

    ``CRPS = E|X − y| − ½ E|X − X'|`` over the members ``X`` (units of the
    variable).  Computed by ``scoringrules.crps_ensemble`` when the
    ``scoringrules`` package is installed (extra ``uncertainty``), else by the
    same formula in torch (the two agree to round-off).

    Parameters
    ----------
    members : Tensor, shape (K, *shape)
    truth : Tensor, shape ``shape``
    estimator : {"fair", "nrg"}
        ``"fair"``: the unbiased estimator (``E|X − X'|`` over distinct pairs,
        ``÷ K(K−1)``), whose mean does not depend on ``K`` — use it to compare
        ensembles of different sizes; ``"nrg"``: the plain ensemble estimator (``÷ K²``).

    Returns
    -------
    Tensor, shape ``shape`` (float64)
    """
    _members(members, truth)
    if estimator not in ("fair", "nrg"):
        raise ValueError(f"estimator must be 'fair' or 'nrg', got {estimator!r}")
    x = members.detach().to("cpu", torch.float64)
    y = truth.detach().to("cpu", torch.float64)
    try:
        import scoringrules as sr
    except ImportError:
        sr = None
    if sr is not None:
        import numpy as np

        out = sr.crps_ensemble(y.numpy(), np.moveaxis(x.numpy(), 0, -1), m_axis=-1, estimator=estimator)
        return torch.from_numpy(np.asarray(out, dtype=np.float64))
    k = x.shape[0]
    skill = (x - y).abs().mean(0)
    xs, _ = torch.sort(x, dim=0)
    # Σ_{i,j} |x_i − x_j| = 2 Σ_i (2i − K + 1) x_(i) for sorted members (i from 0)
    w = (2 * torch.arange(k, dtype=torch.float64) - k + 1).reshape(-1, *([1] * y.ndim))
    pair_sum = 2 * (w * xs).sum(0)
    spread = pair_sum / (k * (k - 1) if estimator == "fair" else k * k)
    return skill - 0.5 * spread


def spread_skill(members: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Spread/skill ratio of an ensemble, pooled over all points.

    ``spread = √(mean var)`` (members' unbiased variance), ``skill`` = RMSE of the
    ensemble mean against the truth, ``ratio = √((K+1)/K) · spread / skill``
    (Fortin et al. 2014: 1 for a statistically consistent ensemble of ``K``
    members, < 1 under-dispersive, > 1 over-dispersive).

    Returns
    -------
    dict
        ``spread``, ``skill`` (RMSE of the mean), ``ratio``, ``n_members``.
    """
    _members(members, truth)
    x = members.detach().to(torch.float64)
    k = x.shape[0]
    spread = float(x.var(0, unbiased=True).mean().sqrt())
    skill = float(((x.mean(0) - truth.detach().to(x)) ** 2).mean().sqrt())
    ratio = ((k + 1) / k) ** 0.5 * spread / skill if skill > 0 else float("inf")
    return {"spread": spread, "skill": skill, "ratio": ratio, "n_members": k}


def rank_histogram(members: torch.Tensor, truth: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rank histogram (Talagrand diagram): counts of the truth's rank among the members.

    The rank of ``y`` is the number of members below it (ties with members are
    broken at random), in ``0..K``; a flat histogram marks a consistent
    ensemble, a U shape an under-dispersive one, a dome an over-dispersive one.

    Returns
    -------
    Tensor of int64, shape (K + 1,)
    """
    _members(members, truth)
    x = members.detach().to("cpu", torch.float64).flatten(1)
    y = truth.detach().to("cpu", torch.float64).flatten()
    below = (x < y).sum(0)
    ties = (x == y).sum(0)
    u = torch.rand(y.shape, generator=generator, dtype=torch.float64)
    rank = below + torch.floor(u * (ties + 1)).to(torch.int64)
    return torch.bincount(rank, minlength=x.shape[0] + 1)


__all__ = ["angular_error", "crps_ensemble", "endpoint_error", "rank_histogram", "rmse", "smoothness",
           "spread_skill", "trajectory_rmse"]
