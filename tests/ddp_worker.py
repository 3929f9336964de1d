"""One rank of the DDP training check (tests/test_scale.py): ``torchrun ... ddp_worker.py OUT.json CKPT``.

:func:`run` trains a small Lorenz96 inversion (float64, joint forcing, uneven
last batches, one with fewer windows than ranks) and returns its parameters;
the test calls it in-process for the single-process reference.  Not collected
by pytest (no ``test_`` prefix).
"""
from __future__ import annotations

import json
import sys

import torch

import xda_hybrid.learning.training as training
from xda_hybrid.learning import InversionNetwork, TrainingData, train
from xda_hybrid.learning.distributed import init_distributed
from xda_hybrid.models.lorenz96 import Lorenz96
from xda_hybrid.observation import ObservationOperator, Observations
from xda_hybrid.variational import FourDVarCost

WINDOW, N_WINDOWS, BATCH, EPOCHS = 6, 21, 8, 2  # 17 training windows: batches 8, 8, 1 (rank 1 idle in the last)


def data() -> TrainingData:
    g = torch.Generator().manual_seed(0)
    x = 8 + 2 * torch.randn(N_WINDOWS, WINDOW, 1, 8, generator=g, dtype=torch.float64)
    seen = torch.rand(x.shape, generator=g, dtype=torch.float64) < 0.6
    y = torch.where(seen, x + 0.5 * torch.randn(x.shape, generator=g, dtype=torch.float64), float("nan"))
    return TrainingData(Observations.from_values(y, noise_std=0.5))


def run(out: str | None, ckpt: str | None) -> dict:
    torch.set_num_threads(1)
    device = init_distributed()
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    writers = []
    save = training.save_checkpoint

    def spy(state, path):
        writers.append(rank)
        return save(state, path)

    training.save_checkpoint = spy
    try:
        model = Lorenz96(forcing=8.0, dt=0.05).to(torch.float64)
        model.learn(["forcing"])
        op = ObservationOperator(model)
        cost = FourDVarCost(model, op, WINDOW)
        d = data()
        net = InversionNetwork.for_model(model, WINDOW, op, width=8, depth=1, kernel_size=3, seed=0)
        net.fit_normalisation(d.obs[:17]).to(torch.float64)
        init = {k: v.detach().clone().tolist() for k, v in net.named_parameters()}
        res = train(net, cost, d, epochs=EPOCHS, batch_size=BATCH, lr=1e-2, val_fraction=4 / 21, seed=0,
                    device=device, checkpoint=ckpt)
    finally:
        training.save_checkpoint = save
    params = {k: v.detach().cpu().tolist() for k, v in net.named_parameters()}
    params["forcing"] = float(model.physical_parameters["forcing"].detach())
    result = {
        "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "params": params,
        "init": init,
        "history": [[h["train_cost"], h["val_obs_cost"]] for h in res.history],
    }
    if torch.distributed.is_initialized():
        every = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(every, writers)
        result["checkpoint_written_by"] = sorted({r for w in every for r in w})
        if rank == 0 and out:
            with open(out, "w") as f:
                json.dump(result, f)
        torch.distributed.destroy_process_group()
    return result


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
