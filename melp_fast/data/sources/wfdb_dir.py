"""Any directory tree of WFDB records (.hea + .dat / .mat) and DICOM ECG files (.dcm), walked in sorted order.
Report text: DICOM free-text annotations, or a header comment ``#Report: ...``; labels: ``#Dx:`` codes if any."""

from __future__ import annotations

from .common import Item, regular_file, safe_path
from .physionet_challenge import walk_records
from .single import read_any

NAME = "wfdb-dir"
DEFAULT_TASK = None


def tasks(root) -> dict:
    return {}


def list_items(root) -> list[Item]:
    return walk_records(root, extra_suffixes=(".dcm",))


def load(root, item: Item, nan_policy: str = "drop"):
    if item.path.lower().endswith(".dcm"):
        p = regular_file(safe_path(root, item.path), "DICOM file")
    else:
        safe_path(root, item.path)
        p = safe_path(root, item.path + ".hea")
    x, meta = read_any(p, nan_policy=nan_policy, root=root)
    keep = {k: meta[k] for k in ("orig_fs", "orig_samples", "leads_found", "missing_leads", "derived_leads", "padded",
                                 "repaired_samples", "unknown_leads", "codes", "report") if k in meta}
    return x, keep
