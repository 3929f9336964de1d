"""Catalog, Pooch cache and dataset builders (tiny parameters, a private cache folder per test)."""
from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import pytest
import xarray as xr

import xda_hybrid as xh
from xda_hybrid.data import cache, datasets
from xda_hybrid.data.catalog import catalog_path

TINY = {
    "lorenz96": {"size": 8, "length": 30},
    "tracer_motion": {"size": 12, "length": 6},
    "shallow_water": {"size": 12, "length": 7, "spinup": 10},
}


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDA_HYBRID_DATA_DIR", str(tmp_path))
    return tmp_path


def test_catalog_is_intake_v2_with_the_three_entries():
    cat = xh.catalog()
    assert {"lorenz96", "tracer_motion", "shallow_water"} <= set(cat)
    assert catalog_path().name == "xda_hybrid.yaml"
    assert "version: 2" in catalog_path().read_text()


@pytest.mark.parametrize("name", sorted(TINY))
def test_catalog_defaults_match_the_builders(name):
    ups = xh.catalog().entries[name].user_parameters
    defaults = datasets.default_parameters(name)
    assert set(ups) == set(defaults)
    for k, up in ups.items():
        assert up.default == defaults[k], k
        assert up.dtype == type(defaults[k]).__name__, k


@pytest.mark.parametrize("name", sorted(TINY))
def test_open_dataset_cf_conventions(data_dir, name):
    ds = xh.open_dataset(name, **TINY[name])
    state = {"lorenz96": "x", "tracer_motion": "tracer", "shallow_water": "eta"}[name]
    assert ds[f"{state}_obs"].attrs["noise_std"] > 0
    assert f"{state}_true" in ds
    assert ds.attrs["model"] in ("lorenz96", "image", "shallow_water")
    for v in ds.data_vars:
        assert ds[v].dtype == np.float32
        assert "units" in ds[v].attrs and "long_name" in ds[v].attrs
    if name == "lorenz96":
        assert ds["time"].attrs["units"] == "1" and ds.sizes["site"] == 8
    else:
        assert np.issubdtype(ds["time"].dtype, np.datetime64)
        assert ds["x"].attrs["units"] == "m" and ds["y"].attrs["units"] == "m"
        assert ds["u_true"].attrs["units"] == "m s-1"
    # NaN marks missing observations, truth is complete
    assert ds[f"{state}_obs"].isnull().any() and not ds[f"{state}_true"].isnull().any()


def test_reader_paths_agree(data_dir):
    cat = xh.catalog()
    a = cat["lorenz96"].read(size=8, length=30)
    b = cat(size=8, length=30)["lorenz96"].read()
    c = xh.open_dataset("lorenz96", size=8, length=30)
    xr.testing.assert_identical(a, b)
    xr.testing.assert_identical(a, c)


def test_second_open_reuses_the_file(data_dir):
    before = cache.generation_count["lorenz96"]
    xh.open_dataset("lorenz96", **TINY["lorenz96"])
    path = cache.fetch("lorenz96", **TINY["lorenz96"])
    mtime = os.stat(path).st_mtime_ns
    assert cache.generation_count["lorenz96"] == before + 1
    xh.open_dataset("lorenz96", size=8, length=30.0)  # same normalised parameters
    assert cache.generation_count["lorenz96"] == before + 1
    assert os.stat(path).st_mtime_ns == mtime
    assert path.parent == data_dir


def test_generation_is_byte_identical(tmp_path, monkeypatch):
    hashes = []
    for sub in ("a", "b"):
        monkeypatch.setenv("XDA_HYBRID_DATA_DIR", str(tmp_path / sub))
        hashes.append(cache._sha256(cache.fetch("tracer_motion", **TINY["tracer_motion"])))
    assert hashes[0] == hashes[1]


def test_corrupted_cache_is_regenerated(data_dir):
    path = cache.fetch("lorenz96", **TINY["lorenz96"])
    good = path.read_bytes()
    n = cache.generation_count["lorenz96"]
    raw = bytearray(good)
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="hash check"):
        again = cache.fetch("lorenz96", **TINY["lorenz96"])
    assert cache.generation_count["lorenz96"] == n + 1
    assert again.read_bytes() == good


def test_missing_sidecar_regenerates(data_dir):
    path = cache.fetch("lorenz96", **TINY["lorenz96"])
    os.remove(str(path) + ".sha256")
    n = cache.generation_count["lorenz96"]
    with pytest.warns(RuntimeWarning, match="sidecar"):
        cache.fetch("lorenz96", **TINY["lorenz96"])
    assert cache.generation_count["lorenz96"] == n + 1
    assert os.path.exists(str(path) + ".sha256")


def test_reference_hash_mismatch_warns_but_keeps_data(data_dir, monkeypatch):
    fname = cache.cache_key("lorenz96", datasets.normalise_parameters("lorenz96", TINY["lorenz96"]))
    monkeypatch.setattr(cache, "reference_hashes", lambda: {fname: "0" * 64})
    with pytest.warns(cache.ReproducibilityWarning):
        path = cache.fetch("lorenz96", **TINY["lorenz96"])
    assert path.exists()


def test_concurrent_generation_is_safe(data_dir):
    paths, errors = [], []

    def work():
        try:
            paths.append(cache.fetch("shallow_water", **TINY["shallow_water"]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 1
    assert cache._sha256(paths[0]) == (paths[0].parent / (paths[0].name + ".sha256")).read_text().strip()
    assert not [p for p in os.listdir(data_dir) if p.endswith((".part", ".tmp"))]
    xr.open_dataset(paths[0], engine="scipy").load()


def test_bad_parameters(data_dir):
    with pytest.raises(TypeError, match="no parameter"):
        xh.open_dataset("lorenz96", sites=3)
    with pytest.raises(TypeError, match="integer"):
        xh.open_dataset("lorenz96", size=8.5)
    with pytest.raises(ValueError, match="obs_fraction"):
        xh.open_dataset("lorenz96", size=8, length=30, obs_fraction=0.0)
    with pytest.raises(KeyError, match="no dataset"):
        xh.open_dataset("nope")


def test_cache_dir_default(monkeypatch):
    monkeypatch.delenv("XDA_HYBRID_DATA_DIR", raising=False)
    assert "xda-hybrid" in str(cache.cache_dir())


def test_dask_chunks(data_dir):
    ds = xh.open_dataset("lorenz96", chunks={"time": 10}, **TINY["lorenz96"])
    assert ds["x_obs"].chunks is not None


def test_shallow_water_observation_frames(data_dir):
    ds = xh.open_dataset("shallow_water", **TINY["shallow_water"])
    observed = ds["eta_obs"].notnull().any(("y", "x")).values
    assert observed.tolist() == [t % 3 == 0 for t in range(7)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds.attrs["dt"] > 0 and ds.attrs["dx"] == pytest.approx(1000e3 / 12)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_default_datasets_reproduce_the_registry(data_dir, name):
    """Fails when a generator's output changed: update xda_hybrid/data/registry.txt (xda-hybrid datasets --registry)."""
    fname = cache.cache_key(name, datasets.normalise_parameters(name, {}))
    ref = cache.reference_hashes()[fname]
    with warnings.catch_warnings():
        warnings.simplefilter("error", cache.ReproducibilityWarning)
        path = cache.fetch(name)
    assert cache._sha256(path) == ref
