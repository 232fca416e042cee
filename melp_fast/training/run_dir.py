"""A run folder is never overwritten by accident.

``prepare_run_dir(out, resume=..., overwrite=...)`` is called before a training run does any work:

- a folder that already holds a run (history, checkpoints or an exported model) and neither ``--resume`` nor
  ``--overwrite``: a UserError naming the folder and both options;
- ``--overwrite``: the run's own files (RUN_FILES) are removed first, and it says which; other files stay;
- ``--resume`` with no complete checkpoint: a UserError (nothing to resume);
- ``--resume`` and ``--overwrite`` together: a UserError;
- one run at a time: rank 0 holds a lock on the folder for the run's life (LOCK_FILE, an flock the kernel drops
  when the process ends, so a crash leaves no held lock); a second run stops with a UserError naming the holder;
- every fresh run gets a run id (RUN_ID_FILE) that its checkpoints carry: --resume refuses a checkpoint of
  another run.

``melp-fast demo`` marks its folder (DEMO_MARK) and replaces a folder carrying its mark, saying so.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ..errors import UserError

# what a training run writes into its folder (config.json alone is not a run: it is rewritten at every start)
RUN_FILES = ("checkpoints", "history.jsonl", "model", "model.partial", "model.old", "tensorboard", "config.json",
             "zero_shot.json", "zero_shot.md")
EVIDENCE = ("checkpoints", "history.jsonl", "model")
# pretrain-text's folder is the encoder itself (text_pretrain.py): a finished one holds these
TEXT_EVIDENCE = ("checkpoints", "history.jsonl", "model.safetensors", "mlm_head.safetensors", "intrinsic.json")
TEXT_RUN_FILES = ("checkpoints", "history.jsonl", "tensorboard", ".export.partial", "config.json", "model.safetensors",
                  "mlm_head.safetensors", "intrinsic.json", "new_words.json", "pretrain_args.json", "tokenizer.json",
                  "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "added_tokens.json")
DEMO_MARK = ".melp_demo"
POINTER = "complete"  # checkpoints/POINTER names the last complete checkpoint (engine.py writes it)


class NothingToResume(UserError, FileNotFoundError):
    """--resume where no complete checkpoint exists."""


class RunExists(UserError, FileExistsError):
    """The output folder holds a run and neither --resume nor --overwrite was given."""


def holds_run(out, evidence=EVIDENCE) -> list[str]:
    """The names of the run files in ``out`` that show a run was (or is being) made there."""
    out = Path(out)
    return [n for n in evidence if (out / n).exists() or (out / n).is_symlink()]


def clear_run(out, say=print, run_files=RUN_FILES) -> list[str]:
    out = Path(out)
    removed = []
    for name in run_files:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        say(f"--overwrite: removed {', '.join(removed)} from {out} before starting")
    return removed


def _only_plain_files(out: Path) -> None:
    """The run's own files, where present, are regular files or folders: a FIFO named history.jsonl would block the
    run when it first writes its history (a device or socket: worse)."""
    import os
    import stat

    for name in (*RUN_FILES, *TEXT_RUN_FILES, RUN_ID_FILE, LOCK_FILE, "checkpoints/complete"):
        try:
            mode = os.lstat(out / name).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            raise UserError(f"{out / name} is not a regular file (a FIFO, device or socket): remove it")


def check_resume(ckpt_dir, resume: bool) -> None:
    """Before anything is built: --resume needs a complete checkpoint in ckpt_dir."""
    if resume and not (Path(ckpt_dir) / POINTER).is_file():
        raise NothingToResume(f"--resume: no complete checkpoint to resume from in {ckpt_dir} (no '{POINTER}' "
                              "pointer); run without --resume to start afresh")


def check_run_dir(out, *, resume: bool, overwrite: bool, evidence=EVIDENCE) -> None:
    """The checks alone (every rank may call it: it only reads)."""
    out = Path(out)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: choose one")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    _only_plain_files(out)
    if resume:
        check_resume(out / "checkpoints", True)
        run_format(out)  # a folder of a later version: one line, before anything is built
        return
    found = holds_run(out, evidence)
    if found and not overwrite:
        raise RunExists(f"{out} already holds a run ({', '.join(found)}): pass --resume to continue it, "
                        f"--overwrite to replace it, or choose another --out")


def prepare_run_dir(out, *, resume: bool, overwrite: bool, rank: int = 0, barrier=None, evidence=EVIDENCE,
                    run_files=RUN_FILES) -> None:
    """The run folder's lock (rank 0 holds it for the run's life; a second run is a UserError naming the holder),
    check_run_dir on every rank, then (with --overwrite) rank 0 clears the old run, and a fresh run gets a new run
    id (checkpoints carry it: a checkpoint of another run is refused on --resume); ``barrier`` (e.g.
    torch.distributed.barrier) keeps the other ranks from going on before rank 0 has."""
    out = Path(out)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: choose one")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    lock_run_dir(out, rank, say=lambda m: print(m, file=sys.stderr, flush=True))
    check_run_dir(out, resume=resume, overwrite=overwrite, evidence=evidence)
    if rank == 0:
        if overwrite:
            clear_run(out, say=lambda m: print(m, file=sys.stderr, flush=True), run_files=run_files)
        if not resume:  # a resumed folder keeps its id (an older version's has none: its checkpoints carry none)
            run_id(out, create=True)
            write_run_format(out)
    if barrier is not None:
        barrier()


def demo_may_replace(out) -> bool:
    """melp-fast demo replaces a folder only when it is empty, absent or a previous demo's."""
    out = Path(out)
    return not out.exists() or (out / DEMO_MARK).is_file() or not holds_run(out)


