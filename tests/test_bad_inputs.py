"""Adversarial inputs: every file a reader opens is a regular file inside --root, sizes and
rates are bounded before anything is read or resampled, bad values quarantine the record, and user errors of
`melp-fast preprocess` / `--ckpt` are one line with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from melp_fast.data.sources.single import read_any
from melp_fast.data.store import Store

from helpers import crafted_mat  # noqa: E402
from test_sources import DCM, mitbih  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("recordings")
CLI = "import sys; from melp_fast.cli import main; sys.exit(main(sys.argv[1:]))"


def cli(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    env.pop("MELP_DEBUG", None)
    return subprocess.run([sys.executable, "-c", CLI, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for w in words:
        assert str(w) in last, (w, last)
    return last


def write_record(d: Path, name: str, *, start_s=0.0, gain=200.0, dat=None, comments=(), seconds=10.0):
    """A 2-lead WFDB record (format 16) from MIT-BIH 100 at 360 Hz; ``dat``: the data file name the header gives
    (default NAME.dat, written beside it)."""
    d.mkdir(parents=True, exist_ok=True)
    sig = mitbih(start_s, seconds)
    digital = np.round(sig * 200.0).astype("<i2")
    dat = dat or f"{name}.dat"
    if dat == f"{name}.dat":
        (d / dat).write_bytes(digital.T.tobytes())
    n = digital.shape[1]
    lines = [f"{name} 2 360 {n}"] + [f"{dat} 16 {gain:g}/mV 16 0 0 0 0 {lead}" for lead in ("MLII", "V5")]
    lines += [f"#{c}" for c in comments]
    (d / f"{name}.hea").write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    return digital


def build(root, out, *extra, source="wfdb-dir", timeout=300):
    return cli("preprocess", "--source", source, "--root", root, "--out", out, "--workers", "1", "--no-progress",
               *extra, timeout=timeout)


def quarantine(out) -> dict:
    return {q["record_id"]: q["reason"] for q in Store(out).quarantine()}


# ------------------------------------------------------------------------------------------------ case 4
def test_data_files_leaving_the_root_are_quarantined(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_record(root / "ok", "good")
    write_record(outside, "x")  # a valid record outside the root
    write_record(root / "a" / "b", "escape", dat="../../../outside/x.dat")
    write_record(root / "a", "linked")
    (root / "a" / "linked.dat").unlink()
    os.symlink(outside / "x.dat", root / "a" / "linked.dat")
    write_record(root / "a", "inside_link")  # a link that stays inside the root is fine
    (root / "a" / "inside_link.dat").unlink()
    os.symlink(root / "ok" / "good.dat", root / "a" / "inside_link.dat")
    out = tmp_path / "store"
    r = build(root, out)
    assert r.returncode == 0, r.stderr[-3000:]
    q = quarantine(out)
    assert sorted(Store(out).ids) == ["good", "inside_link"]
    assert set(q) == {"escape", "linked"}
    assert "outside/x.dat" in q["escape"] and "leaves the root" in q["escape"]
    assert "leaves the root" in q["linked"]


# ------------------------------------------------------------------------------------------------ case 6
def test_a_fifo_named_dcm_never_blocks(tmp_path):
    root = tmp_path / "root"
    write_record(root, "good")
    os.mkfifo(root / "x.dcm")
    os.mkfifo(root / "y.hea")
    out = tmp_path / "store"
    r = build(root, out, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert Store(out).ids == ["good"]
    q = quarantine(out)
    assert "not a regular file" in q["x"], q
    assert "y" in q


# ------------------------------------------------------------------------------------------------ case 5
def dicom_with_fs(tmp_path: Path, fs) -> Path:
    import pydicom

    ds = pydicom.dcmread(str(DCM))
    for w in ds.WaveformSequence:
        w.SamplingFrequency = fs
    p = tmp_path / f"fs_{fs}.dcm"
    ds.save_as(str(p))
    return p


def mat_claiming(path: Path, n_samples: int, n_sig: int = 1):
    """A MATLAB v5 file holding 'val' int8 [n_sig, n_samples] of zeros, zlib-compressed (about 1 KB per MB)."""
    crafted_mat(path, n_sig, n_samples, n_sig * n_samples, int16=False, level=9)


@pytest.fixture(scope="module")
def huge_mat(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mat")
    mat_claiming(d / "big.mat", 10**9)
    return d / "big.mat"


def test_crafted_mat_is_a_real_matlab_file(tmp_path):
    from scipy.io import loadmat, whosmat

    mat_claiming(tmp_path / "small.mat", 1000, 2)
    assert whosmat(str(tmp_path / "small.mat")) == [("val", (2, 1000), "int8")]
    assert loadmat(str(tmp_path / "small.mat"))["val"].shape == (2, 1000)


@pytest.mark.parametrize("compressed", [True, False])
def test_mat_shapes_from_headers_match_scipy(tmp_path, compressed):
    from scipy.io import savemat, whosmat

    from melp_fast.data.sources.common import mat_shapes

    rng = np.random.default_rng(3)
    p = tmp_path / "m.mat"
    savemat(str(p), {"val": rng.integers(-999, 999, (12, 5000)).astype(np.int16), "x": rng.random(3),
                     "cube": rng.random((2, 3, 4))}, do_compression=compressed)
    assert mat_shapes(p) == {name: tuple(shape) for name, shape, _ in whosmat(str(p))}


MEMORY_CASE = """
import sys
from melp_fast.data.sources import SkipRecord
from melp_fast.data.sources.single import read_any
import numpy, scipy.io, scipy.signal, pydicom
def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
base = status_kb("VmRSS")
try:
    read_any(sys.argv[1])
    print("READ")
