"""Lorenz (1996) model: ``dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F`` on a ring."""
from __future__ import annotations

import torch

from .base import DynamicalModel


class Lorenz96(DynamicalModel):
    """Lorenz96 on ``n`` periodic sites, integrated with RK4.

    State layout ``(batch, 1, site)``; the single channel is ``x``
    (dimensionless).  Time unit: the model's ("5 days" per unit in Lorenz's
    scaling; ``dt = 0.05`` ≈ 6 hours).

    Parameters
    ----------
    forcing : float
        Constant forcing ``F`` (learnable with ``learn("forcing")``).
    dt : float
        RK4 time step, > 0.
    """

    state_names = ("x",)
    spatial_dims = ("site",)

    def __init__(self, forcing: float = 8.0, dt: float = 0.05):
        super().__init__()
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        self.dt = float(dt)
        self._register_physical("forcing", forcing)

    def tendency(self, x: torch.Tensor) -> torch.Tensor:
        """``dx/dt`` for ``x`` of shape ``(batch, 1, site)``."""
        f = self.param("forcing", x)
        return (torch.roll(x, -1, -1) - torch.roll(x, 2, -1)) * torch.roll(x, 1, -1) - x + f

    def step(self, x: torch.Tensor) -> torch.Tensor:
        dt = self.dt
        k1 = self.tendency(x)
        k2 = self.tendency(x + 0.5 * dt * k1)
        k3 = self.tendency(x + 0.5 * dt * k2)
        k4 = self.tendency(x + dt * k3)
        return x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
