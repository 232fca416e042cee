"""What every source shares: safe paths, WFDB / CinC .mat reading, lead mapping, resampling, 10 s windows.

The rules (docs/SPEC.md, "Data"):
- leads are mapped BY NAME (case-insensitive, common aliases) into the canonical PTB-XL order
  I, II, III, aVR, aVL, aVF, V1..V6; MIMIC-IV-ECG's aVF/aVL swap is undone by the names in its headers. An
  absent limb lead is derived from the stored ones (``data.leads.complete_leads``: III, aVR, aVL, aVF from I and
  II, listed in ``meta["derived_leads"]``); any other absent lead is zero-filled and listed in
  ``meta["missing_leads"]``;
- resampled to 500 Hz with a polyphase filter (``scipy.signal.resample_poly``, exact rational ratio);
- the first 10 s kept (5000 samples); a shorter record is zero-padded at the end (``meta["padded"]``);
- non-finite samples (NaN / Inf): ``nan_policy="drop"`` (default, as the spec) skips the record;
  ``nan_policy="repair"`` interpolates each lead linearly over its missing samples (edges held at the nearest
  finite value; a lead with no finite sample becomes zeros and is listed as missing). Either way it is counted;
- an all-zero (or constant, i.e. flat in every lead) record is always skipped.
Every skip raises :class:`SkipRecord` with a short reason, which the store builder writes to quarantine.jsonl.
"""

from __future__ import annotations

import codecs
import math
import os
import re
import stat
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..constants import FS, LEADS, N_SAMPLES
from ..leads import complete_leads

# Bounds checked before anything is read or resampled (a header, a DICOM tag or a .mat variable may claim anything)
MIN_FS, MAX_FS = 50.0, 20_000.0  # sampling rates an ECG may have (Hz)
MAX_SIGNALS = 64  # signals (leads) in one record
MAX_VALUES = 12 * 1000 * 300  # samples x signals decoded from one record (5 min of 12 leads at 1 kHz; 29 MB as f64)
MAX_FILE_BYTES = 64 << 20  # a DICOM or MATLAB file read whole
MAX_ABS_MV = 1e5  # a physical value beyond this (100 V) is a wrong gain, not an ECG

_ALIASES = {
    "MLI": "I", "LEADI": "I", "LEAD I": "I", "D1": "I", "DI": "I",
    "MLII": "II", "LEADII": "II", "D2": "II", "DII": "II",
    "MLIII": "III", "LEADIII": "III", "D3": "III", "DIII": "III",
    "AVR": "aVR", "AVL": "aVL", "AVF": "aVF",
}


class SkipRecord(Exception):
    """A record that is skipped (and quarantined) with a short reason."""


class UnsafePath(SkipRecord):
    """A path taken from a dataset file that would leave --root."""


@dataclass
class Item:
    """One record to read: what a source's listing knows before touching the signal file."""
    record_id: str
    path: str  # as written in the dataset's files (relative to root), or relative path found by a walk
    report: str = ""
    codes: list = field(default_factory=list)  # label names (SCP codes, SNOMED CT codes, ...)
    subject: str = ""
    extra: dict = field(default_factory=dict)


def canonical_lead(name: str) -> str | None:
    """'aVF', 'AVF', 'Lead aVF', 'Lead I (Einthoven)', 'MLII', 'v5' -> the canonical name (None if unknown)."""
    s = re.sub(r"\(.*?\)", "", str(name)).strip()
    s = re.sub(r"^lead[\s_-]*", "", s, flags=re.I).strip()
    u = s.upper().replace(" ", "")
    if u in _ALIASES:
        return _ALIASES[u]
    for lead in LEADS:
        if u == lead.upper():
            return lead
    return None


