"""Observation operators and observation windows with their error statistics.

An observation window holds ``values`` of shape ``(batch, n_obs_steps, n_obs_channels, *space)``
with missing entries set to 0, and ``inv_var`` of the same shape: the inverse error
variance ``R⁻¹`` per point, 0 where nothing was observed.  NaN in the raw values
means "missing", never an error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .models.base import DynamicalModel


@dataclass(frozen=True)
class Observations:
    """A batch of observation windows (no slot for true states, by design).

    Attributes
    ----------
    values : Tensor, shape (batch, n_obs_steps, n_obs_channels, *space)
        Observed values, 0 where missing (never NaN).
    inv_var : Tensor, same shape
        Inverse error variance ``1/σ²`` (units of values⁻²); 0 where missing.
    """

    values: torch.Tensor
    inv_var: torch.Tensor

    def __post_init__(self):
        if self.values.shape != self.inv_var.shape:
            raise ValueError(
                f"values {tuple(self.values.shape)} and inv_var {tuple(self.inv_var.shape)} must have the same shape"
            )

    @classmethod
    def from_values(
        cls,
        values: torch.Tensor,
        noise_std: float | torch.Tensor | None = None,
        inv_var: torch.Tensor | None = None,
    ) -> "Observations":
        """Build observations from raw values with NaN marking missing points.

        Parameters
        ----------
        values : Tensor, shape (batch, n_obs_steps, n_obs_channels, *space)
            Raw observations, NaN = missing.  Not modified.
        noise_std : float or Tensor broadcastable to ``values``, optional
            Observation error standard deviation, > 0.
        inv_var : Tensor broadcastable to ``values``, optional
            Inverse error variance, >= 0 (instead of ``noise_std``).
        """
        if not isinstance(values, torch.Tensor) or not values.is_floating_point():
            raise TypeError("observation values must be a floating-point torch.Tensor")
        if (noise_std is None) == (inv_var is None):
            raise ValueError("give exactly one of noise_std or inv_var")
        missing = torch.isnan(values)
        if torch.isinf(values).any():
            raise ValueError("observation values contain ±inf; use NaN for missing values")
        if noise_std is not None:
            std = torch.as_tensor(noise_std, dtype=values.dtype, device=values.device)
            if not torch.isfinite(std).all() or (std <= 0).any():
                raise ValueError(f"noise_std must be finite and > 0, got {noise_std}")
            iv = (1.0 / std**2).expand_as(values)
        else:
            iv = torch.as_tensor(inv_var, dtype=values.dtype, device=values.device).expand_as(values)
            if not torch.isfinite(iv).all() or (iv < 0).any():
                raise ValueError("inv_var must be finite and >= 0")
        iv = torch.where(missing, torch.zeros_like(iv), iv)
        vals = torch.where(missing, torch.zeros_like(values), values)
        if not (iv > 0).any():
            raise ValueError("all observations are missing (NaN) or have zero weight")
        return cls(vals, iv)

    @property
    def mask(self) -> torch.Tensor:
        """Boolean tensor, True where observed."""
        return self.inv_var > 0

    def __getitem__(self, idx) -> "Observations":
        """Select windows along the batch axis."""
        return Observations(self.values[idx], self.inv_var[idx])

    def to(self, *args, **kwargs) -> "Observations":
        return Observations(self.values.to(*args, **kwargs), self.inv_var.to(*args, **kwargs))


def _index(positions: Sequence[int]) -> slice | list[int]:
    """A slice when ``positions`` are evenly spaced and increasing (a view, and a cheap
    adjoint), else the list (advanced indexing: a gather, and a scatter in the adjoint)."""
    p = list(positions)
    if len(p) == 1:
        return slice(p[0], p[0] + 1)
    step = p[1] - p[0]
    if step > 0 and all(b - a == step for a, b in zip(p, p[1:])):
        return slice(p[0], p[-1] + 1, step)
    return p


class ObservationOperator:
    """Selects observed channels at observed steps from a trajectory.

    Parameters
    ----------
    model : DynamicalModel
        Gives the channel names.
    channels : sequence of str or int, optional
        Observed state variables (default: all).
    steps : sequence of int, optional
        Observed time indices within the window (default: every step).
    """

    def __init__(
        self,
        model: DynamicalModel,
        channels: Sequence[str | int] | None = None,
        steps: Sequence[int] | None = None,
    ):
        names = model.state_names
        if channels is None:
            channels = list(range(len(names)))
        idx = []
        for c in channels:
            idx.append(model.channel(c) if isinstance(c, str) else int(c))
            if not 0 <= idx[-1] < len(names):
                raise ValueError(f"observed channel {c!r} out of range for {list(names)}")
        self.channels = tuple(idx)
        self.channel_names = tuple(names[i] for i in idx)
        if steps is not None:
            steps = tuple(int(s) for s in steps)
            if any(s < 0 for s in steps) or list(steps) != sorted(set(steps)):
                raise ValueError(f"observed steps must be increasing and >= 0, got {steps}")
        self.steps = steps

    def n_steps_needed(self, window: int) -> int:
        """Model steps needed to cover a window of ``window`` frames."""
        last = window - 1 if self.steps is None else self.steps[-1]
        return last

    def __call__(self, trajectory: torch.Tensor) -> torch.Tensor:
        """Map ``(batch, time, channel, *space)`` to ``(batch, n_obs_steps, n_obs_channels, *space)``."""
        if self.steps is not None:
            trajectory = trajectory[:, _index(self.steps)]
        if len(self.channels) != trajectory.shape[2] or self.channels != tuple(range(trajectory.shape[2])):
            trajectory = trajectory[:, :, _index(self.channels)]
        return trajectory