def mark_demo(out) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARK).write_text("written by melp-fast demo: a later demo run replaces this folder\n")


# ------------------------------------------------------------------------------------------------ the run lock
# A run folder is used by one run at a time. Rank 0 of a run holds an exclusive flock on out/LOCK_FILE for the
# run's life (the kernel drops it when the process ends, however it ends: a crash leaves a stale file, never a
# held lock); the file names the holder (pid, host, start time, command). A second run finds the lock taken and
# stops with a UserError naming the holder; a stale file (its holder gone) is taken over, saying so.
LOCK_FILE = ".melp_lock"
RUN_ID_FILE = ".melp_run_id"
_HELD: dict[str, object] = {}  # resolved folder -> open lock file (kept open: the lock lives as long as it)


def _holder_text(path: Path) -> str:
    import json

    try:
        h = json.loads(path.read_text()[:4096])
        return (f"pid {h.get('pid')} on {h.get('host')} since {h.get('since')} "
                f"({' '.join(map(str, h.get('argv', [])))[:160]})")
    except Exception:  # noqa: BLE001 - an unreadable holder file still names the lock
        return "another process"


def acquire_lock(out, say=None) -> Path:
    """Take the run folder's lock for the life of this process (idempotent); UserError when a live run holds it."""
    import fcntl
    import json
    import os
    import socket
    import time

    out = Path(out)
    key = str(out.resolve())
    if key in _HELD:
        return out / LOCK_FILE
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UserError(f"{path} is not a regular file: remove it (a run folder's lock is a plain file)")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the run lock {path} ({e.strerror}); is the folder "
                        f"writable?") from None
    f = os.fdopen(fd, "r+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UserError(f"--out {out} is in use by another run: {_holder_text(path)}; wait for it to end or stop "
                        f"it (lock {path})") from None
    except OSError as e:  # a file system without flock (some network mounts): say so and go on unlocked
        if say is not None:
            say(f"{out}: cannot lock the run folder ({e.strerror}); make sure no other run uses it")
        f.close()
        return path
    stale = f.read(4096).strip()
    if stale and say is not None:
        say(f"{out}: the previous run's lock was stale ({_holder_text(path)} is no longer running); taking it over")
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[:20]}))
    f.flush()
    _HELD[key] = f
    return path


def release_lock(out) -> None:
    """Give the lock back (the end of the process does it too). The file stays: its content is only informative."""
    f = _HELD.pop(str(Path(out).resolve()), None)
    if f is not None:
        f.close()


def lock_run_dir(out, rank: int = 0, say=None) -> None:
    """Rank 0 takes the lock; with torch.distributed initialised every rank learns whether it did, so that all of
    a refused run's ranks stop with the same UserError (none is left waiting at a barrier)."""
    err = None
    if rank == 0:
        try:
            acquire_lock(out, say=say)
        except UserError as e:
            err = e
    try:
        import torch
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([1.0 if err is not None else 0.0])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() > 0 and err is None:
                raise UserError(f"--out {out} is in use by another run (rank 0 says so)")
    except ImportError:  # pragma: no cover
        pass
    if err is not None:
        raise err


# ------------------------------------------------------------------------------------------------ the run id
def run_id(out, create: bool = False) -> str | None:
    """The id of the run that owns ``out`` (a random hex string in out/RUN_ID_FILE); ``create``: a new one (a
    fresh or overwritten run). None for a folder of an older version that has none."""
    import secrets

    path = Path(out) / RUN_ID_FILE
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(secrets.token_hex(16) + "\n")
        import os

        os.replace(tmp, path)
    if not path.is_file() or path.is_symlink():
        return None
    text = path.read_text()[:64].strip()
    return text or None


def check_owner(out_dir, folder, info: dict) -> None:
    """The checkpoint was written by the run that owns ``out_dir`` (its run id); folders and checkpoints of older
    versions carry none and pass."""
    mine, theirs = run_id(out_dir), info.get("run_id")
    if mine is not None and theirs is not None and mine != theirs:
        raise UserError(f"--resume: {folder} was written by another run (run id {str(theirs)[:32]}, this folder's "
                        f"is {mine}, in {Path(out_dir) / RUN_ID_FILE}); resume from this run's own checkpoints")


# ------------------------------------------------------------------------------------------------ the format
# The layout of a run folder and its checkpoints. 1: the first (a folder without FORMAT_FILE); 2: checkpoints carry
# the data position in records of the epoch (resumable on another world size). A folder of a later version is
# refused with one line rather than misread.
RUN_FORMAT = 2
FORMAT_FILE = ".melp_format"


def write_run_format(out) -> None:
    import os

    path = Path(out) / FORMAT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{RUN_FORMAT}\n")
    os.replace(tmp, path)


def run_format(out) -> int:
    """The format version of the run in ``out`` (1 for a folder without FORMAT_FILE); a UserError for a file that
    does not hold a version this code reads."""
    path = Path(out) / FORMAT_FILE
    if not path.exists():
        return 1
    text = path.read_text(errors="replace")[:64].strip() if path.is_file() and not path.is_symlink() else "?"
    if not text.isdigit() or not 1 <= int(text) <= RUN_FORMAT:
        raise UserError(f"{path}: run format {text[:20]!r} is unknown to this version of melp_fast (it reads 1 to "
                        f"{RUN_FORMAT}); resume it with the version that wrote it, or start a new --out")
    return int(text)


def check_run_format(out) -> None:
    run_format(out)
