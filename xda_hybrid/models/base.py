"""Common interface of the differentiable dynamical models.

Every model is a :class:`torch.nn.Module` acting on states laid out as
``(batch, channel, *space)``; ``channel`` indexes the named state variables of
:attr:`DynamicalModel.state_names`.  ``step`` advances one time step and
``forward(x0, n_steps)`` returns the whole trajectory, initial state included,
as ``(batch, n_steps + 1, channel, *space)``.

Physical parameters (forcing, drag, ...) are stored as float64
:class:`torch.nn.Parameter` with ``requires_grad=False``; :meth:`learn` makes
some of them trainable.  They are cast to the state's dtype on use, so a model
runs in float32 or float64 and on any device its parameters were moved to.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn


class CFLError(ValueError):
    """An explicit scheme was asked to run beyond its stability (CFL) limit."""


class DynamicalModel(nn.Module):
    """Base class: named state variables, one-step map, trajectory.

    Subclasses set :attr:`state_names`, :attr:`spatial_dims` and implement
    :meth:`step`.
    """

    #: names of the state variables, in channel order
    state_names: tuple[str, ...] = ()
    #: names of the spatial dimensions, in the order of the trailing axes
    spatial_dims: tuple[str, ...] = ()
    #: names of the channels holding velocity components (empty if none)
    velocity_names: tuple[str, ...] = ()

    def _register_physical(self, name: str, value: float | torch.Tensor) -> None:
        """Store a physical parameter as a frozen float64 ``nn.Parameter``."""
        t = torch.as_tensor(value, dtype=torch.float64).clone()
        self.register_parameter(name, nn.Parameter(t, requires_grad=False))

    @property
    def physical_parameters(self) -> dict[str, nn.Parameter]:
        """Physical parameters by name (learnable or not)."""
        return dict(self.named_parameters(recurse=False))

    def learn(self, names: Iterable[str] | str) -> "DynamicalModel":
        """Make the named physical parameters trainable; returns ``self``.

        Raises
        ------
        KeyError
            If a name is not a physical parameter of this model.
        """
        if isinstance(names, str):
            names = [names]
        params = self.physical_parameters
        for n in names:
            if n not in params:
                raise KeyError(
                    f"{type(self).__name__} has no physical parameter {n!r}; "
                    f"expected one of {sorted(params)}"
                )
            params[n].requires_grad_(True)
        return self

    def param(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Parameter ``name`` cast to the dtype and device of ``like``."""
        return getattr(self, name).to(dtype=like.dtype, device=like.device)

    @property
    def n_channels(self) -> int:
        return len(self.state_names)

    def channel(self, name: str) -> int:
        """Channel index of state variable ``name``."""
        try:
            return self.state_names.index(name)
        except ValueError:
            raise KeyError(
                f"{type(self).__name__} has no state variable {name!r}; "
                f"expected one of {list(self.state_names)}"
            ) from None

    def check_state(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` if ``x`` is not ``(batch, channel, *space)``."""
        want = 2 + len(self.spatial_dims)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"state must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != want or x.shape[1] != self.n_channels:
            raise ValueError(
                f"{type(self).__name__} expects a state of shape (batch, "
                f"{self.n_channels} channels {list(self.state_names)}, "
                f"{', '.join(self.spatial_dims)}), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"state must be floating point, got {x.dtype}")

    def step(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Advance the state ``(batch, channel, *space)`` by one time step."""
        raise NotImplementedError

    def forward(self, x0: torch.Tensor, n_steps: int) -> torch.Tensor:
        """Integrate ``n_steps`` steps from ``x0``.

        Parameters
        ----------
        x0 : Tensor, shape (batch, channel, *space)
        n_steps : int >= 0

        Returns
        -------
        Tensor, shape (batch, n_steps + 1, channel, *space)
            The trajectory, ``x0`` at index 0.
        """
        self.check_state(x0)
        if int(n_steps) < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        states = [x0]
        x = x0
        for _ in range(int(n_steps)):
            x = self.step(x)
            states.append(x)
        return torch.stack(states, dim=1)

    def forced(self, x0: torch.Tensor, n_steps: int, increments: Sequence[torch.Tensor]) -> torch.Tensor:
        """Trajectory with an increment added after each step: ``x_{k+1} = step(x_k) + δ_k``.

        Parameters
        ----------
        x0 : Tensor, shape (batch, channel, *space)
        n_steps : int >= 0
        increments : sequence of Tensor, each of shape (batch, channel, *space)
            One increment for every step (``n_steps`` of them), or a single one
            added after each step (a constant forcing).

        Returns
        -------
        Tensor, shape (batch, n_steps + 1, channel, *space)
        """
        self.check_state(x0)
        incs = self._check_increments(x0, n_steps, increments)
        states = [x0]
        x = x0
        for k in range(int(n_steps)):
            x = self.step(x) + incs[0 if len(incs) == 1 else k]
            states.append(x)
        return torch.stack(states, dim=1)

    def _check_increments(self, x0: torch.Tensor, n_steps: int, increments: Sequence[torch.Tensor]) -> list:
        incs = list(increments)
        if int(n_steps) < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        if len(incs) not in (1, int(n_steps)):
            raise ValueError(f"increments: give 1 or n_steps = {int(n_steps)} tensors, got {len(incs)}")
        for d in incs:
            if tuple(d.shape) != tuple(x0.shape):
                raise ValueError(f"each increment must have the state's shape {tuple(x0.shape)}, got {tuple(d.shape)}")
        return incs
