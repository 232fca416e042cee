"""One record from a WFDB header (.hea, with .dat or CinC .mat data), a DICOM waveform file (.dcm) or a GE MUSE /
Philips Sierra XML file (.xml: ``muse_xml.py``, ``philips_xml.py``).

``read_record(path)`` -> (signal float32 [12, 5000] at 500 Hz, meta). By default the signal is model-ready
(per-lead 4 Hz high-pass, then min-max to [0, 1], as in the store); ``raw=True`` gives the canonical physical
signal (mV) instead. ``meta`` holds the record id, source fs, leads found / missing, the report text found in the
file (DICOM free-text annotations, or a CinC header's comments) and the beat spans detected on the raw signal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..reports import clean_report
from .common import (FS, MAX_FILE_BYTES, N_SAMPLES, SkipRecord, check_file_bytes, check_fs, check_size,
                     parse_comments, read_wfdb, regular_file, to_canonical)

_UNIT_TO_MV = {"uV": 1e-3, "UV": 1e-3, "mV": 1.0, "MV": 1.0, "V": 1e3}


def read_dicom(path) -> tuple[np.ndarray, float, list[str], str]:
    """(physical signal [leads, samples] in mV, fs, lead names, report text) of the first rhythm waveform of a
    DICOM ECG (12-lead, general or ambulatory ECG waveform storage)."""
    import pydicom

    path = Path(path)
    regular_file(path, "DICOM file")  # a FIFO named x.dcm would block dcmread forever
    check_file_bytes(path)
    check_dicom_inflated(path)  # a deflated dataset is inflated (in bounded steps) only when small enough
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:  # noqa: BLE001
        raise SkipRecord(f"unreadable DICOM file {path.name}: {type(e).__name__}: {e}") from None
    seq = ds.get("WaveformSequence")
    if not seq:
        raise SkipRecord(f"{path.name} holds no waveform")
    idx = 0
    for i, w in enumerate(seq):  # prefer the rhythm strip over the median beat
        if str(w.get("MultiplexGroupLabel", "")).upper().startswith("RHYTHM"):
            idx = i
            break
    w = seq[idx]
    # bounds before the waveform is decoded (and long before it is resampled)
    fs = check_fs(w.get("SamplingFrequency", None), path.name)
    try:
        n_ch, n_t = int(w.NumberOfWaveformChannels), int(w.NumberOfWaveformSamples)
    except (AttributeError, TypeError, ValueError):
        raise SkipRecord(f"{path.name}: waveform without channel or sample counts") from None
    check_size(n_ch, n_t, path.name)
    try:
        arr = np.asarray(ds.waveform_array(idx), dtype=np.float64).T  # [channels, samples], sensitivity applied
    except Exception as e:  # noqa: BLE001
        raise SkipRecord(f"{path.name}: cannot decode waveform: {type(e).__name__}: {e}") from None
    names, scale = [], []
    for c in w.ChannelDefinitionSequence:
        src = c.get("ChannelSourceSequence")
        names.append(str(src[0].get("CodeMeaning", "")) if src else "")
        unit = "uV"
        us = c.get("ChannelSensitivityUnitsSequence")
        if us:
            unit = str(us[0].get("CodeValue", "uV"))
        scale.append(_UNIT_TO_MV.get(unit, 1e-3))
    arr = arr * np.asarray(scale)[:, None]
    texts = [str(a.UnformattedTextValue) for a in ds.get("WaveformAnnotationSequence", []) if "UnformattedTextValue" in a]
    return arr, fs, names, clean_report(texts)


DEFLATED = b"1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the whole dataset is one zlib stream


def _dicom_meta_end(f) -> tuple[int, bytes]:
    """(offset where the dataset starts, transfer syntax UID) of a DICOM Part 10 file: its file meta elements
    (group 0002, explicit VR little endian) are walked without pydicom."""
    import struct

    f.seek(128)
    if f.read(4) != b"DICM":
        return 0, b""
    syntax = b""
    while True:
        pos = f.tell()
        head = f.read(8)
        if len(head) < 8:
            return pos, syntax
        group, elem = struct.unpack("<HH", head[:4])
        if group != 2:
            return pos, syntax
        vr = head[4:6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"):
            length = struct.unpack("<I", f.read(4))[0]
        else:
            length = struct.unpack("<H", head[6:8])[0]
        if length > 1 << 16:
            raise SkipRecord(f"file meta element ({group:04x},{elem:04x}) of {length} bytes")
        value = f.read(length)
        if elem == 0x0010:
            syntax = value.rstrip(b"\0 ")


def check_dicom_inflated(path, limit: int = MAX_FILE_BYTES) -> None:
    """A deflated DICOM (its dataset one zlib stream: 1 MB can inflate to gigabytes, which pydicom would hold in
    memory) is inflated here in 1 MB steps that are counted and dropped; more than ``limit`` bytes: SkipRecord."""
    import zlib

    path = Path(path)
    with open(path, "rb") as f:
        start, syntax = _dicom_meta_end(f)
        if syntax != DEFLATED:
            return
        f.seek(start)
        d, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        pending = b""
        while True:
            if not pending:
                pending = f.read(1 << 20)
                if not pending:
                    return
            try:
                out = d.decompress(pending, 1 << 20)
            except zlib.error as e:
                raise SkipRecord(f"{path.name}: damaged deflated dataset: {e}") from None
            pending = d.unconsumed_tail
            total += len(out)
            if total > limit:
                raise SkipRecord(f"{path.name}: its deflated dataset inflates to more than {limit} bytes (a "
                                 f"compression bomb?)")
            if d.eof:
                return


def xml_kind(path) -> str:
    """'muse-xml' or 'philips-xml', from the root element named in the file's first 4 KB; SkipRecord otherwise."""
    regular_file(path, "XML file")
    with open(path, "rb") as f:
        head = f.read(4096)
    if b"<RestingECG" in head:
        return "muse-xml"
    if b"<restingecgdata" in head:
        return "philips-xml"
    raise SkipRecord(f"{Path(path).name}: an XML file that is neither a GE MUSE (<RestingECG>) nor a Philips "
                     f"(<restingecgdata>) resting ECG")


