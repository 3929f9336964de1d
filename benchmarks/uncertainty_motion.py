"""Velocity spread vs cloud cover on the tracer-motion twin (GitHub issue 8).

Randomised 4DVAR (RML / EDA) on tracer windows of the image model with cloud
gaps: K members per window, each the Tikhonov-4DVAR analysis of the tracer
observations perturbed by their noise, (a) with the velocity's smoothness prior
shifted by a draw of that prior (the complete RML, what the generative
inversion is trained to reproduce), (b) observations only.  Prints the mean
speed spread over clear pixels (never clouded in the window) and cloudy ones
(clouded in >= half the frames) with the error of the ensemble mean there, and
draws the spread map of (a) with the cloud cover.

Usage::

    python benchmarks/uncertainty_motion.py        # ~2 min on 1 CPU thread
"""
from __future__ import annotations

import os
import time

import torch

from machine import describe
from xda_hybrid.motion.frames import motion_first_guess
from xda_hybrid.motion.generative import spread_by_cover
from xda_hybrid.motion.learned import motion_cost
from xda_hybrid.motion.twins import forced_tracer_twin
from xda_hybrid.motion.variational import motion_observations
from xda_hybrid.variational.ensemble import perturb, randomised_fourdvar

HERE = os.path.dirname(os.path.abspath(__file__))


def main(n_windows=4, size=24, window=5, members=8, iterations=80, grad_weight=1e4):
    torch.set_num_threads(1)
    print("Velocity spread vs cloud cover — tracer-motion twin (randomised 4DVAR)")
    print(describe())
    print(f"setup: {n_windows} windows of {window} frames, {size}x{size} cells, 30 % cloud cover, noise 2 % of the "
          f"tracer std, smoothness weight {grad_weight:g}, K={members}, {iterations} L-BFGS iterations per member")
    tw = forced_tracer_twin(n_windows=n_windows, size=size, window=window, cloud_fraction=0.3, noise=0.02,
                            tracer="texture", seed=2)
    obs = motion_observations(tw.obs, tw.noise_std)
    cost = motion_cost(tw.model, window, grad_weight)
    out = {}
    for name, prior in (("obs. + smoothness prior perturbed (RML)", True), ("obs. perturbed only", False)):
        t = time.perf_counter()
        p = perturb(cost, obs, members, generator=torch.Generator().manual_seed(0), prior=prior)
        r = randomised_fourdvar(cost, p, motion_first_guess(p.obs, 3), max_iter=iterations)
        xs = r.x.reshape(members, n_windows, 3, size, size)
        sp = (xs[:, :, 0].var(0) + xs[:, :, 1].var(0)).sqrt()
        err = ((xs[:, :, :2].mean(0) - tw.truth[:, 0, :2]) ** 2).sum(1).sqrt()
        s, e = spread_by_cover(sp, obs), spread_by_cover(err, obs)
        out[name] = (sp, s)
        print(f"{name:<42} speed spread clear {s['clear']:.4f} cloudy {s['cloudy']:.4f} (ratio {s['ratio']:.2f}); "
              f"error of the mean clear {e['clear']:.4f} cloudy {e['cloudy']:.4f} (ratio {e['ratio']:.2f}); "
              f"{time.perf_counter() - t:.0f} s")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sp, s = out["obs. + smoothness prior perturbed (RML)"]
    cloud = s["cloud_fraction"]
    fig, axes = plt.subplots(2, n_windows, figsize=(3 * n_windows, 6), constrained_layout=True)
    for i in range(n_windows):
        im = axes[0, i].imshow(sp[i].numpy(), cmap="viridis")
        axes[0, i].contour(cloud[i].numpy(), levels=[0.5], colors="w", linewidths=0.8)
        axes[0, i].set_title(f"window {i}: speed spread")
        fig.colorbar(im, ax=axes[0, i], shrink=0.7)
        im2 = axes[1, i].imshow(cloud[i].numpy(), cmap="Greys", vmin=0, vmax=1)
        axes[1, i].set_title("cloud cover (fraction of frames)")
        fig.colorbar(im2, ax=axes[1, i], shrink=0.7)
    fig.suptitle(f"RML velocity spread (cells/frame), white contour: clouded >= half the window; "
                 f"spread cloudy/clear = {s['ratio']:.2f}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", "uncertainty_motion.png")
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
