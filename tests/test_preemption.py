"""Pre-emption: SIGTERM / SIGINT stop a 2-process run with a complete checkpoint, and the
resumed run matches an uninterrupted one at every later step; a step or save that hangs ends within the grace."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--preset", "tiny", "--text-encoder", "random:tiny", "--batch-size", "4",
         "--set", "data.n_train=24", "--set", "model.width=32", "--set", "model.ffn=64", "--set", "model.heads=2",
         "--set", "model.conv_channels=16", "--set", "model.text_freeze_layers=1", "--set", "train.warmup_steps=2",
         "--set", "model.dropout=0.1", "--quiet", "--steps", "7"]
# 24 records, 2 ranks x batch 4: 3 steps per epoch, so the run crosses epoch boundaries; dropout on.

# SIG_AT="rank:step": that rank sends itself SIGTERM right after that optimiser step (no other rank is signalled)
# SLOW: seconds of sleep after each step (gives an outside signal time to land mid-run; the math is unchanged)
# HANG_SAVE=1: the checkpoint save of a stopped run hangs (the grace watchdog must end the process)
RUNNER = """
import os, signal, sys, time
import melp_fast.train as t
sig_at, slow = os.environ.get("SIG_AT", ""), float(os.environ.get("SLOW", "0"))
rank, calls, orig = int(os.environ.get("RANK", "0")), [0], t.clamp_logit_scale
def hook(engine):
    orig(engine)
    calls[0] += 1
    if sig_at and sig_at == f"{rank}:{calls[0]}":
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(slow)
t.clamp_logit_scale = hook
if os.environ.get("HANG_SAVE"):
    import melp_fast.training.engine as e
    orig_save = e.Trainer.save
    def save(self):
        if self.step > 2:
            time.sleep(600)
        return orig_save(self)
    e.Trainer.save = save
t.main(sys.argv[1:])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out, *extra, world=2, **env_extra):
    """Start ``world`` ranks the way torchrun / the DeepSpeed launcher do (env:// rendezvous), one process each."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **env_extra)
        procs.append(subprocess.Popen([sys.executable, "-c", RUNNER, *SMALL, "--out", str(out), *extra], cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs, timeout=600):
    res = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        res.append((p.returncode, err))
    return res


def losses(out):
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "history.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    res = finish(launch(out))
    assert all(rc == 0 for rc, _ in res), res[0][1][-3000:] + res[1][1][-3000:]
    return losses(out)


def check_resume_matches(out, straight, stopped_at):
    assert (out / "checkpoints" / "complete").read_text() == f"step{stopped_at}"
    res = finish(launch(out, "--resume"))
    assert all(rc == 0 for rc, _ in res), res[0][1][-3000:] + res[1][1][-3000:]
    resumed = losses(out)
    assert sorted(resumed) == list(range(1, 8))
    for step in range(stopped_at + 1, 8):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6), step


def test_sigterm_on_one_rank_stops_every_rank_with_a_checkpoint(tmp_path, straight):
    out = tmp_path / "run"
    res = finish(launch(out, SIG_AT="1:3"))  # only rank 1 is signalled, after step 3
    for rc, err in res:
        assert rc == 128 + signal.SIGTERM, err[-3000:]
        assert "Traceback" not in err
    msg = res[0][1].strip().splitlines()[-1]
    assert "stopped by SIGTERM after step 3" in msg and "step3" in msg and "--resume" in msg, msg
    assert "SIGTERM received" in res[1][1]
    check_resume_matches(out, straight, 3)


def test_sigterm_from_outside_to_every_rank_resumes_identically(tmp_path, straight):
    out = tmp_path / "run"
    procs = launch(out, SLOW="1.0")
    hist = out / "history.jsonl"
    deadline = time.monotonic() + 300
    while not (hist.is_file() and len(hist.read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.1)
    for p in procs:  # what a scheduler does: SIGTERM to every task, SIGKILL later
        p.send_signal(signal.SIGTERM)
    res = finish(procs)
    assert all(rc == 128 + signal.SIGTERM for rc, _ in res), res[0][1][-3000:] + res[1][1][-3000:]
    stopped = int((out / "checkpoints" / "complete").read_text()[4:])
    assert 2 <= stopped < 7
    assert sorted(losses(out)) == list(range(1, stopped + 1))
    check_resume_matches(out, straight, stopped)


def test_a_save_that_hangs_ends_within_the_grace(tmp_path):
    out = tmp_path / "run"
    procs = launch(out, "--set", "train.save_every=2", "--set", "train.stop_grace_s=2", world=1,
                   SIG_AT="0:3", HANG_SAVE="1")
    (rc, err), = finish(procs, timeout=120)
    assert rc == 128 + signal.SIGTERM, err[-3000:]
    assert "no checkpoint could be completed within the 2 s grace" in err
    assert (out / "checkpoints" / "complete").read_text() == "step2"  # the previous checkpoint is kept


def test_every_preset_checkpoints_by_default():
    from melp_fast.config import PRESETS, get_preset

    for name in PRESETS:
        t = get_preset(name).train
        assert t.save_every > 0 or 0 < t.save_minutes <= 60, name
        assert 0 < t.stop_grace_s < 30, name


def test_stop_guard_in_one_process():
    from melp_fast.training.preemption import Preempted, StopGuard

    before = signal.getsignal(signal.SIGTERM)
    with StopGuard(grace_s=60, save_minutes=0) as g:
        assert g.check() == (False, False)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: noted, not raised
        assert g.check() == (True, False)
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C twice: now
            os.kill(os.getpid(), signal.SIGINT)
        e = g.preempted("ckpt/step5", 5)
        assert isinstance(e, Preempted) and e.code == 128 + signal.SIGINT and "step 5" in e.message
    assert signal.getsignal(signal.SIGTERM) is before
    g = StopGuard(save_minutes=1e-6)
    time.sleep(0.01)
    assert g.check() == (False, True)  # a timed checkpoint is due
    assert StopGuard(save_minutes=0).check() == (False, False)  # 0: never by time
