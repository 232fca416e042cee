"""Mistakes on the training scripts' command lines: one line on stderr, exit code 2, no traceback (errors.run_main
in the script entry points)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from melp_fast.errors import UserError
from melp_fast.text_pretrain import read_reports

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--preset", "tiny", "--text-encoder", "random:tiny", "--set", "data.n_train=16", "--set", "model.width=32",
         "--set", "model.ffn=64", "--set", "model.heads=2", "--set", "model.conv_channels=16",
         "--set", "model.text_freeze_layers=1", "--quiet"]


def run(script, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MELP_DEBUG"):
        env.pop(k, None)
    return subprocess.run([sys.executable, str(ROOT / "melp_fast" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def assert_user_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("args, words", [
    (["--set", "train.steps=abc"], ["train.steps takes int", "'abc'"]),
    (["--set", "train.stepz=3"], ["unknown key 'train.stepz'", "valid keys:", "train.steps"]),
    (["--preset", "huge"], ["unknown preset 'huge'", "paper, tiny"]),
    (["--loss-impl", "fast"], ["loss.impl must be one of reference, fused, auto"]),
])
def test_train_option_mistakes(tmp_path, args, words):
    assert_user_error(run("train.py", *SMALL, "--out", str(tmp_path / "run"), *args), *words)


def test_train_resume_without_checkpoint_and_missing_store(tmp_path):
    assert_user_error(run("train.py", *SMALL, "--out", str(tmp_path / "run"), "--resume"),
                      "--resume: no complete checkpoint to resume from", str(tmp_path / "run" / "checkpoints"))
    assert_user_error(run("train.py", *SMALL, "--out", str(tmp_path / "run"), "--data", str(tmp_path / "nostore")),
                      "nostore: no such store directory")


@pytest.mark.slow
def test_train_batch_larger_than_data_and_non_json_ds_config(tmp_path):
    assert_user_error(run("train.py", *SMALL, "--out", str(tmp_path / "run"), "--batch-size", "64"),
                      "16 records cannot fill one batch of 64", "--batch-size")
    bad = tmp_path / "zero.json"
    bad.write_text("stage: 2\n")
    assert_user_error(run("train.py", *SMALL, "--out", str(tmp_path / "run"), "--batch-size", "4",
                          "--ds_config", str(bad)), f"--ds_config {bad} is not a JSON file")


def test_text_reports_empty_binary_or_missing(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"\n  \n\xff\xfe\n")
    with pytest.raises(UserError, match=r"empty.txt: no report in it \(3 lines: 2 empty, 1 not UTF-8\)"):
        read_reports(str(empty))
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    with pytest.raises(UserError, match="model.pt looks binary"):
        read_reports(str(binary))
    with pytest.raises(FileNotFoundError, match="nowhere"):  # a UserError too
        read_reports(str(tmp_path / "nowhere.txt"))
    with pytest.raises(UserError, match="nowhere"):
        read_reports(str(tmp_path / "nowhere.txt"))


def test_pretrain_text_entry_point_exit_codes(tmp_path):
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"\x00\x01" * 5000)
    assert_user_error(run("text_pretrain.py", "--reports", str(binary), "--init", "random:tiny", "--out",
                          str(tmp_path / "t")), "looks binary")
    assert_user_error(run("text_pretrain.py", "--set", "vocab.min_cout=3", "--out", str(tmp_path / "t")),
                      "unknown key 'vocab.min_cout'", "vocab.min_count")
    assert_user_error(run("text_pretrain.py", "--steps", "x", "--out", str(tmp_path / "t")), "train.steps takes int")
    assert_user_error(run("text_pretrain.py", "--out", str(tmp_path / "t"), "--resume"), "no complete checkpoint")


def test_cli_subcommands_follow_the_same_policy(capsys):
    from melp_fast.cli import main as cli_main

    assert cli_main(["train", "--set", "train.steps=abc"]) == 2
    assert cli_main(["pretrain-text", "--set", "vocab.nope=1", "--out", "x"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: --set train.steps=abc: train.steps takes int, not 'abc'",
                   err[1]] and err[1].startswith("error: --set 'vocab.nope=1': unknown key 'vocab.nope'")
