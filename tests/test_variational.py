"""Observation handling, the 4DVAR cost and the batched L-BFGS solver."""
import warnings

import pytest
import torch

from xda_hybrid.models import get_model
from xda_hybrid.models.lorenz96 import Lorenz96
from xda_hybrid.observation import ObservationOperator, Observations
from xda_hybrid.testing import adjoint_dot_product
from xda_hybrid.variational import Background, FourDVarCost, fourdvar, lbfgs
from xda_hybrid.variational.regularisers import divergence, divergence_penalty, gradient_penalty


def rosenbrock(x):
    return ((1 - x[:, :-1]) ** 2 + 100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2).sum(1)


# --- observations ---------------------------------------------------------------------------

def test_observations_from_nan_values_keeps_input():
    y = torch.tensor([[[[1.0, float("nan"), 3.0]]]])
    y_copy = y.clone()
    obs = Observations.from_values(y, noise_std=0.5)
    assert torch.equal(torch.isnan(y), torch.isnan(y_copy))  # input untouched
    assert torch.equal(obs.values, torch.tensor([[[[1.0, 0.0, 3.0]]]]))
    assert torch.equal(obs.inv_var, torch.tensor([[[[4.0, 0.0, 4.0]]]]))
    assert obs.mask.sum() == 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"noise_std": 0.0}, "noise_std"),
        ({"noise_std": -1.0}, "noise_std"),
        ({}, "exactly one"),
        ({"noise_std": 1.0, "inv_var": torch.ones(1)}, "exactly one"),
        ({"inv_var": -torch.ones(1)}, "inv_var"),
    ],
)
def test_observations_bad_noise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Observations.from_values(torch.ones(1, 2, 1, 3), **kwargs)


def test_observations_all_missing_or_inf():
    with pytest.raises(ValueError, match="all observations are missing"):
        Observations.from_values(torch.full((1, 2, 1, 3), float("nan")), noise_std=1.0)
    with pytest.raises(ValueError, match="inf"):
        Observations.from_values(torch.tensor([[[[float("inf")]]]]), noise_std=1.0)


def test_observation_operator_selects_steps_and_channels():
    m = Lorenz96()
    op = ObservationOperator(m, channels=["x"], steps=[0, 3, 6])
    traj = torch.arange(2 * 7 * 1 * 4.0).reshape(2, 7, 1, 4)
    assert torch.equal(op(traj), traj[:, [0, 3, 6]])
    # irregular steps (advanced indexing) and a channel subset of the image model (a slice)
    assert torch.equal(ObservationOperator(m, steps=[0, 1, 5])(traj), traj[:, [0, 1, 5]])
    img = get_model("image")
    traj3 = torch.rand(2, 4, 3, 5, 5, requires_grad=True)
    sel = ObservationOperator(img, channels=["tracer"], steps=[1, 3])(traj3)
    assert torch.equal(sel, traj3[:, [1, 3]][:, :, [2]])
    sel.sum().backward()
    want = torch.zeros_like(traj3)
    want[:, [1, 3], 2] = 1
    assert torch.equal(traj3.grad, want)
    with pytest.raises(KeyError, match="no state variable"):
        ObservationOperator(m, channels=["u"])
    with pytest.raises(ValueError, match="increasing"):
        ObservationOperator(m, steps=[3, 1])


# --- cost -----------------------------------------------------------------------------------

