"""The two probe scorings (melp_fast/eval/metrics.py, linear_probe.py): the reference's torchmetrics multilabel macro
AUROC of softmax scores against a hand-computed case and against a literal transcription of torchmetrics 1.6.0's
algorithm (binary_clf_curve, zero TPR / FPR for a class without positives / negatives, trapezoid, NaN-skipping
macro mean); the reference probe's early stopping, bf16 logits and Lightning's stopping rules; the per-class
scoring unchanged. Seeds are fixed and printed in each test's data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from melp_fast.eval.linear_probe import fit_probe_early_stopping, macro_score, probe_logits, reference_probe
from melp_fast.eval.metrics import auroc, reference_auroc, reference_macro, score_set, softmax


def torchmetrics_binary_auroc(preds: torch.Tensor, target: torch.Tensor) -> float:
    """torchmetrics 1.6.0, thresholds=None: _binary_clf_curve, _binary_roc_compute, _auc_compute_without_check,
    transcribed line by line (an independent implementation: ours is rank based)."""
    idx = torch.argsort(preds, descending=True)
    preds, target = preds[idx], target[idx]
    distinct = torch.where(preds[1:] - preds[:-1])[0]
    thr_idx = F.pad(distinct, [0, 1], value=target.size(0) - 1)
    target = (target == 1).to(torch.long)
    tps = torch.cumsum(target, dim=0)[thr_idx]
    fps = 1 + thr_idx - tps
    tps = torch.cat([torch.zeros(1, dtype=tps.dtype), tps])
    fps = torch.cat([torch.zeros(1, dtype=fps.dtype), fps])
    fpr = torch.zeros(len(fps)) if fps[-1] <= 0 else fps / fps[-1]
    tpr = torch.zeros(len(tps)) if tps[-1] <= 0 else tps / tps[-1]
    return float(torch.trapz(tpr, fpr))


def torchmetrics_macro(preds: np.ndarray, labels: np.ndarray) -> float:
    p, t = torch.from_numpy(np.asarray(preds, np.float32)), torch.from_numpy(np.asarray(labels)).long()
    if not torch.all((p >= 0) * (p <= 1)):
        p = p.sigmoid()
    res = torch.tensor([torchmetrics_binary_auroc(p[:, i], t[:, i]) for i in range(p.shape[1])])
    return float(res[~torch.isnan(res)].mean())


def test_reference_auroc_hand_computed():
    """4 records, 3 classes. Class 0: positives score 0.5, 0.4 against negatives 0.3, 0.5 -> pairs (0.5 vs 0.3: 1,
    0.5 vs 0.5: 1/2, 0.4 vs 0.3: 1, 0.4 vs 0.5: 0) = 2.5 / 4 = 0.625. Class 1 has no positive and class 2 no
    negative: torchmetrics scores both 0.0 (a zero TPR / FPR curve), and the macro mean is (0.625 + 0 + 0) / 3."""
    p = np.array([[0.5, 0.2, 0.3], [0.4, 0.3, 0.3], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4]], np.float32)
    y = np.array([[1, 0, 1], [1, 0, 1], [0, 0, 1], [0, 0, 1]])
    np.testing.assert_allclose(reference_auroc(p, y), [0.625, 0.0, 0.0], atol=1e-12)
    assert reference_macro(p, y) == pytest.approx(0.625 / 3, abs=1e-12)
    assert np.isnan(auroc(p, y)[1:]).all() and auroc(p, y)[0] == pytest.approx(0.625)  # per-class: undefined
    assert torchmetrics_macro(p, y) == pytest.approx(0.625 / 3, abs=1e-7)
    # scores outside [0, 1] go through a sigmoid first (torchmetrics' format step): the ranking is unchanged here
    np.testing.assert_allclose(reference_auroc(4 * p - 1, y), [0.625, 0.0, 0.0], atol=1e-12)
    assert np.isnan(reference_auroc(p[:0], y[:0])).all()
    q = p.copy()
    q[0, 0] = np.nan
    assert np.isnan(reference_auroc(q, y)[0]) and reference_macro(q, y) == 0.0  # NaN classes leave the mean


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_macro_equals_torchmetrics_transcription_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, c = 157, 7
    y = (rng.random((n, c)) < np.linspace(0.05, 0.5, c)).astype(np.float32)
    y[:, 0] = 0  # no positive
    y[:, 1] = 1  # no negative
    logits = (y * 1.5 + rng.normal(size=(n, c))).astype(np.float32)
    logits[:, 3] = np.round(logits[:, 3])  # ties in the logits
    logits[:40] = np.round(logits[:40] * 2) / 2  # identical rows -> identical softmax rows (ties)
    probs = softmax(logits)
    np.testing.assert_allclose(probs, torch.from_numpy(logits).softmax(-1).numpy(), rtol=0, atol=0)
    got = reference_auroc(probs, y)
    for k in range(c):
        want = roc_auc_score(y[:, k], probs[:, k]) if 0 < y[:, k].sum() < n else 0.0
        assert got[k] == pytest.approx(want, abs=1e-12)
    assert reference_macro(probs, y) == pytest.approx(torchmetrics_macro(probs, y), abs=1e-6)
    assert macro_score(logits, y, "reference") == pytest.approx(torchmetrics_macro(probs, y), abs=1e-6)
    assert macro_score(logits, y, "per-class") == pytest.approx(np.mean(
        [roc_auc_score(y[:, k], logits[:, k]) for k in range(2, c)]), abs=1e-12)
    ref = score_set(probs, y, list("abcdefg"), scoring="reference", n_boot=20, seed=seed)
    assert ref["scoring"] == "reference" and ref["undefined"] == ["a", "b"] and ref["per_class"]["a"] == 0.0
    assert ref["mean"] == pytest.approx(torchmetrics_macro(probs, y), abs=1e-6)
    lo, hi = ref["ci"]["mean"]
    assert lo <= ref["mean"] <= hi
    ours = score_set(logits, y, list("abcdefg"))
    assert ours["scoring"] == "per-class" and np.isnan(ours["per_class"]["a"]) and ours["undefined"] == ["a", "b"]


def _data(seed=4, n=700, d=10, c=4):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < np.array([0.4, 0.2, 0.1, 0.05])[:c]).astype(np.float32)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, :c] += 2.0 * y
    return x, y


def test_reference_scoring_probe_selects_on_softmax_auroc_with_bf16_logits():
    x, y = _data()
    tr, va = np.arange(400), np.arange(400, 550)
    p = fit_probe_early_stopping(x[tr], y[tr], x[va], y[va], max_epochs=30, seed=3, scoring="reference", bf16=True)
    z = probe_logits(p, x[va])
    np.testing.assert_array_equal(z, torch.from_numpy(z).bfloat16().float().numpy())  # bf16 logits
    assert p["bf16"] and 1 <= p["best_epoch"] <= p["epochs"] <= 30
    assert p["best_val"] == pytest.approx(torchmetrics_macro(softmax(z), y[va]), abs=1e-6)
    # the same seed selected on our metric is another run (other epoch or weights), scored on the logits
    q = fit_probe_early_stopping(x[tr], y[tr], x[va], y[va], max_epochs=30, seed=3, scoring="per-class", bf16=True)
    assert q["best_val"] == pytest.approx(np.mean(auroc(probe_logits(q, x[va]), y[va])), abs=1e-6)
    # Lightning: a non-finite validation value stops at once, and the first epoch is kept (ModelCheckpoint)
    r = fit_probe_early_stopping(x[tr], y[tr], x[:0], y[:0], max_epochs=30, seed=3, scoring="reference")
    assert r["epochs"] == 1 and r["best_epoch"] == 1 and np.isnan(r["best_val"])
    # patience 5 on a validation set that says nothing
    shuffled = y[va][np.random.default_rng(9).permutation(len(va))]
    s = fit_probe_early_stopping(x[tr], y[tr], x[va], shuffled, max_epochs=100, seed=1, scoring="reference")
    assert s["epochs"] < 100 and s["epochs"] - s["best_epoch"] == 5


def test_reference_probe_scores_every_class_like_the_reference():
    """A training sample without any positive of class d (and one without any positive at all) is still trained
    and every class scored; the test metric is the reference's on the softmax of the returned logits; a class
    without a test positive is scored 0 and listed as undefined."""
    x, y = _data(seed=5, n=800)
    y[600:, 3] = 0  # class d: no positive in the test set
    tr, va, te = np.arange(400), np.arange(400, 600), np.arange(600, 800)
    no_d = np.array([i for i in tr if y[i, 3] == 0])
    none = np.array([i for i in tr if not y[i].any()][:30])
    res = reference_probe(x, y, {0.1: none, 0.5: no_d, 1.0: tr}, va, te, list("abcd"), max_epochs=20,
                          scoring="reference")
    for key, want_missing in (("10%", list("abcd")), ("50%", ["d"]), ("100%", [])):
        e = res["fractions"][key]
        assert e["scoring"] == "reference" and "not_available" not in e
        assert e["no_train_positive"] == want_missing and e["skipped"] == []
        assert set(e["per_class"]) == set("abcd") and e["per_class"]["d"] == 0.0 and e["undefined"] == ["d"]
        z = res["logits"][key]
        np.testing.assert_allclose(res["scores"][key], torch.from_numpy(z).softmax(-1).numpy(), rtol=0, atol=0)
        assert e["mean"] == pytest.approx(torchmetrics_macro(torch.from_numpy(z).softmax(-1).numpy(), y[te]),
                                          abs=1e-6)
    with pytest.raises(ValueError, match="unknown scoring"):
        reference_probe(x, y, {1.0: tr}, va, te, list("abcd"), scoring="softmax")


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from helpers import tiny_cfg
    from melp_fast.inference.export import export_model
    from melp_fast.model.melp import MELP

    torch.manual_seed(0)
    cfg = tiny_cfg()
    return export_model(MELP(cfg.model), cfg, tmp_path_factory.mktemp("tinyscore") / "model")


def test_prompts_are_never_truncated_under_the_tiny_preset(tiny_export):
    """The tiny preset caps reports at 64 tokens; the CKEPE prompt of MI has 121: its embedding is that of the
    whole text (the report tokenizer with a raised limit), not of its first 64 tokens."""
    import json
    import warnings
    from pathlib import Path

    from melp_fast.data.tokenize import ReportTokenizer
    from melp_fast.inference.export import load_model
    from melp_fast.eval.prompts import prompt_embeddings

    ckepe = Path("/work/shared/reference/melp_reference/prompt/CKEPE_prompt.json")
    if not ckepe.is_file():
        ckepe = Path(__file__).resolve().parents[2] / "shared" / "reference" / "melp_reference" / "prompt" / \
            "CKEPE_prompt.json"
    if not ckepe.is_file():
        pytest.skip("reference prompt file not found")
    model = load_model(tiny_export)
    assert model.cfg.max_text_len == 64
    text = json.loads(ckepe.read_text())["MI"].lower()
    tok = model.text.tokenizer
    full = ReportTokenizer(tok, 512, 64)([text])
    assert int(full["attention_mask"].sum()) > 100  # the whole prompt is longer than the tiny limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncation warning
        got = prompt_embeddings(model, {"MI": text, "NORM": "normal ecg"}, ["MI", "NORM"])
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.encode_text(**full)["text"].float(), dim=-1)[0].numpy()
    np.testing.assert_allclose(got[0], want, atol=1e-5)
    cut = torch.nn.functional.normalize(model.encode_prompts([text]).float(), dim=-1)[0].numpy()
    assert np.abs(got[0] - cut).max() > 1e-3  # the 64-token embedding differs
    short = prompt_embeddings(model, {"NORM": "normal ecg"}, ["NORM"])
    np.testing.assert_allclose(short[0], model.encode_prompts(["normal ecg"])[0].float().numpy(), atol=1e-5)
