"""Ensembles in the front: members of an analysis (``samples=K``) and the ensemble helpers.

Glue only: the perturbations, the randomised cost and the solver come from
:mod:`xda_hybrid.variational.ensemble`, the networks from :mod:`xda_hybrid.learning`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import xarray as xr

from ..observation import Observations
from ..variational import FourDVarCost
from ..variational.ensemble import perturb, perturbs_prior, randomised_fourdvar

__all__ = ["analyse_members", "ensemble_mean", "ensemble_spread"]


@torch.no_grad()
def _net_members(net: torch.nn.Module, p, batch_size: int = 1024) -> torch.Tensor:
    was = net.training
    net.eval()
    dtype, dev = next(net.parameters()).dtype, next(net.parameters()).device
    extra = p.network_input if net.config["background"] else None
    if net.config["background"] and extra is None:
        raise ValueError("this network takes a background input, which ds.da4d.assimilate does not provide")
    out = []
    n = p.obs.values.shape[0]
    for i in range(0, n, batch_size):
        o = p.obs[i : i + batch_size].to(dtype=dtype, device=dev)
        out.append(net(o, None if extra is None else extra[i : i + batch_size].to(dtype=dtype, device=dev)))
    net.train(was)
    return torch.cat(out).to(p.obs.values)


def analyse_members(
    method: str,
    cost: FourDVarCost,
    obs: Observations,
    net: torch.nn.Module | None,
    iterations: int,
    samples: int | None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Analyses of ``samples`` randomised copies of each window (member-major rows).

    ``"4dvar"``: the EDA (one 4DVAR per member on ``Y + ε_k``, and the shifted
    smoothness prior for velocity models); ``"learned"``: one network pass on the
    perturbed data (a generative fit); ``"hybrid"``: that pass refined by
    ``iterations`` L-BFGS iterations on the member's randomised cost.  With
    ``samples=None`` one unperturbed member (the central analysis of a network
    with extra input channels).

    Returns ``x0`` (K·B, C, *space), ``trajectory`` (K·B, T, C, *space), ``cost``
    (K·B,: 4DVAR cost against the unperturbed observations), ``n_iter`` (K·B,).
    """
    from ._engine import first_guess

    k = 1 if samples is None else int(samples)
    p = perturb(cost, obs, k, None, generator, prior=perturbs_prior(cost), zero=samples is None)
    if method == "4dvar":
        x_init = first_guess(p.obs, cost.model.n_channels, list(cost.obs_operator.channels))
    elif method in ("learned", "hybrid"):
        x_init = _net_members(net, p)
    else:  # pragma: no cover - checked by the caller
        raise ValueError(method)
    res = None
    if method != "learned" and iterations > 0:
        res = randomised_fourdvar(cost, p, x_init, max_iter=int(iterations), progress=progress)
    x0 = (res.x if res is not None else x_init).detach()
    n_iter = res.n_iter if res is not None else torch.zeros(x0.shape[0], dtype=torch.int64)
    reps = Observations(obs.values.repeat(k, *([1] * (obs.values.ndim - 1))),
                        obs.inv_var.repeat(k, *([1] * (obs.values.ndim - 1))))
    with torch.no_grad():
        traj = cost.trajectory(x0)
        j = cost(x0, reps)["total"]
    return {"x0": x0, "trajectory": traj, "cost": j, "n_iter": n_iter}


def _check(ds: xr.Dataset | xr.DataArray, dim: str) -> None:
    if dim not in ds.dims:
        raise ValueError(f"no {dim!r} dimension: get members with ds.da4d.assimilate(..., samples=K)")


def ensemble_mean(ds: xr.Dataset | xr.DataArray, dim: str = "member") -> xr.Dataset | xr.DataArray:
    """Mean over the members of an analysis from ``ds.da4d.assimilate(..., samples=K)``."""
    _check(ds, dim)
    out = ds.mean(dim, keep_attrs=True)
    return _retitle(out, "ensemble mean")


def ensemble_spread(ds: xr.Dataset | xr.DataArray, dim: str = "member") -> xr.Dataset | xr.DataArray:
    """Spread (standard deviation, unbiased: ``ddof=1``) over the members, in the variables' units."""
    _check(ds, dim)
    if ds.sizes[dim] < 2:
        raise ValueError("the spread needs at least 2 members")
    out = ds.std(dim, ddof=1, keep_attrs=True)
    return _retitle(out, "ensemble spread (std)")


def _retitle(out, what: str):
    items = out.data_vars.values() if isinstance(out, xr.Dataset) else [out]
    for v in items:
        if "long_name" in v.attrs:
            v.attrs["long_name"] = f"{v.attrs['long_name']}, {what}"
        v.attrs["cell_methods"] = f"member: {'mean' if 'mean' in what else 'standard_deviation'}"
    return out


def member_coords(k: int) -> dict[str, Any]:
    return {"member": ("member", np.arange(int(k)), {"long_name": "ensemble member (posterior sample)"})}
