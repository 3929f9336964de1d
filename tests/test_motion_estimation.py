"""Motion estimation from tracer images: 4DVAR (Tikhonov, stream function), gap filling,
optical-flow baselines (skipped without OpenCV), and the learned inversion / hybrid drivers."""
import math

import pytest
import torch

from xda_hybrid import metrics
from xda_hybrid.data.motion import random_field
from xda_hybrid.models.image import ImageModel
from xda_hybrid.motion import (
    StreamFunctionCost,
    fill_gaps,
    forced_tracer_twin,
    fourdvar_motion,
    motion_first_guess,
    motion_observations,
    stream_to_velocity,
    velocity_to_stream,
)
from xda_hybrid.observation import ObservationOperator
from xda_hybrid.testing import adjoint_dot_product
from xda_hybrid.variational import FourDVarCost
from xda_hybrid.variational.regularisers import divergence


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run many small tensor ops: one intra-op thread is as fast on an idle machine and
    far faster on a loaded one (two spinning threads on two shared cores); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def twin():
    """Two 32×32 windows of 10 frames: smooth flow (mean speed ≈ 0.2 cell/frame), textured
    tracer, 30 % moving clouds, noise 2 % of the tracer std; the model is the truth's."""
    return forced_tracer_twin(n_windows=2, size=32, window=10, speed=0.5, cloud_fraction=0.3, noise=0.02,
                              tracer="texture", seed=11)


def _scores(est, tw):
    ut, vt = tw.truth[:, 0, 0].float(), tw.truth[:, 0, 1].float()
    epe = metrics.endpoint_error(est.u, est.v, ut, vt).mean().item()
    ae = metrics.angular_error(est.u, est.v, ut, vt).mean().item()
    speed = torch.sqrt(ut**2 + vt**2).mean().item()
    return epe, ae, speed


# --- frames, first guess -----------------------------------------------------------------------

def test_fill_gaps_last_and_nearest():
    f = torch.tensor([[[[1.0]], [[math.nan]], [[3.0]], [[math.nan]]]])  # (1, 4, 1, 1)
    assert fill_gaps(f, "last").flatten().tolist() == [1.0, 1.0, 3.0, 3.0]
    assert fill_gaps(f, "nearest").flatten().tolist() == [1.0, 1.0, 3.0, 3.0]
    f2 = torch.tensor([[[[math.nan]], [[2.0]], [[math.nan]], [[math.nan]], [[5.0]]]])
    assert fill_gaps(f2, "last").flatten().tolist() == [2.0, 2.0, 2.0, 2.0, 5.0]
    assert fill_gaps(f2, "nearest").flatten().tolist() == [2.0, 2.0, 2.0, 5.0, 5.0]


def test_fill_gaps_inpaints_never_observed_pixels():
    f = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(1, 3, 1, 1)
    f[:, :, 1:3, 1:3] = math.nan  # hidden in every frame
    out = fill_gaps(f)
    assert not torch.isnan(out).any()
    kept = ~torch.isnan(f)
    assert torch.equal(out[kept], f[kept])
    assert float(out.min()) >= 0 and float(out.max()) <= 15  # interpolated within the data


def test_motion_first_guess_is_zero_velocity_and_first_frame(twin):
    x = motion_first_guess(twin.obs)
    assert x.shape == (2, 3, 32, 32)
    assert float(x[:, :2].abs().max()) == 0.0
    seen = ~torch.isnan(twin.obs[:, 0, 0])
    assert torch.equal(x[:, 2][seen], twin.obs[:, 0, 0][seen])
    assert not torch.isnan(x).any()
    # the first frame as fill_gaps fills it (both modes agree there), pixels never seen inpainted
    g = torch.Generator().manual_seed(4)
    fr = torch.rand(3, 5, 12, 13, generator=g, dtype=torch.float64)
    fr[torch.rand(fr.shape, generator=g) < 0.6] = float("nan")
    fr[0, :, 2:5, 3:7] = float("nan")  # a block never observed in the window
    for mode in ("nearest", "last"):
        torch.testing.assert_close(motion_first_guess(fr)[:, 2], fill_gaps(fr, mode)[:, 0], rtol=0, atol=0)


# --- stream function ---------------------------------------------------------------------------

