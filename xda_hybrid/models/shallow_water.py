"""Shallow-water circulation on a closed basin (Arakawa C-grid, forward-backward).

Equations (per unit density, rest depth ``H``, surface anomaly ``eta``)::

    du/dt   =  f v̄ - g ∂eta/∂x - r u + ν ∇²u
    dv/dt   = -f ū - g ∂eta/∂y - r v + ν ∇²v
    deta/dt = -∇·((H + eta) w),                w = (u, v)
    d(h q)/dt = -∇·((H + eta) w q)             (optional passive tracer q)

Linear momentum (pressure gradient, Coriolis, linear drag, Laplacian
viscosity) and a nonlinear flux-form continuity equation whose layer thickness
``H + eta`` is taken from the upwind cell.  The velocity is updated first and
the continuity equation then uses the new velocity (forward-backward scheme),
which is stable for gravity waves up to the Courant number
``√(gH)·dt·√(1/dx² + 1/dy²) ≤ 1`` (``1/√2`` for ``dx = dy``).

Storage of the staggered C-grid
-------------------------------
All channels share the shape ``(ny, nx)`` of the cell grid::

    eta[..., j, i]   centre of cell (j, i)
    u[..., j, i]     face east of cell (j, i)   (x + dx/2)
    v[..., j, i]     face north of cell (j, i)  (y + dy/2)

``u[..., :, -1]`` is the east wall and ``v[..., -1, :]`` the north wall: they
are always zero (inputs are zeroed there, outputs are exactly zero).  The west
and south walls are implicit zeros.  No fluid crosses any wall, so the mass
``Σ (H + eta) dx dy`` is conserved to round-off.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import CFLError, DynamicalModel

__all__ = ["ShallowWater"]


# ---------------------------------------------------------------------------
# staggered-grid helpers; arrays are (..., ny, nx), no Python loop over the grid
# ---------------------------------------------------------------------------
def _zero_east(a: torch.Tensor) -> torch.Tensor:
    """Copy of ``a`` with the last column (east wall) set to zero."""
    return F.pad(a[..., :-1], (0, 1))


def _zero_north(a: torch.Tensor) -> torch.Tensor:
    """Copy of ``a`` with the last row (north wall) set to zero."""
    return F.pad(a[..., :-1, :], (0, 0, 0, 1))


def _next_x(a: torch.Tensor) -> torch.Tensor:
    """``a[..., i + 1]`` with zero beyond the east edge."""
    return F.pad(a[..., 1:], (0, 1))


def _prev_x(a: torch.Tensor) -> torch.Tensor:
    """``a[..., i - 1]`` with zero beyond the west edge."""
    return F.pad(a[..., :-1], (1, 0))


def _next_y(a: torch.Tensor) -> torch.Tensor:
    """``a[..., j + 1, :]`` with zero beyond the north edge."""
    return F.pad(a[..., 1:, :], (0, 0, 0, 1))


def _prev_y(a: torch.Tensor) -> torch.Tensor:
    """``a[..., j - 1, :]`` with zero beyond the south edge."""
    return F.pad(a[..., :-1, :], (0, 0, 1, 0))


def _v_to_u(w: torch.Tensor) -> torch.Tensor:
    """Four-point average of a v-face field onto the u-faces (zero outside walls)."""
    s = w + _prev_y(w)
    return 0.25 * (s + _next_x(s))


def _u_to_v(w: torch.Tensor) -> torch.Tensor:
    """Four-point average of a u-face field onto the v-faces; transpose of :func:`_v_to_u`."""
    t = w + _prev_x(w)
    return 0.25 * (t + _next_y(t))


def _laplacian_u(u: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """∇²u at u-faces: no normal flow through the east/west walls, free slip north/south."""
    lx = _next_x(u) - 2.0 * u + _prev_x(u)
    d = u[..., 1:, :] - u[..., :-1, :]
    ly = F.pad(d, (0, 0, 0, 1)) - F.pad(d, (0, 0, 1, 0))
    return lx / dx**2 + ly / dy**2


def _laplacian_v(v: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """∇²v at v-faces: no normal flow through the north/south walls, free slip east/west."""
    ly = _next_y(v) - 2.0 * v + _prev_y(v)
    d = v[..., 1:] - v[..., :-1]
    lx = F.pad(d, (0, 1)) - F.pad(d, (1, 0))
    return lx / dx**2 + ly / dy**2


def _upwind(vel: torch.Tensor, a: torch.Tensor, a_next: torch.Tensor) -> torch.Tensor:
    """Upwind face flux ``vel · (a if vel > 0 else a_next)``.

    Written ``½ (vel (a + a_next) + |vel| (a - a_next))``: the same values,
    without a branch, and at a tie ``vel = 0`` the derivative with respect to
    ``vel`` is the centred ``½ (a + a_next)`` (reflection-symmetric).
    """
    return 0.5 * (vel * (a + a_next) + vel.abs() * (a - a_next))


def _divergence(fx: torch.Tensor, fy: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """Cell divergence of face fluxes (zero flux through the implicit west/south walls)."""
    return (fx - _prev_x(fx)) / dx + (fy - _prev_y(fy)) / dy


class ShallowWater(DynamicalModel):
    """Single-layer shallow water in a closed rectangular basin.

    State layout ``(batch, channel, y, x)`` with channels ``("u", "v", "eta")``
    (``("u", "v", "eta", "tracer")`` when ``tracer=True``): ``u`` the x-velocity
    at the east faces [m/s], ``v`` the y-velocity at the north faces [m/s],
    ``eta`` the surface height anomaly at cell centres [m] and ``tracer`` a
    passive concentration at cell centres (any unit).  The grid size
    ``(ny, nx)`` is that of the state; see the module docstring for the
    C-grid storage and the walls.

    Parameters
    ----------
    dx, dy : float
        Grid spacings [m]; ``dy=None`` means ``dy = dx``.  The default is the
        1000 km / 64 cells benchmark grid.
    H : float
        Rest depth [m] (physical parameter ``"H"``, learnable).
    g : float
        Gravity [m/s²] (physical parameter ``"g"``, learnable).
    dt : float or None
        Time step [s]; ``None`` gives ``0.5 · min(dx, dy) / √(gH)``.
    coriolis : float or Tensor
        Coriolis parameter ``f`` [1/s] (f-plane; a tensor broadcastable to
        ``(ny, nx)`` at cell centres is averaged to the faces).  Learnable as
        ``"coriolis"``.
    drag : float
        Linear bottom drag ``r`` [1/s], ≥ 0, treated implicitly
        (``u ← u / (1 + r dt)``).  Learnable as ``"drag"``.
    viscosity : float
        Laplacian viscosity ``ν`` on ``u`` and ``v`` [m²/s], ≥ 0.  Learnable as
        ``"viscosity"``.
    tracer : bool
        Add a fourth channel ``"tracer"``: a concentration ``q`` whose content
        ``(H + eta) q`` is advected by the same upwind mass fluxes as ``eta``
        (conservative: ``Σ (H + eta) q`` is constant; monotone: a uniform
        tracer stays uniform, no new extrema under the CFL limit).
    check_cfl : bool
        Default of the per-step stability check of :meth:`step` and
        :meth:`forward` (one host synchronisation per step).

    Raises
    ------
    CFLError
        At construction if the gravity-wave Courant number
        ``√(gH)·dt/min(dx, dy)`` exceeds ``1/√2``, the viscous number
        ``ν·dt·(1/dx² + 1/dy²)`` exceeds ``1/2`` or ``|f|·dt`` exceeds 1.
    ValueError
        For non-positive ``dx``, ``dy``, ``H``, ``g``, ``dt`` or negative
        ``drag`` / ``viscosity``.

    Notes
    -----
    Per step: ``u`` is updated with the old ``v``, then ``v`` with the new
    ``u`` (Coriolis by alternating directions, neutral for ``|f| dt < 2``),
    then ``eta`` (and the tracer) with the new velocity.  Upwind selection is
    by the sign of the face velocity, so the map is piecewise smooth and
    differentiable almost everywhere; where a face velocity is exactly 0 (e.g.
    a state at rest) its derivative uses the centred thickness.
    """

    state_names = ("u", "v", "eta")
    spatial_dims = ("y", "x")
    velocity_names = ("u", "v")

    #: limit on √(gH)·dt/min(dx, dy) checked at construction
    GRAVITY_CFL_LIMIT = 1.0 / math.sqrt(2.0)
    #: limit on the state-dependent advective + gravity Courant number checked in :meth:`step`
    CFL_LIMIT = 1.0
    #: limit on ν·dt·(1/dx² + 1/dy²)
    VISCOUS_LIMIT = 0.5
    #: limit on |f|·dt
    CORIOLIS_LIMIT = 1.0

    def __init__(
        self,
        dx: float = 1000e3 / 64,
        dy: float | None = None,
        H: float = 100.0,
        g: float = 9.81,
        dt: float | None = None,
        coriolis: float | torch.Tensor = 0.0,
        drag: float = 0.0,
        viscosity: float = 0.0,
        tracer: bool = False,
        check_cfl: bool = True,
    ):
        super().__init__()
        dy = dx if dy is None else dy
        for name, val in (("dx", dx), ("dy", dy), ("H", H), ("g", g)):
            if not float(val) > 0:
                raise ValueError(f"{name} must be > 0, got {val}")
        if dt is None:
            dt = 0.5 * min(dx, dy) / math.sqrt(g * H)
        if not float(dt) > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        if float(drag) < 0:
            raise ValueError(f"drag must be >= 0, got {drag}")
        if float(viscosity) < 0:
            raise ValueError(f"viscosity must be >= 0, got {viscosity}")
        self.dx, self.dy, self.dt = float(dx), float(dy), float(dt)
        self.tracer = bool(tracer)
        self.check_cfl = bool(check_cfl)
        if self.tracer:
            self.state_names = ("u", "v", "eta", "tracer")
        self._register_physical("H", H)
        self._register_physical("g", g)
        self._register_physical("coriolis", coriolis)
        self._register_physical("drag", drag)
        self._register_physical("viscosity", viscosity)
        self._active_cache: dict[str, tuple] = {}

        c = math.sqrt(float(g) * float(H)) * self.dt / min(self.dx, self.dy)
        if c > self.GRAVITY_CFL_LIMIT:
            dt_max = self.GRAVITY_CFL_LIMIT * min(self.dx, self.dy) / math.sqrt(float(g) * float(H))
            raise CFLError(
                f"ShallowWater: gravity-wave Courant number sqrt(g*H)*dt/min(dx,dy) = {c:.4g} "
                f"exceeds the forward-backward limit 1/sqrt(2) = {self.GRAVITY_CFL_LIMIT:.4g} "
                f"(g={float(g)}, H={float(H)} m, dt={self.dt} s, dx={self.dx} m, dy={self.dy} m); "
                f"use dt <= {dt_max:.6g} s"
            )
        nu = float(viscosity) * self.dt * (1.0 / self.dx**2 + 1.0 / self.dy**2)
        if nu > self.VISCOUS_LIMIT:
            raise CFLError(
                f"ShallowWater: viscous number nu*dt*(1/dx^2+1/dy^2) = {nu:.4g} exceeds "
                f"the explicit limit {self.VISCOUS_LIMIT} (nu={float(viscosity)} m^2/s, dt={self.dt} s)"
            )
        fdt = float(torch.as_tensor(coriolis, dtype=torch.float64).abs().max()) * self.dt
        if fdt > self.CORIOLIS_LIMIT:
            raise CFLError(
                f"ShallowWater: |f|*dt = {fdt:.4g} exceeds the limit {self.CORIOLIS_LIMIT} "
                f"(f={coriolis} 1/s, dt={self.dt} s)"
            )

    def extra_repr(self) -> str:
        return (
            f"dx={self.dx:.6g}, dy={self.dy:.6g}, dt={self.dt:.6g}, tracer={self.tracer}, "
            f"check_cfl={self.check_cfl}"
        )

    # ------------------------------------------------------------------ helpers
    def _active(self, name: str) -> bool:
        """Whether the optional term ``name`` must be computed (non-zero or learnable)."""
        p = getattr(self, name)
        if p.requires_grad:
            return True
        try:
            key = (p.data_ptr(), p._version, str(p.device))
        except RuntimeError:  # functorch / forward-AD wrapper (torch.func transforms): keep the term
            return True
        cached = self._active_cache.get(name)
        if cached is None or cached[0] != key:
            cached = (key, bool(p.detach().ne(0).any()))
            self._active_cache[name] = cached
        return cached[1]

    def _coriolis_v_faces(self, like: torch.Tensor) -> torch.Tensor:
        """``f`` at the v-faces, broadcastable to ``(ny, nx)``."""
        f = self.param("coriolis", like)
        if f.ndim >= 2 and f.shape[-2] > 1:
            f = 0.5 * (f + torch.cat([f[..., 1:, :], f[..., -1:, :]], dim=-2))
        return f

    def courant_number(self, x: torch.Tensor) -> float:
        """State-dependent Courant number checked by :meth:`step` (limit :attr:`CFL_LIMIT`).

        ``dt·(max|u|/dx + max|v|/dy) + dt·√(g·max(H + eta))·√(1/dx² + 1/dy²)``,
        maxima over the whole batch.
        """
        stats = self._stats(x)
        return self._courant_from_stats(stats)

    def _stats(self, x: torch.Tensor) -> list[float]:
        with torch.no_grad():
            xd = x.detach()
            h = self.H.detach().to(xd) + xd[:, 2]
            parts = [
                xd[:, 0, :, :-1].abs().amax(),  # wall faces are ignored by step
                xd[:, 1, :-1, :].abs().amax(),
                h.amax(),
                h.amin(),
                xd[:, 3].abs().amax() if self.tracer else xd.new_zeros(()),
                self.g.detach().to(xd),
                self.viscosity.detach().to(xd),
                self.coriolis.detach().to(xd).abs().amax(),
                self.drag.detach().to(xd),
            ]
            try:
                return torch.stack(parts).tolist()
            except RuntimeError as err:  # e.g. inside torch.func.vmap: no host synchronisation possible
                raise RuntimeError(
                    "ShallowWater: the CFL check needs the state's values on the host and cannot run "
                    "inside this transform (torch.func.vmap?); pass check_cfl=False or build the model "
                    "with check_cfl=False, and check the result with model.check_stability"
                ) from err

    def _courant_from_stats(self, s: list[float]) -> float:
        umax, vmax, hmax, _, _, g = s[:6]
        dt, dx, dy = self.dt, self.dx, self.dy
        grav = math.sqrt(max(g * hmax, 0.0)) * dt * math.sqrt(1.0 / dx**2 + 1.0 / dy**2)
        return dt * (umax / dx + vmax / dy) + grav

    def check_stability(self, x: torch.Tensor) -> None:
        """Raise :class:`CFLError` if stepping ``x`` would be unstable or ``x`` is not finite.

        Checks: all values finite, ``H + eta > 0`` everywhere, the Courant
        number (:meth:`courant_number`) ≤ :attr:`CFL_LIMIT`, and the current
        (possibly learned) ``g``, ``ν``, ``f``, ``r`` within their limits.
        """
        s = self._stats(x)
        umax, vmax, hmax, hmin, qmax, g, nu, f, r = s
        if not all(math.isfinite(a) for a in (umax, vmax, hmax, hmin, qmax)):
            raise CFLError(
                "ShallowWater: non-finite state (NaN or inf): the integration has blown up; "
                "reduce dt or the initial velocity / height"
            )
        if not all(math.isfinite(a) for a in (g, nu, f, r)) or g <= 0:
            raise CFLError(f"ShallowWater: invalid parameters g={g}, viscosity={nu}, coriolis={f}, drag={r}")
        if hmin <= 0:
            raise CFLError(
                f"ShallowWater: layer thickness H + eta reached {hmin:.4g} m <= 0 (drying); "
                f"the state is outside the model's range"
            )
        c = self._courant_from_stats(s)
        if c > self.CFL_LIMIT:
            raise CFLError(
                f"ShallowWater: Courant number dt*(max|u|/dx + max|v|/dy) + "
                f"dt*sqrt(g*max(H+eta))*sqrt(1/dx^2+1/dy^2) = {c:.4g} exceeds the limit "
                f"{self.CFL_LIMIT} (max|u|={umax:.4g} m/s, max|v|={vmax:.4g} m/s, "
                f"max(H+eta)={hmax:.4g} m, dt={self.dt} s, dx={self.dx} m, dy={self.dy} m)"
            )
        nun = nu * self.dt * (1.0 / self.dx**2 + 1.0 / self.dy**2)
        if nu < 0 or nun > self.VISCOUS_LIMIT:
            raise CFLError(
                f"ShallowWater: viscosity {nu:.4g} m^2/s gives viscous number {nun:.4g}; "
                f"it must be >= 0 and <= {self.VISCOUS_LIMIT}"
            )
        if f * self.dt > self.CORIOLIS_LIMIT:
            raise CFLError(f"ShallowWater: |f|*dt = {f * self.dt:.4g} exceeds {self.CORIOLIS_LIMIT}")
        if 1.0 + r * self.dt <= 0:
            raise CFLError(f"ShallowWater: drag {r:.4g} 1/s makes 1 + r*dt <= 0")

    # ------------------------------------------------------------------ diagnostics
    def mass(self, x: torch.Tensor) -> torch.Tensor:
        """Fluid volume ``Σ (H + eta) dx dy`` [m³] per batch member, shape (batch,)."""
        h = self.param("H", x) + x[:, 2]
        return h.sum(dim=(-2, -1)) * (self.dx * self.dy)

    def tracer_content(self, x: torch.Tensor) -> torch.Tensor:
        """``Σ (H + eta) q dx dy`` per batch member (conserved), shape (batch,)."""
        if not self.tracer:
            raise ValueError("this ShallowWater model has no tracer channel")
        h = self.param("H", x) + x[:, 2]
        return (h * x[:, 3]).sum(dim=(-2, -1)) * (self.dx * self.dy)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Linear energy ``½ Σ (H (u² + v²) + g eta²) dx dy`` [m⁵/s²] per batch member, shape (batch,)."""
        H, g = self.param("H", x), self.param("g", x)
        u, v, eta = x[:, 0], x[:, 1], x[:, 2]
        e = H * (u * u + v * v) + g * eta * eta
        return 0.5 * e.sum(dim=(-2, -1)) * (self.dx * self.dy)

    def coordinates(self, ny: int, nx: int, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell-centre coordinates ``(y, x)`` [m], shapes (ny,) and (nx,); origin at the south-west corner."""
        y = (torch.arange(ny, dtype=dtype, device=device) + 0.5) * self.dy
        x = (torch.arange(nx, dtype=dtype, device=device) + 0.5) * self.dx
        return y, x

    # ------------------------------------------------------------------ dynamics
    def step(self, x: torch.Tensor, check_cfl: bool | None = None) -> torch.Tensor:
        """Advance ``x`` by one time step ``dt``.

        Parameters
        ----------
        x : Tensor, shape (batch, 3 or 4, ny, nx)
            Channels ``u, v`` [m/s], ``eta`` [m] (and ``tracer``), C-grid storage.
            Values on the east/north wall faces are ignored (treated as 0).
        check_cfl : bool or None
            Check the stability of ``x`` first (see :meth:`check_stability`);
            ``None`` uses the model's ``check_cfl``.

        Returns
        -------
        Tensor, same shape and dtype as ``x``
            Wall faces exactly 0.

        Raises
        ------
        CFLError
            If the check is on and ``x`` is not finite or beyond the CFL limit.
        """
        self.check_state(x)
        if self.check_cfl if check_cfl is None else check_cfl:
            self.check_stability(x)
        dt, dx, dy = self.dt, self.dx, self.dy
        g = self.param("g", x)
        H = self.param("H", x)
        u = _zero_east(x[:, 0])
        v = _zero_north(x[:, 1])
        eta = x[:, 2]

        # momentum (linear), u first then v with the new u
        tu = -g / dx * (_next_x(eta) - eta)  # -g ∂eta/∂x (east-wall column zeroed below)
        tv = -g / dy * (_next_y(eta) - eta)
        cor = self._active("coriolis")
        visc = self._active("viscosity")
        if cor:
            f_v = self._coriolis_v_faces(x)
            tu = tu + _v_to_u(f_v * v)
        if visc:
            nu = self.param("viscosity", x)
            tu = tu + nu * _laplacian_u(u, dx, dy)
            tv = tv + nu * _laplacian_v(v, dx, dy)
        u1 = u + dt * tu
        if self._active("drag"):
            damp = 1.0 / (1.0 + dt * self.param("drag", x))
            u1 = u1 * damp
        else:
            damp = None
        u1 = _zero_east(u1)
        if cor:
            tv = tv - f_v * _u_to_v(u1)
        v1 = v + dt * tv
        if damp is not None:
            v1 = v1 * damp
        v1 = _zero_north(v1)

        # continuity, flux form, thickness from the upwind cell
        h = H + eta
        fx = _upwind(u1, h, _next_x(h))
        fy = _upwind(v1, h, _next_y(h))
        eta1 = eta - dt * _divergence(fx, fy, dx, dy)
        out = [u1, v1, eta1]

        if self.tracer:
            q = x[:, 3]
            gx = _upwind(fx, q, _next_x(q))
            gy = _upwind(fy, q, _next_y(q))
            hq1 = h * q - dt * _divergence(gx, gy, dx, dy)
            out.append(hq1 / (H + eta1))
        return torch.stack(out, dim=1)

    def forward(self, x0: torch.Tensor, n_steps: int, check_cfl: bool | None = None) -> torch.Tensor:
        """Integrate ``n_steps`` steps from ``x0``.

        Parameters
        ----------
        x0 : Tensor, shape (batch, channel, ny, nx)
        n_steps : int >= 0
        check_cfl : bool or None
            Stability check before every step and on the final state
            (``None``: the model's ``check_cfl``).

        Returns
        -------
        Tensor, shape (batch, n_steps + 1, channel, ny, nx)
            The trajectory, ``x0`` at index 0 (as given, walls not zeroed).

        Raises
        ------
        CFLError
            If the check is on and a state is non-finite or beyond the CFL limit.
        """
        self.check_state(x0)
        if int(n_steps) < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        check = self.check_cfl if check_cfl is None else bool(check_cfl)
        states = [x0]
        x = x0
        for _ in range(int(n_steps)):
            x = self.step(x, check_cfl=check)
            states.append(x)
        if check and int(n_steps) > 0:
            self.check_stability(x)
        return torch.stack(states, dim=1)
