"""Report generation: the incremental next-token step equals the training forward, beam width 1 is greedy,
sentence attention sums to 1 over beats, and `melp-fast generate` on the real 12-lead DICOM record."""

import json

import numpy as np
import pytest
import torch

from melp_fast.inference import generate as gen
from helpers import DCM as DICOM  # pydicom's 12-lead test ECG
from helpers import need_fixture, rng_for, tiny_cfg


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from melp_fast.inference.export import export_model
    from melp_fast.model.melp import MELP

    torch.manual_seed(1)
    cfg = tiny_cfg()
    return export_model(MELP(cfg.model), cfg, tmp_path_factory.mktemp("g") / "model")


@pytest.fixture(scope="module")
def model(exported):
    from melp_fast.inference.export import load_model

    torch.set_num_threads(1)
    return load_model(exported)


def ecg_batch(model, seed=0):
    from melp_fast.data import synthetic
    from melp_fast.data.beats import beat_spans, detect_r_peaks, token_spans
    from melp_fast.data.signal import preprocess

    r = synthetic.generate_record(seed, 0)
    spans = beat_spans(detect_r_peaks(r.signal, 500), 5000)[:32]
    tok = token_spans(spans, 16, 312)
    return {"ecg": torch.from_numpy(preprocess(r.signal, 500))[None].float(),
            "beat_spans": torch.from_numpy(tok)[None], "beat_mask": torch.ones(1, len(tok), dtype=torch.bool),
            "beat_seconds": torch.from_numpy((spans[:, 1] - spans[:, 0]) / 500.0)[None].float()}


@torch.no_grad()
def test_next_token_step_matches_training_forward(model):
    b = ecg_batch(model)
    tb = model.tokenizer(["sinus rhythm. left bundle branch block."])
    e = model.encode_ecg(b["ecg"], b["beat_spans"], b["beat_mask"], b["beat_seconds"])
    states = model.encode_text(**tb)["states"]
    full = model.decoder(states, model.caption_pool(e["tokens"]), tb["attention_mask"])  # as MELP.forward
    ctx = model.caption_pool(e["tokens"])
    ids = tb["input_ids"][0]
    for L in (1, 3, 7):
        step = gen._next_logprobs(model, ids[None, :L], ctx)
        torch.testing.assert_close(step[0], torch.log_softmax(full[0, L - 1].float(), -1), rtol=1e-4, atol=1e-4)


def test_beam_width_one_is_greedy_and_beam_scores_at_least_greedy(model):
    b = ecg_batch(model, seed=3)
    g = gen.generate_ids(model, b, "greedy", max_len=12)
    assert gen.generate_ids(model, b, "beam", beam_width=1, max_len=12) == g
    assert 0 < len(g) <= 12
    text = gen.generate_report(model, b, "beam", beam_width=3, max_len=12)
    assert isinstance(text, str) and text


def test_sentence_attention_is_a_distribution_over_beats(model):
    b = ecg_batch(model, seed=2)
    sents, A2 = gen.sentence_attention(model, b, "sinus rhythm. atrial fibrillation. normal ecg.")
    assert sents == ["sinus rhythm.", "atrial fibrillation.", "normal ecg."]
    assert A2.shape == (b["beat_mask"].shape[1], 3)
    np.testing.assert_allclose(A2.sum(0), 1.0, rtol=1e-5)
    assert (A2 >= 0).all()
    _, sim = gen.sentence_attention(model, b, "sinus rhythm. atrial fibrillation.", kind="similarity")
    assert sim.shape == (A2.shape[0], 2)
    np.testing.assert_allclose(sim.sum(0), 1.0, rtol=1e-5)


