"""Tests of the learning layer on small Lorenz96 twins (truth generated here with the model)."""
from __future__ import annotations

import dataclasses
import inspect
import json
import os

import pytest
import torch

from xda_hybrid import metrics
from xda_hybrid.learning import (
    CircularCNN1d,
    InversionNetwork,
    NeuralLorenz96,
    TrainingData,
    UNet2d,
    background_inv_var,
    cycle,
    cycled_fourdvar,
    cycled_network,
    cycled_training_data,
    evaluate_obs_cost,
    first_guess,
    fit_supervised,
    hybrid,
    load_checkpoint,
    over4dvar,
    predict,
    train,
)
from xda_hybrid.models.lorenz96 import Lorenz96
from xda_hybrid.models.shallow_water import ShallowWater
from xda_hybrid.observation import ObservationOperator, Observations
from xda_hybrid.variational import FourDVarCost, fourdvar

WINDOW = 10
NET = dict(width=32, depth=3, kernel_size=5)


def l96_twin(n_windows, n_sites=20, forcing=8.0, obs_fraction=0.5, noise=1.0, gap=5, seed=0):
    """Truth windows (n, WINDOW, 1, n_sites) and their observations, float32."""
    g = torch.Generator().manual_seed(seed)
    model = Lorenz96(forcing=forcing, dt=0.05)
    x = forcing + torch.randn(1, 1, n_sites, generator=g, dtype=torch.float64)
    with torch.no_grad():
        x = model(x, 1000)[:, -1]
        traj = model(x, n_windows * (WINDOW + gap) - 1)[0]
    truth = traj.reshape(n_windows, WINDOW + gap, 1, n_sites)[:, :WINDOW]
    observed = torch.rand(truth.shape, generator=g, dtype=torch.float64) < obs_fraction
    y = truth + noise * torch.randn(truth.shape, generator=g, dtype=torch.float64)
    y = torch.where(observed, y, torch.full_like(y, float("nan")))
    return truth.float(), Observations.from_values(y.float(), noise_std=noise)


def setup(forcing=8.0):
    model = Lorenz96(forcing=forcing, dt=0.05)
    op = ObservationOperator(model)
    return model, op, FourDVarCost(model, op, WINDOW)


def traj_rmse(cost, x0, truth):
    with torch.no_grad():
        return float(metrics.rmse(cost.trajectory(x0.float()), truth).mean())


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are tiny: extra threads only add contention on shared machines."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def twin():
    return l96_twin(320)


@pytest.fixture(scope="module")
def trained(twin):
    truth, obs = twin
    model, op, cost = setup()
    net = InversionNetwork.for_model(model, WINDOW, op, **NET).fit_normalisation(obs)
    res = train(net, cost, TrainingData(obs), epochs=25, batch_size=32, lr=3e-3, seed=0)
    return net, cost, res


# ---------------------------------------------------------------- networks
def test_cnn1d_shape_and_circular_equivariance():
    torch.manual_seed(0)
    net = CircularCNN1d(3, 2, width=8, depth=2, kernel_size=5)
    x = torch.randn(4, 3, 17)
    y = net(x)
    assert y.shape == (4, 2, 17)
    for shift in (1, 5, -3):
        torch.testing.assert_close(net(torch.roll(x, shift, -1)), torch.roll(y, shift, -1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        CircularCNN1d(1, 1, kernel_size=4)


@pytest.mark.parametrize("padding", ["zeros", "replicate", "circular"])
@pytest.mark.parametrize("size", [(16, 16), (13, 22)])
def test_unet2d_shapes(padding, size):
    net = UNet2d(5, 3, width=4, levels=2, padding=padding)
    y = net(torch.randn(2, 5, *size))
    assert y.shape == (2, 3, *size) and torch.isfinite(y).all()


def test_unet2d_padding_changes_borders_only():
    torch.manual_seed(0)
    a = UNet2d(1, 1, width=4, levels=0, padding="zeros")
    b = UNet2d(1, 1, width=4, levels=0, padding="circular")
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 12, 12)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya[..., 2:-2, 2:-2], yb[..., 2:-2, 2:-2])  # two 3×3 convs: 2-cell halo
    assert (ya - yb)[..., 0, :].abs().max() > 1e-4
    with pytest.raises(ValueError):
        UNet2d(1, 1, padding="wrap")


