"""Which records and labels each task is evaluated on, and on which store (used by ``melp_fast.eval.zero_shot``).

Protocol "melp": the MELP reference's split files (``data/reference_splits.py``), records and labels alike, on a
store built with ``preprocess --protocol melp``. Protocol "default": the store's labels; records from split files
(the reference layout or ``<task>_{train,test}.csv``), else PTB-XL ``strat_fold``, else a seeded stratified split;
records without a label in the task are left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import reference_splits as refsplits
from ..data import tasks as tasklib
from ..data.store import Store
from ..errors import UserError

PROTOCOLS = ("default", "melp")
PREPROCESS_FLAGS = {"melp": "--protocol melp", "default": "no --protocol flag (the default: 4 Hz high-pass)"}
KNOWN_TASKS = (*tasklib.TASK_SOURCE, "synthetic")


class EvalError(UserError, ValueError):
    """An evaluation that cannot run as asked (one line, exit 2)."""


# ------------------------------------------------------------------------------------------------- stores, tasks
def open_store(path) -> Store:
    try:
        return Store(path)
    except FileNotFoundError as e:
        raise EvalError(f"--data {path}: {e}" if Path(path).exists() else f"--data {path} does not exist") from None
    except ValueError as e:
        raise EvalError(f"--data {path}: {e}") from None


def store_protocol(store: Store) -> str:
    """How a store was preprocessed: "melp" (``preprocess --protocol melp``) or "default"."""
    return str((store.meta.get("preprocess") or {}).get("protocol", "default"))


def check_protocol(store: Store, protocol: str):
    """A store preprocessed for another protocol than the evaluation's stops it, naming the flags to use."""
    have = store_protocol(store)
    if have != protocol:
        src = store.meta.get("source", "SOURCE")
        raise EvalError(f"store {store.path} was preprocessed for protocol {have!r}, evaluation protocol "
                        f"{protocol!r} needs a store built with `melp-fast preprocess --source {src} --root DIR --out "
                        f"STORE` and {PREPROCESS_FLAGS[protocol]}")


def task_key(store: Store, task: str) -> str:
    """Prompt-file / table key of a store's task ("synthetic" for the embedded corpus' label task)."""
    if task == "labels" and str(store.meta.get("source", "")).startswith("synthetic"):
        return "synthetic"
    return task


def store_tasks(store: Store, wanted: list[str] | None) -> list[str]:
    """The tasks of a store to evaluate: ``wanted`` (names, or "all" for every task with fixed classes), else
    the store's default task."""
    have = store.meta.get("tasks") or {}
    if not wanted:
        if not store.meta.get("task"):
            raise EvalError(f"store {store.path} has no default task (no labels); pass --task (it has "
                            f"{sorted(have) or 'no task'})")
        return [store.meta["task"]]
    if "all" in wanted:
        return [t for t, v in have.items() if v.get("classes")]
    out = [t for t in wanted if t in have]
    if not out:
        raise EvalError(f"store {store.path} has none of the tasks {wanted} (it has {sorted(have) or 'no task'})")
    return out


def route_tasks(stores: list[Store], wanted: list[str] | None, protocol: str = "default") -> list[tuple[Store, list]]:
    """[(store, tasks)]: each asked task on the store whose source holds it; without ``wanted``, each store's
    default task; "all": every task of every store (csn-38 too on a CSN store under protocol melp)."""
    if not wanted:
        return [(s, store_tasks(s, None)) for s in stores]
    if "all" in wanted:
        out = []
        for s in stores:
            ts = store_tasks(s, ["all"]) if s.meta.get("tasks") else []
            if protocol == "melp":  # the tasks the reference has splits of
                ts = [t for t in ts if t in refsplits.LAYOUT]
                if s.meta.get("source") == "csn":
                    ts.append("csn-38")
            if ts:
                out.append((s, ts))
        return out
    bad = [t for t in wanted if t not in KNOWN_TASKS]
    if bad:
        raise EvalError(f"unknown task(s) {', '.join(bad)}; valid tasks: {', '.join(KNOWN_TASKS)}, all")
    plan: dict[int, list] = {}
    for t in dict.fromkeys(wanted):
        src = tasklib.TASK_SOURCE.get(t)
        holder = next((s for s in stores if src and s.meta.get("source") == src), None)
        holder = holder or next((s for s in stores if t in (s.meta.get("tasks") or {})), None)
        if holder is None:
            given = ", ".join(f"{s.path} ({s.meta.get('source') or 'no source'})" for s in stores)
            raise EvalError(f"task {t} needs a store built with `melp-fast preprocess --source {src or t}`; the "
                            f"--data given: {given}")
        plan.setdefault(id(holder), [holder, []])[1].append(t)
    return [(s, ts) for s, ts in plan.values()]


