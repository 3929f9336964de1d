"""Does ``torch.compile`` pay off for the models?  Eager against compiled, forward + adjoint.

    python benchmarks/compile_speedup.py [--size 64] [--batch 16] [--steps 9] [--threads 1]

For each model: the time of one compilation (first call), then the best of 5 forward + adjoint
runs (``backward`` of the summed squared trajectory) of ``--steps`` steps on a
``--batch`` × ``--size``² float32 state, eager and compiled, interleaved in the same process, and
the number of runs after which the compilation has paid for itself.
"""
from __future__ import annotations

import argparse
import time

import torch

from machine import describe
from xda_hybrid.models import get_model


def state(name: str, batch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if name == "lorenz96":
        return 8 + torch.randn(batch, 1, n * n, generator=g)
    x = torch.zeros(batch, 3, n, n)
    if name == "shallow_water":
        x[:, 2] = 0.1 * torch.randn(batch, n, n, generator=g)
    else:
        x[:, :2] = 0.3 * torch.randn(batch, 2, n, n, generator=g)
        x[:, 2] = torch.randn(batch, n, n, generator=g)
    return x


def timed(f, x, steps: int, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        xx = x.clone().requires_grad_(True)
        t = time.perf_counter()
        f(xx, steps).square().sum().backward()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="+", default=["lorenz96", "advection", "image", "shallow_water"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(describe())
    print(f"batch {a.batch}, {a.size}x{a.size} (Lorenz96: {a.size ** 2} sites), {a.steps} steps, float32, "
          f"forward + adjoint\n")
    print(f"{'model':<14} {'compile s':>9} {'eager s':>8} {'compiled s':>10} {'speed-up':>8} {'pays off after':>15}")
    for name in a.models:
        model = get_model(name).float()
        x = state(name, a.batch, a.size)
        compiled = torch.compile(model)
        t = time.perf_counter()
        try:
            timed(compiled, x, a.steps, 1)
        except Exception as e:  # report, do not hide: some models may not compile
            print(f"{name:<14} compile failed: {type(e).__name__}: {str(e)[:120]}")
            continue
        t_compile = time.perf_counter() - t
        eager = min(timed(model, x, a.steps, 1) for _ in range(5))
        comp = min(timed(compiled, x, a.steps, 1) for _ in range(5))
        gain = eager - comp
        pays = f"{t_compile / gain:.0f} runs" if gain > 0 else "never"
        print(f"{name:<14} {t_compile:9.1f} {eager:8.4f} {comp:10.4f} {eager / comp:7.2f}x {pays:>15}")


if __name__ == "__main__":
    main()