def test_inversion_network_outputs_unobserved_channels():
    sw = ShallowWater(dx=10e3)
    op = ObservationOperator(sw, channels=["eta"], steps=[0, 3, 6, 9])
    net = InversionNetwork.for_model(sw, 10, op, width=4, levels=1)
    assert net.config["backbone"] == "unet2d" and net.config["backbone_options"]["padding"] == "zeros"
    raw = torch.randn(3, 4, 1, 12, 12)
    raw[:, :, :, :4] = float("nan")  # a cloud gap
    obs = Observations.from_values(raw, noise_std=0.05)
    net.fit_normalisation(obs, unobserved_scale=0.3)
    x = net(obs)
    assert x.shape == (3, 3, 12, 12) and torch.isfinite(x).all()
    assert net.out_scale.tolist()[:2] == pytest.approx([0.3, 0.3])
    l96 = InversionNetwork.for_model(Lorenz96(), WINDOW, width=4, depth=1)
    assert l96.config["backbone"] == "cnn1d"


def test_background_channels():
    model, op, _ = setup()
    net = InversionNetwork.for_model(model, WINDOW, op, background=True, width=4, depth=1)
    _, obs = l96_twin(4)
    xb = torch.randn(4, 1, 20)
    assert net(obs, xb).shape == (4, 1, 20)
    assert net.inputs(obs, xb).shape == (4, 2 * WINDOW + 1, 20)
    with pytest.raises(ValueError):
        net(obs)


def test_normalisation_uses_observed_values_only():
    model, op, _ = setup()
    _, obs = l96_twin(50)
    net = InversionNetwork.for_model(model, WINDOW, op, width=4, depth=1).fit_normalisation(obs)
    vals = obs.values[obs.mask]
    assert float(net.obs_mean[0]) == pytest.approx(float(vals.mean()), rel=1e-4)
    assert float(net.obs_std[0]) == pytest.approx(float(vals.std()), rel=1e-4)
    assert float(net.out_scale[0]) == pytest.approx(float(vals.std()), rel=1e-4)
    # garbage at unobserved points (zero weight) changes neither the statistics nor the output
    junk = Observations(torch.where(obs.mask, obs.values, torch.full_like(obs.values, 1e6)), obs.inv_var)
    other = InversionNetwork.for_model(model, WINDOW, op, width=4, depth=1).fit_normalisation(junk)
    torch.testing.assert_close(other.obs_mean, net.obs_mean)
    torch.testing.assert_close(other(junk), net(obs))


def test_config_round_trip():
    model, op, _ = setup()
    net = InversionNetwork.for_model(model, WINDOW, op, width=8, depth=2, seed=3)
    _, obs = l96_twin(8)
    net.fit_normalisation(obs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01)
    config = json.loads(json.dumps(net.config))
    clone = InversionNetwork.from_config(config)
    clone.load_state_dict(net.state_dict())
    torch.testing.assert_close(clone(obs), net(obs), rtol=0, atol=0)


# ---------------------------------------------------------------- training
def test_training_data_has_no_truth_slot():
    fields = {f.name for f in dataclasses.fields(TrainingData)}
    assert fields == {"obs", "background"}
    assert {f.name for f in dataclasses.fields(Observations)} == {"values", "inv_var"}
    for fn in (train, over4dvar):
        assert not any("true" in p or "truth" in p for p in inspect.signature(fn).parameters)


def test_training_reduces_cost_and_beats_first_guess(twin, trained):
    truth, obs = twin
    net, cost, res = trained
    h = res.history
    assert len(h) == 25 and set(h[0]) >= {"epoch", "train_cost", "val_obs_cost", "lr", "time", "parameters"}
    assert h[-1]["train_cost"] < 0.5 * h[0]["train_cost"]
    assert h[-1]["val_obs_cost"] < h[0]["val_obs_cost"]
    assert h[-1]["lr"] < h[0]["lr"]  # cosine schedule
    _, op, _ = setup()
    fg = traj_rmse(cost, first_guess(obs, op, 1), truth)
    learned = traj_rmse(cost, predict(net, obs), truth)
    assert learned < 0.4 * fg, (learned, fg)


def test_nan_truth_trains():
    truth, obs = l96_twin(64, seed=4)
    truth.fill_(float("nan"))  # the truth is unknown: training must not need it
    model, op, cost = setup()
    net = InversionNetwork.for_model(model, WINDOW, op, width=8, depth=1).fit_normalisation(obs)
    res = train(net, cost, TrainingData(obs), epochs=3, batch_size=16)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert res.history[-1]["train_cost"] < res.history[0]["train_cost"]


def _small_run(obs, **kw):
    model, op, cost = setup()
    net = InversionNetwork.for_model(model, WINDOW, op, width=8, depth=1).fit_normalisation(obs)
    kw.setdefault("lr", 3e-3)
    res = train(net, cost, TrainingData(obs), batch_size=16, **kw)
    return net, res


