"""A preprocessed store on disk, memory-mapped for training and evaluation.

Layout of a store directory:
    meta.json      n, fs, n_samples, leads, classes (may be empty), max_beats, highpass_hz, source
    signals.npy    float16 [N, leads, samples], preprocessed (high-pass, min-max to [0, 1])
    beats.npy      int32 [N, max_beats, 2], beat spans in samples, half-open, -1 padding
    n_beats.npy    int32 [N]
    labels.npy     float32 [N, C] multi-hot (absent when the source has no labels)
    reports.jsonl  one JSON string per line
A store is written into a temporary sibling directory and renamed into place when complete, so a killed write
never leaves a store that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import beats as beatlib
from .signal import preprocess

FS = 500


class Store:
    def __init__(self, path):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a melp_fast store (no meta.json)")
        self.meta = json.loads(meta_file.read_text())
        self.signals = np.load(self.path / "signals.npy", mmap_mode="r")
        self.beats = np.load(self.path / "beats.npy", mmap_mode="r")
        self.n_beats = np.load(self.path / "n_beats.npy")
        labels = self.path / "labels.npy"
        self.labels = np.load(labels) if labels.is_file() else None
        with open(self.path / "reports.jsonl", encoding="utf-8") as f:
            self.reports = [json.loads(line) for line in f]
        if not (len(self.signals) == len(self.reports) == len(self.n_beats) == self.meta["n"]):
            raise ValueError(f"store {self.path} is inconsistent: sizes of signals, reports and beats differ")

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    def __len__(self) -> int:
        return self.meta["n"]


def write_store(path, records, n: int, *, fs: int = FS, n_samples: int = 5000, leads=None, classes=(),
                highpass_hz: float = 4.0, max_beats: int = 32, source: str = "", desc: str = "store") -> Store:
    """Write `n` records from an iterable of (raw signal [leads, samples] at fs, report, labels or None)."""
    path = Path(path)
    if (path / "meta.json").is_file():
        raise FileExistsError(f"store {path} exists; remove it or choose another path")
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n_leads = len(leads) if leads else 12
    sig = np.lib.format.open_memmap(tmp / "signals.npy", mode="w+", dtype=np.float16, shape=(n, n_leads, n_samples))
    spans = np.full((n, max_beats, 2), -1, dtype=np.int32)
    counts = np.zeros(n, dtype=np.int32)
    labels = np.zeros((n, len(classes)), dtype=np.float32) if classes else None
    with open(tmp / "reports.jsonl", "w", encoding="utf-8") as rep:
        for i, (raw, report, lab) in enumerate(tqdm(records, total=n, desc=desc, mininterval=2.0)):
            if i >= n:
                break
            raw = np.asarray(raw, dtype=np.float32)
            sig[i] = preprocess(raw, fs, highpass_hz)
            peaks = beatlib.detect_r_peaks(raw, fs)
            s = beatlib.beat_spans(peaks, raw.shape[-1])[:max_beats]
            spans[i, : len(s)] = s
            counts[i] = len(s)
            if labels is not None and lab is not None:
                labels[i] = lab
            rep.write(json.dumps(report) + "\n")
    sig.flush()
    del sig
    np.save(tmp / "beats.npy", spans)
    np.save(tmp / "n_beats.npy", counts)
    if labels is not None:
        np.save(tmp / "labels.npy", labels)
    meta = {"n": n, "fs": fs, "n_samples": n_samples, "leads": list(leads or []), "classes": list(classes),
            "max_beats": max_beats, "highpass_hz": highpass_hz, "source": source, "version": 1}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    os.replace(tmp, path)
    return Store(path)


def build_synthetic_store(path, split: str, n: int, seed: int = 0, highpass_hz: float = 4.0, max_beats: int = 32) -> Store:
    """The embedded default corpus as a store (reused when it already exists with the same settings)."""
    from . import synthetic

    path = Path(path)
    if (path / "meta.json").is_file():
        store = Store(path)
        want = {"n": n, "source": f"synthetic:{split}:{seed}", "highpass_hz": highpass_hz, "max_beats": max_beats}
        if all(store.meta.get(k) == v for k, v in want.items()):
            return store
        shutil.rmtree(path)

    def records():
        for idx in synthetic.split_indices(split, n):
            r = synthetic.generate_record(idx, seed)
            yield r.signal, r.report, r.labels

    return write_store(path, records(), n, fs=synthetic.FS, n_samples=synthetic.N_SAMPLES, leads=synthetic.LEADS,
                       classes=synthetic.CLASSES, highpass_hz=highpass_hz, max_beats=max_beats,
                       source=f"synthetic:{split}:{seed}", desc=f"synthetic {split}")
