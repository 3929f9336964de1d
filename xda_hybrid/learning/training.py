"""Training loops: the learned inversion on the 4DVAR cost, and supervised fits.

:func:`train` minimises the mean 4DVAR cost of ``net(obs)`` over observation
windows — no true state enters.  Model parameters made learnable with
``model.learn([...])`` (and any neural correction inside the model) are trained
jointly, with their own learning rate.  :func:`fit_supervised` fits the same
network to given target states (used by learning-over-4DVAR, whose targets are
4DVAR analyses).

Both share one loop: seeded mini-batches, Adam/AdamW, cosine or step schedule
(stepped once per epoch), per-group gradient clipping, a validation split
scored by the observation misfit only, early stopping, atomic checkpoints and
exact resume.
"""
from __future__ import annotations

import copy
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..models.base import CFLError
from ..variational.cost import FourDVarCost
from .checkpoints import load_checkpoint, save_checkpoint
from .data import TrainingData
from .distributed import DataParallel
from .inversion import InversionNetwork

__all__ = ["TrainResult", "evaluate_obs_cost", "fit_supervised", "train"]

_FORMAT = 1


class _Fault(Exception):
    """A numerical fault in a training epoch (rolled back or reported as FloatingPointError)."""


@dataclass
class TrainResult:
    """Outcome of :func:`train` / :func:`fit_supervised`.

    Attributes
    ----------
    net : InversionNetwork
        The trained network (best validation epoch restored when a validation split exists).
    history : list of dict
        One entry per epoch: ``epoch`` (1-based), ``train_cost`` (mean cost per
        window of the epoch's batches; the supervised loss for
        :func:`fit_supervised`), ``val_obs_cost`` (mean observation misfit
        ``½Σ‖Hx − y‖²_{R⁻¹}`` per validation window, ``None`` without
        validation), ``lr`` (network learning rate), ``time`` (epoch seconds),
        ``parameters`` (learnable scalar physical parameters of the model by name).
    best_epoch : int
        Epoch whose parameters were kept.
    stopped_early : bool
        Stopped by the patience criterion.
    completed : bool
        All epochs done or stopped early (False when ``stop_after`` ended the call).
    rollbacks : list of dict
        Numerical faults recovered from: ``epoch``, ``reason`` and the reduced ``lr``.
    """

    net: InversionNetwork
    history: list[dict[str, Any]]
    best_epoch: int
    stopped_early: bool
    completed: bool
    rollbacks: list[dict[str, Any]] = None  # type: ignore[assignment]


def _batch_forward(net: InversionNetwork, batch: TrainingData) -> torch.Tensor:
    config = getattr(net, "module", net).config  # net may be wrapped in DistributedDataParallel
    return net(batch.obs, batch.background if config["background"] else None)


@torch.no_grad()
def evaluate_obs_cost(
    net: InversionNetwork, cost: FourDVarCost, data: TrainingData, batch_size: int = 256
) -> float:
    """Mean observation misfit ``½Σ_t‖H M(x̂₀) − y_t‖²_{R⁻¹}`` per window of ``net``'s analyses."""
    p = next(net.parameters())
    data = data.to(device=p.device, dtype=p.dtype)
    total = 0.0
    for i in range(0, len(data), batch_size):
        b = data[i : i + batch_size]
        total += float(cost(_batch_forward(net, b), b.obs)["obs"].sum())
    return total / len(data)


def _scalar_parameters(model: torch.nn.Module) -> dict[str, float]:
    """Learnable scalar physical parameters of ``model`` (e.g. ``forcing``)."""
    params = getattr(model, "physical_parameters", {})
    return {n: float(p.detach()) for n, p in params.items() if p.requires_grad and p.numel() == 1}


