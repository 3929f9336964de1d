"""Sweep of the Lorenz96 twin: observed fraction × noise × method.

For each observed fraction in {25, 50, 75 %} and noise std in {0.5, 1, 2}:
classical 4DVAR, learning-over-4DVAR, the learned inversion (4DVAR cost,
observations only) and hybrid (network + 10 4DVAR iterations); trajectory RMSE
on test windows of a separate trajectory and wall time per test window
(inference only for the networks; their training time is printed).  Writes
``benchmarks/results/sweep_lorenz96.csv`` (rewritten after every setting) and ``.png``.

Usage::

    python benchmarks/sweep_lorenz96.py            # 1000 training / 200 test windows per setting, 30 epochs
    python benchmarks/sweep_lorenz96.py --quick    # a few minutes
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import torch

from machine import describe
from xda_hybrid import metrics
from xda_hybrid.data.synthetic import lorenz96_twin
from xda_hybrid.learning import InversionNetwork, TrainingData, first_guess, over4dvar, predict, train
from xda_hybrid.observation import ObservationOperator, Observations
from xda_hybrid.variational import FourDVarCost, fourdvar

WINDOW = 10
FRACTIONS = (0.25, 0.5, 0.75)
NOISES = (0.5, 1.0, 2.0)
METHODS = ("4DVAR", "over4dvar", "learned", "hybrid")
RESULTS = Path(__file__).parent / "results"


def run_setting(fraction, noise, n_train, n_test, epochs, width, depth, max_iter, hybrid_iter):
    def twin(n, seed):
        tw = lorenz96_twin(n_windows=n, window=WINDOW, obs_fraction=fraction, noise_std=noise, gap=0, seed=seed)
        return tw.truth, Observations.from_values(tw.obs, noise_std=noise), tw.model

    truth_tr, obs_tr, model = twin(n_train, 1)
    truth_te, obs_te, _ = twin(n_test, 2)
    op = ObservationOperator(model)
    cost = FourDVarCost(model, op, WINDOW)
    obs_tr32, obs_te32 = obs_tr.to(torch.float32), obs_te.to(torch.float32)

    def rmse(x0):
        with torch.no_grad():
            return float(metrics.rmse(cost.trajectory(x0.to(truth_te.dtype)), truth_te).mean())

    def new_net():
        return InversionNetwork.for_model(model, WINDOW, op, width=width, depth=depth).fit_normalisation(obs_tr32)

    opts = dict(epochs=epochs, batch_size=32, lr=2e-3, progress=False)
    out = {}  # method -> (RMSE, seconds per test window)
    t = time.perf_counter()
    r4 = fourdvar(cost, obs_te, first_guess(obs_te, op, 1), max_iter=max_iter)
    out["4DVAR"] = (rmse(r4.x), (time.perf_counter() - t) / n_test)
    t = time.perf_counter()
    net_o = new_net()
    over4dvar(net_o, cost, TrainingData(obs_tr32), max_iter=max_iter, x_init=first_guess(obs_tr32, op, 1), **opts)
    train_o = time.perf_counter() - t
    t = time.perf_counter()
    x_o = predict(net_o, obs_te32)
    out["over4dvar"] = (rmse(x_o), (time.perf_counter() - t) / n_test)
    t = time.perf_counter()
    net = new_net()
    train(net, cost, TrainingData(obs_tr32), **opts)
    train_l = time.perf_counter() - t
    t = time.perf_counter()
    x = predict(net, obs_te32)
    t_net = time.perf_counter() - t
    out["learned"] = (rmse(x), t_net / n_test)
    t = time.perf_counter()
    rh = fourdvar(cost, obs_te, x.double(), max_iter=hybrid_iter)
    out["hybrid"] = (rmse(rh.x), (t_net + time.perf_counter() - t) / n_test)
    return out, {"over4dvar": train_o, "learned": train_l}


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(NOISES), figsize=(4 * len(NOISES), 3.4), sharey=True)
    for ax, noise in zip(axes, NOISES):
        for method in METHODS:
            pts = sorted((r["obs_fraction"], r["rmse"]) for r in rows if r["noise_std"] == noise and r["method"] == method)
            ax.plot([100 * p[0] for p in pts], [p[1] for p in pts], "o-", label=method)
        ax.set_title(f"noise std {noise}")
        ax.set_xlabel("observed sites [%]")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("trajectory RMSE")
    axes[0].legend()
    fig.suptitle("Lorenz96 (N=40, F=8, window 10): analysis error")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_train, n_test, epochs = (300, 60, 6) if args.quick else (1000, 200, 30)
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(describe())
    print(f"{n_train} training / {n_test} test windows per setting, {epochs} epochs, CNN width 64 depth 4, "
          f"4DVAR 50 iterations, hybrid 10")
    fields = ["obs_fraction", "noise_std", "method", "rmse", "seconds_per_window", "training_seconds"]
    rows = []
    for fraction in FRACTIONS:
        for noise in NOISES:
            t = time.perf_counter()
            res, trained = run_setting(fraction, noise, n_train, n_test, epochs, width=64, depth=4, max_iter=50,
                                       hybrid_iter=10)
            print(f"observed {fraction:.0%}, noise {noise}: "
                  + ", ".join(f"{m} {v[0]:.3f} ({1e3 * v[1]:.2f} ms)" for m, v in res.items())
                  + f"  [setting {time.perf_counter() - t:.0f} s]", flush=True)
            rows += [{"obs_fraction": fraction, "noise_std": noise, "method": m, "rmse": v[0],
                      "seconds_per_window": v[1], "training_seconds": trained.get(m, 0.0)} for m, v in res.items()]
            with open(RESULTS / "sweep_lorenz96.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)
    print()
    print(f"{'observed':>8} {'noise':>5}  " + "  ".join(f"{m:>18}" for m in METHODS) + "   (RMSE / ms per window)")
    for fraction in FRACTIONS:
        for noise in NOISES:
            cells = []
            for m in METHODS:
                r = next(r for r in rows if r["obs_fraction"] == fraction and r["noise_std"] == noise and r["method"] == m)
                cells.append(f"{r['rmse']:7.3f} / {1e3 * r['seconds_per_window']:7.2f}")
            print(f"{fraction:>8.0%} {noise:>5}  " + "  ".join(f"{c:>18}" for c in cells))
    plot(rows, RESULTS / "sweep_lorenz96.png")
    print(f"wrote {RESULTS / 'sweep_lorenz96.csv'} and {RESULTS / 'sweep_lorenz96.png'}")


if __name__ == "__main__":
    main()
