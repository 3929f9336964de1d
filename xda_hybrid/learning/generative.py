"""Generative inversion: posterior samples of ``x₀`` from a network trained on the randomised 4DVAR cost.

Approach (randomised maximum likelihood, amortised)
---------------------------------------------------
An RML sample of the posterior of a window is ``x_k = argmin_x J(x; Y + ε_k, x_b + η_k, w_p,k)``:
the 4DVAR cost whose observations, background and smoothness-prior mean are
perturbed by draws of their own error laws (see
:mod:`xda_hybrid.variational.ensemble`).  The ensemble of data assimilations
(EDA) runs one 4DVAR per member.  Here one network ``F_θ`` amortises the
``argmin`` over the *perturbed* inputs: it is trained, from observations only,
to minimise

    E_windows E_{ε, η, w_p}  J(F_θ(Y + ε, x_b + η | w_p); Y + ε, x_b + η, w_p)

with fresh draws for every window at every batch, and a sample is one pass
``x_k = F_θ(Y + ε_k, ...)``.  The perturbation must be an *input* of the
network: a network fed an independent noise ``z`` while the cost sees ``Y + ε``
minimises ``E_ε J(F(Y, z); Y + ε) = J(F(Y, z); Y) + const`` and its samples
collapse to one analysis.  Fed the perturbed data it is deterministic given
them, and the members differ through ``ε_k`` as in RML.  The extra input of the
network (its "background" channels) carries ``x_b + η`` when the problem has a
background term, else the smoothness-prior shift ``w_p`` of velocity models
with a Tikhonov term; Lorenz96 without background needs none.

Assumptions, and what they imply
--------------------------------
* Gaussian observation errors with the given ``R`` (and ``B``), and a prior that
  is the cost's own regularisation (flat without a background term): the
  samples describe the posterior *of this cost*, not of an unstated climatology.
* RML is exact for linear ``H ∘ M``; for a nonlinear window it approximates the
  posterior by the spread of perturbed minimisers (good when each window's cost
  has one basin of attraction over the spread of the data noise, as for a
  10-step Lorenz96 window; poor with multiple minima).
* The network is an amortised, imperfect ``argmin``: its response to ``ε``
  (its Jacobian) replaces the inverse Hessian, so the spread is only as good as
  the amortisation; check the spread/skill ratio on held-out windows with a
  truth (a twin) before trusting it on real data.
* Training draws ``Y + ε`` whose noise is twice the data's, exactly the inputs
  seen when sampling, so no extrapolation happens at inference.
* Model error is not represented (strong constraint): spread from an imperfect
  model is missing.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..models.base import DynamicalModel
from ..observation import Observations
from ..variational.cost import Background, FourDVarCost
from ..variational.ensemble import Perturbed, perturb, perturbs_prior, randomised_cost
from .data import TrainingData
from .inversion import InversionNetwork
from .training import TrainResult, _fit

__all__ = ["GenerativeInversion", "generative_network", "sample", "train_generative"]


def generative_network(
    model: DynamicalModel,
    window: int,
    cost: FourDVarCost,
    background: bool = False,
    residual: bool | None = None,
    **options,
) -> InversionNetwork:
    """An :class:`InversionNetwork` with the extra input a generative inversion needs.

    The network takes "background" channels when the problem has a background
    term (``background=True``: they carry ``x_b + η``) or a perturbed smoothness
    prior (velocity models with ``grad_weight > 0``: they carry ``w_p``).

    Parameters
    ----------
    model, window
        As in :meth:`InversionNetwork.for_model`.
    cost : FourDVarCost
        The cost it will be trained on.
    background : bool
        The training data carry backgrounds.
    residual : bool, optional
        The velocity output starts at the prior shift: ``x̂₀ = w_p + F_θ(Y + ε, w_p)``
        (see :class:`InversionNetwork`).  Default: when the cost perturbs a
        smoothness prior.  Without it the weak prior term alone must teach the
        network to pass ``w_p`` through where no observation constrains the
        velocity (under clouds); it learns to ignore it instead, and the
        members collapse there.
    **options
        ``seed`` and backbone options of :meth:`InversionNetwork.for_model`.
    """
    prior = perturbs_prior(cost)
    if residual is None:
        residual = prior
    if residual and not prior:
        raise ValueError("residual=True makes the output start at the smoothness-prior shift: the cost needs a "
                         "velocity smoothness term (grad_weight > 0 on a velocity model)")
    needs = bool(background) or prior
    return InversionNetwork.for_model(model, window, cost.obs_operator, background=needs, residual=bool(residual), **options)


class GenerativeInversion(nn.Module):
    """An inversion network fed randomised data: ``x_k = F_θ(Y + ε_k[, x_b + η_k | w_p,k])``.

    In training mode every call draws new perturbations (kept in :attr:`last`
    for the randomised cost); in evaluation mode it returns the central member
    (no perturbation).  :meth:`sample` draws members.

    Parameters
    ----------
    net : InversionNetwork
        Built by :func:`generative_network` (its background channels, if any,
        take the perturbed background or the prior shift).
    cost : FourDVarCost
        The 4DVAR cost defining the perturbations (observation errors come from
        the observations' ``R⁻¹``).
    seed : int
        Seed of the training draws.
    """

    def __init__(self, net: InversionNetwork, cost: FourDVarCost, seed: int = 0):
        super().__init__()
        self.net = net
        self.cost = [cost]  # not a submodule: the cost's model is trained (or not) by the caller
        self.prior = perturbs_prior(cost)
        if self.prior and not net.config["background"]:
            raise ValueError("the cost perturbs a smoothness prior: build the network with generative_network() "
                             "(it needs background channels for the prior shift)")
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.last: Perturbed | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The inner network's config, ``background`` meaning "the data carry a background"."""
        return {**self.net.config, "background": bool(self.net.config["background"] and not self.prior),
                "generative": True}

    def perturbations(self, obs: Observations, background: Background | torch.Tensor | None, n_members: int = 1,
                      generator: torch.Generator | None = None, zero: bool = False) -> Perturbed:
        if isinstance(background, torch.Tensor):
            background = Background(background, 0.0)
        if self.prior and background is not None:
            raise ValueError("a generative inversion perturbs either a background or a smoothness prior, not both")
        return perturb(self.cost[0], obs, n_members, background, generator, prior=self.prior, zero=zero)

    def _net_forward(self, p: Perturbed) -> torch.Tensor:
        return self.net(p.obs, p.network_input if self.net.config["background"] else None)

    def forward(self, obs: Observations, background: Background | torch.Tensor | None = None) -> torch.Tensor:
        """One member per window (training mode: a new draw; evaluation mode: the central, unperturbed one)."""
        p = self.perturbations(obs, background, 1, self.generator, zero=not self.training)
        self.last = p
        return self._net_forward(p)

    @torch.no_grad()
    def sample(self, obs: Observations, n_samples: int, background: Background | None = None,
               generator: torch.Generator | None = None, batch_size: int = 1024) -> torch.Tensor:
        """``n_samples`` members per window, shape (K, batch, C, *space), in ``obs``'s dtype and device."""
        return sample(self.net, self.cost[0], obs, n_samples, background, generator, batch_size)


@torch.no_grad()
def sample(
    net: InversionNetwork,
    cost: FourDVarCost,
    obs: Observations,
    n_samples: int,
    background: Background | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
    zero: bool = False,
) -> torch.Tensor:
    """Posterior samples ``F_θ(Y + ε_k, ...)`` of each window's initial state.

    Parameters
    ----------
    net : InversionNetwork
        Trained by :func:`train_generative`.
    cost : FourDVarCost
        The cost it was trained on (defines the perturbations).
    obs : Observations
        Values of shape (batch, T, C_o, *space).
    n_samples : int
        ``K``.
    background : Background, optional
        Required iff the network was trained with backgrounds.
    generator : torch.Generator, optional
        CPU generator of the draws.
    batch_size : int
        Rows (member × window) per network pass.
    zero : bool
        Return the central member (no perturbation) ``K`` times.

    Returns
    -------
    Tensor, shape (K, batch, C, *space)
    """
    prior = perturbs_prior(cost)
    if net.config["background"] and not prior and background is None:
        raise ValueError("this generative network was trained with backgrounds: pass background=")
    was = net.training
    net.eval()
    dtype, dev = next(net.parameters()).dtype, next(net.parameters()).device
    p = perturb(cost, obs, n_samples, background, generator, prior=prior, zero=zero)
    extra = p.network_input if net.config["background"] else None
    out = []
    n = p.obs.values.shape[0]
    for i in range(0, n, batch_size):
        o = p.obs[i : i + batch_size].to(dtype=dtype, device=dev)
        e = None if extra is None else extra[i : i + batch_size].to(dtype=dtype, device=dev)
        out.append(net(o, e))
    net.train(was)
    x = torch.cat(out).to(dtype=obs.values.dtype, device=obs.values.device)
    return x.reshape(int(n_samples), -1, *x.shape[1:])


def train_generative(
    net: InversionNetwork,
    cost: FourDVarCost,
    data: TrainingData,
    *,
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str | None = "cosine",
    step_size: int | None = None,
    gamma: float = 0.5,
    min_lr_ratio: float = 0.0,
    clip_grad: float | None = 1.0,
    val_fraction: float = 0.1,
    patience: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    stop_after: int | None = None,
    **fit_options: Any,
) -> TrainResult:
    """Train a generative inversion on the randomised 4DVAR cost, from observations only.

    Minimises ``mean_windows J(F_θ(Y + ε, ...); Y + ε, x_b + η, w_p) / n̄`` with
    new draws ``ε ~ N(0, R)`` (and ``η ~ N(0, B)`` with backgrounds, ``w_p`` from
    the smoothness prior of velocity models) at every batch; ``n̄`` as in
    :func:`~xda_hybrid.learning.training.train`.  The validation split is scored
    by the observation misfit of the central member (unperturbed data).  The
    model's parameters are not trained (a generative fit assumes known dynamics).

    Parameters
    ----------
    net : InversionNetwork
        From :func:`generative_network`, normalised with
        :meth:`InversionNetwork.fit_normalisation`; trained in place.
    cost : FourDVarCost
    data : TrainingData
        Observation windows (and backgrounds, perturbed per draw and used in the cost).
    epochs, batch_size, lr, ...
        As in :func:`~xda_hybrid.learning.training.train` (``seed`` also seeds the draws).
        A checkpointed run resumes with the same weights and batch order; the
        draws of the resumed epochs differ from an uninterrupted run's.
    **fit_options
        Further options of the shared training loop (e.g. ``max_rollbacks``),
        where this version of it has them.

    Returns
    -------
    TrainResult
        ``net`` is the trained :class:`InversionNetwork` (not the wrapper).
    """
    gen_net = GenerativeInversion(net, cost, seed=int(seed) + 7919)
    if data.background is not None and not net.config["background"]:
        raise ValueError("the training data carry backgrounds: build the network with "
                         "generative_network(..., background=True)")
    n_ref = float(data.obs.mask.flatten(1).sum(1).double().mean())

    def batch_loss(x0, idx, batch):
        j = randomised_cost(cost, x0, gen_net.last)
        return j.mean() / n_ref, j

    result = _fit(
        gen_net, cost, data, batch_loss, False,
        epochs=epochs, batch_size=batch_size, lr=lr, dynamics_lr=None, optimizer=optimizer,
        weight_decay=weight_decay, schedule=schedule, step_size=step_size, gamma=gamma,
        min_lr_ratio=min_lr_ratio, clip_grad=clip_grad, val_fraction=val_fraction, patience=patience,
        seed=seed, device=device, progress=progress, checkpoint=checkpoint,
        checkpoint_every=checkpoint_every, resume=resume, stop_after=stop_after, **fit_options,
    )
    result.net = gen_net.net.eval()
    return result