def _make_optimizer(name: str, groups: list[dict], weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(groups, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam' or 'adamw', got {name!r}")


def _make_schedule(name: str | None, opt, epochs: int, step_size: int | None, gamma: float, min_lr_ratio: float):
    if name is None or name == "constant":
        return None
    if name == "cosine":
        def factor(e):
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(e, epochs) / epochs))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=step_size or max(1, epochs // 3), gamma=gamma)
    raise ValueError(f"schedule must be 'cosine', 'step' or None, got {name!r}")


def _fit(
    net: InversionNetwork,
    cost: FourDVarCost,
    data: TrainingData,
    batch_loss: Callable[[torch.Tensor, torch.Tensor, TrainingData], tuple[torch.Tensor, torch.Tensor]],
    train_dynamics: bool,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    dynamics_lr: float | None,
    optimizer: str,
    weight_decay: float,
    schedule: str | None,
    step_size: int | None,
    gamma: float,
    min_lr_ratio: float,
    clip_grad: float | None,
    val_fraction: float,
    patience: int | None,
    seed: int,
    device: torch.device | str | None,
    progress: bool,
    checkpoint: str | os.PathLike | None,
    checkpoint_every: int,
    resume: bool,
    stop_after: int | None,
    max_rollbacks: int = 3,
    rollback_factor: float = 0.5,
) -> TrainResult:
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if int(max_rollbacks) < 0 or not 0 < float(rollback_factor) < 1:
        raise ValueError(f"max_rollbacks must be >= 0 and rollback_factor in (0, 1), got {max_rollbacks}, "
                         f"{rollback_factor}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    if net.config["background"] and data.background is None:
        raise ValueError("the network takes a background input but the training data has none")
    device = torch.device(device) if device is not None else next(net.parameters()).device
    net.to(device)
    cost.to(device)
    dtype = next(net.parameters()).dtype
    data = data.to(device=device, dtype=dtype)

    # validation split: the last windows (consecutive windows are correlated)
    n_val = int(round(val_fraction * len(data)))
    n_train = len(data) - n_val
    if n_train < 1:
        raise ValueError("no training window left after the validation split")
    train_data, val_data = data[:n_train], (data[n_train:] if n_val else None)

    dyn_params = [p for p in cost.model.parameters() if p.requires_grad] if train_dynamics else []
    groups = [{"params": list(net.parameters()), "lr": lr, "name": "net"}]
    if dyn_params:
        groups.append({"params": dyn_params, "lr": lr if dynamics_lr is None else dynamics_lr,
                       "weight_decay": 0.0, "name": "dynamics"})
    opt = _make_optimizer(optimizer, groups, weight_decay)
    par = DataParallel.detect()  # torch.distributed initialised with several ranks: DDP (see .distributed)
    fwd = par.wrap(net)
    sched = _make_schedule(schedule, opt, epochs, step_size, gamma, min_lr_ratio)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))

    history: list[dict[str, Any]] = []
    best = {"epoch": 0, "val": math.inf, "net": None, "model": None}
    bad_epochs = 0
    start_epoch = 0
    rollbacks: list[dict[str, Any]] = []
    if resume and os.path.exists(checkpoint):
        ck = load_checkpoint(checkpoint, map_location=device)
        if ck.get("format") != _FORMAT or ck["net_config"] != net.config:
            raise ValueError(f"checkpoint {checkpoint} does not match this network")
        net.load_state_dict(ck["net"])
        cost.model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if sched is not None:
            sched.load_state_dict(ck["scheduler"])
        gen.set_state(ck["rng"])
        history, best, bad_epochs, start_epoch = ck["history"], ck["best"], ck["bad_epochs"], ck["epoch"]
        rollbacks = list(ck.get("rollbacks", []))

    def snapshot(epoch):
        return {
            "format": _FORMAT,
            "epoch": epoch,
            "net_config": net.config,
            "net": net.state_dict(),
            "model": cost.model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": None if sched is None else sched.state_dict(),
            "rng": gen.get_state(),
            "history": history,
            "best": best,
            "bad_epochs": bad_epochs,
            "rollbacks": rollbacks,
        }

    def good_state():
        """Everything a rolled-back epoch restarts from (deep copies)."""
        return copy.deepcopy({"net": net.state_dict(), "model": cost.model.state_dict(), "opt": opt.state_dict(),
                              "sched": None if sched is None else sched.state_dict(), "rng": gen.get_state()})

    def restore(state, factor):
        net.load_state_dict(state["net"])
        cost.model.load_state_dict(state["model"])
        opt.load_state_dict(copy.deepcopy(state["opt"]))
        for g in opt.param_groups:
            g["lr"] *= factor
            if "initial_lr" in g:
                g["initial_lr"] *= factor
        if sched is not None:
            sched.load_state_dict(copy.deepcopy(state["sched"]))
            sched.base_lrs = [b * factor for b in sched.base_lrs]
        gen.set_state(state["rng"])

    def run_epoch(epoch):
        """One pass over the training windows; raises _Fault on a non-finite loss, gradient or model state."""
        perm = torch.randperm(n_train, generator=gen).to(device)
        total, count = 0.0, 0
        for i in range(0, n_train, batch_size):
            idx = perm[i : i + batch_size]
            idx, weight = par.shard(idx)  # this rank's windows of the global batch (all of them on one process)
            batch = train_data[idx]
            try:
                x0 = _batch_forward(fwd, batch)
                loss, per_window = batch_loss(x0, idx, batch)
            except CFLError as e:  # an explicit model refused the network's state
                par.agree(False)  # the other ranks raise too
                raise _Fault(f"the model refused a state at epoch {epoch}: {e}") from None
            if not par.agree(bool(torch.isfinite(loss))):
                raise _Fault(f"non-finite training loss at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            (loss * weight).backward()
            par.average_gradients(dyn_params)
            for g in opt.param_groups:
                norm = torch.nn.utils.clip_grad_norm_(g["params"], math.inf if clip_grad is None else clip_grad)
                if not torch.isfinite(norm):
                    raise _Fault(f"non-finite gradient at epoch {epoch} (parameter group {g.get('name')!r})")
            opt.step()
            if weight > 0:  # a rank with no window of this batch ran a dummy one at weight 0
                total += float(per_window.detach().sum())
                count += len(idx)
        return par.sum(total, count)

    bar = None
    if progress and par.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=start_epoch, desc="training", unit="epoch")
    stopped_early = False
    epoch = start_epoch
    for epoch in range(start_epoch + 1, epochs + 1):
        t0 = time.perf_counter()
        net.train()
        good = good_state() if max_rollbacks > 0 else None
        while True:
            lr_now = opt.param_groups[0]["lr"]
            try:
                total, count = run_epoch(epoch)
                break
            except _Fault as fault:
                if len(rollbacks) >= max_rollbacks:
                    raise FloatingPointError(
                        f"{fault}: the network or the model diverged"
                        + (f" after {len(rollbacks)} rollbacks to the last good state with the learning rate "
                           f"scaled by {rollback_factor} each" if rollbacks else "")
                        + "; lower the learning rate (or dynamics_lr) or the gradient clipping threshold"
                    ) from None
                # roll back to the state at the start of the epoch and retry with a lower learning rate
                restore(good, float(rollback_factor))
                good = good_state()  # the lowered learning rate holds for the next retry too
                rollbacks.append({"epoch": epoch, "reason": str(fault), "lr": opt.param_groups[0]["lr"]})
                warnings.warn(f"{fault}: rolled back to the start of the epoch, learning rate scaled by "
                              f"{rollback_factor} (now {opt.param_groups[0]['lr']:.3g}); rollback "
                              f"{len(rollbacks)} of at most {max_rollbacks}", RuntimeWarning, stacklevel=3)
        if sched is not None:
            sched.step()
        net.eval()
        val = evaluate_obs_cost(net, cost, val_data, batch_size) if val_data is not None else None
        history.append({
            "epoch": epoch,
            "train_cost": total / count,
            "val_obs_cost": val,
            "lr": lr_now,
            "time": time.perf_counter() - t0,
            "parameters": _scalar_parameters(cost.model),
        })
        score = -epoch if val is None else (val if math.isfinite(val) else math.inf)  # no validation: keep the last
        if score < best["val"]:
            best = {"epoch": epoch, "val": score, "net": copy.deepcopy(net.state_dict()),
                    "model": copy.deepcopy(cost.model.state_dict())}
            bad_epochs = 0
        else:
            bad_epochs += 1
        if bar is not None:
            post = {"train": f"{history[-1]['train_cost']:.4g}", "lr": f"{lr_now:.2g}"}
            if val is not None:
                post["val_obs"] = f"{val:.4g}"
            post.update({k: f"{v:.4g}" for k, v in history[-1]["parameters"].items()})
            bar.set_postfix(post)
            bar.update(1)
        if patience is not None and val is not None and bad_epochs >= patience:
            stopped_early = True
        if checkpoint is not None and par.is_main and (epoch % checkpoint_every == 0 or stopped_early or epoch == epochs):
            save_checkpoint(snapshot(epoch), checkpoint)
        if stopped_early or (stop_after is not None and epoch - start_epoch >= stop_after):
            break
    if bar is not None:
        bar.close()
    completed = stopped_early or epoch >= epochs
    if completed and best["net"] is not None:
        net.load_state_dict(best["net"])
        cost.model.load_state_dict(best["model"])
    return TrainResult(net, history, best["epoch"], stopped_early, completed, list(rollbacks))


