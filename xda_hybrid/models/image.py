"""Image model: a tracer image transported by a self-advected velocity.

    ∂w/∂t + (w·∇)w = 0,        ∂I/∂t + w·∇I = κ ΔI,

integrated semi-Lagrangian (velocity and image both interpolated at the
second-order departure points), with an optional explicit tracer diffusion.
Used for motion estimation from image sequences (see REFERENCES.md, "Motion
from tracer images").
"""
from __future__ import annotations

import functools

import torch

from .advection import SemiLagrangian2D
from .base import CFLError
from .semilagrangian import self_advection_step

#: explicit diffusion is stable (and monotone) for kappa*dt/min(dx,dy)^2 <= this
DIFFUSION_CFL = 0.25


@functools.lru_cache(maxsize=32)
def _border_mask(ny: int, nx: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # a normal tensor even if first built under inference_mode (it is saved
    # for backward by the product that applies it); never written to
    with torch.inference_mode(False), torch.no_grad():
        m = torch.zeros(ny, nx, dtype=dtype, device=device)
        m[1:-1, 1:-1] = 1
    return m


class ImageModel(SemiLagrangian2D):
    """Self-advected velocity ``w = (u, v)`` carrying a tracer image ``I``.

    State ``(batch, 3, ny, nx)``, channels ``("u", "v", "tracer")``; ``u``
    along ``x`` (last axis), ``v`` along ``y``, in ``dx`` units per ``dt``
    unit.  One step interpolates ``(u, v, I)`` bilinearly at the
    semi-Lagrangian departure points (midpoint rule, 2 fixed-point
    iterations), then applies ``I += κ dt ΔI`` if ``κ = diffusion > 0``.
    Each output is a convex combination of old values (the diffusion too,
    within its CFL limit): the scheme is unconditionally stable for any
    velocity, the image stays within its initial min/max and ``|u|, |v|``
    never grow (NaN velocities are read as 0, infinite ones as 2**20 cells
    per step).  The CFL limit is checked at construction only: a learned
    ``diffusion`` is not kept below it.

    Parameters
    ----------
    dt, dx, dy, iterations
        See :class:`~xda_hybrid.models.advection.SemiLagrangian2D`.
    boundary : {"closed", "periodic"}
        ``"closed"``: ``w = 0`` on the border cells (imposed on the input
        velocity and hence kept by every step), ``∇I·n = 0`` (departure points
        clamped into the domain, no-flux diffusion).  ``"periodic"``: the
        domain wraps in both directions.
    diffusion : float
        Tracer diffusivity ``κ >= 0`` (length² per time unit, lengths in the
        units of ``dx``, ``dy``); a physical parameter, learnable with
        ``learn("diffusion")``.

    Raises
    ------
    CFLError
        If ``diffusion * dt / min(dx, dy)**2 > 0.25`` (explicit diffusion
        unstable).
    ValueError
        For a negative ``diffusion`` or any invalid grid argument.
    """

    state_names = ("u", "v", "tracer")

    def __init__(
        self,
        dt: float = 1.0,
        dx: float = 1.0,
        dy: float = 1.0,
        boundary: str = "closed",
        diffusion: float = 0.0,
        iterations: int = 2,
    ):
        super().__init__(dt=dt, dx=dx, dy=dy, boundary=boundary, iterations=iterations)
        kappa = float(diffusion)
        if not kappa >= 0 or kappa == float("inf"):
            raise ValueError(f"diffusion must be a finite number >= 0, got {diffusion!r}")
        ratio = kappa * self.dt / min(self.dx, self.dy) ** 2
        if ratio > DIFFUSION_CFL:
            raise CFLError(
                f"diffusion*dt/min(dx, dy)**2 = {ratio:.4g} exceeds {DIFFUSION_CFL}: explicit "
                f"tracer diffusion (diffusion={kappa}, dt={self.dt}, dx={self.dx}, dy={self.dy}) "
                f"would be unstable; lower diffusion or dt"
            )
        self._register_physical("diffusion", kappa)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", diffusion={float(self.diffusion)}"

    @staticmethod
    def _border_mask(like: torch.Tensor) -> torch.Tensor:
        """``(ny, nx)`` mask: 0 on the border cells, 1 inside."""
        return _border_mask(like.shape[-2], like.shape[-1], like.dtype, like.device)

    def laplacian(self, c: torch.Tensor) -> torch.Tensor:
        """Five-point Laplacian of ``c`` ``(batch, 1, ny, nx)`` (per length²).

        Periodic, or with zero normal flux through the closed borders.
        """
        mode = "circular" if self.boundary == "periodic" else "replicate"
        p = torch.nn.functional.pad(c, (1, 1, 1, 1), mode=mode)
        lap_x = (p[..., 1:-1, 2:] + p[..., 1:-1, :-2] - 2 * c) / self.dx**2
        lap_y = (p[..., 2:, 1:-1] + p[..., :-2, 1:-1] - 2 * c) / self.dy**2
        return lap_x + lap_y

    def step(self, x: torch.Tensor) -> torch.Tensor:
        self.check_state(x)
        return self._advance(x, clean=True)

    def forward(self, x0: torch.Tensor, n_steps: int) -> torch.Tensor:
        """Trajectory ``(batch, n_steps + 1, 3, ny, nx)``, equal to repeated :meth:`step`.

        The velocity is cleaned (NaN, infinities, closed-border cells) before
        the first step only: each step's output velocity is a convex
        combination of clean values, zero on the closed border cells (their
        departure point is the cell itself), so cleaning it again would change
        nothing but cost two passes (and their adjoints) per step.
        """
        self.check_state(x0)
        n_steps = int(n_steps)
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        states = [x0]
        x = x0
        for k in range(n_steps):
            x = self._advance(x, clean=k == 0)
            states.append(x)
        return torch.stack(states, dim=1)

    def forced(self, x0: torch.Tensor, n_steps: int, increments) -> torch.Tensor:
        """Trajectory with an increment added after each step (see the base class), cleaned once.

        Each distinct increment's velocity is cleaned once (NaN → 0, clamped,
        zero on the closed border cells, where ``w = 0``) instead of the forced
        velocity at every step: the sum of a step's clean output and a clean
        increment needs no cleaning.  Equal to repeated ``step(x) + δ`` on a
        periodic grid; on a closed one, except that the border cells' velocity
        in the returned trajectory is 0 (``step`` zeroes it before using it).
        """
        self.check_state(x0)
        incs = self._check_increments(x0, n_steps, increments)
        clean = []
        for d in incs:
            w = self.clean_velocity(d[:, :2])
            if self.boundary == "closed":
                w = w * self._border_mask(w)
            clean.append(torch.cat([w, d[:, 2:]], 1))
        states = [x0]
        x = x0
        for k in range(int(n_steps)):
            x = self._advance(x, clean=k == 0) + clean[0 if len(clean) == 1 else k]
            states.append(x)
        return torch.stack(states, dim=1)

    def _advance(self, x: torch.Tensor, clean: bool) -> torch.Tensor:
        """One step; ``clean=False`` trusts ``x``'s velocity to be clean already."""
        w = x[:, :2]
        if clean:
            w = self.clean_velocity(w)
            if self.boundary == "closed":
                w = w * self._border_mask(w)
            x = torch.cat([w, x[:, 2:]], 1)
        # u, v and the image at the same departure points: one interpolation, one adjoint node
        out = self_advection_step(x, self.dt / self.dx, self.dt / self.dy, self.boundary, self.iterations)
        if self.diffusion.requires_grad or bool(self.diffusion != 0):
            kappa = self.param("diffusion", x)
            c = out[:, 2:]
            out = torch.cat([out[:, :2], c + (kappa * self.dt) * self.laplacian(c)], 1)
        return out


__all__ = ["DIFFUSION_CFL", "ImageModel"]