@pytest.mark.parametrize("boundary", ["periodic", "closed"])
def test_stream_velocity_is_exactly_divergence_free_and_inverts(boundary):
    g = torch.Generator().manual_seed(0)
    psi = random_field(20, 24, 8.0, g)[None].repeat(2, 1, 1)
    u, v = stream_to_velocity(psi, boundary)
    assert float(divergence(u, v).abs().max()) < 1e-12
    if boundary == "periodic":  # the wrapped divergence too
        d = (torch.roll(u, -1, -1) - u) + (torch.roll(v, -1, -2) - v)
        assert float(d.abs().max()) < 1e-12
    back = velocity_to_stream(u, v, boundary)
    torch.testing.assert_close(back, psi - psi.mean(dim=(-2, -1), keepdim=True), atol=1e-8, rtol=0)


@pytest.mark.parametrize("boundary", ["periodic", "closed"])
def test_stream_cost_gradients(boundary):
    model = ImageModel(boundary=boundary)
    cost = StreamFunctionCost(FourDVarCost(model, ObservationOperator(model, channels=["tracer"]), 3,
                                           grad_weight=0.5))
    g = torch.Generator().manual_seed(1)
    c = torch.randn(1, 2, 8, 8, generator=g, dtype=torch.float64)
    assert adjoint_dot_product(cost.trajectory, c) < 1e-11
    y = torch.randn(1, 3, 1, 8, 8, generator=g, dtype=torch.float64)
    obs = motion_observations(y, 0.5)
    assert torch.autograd.gradcheck(lambda z: cost(z, obs)["total"], (c.clone().requires_grad_(True),),
                                    eps=1e-6, atol=1e-5, rtol=1e-4)
    # from_inner/to_inner round trip on a divergence-free control
    inner = cost.to_inner(c)
    torch.testing.assert_close(cost.to_inner(cost.from_inner(inner)), inner, atol=1e-8, rtol=0)


# --- 4DVAR on the image model --------------------------------------------------------------------

def test_tikhonov_fourdvar_recovers_the_velocity(twin):
    est = fourdvar_motion(twin.obs.float(), twin.noise_std.float(), twin.model, grad_weight=1e3, max_iter=200)
    epe, ae, speed = _scores(est, twin)
    # zero-velocity first guess: EPE = mean speed (0.194); measured EPE 0.076, AE 20°
    assert epe < 0.5 * speed, (epe, speed)
    assert ae < 30.0, ae
    assert est.state.shape == (2, 3, 32, 32) and est.n_iter.tolist() == [200, 200]
    assert est.cost.shape == (2,) and len(est.extra["stages"]) == 3
    # the Tikhonov cost went down from the first guess
    assert float(est.extra["history"][-1].max()) < float(est.extra["history"][0].min())


def test_stream_function_fourdvar_is_divergence_free_and_works(twin):
    est = fourdvar_motion(twin.obs.float(), twin.noise_std.float(), twin.model, grad_weight=1e3, max_iter=200,
                          control="stream")
    assert est.method == "4dvar-stream"
    d = (torch.roll(est.u, -1, -1) - est.u) + (torch.roll(est.v, -1, -2) - est.v)  # periodic twin
    assert float(d.abs().max()) < 1e-5 * float(est.u.abs().max())
    u, v = stream_to_velocity(est.extra["psi"], "periodic")
    torch.testing.assert_close(u, est.u)
    torch.testing.assert_close(v, est.v)
    epe, ae, speed = _scores(est, twin)
    # measured EPE 0.040 (AE 11°): the divergence-free control is a strong regulariser here
    assert epe < 0.3 * speed, (epe, speed)


def test_fourdvar_motion_options_are_checked(twin):
    with pytest.raises(ValueError, match="control must be"):
        fourdvar_motion(twin.obs, twin.noise_std, twin.model, control="psi")
    with pytest.raises(ValueError, match="constraint must be"):
        fourdvar_motion(twin.obs, twin.noise_std, twin.model, constraint="soft")
    with pytest.raises(ValueError, match="noise_std"):
        fourdvar_motion(twin.obs)


# --- optical flow ----------------------------------------------------------------------------------

def _translating(n=48, shift=(0.6, -0.4), frames=5, seed=0):
    """A periodic texture translated by ``shift = (along x, along y)`` cells per frame (exact Fourier shift)."""
    g = torch.Generator().manual_seed(seed)
    f = random_field(n, n, 10.0, g)
    k = 2 * math.pi * torch.fft.fftfreq(n, dtype=torch.float64)
    ky, kx = k[:, None], k[None, :]
    F = torch.fft.fft2(f)
    out = [torch.fft.ifft2(F * torch.exp(-1j * (kx * shift[0] + ky * shift[1]) * t)).real for t in range(frames)]
    return torch.stack(out)[None]