def safe_path(root, rel) -> Path:
    """``rel`` (from a dataset CSV) resolved inside ``root``; raises UnsafePath for an absolute path, a '..'
    component, or a path (or symbolic link) that resolves outside ``root``. Nothing is read."""
    root = Path(root).resolve()
    rel_s = str(rel)
    if not rel_s or rel_s.startswith(("/", "\\")) or os.path.isabs(rel_s) or re.match(r"^[A-Za-z]:", rel_s):
        raise UnsafePath(f"absolute path refused: {rel_s!r}")
    if ".." in re.split(r"[\\/]", rel_s):
        raise UnsafePath(f"path with '..' refused: {rel_s!r}")
    p = (root / rel_s).resolve()
    if p != root and root not in p.parents:
        raise UnsafePath(f"path leaves the root (link?): {rel_s!r} -> {p}")
    return p


def regular_file(path, what: str = "file") -> Path:
    """``path`` (links followed) when it is a regular file; SkipRecord otherwise (a FIFO, device or folder would
    block or mislead a reader). Nothing is opened."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SkipRecord(f"{what} {path.name} is missing") from None
    except OSError as e:
        raise SkipRecord(f"{what} {path.name} cannot be examined: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SkipRecord(f"{what} {path.name} is not a regular file")
    return path


def inside_root(root, path, named: str) -> Path:
    """``path`` resolved (links followed), refused with UnsafePath unless it stays inside ``root``."""
    root_r = Path(root).resolve()
    p = Path(path).resolve()
    if p != root_r and root_r not in p.parents:
        raise UnsafePath(f"{named} leaves the root (-> {p})")
    return p


def check_fs(fs, where: str = "record") -> float:
    """A sampling rate within [MIN_FS, MAX_FS]; SkipRecord otherwise (before any resampling)."""
    try:
        fs = float(fs)
    except (TypeError, ValueError):
        raise SkipRecord(f"{where}: sampling frequency {fs!r} is not a number") from None
    if not math.isfinite(fs) or not MIN_FS <= fs <= MAX_FS:
        raise SkipRecord(f"{where}: sampling frequency {fs:g} Hz is outside [{MIN_FS:g}, {MAX_FS:g}] Hz")
    return fs


def check_size(n_sig: int, n_samples: int, where: str = "record"):
    if n_sig > MAX_SIGNALS:
        raise SkipRecord(f"{where}: {n_sig} signals, more than {MAX_SIGNALS}")
    if n_sig * n_samples > MAX_VALUES:
        raise SkipRecord(f"{where}: {n_samples} samples x {n_sig} signals, more than the {MAX_VALUES} values a "
                         f"record may hold")


def check_file_bytes(path: Path, limit: int = MAX_FILE_BYTES):
    size = os.stat(path).st_size
    if size > limit:
        raise SkipRecord(f"{path.name} is {size} bytes, more than the {limit} read for one record")


# ------------------------------------------------------------------------------------------------- reading
# bytes per sample of the WFDB formats read natively (single data file, channels interleaved by frame)
_BYTES = {"16": 2.0, "212": 1.5, "80": 1.0, "24": 3.0, "32": 4.0, "61": 2.0, "8": 1.0, "160": 2.0, "310": 4 / 3,
          "311": 4 / 3}
_NATIVE = {"16", "212", "80", "24", "32", "61"}
_INVALID = {"16": -32768, "61": -32768, "212": -2048, "80": -128, "24": -(1 << 23), "32": -(1 << 31)}
_SIG_RE = re.compile(r"^(?P<file>\S+)\s+(?P<fmt>\d+)(?:x(?P<spf>\d+))?(?::(?P<skew>\d+))?(?:\+(?P<off>\d+))?"
                     r"(?:\s+(?P<gain>[-+]?[\d.eE+-]+)?(?:\((?P<base>[-+]?\d+)\))?(?:/(?P<units>\S+))?"
                     r"(?:\s+(?P<adcres>\d+)(?:\s+(?P<adczero>[-+]?\d+)(?:\s+(?P<init>[-+]?\d+)"
                     r"(?:\s+(?P<cksum>[-+]?\d+)(?:\s+(?P<bsize>\d+)(?:\s+(?P<desc>.*))?)?)?)?)?)?)?\s*$")


@dataclass
class Header:
    name: str
    n_sig: int
    fs: float
    sig_len: int
    file_name: list
    fmt: list
    byte_offset: list
    adc_gain: list
    baseline: list
    sig_name: list
    comments: list
    spf: list


def parse_header(text: str, where: str = "header") -> Header:
    """A single-segment WFDB header (record line, one line per signal, '#' comments)."""
    lines, comments = [], []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            comments.append(line[1:].strip())
        else:
            lines.append(line.split("#", 1)[0].strip())
    if not lines:
        raise SkipRecord(f"{where}: empty header")
    rec = lines[0].split()
    if len(rec) < 2:
        raise SkipRecord(f"{where}: bad record line {lines[0]!r}")
    if "/" in rec[0]:
        raise NotImplementedError("multi-segment record")
    try:
        n_sig = int(rec[1])
        fs = float(rec[2].split("/")[0].split("(")[0]) if len(rec) > 2 else 250.0
        sig_len = int(rec[3]) if len(rec) > 3 else 0
    except ValueError:
        raise SkipRecord(f"{where}: bad record line {lines[0]!r}") from None
    if len(lines) - 1 < n_sig:
        raise SkipRecord(f"{where}: header lists {len(lines) - 1} signal lines, record line says {n_sig}")
    h = Header(rec[0], n_sig, fs, sig_len, [], [], [], [], [], [], comments, [])
    for line in lines[1:1 + n_sig]:
        m = _SIG_RE.match(line)
        if not m:
            raise SkipRecord(f"{where}: bad signal line {line!r}")
        g = m.groupdict()
        adczero = int(g["adczero"]) if g["adczero"] else 0
        gain = float(g["gain"]) if g["gain"] else 0.0
        h.file_name.append(g["file"])
        h.fmt.append(g["fmt"])
        h.spf.append(int(g["spf"]) if g["spf"] else 1)
        h.byte_offset.append(int(g["off"]) if g["off"] else 0)
        h.adc_gain.append(gain if gain else 200.0)
        h.baseline.append(int(g["base"]) if g["base"] is not None else adczero)
        h.sig_name.append((g["desc"] or "").strip())
        if g["skew"]:
            raise NotImplementedError("skewed signals")
    return h


def _check_dat_sizes(hea_path: Path, header) -> None:
    """The header's sample count must match what its data files hold (catches truncated .dat files and
    headers that lie about the length)."""
    files: dict[str, list] = {}
    for fn, fmt, off in zip(header.file_name, header.fmt, header.byte_offset or [0] * len(header.fmt)):
        files.setdefault(fn, []).append((str(fmt), off or 0))
    for fn, chans in files.items():
        f = hea_path.parent / fn
        if not f.is_file():
            raise SkipRecord(f"data file {fn} is missing")
        fmt = chans[0][0]
        if fmt not in _BYTES or any(c[0] != fmt for c in chans):
            continue
        want = int(np.ceil(header.sig_len * len(chans) * _BYTES[fmt])) + chans[0][1]
        have = f.stat().st_size
        if have < want:
            raise SkipRecord(f"{fn} holds {have} bytes but the header's {header.sig_len} samples x {len(chans)} "
                             f"signals need {want} (truncated data file or a header that lies about its length)")
        if have > want + 2:
            raise SkipRecord(f"{fn} holds {have} bytes, more than the {want} the header's {header.sig_len} samples "
                             f"need (a header that lies about its length)")


def read_header(hea: Path) -> Header:
    regular_file(hea, "header")
    if os.stat(hea).st_size > 1 << 20:
        raise SkipRecord(f"header {hea.name} is over 1 MB")
    return parse_header(decode_text(hea.read_bytes()), hea.name)


def _data_files(hea: Path, header, root) -> dict:
    """{name in the header: its path}, each a regular file; with ``root``, inside it after resolving links (a
    name like ../../x.dat or a link out of the tree is refused); without, a plain name beside the header."""
    out = {}
    for fn in dict.fromkeys(header.file_name):
        parts = re.split(r"[\\/]", str(fn))
        if os.path.isabs(fn) or re.match(r"^[A-Za-z]:", str(fn)) or (root is None and ".." in parts):
            raise UnsafePath(f"data file {fn!r} named in {hea.name} leaves the record's folder")
        p = hea.parent / fn
        if root is not None:
            p = inside_root(root, p, f"data file {fn!r} named in {hea.name}")
        out[fn] = regular_file(p, "data file")
    return out


def _decode(raw: bytes, fmt: str, n: int) -> tuple[np.ndarray, int]:
    """First n samples of a data file's bytes as int64, and the invalid-sample code."""
    if fmt == "16":
        d = np.frombuffer(raw, dtype="<i2", count=n)
    elif fmt == "61":
        d = np.frombuffer(raw, dtype=">i2", count=n)
    elif fmt == "32":
        d = np.frombuffer(raw, dtype="<i4", count=n)
    elif fmt == "80":
        d = np.frombuffer(raw, dtype=np.uint8, count=n).astype(np.int64) - 128
    elif fmt == "24":
        b = np.frombuffer(raw, dtype=np.uint8, count=3 * n).reshape(-1, 3).astype(np.int64)
        d = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        d = np.where(d >= 1 << 23, d - (1 << 24), d)
    elif fmt == "212":
        npair = (n + 1) // 2
        b = np.frombuffer(raw, dtype=np.uint8, count=3 * npair).reshape(-1, 3).astype(np.int64)
        d = np.empty(2 * npair, dtype=np.int64)
        d[0::2] = b[:, 0] | ((b[:, 1] & 0x0F) << 8)
        d[1::2] = b[:, 2] | ((b[:, 1] & 0xF0) << 4)
        d = np.where(d >= 2048, d - 4096, d)[:n]
    else:  # pragma: no cover
        raise NotImplementedError(fmt)
    return np.asarray(d, dtype=np.int64), _INVALID[fmt]


