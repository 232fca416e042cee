"""Hostile conditions, the smaller items: disk full is one line (exit 2), a finished store on a read-only mount is
"already complete", a flat duplicate lead listed first never hides the real one, and skip reasons are counted by what
went wrong, not under "FILE"."""

import errno
import json
import os

import numpy as np
import pytest

from melp_fast.errors import run_main

SEED = 30
print(f"test_small_hostile: seed {SEED}")


def test_disk_full_is_one_line(capsys):
    def main(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/store/shards/00003.partial/signals.f16")

    assert run_main(main, []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: No space left on device writing /data/store/shards/00003"), err
    with pytest.raises(OSError):  # any other OSError is not hidden
        run_main(lambda argv: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")), [])


def test_a_finished_store_on_a_read_only_mount_is_already_complete(tmp_path, monkeypatch, capsys):
    from melp_fast.data import preprocess
    from melp_fast.data.store import build_synthetic_store
    from melp_fast.testing.common import store_digest

    store = build_synthetic_store(tmp_path / "store", "test", 4, SEED)
    (tmp_path / "root").mkdir()
    digest = store_digest(store.path)
    real_open = os.open

    def read_only(path, flags, *a):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(preprocess.os, "open", read_only)
    got = preprocess.build_store(store.path, "wfdb-dir", tmp_path / "root", progress=False)
    assert len(got) == 4 and "already complete" in capsys.readouterr().err
    assert store_digest(store.path) == digest
    with pytest.raises(Exception, match="not writable"):  # an unfinished one cannot be built there: one line
        preprocess.build_store(tmp_path / "new", "wfdb-dir", tmp_path / "root", progress=False)


def test_a_flat_lead_listed_first_does_not_hide_the_real_one():
    from melp_fast.data.sources.common import to_canonical

    rng = np.random.default_rng(SEED)
    real = np.sin(np.linspace(0, 60, 5000)) + 0.01 * rng.standard_normal(5000)
    sig = np.stack([np.full(5000, 0.5), real, real * 0.5])
    x, meta = to_canonical(sig, 500.0, ["Lead II", "II", "V1"])
    assert np.ptp(x[1]) > 1.0, "the flat 'Lead II' replaced the real II"
    assert meta["duplicate_leads"] == ["II"]
    x2, _ = to_canonical(np.stack([real, real * 2, real]), 500.0, ["II", "II", "V1"])  # two real ones: the first
    np.testing.assert_allclose(x2[1], to_canonical(np.stack([real, real]), 500.0, ["II", "V1"])[0][1])


def test_skip_reasons_are_counted_by_what_went_wrong():
    from melp_fast.data.store import _reason_key

    assert _reason_key("fs_0.2.dcm: sampling frequency 0.2 Hz is outside [50, 20000] Hz") == \
        "sampling frequency N.N Hz is outside [N, N] Hz"
    assert _reason_key("bomb.dcm: its deflated dataset inflates to more than 67108864 bytes") == \
        "its deflated dataset inflates to more than N bytes"
    assert _reason_key("unreadable DICOM file x.dcm: ValueError: bad") == "unreadable DICOM file FILE"
    assert "FILE" != _reason_key("a.dcm: holds no waveform")
    json.dumps(_reason_key("x"))