except SkipRecord as e:
    print("SKIP", e)
# VmHWM: this process image's peak RSS (ru_maxrss would carry the forking parent's peak across exec)
print("GROWTH_MB", (status_kb("VmHWM") - base) / 1024)
"""


def memory_case(path):
    r = subprocess.run([sys.executable, "-c", MEMORY_CASE, str(path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    return lines[0], float(lines[-1].split()[1])


@pytest.mark.parametrize("fs", [0.2, 0.05, 0, float("inf")])
def test_dicom_sampling_rate_out_of_bounds_is_skipped_in_bounded_memory(tmp_path, fs):
    p = dicom_with_fs(tmp_path, fs)
    outcome, growth = memory_case(p)
    assert outcome.startswith("SKIP") and "sampling" in outcome, outcome
    assert growth < 500, growth


def test_mat_claiming_1e9_samples_is_skipped_in_bounded_memory(tmp_path, huge_mat):
    assert huge_mat.stat().st_size < 2_000_000
    for claim in (10**9, 5000):  # a header that says so, and one that lies about the .mat it names
        d = tmp_path / str(claim)
        d.mkdir()
        os.symlink(huge_mat, d / "big.mat")
        (d / "big.hea").write_text(f"big 1 500 {claim}\nbig.mat 16+24 1000/mV 16 0 0 0 0 II\n")
        outcome, growth = memory_case(d / "big.hea")
        assert outcome.startswith("SKIP") and ("1000000000" in outcome), outcome
        assert growth < 500, growth


# ------------------------------------------------------------------------------------------------ case 7
def test_gain_that_scales_to_non_finite_values_is_quarantined(tmp_path):
    root = tmp_path / "root"
    write_record(root, "good")
    write_record(root, "tiny_gain", gain=1e-40)
    out = tmp_path / "store"
    r = build(root, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert Store(out).ids == ["good"]
    assert "not finite" in quarantine(out)["tiny_gain"]


def test_non_ascii_header_comments_are_kept(tmp_path):
    write_record(tmp_path, "rec", comments=["Report: Rythme sinusal, café crème, ÄÖÜ, 心电图"])
    _, meta = read_any(tmp_path / "rec.hea")
    assert "café crème" in meta["report"].lower() and "心电图" in meta["report"], meta["report"]
    assert any("ÄÖÜ" in c for c in meta["comments"])


def test_records_with_the_same_name_in_two_folders_get_two_ids(tmp_path):
    root = tmp_path / "root"
    write_record(root / "site1", "rec", start_s=0)
    write_record(root / "site2", "rec", start_s=20)
    out = tmp_path / "store"
    r = build(root, out)
    assert r.returncode == 0, r.stderr[-3000:]
    s = Store(out)
    assert len(s) == 2 and len(set(s.ids)) == 2
    assert {r["path"] for r in s.records} == {"site1/rec", "site2/rec"}


@pytest.mark.parametrize("limit", ["-1", "-3"])
def test_negative_limit_is_an_error(tmp_path, limit):
    root = tmp_path / "root"
    write_record(root, "a")
    write_record(root, "b")
    r = build(root, tmp_path / "store", "--limit", limit)
    one_line_error(r, "--limit")
    assert not (tmp_path / "store").exists()


def test_shard_size_zero_is_one_line_and_leaves_nothing(tmp_path):
    root = tmp_path / "root"
    write_record(root, "a")
    r = build(root, tmp_path / "store", "--shard-size", "0")
    one_line_error(r, "--shard-size")
    assert not (tmp_path / "store").exists()


def test_a_store_refuses_a_build_from_another_source_or_root(tmp_path):
    root1, root2 = tmp_path / "root1", tmp_path / "root2"
    write_record(root1, "a")
    write_record(root2, "b", start_s=30)
    out = tmp_path / "store"
    assert build(root1, out).returncode == 0
    r = build(root1, out)
    assert r.returncode == 0 and "already complete" in r.stderr
    one_line_error(build(root2, out), str(out), "root")
    one_line_error(build(root1, out, source="cpsc2018"), str(out), "source")
    assert Store(out).ids == ["a"]


def test_a_second_build_into_a_store_being_built_stops_at_once(tmp_path):
    from melp_fast.data.preprocess import store_lock

    root = tmp_path / "root"
    write_record(root, "a")
    out = tmp_path / "store"
    with store_lock(out):  # a build in progress (here: this process holds its lock)
        r = build(root, out)
        one_line_error(r, str(out), "being built")
    assert not (out / "meta.json").exists()
    r = build(root, out)  # once it is released, the build goes ahead
    assert r.returncode == 0, r.stderr[-3000:]
    assert Store(out).ids == ["a"]


# ------------------------------------------------------------------------------------------------ case 8
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from helpers import tiny_cfg

    from melp_fast.inference.export import export_model, untrained_model

    cfg = tiny_cfg()
    path = tmp_path_factory.mktemp("export") / "model"
    export_model(untrained_model(cfg, 0), cfg, path)
    return path


def broken_copy(exported, tmp_path, how):
    import shutil

    d = tmp_path / how
    shutil.copytree(exported, d)
    if how == "truncated":
        f = d / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "wrong_types":
        cfg = json.loads((d / "config.json").read_text())
        cfg["model"]["width"] = "wide"
        (d / "config.json").write_text(json.dumps(cfg))
    elif how == "unknown_section":
        cfg = json.loads((d / "config.json").read_text())
        cfg["preset"] = "huge"
        cfg["modle"] = cfg.pop("model")
        (d / "config.json").write_text(json.dumps(cfg))
    elif how == "not_json":
        (d / "config.json").write_text("{not json")
    return d


@pytest.mark.parametrize("how,words", [("truncated", ["model.safetensors"]), ("wrong_types", ["model.width"]),
                                       ("unknown_section", ["modle"]), ("not_json", ["config.json"])])
def test_broken_exported_models_are_one_line_errors(exported, tmp_path, how, words):
    from melp_fast.errors import UserError
    from melp_fast.inference.export import load_model

    d = broken_copy(exported, tmp_path, how)
    with pytest.raises(UserError) as e:
        load_model(d)
    assert str(d) in str(e.value) and "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_empty_ckpt_folder_through_the_command(exported, tmp_path):
    (tmp_path / "empty").mkdir()
    store = tmp_path / "nostore"
    one_line_error(cli("zero-shot", "--model", tmp_path / "empty", "--store", store), tmp_path / "empty")
    assert load_ok(exported)


def load_ok(path) -> bool:
    from melp_fast.inference.export import load_model

    return load_model(path).logit_scale.numel() == 1


@pytest.mark.parametrize("how", ["link_out", "fifo"])
def test_a_dataset_csv_must_be_a_regular_file_inside_the_root(tmp_path, how):
    from test_sources import make_ptbxl_tree

    root = make_ptbxl_tree(tmp_path)
    csv = root / "ptbxl_database.csv"
    if how == "link_out":
        outside = tmp_path / "elsewhere.csv"
        csv.rename(outside)
        os.symlink(outside, csv)
    else:
        csv.unlink()
        os.mkfifo(csv)
    r = build(root, tmp_path / "store", source="ptbxl", timeout=120)
    one_line_error(r, "ptbxl_database.csv", "leaves the root" if how == "link_out" else "not a regular file")
    assert not (tmp_path / "store").exists()
