"""Shared pieces of the motion benchmarks: tracer windows, methods, scores, the trained U-Net, plots."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from xda_hybrid import metrics
from xda_hybrid.data.motion import tracer_motion_twin
from xda_hybrid.learning import load_checkpoint, save_checkpoint
from xda_hybrid.observation import Observations
from xda_hybrid.models.image import ImageModel
from xda_hybrid.motion import (
    MotionInversionNetwork,
    fourdvar_motion,
    learned_motion,
    motion_observations,
    optical_flow,
    train_motion_inversion,
)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

#: Tikhonov weight of the 64×64 tracer_motion twin (noise 2 % of the tracer std, R⁻¹ ≈ 1000):
#: best of {1, 30, 300, 3e3, 1e4, 3e4, 1e5, 1e6} on three windows (EPE 0.052 at 1e4, 300 iterations)
GRAD_WEIGHT = 1e4


def network_tag(velocity: str = "direct", grad_weight: float = GRAD_WEIGHT, quick: bool = False) -> str:
    """Suffix of a cached network and of its result files: ``""`` for the direct head at ``GRAD_WEIGHT``,
    else ``_quick``, ``_stream`` and ``_a<α>`` as they apply (``motion_unet<tag>.pt``)."""
    return (("_quick" if quick else "") + ("_stream" if velocity == "stream" else "")
            + (f"_a{grad_weight:g}" if grad_weight != GRAD_WEIGHT else ""))


def network_path(tag: str) -> str:
    """Cache file of the network with suffix ``tag`` (see :func:`network_tag`)."""
    return os.path.join(RESULTS, f"motion_unet{tag}.pt")


#: the direct-output network at ``GRAD_WEIGHT`` (the default of motion_twin.py)
NET_PATH = network_path("")


@dataclass
class Windows:
    frames: torch.Tensor  # (n, T, 1, ny, nx), NaN under clouds
    noise_std: torch.Tensor  # (n,) std used in R (floored for noise-free data)
    truth: torch.Tensor  # (n, T, 3, ny, nx) — scoring only
    model: ImageModel


def tracer_windows(seeds, size=64, window=10, per_record=1, cloud_fraction=0.3, noise=0.02,
                   noise_floor=0.005, dtype=torch.float32) -> Windows:
    """Windows from tracer_motion twins: ``per_record`` consecutive windows of each seed's record.

    The observation error std given to the methods is ``max(noise, noise_floor) × std(tracer)``
    (a noise-free twin still needs a finite R).
    """
    fr, tr, sd = [], [], []
    model = None
    for s in seeds:
        tw = tracer_motion_twin(size=size, length=window * per_record, cloud_fraction=cloud_fraction,
                                noise=noise, seed=int(s))
        model = tw.model
        std = max(noise, noise_floor) * float(tw.truth[:, 2].std())
        for k in range(per_record):
            fr.append(tw.obs[k * window:(k + 1) * window])
            tr.append(tw.truth[k * window:(k + 1) * window])
            sd.append(std)
    return Windows(torch.stack(fr).to(dtype), torch.tensor(sd, dtype=dtype), torch.stack(tr).to(dtype), model)


def score(est, w: Windows) -> dict:
    ut, vt = w.truth[:, 0, 0], w.truth[:, 0, 1]
    return {
        "epe": metrics.endpoint_error(est.u, est.v, ut, vt).mean().item(),
        "ae": metrics.angular_error(est.u, est.v, ut, vt).mean().item(),
        "seconds_per_window": est.wall_time / w.frames.shape[0],
    }


def get_network(args, train_w: Windows | None = None, retrain: bool = False, log=print, path: str = NET_PATH):
    """The U-Net trained on the 4DVAR cost of the training windows (cached in results/motion_unet.pt)."""
    if os.path.exists(path) and not retrain:
        ck = load_checkpoint(path)
        net = MotionInversionNetwork.from_config(ck["config"])
        net.load_state_dict(ck["state"])
        info = ck["info"]
        log(f"loaded trained network {path} ({info})")
        more = getattr(args, "more_epochs", 0)
        if more and train_w is not None:
            # continue training on the final cost (no continuation), then update the cache
            t = time.perf_counter()
            net, res = train_motion_inversion(train_w.frames, train_w.noise_std, train_w.model, net=net,
                                              grad_weight=getattr(args, "grad_weight", GRAD_WEIGHT), epochs=more, batch_size=args.batch_size,
                                              lr=args.lr, continuation=None, val_fraction=0.1, progress=False)
            h = ck["history"] + [{**e, "epoch": len(ck["history"]) + i + 1} for i, e in enumerate(res.history)]
            info = {**info, "epochs": len(h), "train_seconds": info["train_seconds"] + time.perf_counter() - t,
                    "final_train_cost": h[-1]["train_cost"], "final_val_obs_cost": h[-1]["val_obs_cost"],
                    "more_epochs_lr": args.lr, "more_epochs_windows": int(train_w.frames.shape[0]),
                    "more_epochs_best_epoch": res.best_epoch}
            save_checkpoint({"config": net.config, "state": net.state_dict(), "info": info, "history": h}, path)
            log(f"trained {more} more epochs: train cost {h[-1]['train_cost']:.4g}, "
                f"validation obs cost {h[-1]['val_obs_cost']} per window")
        return net, info
    if train_w is None:
        raise FileNotFoundError(f"no trained network at {path}; run benchmarks/motion_twin.py first")
    t = time.perf_counter()
    gw = getattr(args, "grad_weight", GRAD_WEIGHT)
    net, res = train_motion_inversion(train_w.frames, train_w.noise_std, train_w.model, grad_weight=gw,
                                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                      width=args.width, levels=3, velocity_scale=args.velocity_scale,
                                      velocity=getattr(args, "velocity", "direct"), val_fraction=0.1, progress=False)
    wall = time.perf_counter() - t
    h = res.history
    info = {"train_windows": int(train_w.frames.shape[0]), "epochs": len(h), "train_seconds": wall,
            "best_epoch": res.best_epoch, "final_train_cost": h[-1]["train_cost"],
            "final_val_obs_cost": h[-1]["val_obs_cost"], "first_train_cost": h[0]["train_cost"],
            "width": args.width, "batch_size": args.batch_size, "lr": args.lr,
            "velocity": getattr(args, "velocity", "direct"), "grad_weight": gw}
    os.makedirs(RESULTS, exist_ok=True)
    save_checkpoint({"config": net.config, "state": net.state_dict(), "info": info,
                     "history": h}, path)
    log(f"trained the U-Net on {info['train_windows']} windows, {info['epochs']} epochs, {wall:.0f} s; "
        f"train cost {info['first_train_cost']:.4g} -> {info['final_train_cost']:.4g}, "
        f"validation obs cost {info['final_val_obs_cost']} per window")
    return net, info


def grad_weight_for(noise: float, base: float = GRAD_WEIGHT) -> float:
    """Tikhonov weight for a noise level (fraction of the tracer std): ``base`` (the weight at 2 %
    noise) up to 2 %, then in proportion to R⁻¹ (a fixed ratio of smoothness to data weight).  At 10 %
    noise on four windows: EPE 0.048 with 400 (this rule, base 1e4) against 0.091 with 1e4; a
    noise-free twin keeps ``base``."""
    return float(base) * (0.02 / max(float(noise), 0.02)) ** 2


def network_obs(net, w: Windows):
    """Observations as the network was trained on them: its training R⁻¹ where observed.

    The U-Net saw a single noise level in training, so it reads R⁻¹ as a mask; giving it the
    true R⁻¹ of another noise level (×16 for the 0.5 % floor of a noise-free twin) would feed it
    inputs it never saw.  The 4DVAR part of the hybrid uses the true R⁻¹."""
    obs = motion_observations(w.frames, w.noise_std)
    ref = net.inv_var_ref.to(obs.inv_var).view(1, 1, -1, 1, 1)
    return Observations(obs.values, obs.mask.to(obs.inv_var) * ref)


def run_methods(w: Windows, net, iters: int, hybrid_iters: int, methods=None, noise: float = 0.02,
                grad_weight: float | None = None) -> dict:
    """Every method on the windows ``w``: name -> (MotionEstimate, scores); Tikhonov weight ``grad_weight``
    (default :func:`grad_weight_for` the noise)."""
    methods = methods or ["4dvar", "4dvar-stream", "learned", "hybrid", "farneback", "dis"]
    gw = grad_weight_for(noise) if grad_weight is None else float(grad_weight)
    out = {}
    for m in methods:
        if m == "4dvar":
            est = fourdvar_motion(w.frames, w.noise_std, w.model, grad_weight=gw, max_iter=iters)
        elif m == "4dvar-stream":
            est = fourdvar_motion(w.frames, w.noise_std, w.model, grad_weight=gw, max_iter=iters,
                                  control="stream")
        elif m == "learned":
            if net is None:
                continue
            learned_motion(net, network_obs(net, w))  # warm-up: the first pass pays one-off set-up costs
            est = learned_motion(net, network_obs(net, w))
        elif m == "hybrid":
            if net is None:
                continue
            t = time.perf_counter()
            x = learned_motion(net, network_obs(net, w)).state
            est = fourdvar_motion(w.frames, w.noise_std, w.model, x_init=x, continuation=None,
                                  max_iter=hybrid_iters, grad_weight=gw)
            est.wall_time = time.perf_counter() - t
            est.method = "hybrid"
        elif m in ("farneback", "dis"):
            est = optical_flow(w.frames, m, periodic=True)
        else:
            raise ValueError(m)
        out[m] = (est, score(est, w))
    return out


def plot_velocity(panels, path, stride=4, title=None):
    """Speed (colour) and quiver arrows for each ``(name, u, v)`` panel (2D tensors); one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.5 * rows), squeeze=False)
    vmax = max(float(torch.sqrt(u**2 + v**2).max()) for _, u, v in panels[:1])
    for ax, (name, u, v) in zip(axes.flat, panels):
        u, v = u.detach().cpu().double(), v.detach().cpu().double()
        sp = torch.sqrt(u**2 + v**2)
        im = ax.imshow(sp.numpy(), origin="lower", cmap="viridis", vmin=0, vmax=vmax)
        ny, nx = u.shape
        yy, xx = torch.meshgrid(torch.arange(0, ny, stride), torch.arange(0, nx, stride), indexing="ij")
        ax.quiver(xx.numpy(), yy.numpy(), u[::stride, ::stride].numpy(), v[::stride, ::stride].numpy(),
                  color="white", scale=vmax * 10, width=0.005)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="speed (cells/frame)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
