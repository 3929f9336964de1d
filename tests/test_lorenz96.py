import pytest
import torch

from xda_hybrid.models import CFLError, get_model
from xda_hybrid.models.lorenz96 import Lorenz96
from xda_hybrid.testing import adjoint_dot_product


def test_registry_and_shapes():
    m = get_model("lorenz96", forcing=8.0)
    x = torch.randn(3, 1, 40)
    tr = m(x, 7)
    assert tr.shape == (3, 8, 1, 40)
    assert torch.equal(tr[:, 0], x)
    assert torch.allclose(tr[:, 1], m.step(x))


def test_bad_state_and_options_raise():
    m = Lorenz96()
    with pytest.raises(ValueError, match="expects a state of shape"):
        m(torch.zeros(3, 40), 2)
    with pytest.raises(ValueError, match="dt"):
        Lorenz96(dt=0.0)
    with pytest.raises(KeyError, match="forcing"):
        m.learn("forcingg")
    with pytest.raises(ValueError, match="unknown model"):
        get_model("lorenz63")
    assert not issubclass(CFLError, RuntimeError) and issubclass(CFLError, ValueError)


def test_gradcheck_float64():
    m = Lorenz96().learn("forcing")
    x = (8 + torch.randn(2, 1, 10, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: m(z, 4), (x,))
    # gradient with respect to the forcing, through the trajectory
    def of_forcing(f):
        m2 = Lorenz96(forcing=0.0)
        m2.forcing.data = f.detach()
        return torch.func.functional_call(m2, {"forcing": f}, (x.detach(), 4))
    assert torch.autograd.gradcheck(of_forcing, (torch.tensor(8.0, dtype=torch.float64, requires_grad=True),))


def test_adjoint_dot_product():
    m = Lorenz96()
    x = 8 + torch.randn(3, 1, 40, dtype=torch.float64)
    assert adjoint_dot_product(lambda z: m(z, 20), x) < 1e-10


def test_climatology_f8():
    m = Lorenz96(forcing=8.0)
    x = 8 + torch.randn(4, 1, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tr = m(x, 6000)[:, 1000:]
    assert abs(tr.mean().item() - 2.3) < 0.15
    assert abs(tr.std().item() - 3.6) < 0.15


def test_float32_matches_float64_short_term():
    m = Lorenz96()
    x = 8 + torch.randn(2, 1, 40, dtype=torch.float64)
    a = m(x, 10)
    b = m(x.float(), 10)
    assert b.dtype == torch.float32
    assert torch.allclose(a.float(), b, atol=1e-4)


def test_rk4_convergence_order():
    # halving dt divides the error against a fine reference by ~16
    x = 8 + torch.randn(1, 1, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = Lorenz96(dt=0.05 / 64)(x, 64 * 4)[:, -1]
    e1 = (Lorenz96(dt=0.05)(x, 4)[:, -1] - ref).abs().max()
    e2 = (Lorenz96(dt=0.025)(x, 8)[:, -1] - ref).abs().max()
    assert 12 < (e1 / e2).item() < 20


@pytest.mark.gpu
def test_cuda_matches_cpu(cuda):
    m = Lorenz96()
    x = 8 + torch.randn(2, 1, 40, dtype=torch.float64)
    assert torch.allclose(m.to(cuda)(x.to(cuda), 10).cpu(), Lorenz96()(x, 10), atol=1e-10)
