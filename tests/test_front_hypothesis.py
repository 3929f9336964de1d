"""Property tests: random datasets either assimilate correctly or raise a clear, predictable error."""
from __future__ import annotations

import numpy as np
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


def _check(ds, var, window, expect_error, model):
    try:
        an = ds.da4d.assimilate(method="4dvar", model=model, window=window, iterations=2)
    except CLEAR as e:
        assert expect_error, f"unexpected {type(e).__name__}: {e}"
        assert len(str(e)) > 10
        return
    assert not expect_error, "an invalid dataset was accepted"
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


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(two_d=False))
def test_lorenz96_random_datasets(case):
    _check(*case, model="lorenz96")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(two_d=True))
def test_image_random_datasets(case):
    _check(*case, model="image")


def test_strategy_produces_both_outcomes():
    """The strategy must exercise both the valid and the invalid branches."""
    outcomes = set()

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(datasets(two_d=False))
    def collect(case):
        outcomes.add(case[3])

    collect()
    assert outcomes == {True, False}
