"""Scaling of ``ds.da4d.assimilate(..., parallel="dask")`` on a ``dask.distributed`` LocalCluster.

A year of daily 256×256 tracer frames (365 frames, tracer_motion-like: an
advected pattern with cloud gaps, generated chunk by chunk by the workers and
written to zarr) is assimilated with the learned method and the analysis
(u, v, tracer) is streamed to zarr with ``to_zarr`` — nothing is loaded in the
driver.  The network is the U-Net of ``ds.da4d.fit`` trained for one epoch on
6 frames: an essentially untrained network, which costs the same per window
as a trained one (this benchmark measures memory and time, not accuracy).

Measured: the driver's peak RSS (psutil, sampled every 20 ms, and
``ru_maxrss`` over the whole run), and the wall time of assimilate + to_zarr
against the number of frames (windows), the number of workers and the grid
size.  Writes ``benchmarks/results/scale_assimilate.csv`` and prints a table.

    nice -n 5 python benchmarks/scale_assimilate.py            # full (~5-10 min on 2 cores)
    python benchmarks/scale_assimilate.py --quick              # seconds
"""
from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe  # noqa: E402

RESULTS = Path(__file__).parent / "results"


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled)."""

    def __init__(self, every: float = 0.02):
        import psutil

        self.proc, self.every, self.peak = psutil.Process(), every, 0
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every)

    def __enter__(self):
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _frames(t0: int, t1: int, n: int, seed: int = 0) -> np.ndarray:
    """Tracer frames t0..t1-1 (n×n): a smooth pattern drifting by ~0.3 cell/frame, NaN under clouds."""
    yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    rng = np.random.default_rng(seed)
    k = rng.integers(1, 5, size=(6, 2))
    ph = rng.uniform(0, 2 * np.pi, 6)
    out = np.empty((t1 - t0, n, n), np.float32)
    for i, t in enumerate(range(t0, t1)):
        f = sum(np.sin(2 * np.pi * (k[j, 0] * (xx - 0.3 * t) + k[j, 1] * (yy - 0.1 * t)) / n + ph[j]) / (j + 1)
                for j in range(6))
        cr = np.random.default_rng(seed + 1000 + t)  # clouds: a thresholded random smooth field
        c = sum(np.cos(2 * np.pi * (a * xx + b * yy) / n + p) for a, b, p in
                zip(cr.integers(1, 4, 4), cr.integers(1, 4, 4), cr.uniform(0, 2 * np.pi, 4)))
        f = f + 0.02 * cr.normal(size=f.shape)
        out[i] = np.where(c > 1.0, np.nan, f)
    return out


def dataset(n_time: int, n: int, chunk: int):
    """The observation Dataset, dask-backed (each chunk generated where it is computed)."""
    import dask.array as dsa
    import xarray as xr

    starts = list(range(0, n_time, chunk))
    blocks = [dsa.from_delayed(_delayed_frames(a, min(a + chunk, n_time), n), (min(a + chunk, n_time) - a, n, n),
                               dtype=np.float32) for a in starts]
    obs = dsa.concatenate(blocks)
    return xr.Dataset(
        {"tracer_obs": (("time", "y", "x"), obs, {"noise_std": 0.05, "units": "1", "long_name": "observed tracer"})},
        coords={"time": ("time", np.datetime64("2020-01-01") + np.arange(n_time) * np.timedelta64(1, "D")),
                "y": ("y", np.arange(n) * 4000.0, {"units": "m"}), "x": ("x", np.arange(n) * 4000.0, {"units": "m"})},
        attrs={"model": "image", "boundary": "closed"},
    )


def _delayed_frames(a, b, n):
    import dask

    return dask.delayed(_frames, pure=True)(a, b, n)


def fitted_network(n: int, window: int):
    """A U-Net fitted for one epoch on 6 frames (essentially untrained; same cost per window)."""
    import xda_hybrid  # noqa: F401

    small = dataset(6, n, 6).compute()
    return small.da4d.fit(window=window, epochs=1, batch_size=2, progress=False, validation=None,
                          network={"width": 8, "levels": 2}, seed=0)


def run_case(path_in: Path, path_out: Path, fitted, frames: int) -> dict:
    import xarray as xr

    ds = xr.open_zarr(path_in).isel(time=slice(0, frames))
    shutil.rmtree(path_out, ignore_errors=True)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        an = ds.da4d.assimilate(fitted, parallel="dask")
        an.to_zarr(path_out, mode="w")
        wall = time.perf_counter() - t0
    back = xr.open_zarr(path_out)
    ok = bool(np.isfinite(back["tracer"].isel(time=-1)).all())
    return {"wall_s": wall, "rss_start_mib": mem.start / 2**20, "rss_peak_mib": mem.peak / 2**20,
            "windows": int(np.ceil(frames / fitted.window)), "blocks": an.attrs["n_blocks"], "finite": ok}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[46, 91, 182, 365])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--grids", type=int, nargs="+", default=[64, 128, 256], help="grid sizes at the smallest frame count")
    ap.add_argument("--grid", type=int, default=256)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=20, help="time chunk of the zarr input (frames)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    ap.add_argument("--out", default=str(RESULTS / "scale_assimilate.csv"))
    a = ap.parse_args(argv)
    if a.quick:
        a.frames, a.workers, a.grids, a.grid, a.out = [10, 20], [1, 2], [32], 32, str(RESULTS / "scale_assimilate_quick.csv")

    import warnings

    import torch
    from dask.distributed import Client, LocalCluster

    warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tmp = Path(tempfile.mkdtemp(prefix="xda_scale_"))
    rows = []
    try:
        grids = sorted(set(a.grids) | {a.grid})
        fits = {n: fitted_network(n, a.window) for n in grids}
        for w in sorted(a.workers, reverse=True):
            with LocalCluster(n_workers=w, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
                    Client(cl):
                for n in grids:
                    path_in = tmp / f"obs_{n}.zarr"
                    if not path_in.exists():
                        dataset(max(a.frames), n, a.chunk).to_zarr(path_in, mode="w")
                    if n == a.grid:
                        cases = a.frames if w == max(a.workers) else [max(a.frames)]
                    else:
                        cases = [min(a.frames)] if w == max(a.workers) else []
                    if cases:  # warm-up (imports and the network shipped to the workers), not recorded
                        run_case(path_in, tmp / "an.zarr", fits[n], 2 * a.window)
                    for f in cases:
                        r = run_case(path_in, tmp / "an.zarr", fits[n], f)
                        r.update({"workers": w, "grid": n, "frames": f})
                        r["s_per_window"] = r["wall_s"] / r["windows"]
                        rows.append(r)
                        print(f"workers={w} grid={n} frames={f}: {r['wall_s']:.1f} s, driver peak RSS "
                              f"{r['rss_peak_mib']:.0f} MiB", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    cols = ["workers", "grid", "frames", "windows", "blocks", "wall_s", "s_per_window", "rss_start_mib",
            "rss_peak_mib", "finite"]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=cols)
        wr.writeheader()
        for r in rows:
            wr.writerow({c: (round(r[c], 4) if isinstance(r[c], float) else r[c]) for c in cols})
    print()
    print(describe())
    print(f"learned method, window {a.window}, U-Net width 8 / 2 levels fitted 1 epoch on 6 frames (untrained: "
          f"timing and memory only); input zarr time chunks of {a.chunk} frames; analysis streamed to zarr")
    print(f"{'workers':>7} {'grid':>5} {'frames':>6} {'windows':>7} {'blocks':>6} {'wall s':>8} {'s/window':>9} "
          f"{'driver RSS start MiB':>21} {'driver RSS peak MiB':>20}")
    for r in rows:
        print(f"{r['workers']:>7} {r['grid']:>5} {r['frames']:>6} {r['windows']:>7} {r['blocks']:>6} {r['wall_s']:>8.1f} "
              f"{r['s_per_window']:>9.3f} {r['rss_start_mib']:>21.0f} {r['rss_peak_mib']:>20.0f}")
    print(f"driver ru_maxrss over the whole run (fits, data generation, all cases): {maxrss:.0f} MiB")
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
