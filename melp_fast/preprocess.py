"""melp-fast preprocess: build a sharded store from a dataset.

    melp-fast preprocess --source {mimic-iv-ecg,ptbxl,cpsc2018,csn,wfdb-dir} --root DIR --out STORE
                         [--workers N] [--shard-size 4096] [--limit N] [--task NAME] [--nan {drop,repair}]
                         [--max-beats 32] [--highpass-hz 4] [--protocol {default,melp}] [--no-progress]

Records are listed from the dataset's own files (deterministic order), cut into shards of --shard-size listing
entries, and each shard is read, resampled to 500 Hz, cropped / padded to 10 s, beat-segmented, high-passed and
min-max scaled by one of --workers processes, written as STORE/shards/NNNNN.partial and renamed when complete.
Skipped records (unreadable, truncated, NaN/Inf under --nan drop, all zero, short report, a path leaving --root,
...) go to STORE/quarantine.jsonl with the reason. Killed midway, the same command resumes: finished shards are
kept, partial ones rebuilt; the result is byte-identical to a build in one go. meta.json is written last.

``--protocol melp`` preprocesses as the MELP reference reads downstream data (for ``evaluate --protocol melp``):
no high-pass, min-max over the record; CPSC2018 (ICBEB) keeps its first 2,500 samples (5 s at 500 Hz) and is
zero-padded to 5,000 before the min-max. meta.json's "preprocess" records the protocol, the high-pass and the
window, and the evaluation checks it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

from .data.sources import get_source, SOURCES
from .data.sources.common import SkipRecord
from .data.store import CHUNK, SHARD_SIZE, VERSION, ShardWriter, Store, finalize_store

_KILL_ENV = "MELP_FAST_TEST_KILL_AFTER_SHARDS"
PROTOCOL_WINDOWS = {"default": {}, "melp": {"cpsc2018": 2500}}  # protocol -> {source: samples kept, rest zero}  # test hook: die (SIGKILL) inside the shard after N finished ones


def parse_args(argv):
    p = argparse.ArgumentParser(prog="melp-fast preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, choices=list(SOURCES))
    p.add_argument("--root", required=True, help="the dataset's top directory")
    p.add_argument("--out", required=True, help="the store directory to create (or resume)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="listing entries per shard")
    p.add_argument("--limit", type=int, default=0, help="only the first N listing entries (0: all)")
    p.add_argument("--task", default=None, help="default label task (default: the source's)")
    p.add_argument("--nan", choices=["drop", "repair"], default="drop",
                   help="records holding NaN/Inf: drop (spec) or repair by linear interpolation per lead")
    p.add_argument("--max-beats", type=int, default=32)
    p.add_argument("--highpass-hz", type=float, default=None, help="default 4 (0 under --protocol melp)")
    p.add_argument("--protocol", choices=list(PROTOCOL_WINDOWS), default="default",
                   help="melp: no high-pass, CPSC2018 first 5 s zero-padded (the MELP reference's downstream reading)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _item_row(it) -> dict:
    return dataclasses.asdict(it)


def _process_shard(job) -> dict:
    """Read, preprocess and write one shard (in a worker process or in this one)."""
    src = get_source(job["source"])
    root, items = job["root"], job["items"]
    w = ShardWriter(Path(job["dir"]), max_beats=job["max_beats"], highpass_hz=job["highpass_hz"])
    raws, rows, done = [], [], 0
    kill = job.get("kill")
    for it in items:
        reason = it.extra.get("skip")
        if reason is None:
            try:
                x, info = src.load(root, it, job["nan_policy"])
                if job.get("window"):  # --protocol melp on CPSC2018: the first 5 s, zero-padded to 10 s
                    x = x.copy()
                    x[:, job["window"]:] = 0
                codes = info.pop("codes", None)
                report = info.pop("report", None)
                rows.append({"id": it.record_id, "path": it.path, "subject": it.subject,
                             "codes": list(it.codes if codes is None else codes),
                             "report": it.report if report is None else report,
                             "info": {k: v for k, v in info.items() if k in _INFO_KEYS},
                             **({"strat_fold": it.extra["strat_fold"]} if "strat_fold" in it.extra else {})})
                raws.append(x)
            except SkipRecord as e:
                reason = str(e)
            except Exception as e:  # noqa: BLE001 - a bad record never stops the build
                reason = f"error {type(e).__name__}: {e}"
        if reason is not None:
            w.skip(it.record_id, it.path, reason)
        done += 1
        if len(raws) >= CHUNK:
            w.add_chunk(raws, rows)
            raws, rows = [], []
        if kill and done == max(1, len(items) // 2):  # test hook: a kill in the middle of a shard
            w.add_chunk(raws, rows)
            os.kill(os.getpid(), signal.SIGKILL)
        if _progress_queue is not None and done % 16 == 0:
            _progress_queue.put(16)
    w.add_chunk(raws, rows)
    if _progress_queue is not None and done % 16:
        _progress_queue.put(done % 16)
    return w.close()


_INFO_KEYS = ("orig_fs", "orig_samples", "missing_leads", "unknown_leads", "padded", "repaired_samples", "age", "sex")
_progress_queue = None


def _numba_pool_started() -> bool:
    try:
        from numba.np.ufunc import parallel

        return bool(getattr(parallel, "_is_initialized", True))
    except Exception:  # noqa: BLE001
        return True


def _init_worker(q):
    global _progress_queue
    _progress_queue = q
    try:
        import numba

        numba.set_num_threads(1)
    except Exception:  # noqa: BLE001
        pass
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def build_store(out, source: str, root, *, workers: int = 1, shard_size: int = SHARD_SIZE, limit: int = 0,
                task: str | None = None, nan_policy: str = "drop", max_beats: int = 32,
                highpass_hz: float | None = None, progress: bool = True, protocol: str = "default") -> Store:
    """Build (or resume) a store from a dataset source; see the module docstring."""
    from tqdm import tqdm

    out, root = Path(out), Path(root)
    if (out / "meta.json").is_file():
        print(f"{out}: store already complete", file=sys.stderr)
        return Store(out)
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a directory")
    src = get_source(source)
    items = src.list_items(root)
    if limit:
        items = items[:limit]
    tasks = src.tasks(root)
    task = task if task is not None else src.DEFAULT_TASK
    if task is not None and task not in tasks:
        raise ValueError(f"source {source} has no task {task!r} (it has {sorted(tasks)})")
    if protocol not in PROTOCOL_WINDOWS:
        raise ValueError(f"--protocol {protocol!r}: choose from {', '.join(PROTOCOL_WINDOWS)}")
    if protocol == "melp" and highpass_hz:
        raise ValueError("--protocol melp reads signals without a high-pass: leave out --highpass-hz")
    highpass_hz = (4.0 if protocol == "default" else 0.0) if highpass_hz is None else highpass_hz
    window = PROTOCOL_WINDOWS[protocol].get(source)
    settings = {"version": VERSION, "source": source, "shard_size": shard_size, "nan_policy": nan_policy,
                "max_beats": max_beats, "highpass_hz": highpass_hz, "limit": limit, "task": task}
    if protocol != "default":  # (default builds keep their plan.json as before, so old partial builds resume)
        settings["preprocess"] = {"protocol": protocol, "highpass_hz": highpass_hz, "window_samples": window}
    listing = json.dumps([_item_row(it) for it in items], sort_keys=True).encode()
    plan = {"settings": settings, "n_items": len(items), "listing_sha256": hashlib.sha256(listing).hexdigest(),
            "tasks_sha256": hashlib.sha256(json.dumps(tasks, sort_keys=True).encode()).hexdigest()}
    plan_bytes = json.dumps(plan, indent=1, sort_keys=True).encode()
    shards_dir = out / "shards"
    if (out / "plan.json").is_file():
        old = json.loads((out / "plan.json").read_text())
        if old != plan:
            raise ValueError(f"{out} holds a partial build with other settings or another listing "
                             f"(plan.json differs); remove it or choose another --out")
        for p in shards_dir.glob("*.partial"):
            shutil.rmtree(p)
    else:
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a partial store build; choose another --out")
        shards_dir.mkdir(parents=True, exist_ok=True)
        tmp = out / "plan.json.tmp"
        tmp.write_bytes(plan_bytes)
        os.replace(tmp, out / "plan.json")
    n_shards = max(1, -(-len(items) // shard_size))
    names = [f"{k:05d}" for k in range(n_shards)]
    todo = [k for k in range(n_shards) if not (shards_dir / names[k]).is_dir()]
    kill_after = int(os.environ.get(_KILL_ENV, "-1"))
    jobs = []
    for k in todo:
        jobs.append({"source": source, "root": str(root), "items": items[k * shard_size:(k + 1) * shard_size],
                     "dir": str(shards_dir / names[k]), "max_beats": max_beats, "highpass_hz": highpass_hz,
                     "nan_policy": nan_policy, "window": window})
    finished = n_shards - len(todo)
    bar = tqdm(total=len(items), initial=sum(min(shard_size, len(items) - k * shard_size) for k in range(n_shards)
                                             if k not in todo),
               desc=f"preprocess {source}", unit="rec", disable=not progress, mininterval=1.0)
    if workers <= 1 or len(jobs) <= 1:
        import numba

        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            for n_done, job in enumerate(jobs):
                job["kill"] = kill_after >= 0 and n_done == kill_after
                st = _process_shard(job)
                bar.update(st["items"])
        finally:
            numba.set_num_threads(threads)
    else:
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        # fork (fast start) unless this process already started Numba's thread pool, which cannot be forked safely
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") and not _numba_pool_started() else "spawn")
        q = ctx.Queue()
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                                 initargs=(q,)) as ex:
            pending = {ex.submit(_process_shard, job) for job in jobs}
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                while not q.empty():
                    bar.update(q.get())
                for f in done:
                    f.result()  # re-raise a worker's failure
            while not q.empty():
                bar.update(q.get())
    bar.close()
    del finished
    store = finalize_store(out, source=source, shard_names=names, tasks=tasks, task=task, settings=settings)
    c = store.meta["counts"]
    print(f"{out}: {c['kept']} records kept, {c['skipped']} skipped (quarantine.jsonl), {c['repaired']} repaired"
          + (f"; reasons: {c['reasons']}" if c["reasons"] else ""), file=sys.stderr)
    return store


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        build_store(args.out, args.source, args.root, workers=args.workers, shard_size=args.shard_size,
                    limit=args.limit, task=args.task, nan_policy=args.nan, max_beats=args.max_beats,
                    highpass_hz=args.highpass_hz, progress=not args.no_progress, protocol=args.protocol)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"melp-fast preprocess: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
