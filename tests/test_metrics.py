import math

import pytest
import torch

from xda_hybrid import metrics


def test_rmse_and_trajectory_rmse():
    a = torch.zeros(2, 3, 1, 4)
    b = torch.ones(2, 3, 1, 4)
    b[1] *= 2
    assert torch.allclose(metrics.rmse(a, b), torch.tensor([1.0, 2.0]))
    tr = metrics.trajectory_rmse(a, b)
    assert tr.shape == (2, 3) and torch.allclose(tr[1], torch.full((3,), 2.0))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.rmse(a, b[:1])


def test_endpoint_and_angular_error_known_values():
    u_t, v_t = torch.ones(1, 4, 4), torch.zeros(1, 4, 4)
    # rotated by 90 degrees with the same speed: EPE = sqrt(2), angle 90
    u, v = torch.zeros(1, 4, 4), torch.ones(1, 4, 4)
    assert metrics.endpoint_error(u, v, u_t, v_t).item() == pytest.approx(math.sqrt(2))
    assert metrics.angular_error(u, v, u_t, v_t).item() == pytest.approx(90.0, abs=1e-3)
    # same direction, twice the speed: angle 0, EPE 1
    assert metrics.angular_error(2 * u_t, v_t, u_t, v_t).item() == pytest.approx(0.0, abs=1e-3)
    assert metrics.endpoint_error(2 * u_t, v_t, u_t, v_t).item() == pytest.approx(1.0)
    # Barron's convention: (1,0,1) vs (0,1,1) -> 60 degrees
    assert metrics.angular_error(u, v, u_t, v_t, kind="barron").item() == pytest.approx(60.0, abs=1e-3)
    with pytest.raises(ValueError, match="kind"):
        metrics.angular_error(u, v, u_t, v_t, kind="3d")


def test_smoothness_of_linear_and_quadratic_fields():
    yy, xx = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    s = metrics.smoothness(xx[None], torch.zeros(1, 6, 7))
    assert s["laplacian"].item() == pytest.approx(0.0)
    assert s["grad"].item() == pytest.approx(math.sqrt(6 * 6))
    assert s["div"].item() == pytest.approx(math.sqrt(5 * 6))
    s2 = metrics.smoothness((xx**2)[None], torch.zeros(1, 6, 7))
    assert s2["laplacian"].item() == pytest.approx(math.sqrt(2.0**2 * 4 * 5))
