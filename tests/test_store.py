"""The preprocess command and the store: outputs, quarantine, a killed build resumed to an identical store, and
the Dataset / DataLoader over it (batched reads, lead masking, tokenisation cache)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from melp_fast.data.dataset import Collate, ECGTextDataset, lead_mask
from melp_fast.data.signal import preprocess as preprocess_signal
from melp_fast.data.store import Store, write_store
from melp_fast.testing.common import store_digest
from melp_fast.data.preprocess import build_store, main as preprocess_main

from test_sources import DCM, dicom_12lead_500, make_cinc_tree, make_mimic_tree, make_ptbxl_tree  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("recordings")


def run_preprocess(args, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "melp_fast.cli", "preprocess", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_mimic_store_contents_and_quarantine(tmp_path):
    root = make_mimic_tree(tmp_path)
    out = tmp_path / "store"
    assert preprocess_main(["--source", "mimic-iv-ecg", "--root", str(root), "--out", str(out), "--workers", "1",
                            "--shard-size", "4", "--no-progress"]) == 0
    s = Store(out)
    assert len(s) == 3 and s.ids == ["40000001", "40000002", "40000005"]
    assert len(s.meta["shards"]) == 4 and s.meta["counts"]["items"] == 13 and s.meta["counts"]["skipped"] == 10
    q = {e["record_id"]: e for e in s.quarantine()}
    assert sorted(q) == sorted(set(f"400000{k:02d}" for k in range(1, 14)) - set(s.ids))
    assert "'..'" in q["40000009"]["reason"] and q["40000009"]["path"].startswith("files/../")
    assert s.labels is None and s.classes == []
    reasons = s.meta["counts"]["reasons"]
    assert reasons["N NaN/Inf samples"] == 1 and reasons["empty report"] == 1 and sum(reasons.values()) == 10
    assert s.reports[1] == "sinus rhythm with 1st degree a-v block. left axis deviation. abnormal ecg."
    # the stored signal: canonical order, 4 Hz high-pass, min-max to [0, 1], float16
    sig, spans, nb = s.read([0])
    ref = preprocess_signal(dicom_12lead_500(), 500, 4.0)
    assert sig.dtype == np.float16 and sig.shape == (1, 12, 5000)
    np.testing.assert_allclose(sig[0].astype(np.float32), ref, atol=2e-3)
    assert 8 <= nb[0] <= 12 and (spans[0, : nb[0], 1] > spans[0, : nb[0], 0]).all() and (spans[0, nb[0]:] == -1).all()
    # repair policy keeps the NaN record, counted as repaired
    out2 = tmp_path / "store-repair"
    build_store(out2, "mimic-iv-ecg", root, workers=1, shard_size=64, nan_policy="repair", progress=False)
    s2 = Store(out2)
    assert "40000003" in s2.ids and s2.meta["counts"]["repaired"] == 1


def test_ptbxl_and_cinc_stores_have_tasks(tmp_path):
    out = tmp_path / "ptbxl-store"
    s = build_store(out, "ptbxl", make_ptbxl_tree(tmp_path), workers=1, shard_size=2, progress=False)
    assert s.ids == ["1", "2", "3"] and s.classes == ["CD", "HYP", "MI", "NORM", "STTC"]
    np.testing.assert_array_equal(s.labels, [[0, 0, 0, 1, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 0]])
    assert s.task_labels("ptbxl-sub").shape == (3, 23) and s.task_labels("ptbxl-rhythm").shape == (3, 12)
    assert [r["strat_fold"] for r in s.records] == [3, 9, 10]
    assert s.indices_of(["3", "00001_hr"]).tolist() == [2, 0]
    assert s.records[1]["info"]["orig_fs"] == 360 and "I" in s.records[1]["info"]["missing_leads"]
    s = build_store(tmp_path / "csn", "csn", make_cinc_tree(tmp_path, "JS", ["426177001", "164889003"]),
                    workers=1, progress=False)
    assert s.classes == ["SB", "SR", "AFIB", "GSVT"] and s.labels.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0]]
    assert s.meta["tasks"]["csn-all"]["classes"] == ["164889003", "426177001"]
    assert {e["record_id"] for e in s.quarantine()} == {"JS0003", "JS0004", "JS0005"}


def test_killed_preprocess_resumes_to_an_identical_store(tmp_path):
    root = make_mimic_tree(tmp_path)
    args = ["--source", "mimic-iv-ecg", "--root", str(root), "--shard-size", "3", "--no-progress"]
    killed = tmp_path / "killed"
    r = run_preprocess([*args, "--out", str(killed), "--workers", "1"], {"MELP_FAST_TEST_KILL_AFTER_SHARDS": "2"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert (killed / "shards" / "00001").is_dir() and (killed / "shards" / "00002.partial").is_dir()
    assert not (killed / "meta.json").exists()
    with pytest.raises(FileNotFoundError, match="resume"):
        Store(killed)
    r = run_preprocess([*args, "--out", str(killed), "--workers", "2"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert not list((killed / "shards").glob("*.partial"))
    one = tmp_path / "one-go"
    build_store(one, "mimic-iv-ecg", root, workers=1, shard_size=3, progress=False)
    assert store_digest(killed) == store_digest(one)
    # a resumed build with other settings is refused, a finished one is left alone
    (killed / "meta.json").rename(killed / "meta.bak")
    r = run_preprocess([*args[:-2], "4", "--no-progress", "--out", str(killed)])
    assert r.returncode == 2 and "plan.json differs" in r.stderr


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from melp_fast.data import synthetic

    d = tmp_path_factory.mktemp("syn")

    def recs():
        for i in range(24):
            r = synthetic.generate_record(i, 3)
            yield r.signal, r.report if i % 5 else "sinus rhythm. normal ecg.", r.labels

    return write_store(d / "s", recs(), 24, leads=synthetic.LEADS, classes=synthetic.CLASSES, shard_size=10,
                       progress=False)


def test_batched_reads_match_items_and_masking(small_store):
    s = small_store
    assert [x["n"] for x in s.meta["shards"]] == [10, 10, 4]
    ds = ECGTextDataset(s, lead_mask_p=0.5, seed=7)
    idx = [13, 2, 9, 23, 10, 2]
    batch = ds.__getitems__(idx)
    for j, i in enumerate(idx):
        it = ds[i]
        torch.testing.assert_close(batch["ecg"][j], it["ecg"], rtol=0, atol=0)
        torch.testing.assert_close(batch["beat_spans"][j], it["beat_spans"])
        assert batch["reports"][j] == it["report"] == s.report(i)
        torch.testing.assert_close(batch["labels"][j], it["labels"])
    # masking: whole leads zeroed, about half, deterministic per (seed, epoch, index), new draw per epoch
    m = lead_mask(np.arange(4000), 12, 0.5, 7, 0)
    assert abs(m.mean() - 0.5) < 0.01 and abs(np.corrcoef(m[:, 0], m[:, 1])[0, 1]) < 0.05
    zero = batch["ecg"].abs().sum(-1) == 0
    np.testing.assert_array_equal(zero.numpy(), lead_mask(idx, 12, 0.5, 7, 0))
    ds.set_epoch(1)
    assert not torch.equal(ds.__getitems__(idx)["ecg"], batch["ecg"])
    plain = ECGTextDataset(s).__getitems__(idx)["ecg"]
    assert (plain.abs().sum(-1) > 0).all()


def test_collate_cache_and_dataloader(small_store):
    from melp_fast.model.text import ReportTokenizer, load_tokenizer

    tok = ReportTokenizer(load_tokenizer("random:tiny"), max_len=48)
    ds = ECGTextDataset(small_store, lead_mask_p=0.5)
    col = Collate(tok)
    items = [ds[i] for i in range(8)]
    a = col(items)
    b = col(ds.__getitems__(list(range(8))))  # second call: reports served from the cache
    ref = tok([it["report"] for it in items])
    for k, v in ref.items():
        torch.testing.assert_close(a[k], v)
        torch.testing.assert_close(b[k], v)
    torch.testing.assert_close(a["ecg"], b["ecg"])
    torch.testing.assert_close(a["beat_spans"], b["beat_spans"])
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=True, collate_fn=col, drop_last=False)
    seen = torch.cat([bt["index"] for bt in loader])
    assert sorted(seen.tolist()) == list(range(24))
    # a worker process gives the same batches (lead masks depend on (seed, epoch, index) only)
    order = list(range(24))[::-1]
    one = [bt["ecg"] for bt in torch.utils.data.DataLoader(ds, batch_size=6, sampler=order, collate_fn=col)]
    two = [bt["ecg"] for bt in torch.utils.data.DataLoader(ds, batch_size=6, sampler=order, collate_fn=col,
                                                            num_workers=1)]
    assert all(torch.equal(x, y) for x, y in zip(one, two)) and len(one) == 4


def test_wfdb_dir_store_with_dicom_and_wfdb(tmp_path):
    import shutil

    from test_sources import MIT

    root = tmp_path / "dir"
    (root / "a").mkdir(parents=True)
    shutil.copy(DCM, root / "a" / "ecg.dcm")
    for ext in (".hea", ".dat"):
        shutil.copy(MIT.with_suffix(ext), root / "a" / f"100{ext}")
    (root / "b").mkdir()
    (root / "b" / "orphan.dat").write_bytes(b"\0" * 100)
    out = tmp_path / "store"
    r = run_preprocess(["--source", "wfdb-dir", "--root", str(root), "--out", str(out), "--workers", "2",
                        "--shard-size", "1"])
    assert r.returncode == 0, r.stderr[-2000:]
    s = Store(out)
    assert s.ids == ["100", "ecg"] and s.reports == ["", "ritmo sinusale. ecg normale."]
    assert [q["reason"] for q in s.quarantine()] == ["header missing (.hea)"]
    assert s.records[0]["info"]["orig_fs"] == 360 and s.n_beats.tolist()[1] == 10


def test_decode_text_keeps_utf8_and_reads_stray_bytes_as_latin1():
    from melp_fast.data.sources.common import decode_text

    assert decode_text("caf\u00e9 \u2014 ".encode() + b"stray \xe9.") == "caf\u00e9 \u2014 stray \u00e9."


def test_sentence_cache_tokenisation_is_identical_at_the_edges():
    from melp_fast.model.text import ReportTokenizer, load_tokenizer

    tok = ReportTokenizer(load_tokenizer("random:tiny"), max_len=16, max_sentences=3)
    reports = ["", "sinus rhythm.", "sinus rhythm. left axis deviation. abnormal ecg. fourth sentence here.",
               "a very long statement with many many words that overflows the token budget. sinus rhythm.",
               "sinus rhythm. normal ecg."]
    col = Collate(tok)
    for batch in (reports, reports[::-1], reports[1:3] + ["new one. sinus rhythm."]):
        got, ref = col.tokenize(batch), tok(batch)
        assert set(got) == set(ref)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k])


def test_synthetic_store_rebuilt_when_the_generator_changes(tmp_path, monkeypatch):
    """A synthetic store is reused only for the same corpus: same settings reuse it (no rewrite), an edited
    generator (its source hash, even without a version bump) rebuilds it."""
    from melp_fast.data import synthetic
    from melp_fast.data.store import build_synthetic_store

    path = tmp_path / "syn"
    a = build_synthetic_store(path, "train", 3, seed=5)
    stamp = (path / "meta.json").stat().st_mtime_ns
    assert build_synthetic_store(path, "train", 3, seed=5).meta["source"] == a.meta["source"]
    assert (path / "meta.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    monkeypatch.setattr(synthetic, "corpus_id", lambda: f"{synthetic.CORPUS_VERSION}-edited")
    b = build_synthetic_store(path, "train", 3, seed=5)
    assert b.meta["source"] != a.meta["source"] and b.meta["source"].endswith("edited")
    assert synthetic.CORPUS_VERSION == int(a.meta["source"].split("corpus")[1].split("-")[0])
