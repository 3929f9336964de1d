"""Per-window cost of classical 4DVAR (batched L-BFGS) on the three foundation twins.

    python benchmarks/fourdvar_windows.py [--quick]

- Lorenz96: N=40, F=8, dt=0.05, window 10, 50 % of sites observed, noise 1, 100 windows, 50 iterations.
- Shallow water 64×64 (REFERENCES.md): height at steps 0, 3, 6, 9, noise 0.05 m, 250 iterations,
  plain and with the gradient Tikhonov term, beside the published endpoint errors.
- Image model 64×64: a smooth random flow (≈0.5 cell/frame) transporting a smooth tracer, tracer
  observed every frame of a 10-frame window (noise 2 % of its std), 250 iterations with ‖∇w₀‖².

Prints wall time per window (batched run divided by the number of windows), mean iterations,
model evaluations, and the accuracy against the truth.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from machine import describe
from xda_hybrid import metrics, twins
from xda_hybrid.models import get_model
from xda_hybrid.observation import ObservationOperator, Observations
from xda_hybrid.variational import FourDVarCost, fourdvar


def smooth_field(n: int, scale: float, gen: torch.Generator, batch: int) -> torch.Tensor:
    """Random periodic field with a Gaussian spectrum of length ``scale`` cells, unit std, (batch, n, n)."""
    k = torch.fft.fftfreq(n, dtype=torch.float64)
    kk = k[:, None] ** 2 + k[None, :] ** 2
    noise = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    f = torch.fft.ifft2(torch.fft.fft2(noise) * torch.exp(-2 * (math.pi * scale) ** 2 * kk)).real
    return f / f.std(dim=(1, 2), keepdim=True)


def image_twin(n_windows: int, n: int = 64, window: int = 10, speed: float = 0.5, noise: float = 0.02, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    psi = smooth_field(n, 8.0, gen, n_windows)
    # velocity from the stream function, centred differences (periodic), scaled to `speed`
    u = -(torch.roll(psi, -1, 1) - torch.roll(psi, 1, 1)) / 2
    v = (torch.roll(psi, -1, 2) - torch.roll(psi, 1, 2)) / 2
    s = torch.sqrt(u**2 + v**2).mean(dim=(1, 2), keepdim=True)
    tracer = smooth_field(n, 3.0, gen, n_windows)
    x0 = torch.stack([speed * u / s, speed * v / s, tracer], 1)
    model = get_model("image", boundary="periodic")
    with torch.no_grad():
        truth = model(x0, window - 1)
    y = truth[:, :, 2:3] + noise * torch.randn(truth[:, :, 2:3].shape, generator=gen, dtype=torch.float64)
    return model, truth, y


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer windows")
    a = p.parse_args()
    print(describe())
    rows = []

    nw = 20 if a.quick else 100
    r = twins.lorenz96_4dvar(n_windows=nw, max_iter=50)
    rows.append(("Lorenz96 N=40", nw, r["seconds_per_window"], r["iterations"], f"trajectory RMSE {r['trajectory_rmse']:.3f}"))

    nw = 4 if a.quick else 20
    for gw, label in [(0.0, "plain"), (1e3, "grad 1e3")]:
        r = twins.shallow_water_4dvar(n_windows=nw, max_iter=250, grad_weight=gw, dtype=torch.float32)
        pub = 0.042 if gw == 0 else 0.016
        rows.append((f"shallow water 64² {label}", nw, r["seconds_per_window"], r["iterations"],
                     f"EPE {r['endpoint_error']:.4f} m/s, AE {r['angular_error']:.1f}° (published {pub})"))

    nw = 4 if a.quick else 20
    model, truth, y = image_twin(nw)
    truth, y = truth.float(), y.float()
    obs = Observations.from_values(y, noise_std=0.02)
    cost = FourDVarCost(model, ObservationOperator(model, channels=["tracer"]), 10, grad_weight=1.0)
    x_init = torch.zeros_like(truth[:, 0])
    x_init[:, 2] = obs.values[:, 0, 0]
    t = time.perf_counter()
    res = fourdvar(cost, obs, x_init, max_iter=250)
    wall = time.perf_counter() - t
    epe = metrics.endpoint_error(res.x[:, 0], res.x[:, 1], truth[:, 0, 0], truth[:, 0, 1]).mean().item()
    rows.append(("image model 64²", nw, wall / nw, res.n_iter.double().mean().item(),
                 f"EPE {epe:.3f} cell/frame (true mean speed 0.5), {res.n_eval} batched evaluations"))

    print(f"{'twin':<28s} {'windows':>7s} {'s/window':>9s} {'iter.':>7s}  accuracy")
    for name, nw, spw, it, acc in rows:
        print(f"{name:<28s} {nw:7d} {spw:9.3f} {it:7.1f}  {acc}")


if __name__ == "__main__":
    main()
