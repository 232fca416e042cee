"""Downstream label tasks (labels read by NAME, never by column position) and seeded splits.

A task is a list of class names plus a map from a record's raw codes (PTB-XL SCP codes, SNOMED CT codes of the
PhysioNet/CinC headers, or class names themselves) to class names. Tasks are stored in a store's meta.json, so a
store can give the multi-hot labels of any of its tasks without the dataset files.

- PTB-XL (from ``scp_statements.csv``, columns by name): ``ptbxl-super`` = ``diagnostic_class`` of the codes with
  ``diagnostic == 1`` (5: CD, HYP, MI, NORM, STTC); ``ptbxl-sub`` = their ``diagnostic_subclass`` (23);
  ``ptbxl-form`` = the codes with ``form == 1`` (19); ``ptbxl-rhythm`` = the codes with ``rhythm == 1`` (12). Every
  code in ``scp_codes`` counts, whatever its likelihood (as the PTB-XL benchmark does).
- CPSC2018 (9), SNOMED CT codes as in the PhysioNet/CinC 2020 relabelling, with its equivalent codes merged.
- CSN / Chapman-Shaoxing: ``csn-rhythm4`` the four merged rhythm groups of Zheng et al. 2020 (SB, SR = sinus rhythm
  + sinus irregularity, AFIB = AF + flutter, GSVT = SVT, AT, AVNRT, AVRT, wandering pacemaker, sinus tachycardia);
  ``csn-all`` every SNOMED CT code present (classes fixed when the store is finished). AVNRT and wandering
  pacemaker are coded 233896004 / 195101003 in the ecg-arrhythmia tree and 251166008 / 17366009 in the
  PhysioNet/CinC 2021 tree: both are accepted. ``csn-38`` is the reference code's 38-class Chapman split: its
  labels are the split files' own (``data/reference_splits.py``, ``evaluate --protocol melp``).

Class names of the MELP reference split files map to ours: PTB-XL's without their leading / trailing underscores
(our ``ISC_`` is the reference's ``ISC``, ``_AVB`` is ``AVB``), ICBEB's AFIB, VPC, 1AVB, CRBBB, CLBBB are our
CPSC2018 AF, PVC, IAVB, RBBB, LBBB (``reference_name`` / ``from_reference``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CPSC2018 = {
    "NORM": ["426783006"],  # sinus rhythm
    "AF": ["164889003"],
    "IAVB": ["270492004"],
    "LBBB": ["164909002", "733534002"],
    "RBBB": ["59118001", "713427006"],
    "PAC": ["284470004", "63593006"],
    "PVC": ["164884008", "427172004", "17338001"],
    "STD": ["429622005"],
    "STE": ["164931005"],
}

CSN_RHYTHM4 = {
    "SB": ["426177001"],
    "SR": ["426783006", "427393009"],
    "AFIB": ["164889003", "164890007"],
    "GSVT": ["426761007", "713422000", "233896004", "233897008", "195101003", "427084000",
             "251166008", "17366009"],  # AVNRT and wandering pacemaker as coded in PhysioNet/CinC 2021
}

# The reference's 38 Chapman classes, in its order (prompt/dataset_class_names.json, "chapman").
CSN38 = ["AQW", "UW", "SR", "WPW", "2AVB", "AT", "VB", "ARS", "STTC", "SA", "STE", "VPB", "TWO", "STTU", "ALS", "APB",
         "2AVB1", "PRIE", "CCR", "CR", "AF", "AVB", "QTIE", "LBBB", "VEB", "SVT", "RBBB", "1AVB", "STDD", "MI", "AFIB",
         "TWC", "PWC", "ERV", "RVH", "LVH", "ST", "JEB"]

# ICBEB (reference) class name -> our CPSC2018 class name; the other ICBEB names are ours already.
ICBEB_TO_CPSC2018 = {"AFIB": "AF", "VPC": "PVC", "1AVB": "IAVB", "CRBBB": "RBBB", "CLBBB": "LBBB"}

PTBXL_TASKS = ("ptbxl-super", "ptbxl-sub", "ptbxl-form", "ptbxl-rhythm")
# Every downstream task and the store source that holds it.
TASK_SOURCE = {**{t: "ptbxl" for t in PTBXL_TASKS}, "cpsc2018": "cpsc2018", "csn-rhythm4": "csn", "csn-38": "csn",
               "csn-all": "csn"}
SPLIT_LABEL_TASKS = ("csn-38",)  # tasks whose labels only the reference split files give


def reference_name(task: str, cls: str) -> str:
    """The MELP reference's name of one of our classes of ``task`` (see the module docstring)."""
    if task in PTBXL_TASKS:
        return cls.strip("_")
    if task == "cpsc2018":
        return {v: k for k, v in ICBEB_TO_CPSC2018.items()}.get(cls, cls)
    return cls