def l96_problem(nb=3, window=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = Lorenz96()
    x = 8 + torch.randn(nb, 1, 12, generator=g, dtype=torch.float64)
    truth = m(x, window - 1).detach()
    y = truth + torch.randn(truth.shape, generator=g, dtype=torch.float64)
    y[torch.rand(y.shape, generator=g) < 0.5] = float("nan")
    cost = FourDVarCost(m, ObservationOperator(m), window)
    return m, cost, Observations.from_values(y, noise_std=1.0), x, truth


def test_cost_obs_term_by_hand():
    m, cost, obs, x, truth = l96_problem()
    terms = cost(x, obs)
    by_hand = 0.5 * (obs.inv_var * (truth - obs.values) ** 2).flatten(1).sum(1)
    assert torch.allclose(terms["obs"], by_hand)
    assert torch.allclose(terms["total"], by_hand)
    xb = torch.zeros_like(x)
    terms_b = cost(x, obs, Background(xb, 2.0))
    assert torch.allclose(terms_b["background"], (x**2).flatten(1).sum(1))
    assert torch.allclose(terms_b["total"], by_hand + terms_b["background"])


def test_cost_windows_are_independent():
    m, cost, obs, x, _ = l96_problem()
    whole = cost(x, obs)["total"]
    for i in range(x.shape[0]):
        assert torch.allclose(cost(x[i : i + 1], obs[i : i + 1])["total"], whole[i : i + 1])


def test_cost_gradcheck_and_adjoint():
    m, cost, obs, x, _ = l96_problem(nb=2, window=4)
    xb = Background(torch.zeros_like(x), 0.1)
    f = lambda z: cost(z, obs, xb)["total"]  # noqa: E731
    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(),))
    assert adjoint_dot_product(f, x) < 1e-10


def test_cost_checks_shapes():
    m, cost, obs, x, _ = l96_problem()
    with pytest.raises(ValueError, match="observations must have shape"):
        cost(x[:2], obs)
    with pytest.raises(ValueError, match="velocity"):
        FourDVarCost(m, ObservationOperator(m), 5, grad_weight=1.0)
    with pytest.raises(ValueError, match="outside a window"):
        FourDVarCost(m, ObservationOperator(m, steps=[0, 9]), 5)


def test_regularisers_known_fields():
    ny, nx = 5, 6
    yy, xx = torch.meshgrid(torch.arange(ny, dtype=torch.float64), torch.arange(nx, dtype=torch.float64), indexing="ij")
    # uniform flow: no gradient, no divergence
    u, v = torch.ones(1, ny, nx), 2 * torch.ones(1, ny, nx)
    assert gradient_penalty(u, v).item() == 0 and divergence_penalty(u, v).item() == 0
    # u = x: du/dx = 1 everywhere -> divergence 1 on the (ny-1)(nx-1) interior, gradient ½ ny (nx-1)
    u, v = xx[None], torch.zeros(1, ny, nx, dtype=torch.float64)
    assert torch.allclose(divergence(u, v), torch.ones(1, ny - 1, nx - 1, dtype=torch.float64))
    assert gradient_penalty(u, v).item() == pytest.approx(0.5 * ny * (nx - 1))
    # solid rotation u = -y, v = x is divergence-free
    assert divergence_penalty(-yy[None], xx[None]).item() == pytest.approx(0.0)


# --- L-BFGS ---------------------------------------------------------------------------------

def test_lbfgs_rosenbrock_batched_equals_single():
    # row 0 starts in the basin of the known local minimum of 4-D Rosenbrock (f ≈ 3.70)
    x0 = torch.tensor([[-1.2, 1.0, 0.5, -0.3], [0.5, 0.5, 0.5, 0.5], [2.0, -1.0, 1.0, 0.0]], dtype=torch.float64)
    x0_copy = x0.clone()
    r = lbfgs(rosenbrock, x0, max_iter=300, gtol=1e-10)
    assert torch.equal(x0, x0_copy)
    assert r.history.shape[1] == 3 and torch.all(r.history[1:] <= r.history[:-1] + 1e-12)
    for i in range(3):
        ri = lbfgs(rosenbrock, x0[i : i + 1], max_iter=300, gtol=1e-10)
        assert torch.allclose(ri.x, r.x[i : i + 1], atol=1e-8)
        assert ri.n_iter.item() == r.n_iter[i].item()
    assert r.cost[0].item() == pytest.approx(3.7014, abs=1e-3)
    assert torch.allclose(r.x[1:], torch.ones(2, 4, dtype=torch.float64), atol=1e-5)
    assert r.converged.all() and r.n_eval >= r.n_iter.max()


