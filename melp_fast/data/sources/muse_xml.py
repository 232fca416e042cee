"""GE MUSE resting-ECG XML (``<RestingECG>``, the MUSE export and what many converters write).

``read_muse_xml(path)`` -> (physical signal [leads, samples] in mV, fs, lead names, report text) of the rhythm
waveform (``<WaveformType>Rhythm``): each lead is base64 little-endian int16 (``LeadSampleSize`` 2) scaled by
``LeadAmplitudeUnitsPerBit`` in ``LeadAmplitudeUnits`` (MUSE: 4.88 MICROVOLTS), less ``FirstSampleBaseline`` (0 in
MUSE's own exports; converters that shift a lead into the int16 range record the shift there). MUSE stores I, II
and V1-V6 only; the limb leads it leaves out are derived by the reader's common path (``data.leads``). The report
is the device's (or the over-reader's) statements (``<Diagnosis>`` / ``<StmtText>``, else
``<OriginalDiagnosis>``). The XML is parsed with defusedxml (no entity expansion, no external references).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import numpy as np

from ..reports import clean_report
from .common import SkipRecord, check_file_bytes, check_fs, check_size, regular_file

_UNITS_TO_MV = {"MICROVOLTS": 1e-3, "UV": 1e-3, "MILLIVOLTS": 1.0, "MV": 1.0, "VOLTS": 1e3, "V": 1e3}


def _text(elem, tag: str, default: str = "") -> str:
    child = elem.find(tag)
    return (child.text or "").strip() if child is not None and child.text else default


def parse_xml(path, what: str):
    """The root element of an XML file, parsed safely; SkipRecord naming the file when it cannot be."""
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    path = Path(path)
    regular_file(path, what)
    check_file_bytes(path)
    try:
        return ElementTree.parse(str(path)).getroot()
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as e:
        raise SkipRecord(f"unreadable {what} {path.name}: {type(e).__name__}: {e}") from None


def statements(root) -> list[str]:
    """The interpretation statements of a MUSE file: the confirmed ``Diagnosis``, else ``OriginalDiagnosis``."""
    for tag in ("Diagnosis", "OriginalDiagnosis"):
        block = root.find(tag)
        if block is not None:
            out = [(s.text or "").strip() for s in block.iter("StmtText")]
            out = [s for s in out if s]
            if out:
                return out
    return []


def read_muse_xml(path) -> tuple[np.ndarray, float, list[str], str]:
    path = Path(path)
    root = parse_xml(path, "MUSE XML file")
    if root.tag != "RestingECG":
        raise SkipRecord(f"{path.name}: not a MUSE resting ECG (root element <{root.tag}>)")
    waves = root.findall("Waveform")
    if not waves:
        raise SkipRecord(f"{path.name} holds no <Waveform>")
    wave = next((w for w in waves if _text(w, "WaveformType").lower() == "rhythm"), waves[0])
    fs = check_fs(_text(wave, "SampleBase", "0"), path.name)
    exp = _text(wave, "SampleExponent", "0")
    try:
        fs = check_fs(fs * 10.0 ** int(exp), path.name)
    except ValueError:
        raise SkipRecord(f"{path.name}: SampleExponent {exp!r} is not an integer") from None
    leads = wave.findall("LeadData")
    names, rows = [], []
    for ld in leads:
        name = _text(ld, "LeadID")
        try:
            n = int(_text(ld, "LeadSampleCountTotal", "0"))
            size = int(_text(ld, "LeadSampleSize", "2"))
            per_bit = float(_text(ld, "LeadAmplitudeUnitsPerBit", "4.88"))
            baseline = float(_text(ld, "FirstSampleBaseline", "0"))
        except ValueError:
            raise SkipRecord(f"{path.name}: lead {name}: sample count, size or units per bit is not a number") from None
        check_size(len(leads), n, path.name)
        if size != 2:
            raise SkipRecord(f"{path.name}: lead {name}: {size}-byte samples (only 2-byte samples are read)")
        units = _text(ld, "LeadAmplitudeUnits", "MICROVOLTS").upper()
        if units not in _UNITS_TO_MV:
            raise SkipRecord(f"{path.name}: lead {name}: unknown amplitude units {units!r}")
        try:
            raw = base64.b64decode("".join(_text(ld, "WaveFormData").split()), validate=True)
        except (binascii.Error, ValueError):
            raise SkipRecord(f"{path.name}: lead {name}: waveform data is not base64") from None
        samples = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2")
        if len(samples) < n:
            raise SkipRecord(f"{path.name}: lead {name}: {len(samples)} samples, header says {n}")
        names.append(name)
        rows.append((samples[:n].astype(np.float64) - baseline) * per_bit * _UNITS_TO_MV[units])
    if not rows:
        raise SkipRecord(f"{path.name}: the rhythm waveform has no leads")
    n = min(len(r) for r in rows)
    return np.stack([r[:n] for r in rows]), fs, names, clean_report(statements(root))