def read_wfdb(record_path, seconds: float | None = 11.0, root=None) -> tuple[np.ndarray, float, list[str], list[str]]:
    """(physical signal [leads, samples] float64, fs, lead names, header comments) of one WFDB record
    (``record_path`` without extension), at most its first ``seconds`` (None: all). Invalid samples are NaN.
    Every data file the header names must be a regular file (inside ``root`` after resolving links, when given);
    the sampling rate and the size are bounded before anything is read.
    Single-file records in formats 16, 212, 80, 24, 32, 61 are read natively; data in a CinC-style MATLAB file
    (``NAME.mat``, variable ``val``, digital units) with scipy; anything else through wfdb."""
    rec = Path(record_path)
    hea = rec.with_name(rec.name + ".hea")
    try:
        header = read_header(hea)
    except NotImplementedError as e:  # the wfdb library would open files this reader has not checked
        raise SkipRecord(f"{hea.name}: {e} not supported") from None
    if header.n_sig == 0 or not header.sig_len:
        raise SkipRecord("header lists no signal or no sample")
    fs = check_fs(header.fs, hea.name)
    if header.n_sig > MAX_SIGNALS:
        raise SkipRecord(f"{hea.name}: {header.n_sig} signals, more than {MAX_SIGNALS}")
    _data_files(hea, header, root)
    if all(str(fn).lower().endswith(".mat") for fn in header.file_name):
        check_size(header.n_sig, header.sig_len, hea.name)
        return _read_cinc_mat(hea, header), fs, list(header.sig_name), list(header.comments)
    _check_dat_sizes(hea, header)
    if (len(set(header.file_name)) != 1 or len(set(header.fmt)) != 1 or header.fmt[0] not in _NATIVE
            or any(s != 1 for s in header.spf) or len(set(header.byte_offset)) != 1):
        return _read_wfdb_lib(rec, seconds)
    n_sig, fmt = header.n_sig, header.fmt[0]
    n_t = header.sig_len if seconds is None else min(header.sig_len, int(np.ceil(fs * seconds)))
    nbytes = int(np.ceil(n_t * n_sig * _BYTES[fmt])) + 3
    with open(hea.parent / header.file_name[0], "rb") as f:
        f.seek(header.byte_offset[0])
        raw = f.read(nbytes)
    d, invalid = _decode(raw, fmt, n_t * n_sig)
    d = d.reshape(n_t, n_sig).T
    sig = (d - np.asarray(header.baseline, dtype=np.float64)[:, None]) / np.asarray(header.adc_gain)[:, None]
    sig[d == invalid] = np.nan
    return sig, fs, list(header.sig_name), list(header.comments)


