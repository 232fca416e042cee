"""Two "nodes" of one process each on this machine, joined by torchrun's c10d rendezvous on loopback, train
exactly as two processes on one node: same per-rank losses (the local loss is per rank, so one process is not the
reference) and the same all-reduced gradients, step by step."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "multinode_worker.py"
TINY = ["--ds_config", str(ROOT / "configs" / "cpu_fp32.json"), "--preset", "tiny", "--text-encoder", "random:tiny",
        "--batch-size", "4", "--steps", "2", "--set", "data.n_train=16", "--set", "model.width=32",
        "--set", "model.ffn=64", "--set", "model.heads=2", "--set", "model.layers=1", "--set", "model.conv_channels=16",
        "--set", "model.text_freeze_layers=1", "--set", "train.warmup_steps=1", "--set", "model.dropout=0.1",
        "--quiet"]

pytestmark = pytest.mark.slow


def torchrun(nnodes: int, nproc: int, node_rank: int, port: int, out: Path, records: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc_per_node", str(nproc),
           "--node_rank", str(node_rank), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
           "--rdzv_id", f"melp-{port}", "--rdzv_conf", f"is_host={int(node_rank == 0)}", "--local_addr", "127.0.0.1",
           "--max_restarts", "0", str(WORKER), *TINY, "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", RECORD_DIR=str(records), TOKENIZERS_PARALLELISM="false")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs):
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]


def load(records: Path) -> dict:
    return {r: torch.load(records / f"rank{r}.pt", weights_only=False) for r in (0, 1)}


def test_two_nodes_equal_two_processes_on_one_node(tmp_path):
    one, two = tmp_path / "one_node", tmp_path / "two_nodes"
    one.mkdir()
    two.mkdir()
    finish([torchrun(1, 2, 0, free_port(), tmp_path / "run1", one)])
    port = free_port()
    finish([torchrun(2, 1, r, port, tmp_path / "run2", two) for r in (0, 1)])
    a, b = load(one), load(two)
    assert {a[r]["world"] for r in a} == {b[r]["world"] for r in b} == {2}
    assert {b[0]["node"], b[1]["node"]} == {"0", "1"}  # one process on each node
    for r in (0, 1):
        ra, rb = a[r]["records"], b[r]["records"]
        assert len(ra) == len(rb) == 2
        for step, (x, y) in enumerate(zip(ra, rb)):
            for k in ("loss", "global", "local", "caption"):
                assert x[k] == pytest.approx(y[k], rel=1e-6, abs=1e-7), (r, step, k)
            assert x["grad"].numel() > 1000
            torch.testing.assert_close(x["grad"], y["grad"], rtol=1e-5, atol=1e-7)
    # the ranks saw different data (their local losses differ) and hold the same all-reduced gradients
    assert a[0]["records"][0]["local"] != a[1]["records"][0]["local"]
    torch.testing.assert_close(a[0]["records"][0]["grad"], a[1]["records"][0]["grad"])
