"""xda-hybrid: learn 4DVAR data assimilation from observations, for geophysical motion estimation."""
from . import metrics, models, observation, variational
from .models import get_model

__version__ = "0.1.0"
__all__ = ["get_model", "metrics", "models", "observation", "variational", "__version__"]