def train(
    net: InversionNetwork,
    cost: FourDVarCost,
    data: TrainingData,
    *,
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 1e-3,
    dynamics_lr: float | None = None,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str | None = "cosine",
    step_size: int | None = None,
    gamma: float = 0.5,
    min_lr_ratio: float = 0.0,
    clip_grad: float | None = 1.0,
    use_background: bool = True,
    val_fraction: float = 0.1,
    patience: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    stop_after: int | None = None,
    max_rollbacks: int = 3,
    rollback_factor: float = 0.5,
) -> TrainResult:
    """Train ``net`` to minimise the mean 4DVAR cost of its analyses, from observations only.

    The minimised loss is ``mean_windows J(net(y)) / n̄``, ``J`` from ``cost``
    (observation term, plus the background term when ``data.background`` is set
    and ``use_background``, plus the cost's regularisers) and ``n̄`` the mean
    number of observed values per training window (a constant that makes the
    loss O(1) for gradient clipping).  Reported costs are per window, unscaled.

    Parameters
    ----------
    net : InversionNetwork
        Trained in place, in its own dtype; call :meth:`InversionNetwork.fit_normalisation` first.
    cost : FourDVarCost
        Its model's learnable parameters (``model.learn([...])``, neural
        corrections) are trained jointly.
    data : TrainingData
        Observation windows (and optional backgrounds); the last ``val_fraction``
        of the windows form the validation split.
    epochs, batch_size : int
    lr : float
        Network learning rate.
    dynamics_lr : float, optional
        Learning rate of the model's learnable parameters (default ``lr``).
    optimizer : {"adam", "adamw"}
    weight_decay : float
        Network weight decay (L2 for Adam, decoupled for AdamW).
    schedule : {"cosine", "step", None}
        Learning-rate schedule, stepped once per epoch: cosine decay over
        ``epochs`` to ``min_lr_ratio·lr``, or ×``gamma`` every ``step_size`` epochs.
    clip_grad : float or None
        Max gradient norm, applied to the network and the dynamics groups separately.
    use_background : bool
        Include ``½‖x₀ − x_b‖²_{B⁻¹}`` in the cost when ``data.background`` is given.
    val_fraction : float
        Fraction of windows held out; scored by the observation misfit only.
    patience : int, optional
        Stop after this many epochs without a better validation score.
    seed : int
        Seed of the batch order (with the network's own init seed, the run is deterministic).
    device : torch.device or str, optional
        Where to train (default: the network's device); ``net``, ``cost`` and the data are moved there.
    progress : bool
        Show a tqdm bar with the current costs.
    checkpoint : path, optional
        Checkpoint file, written atomically every ``checkpoint_every`` epochs and at the end.
    resume : bool
        Continue from ``checkpoint`` if it exists (same result as an uninterrupted run).
    stop_after : int, optional
        End this call after this many epochs (e.g. a job's time limit); resume later.
    max_rollbacks, rollback_factor
        Numerical faults (a non-finite loss or gradient, or a model's
        :class:`~xda_hybrid.models.base.CFLError` on the network's output) roll
        the epoch back to its starting state (network, model, optimizer,
        schedule, batch order) and retry it with every learning rate scaled by
        ``rollback_factor``, at most ``max_rollbacks`` times in the whole run
        (a ``RuntimeWarning`` each time); then :class:`FloatingPointError`.

    Returns
    -------
    TrainResult

    Raises
    ------
    FloatingPointError
        A numerical fault with no rollback left.
    """
    n_ref = float(data.obs.mask.flatten(1).sum(1).double().mean())

    def batch_loss(x0, idx, batch):
        terms = cost(x0, batch.obs, batch.background if use_background else None)
        return terms["total"].mean() / n_ref, terms["total"]

    return _fit(
        net, cost, data, batch_loss, True,
        epochs=epochs, batch_size=batch_size, lr=lr, dynamics_lr=dynamics_lr, optimizer=optimizer,
        weight_decay=weight_decay, schedule=schedule, step_size=step_size, gamma=gamma,
        min_lr_ratio=min_lr_ratio, clip_grad=clip_grad, val_fraction=val_fraction, patience=patience,
        seed=seed, device=device, progress=progress, checkpoint=checkpoint,
        checkpoint_every=checkpoint_every, resume=resume, stop_after=stop_after,
        max_rollbacks=max_rollbacks, rollback_factor=rollback_factor,
    )


