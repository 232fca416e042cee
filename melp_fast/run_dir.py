"""A run folder is never overwritten by accident.

``prepare_run_dir(out, resume=..., overwrite=...)`` is called before a training run does any work:

- a folder that already holds a run (history, checkpoints or an exported model) and neither ``--resume`` nor
  ``--overwrite``: a UserError naming the folder and both options;
- ``--overwrite``: the run's own files (RUN_FILES) are removed first, and it says which; other files stay;
- ``--resume`` with no complete checkpoint: a UserError (nothing to resume);
- ``--resume`` and ``--overwrite`` together: a UserError.

``melp-fast demo`` marks its folder (DEMO_MARK) and replaces a folder carrying its mark, saying so.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .errors import UserError

# what a training run writes into its folder (config.json alone is not a run: it is rewritten at every start)
RUN_FILES = ("checkpoints", "history.jsonl", "model", "model.partial", "model.old", "tensorboard", "config.json",
             "zero_shot.json", "zero_shot.md")
EVIDENCE = ("checkpoints", "history.jsonl", "model")
DEMO_MARK = ".melp_demo"


def holds_run(out) -> list[str]:
    """The names of the run files in ``out`` that show a run was (or is being) made there."""
    out = Path(out)
    return [n for n in EVIDENCE if (out / n).exists()]


def clear_run(out, say=print) -> list[str]:
    out = Path(out)
    removed = []
    for name in RUN_FILES:
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


def check_run_dir(out, *, resume: bool, overwrite: bool) -> None:
    """The checks alone (every rank may call it: it only reads)."""
    out = Path(out)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: choose one")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if resume:
        from .engine import check_resume

        check_resume(out / "checkpoints", True)
        return
    found = holds_run(out)
    if found and not overwrite:
        raise UserError(f"{out} already holds a run ({', '.join(found)}): pass --resume to continue it, "
                        f"--overwrite to replace it, or choose another --out")


def prepare_run_dir(out, *, resume: bool, overwrite: bool, rank: int = 0, barrier=None) -> None:
    """check_run_dir on every rank, then (with --overwrite) rank 0 clears the old run; ``barrier`` (e.g.
    torch.distributed.barrier) keeps the other ranks from going on before it has."""
    check_run_dir(out, resume=resume, overwrite=overwrite)
    if overwrite and rank == 0:
        clear_run(out, say=lambda m: print(m, file=sys.stderr, flush=True))
    if overwrite and barrier is not None:
        barrier()


def demo_may_replace(out) -> bool:
    """melp-fast demo replaces a folder only when it is empty, absent or a previous demo's."""
    out = Path(out)
    return not out.exists() or (out / DEMO_MARK).is_file() or not holds_run(out)


def mark_demo(out) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARK).write_text("written by melp-fast demo: a later demo run replaces this folder\n")
