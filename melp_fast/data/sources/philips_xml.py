"""Philips Sierra ECG XML (``<restingecgdata>``, PageWriter TC carts and IntelliSpace ECG exports).

``read_philips_xml(path)`` -> (physical signal [leads, samples] in mV, fs, lead names, report text). The
waveforms are decoded by the ``sierraecg`` library (base64, XLI / LZW decompression, the limb leads rebuilt from
their stored residuals) and scaled by ``<signalresolution>`` (microvolts per unit, 5 on PageWriter carts). The
report is the cart's interpretation statements (``<statement>/<leftstatement>``). Parsed with defusedxml.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..reports import clean_report
from .common import SkipRecord, check_fs, check_size
from .muse_xml import parse_xml

NS = "{http://www3.medical.philips.com}"


def _find(root, tag: str):
    return root.find(f".//{NS}{tag}") if root.tag.startswith(NS) else root.find(f".//{tag}")


def _findall(root, tag: str):
    return root.findall(f".//{NS}{tag}") if root.tag.startswith(NS) else root.findall(f".//{tag}")


def read_philips_xml(path) -> tuple[np.ndarray, float, list[str], str]:
    path = Path(path)
    root = parse_xml(path, "Philips XML file")  # defusedxml first: the library's parser is given only a safe file
    if not root.tag.endswith("restingecgdata"):
        raise SkipRecord(f"{path.name}: not a Philips resting ECG (root element <{root.tag}>)")
    res = _find(root, "signalresolution")
    try:
        uv_per_unit = float(res.text) if res is not None and res.text else 5.0
    except ValueError:
        raise SkipRecord(f"{path.name}: signalresolution {res.text!r} is not a number") from None
    try:
        import sierraecg
    except ImportError:
        raise SkipRecord(f"{path.name}: reading Philips XML needs the sierraecg package (pip install sierraecg)"
                         ) from None
    try:
        f = sierraecg.read_file(str(path))
    except Exception as e:  # noqa: BLE001  (the library raises its own errors and struct / index errors)
        raise SkipRecord(f"{path.name}: cannot decode the waveforms: {type(e).__name__}: {e}") from None
    if not f.leads:
        raise SkipRecord(f"{path.name} holds no leads")
    fs = check_fs(f.leads[0].sampling_freq, path.name)
    n = min(len(lead.samples) for lead in f.leads)
    check_size(len(f.leads), n, path.name)
    sig = np.stack([np.asarray(lead.samples[:n], dtype=np.float64) for lead in f.leads]) * uv_per_unit * 1e-3
    texts = [(s.text or "").strip() for s in _findall(root, "leftstatement")]
    return sig, fs, [lead.label for lead in f.leads], clean_report([t for t in texts if t])
