"""The xarray front: the ``da4d`` Dataset accessor, the fitted object, the catalog, plots and the CLI.

Importing this package registers ``ds.da4d``.  Knows xarray and the public
tensor APIs of the lower layers, no numerical internals.
"""
from __future__ import annotations

from ._members import ensemble_mean, ensemble_spread
from .accessor import DA4DAccessor
from .fitted import Fitted, load


def catalog():
    """The packaged Intake catalog (see :func:`xda_hybrid.data.catalog.catalog`)."""
    from ..data.catalog import catalog as _catalog

    return _catalog()


def open_dataset(name: str, chunks=None, **params):
    """Read a catalog entry (see :func:`xda_hybrid.data.catalog.open_dataset`)."""
    from ..data.catalog import open_dataset as _open

    return _open(name, chunks=chunks, **params)


__all__ = ["DA4DAccessor", "Fitted", "catalog", "ensemble_mean", "ensemble_spread", "load", "open_dataset"]
