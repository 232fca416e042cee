"""The real-recording fixtures are in the repository (and pydicom's ECG in the installed pydicom): these tests fail,
never skip, when one is missing, so the beat detector's real-recording checks cannot go silently unrun. Also the
helpers that make tests repeatable (fixed, printed seeds) and keep CI from skipping (skip_or_fail)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import helpers
from helpers import DCM, FIXTURES, MIT, MIT_FILES

ROOT = Path(__file__).resolve().parents[1]


def test_fixture_files_are_present_with_their_licence_note():
    missing = [str(p) for p in (*MIT_FILES, FIXTURES / "README.md") if not p.is_file()]
    assert not missing, f"fixture files missing from the repository: {missing}"
    note = (FIXTURES / "README.md").read_text()
    assert "Open Data Commons Attribution" in note and "Moody GB, Mark RG" in note  # ODC-By attribution
    assert DCM.is_file(), f"pydicom's waveform_ecg.dcm not found in the installed pydicom (looked for {DCM})"


def test_mitbih_excerpt_reads_as_five_minutes_of_record_100():
    import wfdb

    rec = wfdb.rdrecord(str(MIT))
    ann = wfdb.rdann(str(MIT), "atr")
    assert rec.fs == 360 and rec.sig_name == ["MLII", "V5"] and rec.p_signal.shape == (108_000, 2)
    assert np.isfinite(rec.p_signal).all() and 0.5 < np.ptp(rec.p_signal[:, 0]) < 5.0  # mV
    beats = [s for s in ann.symbol if s in "NLRBAaJSVrFejnE/fQ?"]
    assert len(beats) == 371 and beats.count("A") == 4
    digital = wfdb.rdrecord(str(MIT), physical=False).d_signal.astype(np.int64)
    sums = [int((v.sum() + 32768) % 65536 - 32768) for v in digital.T]
    assert rec.checksum == sums == [-20101, -20894]  # the header's checksums are the excerpt's (WFDB: 16-bit sums)


def test_pydicom_ecg_has_its_annotated_beats():
    import pydicom

    ds = pydicom.dcmread(str(DCM))
    assert ds.WaveformSequence[0].SamplingFrequency == 1000 and ds.waveform_array(0).shape == (10_000, 12)
    from melp_fast.testing.beat_cases import load_dicom_annotated

    assert load_dicom_annotated(DCM)[2].size == 10


def test_seeds_are_fixed_by_default_and_named_by_key():
    a, b = helpers.rng_for("x", 1).integers(0, 2**31, 4), helpers.rng_for("x", 1).integers(0, 2**31, 4)
    assert np.array_equal(a, b) and not np.array_equal(a, helpers.rng_for("x", 2).integers(0, 2**31, 4))
    code = "import helpers; print(helpers.base_seed(), helpers.seed_for('k'))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    env.pop(helpers.SEED_ENV, None)

    def run(**extra):
        r = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    default = run()
    assert default == run() and default[0] == str(helpers.DEFAULT_SEED)
    assert run(MELP_TEST_SEED="7") == run(MELP_TEST_SEED="7") != default
    fresh = run(MELP_TEST_SEED="random")
    assert run(MELP_TEST_SEED=fresh[0]) == fresh  # a fresh base seed is replayed by giving it back


def test_a_failure_names_its_seed_and_the_replay_command(tmp_path):
    (tmp_path / "test_x.py").write_text("from helpers import rng_for\n\ndef test_draws():\n"
                                        "    assert rng_for('test_draws').random() < 0\n")
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    env = dict(os.environ, MELP_TEST_SEED="123",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_x.py")],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 1, r.stdout
    assert "base seed 123 (drawn in this test: test_draws); replay: MELP_TEST_SEED=123 python -m pytest" in r.stdout


def test_skip_or_fail_fails_under_ci(tmp_path):
    (tmp_path / "test_y.py").write_text("from helpers import skip_or_fail\n\ndef test_cannot():\n"
                                        "    skip_or_fail('no launcher')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path / "test_y.py")]
    local = subprocess.run(cmd, cwd=tmp_path, env={**env, "CI": ""}, capture_output=True, text=True)
    ci = subprocess.run(cmd, cwd=tmp_path, env={**env, "CI": "true"}, capture_output=True, text=True)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    assert ci.returncode == 1 and "cannot run under CI=true: no launcher" in ci.stdout, ci.stdout
