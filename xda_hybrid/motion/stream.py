"""Stream-function control: a divergence-free velocity ``w = curl ψ`` as the 4DVAR control.

On the model's collocated grid, with neighbouring-cell (forward) differences,

    u[i, j] = −(ψ[i+1, j] − ψ[i, j]),        v[i, j] = ψ[i, j+1] − ψ[i, j]

(``i`` along ``y``, rows; ``j`` along ``x``, columns).  Its divergence as measured by
:func:`xda_hybrid.variational.regularisers.divergence` (``u[i, j+1] − u[i, j] + v[i+1, j]
− v[i, j]``) is exactly zero — the two mixed differences of ``ψ`` cancel — on the
whole interior, and on the whole periodic torus with ``boundary="periodic"`` (the
differences then wrap).  With ``boundary="closed"`` the differences past the last
row/column are 0 (ψ continued as a constant).  Lengths in cells: a velocity in
``dx`` units per step needs ``ψ`` in cells² per step; :class:`StreamFunctionCost`
works in the model's units with ``dx = dy`` (checked).
"""
from __future__ import annotations

import torch

from ..models.base import DynamicalModel
from ..observation import Observations
from ..variational.cost import Background, FourDVarCost

__all__ = ["StreamFunctionCost", "stream_to_velocity", "velocity_to_stream"]


def _fwd(f: torch.Tensor, dim: int, periodic: bool) -> torch.Tensor:
    """Forward difference ``f[k+1] − f[k]`` along ``dim``; wraps, or 0 at the last index."""
    if periodic:
        return torch.roll(f, -1, dim) - f
    d = f.narrow(dim, 1, f.shape[dim] - 1) - f.narrow(dim, 0, f.shape[dim] - 1)
    return torch.cat([d, torch.zeros_like(f.narrow(dim, 0, 1))], dim)


