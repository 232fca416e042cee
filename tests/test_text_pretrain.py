"""Stage one (pretrain-text): vocabulary growth, text-file reading, a DeepSpeed run that resumes exactly, and the
output directory loading as the main training's text encoder."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from melp_fast.data.synthetic import generate_split
from melp_fast.model.text import ReportTokenizer, load_backbone, load_tokenizer
from melp_fast.model.vocab import count_words, grow_vocabulary, select_new_words
from melp_fast.text_pretrain import (encode, epoch_batches, fit_head, intrinsic, load_mlm, main, make_collator,
                                     read_reports, read_text_file, save_encoder, split_heldout)

ROOT = Path(__file__).resolve().parent.parent
CORPUS = (["atrial fibrillation with rapid ventricular response."] * 25 + ["sinus tachycardia, abnormal ecg."] * 21
          + ["first degree atrioventricular block."] * 5)


def test_word_selection():
    tok = load_tokenizer("random:tiny")
    assert count_words(["Atrial FIBRILLATION, atrial."])["atrial"] == 2
    words = select_new_words(CORPUS, tok, min_count=20, min_pieces=3, max_new=200)
    # frequent and split into >= 3 pieces; 'atrioventricular' is too rare, 'atrial' (2 pieces) and 'rapid' too short
    assert set(words) == {w for w in ("fibrillation", "ventricular", "tachycardia") if len(tok.tokenize(w)) >= 3}
    assert "fibrillation" in words and "atrioventricular" not in words and "sinus" not in words
    assert words[:2] == sorted(words[:2])  # equal counts (25) -> by name
    assert select_new_words(CORPUS, tok, min_count=20, max_new=1) == words[:1]
    assert select_new_words(CORPUS, tok, max_new=0) == []


def test_vocabulary_growth_ids_rows_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model, tok, new = load_mlm("random:tiny")
    n0 = len(tok)
    emb0 = model.get_input_embeddings().weight.detach().clone()
    with torch.no_grad():
        model.cls.predictions.bias.uniform_(-1, 1)
    bias0 = model.cls.predictions.bias.detach().clone()
    words = ["fibrillation", "tachycardia"]
    pieces = {w: tok(w, add_special_tokens=False)["input_ids"] for w in words}
    added = grow_vocabulary(model, tok, words)
    assert [(w, i) for w, i, _ in added] == [("fibrillation", n0), ("tachycardia", n0 + 1)]
    assert len(tok) == n0 + 2 and model.config.vocab_size == n0 + 2
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == n0 + 2
    torch.testing.assert_close(emb[:n0], emb0)  # old rows untouched
    for w, i, p in added:
        assert p == pieces[w] and len(p) >= 2
        torch.testing.assert_close(emb[i], emb0[p].mean(0))
        torch.testing.assert_close(model.cls.predictions.bias[i], bias0[p].mean())
    assert model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()  # still tied
    # whole words only, any case; the inside of a longer word keeps its pieces
    ids = tok("Atrial FIBRILLATION, tachycardia; fibrillations", add_special_tokens=False)["input_ids"]
    assert ids.count(n0) == 1 and ids.count(n0 + 1) == 1
    # the report tokenizer of the main training sees the new ids too
    rt = ReportTokenizer(tok)(["atrial fibrillation. sinus tachycardia."])
    assert n0 in rt["input_ids"][0].tolist() and n0 + 1 in rt["input_ids"][0].tolist()

    # save / load: as the main training's text encoder, and as a starting point of another stage-one run
    model.eval()
    save_encoder(model, tok, tmp_path)
    tok2 = load_tokenizer(str(tmp_path))
    assert len(tok2) == n0 + 2 and tok2.convert_tokens_to_ids(words) == [n0, n0 + 1]
    assert tok2("fibrillations, Tachycardia", add_special_tokens=False)["input_ids"] == \
        tok("fibrillations, Tachycardia", add_special_tokens=False)["input_ids"]
    backbone = load_backbone(str(tmp_path))
    assert backbone.config.is_decoder and backbone.config.vocab_size == n0 + 2
    torch.testing.assert_close(backbone.get_input_embeddings().weight, emb.detach())
    model2, tok3, missing = load_mlm(str(tmp_path))
    assert missing == [] and len(tok3) == n0 + 2
    x = tok(["atrial fibrillation with rapid ventricular response."], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model2.eval()(**x).logits, model(**x).logits)
    assert not any(k.startswith("bert.") for k in load_file(str(tmp_path / "mlm_head.safetensors")))


def test_text_file_with_empty_and_non_utf8_lines(tmp_path):
    f = tmp_path / "reports.txt"
    f.write_bytes(b"sinus rhythm. normal ecg.\n\n   \r\nfibrillation auriculaire \xe9 \xff\xfe.\r\n"
                  b"sinus bradycardia.\r\n\xc3\x28 broken\ncaf\xc3\xa9 rhythm.")
    reports, stats = read_text_file(f)
    assert reports == ["sinus rhythm. normal ecg.", "sinus bradycardia.", "caf\u00e9 rhythm."]
    assert stats["lines"] == 7 and stats["empty"] == 2 and stats["not_utf8"] == 2
    assert stats["empty_lines"] == [2, 3] and stats["not_utf8_lines"] == [4, 6]
    assert read_reports(str(f)) == (reports, stats)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_reports(str(tmp_path / "nowhere.txt"))


def test_heldout_split_and_batches_are_seeded():
    reports = [f"r{i}" for i in range(50)]
    train, held = split_heldout(reports, 0.1, 1000, seed=3)
    assert len(held) == 5 and len(train) == 45 and not set(train) & set(held)
    assert split_heldout(reports, 0.1, 1000, seed=3) == (train, held)
    a = epoch_batches(45, 4, 2, 0, seed=0, epoch=1)
    b = epoch_batches(45, 4, 2, 1, seed=0, epoch=1)
    assert a == epoch_batches(45, 4, 2, 0, seed=0, epoch=1) and a != epoch_batches(45, 4, 2, 0, seed=0, epoch=2)
    assert len(a) == len(b) == 5 and not {i for x in a for i in x} & {i for x in b for i in x}


def test_intrinsic_is_deterministic_and_leaves_the_rng_alone():
    torch.manual_seed(0)
    model, tok, _ = load_mlm("random:tiny")
    reports = [r.report for r in generate_split("train", 12)]
    state = torch.get_rng_state()
    a = intrinsic(model, tok, reports, batch_size=5)
    assert torch.equal(state, torch.get_rng_state())
    assert a == intrinsic(model, tok, reports, batch_size=5)
    assert a["masked_tokens"] > 0 and 0 <= a["accuracy"] <= 1 and a["perplexity"] > 1


def test_head_fitted_baseline_moves_only_the_head():
    torch.manual_seed(0)
    model, tok, _ = load_mlm("random:tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    examples = encode([r.report for r in generate_split("train", 16)], tok, 64)
    probe = fit_head(model, examples, make_collator(tok), steps=2, batch_size=4)
    for k, v in model.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k]), k
    changed = {k for k, v in probe.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("cls.") and "decoder.weight" not in k for k in changed), changed


def run_pretrain(args):
    code = "import sys; from melp_fast.text_pretrain import main; main(sys.argv[1:])"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_pretrain_on_a_text_file_resumes_exactly_and_loads_as_text_encoder(tmp_path):
    lines = [r.report.encode() for r in generate_split("train", 60)]
    lines[3:3] = [b"", b"sinus rhythm \xff\xfe bad bytes", b"  "]
    (tmp_path / "reports.txt").write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "heart"
    args = ["--reports", str(tmp_path / "reports.txt"), "--init", "random:tiny", "--steps", "4", "--batch-size", "8",
            "--save-every", "2", "--min-count", "5", "--max-new-tokens", "3", "--ds_config",
            str(ROOT / "configs/cpu_fp32.json"), "--quiet"]
    r = run_pretrain([*args, "--out", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipped 2 empty, 1 not UTF-8" in r.stdout
    stats = json.loads((out / "pretrain_args.json").read_text())["reports_stats"]
    assert (stats["empty"], stats["not_utf8"], stats["not_utf8_lines"]) == (2, 1, [5])
    assert "masked-token accuracy" in r.stdout
    res = json.loads((out / "intrinsic.json").read_text())
    assert set(res) == {"start", "start+vocab", "after"} and res["after"]["reports"] == 6
    words = json.loads((out / "new_words.json").read_text())
    assert len(words) == 3 and [w["id"] for w in words] == [30522, 30523, 30524]
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").glob("step*")) == ["step2", "step4"]

    # a run killed after its step-2 checkpoint, resumed: the same data order, masks and weights
    cut = tmp_path / "cut"
    shutil.copytree(out, cut, ignore=shutil.ignore_patterns("step4", "model.safetensors", "tokenizer*", "config.json"))
    (cut / "checkpoints" / "complete").write_text("step2")  # the engine's one pointer
    r2 = run_pretrain([*args, "--out", str(cut), "--resume"])
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "resumed from" in r2.stdout
    h2 = [json.loads(x) for x in (cut / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in h2] == [1, 2, 3, 4]
    for a, b in zip(history, h2):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    w1, w2 = load_file(str(out / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-5, atol=1e-6)
    assert json.loads((cut / "intrinsic.json").read_text())["after"] == pytest.approx(res["after"], rel=1e-5)

    # without --resume, a directory with checkpoints is refused (no silent overwrite)
    with pytest.raises(FileExistsError, match="--resume"):
        main([*args, "--out", str(out)])
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        main([*args, "--out", str(tmp_path / "empty"), "--resume"])

    # the output directory is the text encoder of the main training
    backbone, tok = load_backbone(str(out)), load_tokenizer(str(out))
    assert backbone.config.vocab_size == len(tok) == 30525 and backbone.config.is_decoder
    ids = ReportTokenizer(tok)([lines[0].decode()])
    with torch.no_grad():
        states = backbone(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
    assert states.shape[-1] == 128 and torch.isfinite(states).all()
