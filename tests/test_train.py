"""Training end to end on CPU through DeepSpeed: one process in this interpreter, two through the launcher."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import free_port, rng_for, run_python

from melp_fast import load_model
from melp_fast.data.dataset import Collate, ECGTextDataset
from melp_fast.data.store import Store

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--preset", "tiny", "--text-encoder", "random:tiny", "--batch-size", "8",
         "--set", "data.n_train=32", "--set", "model.width=64", "--set", "model.ffn=128",
         "--set", "model.conv_channels=32", "--set", "model.text_freeze_layers=1", "--set", "train.warmup_steps=1",
         "--quiet"]


def run_train(args):
    return run_python("import sys; from melp_fast.train import main; main(sys.argv[1:])", args)


def test_one_process_trains_exports_and_reloads(tmp_path):
    out = tmp_path / "run"
    r = run_train([*SMALL, "--out", str(out), "--steps", "4", "--ds_config", str(ROOT / "configs/cpu_fp32.json")])
    assert r.returncode == 0, r.stderr[-3000:]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor([h["loss"], h["global"], h["local"], h["caption"]])).all() for h in history)
    assert all(1.0 <= h["logit_scale"] <= 100.0 for h in history)
    assert (out / "checkpoints" / "step4").is_dir()
    # the exported model reloads offline and encodes the training data
    model = load_model(out / "model")
    store = Store(tmp_path / "data" / "synthetic-train-32-seed0")
    batch = Collate(model.tokenizer)([ECGTextDataset(store)[i] for i in range(4)])
    with torch.no_grad():
        z = model.encode_ecg(batch["ecg"], batch["beat_spans"], batch["beat_mask"], batch["beat_seconds"])["rhythm"]
        t = model.encode_prompts(["atrial fibrillation", "sinus rhythm"])
    assert z.shape == (4, 256) and t.shape == (2, 256)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(4))


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_launcher")
def test_two_processes_with_the_deepspeed_launcher_bf16(tmp_path):
    out = tmp_path / "run"
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), str(ROOT / "melp_fast/train.py"),
           "--ds_config", str(ROOT / "configs/cpu_bf16.json"), *SMALL, "--out", str(out), "--steps", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 3 and all(h["loss"] == h["loss"] for h in history)
    assert load_model(out / "model").logit_scale.dtype == torch.float32


def test_pretraining_indices_hold_out_whole_subjects():
    from types import SimpleNamespace

    import numpy as np

    from melp_fast.train import pretraining_indices

    rng = rng_for("test_pretraining_indices_hold_out_whole_subjects")
    subjects = [f"p{int(s)}" for s in rng.integers(0, 300, size=2000)]
    store = SimpleNamespace(records=[{"subject": s} for s in subjects])
    train = pretraining_indices(store, 0.02)
    held = sorted(set(range(2000)) - set(train.tolist()))
    assert held, "some records are held out"
    train_subj = {subjects[i] for i in train}
    held_subj = {subjects[i] for i in held}
    assert not train_subj & held_subj  # no subject on both sides
    assert len(held_subj) == round(0.02 * len(set(subjects)))
    # deterministic (seed 42), and off where subjects are unknown or the fraction is 0
    assert np.array_equal(train, pretraining_indices(store, 0.02))
    assert pretraining_indices(SimpleNamespace(records=[{"subject": ""}] * 10), 0.02) is None
    assert pretraining_indices(store, 0.0) is None


def test_validation_every_n_steps_joins_the_history_and_keeps_the_best(tmp_path):
    """train.eval_every with a downstream store: zero-shot AUROC in the history at every eval step, the best model
    by train.best_metric exported to out/best with its score."""
    from melp_fast.data import synthetic
    from melp_fast.data.store import write_store

    recs = [synthetic.generate_record(i, 5) for i in range(60)]
    down = write_store(tmp_path / "down", ((r.signal, r.report, r.labels) for r in recs), classes=synthetic.CLASSES,
                       source="synthetic:down", progress=False)
    out = tmp_path / "run"
    r = run_train([*SMALL, "--out", str(out), "--steps", "4", "--set", "train.eval_every=2",
                   "--set", f'train.downstream=["{down.path}"]', "--set", "train.best_metric=zs/mean"])
    assert r.returncode == 0, r.stderr[-3000:]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    scored = [h for h in history if "zs/mean" in h]
    assert [h["step"] for h in scored] == [2, 4]
    assert all(0.0 <= h["zs/mean"] <= 1.0 for h in scored)
    best = json.loads((out / "best" / "best.json").read_text())
    top = max(scored, key=lambda h: h["zs/mean"])
    assert best["metric"] == "zs/mean" and best["step"] == top["step"] and best["value"] == pytest.approx(top["zs/mean"])
    assert load_model(out / "best").cfg.width == 64
