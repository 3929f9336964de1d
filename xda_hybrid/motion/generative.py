"""Posterior samples of the velocity from tracer windows: a generative U-Net and spread-vs-cloud statistics.

Thin driver over :mod:`xda_hybrid.learning.generative`: a
:class:`~xda_hybrid.motion.learned.MotionInversionNetwork` (a motion U-Net
with extra input channels for the smoothness prior's shift ``w_p``, its
velocity output starting at ``w_p``: ``residual=True``)
is trained on the randomised
Tikhonov-4DVAR cost (tracer observations perturbed by their noise, the
velocity's smoothness prior shifted by a draw of that prior), so that passes on
perturbed inputs are posterior samples.  Under clouds the velocity is set by the
smoothness prior alone, so a calibrated ensemble spreads more there.
"""
from __future__ import annotations

import torch

from ..learning import TrainingData, TrainResult, generative_network, sample, train_generative
from ..models.base import DynamicalModel
from ..models.image import ImageModel
from ..observation import Observations
from .learned import MotionInversionNetwork, motion_cost
from .variational import motion_observations

__all__ = [
    "generative_motion_network",
    "sample_motion",
    "spread_by_cover",
    "train_generative_motion",
]


def generative_motion_network(
    obs: Observations,
    model: DynamicalModel | None = None,
    *,
    grad_weight: float = 1e4,
    velocity_scale: float = 0.2,
    width: int = 16,
    levels: int = 2,
    seed: int = 0,
    prior_residual: bool = True,
) -> MotionInversionNetwork:
    """The untrained generative U-Net of :func:`train_generative_motion`, normalised on ``obs``.

    ``prior_residual``: the velocity output starts at the prior shift
    (``residual`` of :func:`~xda_hybrid.learning.generative_network`; ``False``
    gives the plain network, whose members collapse under clouds).
    """
    model = model if model is not None else ImageModel(boundary="periodic")
    window = obs.values.shape[1]
    cost = motion_cost(model, window, grad_weight)
    config = generative_network(model, window, cost, residual=prior_residual, seed=seed, width=width,
                                levels=levels).config
    net = MotionInversionNetwork.for_motion(config, model).to(obs.values.dtype)
    return net.fit_normalisation(obs, unobserved_scale=velocity_scale)


def train_generative_motion(
    frames: torch.Tensor | Observations,
    noise_std: float | torch.Tensor | None = None,
    model: DynamicalModel | None = None,
    *,
    grad_weight: float = 1e4,
    velocity_scale: float = 0.2,
    width: int = 16,
    levels: int = 2,
    epochs: int = 20,
    batch_size: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    prior_residual: bool = True,
    **train_options,
) -> tuple[MotionInversionNetwork, TrainResult]:
    """Train a generative U-Net on tracer windows (observations only); see the module docstring.

    Parameters are those of :func:`~xda_hybrid.motion.learned.train_motion_inversion`
    (no continuation); ``prior_residual`` as in :func:`generative_motion_network`.
    Returns the network and the training result.
    """
    obs = motion_observations(frames, noise_std)
    model = model if model is not None else ImageModel(boundary="periodic")
    cost = motion_cost(model, obs.values.shape[1], grad_weight)
    net = generative_motion_network(obs, model, grad_weight=grad_weight, velocity_scale=velocity_scale, width=width,
                                    levels=levels, seed=seed, prior_residual=prior_residual)
    result = train_generative(net, cost, TrainingData(obs), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                              **train_options)
    return result.net, result


def sample_motion(
    net: MotionInversionNetwork,
    frames: torch.Tensor | Observations,
    noise_std: float | torch.Tensor | None = None,
    n_samples: int = 16,
    model: DynamicalModel | None = None,
    grad_weight: float = 1e4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Posterior samples of the initial state ``(u, v, I)``: shape (K, batch, 3, ny, nx)."""
    obs = motion_observations(frames, noise_std)
    model = model if model is not None else ImageModel(boundary="periodic")
    cost = motion_cost(model, obs.values.shape[1], grad_weight)
    return sample(net, cost, obs, n_samples, generator=generator)


def spread_by_cover(spread: torch.Tensor, obs: Observations | torch.Tensor, cloudy_at_least: float = 0.5) -> dict:
    """Mean spread over clear pixels (never clouded in the window) and cloudy ones.

    Parameters
    ----------
    spread : Tensor, shape (batch, ny, nx)
        E.g. the members' speed or velocity-component std.
    obs : Observations (batch, T, 1, ny, nx) or Tensor of frames with NaN under clouds
    cloudy_at_least : float
        A pixel counts as cloudy when clouded in at least this fraction of the frames.

    Returns
    -------
    dict
        ``clear``, ``cloudy`` (mean spreads), ``ratio`` (cloudy / clear), ``cloud_fraction``
        per pixel (batch, ny, nx).
    """
    if isinstance(obs, Observations):
        cloud = (~obs.mask[:, :, 0]).to(torch.float64).mean(1)
    else:
        fr = obs[:, :, 0] if obs.ndim == 5 else obs
        cloud = torch.isnan(fr).to(torch.float64).mean(1)
    s = spread.to(torch.float64)
    clear, cloudy = cloud == 0, cloud >= cloudy_at_least
    if not clear.any() or not cloudy.any():
        raise ValueError("need both clear and cloudy pixels")
    c, d = float(s[clear].mean()), float(s[cloudy].mean())
    return {"clear": c, "cloudy": d, "ratio": d / c, "cloud_fraction": cloud}
