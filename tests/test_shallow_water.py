"""Shallow-water model (C-grid, forward-backward, upwind continuity) and its twin generator."""
from __future__ import annotations

import math

import pytest
import torch

from xda_hybrid.data.synthetic import gaussian_bump, shallow_water_twin
from xda_hybrid.models import CFLError, get_model
from xda_hybrid.models.shallow_water import ShallowWater
from xda_hybrid.testing import adjoint_dot_product

F64 = torch.float64
OPTIONS = dict(coriolis=1e-4, drag=2e-5, viscosity=2e4)


def bump_state(m: ShallowWater, n: int, batch: int = 1, width: float = 60e3, dtype=F64, centre=None):
    """Resting state with a Gaussian bump (centred in the basin by default)."""
    L = n * m.dx
    c = torch.full((batch,), L / 2 if centre is None else centre, dtype=dtype)
    return gaussian_bump(m, n, c, c, torch.full((batch,), width, dtype=dtype))


def random_state(n: int, batch: int = 2, tracer: bool = False, seed: int = 0):
    """Non-zero u, v (|.| ≥ 0.05 m/s, so no upwind tie), eta ~ 1 m, tracer ~ 1."""
    g = torch.Generator().manual_seed(seed)
    c = 4 if tracer else 3
    x = torch.empty(batch, c, n, n, dtype=F64)
    sign = torch.randint(0, 2, (batch, 2, n, n), generator=g).to(F64) * 2 - 1
    x[:, :2] = sign * (0.05 + 0.2 * torch.rand(batch, 2, n, n, generator=g, dtype=F64))
    x[:, 2] = torch.randn(batch, n, n, generator=g, dtype=F64)
    if tracer:
        x[:, 3] = 1.0 + torch.rand(batch, n, n, generator=g, dtype=F64)
    return x


def test_registry_and_layout():
    m = get_model("shallow_water")
    assert isinstance(m, ShallowWater)
    assert m.state_names == ("u", "v", "eta")
    assert m.spatial_dims == ("y", "x") and m.velocity_names == ("u", "v")
    assert m.dx == m.dy == pytest.approx(1000e3 / 64)
    assert m.dt == pytest.approx(0.5 * m.dx / math.sqrt(9.81 * 100.0))
    mt = ShallowWater(tracer=True)
    assert mt.state_names == ("u", "v", "eta", "tracer")
    assert sorted(m.physical_parameters) == ["H", "coriolis", "drag", "g", "viscosity"]
    x = bump_state(m, 16, batch=3)
    traj = m(x, 4)
    assert traj.shape == (3, 5, 3, 16, 16) and traj.dtype == F64
    with pytest.raises(ValueError):
        m(torch.zeros(1, 4, 8, 8), 1)


