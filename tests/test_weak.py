"""Weak-constraint 4DVAR: packing, gradients (float64 gradcheck, adjoint dot product), solver,
and weak against strong constraint on a twin whose truth dynamics the model lacks."""
import pytest
import torch

from xda_hybrid import metrics
from xda_hybrid.models.image import ImageModel
from xda_hybrid.models.lorenz96 import Lorenz96
from xda_hybrid.motion import forced_tracer_twin, fourdvar_motion
from xda_hybrid.observation import ObservationOperator, Observations
from xda_hybrid.testing import adjoint_dot_product
from xda_hybrid.variational import FourDVarCost
from xda_hybrid.variational.weak import WeakFourDVarCost, weak_fourdvar


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run many small tensor ops: one intra-op thread is as fast on an idle machine and
    far faster on a loaded one (two spinning threads on two shared cores); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _image_problem(n=8, window=4, batch=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    model = ImageModel(boundary="periodic")
    x0 = torch.cat([0.3 * torch.randn(batch, 2, n, n, generator=g, dtype=dtype),
                    torch.randn(batch, 1, n, n, generator=g, dtype=dtype)], 1)
    with torch.no_grad():
        y = model(x0, window - 1)[:, :, 2:3] + 0.05 * torch.randn(batch, window, 1, n, n, generator=g, dtype=dtype)
    y[:, :, :, :2, :3] = float("nan")
    obs = Observations.from_values(y, noise_std=0.05)
    return model, x0, obs, g


@pytest.mark.parametrize("error", ["constant", "per_step"])
def test_pack_split_roundtrip_and_zero_error_is_strong(error):
    model, x0, obs, g = _image_problem()
    op = ObservationOperator(model, channels=["tracer"])
    wc = WeakFourDVarCost(model, op, 4, grad_weight=0.5, div_weight=0.2, error=error, error_weight=3.0,
                          error_grad_weight=2.0, error_time_weight=1.0 if error == "per_step" else 0.0,
                          error_scale=0.1)
    eta = 0.01 * torch.randn(2, wc.n_error_fields, 2, 8, 8, generator=g, dtype=x0.dtype)
    c = wc.join(x0, eta)
    assert c.shape == (2, 3 + 2 * wc.n_error_fields, 8, 8)
    x_back, eta_back = wc.split(c)
    torch.testing.assert_close(x_back, x0)
    torch.testing.assert_close(eta_back, eta)
    # η = 0: same terms as the strong-constraint cost, model_error term 0
    strong = FourDVarCost(model, op, 4, grad_weight=0.5, div_weight=0.2)(x0, obs)
    weak = wc(wc.join(x0), obs)
    for k in ("obs", "grad", "div", "total"):
        torch.testing.assert_close(weak[k], strong[k])
    assert float(weak["model_error"].abs().max()) == 0.0
    # forced trajectory: the forcing enters the velocity only, one step after
    traj = wc.trajectory(c)
    step1 = model.step(x0)
    torch.testing.assert_close(traj[:, 1, :2], step1[:, :2] + eta[:, 0])
    torch.testing.assert_close(traj[:, 1, 2], step1[:, 2])


def test_model_error_penalty_value():
    model, x0, obs, g = _image_problem()
    op = ObservationOperator(model, channels=["tracer"])
    wc = WeakFourDVarCost(model, op, 4, error="per_step", error_weight=2.0, error_time_weight=3.0)
    eta = torch.zeros(2, 3, 2, 8, 8, dtype=x0.dtype)
    eta[:, 1, 0, 0, 0] = 1.0  # one unit forcing at one point, one step
    pen = wc.model_error_penalty(eta)
    # q/2 * 1 + q_t/2 * (1 + 1): the change into and out of step 1
    torch.testing.assert_close(pen, torch.full((2,), 0.5 * 2.0 + 0.5 * 3.0 * 2, dtype=x0.dtype))
    # constant forcing counts for every one of the window - 1 steps
    wc_c = WeakFourDVarCost(model, op, 4, error="constant", error_weight=2.0)
    torch.testing.assert_close(wc_c.model_error_penalty(eta[:, 1:2]), torch.full((2,), 3 * 0.5 * 2.0, dtype=x0.dtype))


@pytest.mark.parametrize("error", ["constant", "per_step"])
def test_weak_cost_gradcheck_float64(error):
    model, x0, obs, g = _image_problem(n=6, window=3, batch=1)
    op = ObservationOperator(model, channels=["tracer"])
    wc = WeakFourDVarCost(model, op, 3, grad_weight=0.3, div_weight=0.1, error=error, error_weight=2.0,
                          error_grad_weight=1.0, error_time_weight=0.5 if error == "per_step" else 0.0,
                          error_scale=0.5)
    eta = 0.05 * torch.randn(1, wc.n_error_fields, 2, 6, 6, generator=g, dtype=torch.float64)
    c = wc.join(x0, eta).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: wc(z, obs)["total"], (c,), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("error", ["constant", "per_step"])
def test_weak_trajectory_adjoint_dot_product(error):
    model, x0, obs, g = _image_problem(n=10, window=5)
    wc = WeakFourDVarCost(model, ObservationOperator(model, channels=["tracer"]), 5, error=error)
    eta = 0.05 * torch.randn(2, wc.n_error_fields, 2, 10, 10, generator=g, dtype=torch.float64)
    assert adjoint_dot_product(wc.trajectory, wc.join(x0, eta)) < 1e-11


def test_weak_on_lorenz96_all_channels():
    model = Lorenz96()
    g = torch.Generator().manual_seed(1)
    x0 = 8 + torch.randn(3, 1, 40, generator=g, dtype=torch.float64)
    wc = WeakFourDVarCost(model, ObservationOperator(model), 5, error="per_step", error_grad_weight=1.0)
    assert wc.error_channels == (0,)
    c = wc.join(x0, 0.1 * torch.randn(3, 4, 1, 40, generator=g, dtype=torch.float64))
    assert adjoint_dot_product(wc.trajectory, c) < 1e-11


def test_weak_options_are_checked():
    model = ImageModel()
    op = ObservationOperator(model, channels=["tracer"])
    with pytest.raises(ValueError, match="error must be"):
        WeakFourDVarCost(model, op, 4, error="sometimes")
    with pytest.raises(ValueError, match="error_weight"):
        WeakFourDVarCost(model, op, 4, error_weight=0.0)
    with pytest.raises(ValueError, match="per_step"):
        WeakFourDVarCost(model, op, 4, error="constant", error_time_weight=1.0)
    with pytest.raises(ValueError, match="at least 2 frames"):
        WeakFourDVarCost(model, op, 1)
    wc = WeakFourDVarCost(model, op, 4)
    with pytest.raises(ValueError, match="control must be"):
        wc.split(torch.zeros(1, 4, 8, 8))


def test_weak_fourdvar_recovers_a_steady_forcing():
    """Exact twin of the weak model (a tracer at rest set moving by a uniform forcing, fully
    observed): the fit drives the cost far down and finds the forcing."""
    from xda_hybrid.data.motion import random_field

    g = torch.Generator().manual_seed(0)
    model = ImageModel(boundary="periodic")
    tracer = random_field(16, 16, 6.0, g)
    x0 = torch.cat([torch.zeros(1, 2, 16, 16, dtype=torch.float64), tracer[None, None]], 1)
    wc = WeakFourDVarCost(model, ObservationOperator(model, channels=["tracer"]), 6, grad_weight=1e3,
                          error_weight=1e-2, error_grad_weight=1e3, error_scale=0.5)
    f = torch.zeros(1, 1, 2, 16, 16, dtype=torch.float64)
    f[:, :, 0] = 0.1  # uniform eastward forcing
    with torch.no_grad():
        y = wc.trajectory(wc.join(x0, f))[:, :, 2:3]
    obs = Observations.from_values(y, noise_std=0.05)
    res = weak_fourdvar(wc, obs, torch.cat([torch.zeros_like(x0[:, :2]), y[:, 0]], 1), max_iter=150)
    assert res.model_error.shape == (1, 1, 2, 16, 16)
    assert res.control.shape == (1, 5, 16, 16)
    mean_u = float(res.model_error[:, 0, 0].mean())
    mean_v = float(res.model_error[:, 0, 1].mean())
    assert 0.09 < mean_u < 0.11 and abs(mean_v) < 0.01, (mean_u, mean_v)
    assert float(res.x[:, :2].abs().mean()) < 0.01  # the motion is put in the forcing, not in w₀
    assert float(res.cost[0]) < 1e-4 * float(res.history[0, 0])


def test_weak_beats_strong_on_a_misspecified_twin():
    """Truth = image model + a steady forcing of the velocity tendency, which the model lacks."""
    tw = forced_tracer_twin(n_windows=2, size=32, window=10, speed=0.5, forcing=0.04, cloud_fraction=0.0,
                            tracer="texture", seed=0)
    frames, std = tw.obs.float(), tw.noise_std.float()
    ut, vt = tw.truth[:, 0, 0].float(), tw.truth[:, 0, 1].float()
    common = dict(grad_weight=1e3, max_iter=250)
    strong = fourdvar_motion(frames, std, tw.model, **common)
    weak = fourdvar_motion(frames, std, tw.model, constraint="weak", error_weight=10.0,
                           error_grad_weight=1e3, error_scale=0.03, **common)
    epe_s = metrics.endpoint_error(strong.u, strong.v, ut, vt).mean().item()
    epe_w = metrics.endpoint_error(weak.u, weak.v, ut, vt).mean().item()
    ae_s = metrics.angular_error(strong.u, strong.v, ut, vt).mean().item()
    ae_w = metrics.angular_error(weak.u, weak.v, ut, vt).mean().item()
    # measured: EPE 0.084 vs 0.105, AE 23.0° vs 28.4° (mean true speed 0.20)
    assert epe_w < 0.9 * epe_s, (epe_w, epe_s)
    assert ae_w < 0.9 * ae_s, (ae_w, ae_s)
    # the estimated forcing points the way of the true one
    f_est = weak.extra["model_error"][:, 0]
    cos = (f_est * tw.forcing.float()).sum() / (f_est.norm() * tw.forcing.float().norm())
    assert cos > 0.2, float(cos)


@pytest.mark.parametrize("boundary", ["periodic", "closed"])
@pytest.mark.parametrize("n_incs", [1, 4])
def test_image_forced_trajectory_equals_stepping(boundary, n_incs):
    # ImageModel.forced cleans each increment once instead of the velocity at every step: it equals repeated
    # step(x) + δ, but for the closed border cells' velocity (0 here; step zeroes it before using it)
    g = torch.Generator().manual_seed(3)
    model = ImageModel(boundary=boundary, diffusion=0.05)
    x0 = torch.cat([0.4 * torch.randn(2, 2, 9, 11, generator=g, dtype=torch.float64),
                    torch.randn(2, 1, 9, 11, generator=g, dtype=torch.float64)], 1)
    incs = [0.05 * torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64) for _ in range(n_incs)]
    got = model.forced(x0, 4, incs)
    x, want = x0, [x0]
    for k in range(4):
        x = model.step(x) + incs[0 if n_incs == 1 else k]
        want.append(x)
    want = torch.stack(want, 1)
    inner = (slice(None), slice(1, None), slice(0, 2), slice(1, -1), slice(1, -1))
    if boundary == "periodic":
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    else:
        torch.testing.assert_close(got[:, :, 2], want[:, :, 2], rtol=0, atol=1e-12)
        torch.testing.assert_close(got[inner], want[inner], rtol=0, atol=1e-12)
        assert float(got[:, 1:, :2, 0].abs().max()) == 0.0 and float(want[:, 1:, :2, 0].abs().max()) > 1e-3
    with pytest.raises(ValueError, match="increments"):
        model.forced(x0, 4, incs * 2)  # neither 1 nor n_steps increments


def test_weak_cost_gradcheck_closed_border():
    g = torch.Generator().manual_seed(4)
    model = ImageModel(boundary="closed")
    x0 = torch.cat([0.3 * torch.randn(1, 2, 6, 7, generator=g, dtype=torch.float64),
                    torch.randn(1, 1, 6, 7, generator=g, dtype=torch.float64)], 1)
    y = torch.randn(1, 3, 1, 6, 7, generator=g, dtype=torch.float64)
    obs = Observations.from_values(y, noise_std=0.1)
    wc = WeakFourDVarCost(model, ObservationOperator(model, channels=["tracer"]), 3, grad_weight=0.3,
                          error="per_step", error_weight=2.0, error_scale=0.5)
    eta = 0.05 * torch.randn(1, 2, 2, 6, 7, generator=g, dtype=torch.float64)
    c = wc.join(x0, eta).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: wc(z, obs)["total"], (c,), eps=1e-6, atol=1e-5, rtol=1e-4)
    assert adjoint_dot_product(wc.trajectory, wc.join(x0, eta).detach()) < 1e-11
