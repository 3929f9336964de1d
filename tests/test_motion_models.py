"""Tests of the semi-Lagrangian motion models (Advection, ImageModel) and of
the bilinear interpolation they are built on (xda_hybrid.models.interpolation)."""
from __future__ import annotations

import math

import pytest
import torch

from xda_hybrid.models import CFLError, get_model
from xda_hybrid.models.advection import Advection
from xda_hybrid.models.image import ImageModel
from xda_hybrid.models.interpolation import (
    apply_stencil,
    bilinear_stencil,
    departure_points,
    interp2d,
)
from xda_hybrid.testing import adjoint_dot_product

MODELS = {"advection": Advection, "image": ImageModel}
BOUNDARIES = ("closed", "periodic")


def smooth_state(ny=12, nx=16, batch=1, speed=0.7, dtype=torch.float64, seed=0):
    """(batch, 3, ny, nx): smooth random velocity of magnitude ~speed cells/step, rough tracer."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(ny, dtype=torch.float64).view(ny, 1) * (2 * math.pi / ny)
    x = torch.arange(nx, dtype=torch.float64).view(1, nx) * (2 * math.pi / nx)
    states = []
    for _ in range(batch):
        a = torch.rand(6, generator=g, dtype=torch.float64) * 2 * math.pi
        u = speed * (0.6 * torch.sin(x + a[0]) * torch.cos(y + a[1]) + 0.4 * torch.cos(2 * y + a[2]))
        v = speed * (0.6 * torch.cos(x + a[3]) * torch.sin(y + a[4]) + 0.4 * torch.sin(2 * x + a[5]))
        c = torch.rand(ny, nx, generator=g, dtype=torch.float64)
        states.append(torch.stack([u, v, c]))
    return torch.stack(states).to(dtype)


def rough_state(ny=12, nx=16, scale=2.0, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, ny, nx, generator=g, dtype=torch.float64)
    x[:, :2] *= scale
    x[:, 2] = torch.rand(ny, nx, generator=g, dtype=torch.float64) * 3 - 1
    return x.to(dtype)


# ---------------------------------------------------------------- derivatives
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradcheck(name, boundary):
    m = MODELS[name](boundary=boundary)
    x = smooth_state(6, 7).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: m(z, 2), (x,))


def test_gradcheck_nonunit_grid_and_diffusion():
    m = ImageModel(dt=0.5, dx=2.0, dy=1.5, boundary="closed", diffusion=0.4)
    x = smooth_state(6, 7, speed=1.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: m(z, 2), (x,))
    # derivative with respect to the (learnable) diffusion parameter
    xd = x.detach()
    kappa = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    f = lambda k: torch.func.functional_call(m, {"diffusion": k}, (xd, 3))[:, :, 2]
    assert torch.autograd.gradcheck(f, (kappa,))


def test_gradgradcheck_double_backward():
    for boundary in BOUNDARIES:
        m = ImageModel(boundary=boundary)
        x = smooth_state(5, 6).requires_grad_(True)
        assert torch.autograd.gradgradcheck(lambda z: m(z, 1), (x,))


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_adjoint_dot_product(name, boundary):
    m = MODELS[name](boundary=boundary)
    x = smooth_state(12, 16, batch=2)
    assert adjoint_dot_product(lambda z: m(z, 4), x) < 1e-10


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_adjoint_dot_product_with_diffusion_and_nonunit_grid(boundary):
    m = ImageModel(boundary=boundary, diffusion=0.2, dt=0.7, dx=1.3, dy=0.9)
    x = smooth_state(12, 16, batch=2, speed=1.5)
    assert adjoint_dot_product(lambda z: m(z, 4), x) < 1e-10


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_single_window_row_blocks_match_one_block(boundary):
    # a single large window on a multi-threaded CPU is read as row blocks (parallel
    # grid_sample): same trajectory and gradient as one block, exact adjoint
    m = ImageModel(boundary=boundary)
    x = smooth_state(66, 64, speed=1.3)  # 66 rows: 3 blocks with 3 threads, 2 with 2
    w = torch.randn(1, 4, 3, 66, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    results = {}
    try:
        for k in (1, 2, 3):
            torch.set_num_threads(k)
            xg = x.clone().requires_grad_(True)
            y = m(xg, 3)
            (g,) = torch.autograd.grad((y * w).sum(), xg)
            results[k] = (y.detach(), g)
        assert adjoint_dot_product(lambda z: m(z, 3), x) < 1e-10
    finally:
        torch.set_num_threads(threads)
    for k in (2, 3):
        torch.testing.assert_close(results[k][0], results[1][0], rtol=0, atol=1e-12)
        torch.testing.assert_close(results[k][1], results[1][1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(9, 11), (10, 10)])
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("sx, sy, iterations", [(1.0, 1.0, 2), (0.7, 1.3, 1), (1.0, 1.0, 0)])
def test_fused_step_matches_reference_operations(boundary, sx, sy, iterations, shape):
    # the image model's step is one autograd node with a hand-written adjoint; it must equal
    # the composition of the differentiable interpolation operations, value and gradient
    from xda_hybrid.models.semilagrangian import _reference_step, self_advection_step

    meta = (sx, sy, boundary, iterations)
    x = rough_state(*shape, scale=1.5)
    w = torch.randn(1, 3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = self_advection_step(xa, sx, sy, boundary, iterations), _reference_step(xb, meta)
    torch.testing.assert_close(ya, yb, rtol=0, atol=1e-12)
    (ga,), (gb,) = torch.autograd.grad((ya * w).sum(), xa), torch.autograd.grad((yb * w).sum(), xb)
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-11)
    assert adjoint_dot_product(lambda z: self_advection_step(z, sx, sy, boundary, iterations), x) < 1e-10


def test_learn_diffusion_gets_gradient():
    m = ImageModel(boundary="periodic", diffusion=0.1).learn("diffusion")
    x = smooth_state(12, 16)
    m(x, 3)[:, -1, 2].square().sum().backward()
    assert m.diffusion.grad is not None and torch.isfinite(m.diffusion.grad)
    assert m.diffusion.grad.abs() > 0


# ------------------------------------------------------------------- physics
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_uniform_flow_translates_exactly(name, dtype):
    m = MODELS[name](boundary="periodic")
    x = smooth_state(12, 16, dtype=dtype)
    x[:, 0] = 2.0  # u: +2 cells/step along x
    x[:, 1] = -1.0  # v: -1 cell/step along y
    traj = m(x, 3)
    # grid_sample reads at positions rounded to a few ulp of the coordinate (<= 16 here):
    # ~1e-6 cells in float32, 1e-15 in float64
    atol = 4 * torch.finfo(dtype).eps * 16 if dtype == torch.float32 else 1e-12
    for k in range(4):
        want = torch.roll(x[:, 2], shifts=(-k, 2 * k), dims=(-2, -1))
        torch.testing.assert_close(traj[:, k, 2], want, atol=atol, rtol=0)
        torch.testing.assert_close(traj[:, k, :2], x[:, :2], atol=atol, rtol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_units_dx_dt(name):
    # u = 3 length/time, dt = 2, dx = 3: two cells per step along x
    m = MODELS[name](dt=2.0, dx=3.0, dy=0.5, boundary="periodic")
    x = smooth_state(12, 16)
    x[:, 0] = 3.0
    x[:, 1] = 0.25  # 0.25 * 2 / 0.5 = 1 cell per step along y
    out = m(x, 2)[:, -1, 2]
    torch.testing.assert_close(out, torch.roll(x[:, 2], shifts=(2, 4), dims=(-2, -1)), atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_uniform_subcell_flow_conserves_mass(name):
    m = MODELS[name](boundary="periodic")
    x = smooth_state(12, 16)
    x[:, 0], x[:, 1] = 0.37, -0.81
    traj = m(x, 10)
    sums = traj[:, :, 2].sum((-1, -2))
    torch.testing.assert_close(sums, sums[:, :1].expand_as(sums), atol=1e-10, rtol=0)
    # and it is smoothing, not sharpening
    assert traj[:, -1, 2].var() < x[:, 2].var()


def test_shear_flow_exact():
    # u = j cells/step on row j (periodic along x), v = 0: row j moves by j*k
    m = Advection(boundary="periodic")
    x = smooth_state(6, 16)
    x[:, 0] = torch.arange(6, dtype=x.dtype).view(6, 1) - 2
    x[:, 1] = 0
    out = m(x, 3)[:, -1, 2]
    for j in range(6):
        torch.testing.assert_close(out[:, j], torch.roll(x[:, 2, j], 3 * (j - 2), dims=-1))


def test_solid_body_rotation_quarter_turn():
    n, steps = 32, 24
    omega = (math.pi / 2) / steps  # radians per step
    y = torch.arange(n, dtype=torch.float64).view(n, 1) - (n - 1) / 2
    x = torch.arange(n, dtype=torch.float64).view(1, n) - (n - 1) / 2
    blob = torch.exp(-((x - 7) ** 2 + y**2) / (2 * 2.0**2))
    state = torch.stack([-omega * y * torch.ones_like(x), omega * x * torch.ones_like(y), blob])[None]
    out = Advection(boundary="closed")(state, steps)[0, -1, 2]
    mass = out.sum()
    cy, cx = (out * y).sum() / mass, (out * x).sum() / mass
    # counter-clockwise in (x, y): (7, 0) -> (0, 7)
    assert abs(float(cx)) < 0.5 and abs(float(cy) - 7) < 0.5
    # bilinear semi-Lagrangian is diffusive (peak ~0.47 here) but not wildly so
    assert 0.35 < float(out.max()) <= 1.0 + 1e-12
    assert abs(float(mass / blob.sum()) - 1) < 0.05


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_tracer_stays_within_initial_bounds(name, boundary):
    m = MODELS[name](boundary=boundary)
    x = rough_state(12, 16, scale=2.0)
    traj = m(x, 50)
    lo, hi = x[:, 2].min(), x[:, 2].max()
    eps = 1e-12
    assert traj[:, :, 2].min() >= lo - eps and traj[:, :, 2].max() <= hi + eps
    if name == "image":
        wmax = x[:, :2].abs().max()
        assert traj[:, :, :2].abs().max() <= wmax + eps
    assert torch.isfinite(traj).all()


@pytest.mark.parametrize("value", [1e6, -1e6, math.inf, -math.inf, math.nan, "mixed"])
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_stable_for_huge_and_infinite_velocities(name, boundary, value):
    m = MODELS[name](boundary=boundary)
    x = smooth_state(12, 16, dtype=torch.float32)
    if value == "mixed":
        g = torch.Generator().manual_seed(3)
        choice = torch.tensor([1e30, -1e30, math.inf, -math.inf, math.nan, 0.5, 1e6])
        x[:, :2] = choice[torch.randint(0, len(choice), x[:, :2].shape, generator=g)]
    else:
        x[:, :2] = value
    traj = m(x, 5)
    tracer = traj[:, :, 2]
    assert torch.isfinite(tracer).all()
    assert tracer.max() <= x[:, 2].max() and tracer.min() >= x[:, 2].min()
    if name == "image":  # infinities clamped, NaN read as 0, then interpolated
        assert torch.isfinite(traj[:, 1:]).all()
    else:  # the velocity is steady: passed through untouched
        torch.testing.assert_close(traj[:, -1, :2], x[:, :2], equal_nan=True)


def test_closed_image_model_keeps_zero_velocity_on_border():
    m = ImageModel(boundary="closed")
    x = smooth_state(12, 16, speed=1.5)
    traj = m(x, 6)
    w = traj[:, 1:, :2]
    border = torch.ones(12, 16, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert (w[..., border] == 0).all()
    assert (w[..., ~border].abs() > 0).any()
    # periodic: no such constraint
    wp = ImageModel(boundary="periodic")(x, 2)[:, 1:, :2]
    assert (wp[..., border].abs() > 0).any()


def test_image_model_velocity_is_advected():
    # the velocity is interpolated at the departure points of the velocity
    m = ImageModel(boundary="periodic")
    x = smooth_state(12, 16, speed=1.2)
    yd, xd = departure_points(x[:, 0], x[:, 1], dt=1.0, boundary="periodic")
    torch.testing.assert_close(m.step(x), interp2d(x, yd, xd, "periodic"))
    # Burgers-like plateau u = 1 on columns 4..7 (u = 0 elsewhere): the
    # inside moves right by one cell, the front (a shock, speed 1/2) does not
    # jump ahead, the rear becomes a rarefaction fan
    x = smooth_state(4, 16)
    x[:, :2] = 0.0
    x[:, 0, :, 4:8] = 1.0
    u = m(x, 1)[:, -1, 0]
    torch.testing.assert_close(u[..., 5:8], torch.ones_like(u[..., 5:8]))
    assert (u[..., 8:] == 0).all() and (u[..., :4] == 0).all()
    torch.testing.assert_close(u[..., 4], torch.full_like(u[..., 4], 0.25))  # midpoint rule by hand


def test_diffusion_cfl_raises():
    with pytest.raises(CFLError, match="diffusion"):
        ImageModel(diffusion=0.3)
    with pytest.raises(ValueError):  # CFLError is a ValueError
        ImageModel(diffusion=0.26, dt=1.0, dx=1.0, dy=1.0)
    with pytest.raises(CFLError):
        ImageModel(diffusion=0.3, dx=2.0, dy=1.0)  # min(dx, dy) counts
    ImageModel(diffusion=0.25)
    ImageModel(diffusion=0.9, dx=2.0, dy=2.0)
    with pytest.raises(ValueError, match="diffusion"):
        ImageModel(diffusion=-0.1)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_diffusion_conserves_and_smooths(boundary):
    m = ImageModel(boundary=boundary, diffusion=0.2)
    x = rough_state(12, 16)
    x[:, :2] = 0
    traj = m(x, 10)
    c = traj[:, :, 2]
    torch.testing.assert_close(c.sum((-1, -2)), x[:, 2].sum((-1, -2)).expand(1, 11), rtol=1e-12, atol=1e-12)
    assert c[:, -1].var() < 0.5 * x[:, 2].var()
    assert c.max() <= x[:, 2].max() + 1e-12 and c.min() >= x[:, 2].min() - 1e-12


@pytest.mark.parametrize("name", sorted(MODELS))
def test_float32_and_float64_agree(name):
    for boundary in BOUNDARIES:
        m = MODELS[name](boundary=boundary)
        x = smooth_state(12, 16, speed=1.3)
        t64 = m(x, 8)
        t32 = m(x.float(), 8)
        assert t32.dtype == torch.float32 and t64.dtype == torch.float64
        # float32 positions are normalised to grid_sample's [-1, 1] and back: a few ulp of
        # a cell per read, compounded over 8 self-advected steps
        torch.testing.assert_close(t32.double(), t64, atol=3e-5, rtol=0)


def test_forward_equals_repeated_step_and_batch_independence():
    for boundary in BOUNDARIES:
        for cls in (Advection, ImageModel):
            m = cls(boundary=boundary)
            x = smooth_state(12, 16, batch=3, speed=1.1)
            traj = m(x, 4)
            assert traj.shape == (3, 5, 3, 12, 16)
            s = x
            for k in range(1, 5):
                s = m.step(s)
                torch.testing.assert_close(traj[:, k], s, atol=1e-13, rtol=0)
            one = m(x[1:2], 4)
            torch.testing.assert_close(traj[1:2], one, atol=1e-13, rtol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_inference_mode_then_autograd(name):
    # per-grid constants are cached: building them under inference_mode must
    # not poison later differentiable calls (grid size unique to this test)
    for boundary in BOUNDARIES:
        m = MODELS[name](boundary=boundary)
        x = smooth_state(9, 11 + (name == "image"))
        with torch.inference_mode():
            ref = m(x, 3)
        xr = x.clone().requires_grad_(True)
        out = m(xr, 3)
        out[:, -1, 2].sum().backward()
        torch.testing.assert_close(out.detach(), ref)
        assert torch.isfinite(xr.grad).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bad_states_raise(name):
    m = MODELS[name]()
    with pytest.raises(ValueError):
        m(torch.zeros(1, 2, 12, 16), 1)  # wrong channel count
    with pytest.raises(ValueError):
        m(torch.zeros(3, 12, 16), 1)  # missing batch axis
    with pytest.raises(ValueError):
        m(torch.zeros(1, 3, 4, 12, 16), 1)  # 3-D space
    with pytest.raises(ValueError):
        m.step(torch.zeros(1, 4, 12, 16))
    with pytest.raises(ValueError):
        m(torch.zeros(1, 3, 12, 16), -1)
    with pytest.raises(TypeError):
        m(torch.zeros(1, 3, 12, 16, dtype=torch.int64), 1)
    assert m(torch.zeros(1, 3, 12, 16), 0).shape == (1, 1, 3, 12, 16)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bad_arguments_raise(name):
    cls = MODELS[name]
    with pytest.raises(ValueError, match="boundary"):
        cls(boundary="open")
    with pytest.raises(ValueError, match="boundary"):
        cls(boundary=None)
    for arg in ("dt", "dx", "dy"):
        for bad in (0.0, -1.0, math.inf, math.nan):
            with pytest.raises(ValueError, match=arg):
                cls(**{arg: bad})


def test_registry_and_metadata():
    a = get_model("advection", boundary="periodic", dt=0.5)
    i = get_model("image", diffusion=0.1)
    assert isinstance(a, Advection) and isinstance(i, ImageModel)
    for m in (a, i):
        assert m.state_names == ("u", "v", "tracer")
        assert m.spatial_dims == ("y", "x")
        assert m.velocity_names == ("u", "v")
    assert "diffusion" in i.physical_parameters
    assert float(i.diffusion) == pytest.approx(0.1)


# ------------------------------------------------------------- interpolation
def test_interp2d_exact_at_nodes_and_boundaries():
    g = torch.Generator().manual_seed(0)
    f = torch.rand(2, 3, 5, 7, generator=g, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(5.0), torch.arange(7.0), indexing="ij")
    yy, xx = yy.double(), xx.double()
    for boundary in BOUNDARIES:
        torch.testing.assert_close(interp2d(f, yy, xx, boundary), f, atol=1e-15, rtol=0)
    # periodic wrap: x + 7 and y - 5 are the same points
    torch.testing.assert_close(interp2d(f, yy - 5, xx + 7, "periodic"), f)
    # closed: clamped to the border values
    out = interp2d(f, yy * 0 - 3.0, xx * 0 + 100.0, "closed")
    torch.testing.assert_close(out, f[:, :, :1, -1:].expand_as(f))
    # half-way between nodes: the mean of the neighbours
    out = interp2d(f, yy[:-1, :-1] + 0.5, xx[:-1, :-1] + 0.5, "closed")
    want = (f[..., :-1, :-1] + f[..., 1:, :-1] + f[..., :-1, 1:] + f[..., 1:, 1:]) / 4
    torch.testing.assert_close(out, want)


def test_interp2d_periodic_between_last_and_first():
    f = torch.zeros(1, 1, 3, 4, dtype=torch.float64)
    f[..., 0, 0], f[..., 0, 3] = 1.0, 3.0
    out = interp2d(f, torch.zeros(1, 1, 1), torch.full((1, 1, 1), 3.25), "periodic")
    assert float(out) == pytest.approx(0.75 * 3.0 + 0.25 * 1.0)
    out = interp2d(f, torch.zeros(1, 1, 1), torch.full((1, 1, 1), -0.75), "periodic")
    assert float(out) == pytest.approx(0.75 * 3.0 + 0.25 * 1.0)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_interp2d_nonfinite_positions(boundary):
    f = torch.rand(1, 2, 6, 8)
    pos = torch.tensor([[math.nan, math.inf, -math.inf, 1e30, -1e30, 3e9, 2.5, 1e7]]).expand(6, 8)
    out = interp2d(f, pos.T.reshape(6, 8).contiguous(), pos, boundary)
    assert torch.isfinite(out).all()
    assert out.max() <= f.max() and out.min() >= f.min()


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_interp2d_adjoint_and_gradcheck(boundary):
    g = torch.Generator().manual_seed(1)
    f = torch.rand(2, 2, 5, 6, generator=g, dtype=torch.float64)
    yd = torch.rand(2, 4, 3, generator=g, dtype=torch.float64) * 8 - 1.5
    xd = torch.rand(2, 4, 3, generator=g, dtype=torch.float64) * 9 - 1.5
    packed = torch.cat([f.flatten(), yd.flatten(), xd.flatten()])

    def fn(p):
        nf, ny = f.numel(), yd.numel()
        return interp2d(p[:nf].view_as(f), p[nf : nf + ny].view_as(yd), p[nf + ny :].view_as(xd), boundary)

    assert adjoint_dot_product(fn, packed) < 1e-10
    assert torch.autograd.gradcheck(fn, (packed.requires_grad_(True),))


def test_interp2d_degenerate_and_broadcast():
    f = torch.arange(5.0).view(1, 1, 1, 5)  # a single row
    out = interp2d(f, torch.zeros(1, 3), torch.tensor([[0.5, 3.25, 9.0]]), "closed")
    torch.testing.assert_close(out.flatten(), torch.tensor([0.5, 3.25, 4.0]))
    # one field, a batch of two position sets
    f = torch.rand(1, 2, 4, 4)
    yd = torch.rand(2, 4, 4) * 3
    out = interp2d(f, yd, yd.flip(0), "closed")
    assert out.shape == (2, 2, 4, 4)
    torch.testing.assert_close(out[1], interp2d(f, yd[1:], yd[:1], "closed")[0])
    with pytest.raises(ValueError, match="boundary"):
        interp2d(f, yd, yd, "reflect")
    with pytest.raises(ValueError):
        interp2d(f[0], yd, yd)


def test_stencil_reuse_matches_interp2d():
    f = torch.rand(1, 3, 6, 7, dtype=torch.float64)
    yd, xd = torch.rand(1, 6, 7, dtype=torch.float64) * 6, torch.rand(1, 6, 7, dtype=torch.float64) * 7
    st = bilinear_stencil(yd, xd, (6, 7), "periodic")
    torch.testing.assert_close(apply_stencil(f, st), interp2d(f, yd, xd, "periodic"))
    torch.testing.assert_close(apply_stencil(f[:, :1], st), interp2d(f[:, :1], yd, xd, "periodic"))


def test_departure_points_second_order():
    # uniform flow: exact; rotation: the midpoint rule is second order in dt
    u = torch.full((1, 8, 8), 0.6, dtype=torch.float64)
    v = torch.full((1, 8, 8), -0.3, dtype=torch.float64)
    yd, xd = departure_points(u, v, dt=2.0, dx=1.5, dy=1.0, boundary="periodic")
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    torch.testing.assert_close(xd[0], xx.double() - 0.6 * 2.0 / 1.5)
    torch.testing.assert_close(yd[0], yy.double() + 0.3 * 2.0)

    n = 41
    c = (n - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    uu, vv = -(yy - c)[None], (xx - c)[None]  # rotation, 1 rad per time unit

    def err(dt, it):
        yd, xd = departure_points(uu, vv, dt=dt, boundary="closed", iterations=it)
        # exact: rotate back by dt
        ex = c + (xx - c) * math.cos(dt) + (yy - c) * math.sin(dt)
        ey = c - (xx - c) * math.sin(dt) + (yy - c) * math.cos(dt)
        sl = (slice(15, 26), slice(15, 26))
        return float(((xd[0] - ex)[sl].abs().max() + (yd[0] - ey)[sl].abs().max()))

    e1, e2 = err(0.2, 2), err(0.1, 2)
    assert e1 / e2 > 6  # third-order local error (~8x)
    assert err(0.1, 0) > 5 * e2  # Euler is much worse


# ----------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_cuda_matches_cpu(name):
    for boundary in BOUNDARIES:
        m = MODELS[name](boundary=boundary)
        x = smooth_state(12, 16, batch=2)
        cpu = m(x, 5)
        gpu = m.to("cuda")(x.cuda(), 5)
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-12, rtol=0)
        xg = x.cuda().requires_grad_(True)
        m(xg, 3)[:, -1, 2].square().sum().backward()
        assert torch.isfinite(xg.grad).all()
        assert adjoint_dot_product(lambda z: m(z, 3), x.cuda()) < 1e-10
        m.to("cpu")
