"""MELP pretraining with DeepSpeed.

    deepspeed melp_fast/train.py --ds_config configs/cpu_fp32.json --preset tiny
    deepspeed --num_gpus 2 melp_fast/train.py --ds_config configs/cpu_bf16.json --preset tiny --set train.steps=50
    python -m melp_fast.train --preset tiny            (one process, no launcher)

Reads top to bottom: config -> distributed init -> data -> model, optimiser, schedule -> DeepSpeed engine ->
loop (forward, three losses, backward, step, clamp the logit scale, log) -> checkpoint and export.
The exported model (out_dir/model: config.json + model.safetensors + text_encoder/) loads with
melp_fast.load_model(path).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script by the deepspeed launcher
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from melp_fast.config import Config, apply_overrides, get_preset
from melp_fast.data.augment import Augment
from melp_fast.data.dataset import Collate, ECGTextDataset
from melp_fast.data.store import Store, build_synthetic_store
from melp_fast.losses import MELPLoss
from melp_fast.model.melp import MELP
from melp_fast.export import export_model

DEFAULT_DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 32,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0,
    "zero_optimization": {"stage": 0},
    "zero_force_ds_cpu_optimizer": False,
    "steps_per_print": 1_000_000,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ds_config", default=None, help="DeepSpeed JSON config (default: ZeRO-0, fp32)")
    p.add_argument("--preset", default="tiny", help="config preset: tiny | paper")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--data", default=None, help="a preprocessed store (default: the embedded synthetic corpus)")
    p.add_argument("--out", default=None, help="output directory (default: the preset's train.out_dir)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="per process")
    p.add_argument("--loss-impl", choices=["reference", "fused"], default=None)
    p.add_argument("--text-encoder", default=None, help="minilm | Hugging Face name or path | random:<size>")
    p.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)), help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def make_config(args) -> Config:
    cfg = apply_overrides(get_preset(args.preset), args.overrides)
    if args.data is not None:
        cfg.data.source = args.data
    if args.out is not None:
        cfg.train.out_dir = args.out
    if args.steps is not None:
        cfg.train.steps = args.steps
    if args.batch_size is not None:
        cfg.train.batch_size = args.batch_size
    if args.loss_impl is not None:
        cfg.loss.impl = args.loss_impl
    if args.text_encoder is not None:
        cfg.model.text_encoder = args.text_encoder
    return cfg


def init_distributed():
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on CUDA); one process works too."""
    import deepspeed

    if "WORLD_SIZE" not in os.environ:  # plain `python`: a world of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def load_ds_config(path, cfg: Config, world: int) -> dict:
    ds = dict(DEFAULT_DS_CONFIG)
    if path:
        with open(path) as f:
            ds.update(json.load(f))
    ds["train_micro_batch_size_per_gpu"] = cfg.train.batch_size
    ds["train_batch_size"] = cfg.train.batch_size * ds.get("gradient_accumulation_steps", 1) * world
    ds.setdefault("zero_force_ds_cpu_optimizer", False)
    return ds


def train_store(cfg: Config, rank: int) -> Store:
    if cfg.data.source != "synthetic":
        return Store(cfg.data.source)
    path = Path(cfg.train.out_dir).parent / "data" / f"synthetic-train-{cfg.data.n_train}-seed{cfg.data.seed}"
    if rank == 0:
        build_synthetic_store(path, "train", cfg.data.n_train, cfg.data.seed, cfg.data.highpass_hz, cfg.model.max_beats)
    dist.barrier()
    return Store(path)


def pretraining_indices(store: Store, val_fraction: float, rank: int = 0):
    """The records to train on: all of them, or, where the store knows every record's subject, the subject-level
    split of MELP_SPEC.md (98/2, seed 42) with the held-out subjects left out. None means every record."""
    from melp_fast.data.tasks import subject_split

    subjects = [r.get("subject", "") for r in store.records] if hasattr(store, "records") else []
    if val_fraction <= 0 or not subjects or not all(subjects):
        return None
    train, val = subject_split(subjects, val_fraction, seed=42)
    if rank == 0:
        print(f"subject split: training on {len(train)} records, {len(val)} held out ({val_fraction:.0%} of subjects)")
    return train


