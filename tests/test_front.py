"""The ``ds.da4d`` accessor: analyses, input checks, fit/save/load (tiny data, seconds)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

import xda_hybrid as xh

SMALL_NET = {"width": 8, "depth": 1, "kernel_size": 3}


def l96(nt=40, n=8, seed=0, frac=0.6):
    rng = np.random.default_rng(seed)
    x = 3 + 2 * rng.normal(size=(nt, n))
    obs = np.where(rng.random((nt, n)) < frac, x + 0.5 * rng.normal(size=x.shape), np.nan).astype("f4")
    return xr.Dataset(
        {"x_obs": (("time", "site"), obs, {"noise_std": 0.5, "units": "1", "long_name": "observed state"})},
        coords={"time": ("time", np.arange(nt) * 0.05, {"units": "1"}), "site": ("site", np.arange(n) + 10, {"long_name": "site"})},
        attrs={"model": "lorenz96", "forcing": 8.0, "source": "test"},
    )


def motion(nt=6, n=10):
    yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    frames = [np.sin(2 * np.pi * (xx - 0.5 * t) / n) + np.cos(2 * np.pi * yy / n) for t in range(nt)]
    obs = np.array(frames, "f4")
    obs[:, :3, :3] = np.nan
    return xr.Dataset(
        {"tracer_obs": (("time", "y", "x"), obs, {"noise_std": 0.05, "units": "degC"})},
        coords={"time": ("time", np.datetime64("2020-01-01") + np.arange(nt) * np.timedelta64(3600, "s")),
                "y": ("y", np.arange(n) * 2000.0, {"units": "m"}), "x": ("x", np.arange(n) * 2000.0, {"units": "m"})},
        attrs={"model": "image", "boundary": "periodic"},
    )


def test_accessor_registered_on_import():
    assert hasattr(xr.Dataset(), "da4d")
    assert xh.DA4DAccessor is type(xr.Dataset().da4d)


def test_fourdvar_round_trip_keeps_coords_and_attrs():
    ds = l96()
    an = ds.da4d.assimilate(method="4dvar", window=10, iterations=5)
    assert an["x"].dims == ("time", "site")
    xr.testing.assert_identical(an["time"], ds["time"])
    xr.testing.assert_identical(an["site"], ds["site"])
    assert an.attrs["source"] == "test" and an.attrs["method"] == "4dvar" and an.attrs["window"] == 10
    for key in ("iterations", "final_cost", "wall_time", "model_params"):
        assert key in an.attrs
    assert an.attrs["final_cost"] > 0 and an["x"].attrs["units"] == "1"
    assert np.isfinite(an["x"].values).all()
    # 4DVAR lowers the cost compared with its first guess
    an0 = ds.da4d.assimilate(method="4dvar", window=10, iterations=0)
    assert an.attrs["final_cost"] < an0.attrs["final_cost"]


def test_dimension_order_does_not_matter():
    ds = l96()
    a = ds.da4d.assimilate(method="4dvar", window=10, iterations=3)
    b = ds.transpose("site", "time").da4d.assimilate(method="4dvar", window=10, iterations=3)
    np.testing.assert_allclose(a["x"].values, b["x"].values, rtol=1e-5, atol=1e-5)


def test_nan_where_no_window_has_observations_and_tail_covered():
    ds = l96(nt=35)
    ds["x_obs"][10:20] = np.nan  # window 1 (frames 10..19) sees nothing
    an = ds.da4d.assimilate(method="4dvar", window=10, iterations=2)
    assert an.sizes["time"] == 35
    assert np.isnan(an["x"].values[10:20]).all()
    assert np.isfinite(an["x"].values[:10]).all() and np.isfinite(an["x"].values[20:]).all()  # last window ends on frame 34
    assert an.attrs["n_windows_without_obs"] == 1


def test_overlapping_cycles_average():
    ds = l96(nt=30)
    an = ds.da4d.assimilate(method="4dvar", window=10, cycle=5, iterations=2)
    assert an.attrs["cycle"] == 5 and an.attrs["n_windows"] == 5
    assert np.isfinite(an["x"].values).all()


def test_truth_is_never_read():
    ds = l96()
    ref = ds.da4d.assimilate(method="4dvar", window=10, iterations=3)
    ds["x_true"] = ds["x_obs"] * np.nan
    ds["x_true"].attrs["noise_std"] = -1.0
    out = ds.da4d.assimilate(method="4dvar", window=10, iterations=3)
    np.testing.assert_array_equal(ref["x"].values, out["x"].values)


def test_dask_input_matches_eager():
    ds = l96(nt=40)
    a = ds.da4d.assimilate(method="4dvar", window=10, iterations=3)
    b = ds.chunk({"time": 7}).da4d.assimilate(method="4dvar", window=10, iterations=3, batch_size=2)
    np.testing.assert_allclose(a["x"].values, b["x"].values, rtol=1e-5, atol=1e-5)


def test_image_model_units_from_coordinates():
    ds = motion()
    an = ds.da4d.assimilate(method="4dvar", window=3, iterations=3)
    assert set(an.data_vars) == {"u", "v", "tracer"}
    assert an["u"].attrs["units"] == "m s-1" and an["tracer"].attrs["units"] == "degC"
    assert an["u"].dims == ("time", "y", "x")
    assert np.issubdtype(an["time"].dtype, np.datetime64)
    prob = ds.da4d.problem()
    assert prob.model.dx == 2000.0 and prob.model.dt == 3600.0 and prob.model.boundary == "periodic"
    # explicit model_params win over the attributes
    assert ds.da4d.problem(model_params={"boundary": "closed"}).model.boundary == "closed"


def test_plain_index_coordinates_give_cells_per_frame():
    ds = motion().drop_vars(["x", "y", "time"])
    an = ds.da4d.assimilate(method="4dvar", window=3, iterations=2)
    assert an["u"].attrs["units"] == "1" and "cells per frame" in an["u"].attrs["comment"]


def test_shallow_water_needs_metres():
    rng = np.random.default_rng(0)
    eta = rng.normal(size=(4, 6, 6)).astype("f4") * 0.1
    ds = xr.Dataset({"eta_obs": (("time", "y", "x"), eta, {"noise_std": 0.05})},
                    coords={"time": ("time", np.arange(4) * 200.0, {"units": "s"}),
                            "y": ("y", np.arange(6) * 10.0, {"units": "km"}), "x": ("x", np.arange(6) * 10.0, {"units": "km"})})
    prob = ds.da4d.problem(model="shallow_water")
    assert prob.model.dx == 10e3 and prob.model.dt == 200.0
    ds["x"].attrs["units"] = "degrees_east"
    with pytest.raises(ValueError, match="metres"):
        ds.da4d.problem(model="shallow_water")


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda ds: ds.rename({"x_obs": "y_obs"}), ValueError, "matches no state"),
        (lambda ds: ds.drop_vars("x_obs").assign(z=ds.x_obs), KeyError, "no observation variable"),
        (lambda ds: ds.rename({"site": "node"}), ValueError, "missing"),
        (lambda ds: ds.expand_dims(member=2), ValueError, "unexpected dims"),
        (lambda ds: ds.assign_coords(time=ds.time.values ** 2), ValueError, "not uniform"),
        (lambda ds: ds.isel(time=slice(None, None, -1)), ValueError, "strictly increasing"),
        (lambda ds: ds.isel(time=slice(0, 5)), ValueError, "longer than the data"),
        (lambda ds: ds.assign(x_obs=ds.x_obs * np.nan), ValueError, "all observations are missing"),
        (lambda ds: ds.assign(x_obs=ds.x_obs.where(ds.x_obs.isnull(), np.inf).fillna(1.0)), ValueError, "inf"),
        (lambda ds: _attr(ds, noise_std=0.0), ValueError, "noise_std"),
        (lambda ds: _attr(ds, noise_std=None), ValueError, "no observation error"),
        (lambda ds: ds.isel(site=slice(0, 3)), ValueError, "at least 4"),
        (lambda ds: ds.assign(x_obs=ds.x_obs.astype(str)), TypeError, "real numbers"),
    ],
)
def test_input_errors_are_clear(mutate, exc, match):
    ds = mutate(l96())
    with pytest.raises(exc, match=match):
        ds.da4d.assimilate(method="4dvar", window=10, iterations=1)


def _attr(ds, noise_std):
    ds = ds.copy()
    ds["x_obs"] = ds["x_obs"].copy()
    if noise_std is None:
        del ds["x_obs"].attrs["noise_std"]
    else:
        ds["x_obs"].attrs["noise_std"] = noise_std
    return ds


def test_argument_errors():
    ds = l96()
    with pytest.raises(ValueError, match="method"):
        ds.da4d.assimilate(method="magic", window=10)
    with pytest.raises(ValueError, match="fitted network"):
        ds.da4d.assimilate(method="learned", window=10)
    with pytest.raises(ValueError, match="unknown model"):
        ds.da4d.assimilate(model="nope", window=10)
    with pytest.raises(TypeError, match="model_params"):
        ds.da4d.assimilate(model_params={"frcing": 3}, window=10)
    with pytest.raises(ValueError, match="no model"):
        ds.assign_attrs(model=None).drop_attrs().da4d.assimilate(window=10)
    with pytest.raises(TypeError, match="window"):
        ds.da4d.assimilate(window=2.5)
    with pytest.raises(ValueError, match="smoothness"):
        ds.da4d.assimilate(window=10, smoothness=1.0)


def test_per_point_noise_variable():
    ds = l96()
    ds["x_obs_std"] = xr.full_like(ds["x_obs"], 0.5).fillna(0.5)
    del ds["x_obs"].attrs["noise_std"]
    a = ds.da4d.assimilate(window=10, iterations=2)
    assert np.isfinite(a["x"].values).all()
    ds["x_obs_std"][0, 0] = -1.0
    if np.isfinite(ds["x_obs"][0, 0]):
        with pytest.raises(ValueError, match="> 0"):
            ds.da4d.assimilate(window=10, iterations=2)


@pytest.fixture(scope="module")
def fitted():
    return l96(nt=60).da4d.fit(window=10, stride=2, epochs=2, batch_size=8, seed=0, progress=False,
                               network=SMALL_NET, learn=["forcing"], lr=1e-2)


def test_fit_history_and_learned_parameter(fitted):
    h = fitted.history
    assert isinstance(h, xr.Dataset) and h.sizes["epoch"] == 2
    assert {"train_cost", "val_obs_cost", "lr", "epoch_time", "forcing"} <= set(h.data_vars)
    assert np.isfinite(h["train_cost"].values).all() and np.isfinite(h["val_obs_cost"].values).all()
    assert set(fitted.parameters) == {"forcing"}
    assert fitted.parameters["forcing"] != 8.0  # trained jointly
    assert "Fitted(learned" in repr(fitted)


def test_learned_and_hybrid_analyses(fitted):
    ds = l96(nt=40, seed=5)
    an = ds.da4d.assimilate(fitted)
    assert an.attrs["method"] == "learned" and an.attrs["iterations"] == 0
    assert np.isfinite(an["x"].values).all()
    hy = ds.da4d.assimilate(fitted, method="hybrid", iterations=5)
    assert hy.attrs["final_cost"] <= an.attrs["final_cost"] * (1 + 1e-6)
    with pytest.raises(ValueError, match="windows of 10"):
        ds.da4d.assimilate(fitted, window=5)
    with pytest.raises(ValueError, match="fixes the model"):
        ds.da4d.assimilate(fitted, model="lorenz96")


def test_save_load_round_trip(fitted, tmp_path):
    p = tmp_path / "m.pt"
    fitted.save(p)
    raw = torch.load(p, weights_only=True)  # plain containers only
    assert raw["format"] == "xda-hybrid/fitted"
    g = xh.load(p)
    assert g.window == fitted.window and g.parameters == pytest.approx(fitted.parameters)
    xr.testing.assert_allclose(g.history, fitted.history)
    ds = l96(nt=40, seed=5)
    xr.testing.assert_allclose(ds.da4d.assimilate(g)["x"], ds.da4d.assimilate(fitted)["x"])


def test_altered_files_are_refused(fitted, tmp_path):
    p = tmp_path / "m.pt"
    fitted.save(p)
    raw = torch.load(p, weights_only=True)
    key = next(k for k in raw["network"] if k.endswith("weight"))
    raw["network"][key] = raw["network"][key] + 1.0
    torch.save(raw, tmp_path / "tampered.pt")
    with pytest.raises(ValueError, match="altered"):
        xh.load(tmp_path / "tampered.pt")
    b = bytearray(p.read_bytes())
    b[len(b) // 2 : len(b) // 2 + 64] = b"\0" * 64
    (tmp_path / "corrupt.pt").write_bytes(bytes(b))
    with pytest.raises(ValueError):
        xh.load(tmp_path / "corrupt.pt")
    torch.save({"format": "xda-hybrid/fitted", "evil": math.gcd}, tmp_path / "pickle.pt")
    with pytest.raises(ValueError, match="not a loadable"):
        xh.load(tmp_path / "pickle.pt")
    with pytest.raises(FileNotFoundError):
        xh.load(tmp_path / "missing.pt")


def test_fit_validation_dataset_and_over4dvar():
    ds = l96(nt=40)
    f = ds.da4d.fit(window=10, stride=5, epochs=1, validation=l96(nt=20, seed=9), progress=False,
                    network=SMALL_NET, method="over4dvar", iterations=3)
    assert f.method == "over4dvar" and 0 < f.info["val_fraction"] < 1
    with pytest.raises(ValueError, match="learn"):
        ds.da4d.fit(window=10, epochs=1, method="over4dvar", learn=["forcing"], progress=False)
    with pytest.raises(KeyError, match="no physical parameter"):
        ds.da4d.fit(window=10, epochs=1, learn=["gravity"], progress=False, network=SMALL_NET)
    with pytest.raises(ValueError, match="validation"):
        ds.da4d.fit(window=10, epochs=1, validation=1.5, progress=False)


def test_image_fit_and_learned_pass():
    ds = motion(nt=6, n=8)
    f = ds.da4d.fit(window=3, epochs=1, batch_size=2, progress=False, network={"width": 4, "levels": 1})
    an = ds.da4d.assimilate(f)
    assert an["u"].attrs["units"] == "m s-1" and np.isfinite(an["u"].values).all()


def test_contract_names():
    for name in ("catalog", "open_dataset", "load", "Fitted", "DA4DAccessor", "get_model"):
        assert hasattr(xh, name) and name in xh.__all__, name
    acc = xr.Dataset().da4d
    for meth in ("fit", "assimilate", "problem", "windows"):
        assert callable(getattr(acc, meth))
    import inspect

    params = inspect.signature(type(acc).assimilate).parameters
    for p in ("fitted", "method", "model", "model_params", "window", "iterations", "cycle", "progress"):
        assert p in params, p
    params = inspect.signature(type(acc).fit).parameters
    for p in ("model", "window", "stride", "epochs", "batch_size", "method", "learn", "device", "progress",
              "validation", "seed"):
        assert p in params, p


@pytest.mark.parametrize("velocity", ["stream", "direct"])
def test_fit_with_a_motion_head(velocity):
    # network={"velocity": "stream"}: the motion U-Net predicts a stream function, so the analysed initial velocity
    # is divergence-free (to float32 rounding) in m/s; the direct head's is not.
    from xda_hybrid.motion.learned import MotionInversionNetwork
    from xda_hybrid.variational.regularisers import divergence

    ds = motion(nt=9, n=10)
    f = ds.da4d.fit(window=3, epochs=3, batch_size=2, progress=False, validation=None,
                    network={"width": 4, "levels": 1, "velocity": velocity})
    assert isinstance(f.network, MotionInversionNetwork) and f.network.config["velocity"] == velocity
    an = ds.da4d.assimilate(f)
    u, v = (torch.from_numpy(an[k].isel(time=0).values.astype("f8")) for k in ("u", "v"))
    scale = float(torch.cat([(u[:, 1:] - u[:, :-1]).flatten(), (v[1:] - v[:-1]).flatten()]).abs().max())
    assert scale > 1e-9  # the network moved away from its zero first guess
    rel = float(divergence(u, v).abs().max()) / scale
    assert (rel < 1e-5) if velocity == "stream" else (rel > 1e-2), rel


def test_motion_head_needs_a_tracer_model():
    with pytest.raises(ValueError, match="velocity"):
        l96().da4d.fit(window=5, epochs=1, progress=False, network={**SMALL_NET, "velocity": "stream"})
    with pytest.raises(ValueError, match="velocity must be"):
        motion().da4d.fit(window=3, epochs=1, progress=False, network={"width": 4, "levels": 1, "velocity": "curl"})