def stream_to_velocity(psi: torch.Tensor, boundary: str = "periodic", dx: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Velocity ``(u, v)`` of a stream function, each of the shape of ``psi`` (``(..., ny, nx)``).

    ``u = −∂ψ/∂y``, ``v = ∂ψ/∂x`` by forward differences (divided by ``dx``);
    exactly divergence-free in the sense of
    :func:`~xda_hybrid.variational.regularisers.divergence`.
    """
    if boundary not in ("periodic", "closed"):
        raise ValueError(f"boundary must be 'periodic' or 'closed', got {boundary!r}")
    per = boundary == "periodic"
    return -_fwd(psi, -2, per) / dx, _fwd(psi, -1, per) / dx


def velocity_to_stream(
    u: torch.Tensor, v: torch.Tensor, boundary: str = "periodic", dx: float = 1.0, iterations: int = 300
) -> torch.Tensor:
    """Least-squares stream function of a velocity: ``argmin_ψ ‖curl ψ − w‖²`` (mean of ψ 0).

    Exact (FFT) for ``boundary="periodic"``; conjugate gradients on the normal
    equations (``iterations`` steps) for ``"closed"``.  The divergent part of
    ``w`` is dropped.

    Parameters
    ----------
    u, v : Tensor, shape (batch, ny, nx)

    Returns
    -------
    Tensor, shape (batch, ny, nx)
    """
    if boundary == "periodic":
        ny, nx = u.shape[-2:]
        ky = 2 * torch.pi * torch.fft.fftfreq(ny, dtype=u.dtype, device=u.device)
        kx = 2 * torch.pi * torch.fft.fftfreq(nx, dtype=u.dtype, device=u.device)
        ey = (torch.exp(1j * ky) - 1)[:, None]  # forward difference along y
        ex = (torch.exp(1j * kx) - 1)[None, :]
        den = (ey.abs() ** 2 + ex.abs() ** 2)
        num = -ey.conj() * torch.fft.fft2(u * dx) + ex.conj() * torch.fft.fft2(v * dx)
        den = torch.where(den > 0, den, torch.ones_like(den))
        return torch.fft.ifft2(num / den).real
    if boundary != "closed":
        raise ValueError(f"boundary must be 'periodic' or 'closed', got {boundary!r}")

    def A(p):  # curl
        a, b = stream_to_velocity(p, boundary, dx)
        return torch.stack([a, b], 1)

    def AT(w):  # adjoint of curl, by reverse mode
        p = torch.zeros_like(w[:, 0]).requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad((A(p) * w).sum(), p)
        return g

    w = torch.stack([u, v], 1).detach()
    psi = torch.zeros_like(u)
    r = AT(w)
    p = r.clone()
    rr = (r * r).flatten(1).sum(1)
    for _ in range(int(iterations)):
        Ap = AT(A(p))
        pAp = (p * Ap).flatten(1).sum(1)
        alpha = torch.where(pAp > 0, rr / pAp.clamp_min(torch.finfo(u.dtype).tiny), torch.zeros_like(rr))
        psi = psi + alpha.view(-1, 1, 1) * p
        r = r - alpha.view(-1, 1, 1) * Ap
        rr_new = (r * r).flatten(1).sum(1)
        if float(rr_new.max()) <= 1e-24 * max(1.0, float(rr.max())):
            break
        p = r + (rr_new / rr.clamp_min(torch.finfo(u.dtype).tiny)).view(-1, 1, 1) * p
        rr = rr_new
    return psi - psi.mean(dim=(-2, -1), keepdim=True)


def _spectral_filter(f: torch.Tensor, power: float, boundary: str) -> torch.Tensor:
    """Apply ``(−Δ)^power`` (forward-difference Laplacian eigenvalues, mean mode → 0) to ``(..., ny, nx)``.

    Periodic: FFT.  Closed: on the half-sample symmetric extension to ``(2ny, 2nx)``
    (a DCT-II diagonalisation, so the operator is symmetric and ``power`` and
    ``−power`` are exact inverses on zero-mean fields).
    """
    ny, nx = f.shape[-2:]
    if boundary == "closed":
        f = torch.cat([f, f.flip(-1)], -1)
        f = torch.cat([f, f.flip(-2)], -2)
    my, mx = f.shape[-2:]
    ky = 2 * torch.pi * torch.fft.fftfreq(my, dtype=f.dtype, device=f.device)
    kx = 2 * torch.pi * torch.fft.fftfreq(mx, dtype=f.dtype, device=f.device)
    lam = (4 * torch.sin(ky / 2) ** 2)[:, None] + (4 * torch.sin(kx / 2) ** 2)[None, :]
    filt = torch.where(lam > 0, lam.clamp_min(torch.finfo(f.dtype).tiny) ** power, torch.zeros_like(lam))
    out = torch.fft.ifft2(torch.fft.fft2(f) * filt).real
    return out[..., :ny, :nx]


class StreamFunctionCost(torch.nn.Module):
    """Reparametrisation of a 4DVAR cost: the velocity channels replaced by one stream function.

    Wraps a :class:`~xda_hybrid.variational.cost.FourDVarCost` (or a
    :class:`~xda_hybrid.variational.weak.WeakFourDVarCost`) of a model whose
    first two channels are ``(u, v)``.  The control is the inner cost's control
    with channels ``u, v`` replaced by ``ψ``: ``(batch, C_inner − 1, ny, nx)``.
    The velocity is exactly divergence-free (so the cost's ``div`` term is 0);
    :meth:`to_inner` / :meth:`from_inner` convert controls, and every other
    attribute (``model``, ``window``, ``obs_operator``...) is the inner cost's.

    With ``precondition=True`` (default) the control's first channel is not ψ
    itself but ``χ = (−Δ)^{1/2} ψ`` (spectral, mean mode dropped): ``w = curl
    (−Δ)^{−1/2} χ`` then has the size and the scale content of ``χ``, so that the
    L-BFGS sees a problem conditioned like the ``(u, v)`` control instead of one
    with an extra ``k²`` (same minimum, far fewer iterations).

    Parameters
    ----------
    cost : FourDVarCost
        On a model with ``velocity_names == ("u", "v")`` in channels 0, 1 and ``dx == dy``.
    precondition : bool
        Control ``χ = (−Δ)^{1/2} ψ`` instead of ``ψ``.
    """

    def __init__(self, cost: FourDVarCost, precondition: bool = True):
        super().__init__()
        model: DynamicalModel = cost.model
        if tuple(model.velocity_names) != ("u", "v") or model.channel("u") != 0 or model.channel("v") != 1:
            raise ValueError(f"{type(model).__name__} must hold the velocity (u, v) in channels 0, 1 "
                             "for a stream-function control")
        dx, dy = float(getattr(model, "dx", 1.0)), float(getattr(model, "dy", 1.0))
        if abs(dx - dy) > 1e-12 * max(dx, dy):
            raise ValueError(f"a stream-function control needs dx == dy, got dx={dx}, dy={dy}")
        self.inner = cost
        self.dx = dx
        self.boundary = getattr(model, "boundary", "periodic")
        self.precondition = bool(precondition)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("inner")
            if inner is None:
                raise
            return getattr(inner, name)

    def stream(self, control: torch.Tensor) -> torch.Tensor:
        """The stream function ψ ``(batch, ny, nx)`` of a control."""
        c = control[:, 0]
        return _spectral_filter(c, -0.5, self.boundary) if self.precondition else c

    def to_inner(self, control: torch.Tensor) -> torch.Tensor:
        """``(ψ or χ, rest…)`` → the inner cost's control ``(u, v, rest…)``."""
        u, v = stream_to_velocity(self.stream(control), self.boundary, self.dx)
        return torch.cat([u[:, None], v[:, None], control[:, 1:]], 1)

    def from_inner(self, control: torch.Tensor) -> torch.Tensor:
        """Inner control ``(u, v, rest…)`` → ``(ψ or χ, rest…)`` (least-squares ψ; the divergent part is dropped)."""
        psi = velocity_to_stream(control[:, 0], control[:, 1], self.boundary, self.dx)
        if self.precondition:
            psi = _spectral_filter(psi, 0.5, self.boundary)
        return torch.cat([psi[:, None], control[:, 2:]], 1)

    def trajectory(self, control: torch.Tensor) -> torch.Tensor:
        return self.inner.trajectory(self.to_inner(control))

    def check(self, control: torch.Tensor, obs: Observations) -> None:
        self.inner.check(self.to_inner(control), obs)

    def forward(self, control: torch.Tensor, obs: Observations, background: Background | None = None):
        """The inner cost's terms (dict of (batch,) tensors) at ``to_inner(control)``."""
        return self.inner(self.to_inner(control), obs, background)