def test_generate_cli_on_dicom(exported, tmp_path, capsys):
    need_fixture(DICOM)
    from melp_fast.cli import main as cli_main

    out = tmp_path / "gen"
    rc = cli_main(["generate", "--ckpt", str(exported), "--ecg", str(DICOM), "--beam-width", "2", "--max-len", "8",
                   "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "generated (greedy)" in printed and "generated (beam, width 2)" in printed
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_beats"] >= 5 and rep["greedy"] and rep["beam"]
    att = np.asarray(rep["attention"]["weights"])
    assert att.shape == (rep["n_beats"], len(rep["attention"]["sentences"]))
    assert (out / "attention.png").stat().st_size > 20_000


@pytest.mark.parametrize("fs", [0, float("inf"), 0.2])
def test_generate_on_a_dicom_with_an_impossible_sampling_rate_is_one_line(exported, tmp_path, capsys, fs):
    # a DICOM whose SamplingFrequency is 0, inf or 0.2 Hz ends with one line and exit code 2
    need_fixture(DICOM)
    import pydicom

    from melp_fast.cli import main as cli_main

    ds = pydicom.dcmread(str(DICOM))
    for w in ds.WaveformSequence:
        w.SamplingFrequency = fs
    bad = tmp_path / "bad.dcm"
    ds.save_as(str(bad))
    rc = cli_main(["generate", "--ckpt", str(exported), "--ecg", str(bad), "--out", str(tmp_path / "gen")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and "bad.dcm" in err[0] and "sampling frequency" in err[0], err[0]
    assert not (tmp_path / "gen").exists()


def test_is_flat():
    rng = rng_for("test_is_flat")
    k, s = int(rng.integers(3, 20)), int(rng.integers(1, 5))
    assert gen.is_flat(np.full((k, s), 1.0 / k))
    padded = np.zeros((k + 4, s))
    padded[:k] = 1.0 / k  # padded beat slots carry no weight
    assert gen.is_flat(padded)
    w = rng.dirichlet(np.ones(k), size=s).T
    assert not gen.is_flat(w)
    near = np.full((k, s), 1.0 / k)
    near[0, 0] += 0.2 / k
    assert not gen.is_flat(near)


def test_flat_attention_draws_the_similarity_view(model, monkeypatch):
    b = ecg_batch(model, seed=3)
    report = "sinus rhythm. left bundle branch block."
    real = gen.sentence_attention
    n_beats = int(b["beat_mask"].sum())

    def flat_local(m, batch, rep, t1=None, kind="local"):
        if kind == "local":
            sents, w = real(m, batch, rep, t1, kind="local")
            return sents, np.full_like(w, 1.0 / n_beats)
        return real(m, batch, rep, t1, kind=kind)

    monkeypatch.setattr(gen, "sentence_attention", flat_local)
    sents, w, kind, note = gen.attention_for_picture(model, b, report)
    assert kind == "similarity" and "flat" in note and f"1/{n_beats}" in note
    np.testing.assert_allclose(w, real(model, b, report, kind="similarity")[1])
    # a local attention that is not flat is drawn as it is
    monkeypatch.setattr(gen, "sentence_attention", lambda m, batch, rep, t1=None, kind="local": (
        ["a", "b"], rng_for("test_flat_attention_draws_the_similarity_view").dirichlet(np.ones(n_beats), size=2).T))
    _, w2, kind2, note2 = gen.attention_for_picture(model, b, report)
    assert kind2 == "local" and note2 == "" and not gen.is_flat(w2)


def test_demo_ends_with_the_real_ecg(exported, tmp_path, capsys):
    need_fixture(DICOM)  # the demo reads pydicom's test ECG from the installed pydicom
    from melp_fast.demo import real_ecg

    res = real_ecg(exported, tmp_path)
    printed = capsys.readouterr().out
    assert res["device_statement"] == "ritmo sinusale. ecg normale."
    assert "the recording device says:  ritmo sinusale. ecg normale." in printed
    assert f"the trained model says:     {res['model_report']}" in printed
    assert "not a clinical tool" in printed
    assert res["n_beats"] == 10 and abs(res["rate_bpm_from_beats"] - 61) < 2  # 982 ms RR by the device
    saved = json.loads((tmp_path / "real_ecg" / "report.json").read_text())
    assert saved["model_report"] == res["model_report"]
    assert (tmp_path / "real_ecg" / "attention.png").stat().st_size > 20_000


def test_real_ecg_benchmark_checks_a_normal_ecg_report():
    """benchmarks/real_ecg.py's check: a sinus rhythm named, no infarction / ST elevation / block, a stated rate
    within 10 bpm of the beats' rate; a PVC call reported apart."""
    from benchmarks.real_ecg import check, stretch

    assert check("sinus rhythm. normal ecg.", 61.0) == {"ok": True, "problems": [], "pvc": False}
    assert check("sinus bradycardia. ventricular rate 55 bpm. otherwise normal ecg.", 61.0)["ok"]
    assert check("sinus rhythm. ventricular rate 76 bpm. normal ecg.", 61.0)["problems"] == ["rate 76 vs 61 from beats"]
    assert not check("atrial fibrillation. abnormal ecg.", 61.0)["ok"]
    bad = check("sinus rhythm. st elevation, consider anterior acute myocardial infarction. abnormal ecg.", 61.0)
    assert bad["problems"] == ["says 'infarct'", "says 'st elevation'"]
    assert check("sinus rhythm. first degree av block.", 61.0)["problems"] == ["says 'block'"]
    pvc = check("sinus rhythm. ventricular premature complexes. abnormal ecg.", 61.0)
    assert pvc["ok"] and pvc["pvc"]
    # the slowed copy keeps the length, and its peaks move out by the stretch factor
    x = np.zeros((2, 1000))
    x[:, 400] = 1.0
    y = stretch(x, 1.25)
    assert y.shape == x.shape and abs(int(np.argmax(y[0])) - 500) <= 1