def from_reference(task: str, name: str, classes) -> str | None:
    """Our class of ``task`` (among ``classes``) named ``name`` by the reference; None when there is none."""
    for c in classes:
        if reference_name(task, c) == name:
            return c
    return None


def _from_groups(groups: dict[str, list[str]]) -> dict:
    m: dict[str, list[str]] = {}
    for cls, codes in groups.items():
        for c in codes:
            m.setdefault(c, []).append(cls)
    return {"classes": list(groups), "map": m}


def fixed_tasks() -> dict[str, dict]:
    return {"cpsc2018": _from_groups(CPSC2018), "csn-rhythm4": _from_groups(CSN_RHYTHM4),
            "csn-all": {"classes": None, "map": None}}


def ptbxl_tasks(scp_statements_csv) -> dict[str, dict]:
    """The four PTB-XL tasks from scp_statements.csv (first column = the SCP code; other columns by name)."""
    from .sources.common import read_csv

    df = read_csv(scp_statements_csv, index_col=0)
    need = {"diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass"}
    missing = need - set(df.columns)
    if missing:
        raise ValueError(f"{scp_statements_csv}: missing columns {sorted(missing)}")
    out = {}
    for name, pick, col in [("ptbxl-super", "diagnostic", "diagnostic_class"),
                            ("ptbxl-sub", "diagnostic", "diagnostic_subclass"),
                            ("ptbxl-form", "form", None), ("ptbxl-rhythm", "rhythm", None)]:
        m: dict[str, list[str]] = {}
        for code, row in df.iterrows():
            if not _flag(row[pick]):
                continue
            cls = str(code).strip() if col is None else row[col]
            if cls is None or (isinstance(cls, float) and cls != cls) or not str(cls).strip():
                continue
            m.setdefault(str(code).strip(), []).append(str(cls).strip())
        out[name] = {"classes": sorted({c for v in m.values() for c in v}), "map": m}
    return out


def _flag(v) -> bool:
    try:
        return float(v) == 1.0
    except (TypeError, ValueError):
        return False


def finish_task(task: dict, all_codes) -> dict:
    """Fix an open task's classes (``classes is None``: every code seen, sorted) once all codes are known."""
    if task.get("classes") is not None:
        return task
    seen = sorted({str(c) for codes in all_codes for c in codes})
    return {"classes": seen, "map": None}


def labels_for(task: dict, codes_per_record) -> np.ndarray:
    """float32 multi-hot [N, C] of a task (classes in the task's order) from each record's raw codes."""
    classes = task["classes"]
    col = {c: i for i, c in enumerate(classes)}
    m = task.get("map")
    out = np.zeros((len(codes_per_record), len(classes)), dtype=np.float32)
    for r, codes in enumerate(codes_per_record):
        for code in codes:
            for cls in (m.get(str(code), ()) if m is not None else (str(code),)):
                j = col.get(cls)
                if j is not None:
                    out[r, j] = 1.0
    return out


# ------------------------------------------------------------------------------------------------- splits
def _strata(labels: np.ndarray) -> np.ndarray:
    """Stratum of each record: its rarest positive class (-1: no positive class)."""
    labels = np.asarray(labels) > 0
    freq = labels.sum(0).astype(np.float64)
    score = np.where(labels, freq[None, :], np.inf)
    rare = np.argmin(score, axis=1)
    return np.where(labels.any(1), rare, -1)


