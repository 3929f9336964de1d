"""Scale-out: ``assimilate(parallel="dask")`` on a dask.distributed cluster, ``train`` under DDP (torchrun).

Tiny data; the cluster (2 worker processes) is started once for the module.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xda_hybrid  # noqa: F401 - registers ds.da4d
from xda_hybrid.front._parallel import DEFERRED, block_bounds

SMALL_NET = {"width": 8, "depth": 1, "kernel_size": 3}
HERE = Path(__file__).parent


def l96(nt=47, n=8, seed=0, frac=0.6):
    rng = np.random.default_rng(seed)
    x = 3 + 2 * rng.normal(size=(nt, n))
    obs = np.where(rng.random((nt, n)) < frac, x + 0.5 * rng.normal(size=x.shape), np.nan).astype("f4")
    obs[20:31] = np.nan  # a stretch without observations: NaN analysis there, on both paths
    return xr.Dataset(
        {"x_obs": (("time", "site"), obs, {"noise_std": 0.5, "units": "1", "long_name": "observed state"})},
        coords={"time": ("time", np.arange(nt) * 0.05, {"units": "1"}), "site": ("site", np.arange(n) + 10)},
        attrs={"model": "lorenz96", "forcing": 8.0, "source": "test"},
    )


def motion(nt=11, n=8):
    yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    obs = np.array([np.sin(2 * np.pi * (xx - 0.5 * t) / n) + np.cos(2 * np.pi * yy / n) for t in range(nt)], "f4")
    obs[:, :3, :3] = np.nan
    return xr.Dataset(
        {"tracer_obs": (("time", "y", "x"), obs, {"noise_std": 0.05, "units": "degC"})},
        coords={"time": ("time", np.datetime64("2020-01-01") + np.arange(nt) * np.timedelta64(3600, "s")),
                "y": ("y", np.arange(n) * 2000.0, {"units": "m"}), "x": ("x", np.arange(n) * 2000.0, {"units": "m"})},
        attrs={"model": "image", "boundary": "periodic"},
    )


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


def _same_analysis(lazy: xr.Dataset, eager: xr.Dataset, rtol: float, atol: float) -> None:
    assert set(lazy.data_vars) == set(eager.data_vars)
    for v in eager.data_vars:
        assert lazy[v].chunks is not None, f"{v} is not dask-backed"
        assert lazy[v].dims == eager[v].dims and lazy[v].attrs == eager[v].attrs
    got = lazy.compute()
    for v in eager.data_vars:
        np.testing.assert_array_equal(np.isnan(got[v].values), np.isnan(eager[v].values))
        np.testing.assert_allclose(got[v].values, eager[v].values, rtol=rtol, atol=atol)
    for c in eager.coords:
        xr.testing.assert_identical(got[c], eager[c])
    missing = set(eager.attrs) - set(got.attrs)
    assert not missing, f"lazy analysis lacks attrs {missing}"
    for k, val in eager.attrs.items():
        if k in DEFERRED:
            assert k in got.attrs
        elif k != "wall_time":
            assert got.attrs[k] == val, k
    assert got.attrs["parallel"] == "dask"


def test_block_bounds_align_on_cycle():
    assert block_bounds(47, 10, 13) == [(0, 10), (10, 20), (20, 30), (30, 40), (40, 47)]
    assert block_bounds(47, 4, 13) == [(0, 12), (12, 24), (24, 36), (36, 47)]
    assert block_bounds(5, 10, 3) == [(0, 5)]


@pytest.mark.parametrize("cycle", [None, 4])
def test_dask_4dvar_equals_in_memory(client, cycle):
    ds = l96()
    kw = dict(method="4dvar", window=10, cycle=cycle, iterations=15, batch_size=4)
    eager = ds.da4d.assimilate(**kw)
    lazy = ds.chunk({"time": 13}).da4d.assimilate(parallel="dask", **kw)
    assert lazy.attrs["n_blocks"] > 1 and np.isnan(lazy.attrs["final_cost"])
    if cycle is None:  # the window [20, 30) has no observation
        assert np.isnan(eager["x"].values[20:30]).all() and not np.isnan(eager["x"].values[:20]).any()
    _same_analysis(lazy, eager, rtol=1e-6, atol=1e-6)


def test_dask_learned_image_equals_in_memory_and_streams_to_zarr(client, tmp_path):
    pytest.importorskip("zarr")
    ds = motion()
    f = ds.da4d.fit(window=3, epochs=1, batch_size=2, progress=False, network={"width": 4, "levels": 1}, seed=1)
    eager = ds.da4d.assimilate(f)
    lazy = ds.chunk({"time": 4}).da4d.assimilate(f, parallel="dask")
    assert lazy.attrs["n_blocks"] == 4  # blocks of 3 frames (the cycle), the last window covers the end
    _same_analysis(lazy, eager, rtol=1e-5, atol=1e-6)
    lazy.to_zarr(tmp_path / "an.zarr")  # computed on the cluster block by block, written by the workers
    back = xr.open_zarr(tmp_path / "an.zarr")
    for v in eager.data_vars:
        np.testing.assert_allclose(back[v].values, eager[v].values, rtol=1e-5, atol=1e-6)


def test_dask_learned_lorenz96_in_memory_input_and_errors(client):
    ds = l96(nt=40)
    f = ds.da4d.fit(window=10, stride=2, epochs=1, batch_size=8, progress=False, network=SMALL_NET)
    eager = ds.da4d.assimilate(f, method="hybrid", iterations=3)
    lazy = ds.da4d.assimilate(f, method="hybrid", iterations=3, parallel="dask")  # numpy input: one block
    _same_analysis(lazy, eager, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="parallel"):
        ds.da4d.assimilate(f, parallel="spark")


# ---------------------------------------------------------------- DDP (torchrun, 2 CPU processes, gloo)
def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_ddp_train_matches_single_process(tmp_path):
    from ddp_worker import run  # the same code as the spawned ranks

    out = tmp_path / "ddp.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([*_torchrun(), str(HERE / "ddp_worker.py"), str(out), str(tmp_path / "ck.pt")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = json.loads(out.read_text())
    single = run(None, None)
    assert ddp["world_size"] == 2
    np.testing.assert_allclose(ddp["history"], single["history"], rtol=1e-7)
    for k, v in single["params"].items():
        np.testing.assert_allclose(ddp["params"][k], v, rtol=1e-5, atol=1e-7, err_msg=k)
    # the parameters moved (the comparison is not trivially between two initial states)
    assert max(abs(np.asarray(ddp["params"][k]) - np.asarray(single["init"][k])).max() for k in single["init"]) > 1e-4
    # only rank 0 wrote the checkpoint
    assert ddp["checkpoint_written_by"] == [0]