def test_seeded_determinism():
    _, obs = l96_twin(64, seed=5)
    a, _ = _small_run(obs, epochs=3, seed=1)
    b, _ = _small_run(obs, epochs=3, seed=1)
    c, _ = _small_run(obs, epochs=3, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    _, obs = l96_twin(64, seed=6)
    full, rfull = _small_run(obs, epochs=4, seed=0, patience=10)
    path = tmp_path / "ck" / "train.pt"
    part, rpart = _small_run(obs, epochs=4, seed=0, patience=10, checkpoint=path, checkpoint_every=1, stop_after=2)
    assert not rpart.completed and len(rpart.history) == 2
    ck = torch.load(path, weights_only=True)
    assert ck["epoch"] == 2 and ck["net_config"] == full.config
    resumed, rres = _small_run(obs, epochs=4, seed=0, patience=10, checkpoint=path, resume=True)
    assert rres.completed and [h["epoch"] for h in rres.history] == [1, 2, 3, 4]
    sf, sr = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(sf[k], sr[k]) for k in sf)
    assert [h["train_cost"] for h in rres.history] == [h["train_cost"] for h in rfull.history]
    assert load_checkpoint(path)["epoch"] == 4
    assert os.listdir(path.parent) == ["train.pt"]  # no temporary file left


def test_early_stopping_restores_best():
    _, obs = l96_twin(64, seed=7)
    net, res = _small_run(obs, epochs=30, lr=0.05, patience=3, schedule=None)  # noisy: lr too high
    vals = [h["val_obs_cost"] for h in res.history]
    assert res.stopped_early and len(vals) < 30
    assert res.best_epoch == 1 + vals.index(min(vals)) < len(vals)
    _, _, cost = setup()
    assert evaluate_obs_cost(net, cost, TrainingData(obs)[-6:]) == pytest.approx(min(vals), rel=1e-5)


def test_divergence_raises():
    _, obs = l96_twin(32, seed=7)
    with pytest.raises(FloatingPointError, match="learning rate"):
        _small_run(obs, epochs=30, lr=0.5, schedule=None, clip_grad=None)


@pytest.mark.gpu
def test_train_on_cuda(cuda):
    _, obs = l96_twin(32, seed=8)
    net, res = _small_run(obs, epochs=2, device=cuda)
    assert next(net.parameters()).device.type == "cuda" and res.completed


# ---------------------------------------------------------------- joint dynamics
def test_forcing_recovered_from_observations():
    _, obs = l96_twin(320, seed=9)
    model, op, cost = setup(forcing=6.0)
    model.learn("forcing")
    net = InversionNetwork.for_model(model, WINDOW, op, **NET).fit_normalisation(obs)
    res = train(net, cost, TrainingData(obs), epochs=15, batch_size=32, lr=3e-3, dynamics_lr=0.5)
    f = float(model.forcing.detach())
    assert model.forcing.requires_grad and model.forcing.dtype == torch.float64
    assert res.history[res.best_epoch - 1]["parameters"]["forcing"] == pytest.approx(f)  # best epoch restored
    assert abs(f - 8.0) < 0.05 * 8.0, f


def test_neural_lorenz96_correction_trains():
    m = NeuralLorenz96(forcing=8.0, width=4)
    x = torch.randn(3, 1, 20)
    torch.testing.assert_close(m(x, 4), Lorenz96(8.0)(x, 4))  # starts as plain Lorenz96
    _, obs = l96_twin(64, seed=10, forcing=8.5)  # misspecified forcing
    op = ObservationOperator(m)
    cost = FourDVarCost(m, op, WINDOW)
    net = InversionNetwork.for_model(m, WINDOW, op, width=8, depth=1).fit_normalisation(obs)
    train(net, cost, TrainingData(obs), epochs=3, batch_size=16, lr=3e-3, dynamics_lr=1e-2)
    assert m.correction.head.weight.abs().max() > 0
    assert float(m.forcing) == 8.0  # not learnable unless asked


# ---------------------------------------------------------------- methods
def test_hybrid_cost_not_above_network(twin, trained):
    _, obs = twin
    net, cost, _ = trained
    o = obs[:64]
    with torch.no_grad():
        j_net = cost(predict(net, o), o)["total"]
    res = hybrid(net, cost, o, max_iter=5)
    assert (res.cost <= j_net + 1e-4 * j_net.abs()).all()
    assert float(res.cost.mean()) < float(j_net.mean())


def test_over4dvar_close_to_fourdvar(twin):
    truth, obs = twin
    model, op, cost = setup()
    x_fg = first_guess(obs, op, 1)
    net = InversionNetwork.for_model(model, WINDOW, op, **NET).fit_normalisation(obs)
    out = over4dvar(net, cost, TrainingData(obs), max_iter=30, x_init=x_fg, epochs=30, batch_size=32, lr=1e-2,
                    val_fraction=0.0)
    r4 = traj_rmse(cost, out.analyses, truth)
    r_over = traj_rmse(cost, predict(net, obs), truth)  # on the (fitted) training windows
    assert r_over < 1.5 * r4, (r_over, r4)
    # iterative variant: one more round warm-started by the network
    it = over4dvar(net, cost, TrainingData(obs[:64]), max_iter=30, rounds=2, refine_iter=5, epochs=2, batch_size=32)
    assert it.analyses.shape == (64, 1, 20) and it.fit.completed


