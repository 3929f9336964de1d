"""Lazy, dask-parallel ``assimilate``: windows mapped over time chunks of a dask graph.

``ds.da4d.assimilate(..., parallel="dask")`` calls :func:`lazy_analysis`,
which returns the analysis as a dask array of shape ``(time, channel,
*space)`` without computing anything.  The time axis is cut into blocks
whose length is a multiple of the window cycle; the analysis of a block is
one task that reads only the observation frames of the windows touching the
block (its own frames, plus ``window - 1`` frames on a side where a window
straddles a block boundary), analyses those windows exactly as the in-memory
path does (same conversion, same :func:`._engine.analyse`, same float32
accumulation in window order) and returns the block's mean analysis.  With
back-to-back windows (``cycle >= window``) each window lies in one block and
is analysed once, except the last, end-covering window, which may be
analysed by two blocks.

The fitted network and the cost (model, observation operator) travel as one
pickled ``dask.delayed`` object: the graph holds them once, and a
``dask.distributed`` scheduler ships them once per worker.  The block function
sets ``torch.set_num_threads(1)`` while it runs (one torch thread per dask
thread; restore afterwards).

The analysis of a window depends on the whole spatial domain (closed or
periodic borders, the network's receptive field, one L-BFGS line search per
window), so blocks are never tiled in space: a tiled analysis would not equal
the in-memory one.

Quantities known only after the analysis (``final_cost``,
``mean_iterations``, ``n_windows``, ...) cannot be attributes of a lazy
Dataset: :func:`deferred_attrs` gives their placeholders.
"""
from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np
import torch
import xarray as xr

from ..data.windows import READAHEAD_BYTES, TimeWindows, window_starts
from . import _engine
from ._problem import Problem

__all__ = ["DEFERRED", "block_bounds", "deferred_attrs", "lazy_analysis"]

#: analysis attributes that depend on the results (unknown while the analysis is lazy)
DEFERRED = ("mean_iterations", "final_cost", "final_cost_per_window", "n_windows", "n_windows_without_obs")


def deferred_attrs() -> dict[str, Any]:
    """Placeholders of :data:`DEFERRED` for a lazy analysis: NaN (floats) and -1 (counts)."""
    return {
        "mean_iterations": math.nan,
        "final_cost": math.nan,
        "final_cost_per_window": math.nan,
        "n_windows": -1,
        "n_windows_without_obs": -1,
        "deferred": " ".join(DEFERRED) + " (lazy dask analysis: not computed; use parallel=None for them)",
    }


def block_bounds(n_time: int, cycle: int, block: int) -> list[tuple[int, int]]:
    """Time blocks ``[a, b)`` of about ``block`` frames, boundaries on multiples of ``cycle``."""
    size = max(1, int(round(block / cycle))) * cycle
    return [(a, min(a + size, n_time)) for a in range(0, n_time, size)]


