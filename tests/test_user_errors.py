"""Every user error (a bad option value, a missing or unusable input, an unwritable output) is one line naming the
input, exit code 2, found before any work (checks.py, called by each entry point right after parsing). In-process
calls of the console entry point: the checks run before torch.distributed or any model is started, so each case takes
milliseconds."""

import json
import os
from pathlib import Path

import pytest
import torch

from melp_fast.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--preset", "tiny", "--text-encoder", "random:tiny", "--set", "model.width=32", "--set", "model.ffn=64",
         "--set", "model.heads=2", "--set", "model.conv_channels=16", "--set", "model.text_freeze_layers=1", "--quiet"]
CUDA = torch.cuda.is_available()


def ds_json(tmp_path, **values):
    p = tmp_path / "ds.json"
    p.write_text(json.dumps(values))
    return str(p)


def not_a_store(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("hello")
    return str(tmp_path / "folder")


def tiny_downstream(tmp_path):
    """A labelled store of 6 records: too few for the stratified split's validation part."""
    from melp_fast.data import synthetic
    from melp_fast.data.store import write_store

    recs = [synthetic.generate_record(i, 5) for i in range(6)]
    down = write_store(tmp_path / "down", ((r.signal, r.report, r.labels) for r in recs), classes=synthetic.CLASSES,
                       source="synthetic:down", progress=False)
    return f'train.downstream=["{down.path}"]'


# (argv builder, words the one error line must hold)
CASES = {
    "train --steps 0": (lambda t: ["train", *SMALL, "--steps", "0"], ["--steps (train.steps) is 0"]),
    "train --steps -1": (lambda t: ["train", *SMALL, "--steps", "-1"], ["--steps (train.steps) is -1"]),
    "train --batch-size 0": (lambda t: ["train", *SMALL, "--batch-size", "0"], ["--batch-size", "is 0"]),
    "train --batch-size -4": (lambda t: ["train", *SMALL, "--batch-size", "-4"], ["--batch-size", "is -4"]),
    "train.lr=-1": (lambda t: ["train", *SMALL, "--set", "train.lr=-1"], ["train.lr is -1"]),
    "model.heads=3": (lambda t: ["train", *SMALL, "--set", "model.heads=3"], ["model.heads=3 does not divide"]),
    "model.max_beats=0": (lambda t: ["train", *SMALL, "--set", "model.max_beats=0"], ["model.max_beats is 0"]),
    "train.log_every=0": (lambda t: ["train", *SMALL, "--set", "train.log_every=0"], ["train.log_every is 0"]),
    "data.lead_mask_p=2": (lambda t: ["train", *SMALL, "--set", "data.lead_mask_p=2"], ["data.lead_mask_p is 2"]),
    "train.warmup_steps=-5": (lambda t: ["train", *SMALL, "--set", "train.warmup_steps=-5"],
                              ["train.warmup_steps is -5"]),
    "--text-encoder random:huge": (lambda t: ["train", *SMALL, "--text-encoder", "random:huge"],
                                   ["--text-encoder random:huge", "unknown random size"]),
    "--text-encoder missing folder": (lambda t: ["train", *SMALL, "--text-encoder", str(t / "nowhere")],
                                      ["nowhere: no such folder"]),
    "--text-encoder hub name offline": (lambda t: ["train", *SMALL, "--text-encoder", "no-such-org/no-such-model-30"],
                                        ["no-such-org/no-such-model-30", "not in the Hugging Face cache"]),
    "--data not a store": (lambda t: ["train", *SMALL, "--data", not_a_store(t)], ["--data", "not a usable store"]),
    "ds accumulation 0": (lambda t: ["train", *SMALL, "--ds_config", ds_json(t, gradient_accumulation_steps=0)],
                          ["ds.json: gradient_accumulation_steps is 0"]),
    "ds accumulation 'two'": (lambda t: ["train", *SMALL, "--ds_config",
                                         ds_json(t, gradient_accumulation_steps="two")],
                              ["gradient_accumulation_steps is 'two'"]),
    "ds ZeRO stage 7": (lambda t: ["train", *SMALL, "--ds_config", ds_json(t, zero_optimization={"stage": 7})],
                        ["zero_optimization.stage is 7"]),
    "train unwritable --out": (lambda t: ["train", *SMALL, "--out", "/proc/melp_out_30"],
                               ["--out /proc/melp_out_30 is not writable"]),
    "train --out is a file": (lambda t: ["train", *SMALL, "--out", str(t / "f.txt")], ["f.txt exists and is not a folder"]),
    "pretrain-text --steps 0": (lambda t: ["pretrain-text", "--init", "random:tiny", "--out", str(t / "o"), "--steps",
                                           "0"], ["--steps (train.steps) is 0"]),
    "pretrain-text --mlm-probability 1.5": (lambda t: ["pretrain-text", "--init", "random:tiny", "--out", str(t / "o"),
                                                       "--mlm-probability", "1.5"], ["--mlm-probability", "is 1.5"]),
    "pretrain-text --heldout 1.0": (lambda t: ["pretrain-text", "--init", "random:tiny", "--out", str(t / "o"),
                                               "--heldout", "1.0"], ["--heldout", "is 1.0"]),
    "pretrain-text 100000 layers": (lambda t: ["pretrain-text", "--init", str(huge_encoder(t)), "--out", str(t / "o")],
                                    ["num_hidden_layers is 100000"]),
    "evaluate --n-boot -1": (lambda t: ["evaluate", "--ckpt", "x", "--store", "synthetic", "--n-boot", "-1",
                                        "--out", str(t / "e")], ["--n-boot is -1"]),
    "evaluate unwritable --out": (lambda t: ["evaluate", "--ckpt", "x", "--store", "synthetic", "--out",
                                             "/proc/melp_eval_30"], ["--out /proc/melp_eval_30 is not writable"]),
    "generate --max-len 100000": (lambda t: ["generate", "--ckpt", "x", "--ecg", "x", "--max-len", "100000"],
                                  ["--max-len is 100000"]),
    "generate --max-len -5": (lambda t: ["generate", "--ckpt", "x", "--ecg", "x", "--max-len", "-5"],
                              ["--max-len is -5"]),
    "generate --beam-width 0": (lambda t: ["generate", "--ckpt", "x", "--ecg", "x", "--beam-width", "0"],
                                ["--beam-width is 0"]),
    "generate unwritable --out": (lambda t: ["generate", "--ckpt", "x", "--ecg", "x", "--out", "/proc/melp_gen_30"],
                                  ["--out /proc/melp_gen_30 is not writable"]),
    "train.downstream without validation records": (lambda t: ["train", *SMALL, "--set", tiny_downstream(t)],
                                                     ["has no validation record", "never scores test records"]),
    "demo --steps -1": (lambda t: ["demo", "--out", str(t / "d"), "--steps", "-1"], ["--steps is -1"]),
    "demo --steps 0": (lambda t: ["demo", "--out", str(t / "d"), "--steps", "0"], ["--steps is 0"]),
    "demo --n-test 0": (lambda t: ["demo", "--out", str(t / "d"), "--n-test", "0"], ["--n-test is 0"]),
}
if not CUDA:
    CASES["--loss-impl fused on CPU"] = (lambda t: ["train", *SMALL, "--loss-impl", "fused"],
                                         ["--loss-impl fused needs a CUDA GPU"])
    CASES["evaluate --device cuda"] = (lambda t: ["evaluate", "--ckpt", "x", "--store", "synthetic", "--device", "cuda",
                                                  "--out", str(t / "e")], ["--device cuda: CUDA is not available"])


def huge_encoder(tmp_path) -> Path:
    d = tmp_path / "huge"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 100000, "hidden_size": 128,
                                               "num_attention_heads": 2, "intermediate_size": 512}))
    return d


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)  # default output folders (runs/...) land here, never in the repository
    monkeypatch.delenv("MELP_DEBUG", raising=False)
    (tmp_path / "f.txt").write_text("a file")
    build, words = CASES[case]
    argv = build(tmp_path)
    if "--out" not in argv and argv[0] == "train":
        argv += ["--out", str(tmp_path / "run")]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli(argv) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was made
    assert "WORLD_SIZE" not in os.environ or os.environ.get("WORLD_SIZE") == "1"


