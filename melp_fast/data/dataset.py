"""Dataset and batching over a store: ECG, beat spans in encoder-token units with a mask, tokenised report.

Fast path: ``ECGTextDataset.__getitems__`` (which torch's DataLoader calls with the whole batch of indices)
reads a batch with one fancy-indexed read per shard (``Store.read``), converts float16 -> float32 and applies the
lead mask in torch, and returns an already stacked batch; ``Collate`` then only tokenises the reports (with a
per-report cache, so repeated reports are tokenised once). ``dataset[i]`` still gives one item, and ``Collate``
accepts a list of items too, so both ways give identical batches.

Lead masking (training augmentation, docs/SPEC.md "Data"): each lead of each record zeroed independently with
probability ``lead_mask_p``, decided by a counter-based hash of (seed, epoch, record index, lead): reproducible
and independent of batching, workers and order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.utils.data
from torch.utils.data import Dataset

from .store import Store
from .tokenize import ROW_KEYS, ReportTokenizer, pad_rows

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return x ^ (x >> np.uint64(31))


def lead_mask(indices, n_leads: int, p: float, seed: int, epoch: int) -> np.ndarray:
    """bool [b, n_leads]: True where the lead is zeroed (probability p each, deterministic in its arguments)."""
    idx = np.asarray(indices, dtype=np.uint64).reshape(-1, 1)
    key = _splitmix64(_splitmix64(np.uint64(seed & 0xFFFFFFFF) << np.uint64(32) | np.uint64(epoch & 0xFFFFFFFF)) ^ idx)
    u = _splitmix64(key ^ np.arange(1, n_leads + 1, dtype=np.uint64)[None, :] * np.uint64(0xD1B54A32D192ED03))
    return (u >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)) < p


class ECGTextDataset(Dataset):
    """Items of a store (or of ``indices`` into it). With lead_mask_p > 0 (training) each lead is zeroed
    independently with that probability (see ``lead_mask``); ``set_epoch`` changes the draw."""

    def __init__(self, store: Store | str, lead_mask_p: float = 0.0, seed: int = 0, stride: int = 16,
                 n_tokens: int | None = None, indices=None, task: str | None = None, ecg_dtype=torch.float32,
                 augment=None):
        self.store = store if isinstance(store, Store) else Store(store)
        self.augment = augment  # data.augment.Augment (training only) or None
        self.lead_mask_p, self.seed, self.epoch = lead_mask_p, seed, 0
        self.stride = stride
        self.n_tokens = n_tokens if n_tokens is not None else self.store.meta["n_samples"] // stride
        self.max_beats = self.store.meta["max_beats"]
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.ecg_dtype = ecg_dtype  # torch.float16 / bfloat16 halve host memory traffic (cast on the device)
        labels = self.store.task_labels(task) if task else self.store.labels
        self.labels = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.float32))

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.store) if self.indices is None else len(self.indices)

    def _global(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return idx if self.indices is None else self.indices[idx]

    def batch(self, idx) -> dict:
        """A stacked batch of dataset positions ``idx``: ecg float32 [b, leads, samples], beat_spans int64
        [b, max_beats, 2] in token units, beat_mask [b, max_beats], beat_seconds float32 [b, max_beats] (each span's
        duration in seconds from the spans in samples; 0 where masked), labels, index (store index), reports."""
        g = self._global(idx)
        keep = None
        if self.lead_mask_p > 0:
            keep = ~lead_mask(g, len(self.store.meta["leads"]), self.lead_mask_p, self.seed, self.epoch)
        in_worker = torch.utils.data.get_worker_info() is not None
        ecg = self.store.read_signals(g, keep, self.ecg_dtype, shared=in_worker)
        if self.augment is not None:
            ecg = self.augment.batch(ecg, g, self.epoch, keep, tuple(self.store.meta["leads"]))
        k, local = self.store.locate(g)
        spans = np.empty((len(g), self.max_beats, 2), dtype=np.int32)
        for kk in np.unique(k):
            sel = k == kk
            spans[sel] = self.store.shard_beats(int(kk))[local[sel]]
        nb = self.store.n_beats[g]
        b, K = len(g), self.max_beats
        mask = np.arange(K)[None, :] < nb[:, None]
        tok = np.zeros((b, K, 2), dtype=np.int64)
        seconds = np.zeros((b, K), dtype=np.float32)
        if mask.any():
            from . import beats as beatlib  # (here: the detector's Numba module loads only where beats are read)

            tok[mask] = beatlib.token_spans(spans[mask], self.stride, self.n_tokens)
            seconds[mask] = beatlib.span_seconds(spans[mask], self.store.meta["fs"])
        out = {"ecg": ecg, "beat_spans": torch.from_numpy(tok), "beat_mask": torch.from_numpy(mask),
               "beat_seconds": torch.from_numpy(seconds),
               "index": torch.from_numpy(g.copy()), "reports": self.store.reports_of(g)}
        if self.labels is not None:
            out["labels"] = self.labels[torch.from_numpy(g)]
        return out

    def __getitems__(self, idx) -> dict:
        return self.batch(idx)

    def __getitem__(self, i: int) -> dict:
        b = self.batch([int(i)])
        item = {"ecg": b["ecg"][0], "beat_spans": b["beat_spans"][0], "beat_mask": b["beat_mask"][0],
                "beat_seconds": b["beat_seconds"][0],
                "report": b["reports"][0], "index": int(b["index"][0])}
        if "labels" in b:
            item["labels"] = b["labels"][0]
        return item


class Collate:
    """Stacks items (or takes a batch from ``ECGTextDataset.__getitems__``) and tokenises the reports
    (picklable, so it runs inside DataLoader workers). Tokenised rows are cached per report text when the
    tokenizer's rows are independent of the batch, up to ``cache_size`` reports; with melp_fast's ReportTokenizer
    the rows of new reports are assembled from a per-sentence token cache (identical output, checked in tests).
    ``cache_size=0``: the tokenizer is called on every batch."""

    def __init__(self, tokenizer, cache_size: int = 200_000):
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self._cache: dict[str, dict] = {}
        self._sent: dict[str, list] = {}
        self._cacheable = cache_size > 0 and hasattr(tokenizer, "pad") and hasattr(tokenizer, "max_len")

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_cache"], d["_sent"] = {}, {}
        return d

    def __call__(self, items) -> dict:
        if isinstance(items, dict):
            batch = dict(items)
        else:
            batch = {k: torch.stack([it[k] for it in items]) for k in ("ecg", "beat_spans", "beat_mask", "beat_seconds")
                     if k in items[0]}
            if "labels" in items[0]:
                batch["labels"] = torch.stack([it["labels"] for it in items])
            batch["index"] = torch.tensor([it["index"] for it in items])
            batch["reports"] = [it["report"] for it in items]
        # trim beat slots to the longest in the batch (at least one slot)
        k = max(int(batch["beat_mask"].sum(1).max()), 1)
        for key in ("beat_spans", "beat_mask", "beat_seconds"):
            if key in batch:
                batch[key] = batch[key][:, :k]
        batch.update(self.tokenize(batch["reports"]))
        return batch

    def _assemble(self, new: list[str]):
        """Rows of ReportTokenizer (its own ``row``, so the same layout token for token) from a per-sentence token
        cache: machine reports reuse a small set of statements, so even a first epoch tokenises few new sentences."""
        tk = self.tokenizer
        split = [tk.sentences(r) for r in new]
        unseen = list(dict.fromkeys(x for sents in split for x in sents if x not in self._sent))
        if unseen:
            if len(self._sent) + len(unseen) > self.cache_size:
                self._sent.clear()
            self._sent.update(zip(unseen, tk.pieces(unseen)))
        for rep, sents in zip(new, split):
            self._cache[rep] = tk.row([self._sent[x] for x in sents])

    def tokenize(self, reports: list[str]) -> dict:
        if not self._cacheable:
            return self.tokenizer(reports)
        new = list(dict.fromkeys(r for r in reports if r not in self._cache))
        if new and len(self._cache) + len(new) > self.cache_size:
            self._cache.clear()
        if new and type(self.tokenizer) is ReportTokenizer:
            self._assemble(new)
        elif new:
            out = self.tokenizer(new)
            keys = set(out)
            if keys != {*ROW_KEYS, "eos_pos"}:
                self._cacheable = False
                return self.tokenizer(reports)
            lens = out["attention_mask"].sum(1)
            for r, rep in enumerate(new):
                L = int(lens[r])
                self._cache[rep] = {k: out[k][r, :L].clone() for k in ROW_KEYS}
                self._cache[rep]["eos_pos"] = int(out["eos_pos"][r])
        return pad_rows([self._cache[r] for r in reports], self.tokenizer.pad)