def _read_wfdb_lib(rec: Path, seconds):
    import wfdb

    try:
        h = wfdb.rdheader(str(rec))
        sampto = h.sig_len if seconds is None else min(h.sig_len, int(np.ceil(float(h.fs) * seconds)))
        r = wfdb.rdrecord(str(rec), physical=True, sampto=sampto)
    except Exception as e:  # noqa: BLE001
        raise SkipRecord(f"unreadable WFDB record: {type(e).__name__}: {e}") from None
    return (np.asarray(r.p_signal, dtype=np.float64).T, float(r.fs), list(r.sig_name or []),
            list(r.comments or []))


def _read_cinc_mat(hea: Path, header) -> np.ndarray:
    from scipy.io import loadmat

    fn = header.file_name[0]
    f = hea.parent / fn
    regular_file(f, "data file")
    check_file_bytes(f)
    try:  # the variable's shape from its header alone: nothing is decompressed before it is checked
        shapes = mat_shapes(f)
    except Exception as e:  # noqa: BLE001
        raise SkipRecord(f"unreadable MATLAB file {fn}: {type(e).__name__}: {e}") from None
    shape = shapes.get("val")
    if shape is None:
        raise SkipRecord(f"{fn} holds no variable 'val'")
    if len(shape) != 2 or shape[0] != header.n_sig or shape[1] != header.sig_len:
        raise SkipRecord(f"{fn}: 'val' has shape {list(shape)}, the header says {header.n_sig} signals x "
                         f"{header.sig_len} samples (truncated file or a header that lies about its length)")
    budget = header.n_sig * header.sig_len * 8 + 4096  # 'val' as float64 at most, plus its headers
    try:
        held = mat_var_bytes(f, "val", budget)
    except Exception as e:  # noqa: BLE001
        raise SkipRecord(f"unreadable MATLAB file {fn}: {type(e).__name__}: {e}") from None
    if held > budget:
        raise SkipRecord(f"{fn}: 'val' holds more than {budget} bytes once inflated, more than its "
                         f"{header.n_sig} x {header.sig_len} shape needs (a compression bomb?)")
    try:
        val = loadmat(str(f), variable_names=["val"])["val"]
    except Exception as e:  # noqa: BLE001
        raise SkipRecord(f"unreadable MATLAB file {fn}: {type(e).__name__}: {e}") from None
    val = np.asarray(val, dtype=np.float64)
    if val.ndim != 2 or val.shape[0] != header.n_sig:
        raise SkipRecord(f"{fn}: 'val' has shape {val.shape}, header says {header.n_sig} signals")
    if val.shape[1] != header.sig_len:
        raise SkipRecord(f"{fn} holds {val.shape[1]} samples but the header says {header.sig_len} "
                         f"(truncated file or a header that lies about its length)")
    gain = np.array([g if g else 200.0 for g in header.adc_gain], dtype=np.float64)[:, None]
    base = np.array(header.baseline if header.baseline else [0] * header.n_sig, dtype=np.float64)[:, None]
    return (val - base) / gain


