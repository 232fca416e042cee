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

import contextlib
import dataclasses
import math
import hashlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

from .sources import get_source
from .sources.common import SkipRecord
from .store import CHUNK, SHARD_SIZE, VERSION, ShardWriter, Store, finalize_store
from ..errors import UserError, run_main

LOCK_NAME = ".build.lock"

_KILL_ENV = "MELP_FAST_TEST_KILL_AFTER_SHARDS"  # test hook: die (SIGKILL) inside the shard after N finished ones
PROTOCOL_WINDOWS = {"default": {}, "melp": {"cpsc2018": 2500}}  # protocol -> {source: samples kept, rest zero}


def parse_args(argv):
    from ..options import parse  # melp_fast/options.py holds every command's options

    return parse("preprocess", argv)


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


_INFO_KEYS = ("orig_fs", "orig_samples", "missing_leads", "derived_leads", "unknown_leads", "padded", "repaired_samples",
              "age", "sex")
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


def check_options(*, workers: int, shard_size: int, limit: int, max_beats: int, highpass_hz: float):
    """Option values a build can use; UserError naming the option otherwise (before anything is written)."""
    if shard_size < 1:
        raise UserError(f"--shard-size must be at least 1 (got {shard_size})")
    if limit < 0:
        raise UserError(f"--limit must be 0 (every record) or a positive count (got {limit})")
    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    if max_beats < 1:
        raise UserError(f"--max-beats must be at least 1 (got {max_beats})")
    if highpass_hz is not None and (not math.isfinite(highpass_hz) or highpass_hz < 0):
        raise UserError(f"--highpass-hz must be a finite frequency >= 0 (got {highpass_hz})")


@contextlib.contextmanager
def store_lock(out):
    """Hold an exclusive lock on the store folder ``out`` for a build (created if missing). A second build into
    it stops at once with a UserError. On exit the lock file goes, and so does the folder if this build
    created it and left nothing in it."""
    import fcntl

    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if (out / "meta.json").is_file():  # a finished store on a read-only mount: nobody can change it
            yield out
            return
        raise UserError(f"--out {out} is not writable ({e.strerror}); choose a writable folder") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise UserError(f"store {out} is being built by another process (pid {holder}); wait for it to "
                            f"finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield out
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()  # only when empty
    finally:
        os.close(fd)


def _mark_duplicates(items) -> None:
    """A record id listed twice: the later entries are quarantined (two records must never share an id)."""
    first = {}
    for it in items:
        if it.record_id in first and "skip" not in it.extra:
            it.extra["skip"] = f"duplicate record id {it.record_id!r} (also {first[it.record_id]!r})"
        first.setdefault(it.record_id, it.path)


def _check_same_build(out: Path, settings: dict):
    """A finished store is only 'already complete' for a build with its source, root and settings."""
    plan = out / "plan.json"
    if not plan.is_file():
        return
    old = json.loads(plan.read_text()).get("settings", {})
    diff = [k for k in settings if k in old and old[k] != settings[k]]
    if diff:
        said = "; ".join(f"{k} {old[k]!r} (this build: {settings[k]!r})" for k in diff)
        raise UserError(f"store {out} was built with {said}: choose another --out, or remove it to rebuild")


def build_store(out, source: str, root, *, workers: int = 1, shard_size: int = SHARD_SIZE, limit: int = 0,
                task: str | None = None, nan_policy: str = "drop", max_beats: int = 32,
                highpass_hz: float | None = None, progress: bool = True, protocol: str = "default") -> Store:
    """Build (or resume) a store from a dataset source; see the module docstring."""
    check_options(workers=workers, shard_size=shard_size, limit=limit, max_beats=max_beats, highpass_hz=highpass_hz)
    out, root = Path(out), Path(root)
    if not root.is_dir():
        raise UserError(f"--root {root} is not a directory")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    with store_lock(out):
        return _build_locked(out, source, root, workers=workers, shard_size=shard_size, limit=limit, task=task,
                             nan_policy=nan_policy, max_beats=max_beats, highpass_hz=highpass_hz, progress=progress,
                             protocol=protocol)


def _build_locked(out: Path, source: str, root: Path, *, workers, shard_size, limit, task, nan_policy, max_beats,
                  highpass_hz, progress, protocol) -> Store:
    from tqdm import tqdm

    src = get_source(source)
    if protocol not in PROTOCOL_WINDOWS:
        raise UserError(f"--protocol {protocol!r}: choose from {', '.join(PROTOCOL_WINDOWS)}")
    if protocol == "melp" and highpass_hz:
        raise UserError("--protocol melp reads signals without a high-pass: leave out --highpass-hz")
    highpass_hz = (4.0 if protocol == "default" else 0.0) if highpass_hz is None else highpass_hz
    window = PROTOCOL_WINDOWS[protocol].get(source)
    settings = {"version": VERSION, "source": source, "root": str(root.resolve()), "shard_size": shard_size,
                "nan_policy": nan_policy, "max_beats": max_beats, "highpass_hz": highpass_hz, "limit": limit,
                "task": task if task is not None else src.DEFAULT_TASK}
    if protocol != "default":
        settings["preprocess"] = {"protocol": protocol, "highpass_hz": highpass_hz, "window_samples": window}
    if (out / "meta.json").is_file():
        _check_same_build(out, settings)
        print(f"{out}: store already complete", file=sys.stderr)
        return Store(out)
    items = src.list_items(root)
    if limit:
        items = items[:limit]
    _mark_duplicates(items)
    tasks = src.tasks(root)
    task = settings["task"]
    if task is not None and task not in tasks:
        raise UserError(f"source {source} has no task {task!r} (it has {sorted(tasks)})")
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
        if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
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
    except (FileNotFoundError, FileExistsError, ValueError) as e:  # the dataset's own files: one line, exit 2
        raise UserError(f"melp-fast preprocess: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
