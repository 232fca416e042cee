"""MELP pretraining with DeepSpeed.

    deepspeed melp_fast/train.py --ds_config configs/cpu_fp32.json --preset tiny
    deepspeed melp_fast/train.py --ds_config configs/cpu_bf16.json --preset tiny --set train.steps=50
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        melp_fast/train.py --ds_config configs/zero2_bf16.json --preset paper --data STORE   (see README)
    python -m melp_fast.train --preset tiny            (one process, no launcher)
    python -m melp_fast.train --config runs/tiny/config.json --out runs/again   (a past run's recipe, run again)

Reads top to bottom: config -> distributed init -> data -> model -> engine (optimiser, schedule, DeepSpeed;
melp_fast/training/engine.py) -> loop (forward, three losses, backward, step, clamp the logit scale, log, checkpoint) ->
export. The exported model (out_dir/model: config.json + model.safetensors + text_encoder/) loads with
melp_fast.load_model(path).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by the deepspeed launcher or torchrun
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from melp_fast.config import Config, base_config, from_args
from melp_fast.data.augment import Augment
from melp_fast.data.dataset import Collate, ECGTextDataset
from melp_fast.data.store import Store, build_synthetic_store
from melp_fast.errors import InputNotFound, run_main
from melp_fast.inference.export import export_model
from melp_fast.losses import MELPLoss
from melp_fast.model.melp import MELP
from melp_fast.options import TRAIN_FLAGS, parse
from melp_fast.training.engine import (ResumableSampler, Trainer, check_batches, check_compile, compile_model,
                                       init_distributed, shutdown_distributed)
from melp_fast.training.preflight import preflight_train
from melp_fast.training.run_dir import check_resume, prepare_run_dir

FLAGS = TRAIN_FLAGS  # flag: (config key, help); melp_fast/options.py holds every command's options


def parse_args(argv=None):
    return parse("train", argv)


def train_store(cfg: Config, rank: int) -> Store:
    if cfg.data.source != "synthetic":
        if not Path(cfg.data.source).is_dir():
            raise InputNotFound(f"--data {cfg.data.source}: no such store directory")
        return Store(cfg.data.source)
    path = Path(cfg.train.out_dir).parent / "data" / f"synthetic-train-{cfg.data.n_train}-seed{cfg.data.seed}"
    if rank == 0:
        threads = torch.get_num_threads()  # the build's Numba threads can change torch's; keep the launcher's
        build_synthetic_store(path, "train", cfg.data.n_train, cfg.data.seed, cfg.data.highpass_hz, cfg.model.max_beats)
        torch.set_num_threads(threads)
    dist.barrier()
    return Store(path)


def train_dataset(cfg: Config, store: Store, rank: int = 0) -> ECGTextDataset:
    """The training records, with beat spans in units of the encoder's tokens (cfg.model.token_stride)."""
    return ECGTextDataset(store, lead_mask_p=cfg.data.lead_mask_p, seed=cfg.data.seed, stride=cfg.model.token_stride,
                          indices=pretraining_indices(store, cfg.data.val_fraction, rank),
                          augment=Augment.from_config(cfg.data))


def pretraining_indices(store: Store, val_fraction: float, rank: int = 0):
    """The records to train on: all of them, or, where the store knows every record's subject, the subject-level
    split of docs/SPEC.md (98/2 by subject, seed 42) with the held-out subjects left out. None means every record."""
    from melp_fast.data.tasks import subject_split

    subjects = [r.get("subject", "") for r in store.records] if hasattr(store, "records") else []
    if val_fraction <= 0 or not subjects or not all(subjects):
        return None
    train, val = subject_split(subjects, val_fraction, seed=42)
    if rank == 0:
        print(f"subject split: training on {len(train)} records, {len(val)} held out ({val_fraction:.0%} of subjects)")
    return train


TEXT_PAD = {"attention_mask": 0, "sent_ids": -1, "caption_labels": -100}  # input_ids: the tokenizer's pad id


