"""CPSC2018 and Chapman-Shaoxing (CSN) in the PhysioNet/CinC Challenge 2020-2021 layout.

Any tree of records ``NAME.hea`` + ``NAME.mat`` (MATLAB ``val``, digital units; gain and baseline from the
header) or ``NAME.dat`` (WFDB), found by walking --root (sorted, symbolic links refused when they lead out of the
tree). Labels are the SNOMED CT codes of the header's ``#Dx:`` comment. A data file without its header is
quarantined ("header missing"). No report text: these are downstream (classification) sets.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from .. import tasks as tasklib
from .common import Item, SkipRecord, parse_comments, read_wfdb, safe_path, to_canonical


def walk_records(root, data_suffixes=(".mat", ".dat"), extra_suffixes=()) -> list[Item]:
    """Items for every record stem under root: one with a .hea, or a data file whose .hea is missing."""
    root = Path(root)
    stems: dict[str, set] = {}
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for f in files:
            p = Path(d, f)
            suf = p.suffix.lower()
            if suf in (".hea", *data_suffixes, *extra_suffixes):
                rel = p.relative_to(root).with_suffix("").as_posix()
                stems.setdefault(rel, set()).add(suf)
    items = []
    seen = Counter(Path(rel).name for rel in stems)
    twice = {n for n, c in seen.items() if c > 1}
    for rel in sorted(stems):
        sufs = stems[rel]
        # the record name is its id, unless another folder holds a record of the same name: then its path
        it = Item(record_id=rel if Path(rel).name in twice else Path(rel).name, path=rel)
        for s in extra_suffixes:
            if s in sufs:
                it.path = rel + s
        if ".hea" not in sufs and not any(s in sufs for s in extra_suffixes):
            it.extra["skip"] = "header missing (.hea)"
        items.append(it)
    return items


def load_wfdb_item(root, item: Item, nan_policy: str = "drop"):
    stem = safe_path(root, item.path)
    safe_path(root, item.path + ".hea")
    sig, fs, names, comments = read_wfdb(stem, root=root)
    x, meta = to_canonical(sig, fs, names, nan_policy=nan_policy)
    info = parse_comments(comments)
    meta["codes"] = sorted({c.strip() for c in info.get("Dx", "").split(",") if c.strip()})
    for k in ("Age", "Sex"):
        if k in info:
            meta[k.lower()] = info[k]
    return x, meta


class _Challenge:
    def __init__(self, name: str, default_task: str, task_names):
        self.NAME, self.DEFAULT_TASK, self._task_names = name, default_task, task_names

    def tasks(self, root) -> dict:
        t = tasklib.fixed_tasks()
        return {k: t[k] for k in self._task_names}

    def list_items(self, root) -> list[Item]:
        return walk_records(root)

    def load(self, root, item: Item, nan_policy: str = "drop"):
        return load_wfdb_item(root, item, nan_policy)


cpsc2018 = _Challenge("cpsc2018", "cpsc2018", ["cpsc2018"])
csn = _Challenge("csn", "csn-rhythm4", ["csn-rhythm4", "csn-all"])

__all__ = ["cpsc2018", "csn", "walk_records", "load_wfdb_item", "SkipRecord"]
