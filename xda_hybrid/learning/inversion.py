"""The inversion network ``F_θ(Y, R⁻¹[, x_b]) → x̂₀``.

Input channels, for a window of ``T`` observed steps and ``C_o`` observed
channels (missing points zeroed, never NaN):

* ``T·C_o`` normalised values ``(y − μ_c)/σ_c`` (0 where missing),
* ``T·C_o`` relative weights ``R⁻¹/r_c`` (0 where missing, 1 for a typical point),
* optionally the ``C`` channels of a background state ``(x_b − m)/s``.

Output: the full initial state ``m + s · body(input)``, shape
``(batch, C, *space)``, never-observed channels included.  ``μ, σ, r`` are
statistics of the observations only (:meth:`InversionNetwork.fit_normalisation`);
``m, s`` (output offset and scale per state channel) default to the observation
statistics for observed channels and to a user value for the others.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from ..models.base import DynamicalModel
from ..observation import ObservationOperator, Observations
from ..variational.cost import Background
from .networks import CircularCNN1d, UNet2d

__all__ = ["InversionNetwork"]

_BACKBONES = {"cnn1d": CircularCNN1d, "unet2d": UNet2d}


class InversionNetwork(nn.Module):
    """Maps a window of observations (and optionally a background) to the initial state.

    Parameters
    ----------
    n_channels : int
        State channels ``C`` of the output.
    obs_channels : sequence of int
        State channel observed by each observation channel (``ObservationOperator.channels``).
    n_obs_steps : int
        Observed steps ``T`` per window.
    backbone : {"cnn1d", "unet2d"}
        :class:`~xda_hybrid.learning.networks.CircularCNN1d` for 1D ring states,
        :class:`~xda_hybrid.learning.networks.UNet2d` for 2D grids.
    backbone_options : dict, optional
        Keyword options of the backbone (``width``, ``depth``, ``kernel_size``;
        ``width``, ``levels``, ``padding``).
    background : bool
        Take a background state as extra input channels.
    residual : bool
        Add the extra input to the output: ``x̂₀ = x_extra + out_mean + out_scale · body``
        (needs ``background``).  Meant for an extra input that is zero outside
        the channels it sets, e.g. the smoothness-prior shift ``w_p`` of a
        generative inversion (:func:`~xda_hybrid.learning.generative_network`):
        the untrained network then follows ``w_p`` and training learns where the
        observations override it.
    seed : int
        Seed of the weight initialisation (the global RNG is left untouched).

    Attributes
    ----------
    config : dict
        JSON-able constructor arguments: ``InversionNetwork.from_config(net.config)``
        followed by ``load_state_dict(net.state_dict())`` rebuilds the network.
    """

    def __init__(
        self,
        n_channels: int,
        obs_channels: Sequence[int],
        n_obs_steps: int,
        backbone: str = "cnn1d",
        backbone_options: dict[str, Any] | None = None,
        background: bool = False,
        seed: int = 0,
        residual: bool = False,
    ):
        super().__init__()
        if backbone not in _BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(_BACKBONES)}, got {backbone!r}")
        obs_channels = [int(c) for c in obs_channels]
        if not obs_channels or any(not 0 <= c < n_channels for c in obs_channels):
            raise ValueError(f"obs_channels {obs_channels} must be non-empty indices of the {n_channels} state channels")
        if int(n_obs_steps) < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {n_obs_steps}")
        if residual and not background:
            raise ValueError("residual=True adds the extra input to the output: it needs background=True")
        self.config = {
            "n_channels": int(n_channels),
            "obs_channels": obs_channels,
            "n_obs_steps": int(n_obs_steps),
            "backbone": backbone,
            "backbone_options": dict(backbone_options or {}),
            "background": bool(background),
            "seed": int(seed),
            "residual": bool(residual),
        }
        self.spatial_ndim = 1 if backbone == "cnn1d" else 2
        n_obs = len(obs_channels)
        in_channels = 2 * int(n_obs_steps) * n_obs + (int(n_channels) if background else 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.body = _BACKBONES[backbone](in_channels, int(n_channels), **self.config["backbone_options"])
        self.register_buffer("obs_mean", torch.zeros(n_obs))
        self.register_buffer("obs_std", torch.ones(n_obs))
        self.register_buffer("inv_var_ref", torch.ones(n_obs))
        self.register_buffer("out_mean", torch.zeros(n_channels))
        self.register_buffer("out_scale", torch.ones(n_channels))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "InversionNetwork":
        """Rebuild an (untrained) network from :attr:`config`; then ``load_state_dict``."""
        return cls(**copy.deepcopy(config))

    @classmethod
    def for_model(
        cls,
        model: DynamicalModel,
        window: int,
        obs_operator: ObservationOperator | None = None,
        background: bool = False,
        seed: int = 0,
        residual: bool = False,
        **options,
    ) -> "InversionNetwork":
        """A network sized for ``model`` and its observation operator.

        Chooses :class:`CircularCNN1d` for one spatial dimension and
        :class:`UNet2d` for two (``padding`` defaults to ``"circular"`` when the
        model has ``boundary == "periodic"``, else ``"zeros"``).

        Parameters
        ----------
        model : DynamicalModel
        window : int
            Frames per window.
        obs_operator : ObservationOperator, optional
            Default: every channel observed at every step.
        background : bool
            Add background input channels.
        seed : int
            Initialisation seed.
        residual : bool
            Add the extra input to the output (see the class).
        **options
            Backbone options (``width``, ``depth``, ``kernel_size`` / ``width``,
            ``levels``, ``padding``).
        """
        obs_operator = obs_operator or ObservationOperator(model)
        nd = len(model.spatial_dims)
        if nd == 1:
            backbone = "cnn1d"
        elif nd == 2:
            backbone = "unet2d"
            if "padding" not in options:
                options["padding"] = "circular" if getattr(model, "boundary", None) == "periodic" else "zeros"
        else:
            raise ValueError(f"no inversion backbone for {nd} spatial dimensions")
        steps = obs_operator.steps
        return cls(
            n_channels=model.n_channels,
            obs_channels=obs_operator.channels,
            n_obs_steps=int(window) if steps is None else len(steps),
            backbone=backbone,
            backbone_options=options,
            background=background,
            seed=seed,
            residual=residual,
        )

    # ------------------------------------------------------------------ normalisation
    @property
    def obs_channels(self) -> list[int]:
        return self.config["obs_channels"]

    @torch.no_grad()
    def fit_normalisation(self, obs: Observations, unobserved_scale: float = 1.0) -> "InversionNetwork":
        """Set input and output statistics from observations only; returns ``self``.

        Per observed channel ``c``: mean ``μ_c`` and std ``σ_c`` of the observed
        values and mean ``r_c`` of their ``R⁻¹`` (over windows, steps and space).
        The output offset/scale of an observed state channel become ``μ_c, σ_c``;
        never-observed channels get offset 0 and scale ``unobserved_scale``
        (in the channel's units), see :meth:`set_output_scale` to change them.

        Parameters
        ----------
        obs : Observations
            Values of shape (batch, T, C_o, *space).
        unobserved_scale : float
            Output scale of state channels that no observation sees.
        """
        self._check_obs(obs)
        m = obs.mask.to(torch.float64).transpose(0, 2).flatten(1)  # (C_o, rest)
        v = obs.values.to(torch.float64).transpose(0, 2).flatten(1)
        iv = obs.inv_var.to(torch.float64).transpose(0, 2).flatten(1)
        n = m.sum(1)
        if (n < 2).any():
            raise ValueError("every observed channel needs at least two observed values to fit the normalisation")
        mean = (v * m).sum(1) / n
        std = (((v - mean[:, None]) ** 2 * m).sum(1) / (n - 1)).sqrt().clamp_min(1e-12)
        ref = (iv * m).sum(1) / n
        self.obs_mean.copy_(mean)
        self.obs_std.copy_(std)
        self.inv_var_ref.copy_(ref)
        out_mean = torch.zeros(self.config["n_channels"], dtype=torch.float64)
        out_scale = torch.full_like(out_mean, float(unobserved_scale))
        for k, c in enumerate(self.obs_channels):
            out_mean[c], out_scale[c] = mean[k], std[k]
        return self.set_output_scale(out_scale, out_mean)

    @torch.no_grad()
    def set_output_scale(
        self, scale: Sequence[float] | torch.Tensor, mean: Sequence[float] | torch.Tensor | None = None
    ) -> "InversionNetwork":
        """Set the output scale ``s`` (and offset ``m``) per state channel; returns ``self``.

        Parameters
        ----------
        scale : sequence of float or Tensor, shape (C,)
            Typical amplitude of each state channel (its units), > 0.
        mean : sequence of float or Tensor, shape (C,), optional
            Offset of each state channel (unchanged if omitted).
        """
        scale = torch.as_tensor(scale, dtype=torch.float64)
        if scale.shape != self.out_scale.shape or not (scale > 0).all():
            raise ValueError(f"scale must hold {self.out_scale.numel()} positive values, got {scale.tolist()}")
        self.out_scale.copy_(scale)
        if mean is not None:
            mean = torch.as_tensor(mean, dtype=torch.float64)
            if mean.shape != self.out_mean.shape:
                raise ValueError(f"mean must hold {self.out_mean.numel()} values, got {mean.tolist()}")
            self.out_mean.copy_(mean)
        return self

    # ------------------------------------------------------------------ forward
    def _check_obs(self, obs: Observations) -> None:
        want = (self.config["n_obs_steps"], len(self.obs_channels))
        v = obs.values
        if v.ndim != 3 + self.spatial_ndim or tuple(v.shape[1:3]) != want:
            raise ValueError(
                f"observations must be (batch, {want[0]} steps, {want[1]} channels, "
                f"{self.spatial_ndim} spatial dims), got {tuple(v.shape)}"
            )

    def _expand(self, t: torch.Tensor) -> torch.Tensor:
        """(C,) → (1, C, 1, ...) for broadcasting over (batch, C, *space)."""
        return t.reshape(1, -1, *([1] * self.spatial_ndim))

    def inputs(self, obs: Observations, background: Background | torch.Tensor | None = None) -> torch.Tensor:
        """Network input channels, shape (batch, 2·T·C_o [+ C], *space)."""
        self._check_obs(obs)
        dtype, dev = self.obs_mean.dtype, self.obs_mean.device
        v = obs.values.to(dtype=dtype, device=dev)
        iv = obs.inv_var.to(dtype=dtype, device=dev)
        mask = (iv > 0).to(dtype)
        shape = (1, 1, -1, *([1] * self.spatial_ndim))
        vn = (v - self.obs_mean.reshape(shape)) / self.obs_std.reshape(shape) * mask
        w = iv / self.inv_var_ref.reshape(shape)
        chans = [vn.flatten(1, 2), w.flatten(1, 2)]
        if self.config["background"]:
            if background is None:
                raise ValueError("this network takes a background state as input")
            xb = background.state if isinstance(background, Background) else background
            xb = xb.to(dtype=dtype, device=dev)
            if xb.shape[0] != v.shape[0] or xb.shape[1] != self.config["n_channels"] or xb.shape[2:] != v.shape[3:]:
                raise ValueError(f"background must be (batch, {self.config['n_channels']}, *space), got {tuple(xb.shape)}")
            chans.append((xb - self._expand(self.out_mean)) / self._expand(self.out_scale))
        elif background is not None:
            raise ValueError("this network was built without background input (background=True)")
        return torch.cat(chans, dim=1)

    def forward(self, obs: Observations, background: Background | torch.Tensor | None = None) -> torch.Tensor:
        """Initial state of each window.

        Parameters
        ----------
        obs : Observations
            Values of shape (batch, T, C_o, *space), 0 where missing.
        background : Background or Tensor (batch, C, *space), optional
            Required iff the network was built with ``background=True``.

        Returns
        -------
        Tensor, shape (batch, C, *space)
            In the network's dtype and device.
        """
        return self.add_residual(self.decode(obs, background), background)

    def decode(self, obs: Observations, background: Background | torch.Tensor | None = None) -> torch.Tensor:
        """``out_mean + out_scale · body(inputs)``, shape (batch, C, *space): the output before :meth:`add_residual`."""
        out = self.body(self.inputs(obs, background))
        return self._expand(self.out_mean) + self._expand(self.out_scale) * out

    def add_residual(self, out: torch.Tensor, background: Background | torch.Tensor | None) -> torch.Tensor:
        """``out`` plus the extra input when the network is ``residual`` (else ``out`` unchanged)."""
        if not self.config["residual"]:
            return out
        xb = background.state if isinstance(background, Background) else background
        return out + xb.to(out)
