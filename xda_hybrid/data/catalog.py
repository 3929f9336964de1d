"""The packaged Intake 2 catalog and its reader.

The catalog YAML ships inside the package (``xda_hybrid/catalogs/xda_hybrid.yaml``,
located with :mod:`importlib.resources`, so it is found after a wheel install as
well as in a source checkout).  Its entries use :class:`SyntheticReader`, which
generates (once) and opens the dataset through :mod:`xda_hybrid.data.cache`.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import intake
from intake.readers import BaseReader

from .cache import fetch

__all__ = ["SyntheticReader", "catalog", "catalog_path", "open_dataset"]

CATALOG_FILE = "xda_hybrid.yaml"


def catalog_path() -> Path:
    """Path of the packaged catalog YAML."""
    ref = resources.files("xda_hybrid.catalogs").joinpath(CATALOG_FILE)
    if not ref.is_file():  # pragma: no cover - broken install
        raise FileNotFoundError(
            f"the packaged catalog {CATALOG_FILE} is missing from xda_hybrid/catalogs: "
            "reinstall xda-hybrid (package data not installed)"
        )
    return Path(str(ref))


def catalog() -> intake.Catalog:
    """The packaged Intake catalog (entries ``lorenz96``, ``tracer_motion``, ``shallow_water``).

    ``cat[name].read(**params)`` or ``cat(**params)[name].read()`` return an
    :class:`xarray.Dataset`; see each entry's ``user_parameters``.
    """
    return intake.from_yaml_file(str(catalog_path()))


class SyntheticReader(BaseReader):
    """Intake reader of the packaged synthetic datasets (generated once, cached via Pooch).

    Catalog kwargs: ``entry`` (dataset name) and ``parameters`` (dict of
    generator parameters, templated from the entry's user parameters).
    Keyword arguments given at read time override single parameters.
    """

    output_instance = "xarray:Dataset"
    imports = {"xarray", "pooch"}

    def _read(self, entry: str, parameters: dict[str, Any] | None = None, chunks: Any = None, **overrides):
        import xarray as xr

        params = dict(parameters or {})
        params.update(overrides)
        path = fetch(entry, **params)
        return xr.open_dataset(path, engine="scipy", chunks=chunks)


def open_dataset(name: str, chunks: Any = None, **params):
    """Read catalog entry ``name`` with generator ``params`` (same as ``catalog()[name].read(**params)``).

    Parameters
    ----------
    name : str
        ``"lorenz96"``, ``"tracer_motion"`` or ``"shallow_water"``.
    chunks : optional
        Passed to :func:`xarray.open_dataset` (dask-backed variables).
    **params
        Generator parameters (size, length, obs_fraction / cloud_fraction,
        noise, seed, ...); unknown names raise ``TypeError``.

    Raises
    ------
    KeyError
        Unknown entry.
    """
    cat = catalog()
    if name not in cat.entries:
        raise KeyError(f"no dataset {name!r} in the xda-hybrid catalog; available: {sorted(cat.entries)}")
    return cat[name].read(chunks=chunks, **params)
