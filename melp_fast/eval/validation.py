"""Validation during pretraining, as the reference does it: the held-out 2% of subjects scored every
``train.eval_every`` steps (the three losses), plus zero-shot AUROC on any downstream store given
(``train.downstream``), and the best checkpoint kept by ``train.best_metric``.

How the training loop uses it (train.py / the engine; rank 0, or every rank on its own share, then averaged):

    from melp_fast.eval.validation import BestTracker, held_out_indices, validate
    val_idx = held_out_indices(store, cfg.data.val_fraction)             # None: the store has no subject ids
    best = BestTracker(cfg.train.best_metric)                            # state_dict() / load_state_dict() on resume
    ...
    if cfg.train.eval_every and step % cfg.train.eval_every == 0:
        metrics = validate(module, criterion, store, val_idx, downstream=cfg.train.downstream,
                           batch_size=cfg.train.batch_size)
        history / TensorBoard: every key of ``metrics`` beside the training losses, at this step
        if best.update(step, metrics): export the model to out_dir / "best" (and note best.step, best.value)

``validate`` returns a flat dict: ``val/loss``, ``val/global``, ``val/local``, ``val/caption`` (means over the
held-out batches; absent without held-out records), ``zs/<task>`` (macro zero-shot AUROC on the task's VALIDATION
records: PTB-XL strat_fold 9, ``<task>_val.csv`` of split files, else the 10 % part of the evaluation's stratified
70/10/20 split; never a test record) and ``zs/mean`` (their mean) per downstream store, and ``val/n`` (records
scored). ``best_metric`` names one of these keys; a key with "loss" in its name is minimised, any other maximised
(the reference early-stops on the mean zero-shot AUROC of its validation split files, ``pretrain_datamodule.py``:
per-class AUROC of the raw cosine, classes with one label value left out, mean per set, mean over the sets; that is
``zs/mean`` here). A downstream store whose task has no validation record is an error naming it
(``check_downstream`` says so before training starts).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.dataset import Collate, ECGTextDataset
from ..data.store import Store
from ..data.tasks import subject_split


def held_out_indices(store: Store, val_fraction: float = 0.02, seed: int = 42):
    """The held-out records of the pretraining split (the subjects ``train.pretraining_indices`` leaves out), or
    None when the store does not know every record's subject."""
    subjects = [r.get("subject", "") for r in store.records]
    if val_fraction <= 0 or not subjects or not all(subjects):
        return None
    return subject_split(subjects, val_fraction, seed=seed)[1]


@torch.no_grad()
def validation_losses(model, criterion, store: Store, indices, batch_size: int = 64, max_batches: int | None = None,
                      ) -> dict:
    """Mean of each loss over batches of the held-out records (full batches; all of them in one batch when there
    are fewer records than ``batch_size``), in eval mode (no dropout, no lead masking)."""
    idx = np.asarray(indices, dtype=np.int64)
    if len(idx) < 2:
        return {}
    bs = min(batch_size, len(idx))
    device = model.logit_scale.device
    ds = ECGTextDataset(store, stride=model.cfg.token_stride, indices=idx)
    loader = DataLoader(ds, batch_size=bs, shuffle=False, drop_last=True, collate_fn=Collate(model.tokenizer))
    sums: dict = {}
    n = 0
    for b, batch in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        losses = criterion(model(batch), batch)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n += 1
    return {f"val/{k}": v / n for k, v in sums.items()} | {"val/n": n * bs} if n else {}


def validation_sets(stores) -> list[tuple[Store, str, dict]]:
    """(store, task, sets) of each downstream store's default task, whose "val" part is what model selection scores.
    A store without a validation record for its task is an ``EvalError`` naming it (its test records are never a
    substitute)."""
    from .tasks import EvalError, open_store, task_sets

    out = []
    for s in stores:
        store = s if isinstance(s, Store) else open_store(s)
        task = store.meta.get("task")
        if not task:
            raise EvalError(f"train.downstream store {store.path} has no default task (no labels)")
        sets = task_sets(store, task)
        if not len(sets["val"][0]):
            raise EvalError(f"train.downstream store {store.path} has no validation record for task {task} "
                            f"({sets['how']}): model selection never scores test records; give a store with a "
                            f"validation part (PTB-XL strat_fold 9, or enough labelled records for the 10 % part of "
                            f"the stratified split)")
        out.append((store, task, sets))
    return out


def check_downstream(stores) -> None:
    """Fail before training when a ``train.downstream`` store cannot be validated on (see ``validation_sets``)."""
    validation_sets(stores)


def downstream_zero_shot(model, stores, prompts=None, batch_size: int = 64) -> dict:
    """``zs/<task>``: zero-shot macro AUROC of each store's default task on its validation records only (the
    evaluation's default protocol and shipped prompts, or ``prompts``), and ``zs/mean``."""
    from .tasks import task_key
    from .zero_shot import embed_store, zero_shot_scores
    from .prompts import prompt_embeddings, task_prompts

    out = {}
    for store, task, sets in validation_sets(stores):
        va, y = sets["val"]
        key = task_key(store, task)
        text = prompt_embeddings(model, task_prompts(key, sets["classes"], prompts), sets["classes"])
        emb = embed_store(model, store, batch_size, progress=False, indices=va)
        res, _ = zero_shot_scores(emb["rhythm"], text, y, sets["classes"])
        name = key if f"zs/{key}" not in out else f"{key}:{store.path.name}"
        out[f"zs/{name}"] = res["mean"]
    vals = [v for v in out.values() if np.isfinite(v)]
    if out:
        out["zs/mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


def validate(model, criterion, store: Store | None = None, indices=None, *, downstream=(), prompts=None,
             batch_size: int = 64, max_batches: int | None = None) -> dict:
    """All validation metrics as one flat dict (see the module docstring). The model is put back in the mode
    it was in."""
    was_training = model.training
    model.eval()
    try:
        out = {}
        if store is not None and indices is not None:
            out.update(validation_losses(model, criterion, store, indices, batch_size, max_batches))
        if downstream:
            out.update(downstream_zero_shot(model, downstream, prompts, batch_size))
        return out
    finally:
        model.train(was_training)


class BestTracker:
    """Which validation was the best so far by ``metric`` (minimised when its name holds "loss", else
    maximised); a missing or non-finite value never counts as better."""

    def __init__(self, metric: str = "val/loss"):
        self.metric = metric
        self.mode = "min" if "loss" in metric else "max"
        self.value, self.step = None, None

    def update(self, step: int, metrics: dict) -> bool:
        v = metrics.get(self.metric)
        if v is None or not np.isfinite(v):
            return False
        better = self.value is None or (v < self.value if self.mode == "min" else v > self.value)
        if better:
            self.value, self.step = float(v), int(step)
        return better

    def state_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "step": self.step}

    def load_state_dict(self, d: dict):
        if d.get("metric") == self.metric:
            self.value, self.step = d.get("value"), d.get("step")
