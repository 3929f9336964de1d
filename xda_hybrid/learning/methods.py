"""Analysis methods built on the inversion network, and the learning-over-4DVAR baseline.

* :func:`first_guess` — the classical 4DVAR starting point from the observations.
* :func:`predict` — the learned inversion: one network pass per window.
* :func:`hybrid` — the network's output refined by a few 4DVAR iterations.
* :func:`over4dvar` — the same network fitted (supervised) to 4DVAR analyses of
  the training windows; with ``rounds > 1`` the iterative variant (4DVAR
  warm-started by the network, then refit).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..observation import ObservationOperator, Observations
from ..variational.cost import Background, FourDVarCost
from ..variational.lbfgs import LBFGSResult
from ..variational.solver import fourdvar
from .data import TrainingData
from .inversion import InversionNetwork
from .training import TrainResult, fit_supervised

__all__ = ["Over4DVarResult", "first_guess", "hybrid", "over4dvar", "predict"]


def first_guess(obs: Observations, obs_operator: ObservationOperator, n_channels: int, fill: float = 0.0) -> torch.Tensor:
    """Initial state guessed from a window's observations.

    An observed state channel takes the first observed step's values where
    observed, else the window's mean observed value of that channel; other
    channels are ``fill``.

    Parameters
    ----------
    obs : Observations
        Values of shape (batch, T, C_o, *space).
    obs_operator : ObservationOperator
        Maps observation channels to state channels.
    n_channels : int
        State channels ``C``.
    fill : float
        Value of never-observed channels.

    Returns
    -------
    Tensor, shape (batch, C, *space), dtype and device of ``obs``.
    """
    v, m = obs.values, obs.mask
    space = tuple(range(3, v.ndim))
    mean = (v * m).sum((1, *space), keepdim=True) / m.sum((1, *space), keepdim=True).clamp_min(1)
    guess_o = torch.where(m[:, 0], v[:, 0], mean[:, 0].expand_as(v[:, 0]))
    x = torch.full((v.shape[0], n_channels, *v.shape[3:]), float(fill), dtype=v.dtype, device=v.device)
    x[:, list(obs_operator.channels)] = guess_o
    return x


@torch.no_grad()
def predict(
    net: InversionNetwork,
    obs: Observations,
    background: Background | torch.Tensor | None = None,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Learned analysis: ``net(obs)`` in evaluation mode, by batches, without gradients.

    Returns
    -------
    Tensor, shape (batch, C, *space), in the dtype and on the device of ``obs``.
    """
    was_training = net.training
    net.eval()
    bg = background.state if isinstance(background, Background) else background
    out = []
    n = obs.values.shape[0]
    for i in range(0, n, batch_size):
        out.append(net(obs[i : i + batch_size], None if bg is None else bg[i : i + batch_size]))
    net.train(was_training)
    return torch.cat(out).to(dtype=obs.values.dtype, device=obs.values.device)


def hybrid(
    net: InversionNetwork,
    cost: FourDVarCost,
    obs: Observations,
    max_iter: int = 10,
    background: Background | None = None,
    **lbfgs_options,
) -> LBFGSResult:
    """Network analysis refined by ``max_iter`` 4DVAR (L-BFGS) iterations.

    ``fourdvar(cost, obs, x_init=net(obs), background, max_iter)``; the network
    gets ``background.state`` as input when it was built with ``background=True``.
    The returned cost is never above the network's (L-BFGS keeps the best iterate).

    Returns
    -------
    LBFGSResult
        ``wall_time`` covers the 4DVAR iterations only; time :func:`predict` separately.
    """
    x_init = predict(net, obs, background if net.config["background"] else None)
    return fourdvar(cost, obs, x_init, background=background, max_iter=max_iter, **lbfgs_options)


@dataclass
class Over4DVarResult:
    """Outcome of :func:`over4dvar`.

    Attributes
    ----------
    fit : TrainResult
        The last supervised fit.
    analyses : Tensor, shape (n_windows, C, *space)
        The 4DVAR analyses of the last round (the targets of the last fit).
    fourdvar_time : float
        Seconds spent in 4DVAR over all rounds.
    """

    fit: TrainResult
    analyses: torch.Tensor
    fourdvar_time: float


def over4dvar(
    net: InversionNetwork,
    cost: FourDVarCost,
    data: TrainingData,
    max_iter: int = 50,
    rounds: int = 1,
    refine_iter: int | None = None,
    x_init: torch.Tensor | None = None,
    **train_options,
) -> Over4DVarResult:
    """Learning over 4DVAR: fit ``net`` to 4DVAR analyses of the training windows.

    Round 1 runs 4DVAR from ``x_init`` (default :func:`first_guess`) for
    ``max_iter`` iterations and fits the network to the analyses.  Each further
    round (the iterative variant) runs ``refine_iter`` (default ``max_iter``)
    4DVAR iterations warm-started from the network's output and refits the
    network, continuing from its current weights.

    Parameters
    ----------
    net, cost, data
        As in :func:`~xda_hybrid.learning.training.train`.
    max_iter : int
        4DVAR iterations of the first round.
    rounds : int
        Fit rounds (1: plain learning-over-4DVAR).
    refine_iter : int, optional
        4DVAR iterations of later rounds.
    x_init : Tensor, shape (n_windows, C, *space), optional
        First guess of round 1.
    **train_options
        Options of :func:`~xda_hybrid.learning.training.fit_supervised`.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    obs, bg = data.obs, data.background
    if x_init is None:
        x_init = first_guess(obs, cost.obs_operator, cost.model.n_channels)
    spent = 0.0
    fit = None
    for r in range(rounds):
        if r > 0:
            x_init = predict(net, obs, bg if net.config["background"] else None)
        res = fourdvar(cost, obs, x_init.to(obs.values.dtype), background=bg,
                       max_iter=max_iter if r == 0 else (refine_iter or max_iter))
        spent += res.wall_time
        fit = fit_supervised(net, cost, data, res.x, **train_options)
    return Over4DVarResult(fit, res.x, spent)
