"""The GPU gate's CPU dry run: every step runs at toy sizes, writes its JSON, and the summary covers them all."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

from benchmarks.gpu_summary import STEPS, md_tables  # noqa: E402


@pytest.mark.slow
def test_dry_run_runs_every_step_and_summarises(tmp_path):
    out = tmp_path / "gate"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)
    env.pop("GATE_STEPS", None)
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    log = (r.stdout + r.stderr)[-4000:]
    status = {}
    for step in STEPS:
        d = json.loads((out / f"{step}.step.json").read_text())
        assert d["dry_run"] is True and d["step"] == step
        status[step] = d["status"]
    # a step may only be "missing" where its script is not in this checkout (owned by another change)
    for step, st in status.items():
        if st == "missing":
            assert step == "kernel_resources" and not (ROOT / "benchmarks/kernel_resources.py").exists(), log
        else:
            assert st == "ok", (step, (out / f"{step}.log").read_text()[-3000:])
    assert (r.returncode == 0) == all(s == "ok" for s in status.values()), log

    # the real training step ran for both loss paths, with finite losses and a peak memory
    tp = json.loads((out / "throughput_paper.json").read_text())
    rows = {x["variant"]: x for x in tp["rows"]}
    assert set(rows) == {"reference", "blocks"}
    for x in rows.values():
        assert x["samples_per_s"] > 0 and x["peak_mem_mb"] > 0 and x["flops_per_step"] > 0
        assert all(abs(v) < 1e4 for v in x["losses"])
        assert "AdamW" in x["optimizer"]
        assert x["caption_targets_per_batch"][0] > 0
    assert rows["blocks"]["losses"][0] == pytest.approx(rows["reference"]["losses"][0], rel=1e-3)
    assert rows["reference"]["stages_ms"] and "backward" in rows["reference"]["stages_ms"]

    # the caption head agrees with the plain head (fp32)
    ch = json.loads((out / "caption_head.json").read_text())
    assert {x["impl"] for x in ch["rows"]} == {"reference", "chunked"}
    assert all(max(x["rel_err"].values()) < 1e-4 for x in ch["rows"])

    summary = (out / "summary.md").read_text()
    assert "DRY RUN" in summary
    steps_table = md_tables(summary)[0]
    assert [row["step"] for row in steps_table] == list(STEPS)
    assert (out / "all.tar.gz").stat().st_size > 0


def test_gate_steps_runs_only_the_named_steps(tmp_path):
    """GATE_STEPS restricts the run (a rerun of one step); the summary lists the others as not run."""
    out = tmp_path / "gate"
    env = dict(os.environ, GATE_STEPS="env", PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert json.loads((out / "env.step.json").read_text())["status"] == "ok"
    assert "torch" in (out / "env.log").read_text()
    assert not (out / "tests.step.json").exists()
    rows = {row["step"]: row["status"] for row in md_tables((out / "summary.md").read_text())[0]}
    assert rows["env"] == "ok" and rows["tests"] == "not run"
