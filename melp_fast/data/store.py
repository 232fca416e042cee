"""A preprocessed, sharded store on disk, memory-mapped for training and evaluation.

Layout of a store directory (version 2)::

    meta.json          written last (atomically): a store without it is unfinished. n, fs, n_samples, leads,
                       max_beats, highpass_hz, source, shards [{name, n, items}], tasks {name: {classes, map}},
                       preprocess {protocol ("default" | "melp"), highpass_hz, window_samples},
                       task (the default one), classes (its classes), counts (items, kept, skipped, repaired, reasons)
    plan.json          the build's settings and a digest of its record listing (a resumed build must match it)
    quarantine.jsonl   every skipped record: {"record_id", "path", "reason"}, in listing order
    shards/NNNNN/      one finished shard (written as shards/NNNNN.partial and renamed when complete):
        signals.f16      float16 [n, 12, 5000] raw C-order (no header; shape from meta), preprocessed: per-lead
                         high-pass, then min-max over the record to [0, 1]
        beats.npy        int32 [n, max_beats, 2] beat spans in samples, half-open, -1 padding (R peaks detected on
                         the raw 500 Hz signal, before the high-pass)
        n_beats.npy      int32 [n]
        text.bin         UTF-8 reports, concatenated; text_offsets.npy int64 [n + 1]
        records.jsonl    per kept record: id, path, subject, codes (raw label names), info (missing leads, padding,
                         repaired samples, ...)
        quarantine.jsonl the shard's skipped records; stats.json its counts

Building is deterministic: the same listing and settings give byte-identical files whatever the number of worker
processes or interruptions (a killed build is resumed by running it again: finished shards are kept, a partial
one is rebuilt). ``write_store`` builds a store in this process from an iterable (used for the synthetic corpus);
``build_store`` (melp_fast.data.preprocess) builds one from a dataset source with several processes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from . import beats as beatlib
from .signal import highpass

from .constants import FS, N_SAMPLES
VERSION = 2
SHARD_SIZE = 4096
CHUNK = 256  # records loaded, filtered and segmented together inside a shard


# ------------------------------------------------------------------------------------------------- reading
class Store:
    """A finished store. ``store.read(indices)`` gives (signals float16 [b, 12, 5000], beat spans int32
    [b, max_beats, 2], n_beats [b]) with one fancy-indexed read per shard; ``labels`` is the multi-hot
    [N, C] of the default task (None without one), ``task_labels(name)`` any other task of the store."""

    def __init__(self, path):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            hint = " (an unfinished build: run the same preprocess command again to resume it)" \
                if (self.path / "plan.json").is_file() else ""
            raise FileNotFoundError(f"{self.path} is not a finished melp_fast store (no meta.json){hint}")
        self.meta = json.loads(meta_file.read_text())
        if self.meta.get("version") != VERSION:
            raise ValueError(f"store {self.path} has version {self.meta.get('version')}, this code reads {VERSION}; "
                             f"rebuild it")
        self.shard_names = [s["name"] for s in self.meta["shards"]]
        sizes = np.array([s["n"] for s in self.meta["shards"]], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if int(self.offsets[-1]) != self.meta["n"]:
            raise ValueError(f"store {self.path} is inconsistent: shard sizes sum to {self.offsets[-1]}, "
                             f"meta says {self.meta['n']}")
        self._sig: dict[int, np.ndarray] = {}
        self._beats: dict[int, np.ndarray] = {}
        self._text: dict[int, tuple] = {}
        self._records = None
        self._labels = {}
        nb = [np.load(self._shard(k) / "n_beats.npy") for k in range(len(sizes))]
        self.n_beats = np.concatenate(nb).astype(np.int32) if nb else np.zeros(0, np.int32)
        if len(self.n_beats) != self.meta["n"]:
            raise ValueError(f"store {self.path} is inconsistent: beat counts for {len(self.n_beats)} records, "
                             f"meta says {self.meta['n']}")

    # -- basics
    def __len__(self) -> int:
        return int(self.meta["n"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    @property
    def tasks(self) -> list[str]:
        return list(self.meta.get("tasks") or {})

    def _shard(self, k: int) -> Path:
        return self.path / "shards" / self.shard_names[k]

    def locate(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """(shard number, index inside the shard) of global indices."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for a store of {len(self)} records")
        k = np.searchsorted(self.offsets, idx, side="right") - 1
        return k, idx - self.offsets[k]

    def shard_signals(self, k: int) -> np.ndarray:
        if k not in self._sig:
            n = int(self.offsets[k + 1] - self.offsets[k])
            f = self._shard(k) / "signals.f16"
            shape = (n, len(self.meta["leads"]), self.meta["n_samples"])
            if f.stat().st_size != int(np.prod(shape)) * 2:
                raise ValueError(f"{f}: size {f.stat().st_size} does not match shape {shape}")
            self._sig[k] = np.memmap(f, dtype=np.float16, mode="r", shape=shape) if n else np.zeros(shape, np.float16)
        return self._sig[k]

    def shard_beats(self, k: int) -> np.ndarray:
        if k not in self._beats:
            self._beats[k] = np.load(self._shard(k) / "beats.npy", mmap_mode="r")
        return self._beats[k]

    # -- batched reads
    def read(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Signals float16 [b, leads, samples], beat spans int32 [b, max_beats, 2] and n_beats [b] of ``indices``
        (any order; read shard by shard in sorted order, returned in the order asked)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        b = idx.shape[0]
        sig = np.empty((b, len(self.meta["leads"]), self.meta["n_samples"]), dtype=np.float16)
        spans = np.empty((b, self.meta["max_beats"], 2), dtype=np.int32)
        if b == 0:
            return sig, spans, self.n_beats[idx]
        order = np.argsort(idx, kind="stable")
        k, local = self.locate(idx[order])
        bounds = np.flatnonzero(np.diff(k)) + 1
        for grp in np.split(np.arange(b), bounds):
            kk = int(k[grp[0]])
            loc = local[grp]
            dst = order[grp]
            if loc[-1] - loc[0] + 1 == len(loc):  # one contiguous slice
                sig[dst] = self.shard_signals(kk)[loc[0]:loc[-1] + 1]
                spans[dst] = self.shard_beats(kk)[loc[0]:loc[-1] + 1]
            else:
                sig[dst] = self.shard_signals(kk)[loc]
                spans[dst] = self.shard_beats(kk)[loc]
        return sig, spans, self.n_beats[idx]

    def read_signals(self, indices, keep=None, dtype=None, shared: bool = False):
        """Signals of ``indices`` as a torch tensor [b, leads, samples] (float32 by default), with the leads where
        ``keep`` (bool [b, leads]) is False set to zero and never read: one gather of the kept (record, lead) rows
        per shard, converted to ``dtype`` on the way. ``shared``: allocate it in shared memory (in a DataLoader
        worker, so that handing it to the main process copies nothing)."""
        import torch

        dtype = torch.float32 if dtype is None else dtype
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        b, L, T = idx.shape[0], len(self.meta["leads"]), self.meta["n_samples"]
        out = torch.empty((b, L, T), dtype=dtype)
        if shared:
            out.share_memory_()
        flat = out.view(b * L, T)
        lead = np.arange(L, dtype=np.int64)
        if keep is not None:
            keep = np.asarray(keep, dtype=bool).reshape(b, L)
            drop_rows = np.flatnonzero(~keep.ravel())
            if drop_rows.size:
                flat.index_fill_(0, torch.from_numpy(drop_rows), 0)
        if b == 0:
            return out
        order = np.argsort(idx, kind="stable")
        k, local = self.locate(idx[order])
        bounds = np.flatnonzero(np.diff(k)) + 1
        for grp in np.split(np.arange(b), bounds):
            kk = int(k[grp[0]])
            sig = self.shard_signals(kk)
            sig2d = sig.reshape(sig.shape[0] * L, T)
            src_rows = (local[grp][:, None] * L + lead).ravel()
            dst_rows = (order[grp][:, None] * L + lead).ravel()
            if keep is not None:
                sel = keep[order[grp]].ravel()
                src_rows, dst_rows = src_rows[sel], dst_rows[sel]
            if src_rows.size == 0:
                continue
            rows = torch.from_numpy(sig2d[src_rows])
            if src_rows.size == b * L and np.array_equal(dst_rows, np.arange(b * L)):
                flat.copy_(rows)
            else:
                flat.index_copy_(0, torch.from_numpy(dst_rows), rows.to(dtype))
        return out

    @property
    def signals(self):
        return _View(lambda idx: self.read(idx)[0], len(self))

    @property
    def beats(self):
        return _View(lambda idx: self.read(idx)[1], len(self))

    # -- text and metadata
    def _shard_text(self, k: int):
        if k not in self._text:
            d = self._shard(k)
            self._text[k] = ((d / "text.bin").read_bytes(), np.load(d / "text_offsets.npy"))
        return self._text[k]

    def report(self, i: int) -> str:
        k, j = self.locate([i])
        blob, off = self._shard_text(int(k[0]))
        j = int(j[0])
        return blob[off[j]:off[j + 1]].decode("utf-8")

    def reports_of(self, indices) -> list[str]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        k, j = self.locate(idx)
        out = []
        for kk, jj in zip(k.tolist(), j.tolist()):
            blob, off = self._shard_text(kk)
            out.append(blob[off[jj]:off[jj + 1]].decode("utf-8"))
        return out

    @property
    def reports(self) -> list[str]:
        return self.reports_of(np.arange(len(self)))

    @property
    def records(self) -> list[dict]:
        """Per-record metadata (id, path, subject, codes, info), read once."""
        if self._records is None:
            recs = []
            for k in range(len(self.shard_names)):
                with open(self._shard(k) / "records.jsonl", encoding="utf-8") as f:
                    recs.extend(json.loads(line) for line in f)
            self._records = recs
        return self._records

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.records]

    def indices_of(self, ids) -> np.ndarray:
        """Store indices of record ids (or of record file names / stems); KeyError naming the first unknown one."""
        table = {}
        for i, r in enumerate(self.records):
            table.setdefault(str(r["id"]), i)
            table.setdefault(Path(str(r.get("path", ""))).name, i)
        out = []
        for x in ids:
            s = str(x)
            if s not in table:
                raise KeyError(f"record {s!r} is not in store {self.path}")
            out.append(table[s])
        return np.asarray(out, dtype=np.int64)

    def task_labels(self, task: str) -> np.ndarray:
        from .tasks import labels_for

        tasks = self.meta.get("tasks") or {}
        if task not in tasks:
            raise KeyError(f"store {self.path} has no task {task!r} (it has {sorted(tasks)})")
        if task not in self._labels:
            self._labels[task] = labels_for(tasks[task], [r.get("codes", []) for r in self.records])
        return self._labels[task]

    @property
    def labels(self) -> np.ndarray | None:
        task = self.meta.get("task")
        return self.task_labels(task) if task else None

    def quarantine(self) -> list[dict]:
        f = self.path / "quarantine.jsonl"
        if not f.is_file():
            return []
        return [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]