def pad_static(batch: dict, beats: int, tokens: int, pad_id: int) -> dict:
    """A batch padded to fixed sizes: `beats` beat slots (masked, empty spans) and `tokens` text positions (padding:
    no attention, no sentence, no caption target), so its shapes depend on the batch size only. Padding changes
    no loss: the beat and sentence masks and the causal, key-padded attention leave it out."""
    import torch.nn.functional as F

    out = dict(batch)
    k = batch["beat_mask"].shape[1]
    if k > beats or batch["input_ids"].shape[1] > tokens:
        raise ValueError(f"pad_static: a batch of {k} beat slots and {batch['input_ids'].shape[1]} tokens does not "
                         f"fit {beats} slots and {tokens} tokens")
    out["beat_spans"] = F.pad(batch["beat_spans"], (0, 0, 0, beats - k))
    out["beat_mask"] = F.pad(batch["beat_mask"], (0, beats - k), value=False)
    if "beat_seconds" in batch:
        out["beat_seconds"] = F.pad(batch["beat_seconds"], (0, beats - k))
    for key, fill in {"input_ids": pad_id, **TEXT_PAD}.items():
        out[key] = F.pad(batch[key], (0, tokens - batch[key].shape[1]), value=fill)
    return out


class StaticCollate:
    """Collate, then pad_static (train.compile / train.cuda_graph: one graph for every step). Picklable."""

    def __init__(self, collate: Collate, beats: int, tokens: int, pad_id: int):
        self.collate, self.beats, self.tokens, self.pad_id = collate, beats, tokens, pad_id

    def __call__(self, items) -> dict:
        return pad_static(self.collate(items), self.beats, self.tokens, self.pad_id)


def make_collate(cfg: Config, model: MELP, dataset: ECGTextDataset):
    """The loader's collate: batches as the data gives them, or padded to static shapes when the model is compiled."""
    tokenizer = model.tokenizer
    collate = Collate(tokenizer)
    if not (cfg.train.static_shapes or cfg.train.compile or cfg.train.cuda_graph):
        return collate
    return StaticCollate(collate, dataset.max_beats, tokenizer.max_len, tokenizer.pad)


def clamp_logit_scale(engine):
    """Clamp the logit scale to [0, ln 100] in place; under ZeRO-3 the parameter is gathered for it first."""
    p = engine.module.logit_scale
    if hasattr(p, "ds_id"):  # ZeRO-3 partitioned
        import deepspeed

        with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
            engine.module.clamp_logit_scale()
    else:
        engine.module.clamp_logit_scale()


def accumulation(cfg: Config, model: MELP, world: int, rank: int, criterion: MELPLoss):
    """train.accum_steps > 1: the embedding cache (accum_mode "cache", melp_fast/accum.py) or None (one batch, or
    DeepSpeed's "plain" accumulation); says which, with the negatives each contrastive loss sees."""
    n, b = cfg.train.accum_steps, cfg.train.batch_size
    if n == 1:
        return None
    if cfg.train.accum_mode == "plain":
        if rank == 0:
            print(f"accumulation: plain ({n} micro-batches of {b} per step): the contrastive losses see one "
                  f"micro-batch at a time: InfoNCE {b * world} candidates, beat-sentence {b} (one batch of {n * b} "
                  f"would give {n * b * world} and {n * b}); train.accum_mode=cache keeps them all")
        return None
    from melp_fast.training.accum import EmbeddingCache, cache_bytes

    if rank == 0:
        m = cfg.model
        k = m.beat_queries if m.beat_pooling == "queries" else m.max_beats
        mib = cache_bytes(n * b, k, m.max_sentences, m.embed_dim) / 2 ** 20
        print(f"accumulation: cache ({n} micro-batches of {b} per step): the contrastive losses see the whole batch "
              f"(InfoNCE {n * b * world} candidates, beat-sentence {n * b}); a second forward per micro-batch; "
              f"cache <= {mib:.1f} MiB per process (fp32 embeddings and gradients)")
    return EmbeddingCache(criterion)


