"""Velocity spread vs cloud cover on the tracer-motion twin (GitHub issue 8): RML/EDA vs generative network.

Twin: image-model truth on 24 x 24 cells, windows of 5 frames, texture tracer,
noise 2 % of the tracer std, 40 % cloud cover from large (wavelength 24 cells),
slow (0.2 cell/frame) clouds so that cloudy pixels stay clouded for most of the
window; Tikhonov-4DVAR with smoothness weight 100.

(a) Randomised 4DVAR (RML / EDA): K members per test window, each the 4DVAR
    analysis of the tracer observations perturbed by their noise with the
    velocity's smoothness prior shifted by a draw of that prior (L-BFGS).
(b) Generative network (:mod:`xda_hybrid.motion.generative`): a U-Net trained
    on the randomised 4DVAR cost from the observations of other windows only
    (another seed, never a truth); a member is one pass on ``Y + ε_k`` and the
    prior shift ``w_p,k``.

Prints, for both, the mean speed spread (``sqrt(var u + var v)`` over members)
over clear pixels (never clouded in the window) and cloudy ones (clouded in
>= half the frames), the error of the ensemble mean there, spread/skill
``sqrt((K+1)/K · mean spread² / mean error²)`` and the seconds per sample; draws
the spread maps of both with the cloud cover.  The trained network is cached
under benchmarks/results/ (``--retrain`` to train again).

Usage::

    python benchmarks/uncertainty_motion.py [--retrain]   # ~13 min with training, ~2 min cached (1 CPU thread)
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

import torch

from machine import describe
from xda_hybrid.motion.frames import motion_first_guess
from xda_hybrid.motion.generative import (
    generative_motion_network,
    sample_motion,
    spread_by_cover,
    train_generative_motion,
)
from xda_hybrid.motion.learned import motion_cost
from xda_hybrid.motion.twins import forced_tracer_twin
from xda_hybrid.motion.variational import motion_observations
from xda_hybrid.variational.ensemble import perturb, randomised_fourdvar

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
CACHE = os.path.join(RESULTS, "uncertainty_motion_net.pt")

SIZE, WINDOW = 24, 5
TWIN = dict(size=SIZE, window=WINDOW, cloud_fraction=0.4, noise=0.02, tracer="texture", cloud_wind=0.2,
            cloud_wavelength=24.0)
GRAD_WEIGHT = 100.0
TRAIN = dict(n_windows=400, seed=100, epochs=150, batch_size=8, lr=2e-3, width=16, levels=2)
TEST_SEED = 2


def train_or_load(retrain: bool):
    setting = {"twin": TWIN, "grad_weight": GRAD_WEIGHT, "train": TRAIN}
    if not retrain and os.path.exists(CACHE):
        ck = torch.load(CACHE, weights_only=False)
        if ck["setting"] == setting:
            tr = forced_tracer_twin(n_windows=2, seed=TRAIN["seed"], **TWIN)
            net = generative_motion_network(motion_observations(tr.obs, tr.noise_std), tr.model,
                                            grad_weight=GRAD_WEIGHT, width=TRAIN["width"], levels=TRAIN["levels"])
            net.load_state_dict(ck["state_dict"])
            print(f"generative network: loaded {os.path.relpath(CACHE, HERE)} (trained {ck['train_seconds']:.0f} s)")
            return net.eval(), ck
        print("cached network has another setting: retraining")
    tr = forced_tracer_twin(n_windows=TRAIN["n_windows"], seed=TRAIN["seed"], **TWIN)  # observations only are used
    t = time.perf_counter()
    net, res = train_generative_motion(tr.obs, tr.noise_std, tr.model, grad_weight=GRAD_WEIGHT,
                                       epochs=TRAIN["epochs"], batch_size=TRAIN["batch_size"], lr=TRAIN["lr"],
                                       width=TRAIN["width"], levels=TRAIN["levels"])
    ck = {"setting": setting, "state_dict": net.state_dict(), "train_seconds": time.perf_counter() - t,
          "history": [(h["epoch"], h["train_cost"], h["val_obs_cost"]) for h in res.history],
          "best_epoch": res.best_epoch}
    os.makedirs(RESULTS, exist_ok=True)
    torch.save(ck, CACHE)
    print(f"generative network: trained {ck['train_seconds']:.0f} s, best epoch {res.best_epoch}; "
          f"cached in {os.path.relpath(CACHE, HERE)}")
    return net.eval(), ck


def scores(xs: torch.Tensor, truth: torch.Tensor, obs) -> dict:
    """Speed spread and error of the mean by cover for members ``xs`` (K, batch, 3, ny, nx)."""
    k = xs.shape[0]
    var = xs[:, :, 0].var(0) + xs[:, :, 1].var(0)
    err2 = ((xs[:, :, :2].mean(0) - truth[:, 0, :2]) ** 2).sum(1)
    s, e = spread_by_cover(var.sqrt(), obs), spread_by_cover(err2.sqrt(), obs)
    cloud = s["cloud_fraction"]
    ss = {}
    for name, m in (("all", torch.ones_like(cloud, dtype=torch.bool)), ("clear", cloud == 0), ("cloudy", cloud >= 0.5)):
        ss[name] = float(((k + 1) / k * var[m].mean() / err2[m].mean()).sqrt())
    return {"spread_map": var.sqrt(), "spread": s, "error": e, "spread_skill": ss, "cloud": cloud}


def main(n_test=8, members=16, iterations=400, n_figure=4, retrain=False):
    torch.set_num_threads(1)
    print("Velocity spread vs cloud cover — tracer-motion twin: randomised 4DVAR (RML/EDA) vs generative network")
    print(describe())
    print(f"twin: {WINDOW}-frame windows, {SIZE}x{SIZE} cells, texture tracer, noise 2 % of the tracer std, "
          f"40 % cloud cover (cloud wavelength 24 cells, drift 0.2 cell/frame), smoothness weight {GRAD_WEIGHT:g}; "
          f"{n_test} test windows (seed {TEST_SEED}), K={members} members")
    print(f"generative: U-Net width {TRAIN['width']}, {TRAIN['levels']} levels, {TRAIN['n_windows']} training windows "
          f"(seed {TRAIN['seed']}, observations only), {TRAIN['epochs']} epochs, batch {TRAIN['batch_size']}, "
          f"lr {TRAIN['lr']:g}; RML: {iterations} L-BFGS iterations per member")
    net, ck = train_or_load(retrain)

    te = forced_tracer_twin(n_windows=n_test, seed=TEST_SEED, **TWIN)
    obs = motion_observations(te.obs, te.noise_std)
    cost = motion_cost(te.model, WINDOW, GRAD_WEIGHT)
    rows = {}

    t = time.perf_counter()
    p = perturb(cost, obs, members, generator=torch.Generator().manual_seed(0))
    r = randomised_fourdvar(cost, p, motion_first_guess(p.obs, 3), max_iter=iterations)
    rml_time = time.perf_counter() - t
    rows["RML / EDA (L-BFGS per member)"] = (scores(r.x.reshape(members, n_test, 3, SIZE, SIZE), te.truth, obs),
                                             rml_time / (members * n_test))

    sample_motion(net, te.obs, te.noise_std, 2, te.model, GRAD_WEIGHT, torch.Generator().manual_seed(9))  # warm-up
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        xs = sample_motion(net, te.obs, te.noise_std, members, te.model, GRAD_WEIGHT, torch.Generator().manual_seed(1))
        best = min(best, time.perf_counter() - t)
    rows["generative network (one pass per member)"] = (scores(xs, te.truth, obs), best / (members * n_test))

    print()
    print("speed spread and error of the ensemble mean, cells/frame; clear: never clouded, cloudy: clouded in >= half "
          "the frames; spread/skill = sqrt((K+1)/K) * rms spread / rms error")
    print(f"{'method':<42} {'spread clear':>12} {'cloudy':>8} {'ratio':>6} {'err clear':>10} {'cloudy':>8} "
          f"{'ratio':>6} {'spr/skill all':>13} {'clear':>6} {'cloudy':>6} {'s/sample':>9}")
    for name, (sc, sec) in rows.items():
        s, e, ss = sc["spread"], sc["error"], sc["spread_skill"]
        print(f"{name:<42} {s['clear']:>12.4f} {s['cloudy']:>8.4f} {s['ratio']:>6.2f} {e['clear']:>10.4f} "
              f"{e['cloudy']:>8.4f} {e['ratio']:>6.2f} {ss['all']:>13.2f} {ss['clear']:>6.2f} {ss['cloudy']:>6.2f} "
              f"{sec:>9.2e}")
    (rml, rml_sec), (gen, gen_sec) = rows.values()
    cloud = gen["cloud"]
    clear, cloudy = float((cloud == 0).double().mean()), float((cloud >= 0.5).double().mean())
    print(f"pixels: clear {clear:.0%}, cloudy {cloudy:.0%}; "
          f"RML wall {rml_time:.0f} s for {members * n_test} members; generative {rml_sec / gen_sec:.0f}x cheaper per "
          f"sample; training {ck['train_seconds']:.0f} s (amortised after "
          f"{ck['train_seconds'] / max(rml_sec - gen_sec, 1e-12):.0f} samples)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n_figure, n_test)
    fig, axes = plt.subplots(3, n, figsize=(3.2 * n, 9), constrained_layout=True)
    for i in range(n):
        vmax = float(max(gen["spread_map"][i].max(), rml["spread_map"][i].max()))
        for row, (sc, label) in enumerate(((gen, "generative"), (rml, "RML / EDA"))):
            ax = axes[row, i]
            im = ax.imshow(sc["spread_map"][i].numpy(), cmap="viridis", vmin=0, vmax=vmax)
            ax.contour(cloud[i].numpy(), levels=[0.5], colors="w", linewidths=1.0)
            ax.set_title(f"window {i}: {label} speed spread", fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.7)
        im2 = axes[2, i].imshow(cloud[i].numpy(), cmap="Greys", vmin=0, vmax=1)
        axes[2, i].set_title("cloud cover (fraction of frames)", fontsize=9)
        fig.colorbar(im2, ax=axes[2, i], shrink=0.7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Speed spread (cells/frame), K={members}; white contour: clouded >= half the window. "
                 f"cloudy/clear: generative {gen['spread']['ratio']:.2f}, RML {rml['spread']['ratio']:.2f}")
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "uncertainty_motion.png")
    fig.savefig(path, dpi=90)
    static = os.path.join(HERE, "..", "docs", "_static", "benchmarks", "uncertainty_motion.png")
    shutil.copyfile(path, static)
    print(f"wrote {os.path.relpath(path, HERE)} and docs/_static/benchmarks/uncertainty_motion.png")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--retrain", action="store_true", help="train the generative network again (ignore the cache)")
    main(retrain=ap.parse_args().retrain)
