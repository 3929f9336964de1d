"""Learnable dynamics: models with a neural correction of the tendency."""
from __future__ import annotations

import torch

from ..models.lorenz96 import Lorenz96
from .networks import CircularCNN1d

__all__ = ["NeuralLorenz96"]


class NeuralLorenz96(Lorenz96):
    """Lorenz96 with an additive neural tendency: ``dx/dt = L96(x; F) + c_φ(x)``.

    ``c_φ`` is a small :class:`~xda_hybrid.learning.networks.CircularCNN1d`
    (one channel in and out, circular in the sites) whose output layer starts at
    zero, so the model starts as plain Lorenz96.  Its weights are ordinary
    trainable parameters: :func:`~xda_hybrid.learning.training.train` fits them
    jointly with the inversion network (and with ``forcing`` after
    ``learn("forcing")``), from observations only.

    Parameters
    ----------
    forcing, dt : float
        As :class:`~xda_hybrid.models.lorenz96.Lorenz96`.
    width, depth, kernel_size : int
        Size of the correction CNN.
    seed : int
        Seed of its initialisation (global RNG untouched).
    """

    def __init__(
        self,
        forcing: float = 8.0,
        dt: float = 0.05,
        width: int = 16,
        depth: int = 1,
        kernel_size: int = 5,
        seed: int = 0,
    ):
        super().__init__(forcing=forcing, dt=dt)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.correction = CircularCNN1d(1, 1, width=width, depth=depth, kernel_size=kernel_size, zero_last=True)

    def tendency(self, x: torch.Tensor) -> torch.Tensor:
        """``dx/dt`` for ``x`` of shape ``(batch, 1, site)``; the CNN runs in its own dtype."""
        w = self.correction.head.weight
        return super().tendency(x) + self.correction(x.to(w.dtype)).to(x.dtype)