def mat_shapes(path) -> dict:
    """{variable name: shape} of a MATLAB file, from the variables' headers alone. For v5 files the first bytes of
    each (possibly zlib-compressed) variable are inflated, never its data (scipy's whosmat inflates it all: 257 MB
    for a 1 MB file claiming 1e9 samples); other versions go through whosmat."""
    import struct
    import zlib

    out = {}
    with open(path, "rb") as f:
        head = f.read(128)
        if len(head) < 128 or head[126:128] not in (b"IM", b"MI") or head[:4] == b"\0\0\0\0":
            from scipy.io import whosmat

            return {name: tuple(shape) for name, shape, _ in whosmat(str(path))}
        end = "<" if head[126:128] == b"IM" else ">"
        while True:
            tag = f.read(8)
            if len(tag) < 8:
                return out
            mdtype, nbytes = struct.unpack(end + "II", tag)
            start = f.tell()
            header = None
            if mdtype == 15:  # miCOMPRESSED: inflate only the start (the matrix's own tag and header)
                d, buf = zlib.decompressobj(), b""
                while len(buf) < 256:
                    chunk = f.read(min(4096, start + nbytes - f.tell()))
                    if not chunk:
                        break
                    buf += d.decompress(chunk, 256 - len(buf))
                if len(buf) >= 8 and struct.unpack(end + "I", buf[:4])[0] == 14:
                    header = buf[8:]
            elif mdtype == 14:  # miMATRIX
                header = f.read(min(nbytes, 256))
            if header:
                name, shape = _mat_matrix_header(header, end)
                out[name] = shape
            f.seek(start + nbytes + (0 if mdtype in (14, 15) else -nbytes % 8))


