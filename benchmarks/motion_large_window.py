"""Cost of one large image-model 4DVAR window against the published reference (REFERENCES.md).

    python benchmarks/motion_large_window.py [--iters 300] [--threads N] [--weak] [--profile] [--steps 16]

One 240×240 window of the image model (closed borders), 16 model steps (17 tracer frames,
30 % clouds, noise 2 % of the tracer std, from the tracer_motion generator), 4DVAR with the
gradient Tikhonov term, exactly ``--iters`` L-BFGS iterations (gtol = ftol = 0: no early stop).
Published: 71 s (PyTorch) and 25.8 s (C + Tapenade adjoint), weak constraint, CPU; target here
≤ 25 s.  ``--weak`` runs the weak-constraint cost (constant model error on the velocity).
``--profile`` adds a torch.profiler table of a few cost+gradient evaluations (where the time goes).
"""
from __future__ import annotations

import argparse
import time

import torch

from machine import describe
from xda_hybrid import metrics
from xda_hybrid.data.motion import tracer_motion_twin
from xda_hybrid.motion import motion_first_guess, motion_observations
from xda_hybrid.observation import ObservationOperator
from xda_hybrid.variational import FourDVarCost, lbfgs
from xda_hybrid.variational.weak import WeakFourDVarCost

PUBLISHED = {"PyTorch": 71.0, "C + Tapenade": 25.8}
TARGET = 25.0


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=240)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--weak", action="store_true", help="weak-constraint cost (constant model error)")
    p.add_argument("--profile", action="store_true", help="torch.profiler table of 3 evaluations")
    p.add_argument("--float64", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(describe())
    dtype = torch.float64 if a.float64 else torch.float32
    tw = tracer_motion_twin(size=a.size, length=a.steps + 1, cloud_fraction=0.3, noise=0.02, seed=0,
                            boundary="closed")
    model = tw.model
    obs = motion_observations(tw.obs[None].to(dtype), tw.noise_std)
    op = ObservationOperator(model, channels=["tracer"])
    window = a.steps + 1
    if a.weak:
        cost = WeakFourDVarCost(model, op, window, grad_weight=1e4, error_weight=10.0, error_grad_weight=1e3,
                                error_scale=0.03)
        x0 = cost.join(motion_first_guess(obs))
    else:
        cost = FourDVarCost(model, op, window, grad_weight=1e4)
        x0 = motion_first_guess(obs)

    def fun(x):
        return cost(x, obs)["total"]

    # one evaluation (forward + adjoint), timed a few times
    times = []
    for _ in range(3):
        x = x0.clone().requires_grad_(True)
        t = time.perf_counter()
        f = fun(x)
        t1 = time.perf_counter()
        f.sum().backward()
        times.append((t1 - t, time.perf_counter() - t1))
    fw, bw = min(t[0] for t in times), min(t[1] for t in times)
    print(f"{a.size}x{a.size}, {a.steps} steps, {dtype}, {'weak' if a.weak else 'strong'} constraint"
          ": "
          f"one evaluation = forward {fw:.3f} s + adjoint {bw:.3f} s")

    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                x = x0.clone().requires_grad_(True)
                fun(x).sum().backward()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))

    t = time.perf_counter()
    res = lbfgs(fun, x0, max_iter=a.iters, gtol=0.0, ftol=0.0)
    wall = time.perf_counter() - t
    xa = cost.split(res.x)[0] if a.weak else res.x
    ut, vt = tw.truth[0, 0].to(dtype)[None], tw.truth[0, 1].to(dtype)[None]
    epe = metrics.endpoint_error(xa[:, 0], xa[:, 1], ut, vt).item()
    speed = torch.sqrt(ut**2 + vt**2).mean().item()
    print(f"L-BFGS: {int(res.n_iter[0])} iterations ({res.message[0]}), {res.n_eval} evaluations, "
          f"wall {wall:.1f} s ({wall / max(1, res.n_eval):.3f} s per evaluation); cost "
          f"{float(res.history[0, 0]):.4g} -> {float(res.cost[0]):.4g}; EPE {epe:.4f} (mean speed {speed:.3f})")
    for k, v in PUBLISHED.items():
        print(f"  published {k}: {v:.1f} s  -> ratio here / published = {wall / v:.2f}")
    print(f"  target <= {TARGET:.0f} s: {'met' if wall <= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
