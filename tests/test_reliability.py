"""Reliability (issue 7): numerical faults, killed runs, atomic outputs, the data cache, safe loading.

Every fault here is injected on purpose (a NaN loss, a NaN gradient, a model's
CFL refusal, SIGKILL, a crash in the middle of a write, a truncated or altered
file, a read-only folder, a pickle carrying code) and the test checks the
documented outcome.  Tiny data, one torch thread; the whole file runs in
well under a minute on two cores.
"""
from __future__ import annotations

import copy
import hashlib
import multiprocessing
import os
import pathlib
import signal
import tempfile
import time
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import xda_hybrid as xh
from xda_hybrid.data import cache
from xda_hybrid.learning import InversionNetwork, TrainingData, load_checkpoint, save_checkpoint, train
from xda_hybrid.learning import checkpoints as checkpoints_mod
from xda_hybrid.learning import training as training_mod
from xda_hybrid.models import CFLError
from xda_hybrid.models.lorenz96 import Lorenz96
from xda_hybrid.observation import ObservationOperator, Observations
from xda_hybrid.variational import FourDVarCost

WINDOW = 6


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_obs(n=32, sites=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = Lorenz96(dt=0.05)
    x = 8 + 2 * torch.randn(n, 1, sites, generator=g, dtype=torch.float64)
    with torch.no_grad():
        traj = model(x, WINDOW - 1)
    y = traj + 0.5 * torch.randn(traj.shape, generator=g, dtype=torch.float64)
    y = torch.where(torch.rand(traj.shape, generator=g, dtype=torch.float64) < 0.6, y, torch.full_like(y, float("nan")))
    return Observations.from_values(y.float(), noise_std=0.5)


def tiny_setup(obs):
    model = Lorenz96(dt=0.05)
    op = ObservationOperator(model)
    cost = FourDVarCost(model, op, WINDOW)
    net = InversionNetwork.for_model(model, WINDOW, op, width=8, depth=1, seed=0).fit_normalisation(obs)
    return net, cost


def inject(cost, kind, at):
    """Make ``cost`` fail (``kind``) on the calls whose 0-based index is in ``at`` (a set or ``"from:k"``)."""
    calls = {"n": 0}
    forward = cost.forward

    def faulty(x0, obs, background=None):
        i = calls["n"]
        calls["n"] += 1
        hit = (i >= int(at[5:])) if isinstance(at, str) else (i in at)
        if hit and kind == "cfl":
            raise CFLError("injected CFL refusal")
        terms = forward(x0, obs, background)
        if hit and kind == "nan_loss":
            terms = dict(terms, total=terms["total"] * float("nan"))
        elif hit and kind == "nan_grad":  # finite value, NaN gradient: d sqrt(u)/du = inf at u = 0, times 0
            terms = dict(terms, total=terms["total"] + torch.sqrt(0.0 * x0.sum()))
        return terms

    cost.forward = faulty
    return calls


def params_of(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# ----------------------------------------------------------------------------- numerical faults in training
@pytest.mark.parametrize("kind", ["nan_loss", "nan_grad", "cfl"])
def test_training_fault_rolls_back_to_epoch_start_with_half_lr(kind, tmp_path):
    """A fault at the first batch of epoch 2 == epoch 1 at lr, then epochs 2-3 at lr/2 from epoch 1's state."""
    obs = tiny_obs()
    opts = dict(epochs=3, batch_size=16, lr=3e-3, schedule=None, val_fraction=0.0, seed=0)
    net, cost = tiny_setup(obs)
    inject(cost, kind, at={2})  # 32 windows / 16 = 2 batches per epoch: call 2 is epoch 2, batch 1
    with pytest.warns(RuntimeWarning, match="rolled back") as rec:
        res = train(net, cost, TrainingData(obs), **opts)
    assert len([w for w in rec if "rolled back" in str(w.message)]) == 1
    assert res.completed and len(res.rollbacks) == 1 and res.rollbacks[0]["epoch"] == 2
    assert [h["lr"] for h in res.history] == [3e-3, 1.5e-3, 1.5e-3]
    got = params_of(net)
    assert all(torch.isfinite(v).all() for v in got.values())

    # reference: stop after epoch 1, halve the stored learning rate, resume
    ck = tmp_path / "ref.pt"
    ref, rcost = tiny_setup(obs)
    train(ref, rcost, TrainingData(obs), checkpoint=ck, stop_after=1, **opts)
    state = load_checkpoint(ck)
    for g in state["optimizer"]["param_groups"]:
        g["lr"] *= 0.5
    save_checkpoint(state, ck)
    ref, rcost = tiny_setup(obs)
    rres = train(ref, rcost, TrainingData(obs), checkpoint=ck, resume=True, **opts)
    want = params_of(ref)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert [h["train_cost"] for h in res.history] == [h["train_cost"] for h in rres.history]


def test_rollback_scales_the_schedule_too():
    obs = tiny_obs()
    opts = dict(epochs=4, batch_size=16, lr=4e-3, schedule="cosine", val_fraction=0.0, seed=0)
    net, cost = tiny_setup(obs)
    clean = train(net, cost, TrainingData(obs), **opts)
    net, cost = tiny_setup(obs)
    inject(cost, "nan_loss", at={2})
    with pytest.warns(RuntimeWarning, match="rolled back"):
        faulty = train(net, cost, TrainingData(obs), **opts)
    lr_clean = [h["lr"] for h in clean.history]
    lr_faulty = [h["lr"] for h in faulty.history]
    assert lr_faulty[0] == lr_clean[0]
    np.testing.assert_allclose(lr_faulty[1:], [0.5 * v for v in lr_clean[1:]], rtol=1e-12)


def test_persistent_fault_stops_with_a_clear_message():
    obs = tiny_obs()
    net, cost = tiny_setup(obs)
    calls = inject(cost, "nan_loss", at="from:2")
    with pytest.warns(RuntimeWarning, match="rolled back"):
        with pytest.raises(FloatingPointError, match=r"epoch 2.*after 3 rollbacks.*learning rate"):
            train(net, cost, TrainingData(obs), epochs=5, batch_size=16, val_fraction=0.0)
    assert calls["n"] == 2 + 4  # the first batch of epoch 2, tried 4 times
    net, cost = tiny_setup(obs)
    inject(cost, "cfl", at={0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no rollback: no warning, the error at once
        with pytest.raises(FloatingPointError, match="injected CFL refusal.*learning rate"):
            train(net, cost, TrainingData(obs), epochs=2, batch_size=16, val_fraction=0.0, max_rollbacks=0)
    with pytest.raises(ValueError, match="rollback_factor"):
        train(net, cost, TrainingData(obs), epochs=1, rollback_factor=1.5)


def test_fit_through_the_accessor_survives_a_fault(monkeypatch):
    """``ds.da4d.fit`` trains through the same loop: a single NaN batch is rolled back, the fit completes."""
    ds = l96_ds(nt=30)
    real = FourDVarCost.forward
    calls = {"n": 0}

    def faulty(self, x0, obs, background=None):
        calls["n"] += 1
        terms = real(self, x0, obs, background)
        if calls["n"] == 3 and torch.is_grad_enabled():
            terms = dict(terms, total=terms["total"] * float("nan"))
        return terms

    monkeypatch.setattr(FourDVarCost, "forward", faulty)
    with pytest.warns(RuntimeWarning, match="rolled back"):
        fitted = ds.da4d.fit(window=5, stride=1, epochs=2, batch_size=8, progress=False, network=SMALL_NET,
                             validation=None)
    assert all(torch.isfinite(p).all() for p in fitted.network.parameters())
    assert fitted.history["lr"].values[-1] < 1e-3


# ----------------------------------------------------------------------------- numerical faults in 4DVAR / models
SMALL_NET = {"width": 4, "depth": 1, "kernel_size": 3}


def l96_ds(nt=20, n=8, step=0.05, seed=0):
    rng = np.random.default_rng(seed)
    x = 3 + 2 * rng.normal(size=(nt, n))
    obs = np.where(rng.random((nt, n)) < 0.6, x + 0.5 * rng.normal(size=x.shape), np.nan).astype("f4")
    return xr.Dataset({"x_obs": (("time", "site"), obs, {"noise_std": 0.5})},
                      coords={"time": ("time", np.arange(nt) * step)}, attrs={"model": "lorenz96"})


def test_exploding_lorenz96_refuses_with_a_cfl_error():
    for step in (1.0, 0.5):
        with pytest.raises(CFLError, match=rf"RK4.*dt={step:g}\b"):
            l96_ds(step=step).da4d.assimilate(window=5, iterations=2)
    hours = l96_ds().assign_coords(time=np.datetime64("2020-01-01") + np.arange(20) * np.timedelta64(1, "h"))
    with pytest.raises(CFLError, match="dt=3600"):
        hours.da4d.assimilate(window=5, iterations=2)
    m = Lorenz96(dt=0.05)
    with pytest.raises(CFLError, match="smaller time step"):
        m(1e20 * torch.arange(1.0, 9.0).reshape(1, 1, 8), 3)
    nan_start = m(torch.full((1, 1, 8), float("nan")), 2)  # not a blow-up: NaN in, NaN out, no CFL claim
    assert torch.isnan(nan_start).all()
    with pytest.raises(ValueError, match="forcing must be finite"):
        Lorenz96(forcing=float("inf"))


def test_explicit_models_refuse_unstable_time_steps():
    rng = np.random.default_rng(0)
    eta = (0.1 * rng.normal(size=(4, 6, 6))).astype("f4")
    sw = xr.Dataset({"eta_obs": (("time", "y", "x"), eta, {"noise_std": 0.05})},
                    coords={"time": ("time", np.arange(4) * 5000.0, {"units": "s"}),
                            "y": ("y", np.arange(6) * 10e3, {"units": "m"}), "x": ("x", np.arange(6) * 10e3, {"units": "m"})})
    with pytest.raises(CFLError, match=r"Courant.*use dt <="):
        sw.da4d.assimilate(model="shallow_water", window=3, iterations=1)
    img = xr.Dataset({"tracer_obs": (("time", "y", "x"), eta, {"noise_std": 0.05})})
    with pytest.raises(CFLError, match="diffusion"):
        img.da4d.assimilate(model="image", model_params={"diffusion": 10.0}, window=3, iterations=1)


@pytest.mark.parametrize(
    "attrs, params, match",
    [
        ({"forcing": "eight"}, None, r"model option 'forcing' \(from ds.attrs\['forcing'\]\) must be a real number"),
        ({"forcing": float("nan")}, None, r"'forcing' \(from ds.attrs\['forcing'\]\) must be finite"),
        ({}, {"dt": "0.05"}, r"'dt' \(from model_params\['dt'\]\) must be a real number"),
        ({}, {"dt": -1.0}, r"Lorenz96 refused its options.*dt must be finite and > 0"),
        ({"forcing": 1e30}, None, r"4DVAR cost of the first guess.*not finite.*forcing"),
    ],
)
def test_bad_model_options_are_named(attrs, params, match):
    ds = l96_ds().assign_attrs(attrs)
    with pytest.raises((TypeError, ValueError), match=match):
        ds.da4d.assimilate(window=5, iterations=2, model_params=params)


@pytest.mark.parametrize(
    "scale, std, match",
    [(1e20, 0.5, "beyond the float32 range"), (1.0, 1e-30, "beyond the float32 range"),
     (1.0, 1e30, "underflows float32"), (1.0, True, "must be a number")],
)
def test_extreme_values_and_noise_refused_before_the_cost_overflows(scale, std, match):
    ds = l96_ds()
    ds["x_obs"] = ds["x_obs"] * scale
    ds["x_obs"].attrs["noise_std"] = std
    with pytest.raises((ValueError, TypeError), match="x_obs.*" + match if match != "must be a number" else match):
        ds.da4d.assimilate(window=5, iterations=2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_noise_std_beyond_the_window_precision_is_refused_for_both_dtypes(dtype):
    ds = l96_ds()
    ds["x_obs"].attrs["noise_std"] = 1e-21  # 1/std² = 1e42: beyond float32, the observation windows' dtype
    with pytest.raises(ValueError, match="x_obs.*beyond the float32 range"):
        ds.da4d.assimilate(window=5, iterations=1, dtype=dtype)
    ds["x_obs"].attrs["noise_std"] = 1e-12  # still representable: works
    assert np.isfinite(ds.da4d.assimilate(window=5, iterations=1, dtype=dtype)["x"].values).all()


@pytest.fixture(scope="module")
def fitted():
    return l96_ds(nt=30).da4d.fit(window=5, stride=2, epochs=1, batch_size=8, progress=False, network=SMALL_NET)


def test_nan_network_output_is_never_silent(fitted):
    bad = copy.deepcopy(fitted)
    with torch.no_grad():
        next(bad.network.parameters()).fill_(float("nan"))
    with pytest.warns(RuntimeWarning, match="learned analysis is not finite in 20 of 20 frames"):
        an = l96_ds().da4d.assimilate(bad)
    assert np.isnan(an["x"].values).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ok = l96_ds().da4d.assimilate(fitted)  # a healthy network: no warning
    assert np.isfinite(ok["x"].values).all()


# ----------------------------------------------------------------------------- long runs: checkpoints, SIGKILL
def test_checkpoints_at_the_chosen_interval(tmp_path, monkeypatch):
    saved = []
    real = training_mod.save_checkpoint

    def spy(state, path):
        saved.append(state["epoch"])
        return real(state, path)

    monkeypatch.setattr(training_mod, "save_checkpoint", spy)
    obs = tiny_obs()
    net, cost = tiny_setup(obs)
    train(net, cost, TrainingData(obs), epochs=7, batch_size=16, val_fraction=0.0, checkpoint=tmp_path / "c.pt",
          checkpoint_every=3)
    assert saved == [3, 6, 7]
    with pytest.raises(ValueError, match="checkpoint_every"):
        train(net, cost, TrainingData(obs), epochs=1, checkpoint=tmp_path / "c.pt", checkpoint_every=0)


def test_crash_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    good = path.read_bytes()

    def dying_save(obj, f, *a, **k):
        pathlib.Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(checkpoints_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["ck.pt"]
    assert load_checkpoint(path)["epoch"] == 1


def test_cli_outputs_are_written_atomically(tmp_path, monkeypatch):
    from xda_hybrid import cli

    ds = l96_ds()
    out = tmp_path / "an.nc"
    cli._write(ds, str(out))
    xr.testing.assert_identical(xr.open_dataset(out).load(), ds)
    before = out.read_bytes()

    def dying(self, path, *a, **k):
        pathlib.Path(path).write_bytes(b"CDF\x01 partial")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", dying)
    with pytest.raises(OSError, match="disk full"):
        cli._write(ds * 2, str(out))
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["an.nc"]
    cli._write_json({"a": 1}, tmp_path / "s.json")
    assert (tmp_path / "s.json").read_text().startswith("{") and len(os.listdir(tmp_path)) == 2


_FORK = multiprocessing.get_context("fork")  # children start at once (no re-import), same floating-point setup


def _in_child(fn, *args):
    """Start ``fn(*args)`` in a forked process; returns the process and a queue with ("ok", value) or ("error", text)."""
    q = _FORK.Queue()

    def target():
        try:
            q.put(("ok", fn(*args)))
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            q.put(("error", f"{type(e).__name__}: {e}"))

    p = _FORK.Process(target=target)
    p.start()
    return p, q


def _train_run(ck, out, delay):
    """The long run: 10 epochs, a checkpoint every 2, resumed from ``ck`` if present; final weights to ``out``."""
    torch.set_num_threads(1)
    obs = tiny_obs(n=48)
    net, cost = tiny_setup(obs)
    forward = cost.forward

    def slow(*a, **k):  # only slows the run down so that it can be killed mid-epoch; numerics unchanged
        time.sleep(delay)
        return forward(*a, **k)

    cost.forward = slow
    start = load_checkpoint(ck)["epoch"] if os.path.exists(ck) else 0
    train(net, cost, TrainingData(obs), epochs=10, batch_size=16, lr=3e-3, val_fraction=0.25, seed=3,
          checkpoint=ck, checkpoint_every=2, resume=True)
    save_checkpoint({k: v.detach() for k, v in net.state_dict().items()}, out)  # atomic output
    return start


def test_sigkilled_training_resumes_to_the_same_parameters(tmp_path):
    ck, out = tmp_path / "killed.pt", tmp_path / "killed_final.pt"
    victim, _ = _in_child(_train_run, ck, out, 0.03)
    # the uninterrupted reference runs here meanwhile
    assert _train_run(tmp_path / "ref.pt", tmp_path / "ref_final.pt", 0.0) == 0
    deadline = time.monotonic() + 60
    while not ck.exists() and victim.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # into the next epoch
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(30)
    assert victim.exitcode == -signal.SIGKILL
    assert not out.exists()
    killed_at = load_checkpoint(ck)["epoch"]  # the checkpoint is whole (atomic writes)
    assert 2 <= killed_at < 10
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]

    resumed, q = _in_child(_train_run, ck, out, 0.0)
    status, start = q.get(timeout=120)
    resumed.join(30)
    assert status == "ok" and resumed.exitcode == 0, start
    assert start == killed_at  # it did resume from the checkpoint
    a, b = load_checkpoint(out), load_checkpoint(tmp_path / "ref_final.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(ck)["epoch"] == 10


# ----------------------------------------------------------------------------- the data cache
TINY_L96 = {"size": 8, "length": 30}


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDA_HYBRID_DATA_DIR", str(tmp_path))
    return tmp_path


def _fetch_after(go, params):
    go.wait(60)
    p = cache.fetch("lorenz96", **params)
    return str(p), cache._sha256(p), cache.generation_count["lorenz96"]


def test_four_processes_generate_the_same_dataset_at_once(data_dir):
    go = _FORK.Event()
    children = [_in_child(_fetch_after, go, TINY_L96) for _ in range(4)]
    time.sleep(0.2)
    go.set()  # all four find no file and generate it at once
    results = []
    for p, q in children:
        results.append(q.get(timeout=120))
        p.join(30)
        assert p.exitcode == 0
    assert all(status == "ok" for status, _ in results), results
    paths = {v[:2] for _, v in results}
    assert len(paths) == 1
    assert sum(v[2] for _, v in results) >= 2  # several really generated concurrently
    path, digest = paths.pop()
    assert pathlib.Path(path).parent == data_dir
    assert pathlib.Path(path + ".sha256").read_text().strip() == digest == cache._sha256(path)
    assert sorted(os.listdir(data_dir)) == sorted([pathlib.Path(path).name, pathlib.Path(path).name + ".sha256"])
    assert xr.open_dataset(path, engine="scipy").load().sizes["site"] == 8
    n = cache.generation_count["lorenz96"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert str(cache.fetch("lorenz96", **TINY_L96)) == path  # reused, intact
    assert cache.generation_count["lorenz96"] == n


@pytest.mark.parametrize("damage", ["truncate", "empty", "sidecar"])
def test_damaged_cache_files_are_regenerated(data_dir, damage):
    path = cache.fetch("lorenz96", **TINY_L96)
    good = path.read_bytes()
    n = cache.generation_count["lorenz96"]
    if damage == "truncate":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        pathlib.Path(str(path) + ".sha256").write_text("0" * 64 + "\n")
    with pytest.warns(RuntimeWarning, match="hash check"):
        again = cache.fetch("lorenz96", **TINY_L96)
    assert cache.generation_count["lorenz96"] == n + 1 and again.read_bytes() == good
    xr.open_dataset(again, engine="scipy").load()


def _fetch_as_nobody(lengths):
    if os.geteuid() == 0:  # root ignores permissions: act as nobody
        os.setgid(65534)
        os.setuid(65534)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for length in lengths:
            try:
                out.append(f"ok {cache.fetch('lorenz96', size=8, length=length)}")
            except Exception as e:  # noqa: BLE001 - the outcome is the result
                out.append(f"error {type(e).__name__} {e}")
    return out


def test_read_only_cache_folder(monkeypatch):
    folder = pathlib.Path(tempfile.mkdtemp(prefix="xda-ro-"))  # outside pytest's private tmp (nobody must enter it)
    monkeypatch.setenv("XDA_HYBRID_DATA_DIR", str(folder))
    try:
        os.chmod(folder, 0o755)
        path = cache.fetch("lorenz96", size=8, length=30)
        os.chmod(folder, 0o555)

        def run():
            p, q = _in_child(_fetch_as_nobody, (30, 31))
            status, lines = q.get(timeout=120)
            p.join(30)
            assert status == "ok", lines
            return lines

        cached, missing = run()
        assert cached == f"ok {path}"  # a valid cached file is used from a read-only folder
        assert missing.startswith("error PermissionError") and "read-only" in missing
        assert "XDA_HYBRID_DATA_DIR" in missing and "not cached yet" in missing
        os.chmod(folder, 0o755)
        path.write_bytes(path.read_bytes()[:100])  # now damaged and read-only
        os.chmod(folder, 0o555)
        cached, _ = run()
        assert cached.startswith("error PermissionError") and "fails its hash check" in cached
        assert "XDA_HYBRID_DATA_DIR" in cached
        assert len(path.read_bytes()) == 100  # left as it was, not half-replaced
    finally:
        os.chmod(folder, 0o755)
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


# ----------------------------------------------------------------------------- safe loading of fitted models
class _Payload:
    """Unpickling this would call ``Path.touch(marker)``: code run from the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_loading_never_runs_code_from_the_file(fitted, tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    fitted.save(p)
    raw = torch.load(p, weights_only=True)
    raw["meta_extra"] = _Payload(marker)
    torch.save(raw, p)
    with pytest.raises(ValueError, match="not a loadable"):
        xh.load(p)
    assert not marker.exists()
    torch.load(p, weights_only=False)  # the payload is live: an unsafe loader would have run it
    assert marker.exists()


@pytest.mark.parametrize("alter", ["meta", "truncate", "format", "digest"])
def test_altered_fitted_files_are_refused(fitted, tmp_path, alter):
    p = tmp_path / "m.pt"
    fitted.save(p)
    assert xh.load(p).window == fitted.window
    raw = torch.load(p, weights_only=True)
    if alter == "truncate":
        p.write_bytes(p.read_bytes()[:-200])
        match = "not a loadable"
    else:
        if alter == "meta":
            raw["meta"] = raw["meta"].replace('"window": 5', '"window": 4')
            match = "altered"
        elif alter == "format":
            raw["format"] = "something/else"
            match = "not an xda-hybrid fitted file"
        else:
            raw["sha256"] = hashlib.sha256(b"x").hexdigest()
            match = "altered"
        torch.save(raw, p)
    with pytest.raises(ValueError, match=match):
        xh.load(p)


def test_fitted_save_is_atomic(fitted, tmp_path, monkeypatch):
    p = tmp_path / "m.pt"
    fitted.save(p)
    before = p.read_bytes()

    def dying_save(obj, f, *a, **k):
        pathlib.Path(f).write_bytes(b"PK")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints_mod.torch, "save", dying_save)
    with pytest.raises(OSError):
        fitted.save(p)
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["m.pt"]
    monkeypatch.undo()
    assert xh.load(p).window == fitted.window