def fit_supervised(
    net: InversionNetwork,
    cost: FourDVarCost,
    data: TrainingData,
    targets: torch.Tensor,
    **options,
) -> TrainResult:
    """Fit ``net`` to target initial states by mean squared error (scaled by the output scale).

    Used by learning-over-4DVAR with 4DVAR analyses as targets.  The loss per
    window is ``mean(((net(y) − target) / s)²)``, ``s`` the network's output
    scale; validation and early stopping use the observation misfit of ``cost``
    (the model's parameters are not trained).

    Parameters
    ----------
    net, cost, data
        As in :func:`train`.
    targets : Tensor, shape (n_windows, C, *space)
    **options
        Options of :func:`train` (``dynamics_lr`` and ``use_background`` are ignored).
    """
    if targets.shape[0] != len(data):
        raise ValueError(f"{targets.shape[0]} targets for {len(data)} windows")
    options.pop("dynamics_lr", None)
    options.pop("use_background", None)
    defaults = dict(epochs=50, batch_size=64, lr=1e-3, optimizer="adam", weight_decay=0.0, schedule="cosine",
                    step_size=None, gamma=0.5, min_lr_ratio=0.0, clip_grad=1.0, val_fraction=0.1, patience=None,
                    seed=0, device=None, progress=False, checkpoint=None, checkpoint_every=1, resume=False,
                    stop_after=None, max_rollbacks=3, rollback_factor=0.5)
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    defaults.update(options)
    p = next(net.parameters())
    device = torch.device(defaults["device"]) if defaults["device"] is not None else p.device
    targets = targets.to(device=device, dtype=p.dtype)

    def batch_loss(x0, idx, batch):
        scale = net.out_scale.reshape(1, -1, *([1] * net.spatial_ndim))
        per_window = (((x0 - targets[idx]) / scale) ** 2).flatten(1).mean(1)
        return per_window.mean(), per_window

    return _fit(net, cost, data, batch_loss, False, dynamics_lr=None, **defaults)