def mat_var_bytes(path, name: str, limit: int) -> int:
    """The size in bytes of variable ``name`` of a MATLAB v5 file once inflated, counted in chunks of 1 MB without
    keeping them, and stopping past ``limit`` (returns limit + 1 then): a 1 MB miCOMPRESSED element can inflate to
    gigabytes. Other versions (no miCOMPRESSED) return 0: their size is the file's, bounded already."""
    import struct
    import zlib

    with open(path, "rb") as f:
        head = f.read(128)
        if len(head) < 128 or head[126:128] not in (b"IM", b"MI") or head[:4] == b"\0\0\0\0":
            return 0
        end = "<" if head[126:128] == b"IM" else ">"
        while True:
            tag = f.read(8)
            if len(tag) < 8:
                return 0
            mdtype, nbytes = struct.unpack(end + "II", tag)
            start = f.tell()
            if mdtype == 15:
                d, first, total, left, pending, named = zlib.decompressobj(), b"", 0, nbytes, b"", None
                while total <= limit:
                    if not pending:
                        if left <= 0:
                            break
                        pending = f.read(min(1 << 20, left))
                        left -= len(pending)
                        if not pending:
                            break
                    out = d.decompress(pending, 1 << 16)
                    pending = d.unconsumed_tail
                    total += len(out)
                    if named is None:
                        first += out[:256 - len(first)]
                        if len(first) >= 256 or d.eof:
                            named = len(first) >= 16 and struct.unpack(end + "I", first[:4])[0] == 14 and \
                                _mat_matrix_header(first[8:], end)[0] == name
                            if not named:
                                break
                    if d.eof:
                        break
                if named:
                    return total if total <= limit else limit + 1
            elif mdtype == 14:
                if _mat_matrix_header(f.read(min(nbytes, 256)), end)[0] == name:
                    return nbytes if nbytes <= limit else limit + 1
            f.seek(start + nbytes + (0 if mdtype in (14, 15) else -nbytes % 8))


def _mat_matrix_header(b: bytes, end: str):
    """(name, shape) from the sub-elements at the start of a miMATRIX: array flags, dimensions, name."""
    import struct

    def element(pos):
        mdtype, n = struct.unpack(end + "II", b[pos:pos + 8])
        if mdtype >> 16:  # small data element: 4-byte tag, up to 4 bytes of data
            n, mdtype = mdtype >> 16, mdtype & 0xFFFF
            return mdtype, b[pos + 4:pos + 4 + n], pos + 8
        return mdtype, b[pos + 8:pos + 8 + n], pos + 8 + n + (-n % 8)

    _, _, pos = element(0)  # array flags
    _, dims, pos = element(pos)
    _, name, _ = element(pos)
    shape = tuple(struct.unpack(end + f"{len(dims) // 4}i", dims))
    return name.decode("latin-1"), shape


