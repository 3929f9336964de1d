"""Posterior samples of the velocity from tracer windows: a generative U-Net and spread-vs-cloud statistics.

Thin driver over :mod:`xda_hybrid.learning.generative`: a
:class:`GenerativeMotionNetwork` (a motion U-Net with extra input channels for
the smoothness prior's shift ``w_p``, its velocity output starting at ``w_p``)
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
from ..variational.cost import Background
from ..variational.ensemble import perturbs_prior
from .learned import MotionInversionNetwork, motion_cost
from .variational import motion_observations

__all__ = [
    "GenerativeMotionNetwork",
    "generative_motion_network",
    "sample_motion",
    "spread_by_cover",
    "train_generative_motion",
]


class GenerativeMotionNetwork(MotionInversionNetwork):
    """A :class:`~xda_hybrid.motion.learned.MotionInversionNetwork` whose velocity starts at the prior shift.

    Output ``x = (0, 0, I₀) + (w_p, 0) + F_θ(Y + ε, w_p)``: the untrained network
    returns the minimiser of the shifted smoothness term alone (``w_p``, up to a
    constant) on top of the classical first guess, and training learns the
    correction that the observations ask for.  Where no observation constrains
    the velocity (under clouds) the correct member follows ``w_p``; where the
    tracer is observed the strong observation term teaches the network to
    cancel it.  Without this residual the weak prior term alone must teach the
    network to pass ``w_p`` through, and it learns to ignore it: the members
    then collapse under clouds.  The extra input must be the prior shift (a
    generative network of a velocity model with a smoothness term).
    """

    def forward(self, obs: Observations, background=None) -> torch.Tensor:
        out = super().forward(obs, background)
        if background is None:
            raise ValueError("a GenerativeMotionNetwork takes the prior shift w_p as its extra input")
        wp = background.state if isinstance(background, Background) else background
        return torch.cat([out[:, :2] + wp[:, :2].to(out), out[:, 2:]], 1)


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

    ``prior_residual``: a :class:`GenerativeMotionNetwork` (velocity output on top
    of the prior shift) instead of a plain :class:`~xda_hybrid.motion.learned.MotionInversionNetwork`.
    """
    model = model if model is not None else ImageModel(boundary="periodic")
    window = obs.values.shape[1]
    cost = motion_cost(model, window, grad_weight)
    if prior_residual and not perturbs_prior(cost):
        raise ValueError("prior_residual needs a smoothness prior (grad_weight > 0)")
    cls = GenerativeMotionNetwork if prior_residual else MotionInversionNetwork
    net = generative_network(model, window, cost, net_class=cls, seed=seed, width=width,
                             levels=levels).to(obs.values.dtype)
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
