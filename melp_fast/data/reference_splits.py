"""The MELP reference's split files (``src/melp/data_split`` of github.com/HKU-MedAI/MELP), read by column name.

Layout (``--splits DIR`` points at a copy of ``data_split``)::

    ptbxl/{super_class,sub_class,form,rhythm}/ptbxl_<task>_{train,val,test}.csv   record id: ecg_id
    icbeb/icbeb_{train,val,test}.csv                                             record id: filename (A0001)
    chapman/chapman_{train,val,test}.csv                                         record id: stem of ecg_path

Every column that is not a known metadata column (ecg_id, patient_id, strat_fold, filename_lr / _hr, the task
column; patient_id, ecg_id, filename, validation, age, sex, scp_codes; ecg_path, age, diagnose) is a class column:
its name is mapped to our class (``tasks.from_reference``) and a name that maps to none is an error. Labels are
read by name, never by position (the reference's sub-class train file orders three columns differently).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import tasks as tasklib

PARTS = ("train", "val", "test")
_PTBXL_META = ("ecg_id", "patient_id", "strat_fold", "filename_lr", "filename_hr")
LAYOUT = {  # task -> (file pattern, id column, metadata columns)
    "ptbxl-super": ("ptbxl/super_class/ptbxl_super_class_{part}.csv", "ecg_id", _PTBXL_META + ("super_class",)),
    "ptbxl-sub": ("ptbxl/sub_class/ptbxl_sub_class_{part}.csv", "ecg_id", _PTBXL_META + ("sub_class",)),
    "ptbxl-form": ("ptbxl/form/ptbxl_form_{part}.csv", "ecg_id", _PTBXL_META + ("form",)),
    "ptbxl-rhythm": ("ptbxl/rhythm/ptbxl_rhythm_{part}.csv", "ecg_id", _PTBXL_META + ("rhythm",)),
    "cpsc2018": ("icbeb/icbeb_{part}.csv", "filename",
                 ("patient_id", "ecg_id", "filename", "validation", "age", "sex", "scp_codes")),
    "csn-38": ("chapman/chapman_{part}.csv", "ecg_path", ("ecg_path", "age", "diagnose")),
}


@dataclass
class SplitPart:
    """One split file: record ids (as our stores name records), multi-hot labels [n, C] in ``classes`` order,
    and the table itself (pandas, the reference's row order) for ``sample(frac, random_state=42)``."""
    path: Path
    ids: list
    labels: np.ndarray
    classes: list
    frame: object


def has_layout(splits_dir, task: str) -> bool:
    """Whether ``splits_dir`` holds the reference's three files of ``task``."""
    if task not in LAYOUT or splits_dir is None:
        return False
    return all((Path(splits_dir) / LAYOUT[task][0].format(part=p)).is_file() for p in PARTS)


def record_id(task: str, value) -> str:
    """A split row's record id as our stores name it: PTB-XL ecg_id '12'; ICBEB 'A0001'; Chapman 'JS18048'."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    s = str(value).strip()
    if task == "csn-38":
        s = s.replace("\\", "/").rsplit("/", 1)[-1]
        return s[:-4] if s.lower().endswith(".mat") else s
    return s


def read_part(splits_dir, task: str, part: str, classes=None) -> SplitPart:
    """One split file of ``task`` (``part`` in train / val / test). ``classes``: our class list of the task (its
    order is kept); None for csn-38 (the reference's 38 classes). Unknown class columns and classes without a
    column are errors naming the file."""
    from .sources.common import read_csv

    if task not in LAYOUT:
        raise UserError(f"the reference splits have no task {task!r} (they have {', '.join(LAYOUT)})")
    pattern, id_col, meta = LAYOUT[task]
    path = Path(splits_dir) / pattern.format(part=part)
    if not path.is_file():
        raise UserError(f"split file {path} not found: --splits must point at a copy of the MELP reference's "
                        f"data_split folder ({pattern.format(part=part)} inside it)")
    df = read_csv(path)
    cols = [str(c) for c in df.columns]
    if id_col not in cols:
        raise UserError(f"{path}: no {id_col!r} column (columns: {', '.join(cols)})")
    if classes is None:
        classes = list(tasklib.CSN38) if task == "csn-38" else None
    ref_cols = [c for c in cols if c not in meta and not c.startswith("Unnamed")]
    ours = {}
    for c in ref_cols:
        o = tasklib.from_reference(task, c, classes)
        if o is None:
            raise UserError(f"{path}: column {c!r} is not a class of task {task} (classes: {', '.join(classes)}) "
                            f"nor a metadata column ({', '.join(meta)})")
        ours[o] = c
    missing = [c for c in classes if c not in ours]
    if missing:
        raise UserError(f"{path}: no column for class(es) {', '.join(missing)} of task {task}")
    try:
        labels = df[[ours[c] for c in classes]].to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: class columns must hold 0/1 ({e})") from None
    if not np.isin(labels, (0.0, 1.0)).all():
        raise UserError(f"{path}: class columns must hold 0/1")
    ids = [record_id(task, v) for v in df[id_col].tolist()]
    return SplitPart(path, ids, labels, list(classes), df)


def sample_rows(part: SplitPart, frac: float, seed: int = 42) -> np.ndarray:
    """Row positions of ``part`` that the reference's ``DataFrame.sample(frac, random_state=seed)`` draws
    (in its order); all rows, in file order, at frac 1 (the reference samples then too, which only reorders)."""
    if frac >= 1.0:
        return np.arange(len(part.ids))
    import pandas as pd

    pos = pd.DataFrame({"pos": np.arange(len(part.ids))}, index=part.frame.index)
    return pos.sample(frac=frac, random_state=seed)["pos"].to_numpy()
