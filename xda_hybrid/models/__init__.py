"""Differentiable dynamical models and their registry."""
from __future__ import annotations

from .base import CFLError, DynamicalModel

_REGISTRY: dict[str, str] = {
    "lorenz96": "xda_hybrid.models.lorenz96:Lorenz96",
    "advection": "xda_hybrid.models.advection:Advection",
    "image": "xda_hybrid.models.image:ImageModel",
    "shallow_water": "xda_hybrid.models.shallow_water:ShallowWater",
}


def available_models() -> list[str]:
    """Names accepted by :func:`get_model`."""
    return sorted(_REGISTRY)


def get_model(model: str | DynamicalModel, **params) -> DynamicalModel:
    """Return a model instance from a registered name (or pass an instance through).

    Parameters
    ----------
    model : str or DynamicalModel
        One of :func:`available_models`, or an instance (returned as is when
        ``params`` is empty).
    **params
        Keyword options of the model's constructor.
    """
    if isinstance(model, DynamicalModel):
        if params:
            raise ValueError("model_params can only be given with a model name, not an instance")
        return model
    if not isinstance(model, str) or model not in _REGISTRY:
        raise ValueError(f"unknown model {model!r}; expected one of {available_models()} or a DynamicalModel")
    import importlib

    mod, cls = _REGISTRY[model].split(":")
    return getattr(importlib.import_module(mod), cls)(**params)


__all__ = ["CFLError", "DynamicalModel", "available_models", "get_model"]