@pytest.mark.parametrize("opts", [{}, dict(OPTIONS, tracer=True)], ids=["plain", "options+tracer"])
def test_gradcheck(opts):
    m = ShallowWater(**opts)
    x = random_state(6, batch=1, tracer=bool(opts)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: m(z, 3), (x,), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_gradcheck_physical_parameters():
    m = ShallowWater(**OPTIONS)
    x = random_state(6, batch=1)
    names = ["coriolis", "drag", "viscosity", "H", "g"]
    p0 = [getattr(m, n).detach().clone().requires_grad_(True) for n in names]

    def fn(*ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x, 3))

    # parameters span 1e-5 .. 1e4: scale each so a common eps suits them all
    scales = [1e-4, 1e-5, 1e4, 100.0, 10.0]
    q0 = [(p / s).detach().requires_grad_(True) for p, s in zip(p0, scales)]
    assert torch.autograd.gradcheck(
        lambda *qs: fn(*[q * s for q, s in zip(qs, scales)]), tuple(q0), eps=1e-7, atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize(
    "opts", [{}, OPTIONS, dict(OPTIONS, tracer=True)], ids=["plain", "coriolis+drag+viscosity", "with-tracer"]
)
def test_adjoint_dot_product(opts):
    m = ShallowWater(**opts)
    x = random_state(16, batch=2, tracer=opts.get("tracer", False), seed=3)
    x[:, 2] += bump_state(m, 16, batch=2)[:, 2]
    err = adjoint_dot_product(lambda z: m(z, 5), x)
    assert err < 1e-10


def test_adjoint_at_rest_state():
    """Linearising about a resting state (u = v = 0, upwind ties everywhere) is still consistent."""
    m = ShallowWater()
    x = bump_state(m, 16, batch=1)
    assert adjoint_dot_product(lambda z: m(z, 5), x) < 1e-10


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_mass_conservation_500_steps(dtype):
    m = ShallowWater(**OPTIONS, tracer=True)
    n = 32
    x = bump_state(m, n, batch=2, width=40e3, dtype=dtype, centre=0.3 * n * m.dx)
    x = torch.cat([x, 1.0 + x[:, 2:3]], dim=1)  # tracer = 1 + eta0
    with torch.no_grad():
        x1 = x
        for _ in range(500):
            x1 = m.step(x1)
    mass0, mass1 = m.mass(x).double(), m.mass(x1).double()
    assert ((mass1 - mass0).abs() / mass0).max() < 1e-6
    q0, q1 = m.tracer_content(x).double(), m.tracer_content(x1).double()
    assert ((q1 - q0).abs() / q0).max() < 1e-6
    if dtype == F64:  # to round-off: compare with the anomaly itself
        d_eta = (x1[:, 2].sum((-1, -2)) - x[:, 2].sum((-1, -2))).abs()
        assert (d_eta / x[:, 2].abs().sum((-1, -2))).max() < 1e-12
    assert x1[:, 0].abs().max() > 1e-3  # something actually moved


def test_walls_stay_zero():
    m = ShallowWater(**OPTIONS, tracer=True)
    x = random_state(12, batch=2, tracer=True)
    assert x[:, 0, :, -1].abs().min() > 0 and x[:, 1, -1, :].abs().min() > 0  # input walls not zero
    traj = m(x, 20)
    assert torch.all(traj[:, 1:, 0, :, -1] == 0)  # east wall, u
    assert torch.all(traj[:, 1:, 1, -1, :] == 0)  # north wall, v
    # the wall values of the input are ignored
    x2 = x.clone()
    x2[:, 0, :, -1] = 0
    x2[:, 1, -1, :] = 0
    assert torch.equal(m(x2, 20)[:, 1:], traj[:, 1:])


def test_uniform_tracer_stays_uniform_and_bounded():
    m = ShallowWater(tracer=True)
    x = random_state(16, batch=1, tracer=True)
    x[:, 3] = 2.5
    traj = m(x, 30)
    torch.testing.assert_close(traj[:, :, 3], torch.full_like(traj[:, :, 3], 2.5), rtol=1e-13, atol=0)
    x[:, 3] = torch.rand(16, 16, dtype=F64, generator=torch.Generator().manual_seed(1))
    q = m(x, 30)[:, :, 3]
    assert q.min() >= x[:, 3].min() - 1e-12 and q.max() <= x[:, 3].max() + 1e-12


def test_cfl_at_construction():
    dx = 1000e3 / 64
    c = math.sqrt(9.81 * 100.0)
    ShallowWater(dt=0.99 / math.sqrt(2) * dx / c)  # just below the limit
    with pytest.raises(CFLError, match=r"Courant number .*= 0\.8.* 0\.7071"):
        ShallowWater(dt=0.8 * dx / c)
    with pytest.raises(CFLError, match="viscous number"):
        ShallowWater(viscosity=1e6)
    with pytest.raises(CFLError, match=r"\|f\|\*dt"):
        ShallowWater(coriolis=1e-2)
    with pytest.raises(ValueError):
        ShallowWater(drag=-1.0)


def test_unstable_state_raises_not_nan():
    m = ShallowWater()
    x = bump_state(m, 16)
    x[:, 0, 5, 5] = 1e4  # |u| dt / dx ≈ 160
    with pytest.raises(CFLError, match="Courant number"):
        m.step(x)
    with pytest.raises(CFLError):
        m(x, 3)
    # what it prevents: without the check the run blows up
    with torch.no_grad():
        y = x
        for _ in range(60):
            y = m.step(y, check_cfl=False)
    assert not torch.isfinite(y).all() or y.abs().max() > 1e10
    nan = bump_state(m, 16)
    nan[0, 2, 3, 3] = float("nan")
    with pytest.raises(CFLError, match="non-finite"):
        m.step(nan)
    dry = bump_state(m, 16)
    dry[0, 2, 3, 3] = -150.0
    with pytest.raises(CFLError, match="thickness"):
        m.step(dry)
    # a learned parameter pushed out of range is caught at run time too
    with torch.no_grad():
        m.viscosity.fill_(1e7)
    with pytest.raises(CFLError, match="viscous"):
        m.step(bump_state(m, 16))


def test_centred_bump_four_fold_symmetry():
    m = ShallowWater()
    n = 32
    traj = m(bump_state(m, n, width=50e3), 200)
    eta, u, v = traj[0, -1, 2], traj[0, -1, 0], traj[0, -1, 1]
    assert eta.abs().max() > 0.05 and u.abs().max() > 1e-3  # waves have spread
    tol = 1e-10
    assert (eta - eta.flip(-1)).abs().max() < tol
    assert (eta - eta.flip(-2)).abs().max() < tol
    assert (eta - eta.T).abs().max() < tol
    # u at face i+1/2 mirrors to -u at face (n-2-i)+1/2; u and v swap under transposition
    assert (u[:, :-1] + u[:, :-1].flip(-1)).abs().max() < tol
    assert (u - v.T).abs().max() < tol


def test_learnable_drag_gets_gradient():
    m = ShallowWater(drag=1e-6)
    m.learn("drag")
    assert m.drag.requires_grad
    x = random_state(16, batch=2)
    loss = m(x.float(), 5)[:, -1].pow(2).sum()
    loss.backward()
    g = m.drag.grad
    assert g is not None and torch.isfinite(g) and g.abs() > 0
    # also from drag = 0 (the term is kept when learnable)
    m0 = ShallowWater().learn("drag")
    m0(x, 5)[:, -1, 0].pow(2).sum().backward()
    assert m0.drag.grad.abs() > 0 and m0.drag.grad < 0  # more drag, less kinetic energy


def test_drag_makes_energy_decay():
    n = 24
    free, damped = ShallowWater(), ShallowWater(drag=2e-4)
    x = bump_state(free, n, width=60e3)

    def available_energy(m, traj):  # energy of the state minus that of the flat, resting one
        s = traj[0].clone()
        s[:, 2] -= s[:, 2].mean((-1, -2), keepdim=True)
        return m.energy(s)

    with torch.no_grad():
        ef = available_energy(free, free(x, 300))
        ed = available_energy(damped, damped(x, 300))
    e0 = ef[0]
    assert ef[-1] > 0.85 * e0  # nearly conservative without drag (upwind dissipation only)
    assert ed[-1] < 0.05 * e0 and ed[-1] < 0.1 * ef[-1]
    # the damped energy never rises above its initial value and decays block by block
    assert ed.max() <= e0 * (1 + 1e-12)
    blocks = ed[1:].reshape(10, 30).amax(1)
    assert torch.all(blocks[1:] < blocks[:-1])


def test_float32_matches_float64():
    m = ShallowWater(**OPTIONS, tracer=True)
    x = random_state(16, batch=2, tracer=True)
    x[:, 2] += bump_state(m, 16, batch=2)[:, 2]
    t64 = m(x, 50)
    t32 = m(x.float(), 50)
    assert t32.dtype == torch.float32
    err = (t32.double() - t64).abs().amax(dim=(0, 1, 3, 4)) / t64.abs().amax(dim=(0, 1, 3, 4))
    assert err.max() < 1e-4, err


def test_twin_deterministic_shapes_noise_and_speed():
    kw = dict(n_windows=6, window=10, obs_steps=(0, 3, 6, 9), noise_std=0.05, n=32, spinup=300)
    a = shallow_water_twin(seed=7, **kw)
    b = shallow_water_twin(seed=7, **kw)
    c = shallow_water_twin(seed=8, **kw)
    assert torch.equal(a.truth, b.truth) and torch.equal(a.obs, b.obs)
    assert not torch.equal(a.obs, c.obs)
    assert a.truth.shape == (6, 10, 3, 32, 32) and a.truth.dtype == F64
    assert a.obs.shape == (6, 4, 1, 32, 32)
    assert a.obs_steps == (0, 3, 6, 9) and a.noise_std == 0.05 and a["obs"] is a.obs
    assert isinstance(a.model, ShallowWater) and a.model.dx == pytest.approx(1000e3 / 32)
    resid = a.obs[:, :, 0] - a.truth[:, list(a.obs_steps), 2]
    assert abs(resid.std().item() - 0.05) < 0.003 and abs(resid.mean().item()) < 0.003
    # the truth follows the model
    torch.testing.assert_close(a.model(a.truth[:, 0], 9), a.truth, rtol=0, atol=1e-12)
    speed = a.truth[:, 0, :2].pow(2).sum(1).sqrt()
    assert speed.mean() > 0.01 and speed.max() < 2.0
    assert (a.truth[:, 0, 2].std((-1, -2)) > 0.01).all()


def test_twin_benchmark_grid():
    """The 64×64 benchmark settings (fewer windows): spun-up, velocity of a few cm/s."""
    tw = shallow_water_twin(n_windows=4, seed=0)
    assert tw.truth.shape == (4, 10, 3, 64, 64) and tw.obs.shape == (4, 4, 1, 64, 64)
    assert tw.model.dt == pytest.approx(0.5 * (1000e3 / 64) / math.sqrt(9.81 * 100.0))
    speed = tw.truth[:, 0, :2].pow(2).sum(1).sqrt()
    assert 0.02 < speed.mean() < 0.5
    with pytest.raises(ValueError):
        shallow_water_twin(n_windows=1, window=5, obs_steps=(0, 9), n=8, spinup=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    dev = torch.device("cuda")
    m = ShallowWater(**OPTIONS, tracer=True)
    x = random_state(32, batch=4, tracer=True)
    x[:, 2] += bump_state(m, 32, batch=4)[:, 2]
    ref = m(x, 20)
    mc = ShallowWater(**OPTIONS, tracer=True).to(dev)
    mc.learn("drag")
    xc = x.to(dev).requires_grad_(True)
    out = mc(xc, 20)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-10, atol=1e-12)
    out[:, -1].pow(2).sum().backward()
    assert torch.isfinite(xc.grad).all() and mc.drag.grad.abs() > 0
    out32 = mc(x.float().to(dev), 20)
    assert out32.dtype == torch.float32 and torch.isfinite(out32).all()
    with pytest.raises(CFLError):
        bad = x.to(dev).clone()
        bad[:, 0] = 1e4
        mc.step(bad)


def test_single_step_upwind_flux_and_pressure_gradient():
    """One step by hand: u, v from -g ∇eta, then eta from the fluxes with the upwind thickness."""
    m = ShallowWater()
    n = 5
    g = torch.Generator().manual_seed(5)
    x = torch.zeros(1, 3, n, n, dtype=F64)
    x[0, 2] = torch.rand(n, n, generator=g, dtype=F64) * 4 - 2
    x[0, :2] = torch.rand(2, n, n, generator=g, dtype=F64) - 0.5
    y = m.step(x)[0]
    eta, dt, dx, k = x[0, 2].tolist(), m.dt, m.dx, 9.81 * m.dt / m.dx
    U = [[0.0] * (n + 1) for _ in range(n)]  # U[j][i]: face west of cell i (0 and n: walls)
    V = [[0.0] * n for _ in range(n + 1)]  # V[j][i]: face south of cell j
    for j in range(n):
        for i in range(n - 1):
            U[j][i + 1] = x[0, 0, j, i].item() - k * (eta[j][i + 1] - eta[j][i])
            assert y[0, j, i].item() == pytest.approx(U[j][i + 1], rel=1e-12, abs=1e-15)
    for j in range(n - 1):
        for i in range(n):
            V[j + 1][i] = x[0, 1, j, i].item() - k * (eta[j + 1][i] - eta[j][i])
            assert y[1, j, i].item() == pytest.approx(V[j + 1][i], rel=1e-12, abs=1e-15)

    def flux(vel, h_minus, h_plus):  # upwind thickness: the cell the flow comes from
        return vel * ((100.0 + h_minus) if vel > 0 else (100.0 + h_plus))

    for j in range(n):
        for i in range(n):
            fe = flux(U[j][i + 1], eta[j][i], eta[j][i + 1] if i + 1 < n else 0.0)
            fw = flux(U[j][i], eta[j][i - 1] if i > 0 else 0.0, eta[j][i])
            fn = flux(V[j + 1][i], eta[j][i], eta[j + 1][i] if j + 1 < n else 0.0)
            fs = flux(V[j][i], eta[j - 1][i] if j > 0 else 0.0, eta[j][i])
            want = eta[j][i] - dt / dx * (fe - fw + fn - fs)
            assert y[2, j, i].item() == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_torch_func_transforms():
    """Parameters through functional_call + torch.func (grad, jvp) and vmap with the check off."""
    m = ShallowWater()  # drag = 0: the term must still be differentiated under transforms
    x = random_state(8, batch=2)

    def loss(r):
        return torch.func.functional_call(m, {"drag": r}, (x, 3))[:, -1].pow(2).sum()

    r0 = torch.zeros((), dtype=F64)
    g = torch.func.grad(loss)(r0)
    _, t = torch.func.jvp(loss, (r0,), (torch.ones((), dtype=F64),))
    h = 1e-9
    fd = (loss(r0 + h) - loss(r0 - h)) / (2 * h)
    assert g != 0 and torch.allclose(g, fd, rtol=1e-5) and torch.allclose(t, g, rtol=1e-12)
    out = torch.func.vmap(lambda z: m(z[None], 2, check_cfl=False)[0])(x)
    torch.testing.assert_close(out, m(x, 2))
    with pytest.raises(RuntimeError, match="check_cfl=False"):
        torch.func.vmap(lambda z: m(z[None], 2)[0])(x)