def read_xml(path) -> tuple[np.ndarray, float, list[str], str]:
    """(physical signal in mV, fs, lead names, report) of a GE MUSE or Philips Sierra XML ECG."""
    from .muse_xml import read_muse_xml
    from .philips_xml import read_philips_xml

    return (read_muse_xml if xml_kind(path) == "muse-xml" else read_philips_xml)(path)


def read_any(path, nan_policy: str = "drop", root=None) -> tuple[np.ndarray, dict]:
    """Canonical raw signal (float32 [12, 5000] at 500 Hz, physical units) and meta of a .hea / .dcm / .xml file
    (with ``root``: every data file a header names must stay inside it). Absent limb leads are derived
    (``meta["derived_leads"]``), other absent leads named in ``meta["missing_leads"]``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".dcm":
        sig, fs, names, report = read_dicom(path)
        meta = {"format": "dicom"}
    elif suffix in (".hea", ".dat", ".mat", ""):
        stem = path.with_suffix("") if suffix else path
        sig, fs, names, comments = read_wfdb(stem, root=root)
        info = parse_comments(comments)
        report = clean_report(info.get("Report", info.get("report", "")))
        meta = {"format": "wfdb", "comments": comments}
        if "Dx" in info:
            meta["codes"] = [c.strip() for c in info["Dx"].split(",") if c.strip()]
    elif suffix == ".xml":
        sig, fs, names, report = read_xml(path)
        meta = {"format": xml_kind(path)}
    else:
        raise ValueError(f"{path}: unknown record type (expected a WFDB .hea, a DICOM .dcm, or a GE MUSE / "
                         f"Philips .xml file)")
    x, m = to_canonical(sig, fs, names, nan_policy=nan_policy)
    meta.update(m)
    meta.update(record_id=path.stem, path=str(path), report=report, lead_names=list(names))
    return x, meta


def read_record(path, *, raw: bool = False, highpass_hz: float = 4.0, nan_policy: str = "repair",
                max_beats: int = 32) -> tuple[np.ndarray, dict]:
    """One record -> (signal float32 [12, 5000] at 500 Hz, meta); raises ValueError naming the file if it cannot
    be used. Beat spans (samples, half-open) are detected on the raw 500 Hz signal: ``meta["beat_spans"]``."""
    from .. import beats as beatlib
    from ..signal import preprocess

    try:
        x, meta = read_any(path, nan_policy=nan_policy)
    except SkipRecord as e:
        raise ValueError(f"{path}: {e}") from None
    spans = beatlib.beat_spans(beatlib.detect_r_peaks(x, FS), N_SAMPLES)[:max_beats]
    meta["beat_spans"] = spans.tolist()
    if not raw:
        x = preprocess(x, FS, highpass_hz)
    return x, meta