class _View:
    """``view[i]`` / ``view[idx_array]`` / ``view[a:b]`` over a batched reader (compatibility with array access)."""

    def __init__(self, fn, n):
        self.fn, self.n = fn, n

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.fn([int(key)])[0]
        if isinstance(key, slice):
            return self.fn(np.arange(self.n)[key])
        return self.fn(np.asarray(key))


# ------------------------------------------------------------------------------------------------- writing
def _fsync_write(path: Path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _reason_key(reason: str) -> str:
    """A skip reason without its record-specific parts, for the counts in meta.json."""
    import re

    key = re.sub(r"^\S+\.(dat|mat|hea|dcm)\b:\s*", "", reason)  # "x.dcm: sampling ..." -> "sampling ..."
    key = key.split(":")[0].split(" (")[0]
    key = re.sub(r"\S+\.(dat|mat|hea|dcm)\b", "FILE", key)
    key = re.sub(r"'[^']*'", "PATH", key)
    return re.sub(r"\d+", "N", key)[:60].strip()


class ShardWriter:
    """Writes one shard into ``<final>.partial`` in chunks, renamed to ``<final>`` by ``close()``."""

    def __init__(self, final_dir: Path, *, max_beats: int, highpass_hz: float, n_samples: int = N_SAMPLES):
        self.final = Path(final_dir)
        self.tmp = self.final.with_name(self.final.name + ".partial")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.max_beats, self.highpass_hz, self.n_samples = max_beats, highpass_hz, n_samples
        self._sig = open(self.tmp / "signals.f16", "wb")
        self.spans, self.counts, self.texts, self.records, self.quarantine = [], [], [], [], []
        self.stats = {"items": 0, "kept": 0, "skipped": 0, "repaired": 0, "reasons": {}}

    def skip(self, record_id: str, path: str, reason: str):
        self.stats["items"] += 1
        self.stats["skipped"] += 1
        key = _reason_key(reason)
        self.stats["reasons"][key] = self.stats["reasons"].get(key, 0) + 1
        self.quarantine.append({"record_id": str(record_id), "path": str(path), "reason": reason})

    def add_chunk(self, raws: list[np.ndarray], rows: list[dict]):
        """``raws``: canonical raw signals float32 [12, n_samples] at 500 Hz; ``rows``: their records.jsonl rows
        (with a "report" key, moved to text.bin)."""
        if not raws:
            return
        x = np.stack(raws).astype(np.float32)
        m = len(raws)
        # beats on the raw signal: max_beats + 1 peaks so the last kept span ends where it would with all peaks
        peaks, counts = beatlib.segment_batch(x, FS, self.max_beats + 1)
        spans = np.full((m, self.max_beats, 2), -1, dtype=np.int32)
        nb = np.zeros(m, dtype=np.int32)
        for i in range(m):
            s = beatlib.beat_spans(peaks[i, : counts[i]], self.n_samples)[: self.max_beats]
            spans[i, : len(s)] = s
            nb[i] = len(s)
        for a in range(0, m, 16):  # small blocks stay in cache
            blk = x[a:a + 16]
            y = highpass(blk.reshape(-1, blk.shape[-1]).astype(np.float64), FS, self.highpass_hz).reshape(blk.shape)
            lo = y.min(axis=(1, 2), keepdims=True)
            rng = y.max(axis=(1, 2), keepdims=True) - lo
            y = np.where(rng > 0, (y - lo) / np.where(rng > 0, rng, 1), 0)
            self._sig.write(np.ascontiguousarray(y.astype(np.float16)).tobytes())
        self.spans.append(spans)
        self.counts.append(nb)
        for r in rows:
            r = dict(r)
            self.texts.append(r.pop("report", "").encode("utf-8"))
            self.records.append(r)
            self.stats["items"] += 1
            self.stats["kept"] += 1
            if (r.get("info") or {}).get("repaired_samples"):
                self.stats["repaired"] += 1

    def close(self) -> dict:
        self._sig.flush()
        os.fsync(self._sig.fileno())
        self._sig.close()
        K = self.max_beats
        spans = np.concatenate(self.spans) if self.spans else np.zeros((0, K, 2), np.int32)
        counts = np.concatenate(self.counts) if self.counts else np.zeros(0, np.int32)
        _fsync_write(self.tmp / "beats.npy", _npy_bytes(spans))
        _fsync_write(self.tmp / "n_beats.npy", _npy_bytes(counts))
        off = np.zeros(len(self.texts) + 1, dtype=np.int64)
        off[1:] = np.cumsum([len(t) for t in self.texts]) if self.texts else []
        _fsync_write(self.tmp / "text.bin", b"".join(self.texts))
        _fsync_write(self.tmp / "text_offsets.npy", _npy_bytes(off))
        _fsync_write(self.tmp / "records.jsonl", _jsonl(self.records))
        _fsync_write(self.tmp / "quarantine.jsonl", _jsonl(self.quarantine))
        _fsync_write(self.tmp / "stats.json", json.dumps(self.stats, sort_keys=True, indent=1).encode())
        shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.tmp, self.final)
        return self.stats