@pytest.mark.parametrize("method", ["farneback", "dis"])
def test_optical_flow_shape_sign_and_units(method):
    pytest.importorskip("cv2")
    from xda_hybrid.motion import optical_flow

    frames = _translating()
    frames[:, 2, :, 10:20] = math.nan  # a cloud
    est = optical_flow(frames, method, periodic=True)
    assert est.u.shape == (1, 48, 48) and est.v.shape == (1, 48, 48)
    assert est.u.dtype == frames.dtype
    assert abs(est.u.median().item() - 0.6) < 0.1, est.u.median().item()
    assert abs(est.v.median().item() + 0.4) < 0.1, est.v.median().item()
    # units: dx = 2 length units per cell, dt = 0.5 time units per frame → velocity × 4
    est2 = optical_flow(frames, method, periodic=True, dx=2.0, dy=2.0, dt=0.5)
    torch.testing.assert_close(est2.u, 4 * est.u)
    with pytest.raises(ValueError, match="method"):
        optical_flow(frames, "lucas-kanade")


def test_optical_flow_missing_cv2_message(monkeypatch):
    import builtins

    from xda_hybrid.motion import optical_flow

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "cv2":
            raise ImportError("no cv2")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match="opencv-python-headless"):
        optical_flow(_translating(n=16, frames=2))


# --- learned inversion and hybrid (drivers over xda_hybrid.learning) ------------------------------

def test_learned_and_hybrid_drivers():
    from xda_hybrid.motion import MotionInversionNetwork, hybrid_motion, learned_motion, train_motion_inversion

    tw = forced_tracer_twin(n_windows=4, size=16, window=4, speed=0.5, cloud_fraction=0.3, tracer="texture",
                            seed=2)
    frames, std = tw.obs.float(), tw.noise_std.float()
    net, res = train_motion_inversion(frames, std, tw.model, grad_weight=1e3, width=4, levels=1, epochs=3,
                                      batch_size=2, val_fraction=0.0, continuation=(10.0, 1.0))
    assert isinstance(net, MotionInversionNetwork)
    assert [h["stage_factor"] for h in res.history] == [10.0, 1.0, 1.0]
    # an untrained residual network returns the classical first guess (0, 0, I₀)
    fresh = MotionInversionNetwork.from_config(net.config).fit_normalisation(
        motion_observations(frames, std), unobserved_scale=0.2)
    torch.testing.assert_close(learned_motion(fresh, frames, std).state, motion_first_guess(frames))
    est = learned_motion(net, frames, std)
    assert est.u.shape == (4, 16, 16) and torch.isfinite(est.state).all() and est.method == "learned"
    hyb = hybrid_motion(net, frames, std, tw.model, max_iter=5, grad_weight=1e3)
    assert hyb.method == "hybrid" and hyb.n_iter.max() <= 5
    # the hybrid never ends above the network's own cost
    from xda_hybrid.motion import motion_cost

    cost = motion_cost(tw.model, 4, grad_weight=1e3)
    obs = motion_observations(frames, std)
    with torch.no_grad():
        assert (cost(hyb.state, obs)["total"] <= cost(est.state, obs)["total"] * (1 + 1e-5)).all()


@pytest.mark.parametrize("boundary", ["periodic", "closed"])
def test_stream_head_network_is_divergence_free_learns_and_round_trips(boundary):
    from xda_hybrid.motion import MotionInversionNetwork, train_motion_inversion

    tw = forced_tracer_twin(n_windows=4, size=16, window=4, speed=0.5, cloud_fraction=0.3, tracer="texture",
                            seed=2)
    model = ImageModel(boundary=boundary)
    frames, std = tw.obs.float(), tw.noise_std.float()
    net, res = train_motion_inversion(frames, std, model, grad_weight=1e3, width=4, levels=1, epochs=4,
                                      batch_size=2, val_fraction=0.0, continuation=None, lr=3e-3,
                                      velocity="stream")
    assert net.config["velocity"] == "stream" and net.config["boundary"] == boundary
    obs = motion_observations(frames, std)
    with torch.no_grad():
        x = net(obs)
    u, v = x[:, 0].double(), x[:, 1].double()
    assert u.abs().max() > 1e-4  # trained away from the zero first guess
    assert divergence(u, v).abs().max() < 1e-5 * u.abs().max()
    # the cost went down (observations only) and the saved configuration rebuilds the stream head
    assert res.history[-1]["train_cost"] < res.history[0]["train_cost"]
    again = MotionInversionNetwork.from_config(net.config)
    again.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again(obs), x)
    with pytest.raises(ValueError, match="velocity"):
        MotionInversionNetwork.from_config({**net.config, "velocity": "potential"})
    with pytest.raises(ValueError, match="square"):
        train_motion_inversion(frames, std, ImageModel(dx=1.0, dy=2.0), epochs=1, velocity="stream")
