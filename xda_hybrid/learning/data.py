"""Training data of the learned inversion: observation windows only, by design."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..observation import Observations
from ..variational.cost import Background

__all__ = ["TrainingData"]


@dataclass(frozen=True)
class TrainingData:
    """Observation windows and optional backgrounds — no slot for true states.

    Attributes
    ----------
    obs : Observations
        Values of shape (n_windows, T, C_o, *space), 0 where missing.
    background : Background, optional
        Background state of each window, ``state`` of shape (n_windows, C, *space),
        with its diagonal ``B⁻¹``; used as network input (networks built with
        ``background=True``) and in the cost's background term.
    """

    obs: Observations
    background: Background | None = None

    def __post_init__(self):
        if self.background is not None and self.background.state.shape[0] != len(self):
            raise ValueError(
                f"background has {self.background.state.shape[0]} windows, observations have {len(self)}"
            )

    def __len__(self) -> int:
        return self.obs.values.shape[0]

    def __getitem__(self, idx) -> "TrainingData":
        """Select windows (index, slice or index tensor)."""
        return TrainingData(self.obs[idx], None if self.background is None else self.background[idx])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "TrainingData":
        """Copy to a device and floating dtype."""
        bg = self.background
        if bg is not None:
            iv = bg.inv_var
            if isinstance(iv, torch.Tensor):
                iv = iv.to(device=device, dtype=dtype)
            bg = Background(bg.state.to(device=device, dtype=dtype), iv)
        return TrainingData(self.obs.to(device=device, dtype=dtype), bg)
