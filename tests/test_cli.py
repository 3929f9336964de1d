"""The ``xda-hybrid`` command line on tiny data."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from xda_hybrid.cli import main


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDA_HYBRID_DATA_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def l96_file(tmp_path):
    rng = np.random.default_rng(0)
    nt, n = 30, 8
    x = 3 + rng.normal(size=(nt, n))
    obs = np.where(rng.random((nt, n)) < 0.6, x, np.nan).astype("f4")
    ds = xr.Dataset({"x_obs": (("time", "site"), obs, {"noise_std": 0.5, "units": "1"})},
                    coords={"time": ("time", np.arange(nt) * 0.05, {"units": "1"}), "site": np.arange(n)},
                    attrs={"model": "lorenz96", "forcing": 8.0})
    path = tmp_path / "l96.nc"
    ds.to_netcdf(path)
    return path


def test_datasets_lists_the_catalog(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("lorenz96", "tracer_motion", "shallow_water", "cloud_fraction"):
        assert name in out


def test_assimilate_4dvar_netcdf_and_zarr(l96_file, tmp_path, capsys):
    out = tmp_path / "an.nc"
    assert main(["assimilate", str(l96_file), "-o", str(out), "--window", "10", "--iterations", "3", "--quiet"]) == 0
    an = xr.open_dataset(out)
    assert an.attrs["method"] == "4dvar" and an["x"].shape == (30, 8)
    assert "written to" in capsys.readouterr().out


def test_zarr_output_and_dask_chunks(l96_file, tmp_path):
    pytest.importorskip("zarr")
    zarr_out = tmp_path / "an.zarr"
    assert main(["assimilate", str(l96_file), "-o", str(zarr_out), "--window", "10", "--iterations", "1",
                 "--chunks", "10", "--quiet"]) == 0
    assert xr.open_zarr(zarr_out)["x"].shape == (30, 8)


def test_fit_then_assimilate_learned(l96_file, tmp_path, capsys):
    model = tmp_path / "m.pt"
    assert main(["fit", str(l96_file), "-o", str(model), "--window", "10", "--stride", "4", "--epochs", "1",
                 "--learn", "forcing", "--quiet"]) == 0
    assert "learned parameters" in capsys.readouterr().out
    out = tmp_path / "an.nc"
    assert main(["assimilate", str(l96_file), "-o", str(out), "--fitted", str(model), "--method", "hybrid",
                 "--iterations", "2", "--quiet"]) == 0
    assert xr.open_dataset(out).attrs["method"] == "hybrid"


def test_catalog_entry_as_input(data_dir, capsys):
    out = data_dir / "an.nc"
    assert main(["assimilate", "lorenz96:size=8,length=20", "-o", str(out), "--window", "10",
                 "--iterations", "1", "--quiet"]) == 0
    assert xr.open_dataset(out)["x"].shape == (20, 8)


def test_errors_give_status_2(l96_file, tmp_path, capsys):
    assert main(["assimilate", str(l96_file), "-o", str(tmp_path / "a.nc"), "--window", "100"]) == 2
    assert "longer than the data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["assimilate", "no-such-thing", "-o", str(tmp_path / "a.nc")])


def test_demo_quick(data_dir, capsys):
    out = data_dir / "demo"
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for method in ("learned", "hybrid", "4dvar"):
        assert method in text
    for name in ("analysis.nc", "velocity.png", "errors.png", "training.png", "streamlines.png"):
        assert (out / name).stat().st_size > 0, name
    an = xr.open_dataset(out / "analysis.nc")
    assert {"u", "v", "tracer"} <= set(an.data_vars) and an["u"].attrs["units"] == "m s-1"
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["methods"]) == {"learned", "hybrid", "4dvar"}


def test_twin_subcommand_and_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "xda_hybrid", "twin", "lorenz96", "--windows", "2", "--iterations", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "4DVAR trajectory RMSE" in r.stdout
