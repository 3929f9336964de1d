"""Posterior samples on the Lorenz96 acceptance twin: generative inversion vs EDA (GitHub issue 8).

Setup (as benchmarks/lorenz96_learned.py): Lorenz96 N=40, F=8, RK4 dt=0.05,
windows of 10 frames, 50 % of the sites observed at random at every frame,
noise std 1, no background term.  Training windows come from one trajectory,
test windows from another.

Rows:
* EDA — ensemble of data assimilations: K 4DVARs (batched L-BFGS, 50
  iterations) per test window on perturbed observations ``Y + ε_k`` (RML);
* generative inversion — a CNN trained from observations only on the
  randomised 4DVAR cost ``J(F(Y + ε); Y + ε)`` (new ``ε`` per batch); a sample
  is one pass ``F(Y + ε_k)``.

Scores against the truth of the test windows (scoring only): spread/skill
ratio ``√((K+1)/K)·spread/RMSE(mean)``, fair CRPS (scoringrules when
installed), rank histogram — on the initial state ``x₀`` (the sampled
control variable; the acceptance criterion) and on the members' trajectories
over the window.  Seconds per sample: wall time of the K·n_test samples / (K·n_test).

Usage::

    python benchmarks/uncertainty_lorenz96.py            # acceptance run (~8 min on 1 CPU thread)
    python benchmarks/uncertainty_lorenz96.py --quick    # small run (~2 min)
"""
from __future__ import annotations

import argparse
import csv
import os
import time

import torch

from machine import describe
from xda_hybrid import metrics
from xda_hybrid.data.synthetic import lorenz96_twin
from xda_hybrid.learning import first_guess, generative_network, sample, train_generative
from xda_hybrid.learning.data import TrainingData
from xda_hybrid.models.lorenz96 import Lorenz96
from xda_hybrid.observation import ObservationOperator, Observations
from xda_hybrid.variational import FourDVarCost, eda, fourdvar

WINDOW, N_SITES, FORCING, DT, OBS_FRACTION, NOISE = 10, 40, 8.0, 0.05, 0.5, 1.0
HERE = os.path.dirname(os.path.abspath(__file__))


def twin(n_windows: int, seed: int):
    tw = lorenz96_twin(n_windows=n_windows, window=WINDOW, n_sites=N_SITES, forcing=FORCING, dt=DT,
                       obs_fraction=OBS_FRACTION, noise_std=NOISE, gap=0, seed=seed, dtype=torch.float64)
    return tw.truth, Observations.from_values(tw.obs, noise_std=NOISE)


