"""Pre-emption under a launcher: SIGTERM to the launcher (as SLURM / Kubernetes send it) reaches every rank through
`melp-fast launch`: both ranks checkpoint, none is left running, and the job exits 143 (128 + SIGTERM), for the
deepspeed launcher and for torchrun, two CPU processes each."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--preset", "tiny", "--text-encoder", "random:tiny", "--batch-size", "4", "--steps", "400",
         "--set", "data.n_train=24", "--set", "model.width=32", "--set", "model.ffn=64", "--set", "model.heads=2",
         "--set", "model.conv_channels=16", "--set", "model.text_freeze_layers=1", "--set", "train.warmup_steps=2",
         "--quiet"]
# a training script that sleeps after each step (the signal lands mid-run; the math is unchanged)
SLOW_TRAIN = """
import sys, time
import melp_fast.train as t
from melp_fast.training.engine import shutdown_distributed
from melp_fast.errors import run_main
orig = t.clamp_logit_scale
def slow(engine):
    orig(engine)
    time.sleep(0.3)
t.clamp_logit_scale = slow
try:
    code = run_main(t.main)
finally:
    shutdown_distributed()
sys.exit(code)
"""

pytestmark = pytest.mark.slow


def launcher_args(which: str, port: int) -> list[str]:
    if which == "deepspeed":
        return ["deepspeed", "--num_gpus", "2", "--master_port", str(port)]
    return ["torchrun", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port)]


@pytest.mark.parametrize("which", ["deepspeed", "torchrun"])
def test_sigterm_to_the_launcher_reaches_every_rank(tmp_path, which):
    import psutil

    script = tmp_path / "slow_train.py"
    script.write_text(SLOW_TRAIN.format(root=str(ROOT)))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MELP_DEBUG"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "melp_fast.training.launch", *launcher_args(which, free_port()), str(script),
           "--ds_config", str(ROOT / "configs/cpu_fp32.json"), *SMALL, "--out", str(out)]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        history = out / "history.jsonl"
        t0 = time.time()
        while not (history.is_file() and len(history.read_text().splitlines()) >= 2):
            assert p.poll() is None, p.communicate()[1][-4000:]
            assert time.time() - t0 < 400, "the run did not start"
            time.sleep(0.5)
        ranks = [c for c in psutil.Process(p.pid).children(recursive=True)
                 if "slow_train.py" in " ".join(c.cmdline()) and "deepspeed.launcher" not in " ".join(c.cmdline())]
        assert len(ranks) == 2, [c.cmdline() for c in ranks]
        if which == "deepspeed":  # a second run on the folder in use, even with --overwrite, is refused at once
            r = subprocess.run([sys.executable, "-m", "melp_fast.cli", "train", *SMALL, "--out", str(out), "--overwrite"],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode == 2, r.stderr[-3000:]
            line = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
            holder = json.loads((out / ".melp_lock").read_text())["pid"]
            assert len(line) == 1 and "in use by another run" in line[0] and f"pid {holder}" in line[0], r.stderr
            assert holder in [c.pid for c in ranks] and history.is_file()  # rank 0 holds it; nothing was removed
        p.send_signal(signal.SIGTERM)  # the launcher only, as a scheduler does
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + signal.SIGTERM, err[-4000:]
    assert "stopped by SIGTERM" in err
    gone, alive = psutil.wait_procs(ranks, timeout=10)
    assert not alive, "ranks left running after the launcher ended"
    tag = (out / "checkpoints" / "complete").read_text()
    steps = [json.loads(x)["step"] for x in (out / "history.jsonl").read_text().splitlines()]
    assert tag == f"step{steps[-1]}" and steps[-1] < 400, (tag, steps[-3:])  # saved at the signal, not at the end
    assert sorted(f.name for f in (out / "checkpoints" / tag).glob("train_state_rank*")) == \
        ["train_state_rank0.safetensors", "train_state_rank1.safetensors"]  # both ranks wrote their state


@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="deepspeed launcher not on PATH")
def test_launch_names_a_bad_launcher(capsys):
    from melp_fast.training.launch import main
    from melp_fast.errors import run_main

    assert run_main(main, ["mpirun", "x.py"]) == 2
    assert "must be one of deepspeed, torchrun" in capsys.readouterr().err


# a rank under a fake `deepspeed` runner (a script of that name that starts it): the rank loops on guard.check()
RANK = """
import sys, time
from melp_fast.training.preemption import StopGuard, launcher_runner
guard = StopGuard(grace_s=60).__enter__()
print("runner", launcher_runner().pid, flush=True)
t0 = time.time()
while time.time() - t0 < 60:
    stop, _ = guard.check()
    if stop:
        print("stopped", guard.agreed_signum, flush=True)
        sys.exit(0)
    time.sleep(0.1)
print("never stopped", flush=True)
"""
FAKE_RUNNER = """
import subprocess, sys
p = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=dict(__import__("os").environ, WORLD_SIZE="1"))
print(p.pid, flush=True)
p.wait()
"""


def test_a_rank_stops_when_the_deepspeed_runner_dies_without_passing_the_signal_on(tmp_path):
    """The plain `deepspeed` runner dies at SIGTERM and tells nobody: its ranks notice within a second and stop as
    at SIGTERM (checkpoint, exit 143), instead of training on as orphans."""
    import psutil

    runner = tmp_path / "deepspeed"
    runner.write_text(FAKE_RUNNER)
    p = subprocess.Popen([sys.executable, str(runner), RANK], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        rank = psutil.Process(int(p.stdout.readline()))
        assert p.stdout.readline().split() == ["runner", str(p.pid)]
        p.send_signal(signal.SIGTERM)  # the runner's default action: it dies, the rank is not signalled
        p.wait(timeout=30)
        assert p.returncode == -signal.SIGTERM
        rank.wait(timeout=30)
        assert p.stdout.read().split() == ["stopped", str(int(signal.SIGTERM))]  # the rank's last words
    finally:
        if p.poll() is None:
            p.kill()
        try:
            rank.kill()
        except psutil.Error:
            pass