def test_fit_supervised_rejects_wrong_targets(twin):
    _, obs = twin
    model, op, cost = setup()
    net = InversionNetwork.for_model(model, WINDOW, op, width=4, depth=1)
    with pytest.raises(ValueError):
        fit_supervised(net, cost, TrainingData(obs), torch.zeros(3, 1, 20))


# ---------------------------------------------------------------- cycling
def _chained(n_cycles, n_chains=2, seed=11):
    """Consecutive windows (stride WINDOW) of n_chains independent trajectories, chain-major."""
    truths, obss = [], []
    for c in range(n_chains):
        t, o = l96_twin(n_cycles, gap=0, seed=seed + c)
        truths.append(t)
        obss.append(o.values.where(o.mask, torch.nan))
    return torch.cat(truths), Observations.from_values(torch.cat(obss), noise_std=1.0)


def test_cycle_chains_forecasts():
    truth, obs = _chained(5)
    model, _, _ = setup()
    res = cycle(lambda o, bg: bg.state, model, obs, truth[[0, 5], 0], 1.0, stride=WINDOW, n_chains=2)
    # analyses = backgrounds = the true trajectory (perfect model), sampled every WINDOW steps
    torch.testing.assert_close(res.analyses, truth[:, 0], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(res.backgrounds, res.analyses)


def test_background_inv_var_from_innovations():
    truth, obs = l96_twin(400, seed=12)
    _, _, cost = setup()
    g = torch.Generator().manual_seed(0)
    xb = truth[:, 0] + 0.5 * torch.randn(truth[:, 0].shape, generator=g)
    iv = background_inv_var(cost, xb, obs)
    assert float(iv[0]) == pytest.approx(1 / 0.25, rel=0.15)


def test_cycled_fourdvar_and_network():
    truth, obs = _chained(12)
    model, op, cost = setup()
    fg = traj_rmse(cost, first_guess(obs, op, 1), truth)
    first = first_guess(obs[[0, 12]], op, 1)
    c4 = cycled_fourdvar(cost, obs, first, 0.5, stride=WINDOW, n_chains=2, max_iter=20)
    assert c4.analyses.shape == (24, 1, 20)
    assert traj_rmse(cost, c4.analyses, truth) < 0.5 * fg
    # a background-aware network trained on forecasts of 4DVAR analyses (observations only)
    data = cycled_training_data(model, obs, c4.analyses, 0.5, stride=WINDOW, n_chains=2)
    assert len(data) == 22
    net = InversionNetwork.for_model(model, WINDOW, op, background=True, width=8, depth=1).fit_normalisation(obs)
    train(net, cost, data, epochs=2, batch_size=8)
    cn = cycled_network(net, cost, obs, first, 0.5, stride=WINDOW, n_chains=2, refine_iter=3)
    assert cn.analyses.shape == (24, 1, 20) and torch.isfinite(cn.analyses).all()


# ---------------------------------------------------------------- slow, closer to the acceptance setup
@pytest.mark.slow
def test_learned_inversion_close_to_fourdvar():
    truth, obs = l96_twin(2000, n_sites=40, seed=20)
    t_test, o_test = l96_twin(200, n_sites=40, seed=21)
    model, op, cost = setup()
    net = InversionNetwork.for_model(model, WINDOW, op, width=64, depth=4).fit_normalisation(obs)
    train(net, cost, TrainingData(obs), epochs=60, batch_size=64, lr=2e-3)
    r4 = fourdvar(cost, o_test, first_guess(o_test, op, 1), max_iter=50)
    rmse_4dvar = traj_rmse(cost, r4.x, t_test)
    rmse_net = traj_rmse(cost, predict(net, o_test), t_test)
    assert rmse_net <= 1.2 * rmse_4dvar, (rmse_net, rmse_4dvar)


@pytest.mark.slow
def test_forcing_recovered_tightly():
    _, obs = l96_twin(2000, n_sites=40, seed=22)
    model, op, cost = setup(forcing=6.0)
    model.learn("forcing")
    net = InversionNetwork.for_model(model, WINDOW, op, width=32, depth=3).fit_normalisation(obs)
    train(net, cost, TrainingData(obs), epochs=20, batch_size=32, lr=2e-3, dynamics_lr=0.1)
    assert abs(float(model.forcing.detach()) - 8.0) < 0.01 * 8.0, float(model.forcing.detach())