def scores(members: torch.Tensor, truth: torch.Tensor) -> dict:
    ss = metrics.spread_skill(members, truth)
    hist = metrics.rank_histogram(members, truth, torch.Generator().manual_seed(0))
    return {**ss, "crps": float(metrics.crps_ensemble(members, truth).mean()), "rank_hist": hist.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="600 training / 50 test windows, few epochs")
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--n-train", type=int)
    ap.add_argument("--n-test", type=int)
    ap.add_argument("--width", type=int, default=48)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=50, help="L-BFGS iterations per EDA member")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "uncertainty_lorenz96"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_train = args.n_train or (600 if args.quick else 4000)
    n_test = args.n_test or (50 if args.quick else 200)
    epochs = args.epochs or (6 if args.quick else 60)
    k = args.members

    print("Posterior samples — Lorenz96 twin: generative inversion vs EDA")
    print(describe())
    print(f"setup: N={N_SITES}, F={FORCING}, dt={DT}, window={WINDOW}, {OBS_FRACTION:.0%} observed, noise std {NOISE}, "
          f"no background term; {n_train} training windows, {n_test} test windows (another trajectory); "
          f"K={k} members; CNN1d width={args.width} depth={args.depth}, {epochs} epochs, lr={args.lr}; "
          f"EDA: {args.iterations} L-BFGS iterations per member", flush=True)
    t_all = time.perf_counter()
    truth_tr, obs_tr = twin(n_train, seed=1)
    truth_te, obs_te = twin(n_test, seed=2)
    del truth_tr  # never used: training reads observations only
    obs_tr32, obs_te32 = obs_tr.to(torch.float32), obs_te.to(torch.float32)
    model = Lorenz96(forcing=FORCING, dt=DT)
    op = ObservationOperator(model)
    cost = FourDVarCost(model, op, WINDOW)
    x0_true = truth_te[:, 0]

    def traj(members: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = cost.trajectory(members.flatten(0, 1).double())
        return t.reshape(members.shape[0], members.shape[1], *t.shape[1:])

    rows = {}
    # --- deterministic 4DVAR (reference for the skill) ---
    fg = first_guess(obs_te, op, 1)
    r4 = fourdvar(cost, obs_te, fg, max_iter=args.iterations)
    rmse_4dvar = float(metrics.rmse(r4.x, x0_true).pow(2).mean().sqrt())
    print(f"[{time.perf_counter() - t_all:5.0f} s] 4DVAR x0 RMSE {rmse_4dvar:.3f}", flush=True)

    # --- EDA ---
    res = eda(cost, obs_te, k, fg, generator=torch.Generator().manual_seed(11), max_iter=args.iterations)
    t_eda = res.wall_time / (k * n_test)
    rows["EDA (4DVAR on perturbed obs.)"] = {"x0": scores(res.members, x0_true),
                                             "traj": scores(traj(res.members), truth_te), "sec": t_eda}
    print(f"[{time.perf_counter() - t_all:5.0f} s] EDA done ({res.wall_time:.0f} s)", flush=True)

    # --- generative inversion ---
    t = time.perf_counter()
    net = generative_network(model, WINDOW, cost, width=args.width, depth=args.depth).fit_normalisation(obs_tr32)
    fit = train_generative(net, cost, TrainingData(obs_tr32), epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                           progress=args.progress)
    t_train = time.perf_counter() - t
    print(f"[{time.perf_counter() - t_all:5.0f} s] generative trained in {t_train:.0f} s "
          f"(best epoch {fit.best_epoch})", flush=True)
    gen = torch.Generator().manual_seed(12)
    sample(net, cost, obs_te32[:8], 2, generator=torch.Generator().manual_seed(0))  # warm-up
    t = time.perf_counter()
    xs = sample(net, cost, obs_te32, k, generator=gen)
    t_gen = (time.perf_counter() - t) / (k * n_test)
    xs = xs.double()
    rows["generative inversion (one pass per sample)"] = {"x0": scores(xs, x0_true), "traj": scores(traj(xs), truth_te),
                                                          "sec": t_gen}
    central = sample(net, cost, obs_te32, 1, zero=True)[0].double()
    rmse_central = float(metrics.rmse(central, x0_true).pow(2).mean().sqrt())

    # --- cost per sample, both methods timed back to back (best of 3; the machine may be shared) ---
    n_time = min(n_test, 50)
    t_eda, t_gen = float("inf"), float("inf")
    for _ in range(3):
        r = eda(cost, obs_te[:n_time], k, fg[:n_time], generator=torch.Generator().manual_seed(13),
                max_iter=args.iterations)
        t_eda = min(t_eda, r.wall_time / (k * n_time))
        t = time.perf_counter()
        sample(net, cost, obs_te32[:n_time], k, generator=torch.Generator().manual_seed(14))
        t_gen = min(t_gen, (time.perf_counter() - t) / (k * n_time))
    rows["EDA (4DVAR on perturbed obs.)"]["sec"] = t_eda
    rows["generative inversion (one pass per sample)"]["sec"] = t_gen
    print(f"cost per sample timed back to back on {n_time} windows x {k} members, best of 3")

    # --- table ---
    e, g = rows["EDA (4DVAR on perturbed obs.)"], rows["generative inversion (one pass per sample)"]
    print()
    print(f"{'method':<44} {'on':<5} {'spread':>7} {'RMSE mean':>9} {'sp/sk':>6} {'CRPS':>7} {'s/sample':>10} {'cost ratio':>10}")
    print("-" * 106)
    for name, r in rows.items():
        for on in ("x0", "traj"):
            s = r[on]
            ratio = f"{e['sec'] / r['sec']:10.0f}" if on == "x0" else ""
            print(f"{name if on == 'x0' else '':<44} {on:<5} {s['spread']:7.3f} {s['skill']:9.3f} {s['ratio']:6.2f} "
                  f"{s['crps']:7.3f} {r['sec'] if on == 'x0' else float('nan'):10.2e} {ratio:>10}")
    print("-" * 106)
    print(f"deterministic 4DVAR x0 RMSE {rmse_4dvar:.3f}; generative central member (no perturbation) x0 RMSE "
          f"{rmse_central:.3f}; generative training {t_train:.0f} s")
    print("rank histograms of x0 (K+1 bins, counts):")
    for name, r in rows.items():
        print(f"  {name}: {r['x0']['rank_hist']}")
    print()
    print("targets (issue 8, on x0):")
    ok = lambda b: "PASS" if b else "FAIL"  # noqa: E731
    gr, gc, ec = g["x0"]["ratio"], g["x0"]["crps"], e["x0"]["crps"]
    print(f"  spread/skill in [0.8, 1.2]:        {gr:.2f}  {ok(0.8 <= gr <= 1.2)}")
    print(f"  CRPS <= 1.1 x EDA's:               {gc:.3f} vs {1.1 * ec:.3f}  {ok(gc <= 1.1 * ec)}")
    print(f"  >= 50x cheaper per sample:         {e['sec'] / g['sec']:.0f}x  {ok(e['sec'] / g['sec'] >= 50)}")
    print(f"total benchmark time {time.perf_counter() - t_all:.0f} s")

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "on", "n_members", "spread", "rmse_of_mean", "spread_skill_ratio", "crps_fair",
                    "seconds_per_sample", "rank_histogram"])
        for name, r in rows.items():
            for on in ("x0", "traj"):
                s = r[on]
                w.writerow([name, on, s["n_members"], f"{s['spread']:.5f}", f"{s['skill']:.5f}", f"{s['ratio']:.4f}",
                            f"{s['crps']:.5f}", f"{r['sec']:.4e}", " ".join(map(str, s["rank_hist"]))])
    print(f"wrote {args.out}.csv")


if __name__ == "__main__":
    main()