def param_groups(model: torch.nn.Module, weight_decay: float):
    """No weight decay on biases, norms, the logit scale and learned queries."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name or "queries" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.0):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        t = min(1.0, (step - warmup) / max(total - warmup, 1))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def main(argv=None) -> dict:
    import deepspeed

    args = parse_args(argv)
    cfg = make_config(args)
    rank, world = init_distributed()
    out_dir = Path(cfg.train.out_dir)
    torch.manual_seed(cfg.train.seed)

    # data
    store = train_store(cfg, rank)
    dataset = ECGTextDataset(store, lead_mask_p=cfg.data.lead_mask_p, seed=cfg.data.seed,
                             indices=pretraining_indices(store, cfg.data.val_fraction, rank),
                             augment=Augment.from_config(cfg.data))
    model = MELP(cfg.model)
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True,
                        collate_fn=Collate(model.tokenizer), num_workers=cfg.data.num_workers,
                        persistent_workers=cfg.data.num_workers > 0,
                        # its own generator: starting an epoch must not draw from the global RNG (dropout's),
                        # or a resumed run would diverge from an uninterrupted one
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} records cannot fill one batch of {cfg.train.batch_size} on {world} processes")

    # model, optimiser, schedule, engine
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr, betas=tuple(cfg.train.betas))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.train.warmup_steps, cfg.train.steps, cfg.train.min_lr_ratio))
    ds_config = load_ds_config(args.ds_config, cfg, world)
    engine, optimizer, _, schedule = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                                          config=ds_config)
    criterion = MELPLoss(cfg.loss)
    device = engine.device
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(cfg.to_json())

    # resume: model, optimiser, schedule (DeepSpeed), data position and RNG states (ours)
    ckpt_dir = out_dir / "checkpoints"
    pos = {"step": 0, "epoch": 0, "sample": 0}
    if args.resume:
        pos = resume(engine, ckpt_dir, rank)
    history = read_history(out_dir / "history.jsonl", pos["step"]) if rank == 0 else []
    writer = tb_writer(out_dir, rank, args.quiet)

    # loop
    from tqdm import tqdm

    step, epoch, consumed, skipped, bad_in_row = pos["step"], pos["epoch"], pos["sample"], 0, 0
    bar = tqdm(total=cfg.train.steps, initial=step, desc="train", disable=rank != 0 or args.quiet, mininterval=1.0)
    t_last, n_last = time.perf_counter(), step
    while step < cfg.train.steps:
        sampler.set_epoch(epoch, start=pos["sample"] if epoch == pos["epoch"] else 0)
        dataset.set_epoch(epoch)
        consumed = sampler.start
        for batch in loader:
            consumed += cfg.train.batch_size
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            out = engine(batch)
            losses = criterion(out, batch)
            finite = torch.tensor([float(torch.isfinite(losses["loss"]))])
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item() < 1:  # every rank skips together
                skipped, bad_in_row = skipped + 1, bad_in_row + 1
                engine.zero_grad()
                if bad_in_row >= cfg.train.max_nonfinite:
                    tag = save(engine, ckpt_dir, step, epoch, consumed, rank)
                    raise RuntimeError(f"{bad_in_row} non-finite losses in a row at step {step}: stopping. The model "
                                       f"before them is saved in {ckpt_dir / tag} (resume with --resume).")
                continue
            bad_in_row = 0
            engine.backward(losses["loss"])
            engine.step()
            clamp_logit_scale(engine)
            step += 1
            rec = {k: float(v.detach()) for k, v in losses.items()}
            rec.update(step=step, lr=schedule.get_last_lr()[0], logit_scale=float(out["logit_scale"].detach()), skipped=skipped)
            if rank == 0:
                history.append(rec)
                append_history(out_dir / "history.jsonl", rec)
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                now = time.perf_counter()
                rec["samples_per_s"] = (step - n_last) * cfg.train.batch_size * world / (now - t_last)
                t_last, n_last = now, step
                bar.set_postfix(loss=f"{rec['loss']:.3f}", glob=f"{rec['global']:.3f}", local=f"{rec['local']:.3f}",
                                cap=f"{rec['caption']:.3f}", scale=f"{rec['logit_scale']:.1f}",
                                sps=f"{rec['samples_per_s']:.1f}")
                if writer is not None:
                    for k, v in rec.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
            bar.update(1)
            if cfg.train.save_every and step % cfg.train.save_every == 0 and step < cfg.train.steps:
                save(engine, ckpt_dir, step, epoch, consumed, rank)
            if step >= cfg.train.steps:
                break
        else:
            epoch += 1
    bar.close()
    if writer is not None:
        writer.close()

    save(engine, ckpt_dir, step, epoch, consumed, rank)
    export_dir = export_model(engine, cfg, out_dir / "model", rank)
    dist.barrier()
    return {"export": str(export_dir), "history": history, "skipped": skipped, "config": cfg}


def clamp_logit_scale(engine):
    """Clamp the logit scale to [0, ln 100] in place; under ZeRO-3 the parameter is gathered for it first."""
    p = engine.module.logit_scale
    if hasattr(p, "ds_id"):  # ZeRO-3 partitioned
        import deepspeed

        with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
            engine.module.clamp_logit_scale()
    else:
        engine.module.clamp_logit_scale()


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way (the data position of a resumed run)."""

    start = 0

    def set_epoch(self, epoch: int, start: int = 0):
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self):
        return self.num_samples - self.start


