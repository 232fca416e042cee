"""Resuming a run on another number of processes (train.py --resume with W' != W processes).

The model and optimiser: a checkpoint with partitioned optimiser states (ZeRO 1-3, or DeepSpeed's bf16 optimiser)
is converted once into DeepSpeed's universal checkpoint (``deepspeed.checkpoint.ds_to_universal``: every
parameter's fp32 weights and Adam moments whole, in step<N>/universal/), by rank 0 with a progress line, then
loaded with DeepSpeed's ``load_universal_checkpoint``, which cuts each state to this world's partitions. A
checkpoint without partitioned states (ZeRO-0 fp32: everything is in mp_rank_00_model_states.pt) loads as it is.
Every file read goes through safe_load.deepspeed_weights_only (weights-only unpickling), the converter's too.

The data position: Trainer.load carries the records of the epoch already consumed (engine.ResumableSampler); the
RNG streams of the ranks are those saved where the rank existed, else seeded afresh from (seed, step, rank).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import UserError
from .safe_load import deepspeed_weights_only, read_train_state, train_state_path

UNIVERSAL = "universal"  # step<N>/universal: the converted checkpoint (pruned with its step folder)
DONE = "converted"  # written last inside it: a conversion killed half-way is redone


def partitioned(folder: Path) -> bool:
    """Whether the checkpoint holds optimiser states cut by world size (ZeRO 1-3, bf16 optimiser)."""
    return any(Path(folder).glob("*optim_states.pt"))


def convert(folder: Path, saved_world: int, world: int, rank: int) -> Path:
    """folder/universal, converted by rank 0 if not done yet (collective: every rank waits for it)."""
    out = Path(folder) / UNIVERSAL
    err = None
    if rank == 0 and not (out / DONE).is_file():
        from deepspeed.checkpoint import ds_to_universal

        tmp = Path(folder) / (UNIVERSAL + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        print(f"--resume: {folder} was written by {saved_world} process(es), this run has {world}: converting it to "
              f"a universal checkpoint in {out} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        args = argparse.Namespace(input_folder=str(folder), output_folder=str(tmp), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
        log = io.StringIO()
        try:
            with deepspeed_weights_only(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                ds_to_universal.main(args)
            (Path(folder) / "latest_universal").unlink(missing_ok=True)  # the converter's pointer; ours is 'complete'
            (tmp / DONE).write_text(f"from {saved_world} processes\n")
            os.replace(tmp, out)
            print(f"--resume: converted in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it, not wait at the barrier
            err = UserError(f"--resume: converting {folder} to a universal checkpoint failed ({type(e).__name__}: "
                            f"{str(e)[:300]}); resume with {saved_world} processes")
    flag = torch.tensor([1.0 if err is not None else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if err is not None:
        raise err
    if flag.item() > 0:
        raise UserError(f"--resume: converting {folder} to a universal checkpoint failed on rank 0")
    return out


def load_other_world(engine, folder: Path, saved_world: int, world: int, rank: int, expect: dict):
    """Load a checkpoint written by ``saved_world`` processes into this engine of ``world``; returns the path
    DeepSpeed loaded (None when it could not)."""
    folder = Path(folder)
    if not partitioned(folder):  # whole states in mp_rank_00_model_states.pt
        with deepspeed_weights_only(expect=expect):
            path, _ = engine.load_checkpoint(str(folder.parent), tag=folder.name)
        return path
    convert(folder, saved_world, world, rank)
    engine._config.load_universal_checkpoint = True  # DeepSpeed reads it at load time ("checkpoint.load_universal")
    try:
        with deepspeed_weights_only(expect=expect):
            path, _ = engine.load_checkpoint(str(folder), tag=UNIVERSAL)
    finally:
        engine._config.load_universal_checkpoint = False
    return path


def reseed(folder: Path, rank: int, saved_world: int, seed: int, step: int, restore) -> None:
    """This rank's RNG states: the saved ones where this rank existed, else seeded from (seed, step, rank)."""
    if rank < saved_world and train_state_path(folder, rank).is_file():
        restore(read_train_state(folder, rank))
        return
    s = (seed * 1_000_003 + step * 9_176 + rank) % 2 ** 32
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)
