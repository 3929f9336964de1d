"""Scaling of ``ds.da4d.fit`` with DistributedDataParallel under ``torchrun`` (gloo on CPU).

Runs ``torchrun --standalone --nproc_per_node=P`` for each ``P`` and each number
of training windows, on a synthetic Lorenz96 dataset (observations only, 40 sites,
windows of 10 frames, stride 1, global batch 64, 2 epochs, validation 10 %).  Each
rank trains with one torch thread; the time per epoch is taken from rank 0's
history.  The final training cost is printed to show that runs with different
rank counts follow the same optimisation (same seeded global batches).  Writes
``benchmarks/results/scale_fit.csv`` and prints a table.

    nice -n 5 python benchmarks/scale_fit.py                 # ~2-3 min on 2 cores
    python benchmarks/scale_fit.py --ranks 1 2 4 --frames 500 2000   # a bigger machine
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def dataset(n_time: int, n_sites: int = 40, seed: int = 0):
    import numpy as np
    import xarray as xr

    rng = np.random.default_rng(seed)
    x = 3 + 2 * rng.normal(size=(n_time, n_sites))
    obs = np.where(rng.random(x.shape) < 0.5, x + 0.5 * rng.normal(size=x.shape), np.nan).astype("f4")
    return xr.Dataset({"x_obs": (("time", "site"), obs, {"noise_std": 0.5})},
                      coords={"time": ("time", np.arange(n_time) * 0.05, {"units": "1"})},
                      attrs={"model": "lorenz96", "forcing": 8.0})


def rank_main(frames: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    import xda_hybrid  # noqa: F401
    from xda_hybrid.learning.distributed import init_distributed

    torch.set_num_threads(1)
    device = init_distributed()
    t0 = time.perf_counter()
    f = dataset(frames).da4d.fit(window=10, epochs=2, batch_size=64, progress=False, device=device, seed=0,
                                 network={"width": 32, "depth": 3, "kernel_size": 5})
    wall = time.perf_counter() - t0
    if not dist.is_initialized() or dist.get_rank() == 0:
        h = f.history
        with open(out, "w") as fh:
            json.dump({"epoch_s": [float(v) for v in h["epoch_time"].values], "wall_s": wall,
                       "train_cost": float(h["train_cost"].values[-1]), "windows": f.info["n_windows"]}, fh)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--frames", type=int, nargs="+", default=[500, 1000, 2000])
    ap.add_argument("--out", default=str(RESULTS / "scale_fit.csv"))
    ap.add_argument("--rank-main", nargs=2, metavar=("FRAMES", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.rank_main:
        rank_main(int(a.rank_main[0]), a.rank_main[1])
        return
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        for p in a.ranks:
            for n in a.frames:
                out = Path(tmp) / f"r{p}_{n}.json"
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={p}",
                       __file__, "--rank-main", str(n), str(out)]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr[-3000:])
                r = json.loads(out.read_text())
                r.update({"ranks": p, "frames": n, "launch_s": time.perf_counter() - t0})
                r["mean_epoch_s"] = sum(r["epoch_s"]) / len(r["epoch_s"])
                rows.append(r)
                print(f"ranks={p} frames={n}: {r['mean_epoch_s']:.2f} s/epoch", flush=True)
    cols = ["ranks", "frames", "windows", "mean_epoch_s", "wall_s", "launch_s", "train_cost"]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=cols)
        wr.writeheader()
        for r in rows:
            wr.writerow({c: (round(r[c], 6) if isinstance(r[c], float) else r[c]) for c in cols})
    import torch

    torch.set_num_threads(1)  # as in every rank
    print()
    print(describe())
    print("ds.da4d.fit, Lorenz96 40 sites, window 10, global batch 64, 2 epochs, CNN width 32 depth 3; "
          "one torch thread per rank, gloo")
    print(f"{'ranks':>5} {'frames':>6} {'windows':>7} {'s/epoch':>8} {'fit wall s':>10} {'torchrun s':>10} "
          f"{'final train cost':>17}")
    for r in rows:
        print(f"{r['ranks']:>5} {r['frames']:>6} {r['windows']:>7} {r['mean_epoch_s']:>8.2f} {r['wall_s']:>10.1f} "
              f"{r['launch_s']:>10.1f} {r['train_cost']:>17.6g}")
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
