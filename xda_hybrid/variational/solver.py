"""Classical strong-constraint 4DVAR: L-BFGS on the cost of each window."""
from __future__ import annotations

import torch

from ..models.base import CFLError
from ..observation import Observations
from .cost import Background, FourDVarCost
from .lbfgs import LBFGSResult, lbfgs


def fourdvar(
    cost: FourDVarCost,
    obs: Observations,
    x_init: torch.Tensor,
    background: Background | None = None,
    max_iter: int = 100,
    history_size: int = 10,
    gtol: float = 1e-7,
    ftol: float = 1e-10,
    progress: bool = False,
) -> LBFGSResult:
    """Minimise the 4DVAR cost of every window, independently, from ``x_init``.

    Parameters
    ----------
    cost : FourDVarCost
    obs : Observations
        Values of shape (batch, n_obs_steps, n_obs_channels, *space).
    x_init : Tensor, shape (batch, channel, *space)
        First guess (warm start), e.g. the background or a network's output.
        Not modified.
    background : Background, optional
        Adds the ``½‖x₀ − x_b‖²_{B⁻¹}`` term.
    max_iter, history_size, gtol, ftol, progress
        See :func:`xda_hybrid.variational.lbfgs.lbfgs`.

    Returns
    -------
    LBFGSResult
        ``x`` is the analysis ``x₀`` of each window, ``history`` the total cost
        per iteration, ``n_eval`` the batched model evaluations (each one a
        forward and an adjoint run).
    """
    cost.check(x_init, obs)
    # a trial point that breaks an explicit model's CFL limit is rejected by the line search
    return lbfgs(
        lambda x: cost(x, obs, background)["total"],
        x_init,
        max_iter=max_iter,
        history_size=history_size,
        gtol=gtol,
        ftol=ftol,
        progress=progress,
        reject=(CFLError,),
    )