def save(engine, ckpt_dir: Path, step: int, epoch: int, consumed: int, rank: int) -> str:
    """Checkpoint: DeepSpeed's (model, optimiser, schedule) plus our data position and every rank's RNG states.

    The pointer `complete` is replaced atomically only after every file is written, so a kill at any moment
    leaves it naming the previous complete checkpoint (DeepSpeed's own `latest` is written in place).
    """
    tag = f"step{step}"
    folder = ckpt_dir / tag
    folder.mkdir(parents=True, exist_ok=True)
    state = {"position": {"step": step, "epoch": epoch, "sample": consumed},
             "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}
    tmp = folder / f"train_state_rank{rank}.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, folder / f"train_state_rank{rank}.pt")
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag)
    dist.barrier()
    if rank == 0:
        (ckpt_dir / "complete.tmp").write_text(tag)
        os.replace(ckpt_dir / "complete.tmp", ckpt_dir / "complete")
    return tag


def resume(engine, ckpt_dir: Path, rank: int) -> dict:
    """Load the last complete checkpoint; returns its data position."""
    pointer = ckpt_dir / "complete"
    if not pointer.is_file():
        raise FileNotFoundError(f"--resume: no complete checkpoint to resume from in {ckpt_dir}")
    tag = pointer.read_text().strip()
    path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise FileNotFoundError(f"--resume: checkpoint {ckpt_dir / tag} could not be loaded")
    state = torch.load(ckpt_dir / tag / f"train_state_rank{rank}.pt", weights_only=False)
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["position"]


def read_history(path: Path, upto: int) -> list[dict]:
    """History of a resumed run up to its checkpoint (later lines came from steps that are redone)."""
    if upto == 0 or not path.is_file():
        if path.is_file():
            path.unlink()
        return []
    kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in kept if r["step"] <= upto]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_history(path: Path, rec: dict):
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def tb_writer(out_dir: Path, rank: int, quiet: bool):
    if rank != 0:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency, but logging is optional
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


if __name__ == "__main__":
    main()
