"""Dataset and batching over a store: ECG, beat spans in encoder-token units with a mask, tokenised report."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from . import beats as beatlib
from .store import Store


class ECGTextDataset(Dataset):
    """Items of a store. With lead_mask_p > 0 (training) each lead is zeroed independently with that
    probability, drawn from a generator seeded by (seed, epoch, index) so runs are reproducible."""

    def __init__(self, store: Store | str, lead_mask_p: float = 0.0, seed: int = 0, stride: int = 16,
                 n_tokens: int | None = None):
        self.store = store if isinstance(store, Store) else Store(store)
        self.lead_mask_p, self.seed, self.epoch = lead_mask_p, seed, 0
        self.stride = stride
        self.n_tokens = n_tokens if n_tokens is not None else self.store.meta["n_samples"] // stride
        self.max_beats = self.store.meta["max_beats"]

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> dict:
        ecg = np.array(self.store.signals[i], dtype=np.float32)
        if self.lead_mask_p > 0:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            ecg[rng.random(ecg.shape[0]) < self.lead_mask_p] = 0.0
        n = int(self.store.n_beats[i])
        spans = np.zeros((self.max_beats, 2), dtype=np.int64)
        if n:
            spans[:n] = beatlib.token_spans(np.asarray(self.store.beats[i, :n], dtype=np.int64), self.stride, self.n_tokens)
        mask = np.zeros(self.max_beats, dtype=bool)
        mask[:n] = True
        item = {"ecg": torch.from_numpy(ecg), "beat_spans": torch.from_numpy(spans), "beat_mask": torch.from_numpy(mask),
                "report": self.store.reports[i], "index": i}
        if self.store.labels is not None:
            item["labels"] = torch.from_numpy(self.store.labels[i])
        return item


class Collate:
    """Stacks items and tokenises the reports (picklable, so it runs inside DataLoader workers)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items: list[dict]) -> dict:
        batch = {k: torch.stack([it[k] for it in items]) for k in ("ecg", "beat_spans", "beat_mask")}
        # trim beat slots to the longest in the batch (at least one slot)
        k = max(int(batch["beat_mask"].sum(1).max()), 1)
        batch["beat_spans"], batch["beat_mask"] = batch["beat_spans"][:, :k], batch["beat_mask"][:, :k]
        if "labels" in items[0]:
            batch["labels"] = torch.stack([it["labels"] for it in items])
        batch["index"] = torch.tensor([it["index"] for it in items])
        batch["reports"] = [it["report"] for it in items]
        batch.update(self.tokenizer(batch["reports"]))
        return batch
