"""Property tests: random datasets either assimilate correctly or raise a clear, predictable error."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xda_hybrid  # noqa: F401 - registers ds.da4d

CLEAR = (ValueError, TypeError, KeyError)


@st.composite
def datasets(draw, two_d: bool):
    """A dataset for ``lorenz96`` (1D) or ``image`` (2D), with what may make it invalid recorded."""
    nt = draw(st.integers(1, 14))
    shape = (draw(st.integers(2, 7)), draw(st.integers(2, 7))) if two_d else (draw(st.integers(2, 12)),)
    space = ("y", "x") if two_d else ("site",)
    dims = draw(st.permutations(("time", *space)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    missing = draw(st.sampled_from([0.0, 0.3, 0.6, 0.95, 1.0]))
    values = rng.normal(size=(nt, *shape)) + (0 if two_d else 4)
    values[rng.random(values.shape) < missing] = np.nan
    n_inf = draw(st.sampled_from([0, 0, 0, 0, 0, 1]))
    if n_inf:
        values.flat[rng.integers(values.size)] = np.inf
    noise = draw(st.sampled_from([0.5, 1.0, 2.0, 0.5, 1.0, 0.0, -1.0, float("nan")]))
    time_kind = draw(st.sampled_from(["regular"] * 4 + ["none", "irregular", "decreasing"]))
    window = draw(st.integers(1, max(1, nt + 2)))
    da = xr.DataArray(values.astype("f4"), dims=("time", *space)).transpose(*dims)
    var = "tracer_obs" if two_d else "x_obs"
    ds = xr.Dataset({var: da})
    ds[var].attrs["noise_std"] = noise
    step = 1.0 if two_d else 0.05
    if time_kind == "regular":
        ds = ds.assign_coords(time=np.arange(nt) * step)
    elif time_kind == "irregular":
        ds = ds.assign_coords(time=np.cumsum(rng.random(nt) + 0.1) * step)
    elif time_kind == "decreasing":
        ds = ds.assign_coords(time=-np.arange(nt) * step)
    if two_d and draw(st.booleans()):
        ds = ds.assign_coords(x=np.arange(shape[1]) * 3.0, y=np.arange(shape[0]) * 3.0)
    finite = np.isfinite(values)
    expect_error = (
        window > nt
        or not finite.any()
        or n_inf > 0
        or not (noise > 0)
        or (time_kind == "irregular" and nt >= 3)
        or (time_kind == "decreasing" and nt >= 2)
        or (not two_d and shape[0] < 4)
        or (two_d and min(shape) < 3)
    )
    return ds, var, window, expect_error


def _check(ds, var, window, model):
    """Assimilate ``ds``; checks what came out and returns ``("error" | "ok", description)``."""
    try:
        an = ds.da4d.assimilate(method="4dvar", model=model, window=window, iterations=2)
    except CLEAR as e:
        assert len(str(e)) > 10
        return "error", f"{type(e).__name__}: {e}"
    tmpl = ds[var]
    space = [d for d in tmpl.dims if d != "time"]
    ordered = ("time", *sorted(space, key=lambda d: ("y", "x", "site").index(d)))
    for name in an.data_vars:
        assert an[name].dims == ordered
        assert an[name].shape == tuple(ds.sizes[d] for d in ordered)
    for c in ds.coords:
        xr.testing.assert_identical(an[c], ds[c])
    # frames inside windows with observations are finite, the others NaN
    first = next(iter(an.data_vars))
    finite_frames = np.isfinite(an[first].values).reshape(an.sizes["time"], -1).all(1)
    nan_frames = np.isnan(an[first].values).reshape(an.sizes["time"], -1).all(1)
    assert (finite_frames | nan_frames).all()
    assert finite_frames.any()
    return "ok", "the dataset was accepted"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(two_d=False))
def test_lorenz96_random_datasets(case):
    ds, var, window, expect_error = case
    outcome, what = _check(ds, var, window, model="lorenz96")
    assert outcome == ("error" if expect_error else "ok"), what


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(two_d=True))
def test_image_random_datasets(case):
    ds, var, window, expect_error = case
    outcome, what = _check(ds, var, window, model="image")
    assert outcome == ("error" if expect_error else "ok"), what


def test_strategy_produces_both_outcomes():
    """The strategy must exercise both the valid and the invalid branches."""
    outcomes = set()

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(datasets(two_d=False))
    def collect(case):
        outcomes.add(case[3])

    collect()
    assert outcomes == {True, False}


# ----------------------------------------------------------------------------- hostile inputs (issue 7)
def _noise(v):
    def f(ds):
        ds["x_obs"].attrs["noise_std"] = v
    return f


def _drop_noise(ds):
    del ds["x_obs"].attrs["noise_std"]


def _dtype(dt):
    def f(ds):
        a = ds["x_obs"]
        if np.dtype(dt).kind in "iu":
            a = a.fillna(0.0)
        ds["x_obs"] = a.astype(dt).assign_attrs(a.attrs)
    return f


def _scale(k):
    def f(ds):
        ds["x_obs"] = (ds["x_obs"] * k).assign_attrs(ds["x_obs"].attrs)
    return f


def _time(kind):
    def f(ds):
        nt = ds.sizes["time"]
        t = np.arange(nt) * 0.05
        if kind == "duplicate":
            t[1] = t[0]
        elif kind == "shuffled":
            t = t[::-1].copy()
        elif kind == "irregular":
            t = t ** 1.5
        elif kind == "nan":
            t[-1] = np.nan
        elif kind == "strings":
            t = np.array([f"t{i}" for i in range(nt)])
        elif kind == "hours":
            t = np.datetime64("2020-01-01") + np.arange(nt) * np.timedelta64(1, "h")
        ds.coords["time"] = t
    return f


def _poke(value, where="one"):
    def f(ds):
        a = ds["x_obs"].values.copy()
        if where == "one":
            a.flat[3] = value
        else:
            a[:] = value
        ds["x_obs"] = ds["x_obs"].copy(data=a)
    return f


#: (name, mutation in place of a deep copy, expected "ok" or "error" ("model": an error once the model runs,
#: i.e. windows of 2 frames or more), words the error must contain)
FAULTS = [
    ("float16", _dtype("f2"), "ok", ""), ("float64", _dtype("f8"), "ok", ""), ("int32", _dtype("i4"), "ok", ""),
    ("bool", _dtype("bool"), "error", "x_obs"), ("complex", _dtype("c8"), "error", "x_obs"),
    ("noise 1e-3", _noise(1e-3), "ok", ""), ("noise 1e3", _noise(1e3), "ok", ""),
    ("noise 0", _noise(0.0), "error", "noise_std"), ("noise -1", _noise(-1.0), "error", "noise_std"),
    ("noise nan", _noise(float("nan")), "error", "noise_std"), ("noise inf", _noise(float("inf")), "error", "noise_std"),
    ("noise str", _noise("0.5"), "error", "noise_std"), ("noise bool", _noise(True), "error", "noise_std"),
    ("noise 1e-30", _noise(1e-30), "error", "x_obs"), ("noise 1e30", _noise(1e30), "error", "x_obs"),
    ("no noise attr", _drop_noise, "error", "x_obs"),
    ("values x1e20", _scale(1e20), "error", "x_obs"), ("values x1e6", _scale(1e6), "model", "RK4"),
    ("one +inf", _poke(np.inf), "error", "x_obs"), ("one -inf", _poke(-np.inf), "error", "x_obs"),
    ("all NaN", _poke(np.nan, "all"), "error", "x_obs"),
    ("duplicate time", _time("duplicate"), "error", "time"), ("decreasing time", _time("shuffled"), "error", "time"),
    ("irregular time", _time("irregular"), "error", "time"), ("NaN time", _time("nan"), "error", "time"),
    ("string time", _time("strings"), "error", "time"), ("hourly datetime time", _time("hours"), "model", "dt=3600"),
    ("no time coord", lambda ds: ds.__delitem__("time"), "ok", ""),
    ("transposed", lambda ds: ds.__setitem__("x_obs", ds["x_obs"].T), "ok", ""),
    ("no model attr", lambda ds: ds.attrs.clear(), "error", "model"),
    ("forcing attr str", lambda ds: ds.attrs.update(forcing="8"), "error", "forcing"),
    ("forcing attr nan", lambda ds: ds.attrs.update(forcing=np.nan), "error", "forcing"),
    ("std variable", lambda ds: ds.__setitem__("x_obs_std", xr.full_like(ds["x_obs"], 0.5).fillna(1.0)), "ok", ""),
    ("std variable <= 0", lambda ds: ds.__setitem__("x_obs_std", xr.full_like(ds["x_obs"], -1.0).fillna(1.0)),
     "error", "x_obs_std"),
    ("std variable str", lambda ds: ds.__setitem__("x_obs_std", xr.full_like(ds["x_obs"], 1.0).astype(str)),
     "error", "x_obs_std"),
]
# dataset-wide changes that need the result of the others (kept separate: their error names the dims)
RESHAPES = [
    ("none", lambda ds: ds, "ok", ""),
    ("site renamed", lambda ds: ds.rename(site="node"), "error", "site"),
    ("extra dim", lambda ds: ds.expand_dims(member=2), "error", "member"),
    ("too few sites", lambda ds: ds.isel(site=slice(0, 3)), "error", "site"),
    ("empty time", lambda ds: ds.isel(time=slice(0, 0)), "error", "time"),
]


def _group(fault):
    """Faults that overwrite the same thing (the time coordinate, the noise attribute, ...) are never combined.

    The values and their storage dtype are one thing: ×1e20 or ±inf cast to int32 is INT_MIN, ×1e6 cast
    to float16 is inf, and ±inf cannot be written into an int32 array — other faults than either part,
    with other documented outcomes.
    """
    name = fault[0]
    for key in ("time", "noise", "forcing", "std variable"):
        if key in name:
            return key
    dtypes = ("float16", "float64", "int32", "bool", "complex")
    return "values" if name in dtypes or any(k in name for k in ("values", "inf", "NaN")) else name


@st.composite
def hostile(draw):
    nt = draw(st.integers(4, 12))
    n = draw(st.integers(4, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = 3 + 2 * rng.normal(size=(nt, n))
    x[rng.random(x.shape) < draw(st.sampled_from([0.0, 0.4, 0.9]))] = np.nan
    x.flat[0] = 3.0  # at least one observation
    ds = xr.Dataset({"x_obs": (("time", "site"), x.astype("f4"), {"noise_std": 0.5, "units": "1"})},
                    coords={"time": ("time", np.arange(nt) * 0.05, {"units": "1"}), "site": np.arange(n)},
                    attrs={"model": "lorenz96", "forcing": 8.0})
    faults = draw(st.lists(st.sampled_from(FAULTS), min_size=0, max_size=2, unique_by=_group))
    reshape = draw(st.sampled_from(RESHAPES[:1] * 3 + RESHAPES[1:]))
    window = draw(st.sampled_from([1, 3, nt, nt + 1, 0, 2.5]))
    for _, mutate, _, _ in faults:
        mutate(ds)
    ds = reshape[1](ds)
    parts = [(p[0], p[1], ("error" if window != 1 else "ok") if p[2] == "model" else p[2], p[3])
             for p in faults + [reshape]]
    if any(p[0].startswith("std variable") for p in parts):  # a per-point std variable wins over the attribute
        parts = [(p[0], p[1], "ok", "") if "noise" in p[0] else p for p in parts]
    if window in (0, nt + 1, 2.5):
        parts.append(("bad window", None, "error", "window"))
    return ds, window, parts


def _expected(parts):
    """The documented outcome of a dataset with these faults: ``"error"`` if any fault must raise."""
    return "error" if any(p[2] == "error" for p in parts) else "ok"


def _hostile_check(ds, window, parts, call):
    """Run ``call(ds, window)``; checks the error message or the output, and that ``ds`` is unmodified.

    Returns ``("error" | "ok", description)`` for the caller to compare with :func:`_expected`.
    """
    before = ds.copy(deep=True)
    words = [p[3] for p in parts if p[2] == "error"]
    faults = [p[0] for p in parts]
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            out = call(ds, window)
    except CLEAR as e:
        outcome, what = "error", f"{faults}: {type(e).__name__}: {e}"
        # the message names what is at fault (one of the faults present, when several are)
        assert not words or any(w in str(e) for w in words), what
    else:
        outcome, what = "ok", f"{faults} accepted"
        values = [np.asarray(out[v].values) for v in out.data_vars] if isinstance(out, xr.Dataset) else \
            [p.detach().numpy() for p in out.network.parameters()]
        if not all(np.isfinite(v[~np.isnan(v)]).all() and not np.isnan(v).all() for v in values):
            assert any(issubclass(w.category, RuntimeWarning) for w in rec), "non-finite output without a warning"
    xr.testing.assert_identical(ds, before)  # the input is never modified
    assert ds.attrs == before.attrs and all(ds[v].attrs == before[v].attrs for v in ds.variables)
    return outcome, what


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile())
def test_hostile_inputs_assimilate_or_fail_clearly(case):
    ds, window, parts = case
    outcome, what = _hostile_check(ds, window, parts,
                                   lambda d, w: d.da4d.assimilate(window=w, iterations=2, method="4dvar"))
    assert outcome == _expected(parts), what


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile())
def test_hostile_inputs_fit_or_fail_clearly(case):
    ds, window, parts = case
    outcome, what = _hostile_check(ds, window, parts,
                                   lambda d, w: d.da4d.fit(window=w, epochs=1, batch_size=4, progress=False,
                                                           validation=None, network={"width": 4, "depth": 1}))
    assert outcome == _expected(parts), what


def _base(nt=10, n=6):
    rng = np.random.default_rng(1)
    x = 3 + 2 * rng.normal(size=(nt, n))
    x[rng.random(x.shape) < 0.4] = np.nan
    x.flat[0] = 3.0
    return xr.Dataset({"x_obs": (("time", "site"), x.astype("f4"), {"noise_std": 0.5, "units": "1"})},
                      coords={"time": ("time", np.arange(nt) * 0.05, {"units": "1"}), "site": np.arange(n)},
                      attrs={"model": "lorenz96", "forcing": 8.0})


@pytest.mark.parametrize("fault", FAULTS + RESHAPES[1:], ids=lambda f: f[0])
def test_each_fault_alone(fault):
    """Every fault of the fuzzer on its own: the documented outcome (works, or an error naming it)."""
    ds = _base()
    if fault in RESHAPES:
        ds = fault[1](ds)
    else:
        fault[1](ds)
    if fault[2] == "model":  # windows of 5 frames run the model
        fault = (fault[0], fault[1], "error", fault[3])
    outcome, what = _hostile_check(ds, 5, [fault],
                                   lambda d, w: d.da4d.assimilate(window=w, iterations=2, method="4dvar"))
    assert outcome == _expected([fault]), what


@pytest.mark.parametrize("window", [0, -3, 11, 2.5, True, "5"])
def test_bad_windows(window):
    outcome, what = _hostile_check(_base(), window, [("bad window", None, "error", "window")],
                                   lambda d, w: d.da4d.assimilate(window=w, iterations=2, method="4dvar"))
    assert outcome == "error", what


def test_hostile_strategy_produces_both_outcomes():
    outcomes = set()

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(hostile())
    def collect(case):
        outcomes.add(any(p[2] == "error" for p in case[2]))

    collect()
    assert outcomes == {True, False}