def validation(cfg: Config, store: Store, criterion, trainer: Trainer, out_dir: Path, rank: int):
    """The after-step hook of the validation (docs/SPEC.md, "Training"): every ``train.eval_every`` steps the held-out
    subjects' losses and zero-shot AUROC on ``train.downstream`` stores (melp_fast/eval/validation.py) join the
    history, and the best model by ``train.best_metric`` is exported to out_dir/best (its score in best/best.json)."""
    if not cfg.train.eval_every:
        return lambda: None
    from melp_fast.eval.validation import BestTracker, held_out_indices, validate

    val_idx = held_out_indices(store, cfg.data.val_fraction)
    best, best_file = BestTracker(cfg.train.best_metric), out_dir / "best" / "best.json"
    if best_file.is_file():  # a resumed run keeps the best it had
        best.load_state_dict(json.loads(best_file.read_text()))

    def run() -> dict | None:
        if trainer.step % cfg.train.eval_every:
            return None
        metrics = validate(trainer.engine.module, criterion, store, val_idx, downstream=cfg.train.downstream,
                           batch_size=cfg.train.batch_size)
        if best.update(trainer.step, metrics):  # every rank computed the same metrics: the same decision
            export_model(trainer.engine, cfg, out_dir / "best", rank)
            if rank == 0:
                best_file.write_text(json.dumps(best.state_dict()))
        return metrics

    return run


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = from_args(base_config(args, Config, default_preset="tiny"), args, FLAGS)
    preflight_train(cfg, args, FLAGS)  # every option, the DeepSpeed JSON, inputs and --out checked before any work
    out_dir, batch_size = Path(cfg.train.out_dir), cfg.train.batch_size
    check_resume(out_dir / "checkpoints", args.resume)
    check_compile(cfg.train)
    rank, world = init_distributed()
    # a finished run is never replaced without --resume or --overwrite
    prepare_run_dir(out_dir, resume=args.resume, overwrite=args.overwrite, rank=rank, barrier=dist.barrier)
    torch.manual_seed(cfg.train.seed)

    # data: every rank reads its own share of each epoch's permutation (engine.ResumableSampler)
    store = train_store(cfg, rank)
    dataset = train_dataset(cfg, store, rank)
    model = MELP(cfg.model)
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                        collate_fn=make_collate(cfg, model, dataset), num_workers=cfg.data.num_workers,
                        persistent_workers=cfg.data.num_workers > 0, pin_memory=torch.cuda.is_available(),
                        # its own generator: starting an epoch must not draw from the global RNG (dropout's),
                        # or a resumed run would diverge from an uninterrupted one
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    accum = cfg.train.accum_steps
    check_batches(len(loader) // accum, len(dataset), batch_size * accum, world)

    def epoch_batches(epoch: int, start: int):
        # the records of the epoch consumed before batch `start`: on a run resumed on another world size the
        # checkpoint's records (trainer.offset) come first
        sampler.set_epoch(epoch, consumed=trainer.offset + start * batch_size * world)
        dataset.set_epoch(epoch)
        return loader

    # the model's forward and backward through torch.compile (train.compile / train.cuda_graph), losses eager
    compiled = compile_model(model, cfg.train)
    if compiled and rank == 0:
        print(f"model compiled (torch.compile, {compiled}); batches padded to {dataset.max_beats} beat slots and "
              f"{cfg.model.max_text_len} tokens")
    # engine (AdamW, warmup + cosine, DeepSpeed), resume, loss
    trainer = Trainer(model, cfg.train, out_dir, args.ds_config, rank, world, quiet=args.quiet, desc="train",
                      show=("loss", "global", "local", "caption", "logit_scale"))
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(cfg.to_json())
    if args.resume:
        trainer.load(other_world=True)
    criterion = MELPLoss(cfg.loss)
    cache = accumulation(cfg, model, world, rank, criterion)

    def compute(batch: dict) -> dict:
        out = trainer.engine(batch)
        return {**criterion(out, batch), "logit_scale": out.logit_scale.detach()}

    # loop, then export
    validate = validation(cfg, store, criterion, trainer, out_dir, rank)

    def after_step() -> dict | None:
        clamp_logit_scale(trainer.engine)
        return validate()

    history = trainer.fit(epoch_batches, compute, after_step=after_step, cache=cache)
    export_dir = export_model(trainer.engine, cfg, out_dir / "model", rank)
    dist.barrier()
    return {"export": str(export_dir), "history": history, "skipped": trainer.skipped, "config": cfg}


if __name__ == "__main__":
    try:
        code = run_main(main)
    finally:
        shutdown_distributed()
    sys.exit(code)