def stratified_split(labels, fractions=(0.8, 0.1, 0.1), seed: int = 42) -> list[np.ndarray]:
    """Seeded multi-label stratified split of range(N) into len(fractions) parts (stratified by each record's
    rarest class; within a stratum, counts by largest remainder). Returns sorted index arrays."""
    fr = np.asarray(fractions, dtype=np.float64)
    fr = fr / fr.sum()
    strata = _strata(labels)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fr]
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        idx = idx[rng.permutation(len(idx))]
        want = fr * len(idx)
        cnt = np.floor(want).astype(int)
        for j in np.argsort(-(want - cnt), kind="stable")[: len(idx) - cnt.sum()]:
            cnt[j] += 1
        start = 0
        for j, c in enumerate(cnt):
            parts[j].extend(idx[start:start + c].tolist())
            start += c
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def train_subset(train_idx, labels, fraction: float, seed: int = 42) -> np.ndarray:
    """A seeded stratified ``fraction`` (e.g. 0.01, 0.1, 1.0) of ``train_idx``; each stratum keeps at least one
    record, so every class present in the training split stays present (a 1% subset can be a little larger)."""
    train_idx = np.asarray(train_idx, dtype=np.int64)
    if fraction >= 1.0:
        return np.sort(train_idx)
    strata = _strata(np.asarray(labels)[train_idx])
    rng = np.random.default_rng([seed, int(round(fraction * 1e6))])
    keep = []
    for s in np.unique(strata):
        idx = train_idx[strata == s]
        k = max(1, int(round(fraction * len(idx))))
        keep.extend(idx[rng.permutation(len(idx))[:k]].tolist())
    return np.sort(np.asarray(keep, dtype=np.int64))


def ptbxl_fold_split(folds, labels=None) -> list[np.ndarray]:
    """PTB-XL's recommended split from ``strat_fold``: train 1-8, validation 9, test 10. With ``labels`` (multi-hot
    [N, C] of a task), records without a label in the task are left out of every part (as the PTB-XL benchmark
    code and the MELP reference do)."""
    f = np.asarray(folds, dtype=np.int64)
    keep = np.ones(len(f), bool) if labels is None else (np.asarray(labels) > 0).any(1)
    return [np.flatnonzero((f <= 8) & keep), np.flatnonzero((f == 9) & keep), np.flatnonzero((f == 10) & keep)]


def subject_split(subjects, val_fraction: float = 0.02, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Pretraining split by subject (MIMIC-IV-ECG: 98/2, seed 42): no subject on both sides."""
    subjects = np.asarray([str(s) for s in subjects])
    uniq = np.unique(subjects)
    rng = np.random.default_rng(seed)
    n_val = int(round(val_fraction * len(uniq)))
    val_subj = set(uniq[rng.permutation(len(uniq))[:n_val]].tolist())
    is_val = np.array([s in val_subj for s in subjects], dtype=bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


ID_COLUMNS = ("ecg_id", "study_id", "record_id", "Recording", "recording", "filename", "filename_hr", "path", "id")


def read_split_csv(path, classes=None, id_column: str | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """A reference split CSV (e.g. MERL/MELP's ``ptbxl_super_class_train.csv``): record ids and the label columns
    picked BY NAME. ``classes`` (a task's class list) fixes the column order; the CSV's column order is never used.
    Returns (ids as strings (file names reduced to their stem), labels float32 [n, C], classes)."""
    from .sources.common import read_csv

    df = read_csv(path)
    cols = list(df.columns)
    if id_column is None:
        id_column = next((c for c in ID_COLUMNS if c in cols), None)
        if id_column is None:
            raise ValueError(f"{path}: no id column (looked for {', '.join(ID_COLUMNS)})")
    if classes is None:
        classes = [c for c in cols if c not in ID_COLUMNS and not str(c).startswith("Unnamed")
                   and _is_binary(df[c])]
    missing = [c for c in classes if c not in cols]
    if missing:
        raise ValueError(f"{path}: label columns {missing} not found (columns: {cols})")
    ids = [_record_key(v) for v in df[id_column].tolist()]
    labels = df[list(classes)].to_numpy(dtype=np.float32)
    return ids, labels, list(classes)


def _is_binary(col) -> bool:
    try:
        v = set(np.unique(col.to_numpy(dtype=np.float64)).tolist())
    except (TypeError, ValueError):
        return False
    return v <= {0.0, 1.0}


def _record_key(v) -> str:
    """'records500/00000/00001_hr' -> '00001_hr'; 12 -> '12'; 12.0 -> '12'."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    s = str(v).strip()
    return Path(s).name if ("/" in s or "\\" in s) else s
