"""MIMIC-IV-ECG v1.0: ``record_list.csv`` + ``machine_measurements.csv`` + WFDB files under ``files/``.

record_list.csv: subject_id, study_id, file_name, ecg_time, path (e.g. ``files/p1000/p10000032/s40689238/40689238``,
the record stem relative to --root). machine_measurements.csv: subject_id, study_id, cart_id, ecg_time,
report_0 .. report_17, ... (joined on study_id). The report is report_0..report_N (columns found by name, in
numeric order) cleaned by ``reports.clean_report``; an empty report or one under 4 words is skipped (counted).
Leads are mapped by name from the header (MIMIC's I, II, III, aVR, aVF, aVL order is undone).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..reports import clean_report, word_count
from .common import Item, SkipRecord, load_csv_wfdb_item, read_csv

NAME = "mimic-iv-ecg"
DEFAULT_TASK = None
MIN_WORDS = 4


def tasks(root) -> dict:
    return {}


def list_items(root) -> list[Item]:
    root = Path(root)
    rl = read_csv(root / "record_list.csv", dtype=str, keep_default_na=False, root=root)
    need = {"subject_id", "study_id", "path"}
    if need - set(rl.columns):
        raise ValueError(f"{root / 'record_list.csv'}: missing columns {sorted(need - set(rl.columns))}")
    mm = read_csv(root / "machine_measurements.csv", dtype=str, keep_default_na=False, root=root,
                  usecols=lambda c: c == "study_id" or re.fullmatch(r"report_\d+", str(c)) is not None)
    if "study_id" not in mm.columns:
        raise ValueError(f"{root / 'machine_measurements.csv'}: no study_id column")
    rcols = sorted((c for c in mm.columns if re.fullmatch(r"report_\d+", c)), key=lambda c: int(c.split("_")[1]))
    if not rcols:
        raise ValueError(f"{root / 'machine_measurements.csv'}: no report_N columns")
    reports = {}
    for row in mm[["study_id", *rcols]].itertuples(index=False):
        reports[str(row[0]).strip()] = clean_report(list(row[1:]))
    items = []
    for row in rl.itertuples(index=False):
        study, subject, path = str(row.study_id).strip(), str(row.subject_id).strip(), str(row.path).strip()
        it = Item(record_id=study, path=path, subject=subject)
        if study not in reports:
            it.extra["skip"] = "no machine_measurements row for this study_id"
        else:
            it.report = reports[study]
            if not it.report:
                it.extra["skip"] = "empty report"
            elif word_count(it.report) < MIN_WORDS:
                it.extra["skip"] = f"report under {MIN_WORDS} words"
        items.append(it)
    return items


load = load_csv_wfdb_item


__all__ = ["NAME", "DEFAULT_TASK", "tasks", "list_items", "load", "SkipRecord"]
