"""Data-parallel training with ``torch.distributed`` (DistributedDataParallel, ``torchrun``).

:func:`~xda_hybrid.learning.train` (and :func:`~xda_hybrid.learning.fit_supervised`,
``ds.da4d.fit``) trains data-parallel by itself when ``torch.distributed`` is
initialised with more than one process — e.g. a script run with::

    torchrun --standalone --nproc_per_node=4 train.py

that calls :func:`init_distributed` first.  Every rank holds the same windows
and draws the same seeded batch order; each *global* batch of ``batch_size``
windows is sharded over the ranks (rank ``r`` takes windows ``r, r + W, …`` of
the batch, as a ``DistributedSampler`` does, without its padding), the network
is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (gradients
averaged across ranks) and the loss of a shard is weighted so that the
averaged gradient is the gradient of the *global* batch's mean cost.  A run on
``W`` processes therefore follows the single-process run with the same
``batch_size`` and ``seed`` up to floating-point round-off.  Gradients of the
model's learnable parameters (joint dynamics) are all-reduced the same way.
Only rank 0 shows progress and writes checkpoints; every rank evaluates the
(same) validation windows, so early stopping and the kept epoch agree.

Backends: gloo on CPU, nccl on CUDA (:func:`init_distributed` picks).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["DataParallel", "init_distributed"]


def init_distributed(backend: str | None = None) -> torch.device:
    """Initialise ``torch.distributed`` from ``torchrun``'s environment; return this rank's device.

    ``backend`` defaults to ``"nccl"`` when CUDA is available (one GPU per
    local rank), else ``"gloo"`` (CPU).  Without ``torchrun``'s variables
    (``RANK``, ``WORLD_SIZE``) nothing is initialised and the default device
    is returned, so the same script runs on one process.  Calling it twice is
    harmless.
    """
    cuda = torch.cuda.is_available() and backend != "gloo"
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return device


class DataParallel:
    """The distributed side of one training run (a no-op on a single process).

    Built by the training loop with :meth:`detect`; ``enabled`` when
    ``torch.distributed`` is initialised with a world size above 1.
    """

    def __init__(self, enabled: bool):
        self.enabled = bool(enabled)
        self.world = dist.get_world_size() if self.enabled else 1
        self.rank = dist.get_rank() if self.enabled else 0

    @classmethod
    def detect(cls) -> "DataParallel":
        return cls(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)

    @property
    def is_main(self) -> bool:
        """Rank 0 (or a single process): shows progress, writes checkpoints."""
        return self.rank == 0

    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        """The module to call for training forwards: ``DistributedDataParallel(net)`` when enabled."""
        if not self.enabled:
            return net
        return torch.nn.parallel.DistributedDataParallel(net, device_ids=None, broadcast_buffers=True)

    def shard(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's windows of a global batch and the weight of its mean loss.

        The weight ``n_local·W / n_global`` makes DDP's gradient average equal
        the gradient of the global batch's mean loss.  A rank left without a
        window (global batch smaller than the world) still runs a forward and
        backward pass (DDP needs every rank) on one window with weight 0.
        """
        if not self.enabled:
            return idx, 1.0
        local = idx[self.rank :: self.world]
        if len(local) == 0:
            return idx[:1], 0.0
        return local, len(local) * self.world / len(idx)

    def agree(self, ok: bool) -> bool:
        """True when ``ok`` holds on every rank (a collective call: every rank must make it)."""
        if not self.enabled:
            return bool(ok)
        t = torch.tensor([1.0 if ok else 0.0], dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item() > 0.5)

    def average_gradients(self, params) -> None:
        """All-reduce (mean) the gradients of parameters outside the DDP module (joint dynamics)."""
        if not self.enabled:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= self.world

    def sum(self, *values: float) -> tuple[float, ...]:
        """Sum numbers over the ranks (float64)."""
        if not self.enabled:
            return tuple(float(v) for v in values)
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return tuple(float(v) for v in t.tolist())

    def _device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
