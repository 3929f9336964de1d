"""Forward and forward+adjoint throughput of every model, in grid-cell steps per second.

    python benchmarks/model_throughput.py [--sizes 64 128 256] [--steps 10] [--device cpu|cuda] [--dtype float32]

For each model and grid of n×n cells (Lorenz96: n² sites on a ring) it times a
batch-1 run of ``--steps`` steps (forward only, under ``no_grad``) and a run
followed by the adjoint (``backward`` of the summed trajectory), best of 3 after a
warm-up, and prints cells·steps/s.
"""
from __future__ import annotations

import argparse
import time

import torch

from machine import describe
from xda_hybrid.models import get_model


def make(name: str, n: int, dtype, device):
    g = torch.Generator().manual_seed(0)
    if name == "lorenz96":
        m = get_model("lorenz96")
        x = 8 + torch.randn(1, 1, n * n, generator=g, dtype=torch.float64)
    elif name == "shallow_water":
        m = get_model("shallow_water", dx=1000e3 / n)
        x = torch.zeros(1, 3, n, n, dtype=torch.float64)
        x[:, 2] = 0.5 * torch.randn(n, n, generator=g, dtype=torch.float64)
        x[:, :2] = 0.05 * torch.randn(2, n, n, generator=g, dtype=torch.float64)
    else:
        m = get_model(name, boundary="periodic")
        x = torch.randn(1, 3, n, n, generator=g, dtype=torch.float64)
        x[:, :2] *= 0.8
    return m.to(device), x.to(dtype=dtype, device=device)


def best_of(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    print(describe())
    print(f"{a.steps} steps, batch 1, {a.dtype}, device {a.device}; throughput in grid-cell steps per second")
    print(f"{'model':<14s} {'grid':>8s} {'forward':>12s} {'fwd+adjoint':>12s} {'adjoint/fwd':>12s}")
    for name in ["lorenz96", "advection", "image", "shallow_water"]:
        for n in a.sizes:
            m, x = make(name, n, dtype, a.device)

            def fwd():
                with torch.no_grad():
                    m(x, a.steps)

            def fwd_adj():
                xr = x.clone().requires_grad_(True)
                m(xr, a.steps).sum().backward()

            cells = n * n * a.steps
            tf, tb = best_of(fwd), best_of(fwd_adj)
            print(f"{name:<14s} {f'{n}x{n}':>8s} {cells / tf:12.3e} {cells / tb:12.3e} {tb / tf:12.2f}")


if __name__ == "__main__":
    main()