def test_lbfgs_quadratic_in_few_iterations():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 20, 20, generator=g, dtype=torch.float64)
    h = a @ a.transpose(1, 2) + 0.5 * torch.eye(20, dtype=torch.float64)
    b = torch.randn(4, 20, generator=g, dtype=torch.float64)
    f = lambda x: 0.5 * torch.einsum("bi,bij,bj->b", x, h, x) - (b * x).sum(1)  # noqa: E731
    r = lbfgs(f, torch.zeros(4, 20, dtype=torch.float64), max_iter=200, history_size=20, gtol=1e-12, ftol=0.0)
    xs = torch.linalg.solve(h, b)
    assert torch.allclose(r.x, xs, atol=1e-6)


def test_lbfgs_rejects_nonfinite_trials_and_warns():
    # cost is NaN beyond x > 1; the minimum of (x-3)^2 restricted to the finite region is at the wall
    def f(x):
        val = ((x - 3.0) ** 2).sum(1)
        return torch.where((x > 1.0).any(1), torch.full_like(val, float("nan")), val)

    with pytest.warns(RuntimeWarning, match="not finite"):
        r = lbfgs(f, torch.zeros(2, 3, dtype=torch.float64), max_iter=50)
    assert torch.isfinite(r.x).all() and torch.isfinite(r.cost).all()
    assert (r.x <= 1.0).all() and (r.cost < 27.0).all()


def test_lbfgs_nonfinite_start_raises():
    with pytest.raises(ValueError, match="not finite at the starting point"):
        lbfgs(lambda x: (x**2).sum(1) * float("inf"), torch.ones(2, 2))


def test_fourdvar_reduces_cost_and_error():
    m, cost, obs, x, truth = l96_problem(nb=4, window=8)
    x_init = x + 1.0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    r = fourdvar(cost, obs, x_init, max_iter=60)
    j0 = cost(x_init, obs)["total"]
    assert (r.cost < j0).all()
    assert torch.allclose(r.cost, cost(r.x, obs)["total"].detach())
    # the analysis fits the observations at least as well as the truth does ...
    assert (r.cost <= cost(x, obs)["total"] + 1e-6).all()
    # ... and its trajectory is much closer to the truth than the first guess's
    err0 = (cost.trajectory(x_init) - truth).pow(2).mean().sqrt()
    err1 = (cost.trajectory(r.x) - truth).pow(2).mean().sqrt()
    assert err1 < 0.5 * err0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r2 = fourdvar(cost, obs, r.x, max_iter=5)  # warm start from the analysis moves little
    assert (r2.cost <= r.cost + 1e-9).all()


@pytest.mark.slow
def test_compiled_cost_equals_eager_and_leaves_the_model_alone():
    m = Lorenz96()
    g = torch.Generator().manual_seed(3)
    x = 8 + torch.randn(2, 1, 12, generator=g, dtype=torch.float64)
    truth = m(x, 3).detach()
    obs = Observations.from_values(truth + torch.randn(truth.shape, generator=g, dtype=torch.float64), noise_std=1.0)
    eager = FourDVarCost(m, ObservationOperator(m), 4)
    compiled = FourDVarCost(m, ObservationOperator(m), 4, compile=True)
    assert type(compiled.model) is Lorenz96 and list(compiled.state_dict()) == list(eager.state_dict())
    x1 = (x + 0.5).requires_grad_(True)
    x2 = (x + 0.5).requires_grad_(True)
    c1, c2 = eager(x1, obs)["total"], compiled(x2, obs)["total"]
    torch.testing.assert_close(c2, c1, rtol=1e-10, atol=0)
    c1.sum().backward()
    c2.sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-10, atol=1e-12)
