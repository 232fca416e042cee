"""The DeepSpeed engine on CPU, two processes: reference and auto (kernels on CUDA, PyTorch blocks here) losses
give the same training run, ZeRO-1, 2 and 3 agree with each other, and ZeRO-3 keeps the pretrained, partly frozen
text encoder intact."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
STEPS = 20
SMALL = ["--preset", "tiny", "--text-encoder", "random:tiny", "--batch-size", "4",
         "--set", "data.n_train=48", "--set", "model.width=32", "--set", "model.ffn=64", "--set", "model.heads=2",
         "--set", "model.conv_channels=16", "--set", "model.text_freeze_layers=1", "--set", "train.warmup_steps=2",
         "--set", "data.lead_mask_p=0.0", "--quiet"]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("deepspeed_launcher")]


def ds_config(tmp_path, stage, name):
    cfg = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
           "zero_optimization": {"stage": stage, "stage3_gather_16bit_weights_on_model_save": True},
           "zero_force_ds_cpu_optimizer": False, "steps_per_print": 10**6}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def launch(tmp_path, name, stage, *extra):
    out = tmp_path / name
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), str(ROOT / "melp_fast/train.py"),
           "--ds_config", str(ds_config(tmp_path, stage, name)), *SMALL, "--out", str(out), *extra]
    r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()], out


def assert_same_run(a, b, rel):
    assert len(a) == len(b) == STEPS
    for ra, rb in zip(a, b):
        for k in ("loss", "global", "local", "caption"):
            assert rb[k] == pytest.approx(ra[k], rel=rel, abs=1e-6), (ra["step"], k, ra[k], rb[k])


def test_reference_and_auto_losses_train_identically(tmp_path):
    ref, _ = launch(tmp_path, "ref", 0, "--steps", str(STEPS), "--loss-impl", "reference")
    fused, _ = launch(tmp_path, "auto", 0, "--steps", str(STEPS), "--loss-impl", "auto")
    assert_same_run(ref, fused, rel=1e-4)
    assert ref[-1]["loss"] < ref[0]["loss"]


def test_zero_stages_agree(tmp_path):
    runs = {s: launch(tmp_path, f"zero{s}", s, "--steps", str(STEPS))[0] for s in (1, 2, 3)}
    assert_same_run(runs[1], runs[2], rel=1e-4)
    assert_same_run(runs[1], runs[3], rel=1e-4)


def test_zero3_keeps_pretrained_frozen_text_encoder(tmp_path):
    """DeepSpeed issue 5443: ZeRO-3 can leave Hugging Face parameters empty. Train 2 steps of ZeRO-3 from MiniLM
    with 3 frozen layers, export, and compare the frozen weights with MiniLM's own."""
    from safetensors.torch import load_file

    from melp_fast.model.text import load_backbone

    args = [{"random:tiny": "minilm", "model.text_freeze_layers=1": "model.text_freeze_layers=3"}.get(a, a)
            for a in SMALL]
    out = tmp_path / "z3"
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), str(ROOT / "melp_fast/train.py"),
           "--ds_config", str(ds_config(tmp_path, 3, "z3")), *args, "--out", str(out), "--steps", "2",
           "--set", "train.lr=0.01"]
    r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    trained = load_file(str(out / "model" / "model.safetensors"))
    minilm = load_backbone("minilm").state_dict()
    frozen = [k for k in minilm if k.startswith("embeddings.") or any(k.startswith(f"encoder.layer.{i}.") for i in range(3))]
    free = [k for k in minilm if k.startswith("encoder.layer.5.") and k.endswith("weight")]
    assert frozen and free
    for k in frozen:
        w = trained[f"text.backbone.{k}"]
        assert w.numel() > 0 and torch.equal(w, minilm[k].float()), k
    # trained layers moved (lr 0.01), and are not empty either
    assert any(not torch.equal(trained[f"text.backbone.{k}"], minilm[k].float()) for k in free)


_SHM_PROBE = """
import os
from pathlib import Path
import deepspeed.comm.comm as dscomm, torch.distributed as dist
from melp_fast.training.engine import init_distributed
# LOCAL_SIZE as the deepspeed launcher sets it: all ranks on this machine, where DeepSpeed would map shared memory
os.environ["LOCAL_SIZE"] = "1"
init_distributed()
# the segment DeepSpeed's ops/csrc/cpu/comm/shm.cpp would name after the user id, MASTER_ADDR and MASTER_PORT
seg = Path("/dev/shm") / ("deepspeed_allreduce_buffer_%d_%s_%s_0"
                          % (os.getuid(), os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]))
print("op", dscomm.cdb.shm_comm_op is None, "left", seg.exists())
dist.destroy_process_group()
"""


def test_deepspeed_shared_memory_op_is_not_built():
    """On CPU, init_distributed keeps DeepSpeed from building its shared-memory all-reduce op (a C++ compile per
    new environment, a stale build lock after an interrupted first run, 64 MiB of /dev/shm per rank)."""
    from helpers import run_python

    out = run_python(_SHM_PROBE, [], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "op True left False" in out.stdout, out.stdout
