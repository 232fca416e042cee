"""Dataset readers. Each source has NAME, DEFAULT_TASK, tasks(root), list_items(root) -> [Item] (cheap, from the
dataset's index files or a directory walk; deterministic order) and load(root, item, nan_policy) -> (raw canonical
signal float32 [12, 5000] at 500 Hz, meta), raising SkipRecord(reason) for a record to quarantine.

Sources: mimic-iv-ecg, ptbxl, cpsc2018, csn, wfdb-dir (any tree of WFDB records and DICOM ECGs).
One file: ``read_record(path)`` (sources.single).
"""

from __future__ import annotations

from . import mimic_iv_ecg, ptbxl, wfdb_dir
from .common import FS, LEADS, N_SAMPLES, Item, SkipRecord, UnsafePath, safe_path, to_canonical
from .physionet_challenge import cpsc2018, csn
from .single import read_record

SOURCES = {"mimic-iv-ecg": mimic_iv_ecg, "ptbxl": ptbxl, "cpsc2018": cpsc2018, "csn": csn, "wfdb-dir": wfdb_dir}


def get_source(name: str):
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}")
    return SOURCES[name]


__all__ = ["SOURCES", "get_source", "read_record", "Item", "SkipRecord", "UnsafePath", "safe_path", "to_canonical",
           "FS", "LEADS", "N_SAMPLES"]