def parse_comments(comments) -> dict[str, str]:
    """CinC-style header comments ('#Dx: 164889003,59118001', '#Age: 60') -> {'Dx': ..., 'Age': ...}."""
    out = {}
    for c in comments:
        if ":" in c:
            k, v = c.split(":", 1)
            out[k.strip()] = v.strip()
    return out


# ------------------------------------------------------------------------------------------------- canonical
def resample(x: np.ndarray, fs: float, target: float = FS) -> np.ndarray:
    check_fs(fs)
    if abs(fs - target) < 1e-9:
        return x
    from scipy.signal import resample_poly

    frac = Fraction(target / fs).limit_denominator(1000)
    return resample_poly(x, frac.numerator, frac.denominator, axis=-1)


def _repair_nonfinite(x: np.ndarray, missing: list) -> int:
    bad_total = 0
    t = np.arange(x.shape[1])
    for li in range(x.shape[0]):
        bad = ~np.isfinite(x[li])
        nb = int(bad.sum())
        if not nb:
            continue
        bad_total += nb
        if nb == x.shape[1]:
            x[li] = 0.0
            missing.append(LEADS[li])
        else:
            x[li, bad] = np.interp(t[bad], t[~bad], x[li, ~bad])
    return bad_total


def to_canonical(sig: np.ndarray, fs: float, names, *, nan_policy: str = "drop", n_samples: int = N_SAMPLES,
                 target_fs: float = FS) -> tuple[np.ndarray, dict]:
    """Physical signal [leads, samples] at ``fs`` with lead ``names`` -> float32 [12, n_samples] at target_fs in the
    canonical order, and what was done (``missing_leads``, ``padded``, ``repaired_samples``, ``orig_fs`` ...)."""
    fs_checked = check_fs(fs)
    sig = np.asarray(sig, dtype=np.float64)
    if sig.ndim != 2 or sig.shape[0] != len(names):
        raise SkipRecord(f"signal shape {sig.shape} does not match {len(names)} lead names")
    orig_samples = int(sig.shape[1])
    # only what the first n_samples at target_fs need (plus 1 s for the resampling filter's edge) is resampled
    sig = sig[:, :int(math.ceil(fs_checked * (n_samples / target_fs + 1.0)))]
    out = np.zeros((len(LEADS), sig.shape[1]), dtype=np.float64)
    found, unknown, flat, duplicates = [], [], set(), []
    for row, name in zip(sig, names):
        lead = canonical_lead(name)
        if lead is None:
            unknown.append(str(name))
            continue
        is_flat = not np.isfinite(row).any() or np.ptp(row[np.isfinite(row)]) == 0
        if lead in found:
            duplicates.append(str(name))
            if lead in flat and not is_flat:  # a flat signal listed first never hides the real lead
                out[LEADS.index(lead)] = row
                flat.discard(lead)
            continue  # otherwise the first occurrence wins
        out[LEADS.index(lead)] = row
        found.append(lead)
        if is_flat:
            flat.add(lead)
    if not found:
        raise SkipRecord(f"no known lead among {list(names)}")
    missing = [lead for lead in LEADS if lead not in found]
    meta = {"orig_fs": fs, "orig_samples": orig_samples, "leads_found": found, "unknown_leads": unknown}
    if duplicates:
        meta["duplicate_leads"] = duplicates
    bad = ~np.isfinite(out)
    meta["repaired_samples"] = 0
    if bad.any():
        if nan_policy != "repair":
            raise SkipRecord(f"{int(bad.sum())} NaN/Inf samples")
        meta["repaired_samples"] = _repair_nonfinite(out, missing)
    missing, derived = complete_leads(out, missing)  # III, aVR, aVL, aVF (and I or II) from the stored limb leads
    if derived:
        meta["derived_leads"] = derived
    if not np.any(out):
        raise SkipRecord("all samples are zero")
    if np.all(np.ptp(out, axis=1) == 0):
        raise SkipRecord("flat record (every lead constant)")
    x = resample(out, fs, target_fs)
    if x.shape[1] >= n_samples:
        x = x[:, :n_samples]
        meta["padded"] = 0
    else:
        meta["padded"] = int(n_samples - x.shape[1])
        x = np.pad(x, ((0, 0), (0, n_samples - x.shape[1])))
    meta["missing_leads"] = sorted(set(missing), key=LEADS.index)
    x = np.ascontiguousarray(x, dtype=np.float32)
    peak = float(np.max(np.abs(x))) if np.isfinite(x).all() else float("inf")
    if not peak <= MAX_ABS_MV:  # a gain like 1e-40: values not finite (or absurd) once scaled
        raise SkipRecord(f"values not finite after scaling (or beyond {MAX_ABS_MV:g} mV): peak {peak:g}; "
                         f"check the gain in the header")
    return x, meta


