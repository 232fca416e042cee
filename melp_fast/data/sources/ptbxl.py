"""PTB-XL 1.0.3: ``ptbxl_database.csv`` + ``scp_statements.csv`` + WFDB files under ``records500/``.

Columns are read by name: ecg_id, patient_id, report, scp_codes (a Python dict literal, code -> likelihood),
strat_fold, filename_hr (the 500 Hz record stem relative to --root; ``list_items(root, "filename_lr")`` takes
the 100 Hz records, resampled to 500 Hz like any other).
Labels are the codes of scp_codes; the four tasks (super, sub, form, rhythm) come from scp_statements.csv
(see data/tasks.py). The report (free text, often German) is cleaned; an empty one is kept (downstream data).
"""

from __future__ import annotations

import ast
from pathlib import Path

from ..reports import clean_report
from .common import Item, load_csv_wfdb_item, read_csv
from .. import tasks as tasklib

NAME = "ptbxl"
DEFAULT_TASK = "ptbxl-super"


def tasks(root) -> dict:
    return tasklib.ptbxl_tasks(Path(root) / "scp_statements.csv")


def list_items(root, filename_column: str = "filename_hr") -> list[Item]:
    root = Path(root)
    db = read_csv(root / "ptbxl_database.csv", dtype=str, keep_default_na=False, root=root)
    need = {"ecg_id", "scp_codes", filename_column}
    if need - set(db.columns):
        raise ValueError(f"{root / 'ptbxl_database.csv'}: missing columns {sorted(need - set(db.columns))}")
    items = []
    for row in db.to_dict("records"):
        ecg_id = str(row["ecg_id"]).strip()
        if ecg_id.endswith(".0"):
            ecg_id = ecg_id[:-2]
        it = Item(record_id=ecg_id, path=str(row[filename_column]).strip(), subject=str(row.get("patient_id", "")),
                  report=clean_report(row.get("report", "")))
        try:
            codes = ast.literal_eval(row["scp_codes"]) if row["scp_codes"].strip() else {}
            if not isinstance(codes, dict):
                raise ValueError("not a dict")
            it.codes = sorted(str(c) for c in codes)
        except (ValueError, SyntaxError):
            it.extra["skip"] = f"unparsable scp_codes {row['scp_codes'][:60]!r}"
        fold = str(row.get("strat_fold", "")).strip()
        if fold:
            try:
                it.extra["strat_fold"] = int(float(fold))
            except ValueError:
                pass
        items.append(it)
    return items


load = load_csv_wfdb_item
