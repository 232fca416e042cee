"""Worker of test_multinode.py, started by torchrun: runs melp_fast.train.main and saves, for its global rank,
every step's losses and the gradients DeepSpeed hands the optimiser (after the all-reduce) in $RECORD_DIR."""

import os
import sys
from pathlib import Path

import torch


import melp_fast.training.engine as engine  # noqa: E402

records = []
train_step = engine.Trainer.train_step


def recording_step(self, batch, compute):
    ds = self.engine
    if not getattr(ds, "_recording", False):
        step = ds.step

        def step_and_record(*a, **k):
            grads = [p.grad.detach().float().flatten() for p in ds.module.parameters() if p.grad is not None]
            records[-1]["grad"] = torch.cat(grads).clone()
            return step(*a, **k)

        ds.step, ds._recording = step_and_record, True
    records.append({})
    losses = train_step(self, batch, compute)
    records[-1].update({k: float(v) for k, v in losses.items()})
    return losses


engine.Trainer.train_step = recording_step
from melp_fast.train import main  # noqa: E402

main(sys.argv[1:])
info = {"rank": int(os.environ["RANK"]), "world": int(os.environ["WORLD_SIZE"]),
        "node": os.environ.get("GROUP_RANK"), "threads": torch.get_num_threads(), "records": records}
torch.save(info, Path(os.environ["RECORD_DIR"]) / f"rank{os.environ['RANK']}.pt")
