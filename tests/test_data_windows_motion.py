"""xbatcher time windows and the tracer-motion generator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from xda_hybrid.data.motion import cloud_masks, random_velocity, tracer_motion_twin
from xda_hybrid.data.windows import TimeWindows, window_loader, window_starts


def _ds(nt=12, ny=3, nx=4, order=("time", "y", "x")):
    v = np.arange(nt * ny * nx, dtype="f4").reshape(nt, ny, nx)
    v[0, 0, 0] = np.nan
    da = xr.DataArray(v, dims=("time", "y", "x")).transpose(*order)
    return xr.Dataset({"a_obs": da, "b_obs": da * 2}, coords={"time": np.arange(nt) * 0.5})


def test_window_starts():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(10, 4, 3, cover_end=True) == [0, 3, 6]
    assert window_starts(11, 4, 3, cover_end=True) == [0, 3, 6, 7]
    with pytest.raises(ValueError, match="longer than the data"):
        window_starts(3, 4, 1)


@pytest.mark.parametrize("preload", [True, False])
@pytest.mark.parametrize("order", [("time", "y", "x"), ("x", "time", "y")])
def test_time_windows_values_and_order(order, preload):
    ds = _ds(order=order)
    w = TimeWindows(ds, ["a_obs", "b_obs"], window=4, stride=2, spatial_dims=("y", "x"), noise_std=[0.5, 2.0],
                    preload=preload)
    assert (w._memory is not None) == preload
    assert len(w) == 5
    item = w[1]
    assert item["values"].shape == (4, 2, 3, 4) and item["values"].dtype == torch.float32
    ref = ds["a_obs"].transpose("time", "y", "x").values[2:6]
    np.testing.assert_array_equal(item["values"][:, 0].numpy(), ref)
    np.testing.assert_array_equal(item["values"][:, 1].numpy(), 2 * ref)
    assert torch.all(item["inv_var"][:, 0] == 4.0) and torch.all(item["inv_var"][:, 1] == 0.25)
    first = w[0]
    assert torch.isnan(first["values"][0, 0, 0, 0]) and first["inv_var"][0, 0, 0, 0] == 0
    assert int(w[4]["start"]) == 8


@pytest.mark.parametrize("preload", [True, False])
def test_per_point_std_and_tail_window(preload):
    ds = _ds(nt=7)
    std = xr.DataArray(np.full((3, 4), 2.0, "f4"), dims=("y", "x"))
    std[1, 1] = -1.0  # non-positive: counts as unobserved
    ds["a_obs_std"] = std
    w = TimeWindows(ds, ["a_obs"], window=3, stride=3, spatial_dims=("y", "x"), noise_std=["a_obs_std"], cover_end=True,
                    preload=preload)
    assert w.starts == [0, 3, 4]
    item = w[2]
    assert item["inv_var"][0, 0, 1, 1] == 0 and torch.isnan(item["values"][0, 0, 1, 1])
    assert item["inv_var"][0, 0, 0, 1] == 0.25


def test_loader_and_dask_source():
    ds = _ds(nt=20)
    eager = TimeWindows(ds, ["a_obs"], 5, 1, ("y", "x"), [1.0])
    lazy = TimeWindows(ds.chunk({"time": 3}), ["a_obs"], 5, 1, ("y", "x"), [1.0])
    assert eager._memory is not None and lazy._memory is None  # dask sources are never preloaded
    unloaded = TimeWindows(ds, ["a_obs"], 5, 1, ("y", "x"), [1.0], preload=False)
    np.testing.assert_array_equal(unloaded.batch([3, 0, 9, 4])["values"].numpy(),
                                  eager.batch([3, 0, 9, 4])["values"].numpy())
    batches = list(window_loader(lazy, batch_size=4))
    assert len(batches) == 4 and batches[0]["values"].shape == (4, 5, 1, 3, 4)
    np.testing.assert_array_equal(torch.cat([b["values"] for b in batches]).numpy(),
                                  eager.batch(range(len(eager)))["values"].numpy())
    lazy._block_frames = 6  # force the random-access path (spans, xbatcher windows) of a lazy source
    lazy._block = None
    np.testing.assert_array_equal(lazy.batch([9, 0, 1, 15])["values"].numpy(), eager.batch([9, 0, 1, 15])["values"].numpy())
    order = [int(s) for b in window_loader(eager, batch_size=4, shuffle=True, seed=1) for s in b["start"]]
    assert sorted(order) == list(range(16)) and order != list(range(16))


def test_tracer_motion_twin_properties():
    tw = tracer_motion_twin(size=24, length=10, cloud_fraction=0.4, noise=0.05, seed=3)
    assert tw.truth.shape == (10, 3, 24, 24) and tw.obs.shape == (10, 1, 24, 24)
    assert tw.truth.dtype == torch.float64
    frac = torch.isnan(tw.obs[:, 0]).double().mean((1, 2))
    assert torch.allclose(frac, torch.full_like(frac, 0.4), atol=1.0 / 576)
    speed = tw.truth[0, :2].pow(2).sum(0).sqrt()
    assert 0.29 < float(speed.max()) <= 0.3 + 1e-9
    assert tw.noise_std == pytest.approx(0.05 * float(tw.truth[:, 2].std()))
    again = tracer_motion_twin(size=24, length=10, cloud_fraction=0.4, noise=0.05, seed=3)
    assert torch.equal(torch.nan_to_num(tw.obs, 1e9), torch.nan_to_num(again.obs, 1e9))
    other = tracer_motion_twin(size=24, length=10, cloud_fraction=0.4, noise=0.05, seed=4)
    assert not torch.equal(tw.truth, other.truth)


def test_clouds_move_and_velocity_closed_border():
    g = torch.Generator().manual_seed(0)
    m = cloud_masks(5, 32, 32, 0.3, g)
    assert m.dtype == torch.bool and not torch.equal(m[0], m[4])
    assert not cloud_masks(3, 16, 16, 0.0, g).any()
    with pytest.raises(ValueError):
        cloud_masks(3, 16, 16, 1.0, g)
    w = random_velocity(16, 16, g, boundary="closed")
    assert float(w[:, 0].abs().max()) == 0 and float(w[:, :, 0].abs().max()) == 0
    with pytest.raises(ValueError, match="size"):
        tracer_motion_twin(size=4)