def _time_chunk(ds: xr.Dataset, names: list[str], frame_bytes: int) -> int:
    """The input's first time chunk, or about :data:`READAHEAD_BYTES` of frames if not chunked."""
    for n in names:
        chunks = ds[n].chunksizes.get("time") if ds[n].chunks is not None else None
        if chunks:
            return int(chunks[0])
    return max(1, READAHEAD_BYTES // max(frame_bytes, 1))


class _Payload:
    """What every block needs: the numerics (pickled once into the graph) and the window layout."""

    def __init__(self, method, cost, net, iterations, dtype, device, obs_vars, noise, spatial_dims, window, batch_size):
        self.method, self.cost, self.net, self.iterations = method, cost, net, int(iterations)
        self.dtype, self.device = dtype, device
        self.obs_vars, self.noise, self.spatial_dims = list(obs_vars), list(noise), tuple(spatial_dims)
        self.window, self.batch_size = int(window), int(batch_size)


def _analyse_block(payload: _Payload, dims: list[tuple[str, ...]], names: list[str], lo: int, a: int, b: int,
                   starts: list[int], *arrays: np.ndarray) -> np.ndarray:
    """Mean analysis of frames ``[a, b)`` from the windows ``starts`` (input frames from ``lo``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p = payload
        cost = p.cost
        n_ch = cost.model.n_channels
        shape = next(arr.shape[1:] for arr, d in zip(arrays, dims) if d and d[0] == "time")
        sub = xr.Dataset({n: (d, np.asarray(arr)) for n, d, arr in zip(names, dims, arrays)})
        wins = TimeWindows(sub, p.obs_vars, p.window, 1, p.spatial_dims, p.noise, preload=True)
        acc = np.zeros((b - a, n_ch, *shape), dtype=np.float32)
        cnt = np.zeros(b - a, dtype=np.int64)
        for i in range(0, len(starts), p.batch_size):
            chunk = starts[i : i + p.batch_size]
            batch = wins.batch([s - lo for s in chunk])
            obs = _engine.observations(batch, p.dtype, p.device)
            keep = _engine.nonempty(obs)
            if not keep.any():
                continue
            sel = keep.nonzero().flatten()
            res = _engine.analyse(p.method, cost, obs[sel], p.net, p.iterations)
            traj = res["trajectory"].detach().to("cpu", torch.float64).numpy()
            for j, k in enumerate(sel.cpu().tolist()):
                s = chunk[k]
                i0, i1 = max(s, a), min(s + p.window, b)
                acc[i0 - a : i1 - a] += traj[j][i0 - s : i1 - s]
                cnt[i0 - a : i1 - a] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            return (acc / cnt.reshape(-1, *([1] * (acc.ndim - 1)))).astype(np.float32)
    finally:
        torch.set_num_threads(threads)


def lazy_analysis(
    prob: Problem,
    method: str,
    cost,
    net: torch.nn.Module | None,
    window: int,
    cycle: int,
    iterations: int,
    dtype: torch.dtype,
    device,
    batch_size: int,
    block: int | None = None,
):
    """The analysis ``(time, channel, *space)`` float32 as a lazy dask array.

    Parameters
    ----------
    prob, method, cost, net, window, cycle, iterations, dtype, device, batch_size
        As prepared by :meth:`DA4DAccessor.assimilate`.
    block : int, optional
        Frames per time block (rounded to a multiple of ``cycle``); default the
        input's time chunk (or about 32 MiB of frames for an in-memory input).
    """
    import dask
    import dask.array as dsa

    ds = prob.ds
    dims_all = ("time", *prob.spatial_dims)
    std_vars = [s for s in prob.noise if isinstance(s, str)]
    names = prob.obs_vars + std_vars
    frame_bytes = 8 * len(names) * int(np.prod(prob.shape))
    if block is None:
        block = _time_chunk(ds, names, frame_bytes)
    bounds = block_bounds(prob.n_time, cycle, int(block))
    size = bounds[0][1] - bounds[0][0]
    dims, sources = [], []
    for n in names:
        v = ds[n]
        vd = tuple(d for d in dims_all if d in v.dims)
        v = v.transpose(*vd)
        dims.append(vd)
        data = v.data
        if not isinstance(data, dsa.Array):  # in memory: cut along time so a task ships only its frames
            data = dsa.from_array(np.asarray(data), chunks=(size, *data.shape[1:]) if "time" in vd else -1)
        sources.append(data)
    starts = window_starts(prob.n_time, window, cycle, cover_end=True)
    payload = dask.delayed(
        _Payload(method, cost, net, iterations, dtype, device, prob.obs_vars, prob.noise, prob.spatial_dims,
                 window, batch_size),
        pure=False,
    )
    tag = uuid.uuid4().hex
    shape = prob.shape
    n_ch = cost.model.n_channels
    blocks = []
    for a, b in bounds:
        mine = [s for s in starts if s < b and s + window > a]
        if not mine:  # pragma: no cover - cover_end windows reach every frame
            blocks.append(dsa.full((b - a, n_ch, *shape), np.nan, dtype=np.float32))
            continue
        lo, hi = min(mine), max(mine) + window
        args = [src[lo:hi] if d and d[0] == "time" else src for src, d in zip(sources, dims)]
        task = dask.delayed(_analyse_block, pure=False)(payload, dims, names, lo, a, b, mine, *args,
                                                        dask_key_name=f"da4d-analysis-{tag}-{a}")
        blocks.append(dsa.from_delayed(task, shape=(b - a, n_ch, *shape), dtype=np.float32))
    out = dsa.concatenate(blocks, axis=0)
    return out, {"n_blocks": len(blocks), "block": size}


def lazy_dataset(
    ds_in: xr.Dataset,
    prob: Problem,
    fitted,
    method: str,
    cost,
    net,
    window: int,
    cycle: int,
    iterations: int,
    grad_weight: float,
    div_weight: float,
    dtype: torch.dtype,
    device,
    batch_size: int,
    t_start: float,
    block: int | None = None,
) -> xr.Dataset:
    """The analysis Dataset of ``assimilate(..., parallel="dask")``: variables dask-backed, nothing computed.

    Same variables, coordinates, CF attributes and ``attrs`` keys as the
    in-memory path; the attributes of :data:`DEFERRED` hold the placeholders
    of :func:`deferred_attrs`, ``parallel`` is ``"dask"`` and ``wall_time``
    is the time taken to build the graph.
    """
    import json
    import time as _time

    if method not in ("learned", "4dvar", "hybrid"):
        raise ValueError(f"parallel='dask' supports methods 'learned', '4dvar' and 'hybrid', not {method!r}")
    out, info = lazy_analysis(prob, method, cost, net, window, cycle, iterations, dtype, device, batch_size, block)
    model_obj = cost.model
    tmpl = prob.template()
    dims = ("time", *prob.spatial_dims)
    coords = {k: v for k, v in tmpl.coords.items()}
    data_vars = {s: (dims, out[:, c], prob.state_attrs(s)) for c, s in enumerate(model_obj.state_names)}
    params = prob.model_params if fitted is None else fitted.model_params
    attrs = dict(ds_in.attrs)
    attrs.update({
        "title": f"xda-hybrid analysis ({method})",
        "method": method,
        "model": prob.model_name or type(model_obj).__name__,
        "model_params": json.dumps({k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                                    for k, v in params.items()}, sort_keys=True),
        "window": int(window),
        "cycle": int(cycle),
        "iterations": int(iterations),
        "grad_weight": float(grad_weight),
        "div_weight": float(div_weight),
        "observed": ",".join(prob.obs_vars),
    })
    attrs.update(deferred_attrs())
    attrs.update({"parallel": "dask", "time_block": int(info["block"]), "n_blocks": int(info["n_blocks"]),
                  "wall_time": float(_time.perf_counter() - t_start)})
    if fitted is not None:
        attrs["fitted_method"] = fitted.method
        attrs["fitted_epochs"] = len(fitted._history)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