def exported_tiny(tmp_path) -> Path:
    from helpers import tiny_cfg

    from melp_fast.inference.export import export_model, untrained_model

    cfg = tiny_cfg()
    torch.manual_seed(30)
    return export_model(untrained_model(cfg, 30), cfg, tmp_path / "model")


def test_zero_shot_on_a_store_without_labels(tmp_path, capsys):
    from melp_fast.data.store import build_synthetic_store

    store = build_synthetic_store(tmp_path / "s", "test", 4, 0)
    meta = json.loads((store.path / "meta.json").read_text())
    meta["task"], meta["classes"] = None, []
    (store.path / "meta.json").write_text(json.dumps(meta))
    assert cli(["zero-shot", "--model", str(exported_tiny(tmp_path)), "--data", str(store.path)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: --data") and "has no labels" in line, line


def test_pretrain_text_follows_the_run_folder_rules(tmp_path, capsys):
    """A finished encoder folder (its checkpoints/ removed) is never replaced without --overwrite; --init and --out
    the same folder cannot be overwritten; --resume and --overwrite contradict. One line, exit 2, nothing changed."""
    enc = tmp_path / "enc"
    enc.mkdir()
    for name in ("model.safetensors", "mlm_head.safetensors", "config.json", "intrinsic.json"):
        (enc / name).write_text(name)
    before = {p.name: p.read_text() for p in enc.iterdir()}
    base = ["pretrain-text", "--init", "random:tiny", "--out", str(enc)]
    cases = [(base, "already holds a run (model.safetensors, mlm_head.safetensors, intrinsic.json)"),
             (["pretrain-text", "--init", str(enc), "--out", str(enc), "--overwrite"], "is the --out folder"),
             ([*base, "--resume", "--overwrite"], "contradict")]
    for argv, words in cases:
        assert cli(argv) == 2
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if x.startswith("error: ")]
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in err, err[-2000:]
        assert {p.name: p.read_text() for p in enc.iterdir()} == before
