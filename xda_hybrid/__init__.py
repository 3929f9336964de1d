"""xda-hybrid: learn 4DVAR data assimilation from observations, for geophysical motion estimation."""
from . import metrics, models, observation, variational
from .models import get_model

__version__ = "0.1.0"

# the xarray front: importing it registers the ``ds.da4d`` accessor
from .front import DA4DAccessor, Fitted, catalog, ensemble_mean, ensemble_spread, load, open_dataset  # noqa: E402

__all__ = [
    "DA4DAccessor",
    "Fitted",
    "catalog",
    "ensemble_mean",
    "ensemble_spread",
    "get_model",
    "load",
    "metrics",
    "models",
    "observation",
    "open_dataset",
    "variational",
    "__version__",
]
