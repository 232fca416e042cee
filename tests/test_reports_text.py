"""Report cleaning, sentence splitting and tokenisation with sentence ids and caption targets."""

import pytest
import torch

from melp_fast.data.reports import clean_report, split_sentences
from melp_fast.model.text import ReportTokenizer, load_tokenizer


def test_clean_report_rules():
    parts = ["Sinus rhythm", None, float("nan"), "  ", "Abnormal EKG ***", "Borderline =- T waves\n", "rate = 72"]
    assert clean_report(parts) == "sinus rhythm. abnormal ecg. borderline t waves. rate 72."
    assert clean_report([]) == ""
    assert clean_report("Normal ECG.") == "normal ecg."


def test_split_sentences():
    assert split_sentences("sinus rhythm. lbbb. abnormal ecg.") == ["sinus rhythm.", "lbbb.", "abnormal ecg."]
    assert split_sentences("") == []
    assert split_sentences(" . . ") == []


@pytest.fixture(scope="module")
def tok():
    return ReportTokenizer(load_tokenizer("minilm"), max_len=24)


def test_tokenizer_layout(tok):
    reports = ["sinus rhythm. left bundle branch block.", "", "atrial fibrillation."]
    b = tok(reports)
    ids, sid, eos, lab, att = b["input_ids"], b["sent_ids"], b["eos_pos"], b["caption_labels"], b["attention_mask"]
    cls, sep = tok.cls, tok.sep
    for r in range(3):
        n = int(att[r].sum())
        assert ids[r, 0] == cls and ids[r, n - 2] == sep and ids[r, n - 1] == cls and eos[r] == n - 1
        assert (sid[r, [0, n - 2, n - 1]] == -1).all() and (sid[r, n:] == -1).all()
        # targets: next token up to and including [SEP], nothing after
        assert torch.equal(lab[r, : n - 2], ids[r, 1 : n - 1]) and (lab[r, n - 2 :] == -100).all()
    assert set(sid[0].tolist()) == {-1, 0, 1}
    assert set(sid[1].tolist()) == {-1}  # the empty report has no sentence
    assert set(sid[2].tolist()) == {-1, 0}
    # the sentence pieces of row 0 decode back to the sentences
    words = tok.tok.decode(ids[0][sid[0] == 1])
    assert words.replace(" ", "") == "leftbundlebranchblock."


def test_tokenizer_truncates_to_max_len(tok):
    long = ". ".join(f"statement number {i} about the ecg" for i in range(30)) + "."
    b = tok([long, "normal ecg."])
    assert b["input_ids"].shape[1] == tok.max_len
    n = int(b["attention_mask"][0].sum())
    assert n == tok.max_len and b["input_ids"][0, n - 1] == tok.cls and b["input_ids"][0, n - 2] == tok.sep
