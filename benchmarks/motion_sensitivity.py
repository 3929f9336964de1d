"""Sensitivity of the motion estimates to observation noise and cloud cover.

    python benchmarks/motion_sensitivity.py [--quick] [--windows N] [--iters N] [--velocity stream --grad-weight 1000]

64×64 tracer_motion twin windows (10 frames; the same flows and tracers in every
configuration), noise ∈ {0, 2, 5, 10} % of the tracer std × cloud fraction ∈ {0, 30, 60} %;
for each: endpoint and angular error of Tikhonov-4DVAR, stream-function 4DVAR, the learned
U-Net, the hybrid, Farneback and DIS.  The U-Net is the one trained by motion_twin.py with the same
``--velocity`` and ``--grad-weight`` (at 2 % noise, 30 % clouds; results/motion_unet.pt by default,
motion_unet_stream_a1000.pt for ``--velocity stream --grad-weight 1000``) — here it is applied unchanged to every
configuration (learned and hybrid are skipped if it is missing, unless --quick trains a tiny one),
reading R⁻¹ as the observation mask (its training R⁻¹ where observed: it never saw other noise levels).
A noise-free twin is assimilated with R from a 0.5 % noise floor.  The Tikhonov weight is
``--grad-weight`` (default 1e4) up to 2 % noise and then proportional to R⁻¹
(motion_common.grad_weight_for).

Writes results/motion_sensitivity<tag>.csv and .png (tag as the network's, e.g. ``_stream_a1000``;
``_quick`` suffix with --quick).
"""
from __future__ import annotations

import argparse
import csv
import os
import time

import torch

from machine import describe
from motion_common import (GRAD_WEIGHT, RESULTS, get_network, grad_weight_for, network_path, network_tag, run_methods,
                           tracer_windows)

NOISES = (0.0, 0.02, 0.05, 0.10)
CLOUDS = (0.0, 0.3, 0.6)
METHODS = ("4dvar", "4dvar-stream", "learned", "hybrid", "farneback", "dis")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clouds = sorted({r["cloud_fraction"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    fig, axes = plt.subplots(2, len(clouds), figsize=(4 * len(clouds), 6.5), squeeze=False, sharey="row")
    for j, c in enumerate(clouds):
        for m in methods:
            pts = sorted((r["noise"], r["epe"], r["ae"]) for r in rows if r["method"] == m and r["cloud_fraction"] == c)
            x = [100 * p[0] for p in pts]
            axes[0, j].plot(x, [p[1] for p in pts], "o-", label=m)
            axes[1, j].plot(x, [p[2] for p in pts], "o-", label=m)
        axes[0, j].set_title(f"clouds {100 * c:.0f} %")
        axes[1, j].set_xlabel("noise (% of tracer std)")
    axes[0, 0].set_ylabel("endpoint error (cells/frame)")
    axes[1, 0].set_ylabel("angular error (deg)")
    axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="2 windows, 60 iterations, noise {0, 5 %%}, clouds {0, 60 %%}")
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--hybrid-iters", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: best on the shared 2-core machine)")
    p.add_argument("--velocity", choices=("direct", "stream"), default="direct",
                   help="which motion_twin.py network: u, v output or stream-function head")
    p.add_argument("--grad-weight", type=float, default=GRAD_WEIGHT,
                   help="Tikhonov weight at 2 %% noise (and of the network's training cost)")
    a = p.parse_args()
    noises, clouds = NOISES, CLOUDS
    if a.quick:
        a.windows, a.iters, a.hybrid_iters = 2, 60, 10
        noises, clouds = (0.0, 0.05), (0.0, 0.6)
    torch.set_num_threads(a.threads)
    print(describe())
    os.makedirs(RESULTS, exist_ok=True)
    net = None
    tag = network_tag(a.velocity, a.grad_weight)
    net_path = network_path(tag)
    if os.path.exists(net_path):
        net, _ = get_network(a, None, path=net_path)
    elif a.quick:
        a.epochs, a.batch_size, a.lr, a.width, a.velocity_scale = 2, 4, 1e-3, 8, 1.0
        net, _ = get_network(a, tracer_windows(range(1000, 1004)), retrain=True,
                             path=os.path.join(RESULTS, "motion_unet_sensitivity_quick.pt"))
    else:
        print(f"no trained network at {net_path}: learned and hybrid skipped (run motion_twin.py first)")
    rows = []
    print(f"{'noise':>6s} {'clouds':>6s} {'method':<13s} {'EPE':>8s} {'AE':>7s} {'s/window':>9s}")
    for c in clouds:
        for nz in noises:
            t = time.perf_counter()
            w = tracer_windows(range(a.windows), cloud_fraction=c, noise=nz)
            res = run_methods(w, net, a.iters, a.hybrid_iters, noise=nz,
                              grad_weight=grad_weight_for(nz, a.grad_weight))
            for m, (_, sc) in res.items():
                rows.append({"noise": nz, "cloud_fraction": c, "method": m, **sc})
                print(f"{100 * nz:5.0f}% {100 * c:5.0f}% {m:<13s} {sc['epe']:8.4f} {sc['ae']:7.2f} "
                      f"{sc['seconds_per_window']:9.3f}", flush=True)
            speed = torch.sqrt(w.truth[:, 0, 0] ** 2 + w.truth[:, 0, 1] ** 2).mean().item()
            print(f"{'':14s}(zero velocity EPE {speed:.4f}; {time.perf_counter() - t:.0f} s)")
    suffix = tag + ("_quick" if a.quick else "")
    with open(os.path.join(RESULTS, f"motion_sensitivity{suffix}.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["noise", "cloud_fraction", "method", "epe", "ae", "seconds_per_window"])
        wr.writeheader()
        wr.writerows(rows)
    png = os.path.join(RESULTS, f"motion_sensitivity{suffix}.png")
    plot(rows, png)
    print(f"wrote {png} and motion_sensitivity{suffix}.csv")


if __name__ == "__main__":
    main()
