"""Worker of tests/test_accum.py (spawned, one per rank, gloo): one optimiser step's loss and gradients (as
DeepSpeed hands them to the optimiser, after the all-reduce) for one batch of 32 per process, for 4 micro-batches
of 8 in "cache" mode and in "plain" mode, on the same model and data; with check_replay, the second pass's
largest difference from the cached embeddings."""

from __future__ import annotations

import os

import torch

REPORTS = ["sinus rhythm. left bundle branch block.", "atrial fibrillation. low qrs voltages. abnormal ecg.",
           "normal ecg.", "sinus bradycardia. first degree av block. borderline ecg.",
           "sinus tachycardia. st elevation. t wave inversion. possible anterior infarct. abnormal ecg."]


def make_data(model, n: int, seed: int) -> dict:
    """n records: random ECG, 0-6 beats each (so micro-batches have different beat slot counts), reports."""
    g = torch.Generator().manual_seed(seed)
    beats = torch.randint(0, 7, (n,), generator=g)
    k = int(beats.max().clamp(min=1))
    starts = torch.randint(0, 280, (n, k), generator=g)
    spans = torch.stack([starts, starts + torch.randint(1, 30, (n, k), generator=g)], -1)
    reports = [REPORTS[int(i)] for i in torch.randint(0, len(REPORTS), (n,), generator=g)]
    return {"ecg": torch.randn(n, 12, 5000, generator=g), "beat_spans": spans,
            "beat_mask": torch.arange(k)[None, :] < beats[:, None], "reports": reports}


def batch_of(model, data: dict, sl: slice) -> dict:
    """The records sl as Collate makes a batch of them: beat slots trimmed to the batch's longest, reports
    tokenised and padded to the batch's longest."""
    mask = data["beat_mask"][sl]
    k = max(int(mask.sum(1).max()), 1)
    return {"ecg": data["ecg"][sl], "beat_spans": data["beat_spans"][sl][:, :k], "beat_mask": mask[:, :k],
            **model.tokenizer(data["reports"][sl])}


def one_step(cfg, seed, rank, world, out_dir, data_seed, micro, accum, mode, check_replay=False, poison=None):
    """poison=i: first a step whose micro-batch i holds a NaN ECG (the non-finite rule must skip it and leave no
    gradient behind), then the step on the clean batches."""
    from melp_fast.training.accum import EmbeddingCache
    from melp_fast.training.engine import Trainer
    from melp_fast.losses import MELPLoss
    from melp_fast.model.melp import MELP

    torch.manual_seed(seed)
    model = MELP(cfg.model)
    if cfg.model.dropout == 0:  # dropout off everywhere: the text backbone keeps its own (0.1) otherwise
        for mod in model.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    cfg.train.batch_size, cfg.train.accum_steps = micro, accum
    trainer = Trainer(model, cfg.train, out_dir, None, rank, world, quiet=True)
    criterion = MELPLoss(cfg.loss)
    data = make_data(model, micro * accum, data_seed)
    batches = [batch_of(model, data, slice(i * micro, (i + 1) * micro)) for i in range(accum)]
    got = {}
    step = trainer.engine.step

    def record(*a, **k):  # the gradients the optimiser gets (all-reduced over ranks), before it steps
        got["grads"] = {n: p.grad.detach().clone() for n, p in trainer.engine.module.named_parameters()
                        if p.grad is not None}
        return step(*a, **k)

    trainer.engine.step = record

    def compute(batch):
        out = trainer.engine(batch)
        return {**criterion(out, batch), "logit_scale": out.logit_scale.detach()}

    if poison is not None:
        bad = [dict(b) for b in batches]
        bad[poison]["ecg"] = bad[poison]["ecg"].clone()
        bad[poison]["ecg"][0, 0, 0] = float("nan")
        got["skipped_step"] = trainer.accum_step(bad, compute, EmbeddingCache(criterion) if mode == "cache" else None)
        got["after_skip"] = (trainer.step, trainer.skipped)
    torch.manual_seed(seed + 1)  # dropout's draws
    if accum == 1:
        losses = trainer.train_step(batches[0], compute)
    else:
        cache = EmbeddingCache(criterion, check_replay=check_replay) if mode == "cache" else None
        losses = trainer.accum_step(batches, compute, cache)
        if cache is not None and check_replay:
            got["replay"] = list(cache.replay_diffs)
            # control: a second pass replaying the wrong micro-batch's RNG state does not reproduce the cache
            cache.replay_diffs = []
            _, state = cache.first_pass(trainer.engine, [trainer._to_device(b) for b in batches])
            state["rng"] = state["rng"][1:] + state["rng"][:1]
            cache.second_pass(trainer.engine, state, 0)
            got["wrong_rng"] = cache.replay_diffs[0]
    got["losses"] = {k: float(v) for k, v in losses.items()}
    return got


def worker(rank, world, port, out_dir, cases):
    """cases: (name, mode, dropout[, poison]) with mode "big" (one batch of 32), "cache" or "plain" (4 micro-batches
    of 8); poison: see one_step."""
    from helpers import tiny_cfg
    from melp_fast.training.engine import init_distributed, shutdown_distributed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    init_distributed()
    try:
        results = {}
        for name, mode, dropout, *poison in cases:
            cfg = tiny_cfg(dropout=dropout, layers=1)
            cfg.loss.impl = "auto"
            micro, accum = (32, 1) if mode == "big" else (8, 4)
            results[name] = one_step(cfg, 7, rank, world, os.path.join(out_dir, f"{name}{rank}"), 100 + rank, micro,
                                     accum, mode, check_replay=dropout > 0, poison=poison[0] if poison else None)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        shutdown_distributed()