def _latin1_fallback(err: UnicodeDecodeError):
    return err.object[err.start:err.end].decode("latin-1"), err.end


codecs.register_error("melp_latin1_fallback", _latin1_fallback)


def decode_text(raw: bytes) -> str:
    """Bytes of a dataset text file as str: UTF-8, each byte that is not valid UTF-8 read as Latin-1 (a stray
    non-UTF-8 byte never fails the file nor garbles its valid UTF-8 text)."""
    return raw.decode("utf-8", errors="melp_latin1_fallback")


MAX_CSV_LINE = 1 << 20  # a listing row longer than this (1 MB) is not a row
MAX_CSV_BYTES = 4 << 30  # a listing file larger than this is refused outright
CSV_CHUNK = 32 << 20  # rows are parsed in chunks of about this many bytes


def read_csv(path, **kw):
    """pandas.read_csv that survives non-UTF-8 bytes (falls back to Latin-1) and names the file on errors. The file
    is read in bounded chunks of rows (CSV_CHUNK bytes, cut between rows outside quotes): a row longer than
    MAX_CSV_LINE, a NUL byte (a binary or zero-filled file) or a file above MAX_CSV_BYTES is a ValueError naming
    the file and line, found after reading at most one row, never the whole file."""
    import io

    import pandas as pd

    path = Path(path)
    root = kw.pop("root", None)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    try:
        if root is not None:
            inside_root(root, path, str(path))
        regular_file(path)
    except SkipRecord as e:
        raise ValueError(f"{path}: {e}") from None
    size = os.stat(path).st_size
    if size > MAX_CSV_BYTES:
        raise ValueError(f"{path} is {size} bytes, more than the {MAX_CSV_BYTES} a listing may have")

    def parse(rows: list[bytes]):
        try:
            return pd.read_csv(io.StringIO(decode_text(b"".join(rows))), **kw)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"cannot parse {path}: {type(e).__name__}: {e}") from None

    frames, header, rows, nbytes, quotes = [], None, [], 0, 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(iter(lambda: f.readline(MAX_CSV_LINE + 1), b""), 1):
            if len(line) > MAX_CSV_LINE:
                raise ValueError(f"{path}: line {lineno} is longer than {MAX_CSV_LINE} bytes (a damaged or "
                                 f"non-CSV file)")
            if b"\0" in line:
                raise ValueError(f"{path}: line {lineno} holds NUL bytes (a binary or zero-filled file, not a CSV "
                                 f"listing)")
            rows.append(line)
            nbytes += len(line)
            quotes += line.count(b'"')
            if quotes % 2:
                continue  # inside a quoted field that spans lines
            if header is None:  # the first complete record is the header, repeated before every chunk
                header, rows, nbytes = b"".join(rows), [], 0
            elif nbytes >= CSV_CHUNK:
                frames.append(parse([header, *rows]))
                rows, nbytes = [], 0
    if header is None:
        return parse(rows)
    if rows or not frames:
        frames.append(parse([header, *rows]))
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index="index_col" not in kw)


def load_csv_wfdb_item(root, item: "Item", nan_policy: str = "drop"):
    """Read a record whose path came from a dataset CSV (checked to stay inside root, .hea too) -> canonical."""
    stem = safe_path(root, item.path)
    safe_path(root, item.path + ".hea")
    sig, fs, names, _ = read_wfdb(stem, root=root)
    return to_canonical(sig, fs, names, nan_policy=nan_policy)