# ------------------------------------------------------------------------------------------------- record sets
def task_split(store: Store, task: str, labels: np.ndarray, split_dir=None, seed: int = 42
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(train, validation, test indices, how) of a store's task under the default protocol: split CSVs
    ``<task>_{train,val,test}.csv`` (val optional: empty without it), PTB-XL folds (validation = fold 9) or a
    stratified 70/10/20 split (validation = the 10 %). Records without a label in the task are left out of the fold
    and stratified splits (the PTB-XL benchmark and the reference drop them)."""
    if split_dir is not None:
        d = Path(split_dir)
        tr, va, te = d / f"{task}_train.csv", d / f"{task}_val.csv", d / f"{task}_test.csv"
        if tr.is_file() and te.is_file():
            classes = list(store.meta["tasks"][task]["classes"])
            idx = [store.indices_of(tasklib.read_split_csv(f, classes)[0]) if f.is_file() else np.zeros(0, np.int64)
                   for f in (tr, va, te)]
            names = ", ".join(f.name for f in (tr, va, te) if f.is_file())
            return idx[0], idx[1], idx[2], f"split files {names}"
    labelled = (np.asarray(labels) > 0).any(1)
    folds = [r.get("strat_fold") for r in store.records]
    if folds and all(f is not None for f in folds):
        tr, va, te = tasklib.ptbxl_fold_split(folds, labels)
        return tr, va, te, "strat_fold (train 1-8, validation 9, test 10; records without a task label dropped)"
    keep = np.flatnonzero(labelled)
    tr, va, te = tasklib.stratified_split(np.asarray(labels)[keep], (0.7, 0.1, 0.2), seed)
    return keep[tr], keep[va], keep[te], f"stratified 70/10/20 split of the labelled records, seed {seed}"


def _present(store: Store, part: refsplits.SplitPart) -> tuple[np.ndarray, np.ndarray, list]:
    """(store index per row, -1 when absent; rows present; ids absent) of a split file's rows."""
    table = {}
    for i, r in enumerate(store.records):
        table.setdefault(str(r["id"]), i)
    pos = np.asarray([table.get(x, -1) for x in part.ids], dtype=np.int64)
    return pos, np.flatnonzero(pos >= 0), [x for x, p in zip(part.ids, pos) if p < 0]


def task_sets(store: Store, task: str, protocol: str = "default", splits=None, fractions=(0.01, 0.1, 1.0),
              seed: int = 42) -> dict:
    """The records and labels a task is evaluated on: {"classes", "train", "val", "test" (each (store indices,
    labels [n, C]); "val" is what model selection may see, never the test records), "subsets" ({fraction:
    (indices, labels)} under protocol melp, else None), "how", "missing" ({part: count} of listed records absent
    from the store), "missing_ids"}."""
    have = store.meta.get("tasks") or {}
    classes = list(have[task]["classes"]) if task in have and have[task].get("classes") else None
    if refsplits.has_layout(splits, task):
        if classes is None and task != "csn-38":
            raise EvalError(f"store {store.path} has no task {task} (it has {sorted(have) or 'no task'})")
        out = {"missing": {}, "missing_ids": {}, "subsets": None}
        parts = {}
        for p in refsplits.PARTS:
            part = refsplits.read_part(splits, task, p, classes)
            pos, rows, absent = _present(store, part)
            out[p] = (pos[rows], part.labels[rows])
            out["missing"][p], out["missing_ids"][p] = len(absent), absent
            parts[p] = (part, pos)
        out["classes"] = parts["train"][0].classes
        out["how"] = f"reference split files under {Path(splits).name}/ (labels from the split files)"
        if protocol == "melp":
            part, pos = parts["train"]
            out["subsets"] = {}
            for f in fractions:
                rows = refsplits.sample_rows(part, f, seed)
                rows = rows[pos[rows] >= 0]
                out["subsets"][f] = (pos[rows], part.labels[rows])
        return out
    if protocol == "melp":
        where = refsplits.LAYOUT[task][0].format(part="train") if task in refsplits.LAYOUT else None
        raise EvalError(f"protocol melp needs the reference's split files of task {task}: pass --splits DIR, a copy "
                        f"of the MELP repository's src/melp/data_split" + (f" (with {where} inside)" if where else
                                                                          " (it has no split of this task)"))
    if task in tasklib.SPLIT_LABEL_TASKS:
        raise EvalError(f"task {task} takes its labels from the reference's split files: pass --splits DIR (a copy of "
                        f"the MELP repository's src/melp/data_split)")
    if classes is None:
        raise EvalError(f"store {store.path} has no labels for task {task} (it has {sorted(have) or 'no task'})")
    labels = np.asarray(store.task_labels(task), dtype=np.float32)
    if not labels.any():
        raise EvalError(f"store {store.path} has no record with a label of task {task}")
    tr, va, te, how = task_split(store, task, labels, splits, seed)
    return {"classes": classes, "train": (tr, labels[tr]), "val": (va, labels[va]),
            "test": (te, labels[te]), "subsets": None, "how": how, "missing": {}, "missing_ids": {}}
