"""Any directory tree of WFDB records (.hea + .dat / .mat), DICOM ECG files (.dcm) and GE MUSE / Philips XML ECGs
(.xml), walked in sorted order; a record stored both as WFDB and as XML is read from its WFDB files.
Report text: DICOM free-text annotations, XML statements, or a header comment ``#Report: ...``; labels: ``#Dx:``
codes if any."""

from __future__ import annotations

from pathlib import Path

from .common import Item, regular_file, safe_path
from .physionet_challenge import walk_records
from .single import read_any

NAME = "wfdb-dir"
DEFAULT_TASK = None


def tasks(root) -> dict:
    return {}


def list_items(root) -> list[Item]:
    items = walk_records(root, extra_suffixes=(".dcm", ".xml"))
    for it in items:
        if it.path.lower().endswith(".xml") and (Path(root) / (it.path[:-4] + ".hea")).is_file():
            it.path = it.path[:-4]  # the WFDB record wins over an XML copy of it
    return items


def load(root, item: Item, nan_policy: str = "drop"):
    if item.path.lower().endswith((".dcm", ".xml")):
        p = regular_file(safe_path(root, item.path), "DICOM file" if item.path.lower().endswith(".dcm") else "XML file")
    else:
        safe_path(root, item.path)
        p = safe_path(root, item.path + ".hea")
    x, meta = read_any(p, nan_policy=nan_policy, root=root)
    keep = {k: meta[k] for k in ("orig_fs", "orig_samples", "leads_found", "missing_leads", "derived_leads", "padded",
                                 "repaired_samples", "unknown_leads", "codes", "report") if k in meta}
    return x, keep
