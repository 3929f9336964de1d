"""Streaming data loading vs one training step of the learned inversion.

    python benchmarks/data_loading.py [--quick] [--device cuda]

For each catalog dataset (tracer_motion 64×64, lorenz96 N=40, shallow_water 64×64), the
observations are opened lazily from the cached netCDF file, cut into windows with xbatcher
(``ds.da4d.windows``) and streamed by a torch ``DataLoader`` in two ways:

* ``file/shuffled``: no dask, windows in a seeded random order (the training setting);
* ``dask/sequential``: dask chunks of 16 frames, windows in time order (``fit``'s collection pass
  and ``assimilate``'s batches).

One training step is the network pass, the model over the window, the 4DVAR cost, backward and an
Adam step on the same batch (public API of ``xda_hybrid.learning``).  Prints the median time per
batch of each and the loading share ``load / (load + step)`` (target < 5 %).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from machine import describe
import xda_hybrid as xh
from xda_hybrid.data.windows import window_loader
from xda_hybrid.front import _engine
from xda_hybrid.learning import InversionNetwork

CASES = {
    # name: (catalog parameters, window, batch size, model params)
    "tracer_motion": ({}, 5, 8, None),
    "lorenz96": ({}, 10, 32, None),
    "shallow_water": ({}, 10, 8, None),
}


def bench(name: str, params: dict, window: int, batch_size: int, device: str, n_batches: int, mode: str) -> dict:
    ds = xh.open_dataset(name, chunks={"time": 16} if mode.startswith("dask") else None, **params)
    prob = ds.da4d.problem()
    wins = ds.da4d.windows(window, stride=1)
    loader = window_loader(wins, batch_size=batch_size, shuffle=mode.endswith("shuffled"), seed=0)
    cost = _engine.make_cost(prob, window, *_engine.regularisation_weights(prob, None, None)).to(device)
    net = InversionNetwork.for_model(prob.model, window, cost.obs_operator).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    load_t, step_t = [], []
    it = iter(loader)
    for i in range(n_batches + 1):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        obs = _engine.observations(batch, torch.float32, device)
        if device != "cpu":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        x0 = net(obs)
        loss = cost(x0, obs)["total"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device != "cpu":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i:  # the first batch warms up
            load_t.append(t1 - t0)
            step_t.append(t2 - t1)
    load, step = statistics.median(load_t), statistics.median(step_t)
    return {"load": load, "step": step, "fraction": load / (load + step), "windows": len(wins),
            "shape": dict(ds["time"].sizes) | {d: ds.sizes[d] for d in prob.spatial_dims}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 batches per dataset")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(describe())
    print(f"{'dataset':<14} {'loading':<16} {'window':>6} {'batch':>5} {'load [ms]':>10} {'step [ms]':>10} {'load share':>10}")
    for name, (params, window, bs, _) in CASES.items():
        for mode in ("file/shuffled", "dask/sequential"):
            r = bench(name, params, window, bs, args.device, 3 if args.quick else 10, mode)
            print(f"{name:<14} {mode:<16} {window:>6} {bs:>5} {1e3 * r['load']:>10.2f} {1e3 * r['step']:>10.1f} "
                  f"{r['fraction']:>10.2%}")


if __name__ == "__main__":
    main()
