"""Fault tolerance: a run killed with SIGKILL and resumed gives the same losses as an uninterrupted run; a kill
during a checkpoint write leaves the previous checkpoint loadable."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--preset", "tiny", "--text-encoder", "random:tiny", "--batch-size", "4",
         "--set", "data.n_train=20", "--set", "model.width=32", "--set", "model.ffn=64", "--set", "model.heads=2",
         "--set", "model.conv_channels=16", "--set", "model.text_freeze_layers=1", "--set", "train.warmup_steps=2",
         "--set", "train.save_every=2", "--set", "model.dropout=0.1", "--quiet", "--steps", "7"]
# save_every=2 with 5 batches per epoch: checkpoints fall mid-epoch and the run crosses an epoch boundary;
# dropout on, so the restored RNG state matters.

# Runs main(); with KILL_AT set, SIGKILLs itself at a point of the run (fault injection from outside the code).
RUNNER = """
import os, signal, sys, torch
kill = os.environ.get("KILL_AT", "")
if kill.startswith("history:"):
    import melp_fast.training.engine as t
    n = int(kill.split(":")[1]); orig = t.append_history
    def hook(path, rec):
        orig(path, rec)
        if rec["step"] >= n:
            os.kill(os.getpid(), signal.SIGKILL)
    t.append_history = hook
elif kill.startswith("save:"):
    tag = kill.split(":")[1]; orig = torch.save
    def hook(obj, f, *a, **k):
        if tag in str(f) and "model_states" in str(f):  # DeepSpeed's own files of that checkpoint
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(obj, f, *a, **k)
    torch.save = hook
from melp_fast.train import main
main(sys.argv[1:])
"""


def run(out, *extra, kill=""):
    env = dict(os.environ, OMP_NUM_THREADS="1", KILL_AT=kill)
    return subprocess.run([sys.executable, "-c", RUNNER, *SMALL, "--out", str(out), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def losses(out):
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "history.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    r = run(out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def straight(straight_run):
    return losses(straight_run)


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, straight):
    out = tmp_path / "run"
    r = run(out, kill="history:5")
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert (out / "checkpoints" / "complete").read_text() == "step4"
    r = run(out, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = losses(out)
    assert sorted(resumed) == list(range(1, 8))
    for step in range(1, 8):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6), step


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path, straight):
    out = tmp_path / "run"
    r = run(out, kill="save:step4")
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert (out / "checkpoints" / "step4").is_dir()  # the write had started
    assert (out / "checkpoints" / "complete").read_text() == "step2"
    r = run(out, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = losses(out)
    for step in range(3, 8):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6), step


NAN_RUNNER = """
import os, sys, torch
import melp_fast.losses as L
bad = {int(s) for s in os.environ["NAN_CALLS"].split(",")}
orig = L.MELPLoss.forward
calls = [0]
def forward(self, out, batch):
    calls[0] += 1
    res = orig(self, out, batch)
    if calls[0] in bad:
        res["loss"] = res["loss"] * float("nan")
    return res
L.MELPLoss.forward = forward
from melp_fast.train import main
main(sys.argv[1:])
"""


def run_nan(out, calls, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", NAN_CALLS=calls)
    return subprocess.run([sys.executable, "-c", NAN_RUNNER, *SMALL, "--out", str(out), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_non_finite_losses_skip_steps_then_stop_with_a_checkpoint(tmp_path):
    # calls 2 and 4 are non-finite: skipped and counted, 7 good steps still happen
    out = tmp_path / "skip"
    r = run_nan(out, "2,4")
    assert r.returncode == 0, r.stderr[-3000:]
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == list(range(1, 8))
    assert hist[-1]["skipped"] == 2 and all(h["loss"] == h["loss"] for h in hist)
    # from call 4 on every loss is non-finite: after 3 in a row the run stops, saying where its checkpoint is
    out = tmp_path / "stop"
    r = run_nan(out, ",".join(str(i) for i in range(4, 40)), "--set", "train.max_nonfinite=3")
    assert r.returncode != 0
    assert "3 non-finite losses in a row at step 3" in r.stderr and "--resume" in r.stderr
    assert (out / "checkpoints" / "complete").read_text() == "step3"


def test_resume_after_a_change_of_model_shape_is_a_user_error(tmp_path, straight_run):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight_run, out)
    r = run(out, "--resume", "--set", "model.width=48")
    assert r.returncode != 0
    assert "UserError: --resume:" in r.stderr and "holds a model of another shape" in r.stderr, r.stderr[-3000:]
    assert "[48, " in r.stderr or ", 48]" in r.stderr  # names a parameter and both shapes
