"""Memory bombs: small files that inflate to gigabytes are refused from their headers, in bounded memory.

Each bomb is read in a child process whose address space is capped (RLIMIT_AS: its size after imports + 1.5 GB),
so a regression fails the test instead of exhausting the machine; the child reports its own peak RSS growth
(VmHWM), which must stay under 500 MB, and the outcome (quarantined with a reason, or a one-line error).
- a MATLAB .mat whose 'val' has the header's shape but whose compressed data element inflates to 1 GB;
- a deflated DICOM (transfer syntax 1.2.840.10008.1.2.1.99) whose dataset inflates to 1 GB;
- a 500 MB zero-filled ptbxl_database.csv (a sparse file: no disk is used);
- a text encoder config.json asking for 100,000 layers (train --text-encoder, and an exported model's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from helpers import crafted_mat

ROOT = Path(__file__).resolve().parent.parent
DCM = ROOT.parent / "shared" / "data" / "dicom" / "waveform_ecg.dcm"
BOMB = 1 << 30  # inflated bytes
SEED = 30
print(f"test_memory_bombs: seed {SEED}")

CHILD = """
import resource, sys, json
import numpy, scipy.io, scipy.signal, pandas
from melp_fast.data.sources import SkipRecord
from melp_fast.data.sources.single import read_any
from melp_fast.data.sources import ptbxl
def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
vm = status_kb("VmSize") * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 29), vm + (3 << 29)))
base = status_kb("VmRSS")
what, arg = sys.argv[1], sys.argv[2]
try:
    if what == "record":
        read_any(arg)
        out = "READ"
    else:
        ptbxl.list_items(arg)
        out = "READ"
except SkipRecord as e:
    out = "SKIP " + str(e)
except ValueError as e:
    out = "ERROR " + str(e)
except MemoryError:
    out = "MEMORY"
print(out)
print("GROWTH_MB", (status_kb("VmHWM") - base) / 1024)
"""


def child(what, path):
    r = subprocess.run([sys.executable, "-c", CHILD, what, str(path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    return lines[0], float(lines[-1].split()[1])


def mat_bomb(path: Path, n_sig: int, n_samples: int, data_bytes: int):
    """A v5 .mat whose 'val' says int16 [n_sig, n_samples] and whose (compressed) data element holds data_bytes."""
    crafted_mat(path, n_sig, n_samples, data_bytes, int16=True, level=1)
    (path.with_suffix(".hea")).write_text(f"{path.stem} {n_sig} 500 {n_samples}\n" + "".join(
        f"{path.name} 16+24 1000/mV 16 0 0 0 0 {lead}\n" for lead in ["I", "II", "III", "aVR", "aVL", "aVF",
                                                                     "V1", "V2", "V3", "V4", "V5", "V6"][:n_sig]))
    return path.with_suffix(".hea")


def test_a_compressed_mat_that_inflates_to_a_gigabyte_is_quarantined(tmp_path):
    honest = mat_bomb(tmp_path / "honest.mat", 12, 5000, 12 * 5000 * 2)
    from scipy.io import loadmat

    assert loadmat(str(tmp_path / "honest.mat"))["val"].shape == (12, 5000)  # the crafting makes real files
    bomb = mat_bomb(tmp_path / "bomb.mat", 12, 5000, BOMB)
    assert (tmp_path / "bomb.mat").stat().st_size < 5_000_000
    outcome, growth = child("record", honest)  # all zeros: skipped as flat, not for its size
    assert outcome.startswith(("READ", "SKIP")) and "holds more than" not in outcome, outcome
    outcome, growth = child("record", bomb)
    assert outcome.startswith("SKIP") and "bomb.mat: 'val' holds more than" in outcome, outcome
    assert growth < 500, growth


def deflated_dicom(path: Path, extra_bytes: int) -> Path:
    """pydicom's waveform ECG saved deflated, with a private OB element of extra_bytes zeros appended inside the
    deflated dataset (streamed: the test never holds it)."""
    import io

    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(str(DCM))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    from melp_fast.data.sources.single import _dicom_meta_end

    start, syntax = _dicom_meta_end(io.BytesIO(raw))
    assert syntax == DeflatedExplicitVRLittleEndian.encode()
    dataset = zlib.decompress(raw[start:], -zlib.MAX_WBITS)
    comp = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [raw[:start], comp.compress(dataset)]
    if extra_bytes:
        parts.append(comp.compress(np.array([0x7FE1, 0x1010], "<u2").tobytes() + b"OB\0\0"
                                   + np.array([extra_bytes], "<u4").tobytes()))
        zeros, left = bytes(1 << 24), extra_bytes
        while left:
            k = min(left, len(zeros))
            parts.append(comp.compress(zeros[:k]))
            left -= k
    parts.append(comp.flush())
    path.write_bytes(b"".join(parts))
    return path


@pytest.mark.skipif(not DCM.is_file(), reason="shared/data/dicom not present")
def test_a_deflated_dicom_that_inflates_to_a_gigabyte_is_quarantined(tmp_path):
    small = deflated_dicom(tmp_path / "small.dcm", 1 << 20)
    outcome, _ = child("record", small)
    assert outcome == "READ", outcome  # the crafting makes a real deflated DICOM that reads
    bomb = deflated_dicom(tmp_path / "bomb.dcm", BOMB)
    assert bomb.stat().st_size < 5_000_000
    outcome, growth = child("record", bomb)
    assert outcome.startswith("SKIP") and "bomb.dcm: its deflated dataset inflates to more than" in outcome, outcome
    assert growth < 500, growth


def test_a_zero_filled_listing_is_one_line_in_bounded_memory(tmp_path):
    root = tmp_path / "ptbxl"
    root.mkdir()
    with open(root / "ptbxl_database.csv", "wb") as f:
        f.truncate(500 << 20)  # sparse: 500 MB of zeros, no disk used
    outcome, growth = child("listing", root)
    assert outcome.startswith("ERROR") and "ptbxl_database.csv: line 1 is longer than" in outcome, outcome
    assert growth < 500, growth
    from melp_fast.cli import main

    assert main(["preprocess", "--source", "ptbxl", "--root", str(root), "--out", str(tmp_path / "store"), "--workers", "1",
                 "--no-progress"]) == 2
    assert not (tmp_path / "store" / "meta.json").exists()


def test_a_listing_with_nul_bytes_is_refused(tmp_path):
    from melp_fast.data.sources.common import read_csv

    (tmp_path / "x.csv").write_bytes(b"ecg_id,scp_codes\n1,{}\n2,\0\0\0\n")
    with pytest.raises(ValueError, match=r"x.csv: line 3 holds NUL bytes"):
        read_csv(tmp_path / "x.csv")


def test_a_text_encoder_asking_for_100000_layers_is_refused_before_building(tmp_path, capsys):
    from melp_fast.cli import main
    from melp_fast.errors import UserError
    from melp_fast.inference.export import load_model

    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 100_000,
                                                 "hidden_size": 128, "num_attention_heads": 2,
                                                 "intermediate_size": 512, "vocab_size": 30522}))
    assert main(["train", "--preset", "tiny", "--text-encoder", str(enc), "--out", str(tmp_path / "run")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "num_hidden_layers is 100000" in line and str(enc) in line, line
    model = tmp_path / "model"
    (model / "text_encoder").mkdir(parents=True)
    (model / "text_encoder" / "config.json").write_text((enc / "config.json").read_text())
    from melp_fast.config import get_preset

    (model / "config.json").write_text(get_preset("tiny").to_json())
    (model / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(UserError, match="num_hidden_layers is 100000"):
        load_model(model)
