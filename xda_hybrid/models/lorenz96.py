"""Lorenz (1996) model: ``dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F`` on a ring."""
from __future__ import annotations

import math

import torch

from .base import CFLError, DynamicalModel

#: stability limit of classical RK4 on the imaginary axis (about 2·sqrt(2))
RK4_LIMIT = 2.8


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

    Raises
    ------
    CFLError
        From :meth:`forward`, when a trajectory started from a finite state
        becomes non-finite (the explicit RK4 scheme blew up: ``dt`` too large for
        the states' magnitude, or values beyond the floating-point range).
    """

    state_names = ("x",)
    spatial_dims = ("site",)

    def __init__(self, forcing: float = 8.0, dt: float = 0.05):
        super().__init__()
        if not math.isfinite(float(dt)) or not dt > 0:
            raise ValueError(f"dt must be finite and > 0, got {dt}")
        if not math.isfinite(float(forcing)):
            raise ValueError(f"forcing must be finite, got {forcing}")
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

    def courant_number(self, x: torch.Tensor) -> float:
        """``dt·(1 + 2·max|x|)``: a bound of the RK4 step's scaled spectral radius (limit :data:`RK4_LIMIT`)."""
        return self.dt * (1.0 + 2.0 * float(x.detach().abs().amax()))

    def forward(self, x0: torch.Tensor, n_steps: int) -> torch.Tensor:
        traj = super().forward(x0, n_steps)
        # one check per trajectory (not per step): an explicit scheme that blew up refuses clearly
        if not bool(torch.isfinite(traj).all()) and bool(torch.isfinite(x0).all()):
            c = self.courant_number(x0)
            raise CFLError(
                f"Lorenz96: the RK4 trajectory became non-finite from a finite initial state "
                f"(dt={self.dt:.6g}, max|x0|={float(x0.detach().abs().amax()):.4g}, "
                f"dt*(1+2*max|x0|) = {c:.4g}, stable below about {RK4_LIMIT}): use a smaller time step "
                f"(the time coordinate's spacing sets dt) or rescale the data"
            )
        return traj