def finalize_store(path, *, source: str, shard_names: list[str], tasks: dict, task: str | None,
                   settings: dict) -> Store:
    """Merge the finished shards' quarantine and counts and write meta.json last (atomically)."""
    from .tasks import finish_task

    path = Path(path)
    shards, quarantine = [], []
    counts = {"items": 0, "kept": 0, "skipped": 0, "repaired": 0, "reasons": {}}
    all_codes = []
    open_tasks = {k for k, t in tasks.items() if t.get("classes") is None}
    for name in shard_names:
        d = path / "shards" / name
        st = json.loads((d / "stats.json").read_text())
        shards.append({"name": name, "n": st["kept"], "items": st["items"]})
        for key in ("items", "kept", "skipped", "repaired"):
            counts[key] += st[key]
        for r, c in st["reasons"].items():
            counts["reasons"][r] = counts["reasons"].get(r, 0) + c
        quarantine.append((d / "quarantine.jsonl").read_bytes())
        if open_tasks:
            with open(d / "records.jsonl", encoding="utf-8") as f:
                all_codes.extend(json.loads(line).get("codes", []) for line in f)
    counts["reasons"] = dict(sorted(counts["reasons"].items()))
    tasks = {k: finish_task(t, all_codes) for k, t in tasks.items()}
    _atomic_write(path / "quarantine.jsonl", b"".join(quarantine))
    meta = {"version": VERSION, "source": source, "n": counts["kept"], "fs": FS, "n_samples": N_SAMPLES,
            "leads": list(settings.get("leads") or _leads()), "max_beats": settings["max_beats"],
            "highpass_hz": settings["highpass_hz"], "nan_policy": settings.get("nan_policy", "drop"),
            "shard_size": settings.get("shard_size"), "shards": shards, "tasks": tasks, "task": task,
            "classes": tasks[task]["classes"] if task else [], "counts": counts,
            "preprocess": settings.get("preprocess") or {"protocol": "default", "highpass_hz": settings["highpass_hz"],
                                                         "window_samples": None}}
    _atomic_write(path / "meta.json", json.dumps(meta, indent=1, sort_keys=True).encode())
    return Store(path)


