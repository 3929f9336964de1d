"""Learned inversion of tracer windows (a U-Net trained on the 4DVAR cost only) and the hybrid.

Thin drivers over :mod:`xda_hybrid.learning`: the network maps a window of
observed tracer frames (and their ``R⁻¹``) to the full initial state ``(u, v, I)``
and is trained by minimising the Tikhonov-4DVAR cost of its outputs over many
windows — no true velocity enters.  The hybrid warm-starts 4DVAR from the
network's output.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from ..learning import InversionNetwork, TrainingData, TrainResult, predict, train
from ..models.base import DynamicalModel
from ..models.image import ImageModel
from ..observation import ObservationOperator, Observations
from ..variational.cost import FourDVarCost
from .frames import motion_first_guess
from .stream import stream_to_velocity
from .variational import MotionEstimate, _stage_iterations, fourdvar_motion, motion_observations

__all__ = ["MotionInversionNetwork", "hybrid_motion", "learned_motion", "motion_cost", "train_motion_inversion"]


#: output scale of a stream-function head: the velocity scale times this many cells (an eddy radius)
STREAM_LENGTH = 8.0


class MotionInversionNetwork(InversionNetwork):
    """:class:`~xda_hybrid.learning.InversionNetwork` predicting a correction to ``x_b = (0, 0, I₀)``.

    ``forward(obs) = x_b(obs) + s · body(inputs)`` with ``x_b`` from
    :func:`~xda_hybrid.motion.frames.motion_first_guess` (first frame, gaps
    filled) and output offsets 0.  The network's last layer starts at zero, so
    an untrained network returns the classical first guess and training (on the
    4DVAR cost) starts from its cost instead of from a random state whose
    trajectory misfit is orders of magnitude larger.  Same constructor and
    ``config`` as the parent (``from_config`` rebuilds this class), plus:

    Parameters
    ----------
    velocity : {"direct", "stream"}
        ``"direct"``: the body predicts ``u`` and ``v``.  ``"stream"``: its
        first output channel is a stream function ``ψ`` (cells² per step) and
        the velocity is ``curl ψ`` (:func:`~xda_hybrid.motion.stream.stream_to_velocity`),
        divergence-free by construction; the second velocity channel of the
        body is not used.  ``ψ``'s output scale is the velocity scale times
        :data:`STREAM_LENGTH` cells (:attr:`stream_factor`).
    boundary : {"periodic", "closed"}
        The model's boundary (the differences of ``ψ`` wrap or stop), for
        ``velocity="stream"``.
    dx : float
        The model's grid spacing (``dx = dy``), for ``velocity="stream"``.
    """

    def __init__(self, *args, velocity: str = "direct", boundary: str = "periodic", dx: float = 1.0, **kwargs):
        if velocity not in ("direct", "stream"):
            raise ValueError(f"velocity must be 'direct' or 'stream', got {velocity!r}")
        if boundary not in ("periodic", "closed"):
            raise ValueError(f"boundary must be 'periodic' or 'closed', got {boundary!r}")
        super().__init__(*args, **kwargs)
        self.config.update(velocity=velocity, boundary=boundary, dx=float(dx))
        head = getattr(self.body, "head", None)
        if isinstance(head, torch.nn.Conv2d):
            with torch.no_grad():
                head.weight.zero_()
                if head.bias is not None:
                    head.bias.zero_()

    @classmethod
    def for_motion(cls, config: dict[str, Any], model: DynamicalModel, velocity: str = "direct") -> "MotionInversionNetwork":
        """A motion network with the backbone, inputs and options of an :class:`InversionNetwork` ``config``.

        ``model`` gives the boundary and grid spacing of a stream-function head
        (``velocity="stream"`` needs ``dx == dy``).  The model's state must be
        ``(u, v, tracer-like)`` with only its last channel observed.
        """
        if tuple(model.velocity_names) != ("u", "v") or tuple(model.state_names[:2]) != ("u", "v") \
                or list(config["obs_channels"]) != [model.n_channels - 1] or model.n_channels != 3:
            raise ValueError(f"a motion network needs a state (u, v, <tracer>) with only its last channel observed; "
                             f"{type(model).__name__} has {tuple(model.state_names)}, observed channels "
                             f"{list(config['obs_channels'])}")
        dx, dy = float(getattr(model, "dx", 1.0)), float(getattr(model, "dy", 1.0))
        if velocity == "stream" and dx != dy:
            raise ValueError(f"velocity='stream' needs a square grid, got dx={dx}, dy={dy}")
        return cls.from_config({**config, "velocity": velocity, "boundary": getattr(model, "boundary", "periodic"),
                                "dx": dx})

    @property
    def stream_factor(self) -> float:
        """Output scale of ``ψ`` per unit of velocity scale: :data:`STREAM_LENGTH` cells times ``dx``
        (1 for a direct head)."""
        return STREAM_LENGTH * self.config["dx"] if self.config["velocity"] == "stream" else 1.0

    def fit_normalisation(self, obs: Observations, unobserved_scale: float = 1.0) -> "MotionInversionNetwork":
        super().fit_normalisation(obs, unobserved_scale)
        scale = self.out_scale.clone()
        scale[0] = scale[0] * self.stream_factor
        return self.set_output_scale(scale, torch.zeros_like(self.out_mean))

    def forward(self, obs: Observations, background=None) -> torch.Tensor:
        base = motion_first_guess(obs, self.config["n_channels"]).to(self.obs_mean)
        out = self.decode(obs, background)
        if self.config["velocity"] == "stream":
            u, v = stream_to_velocity(out[:, 0], self.config["boundary"], self.config["dx"])
            out = torch.cat([u.unsqueeze(1), v.unsqueeze(1), out[:, 2:]], 1)
        return self.add_residual(base + out, background)


def motion_cost(model: DynamicalModel, window: int, grad_weight: float = 1e4, div_weight: float = 0.0) -> FourDVarCost:
    """The Tikhonov-4DVAR cost of tracer windows (tracer observed at every frame)."""
    return FourDVarCost(model, ObservationOperator(model, channels=[model.n_channels - 1]), window,
                        grad_weight=grad_weight, div_weight=div_weight)


def train_motion_inversion(
    frames: torch.Tensor | Observations,
    noise_std: float | torch.Tensor | None = None,
    model: DynamicalModel | None = None,
    *,
    grad_weight: float = 1e4,
    div_weight: float = 0.0,
    velocity_scale: float = 0.2,
    width: int = 32,
    levels: int = 3,
    epochs: int = 50,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    continuation: Sequence[float] | None = (100.0, 10.0, 1.0),
    stage_fractions: Sequence[float] | None = None,
    net: MotionInversionNetwork | None = None,
    velocity: str = "direct",
    **train_options: Any,
) -> tuple[InversionNetwork, TrainResult]:
    """Train a U-Net inversion on tracer windows by minimising their 4DVAR cost.

    Parameters
    ----------
    frames : Tensor (n_windows, T, [1,] ny, nx) with NaN = missing, or Observations
        Training windows (observations only).
    noise_std : float or Tensor (n_windows,)
    model : DynamicalModel, optional
        Default ``ImageModel(boundary="periodic")``.
    grad_weight, div_weight : float
        Tikhonov weights of the cost (as in :func:`~xda_hybrid.motion.fourdvar_motion`).
    velocity_scale : float
        Output scale of the never-observed velocity channels (model units), the
        typical speed expected — a prior on units, not a fit to any truth.
    width, levels : int
        U-Net width and depth.
    epochs, batch_size, lr, seed, **train_options
        See :func:`xda_hybrid.learning.train`.
    continuation : sequence of float, optional
        As for 4DVAR: the epochs are split into stages whose cost has the
        Tikhonov weights multiplied by these factors (smooth flows first), each
        stage continuing from the previous weights with a fresh schedule.
    stage_fractions : sequence of float, optional
        Share of ``epochs`` per stage (default 20 %, 20 %, 60 % for three stages).
    net : MotionInversionNetwork, optional
        Continue training this network (its normalisation is kept); default: a
        new one (``width``, ``levels``, ``seed``, ``velocity_scale``, ``velocity``).
    velocity : {"direct", "stream"}
        Output of a new network: ``u, v`` directly, or a stream function whose
        curl is the (divergence-free) velocity; see :class:`MotionInversionNetwork`.

    Returns
    -------
    net : MotionInversionNetwork
    result : TrainResult
    """
    obs = motion_observations(frames, noise_std)
    model = model if model is not None else ImageModel(boundary="periodic")
    window = obs.values.shape[1]
    cost = motion_cost(model, window, grad_weight, div_weight)
    if net is None:
        config = InversionNetwork.for_model(model, window, cost.obs_operator, seed=seed, width=width,
                                            levels=levels).config
        net = MotionInversionNetwork.for_motion(config, model, velocity).to(obs.values.dtype)
        net.fit_normalisation(obs, unobserved_scale=velocity_scale)
    factors = [1.0] if not continuation else [float(c) for c in continuation]
    if factors[-1] != 1.0:
        factors.append(1.0)
    stage_epochs = _stage_iterations(int(epochs), len(factors), stage_fractions)
    data = TrainingData(obs)
    history: list[dict] = []
    result = None
    for k, (mult, ep) in enumerate(zip(factors, stage_epochs)):
        if ep <= 0:
            continue
        stage_cost = motion_cost(model, window, grad_weight * mult, div_weight * mult)
        result = train(net, stage_cost, data, epochs=ep, batch_size=batch_size, lr=lr, seed=seed + k,
                       **train_options)
        for h in result.history:
            history.append({**h, "epoch": len(history) + 1, "stage_factor": mult})
    result.history = history
    return result.net, result


def learned_motion(
    net: InversionNetwork,
    frames: torch.Tensor | Observations,
    noise_std: float | torch.Tensor | None = None,
    batch_size: int = 64,
) -> MotionEstimate:
    """Velocity of tracer windows by one network pass per window (timed)."""
    obs = motion_observations(frames, noise_std)
    t0 = time.perf_counter()
    x = predict(net, obs, batch_size=batch_size)
    wall = time.perf_counter() - t0
    return MotionEstimate(u=x[:, 0], v=x[:, 1], method="learned", wall_time=wall, state=x)


def hybrid_motion(
    net: InversionNetwork,
    frames: torch.Tensor | Observations,
    noise_std: float | torch.Tensor | None = None,
    model: DynamicalModel | None = None,
    *,
    max_iter: int = 30,
    grad_weight: float = 1e4,
    **fourdvar_options: Any,
) -> MotionEstimate:
    """The network's analysis refined by ``max_iter`` 4DVAR iterations (no continuation: warm start).

    ``wall_time`` covers the network pass and the iterations.  Other options go
    to :func:`~xda_hybrid.motion.fourdvar_motion` (e.g. ``control="stream"``).
    """
    obs = motion_observations(frames, noise_std)
    t0 = time.perf_counter()
    x = predict(net, obs)
    fourdvar_options.setdefault("continuation", None)
    est = fourdvar_motion(obs, None, model, x_init=x, max_iter=max_iter, grad_weight=grad_weight,
                          **fourdvar_options)
    est.wall_time = time.perf_counter() - t0
    est.method = "hybrid" + est.method[len("4dvar"):]
    est.extra["network_state"] = x
    return est