def _leads():
    from .synthetic import LEADS

    return LEADS


def _atomic_write(path: Path, data: bytes):
    tmp = path.with_name(path.name + ".tmp")
    _fsync_write(tmp, data)
    os.replace(tmp, path)


def write_store(path, records, n: int | None = None, *, fs: int = FS, n_samples: int = N_SAMPLES, leads=None,
                classes=(), highpass_hz: float = 4.0, max_beats: int = 32, source: str = "", desc: str = "store",
                shard_size: int = SHARD_SIZE, progress: bool = True) -> Store:
    """Build a store in this process from an iterable of (raw signal [12, samples] at ``fs``, report, multi-hot
    labels over ``classes`` or None); the first ``n`` records (all when None). Signals not at 500 Hz x 5000 samples
    are resampled / cropped / padded. Labels become the default task "labels" (classes by name)."""
    from tqdm import tqdm

    from .sources.common import to_canonical

    path = Path(path)
    if (path / "meta.json").is_file():
        raise FileExistsError(f"store {path} exists; remove it or choose another path")
    shutil.rmtree(path, ignore_errors=True)
    (path / "shards").mkdir(parents=True)
    lead_names = list(leads or _leads())
    classes = list(classes)
    names, writer, k = [], None, 0
    raws, rows = [], []

    def flush():
        nonlocal raws, rows
        writer.add_chunk(raws, rows)
        raws, rows = [], []

    for i, rec in enumerate(tqdm(records, total=n, desc=desc, mininterval=2.0, disable=not progress)):
        if n is not None and i >= n:
            break
        if writer is None:
            name = f"{k:05d}"
            writer = ShardWriter(path / "shards" / name, max_beats=max_beats, highpass_hz=highpass_hz)
            names.append(name)
        raw, report, lab = rec
        x = np.asarray(raw, dtype=np.float32)
        if fs != FS or x.shape[-1] != n_samples or x.shape[0] != 12:
            x, _ = to_canonical(x, fs, lead_names)
        codes = []
        if lab is not None:
            codes = [c for c, v in zip(classes, np.asarray(lab).ravel()) if v > 0]
        raws.append(x)
        rows.append({"id": str(i), "path": "", "subject": "", "codes": codes, "info": {}, "report": str(report)})
        if len(raws) >= CHUNK:
            flush()
        if writer.stats["items"] + len(raws) >= shard_size:
            flush()
            writer.close()
            writer, k = None, k + 1
    if writer is None and not names:
        name = f"{k:05d}"
        writer = ShardWriter(path / "shards" / name, max_beats=max_beats, highpass_hz=highpass_hz)
        names.append(name)
    if writer is not None:
        flush()
        writer.close()
    tasks = {"labels": {"classes": classes, "map": None}} if classes else {}
    settings = {"max_beats": max_beats, "highpass_hz": highpass_hz, "shard_size": shard_size, "leads": lead_names}
    return finalize_store(path, source=source, shard_names=names, tasks=tasks, task="labels" if classes else None,
                          settings=settings)


def build_synthetic_store(path, split: str, n: int, seed: int = 0, highpass_hz: float = 4.0, max_beats: int = 32) -> Store:
    """The embedded default corpus as a store (reused when it already exists with the same settings)."""
    from . import synthetic

    path = Path(path)
    source = f"synthetic:{split}:{seed}:corpus{synthetic.corpus_id()}"  # a new corpus never reuses an old store
    if (path / "meta.json").is_file():
        try:
            store = Store(path)
            want = {"n": n, "source": source, "highpass_hz": highpass_hz, "max_beats": max_beats}
            if all(store.meta.get(k) == v for k, v in want.items()):
                return store
        except (ValueError, FileNotFoundError, KeyError):
            pass
        shutil.rmtree(path)

    def records():
        for idx in synthetic.split_indices(split, n):
            r = synthetic.generate_record(idx, seed)
            yield r.signal, r.report, r.labels

    return write_store(path, records(), n, fs=synthetic.FS, n_samples=synthetic.N_SAMPLES, leads=synthetic.LEADS,
                       classes=synthetic.CLASSES, highpass_hz=highpass_hz, max_beats=max_beats,
                       source=source, desc=f"synthetic {split}")
