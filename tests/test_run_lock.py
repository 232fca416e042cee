"""One run at a time on a run folder, and checkpoints validated on load.

- the lock: a second run on a folder in use stops at once (exit 2, one line naming the holder's pid); a stale lock
  (its holder gone) is taken over, saying so;
- the pointer names a plain folder inside this run's checkpoints, every file in it a regular file (a FIFO would
  hang the load); the checkpoint carries this run's id; train-state values in range; tensors' dtypes and shapes
  match the model (a same-size dtype swap in a file header is refused, not loaded as garbage).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from melp_fast.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SEED = 30
print(f"test_run_lock: seed {SEED}")

HOLD = ("import sys, time; from melp_fast.training.run_dir import acquire_lock; acquire_lock(sys.argv[1]); "
        "print('held', flush=True); time.sleep(900)")
TRAIN = "import sys; from melp_fast.cli import main; sys.exit(main(['train', *sys.argv[1:]]))"
SMALL = ["--preset", "tiny", "--text-encoder", "random:tiny", "--batch-size", "4", "--steps", "2",
         "--set", "data.n_train=8", "--set", "model.width=32", "--set", "model.ffn=64", "--set", "model.heads=2",
         "--set", "model.conv_channels=16", "--set", "model.text_freeze_layers=1", "--quiet"]


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MELP_DEBUG"):
        e.pop(k, None)
    return e


def one_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


def test_a_second_run_on_a_folder_in_use_stops_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (out / "history.jsonl").write_text('{"step": 1}\n')  # what the running run has written so far
        (out / "checkpoints" / "step1").mkdir(parents=True)
        (out / "checkpoints" / "complete").write_text("step1")
        r = subprocess.run([sys.executable, "-c", TRAIN, *SMALL, "--out", str(out), "--resume"], cwd=ROOT, env=env(),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr[-2000:]
        line = one_line(r.stderr)
        assert "is in use by another run" in line and f"pid {holder.pid}" in line and str(out) in line, line
        assert (out / "history.jsonl").read_text() == '{"step": 1}\n'  # untouched
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_saying_so(tmp_path):
    from melp_fast.training.run_dir import LOCK_FILE, acquire_lock, release_lock

    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "host": "h", "since": "then", "argv": ["x"]}))
    said = []
    acquire_lock(out, say=said.append)
    try:
        assert said and "stale" in said[0] and f"pid {int(dead.stdout)}" in said[0], said
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
        # a second holder in another process is refused while this one lives
        r = subprocess.run([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, env=env(), capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 1 and f"pid {os.getpid()}" in r.stderr and "in use by another run" in r.stderr
    finally:
        release_lock(out)


# ------------------------------------------------------------------------------------------------ checkpoints
def test_the_pointer_must_name_a_plain_folder_of_this_run(tmp_path):
    from melp_fast.checks import checkpoint_folder

    ck = tmp_path / "run" / "checkpoints"
    (ck / "step2").mkdir(parents=True)
    (ck / "step2" / "a.pt").write_bytes(b"x")
    (tmp_path / "other" / "checkpoints" / "step5").mkdir(parents=True)
    (ck / "complete").write_text("step2")
    assert checkpoint_folder(ck, "complete") == ck / "step2"
    for target in ("../../other/checkpoints/step5", "/etc", "..", "step9"):
        (ck / "complete").write_text(target)
        with pytest.raises(UserError, match="complete|step9") as e:
            checkpoint_folder(ck, "complete")
        assert "\n" not in str(e.value)
    (ck / "complete").write_text("step3")
    (ck / "step3").symlink_to(tmp_path / "other" / "checkpoints" / "step5")
    with pytest.raises(UserError, match="missing or a link"):
        checkpoint_folder(ck, "complete")
    (ck / "complete").write_text("step2")
    os.mkfifo(ck / "step2" / "mp_rank_00_model_states.pt")
    with pytest.raises(UserError, match="is a FIFO"):
        checkpoint_folder(ck, "complete")


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    from melp_fast.training.run_dir import check_owner
    from melp_fast.training.run_dir import run_id

    out = tmp_path / "run"
    mine = run_id(out, create=True)
    check_owner(out, out / "checkpoints" / "step2", {"run_id": mine})
    check_owner(out, out / "checkpoints" / "step2", {})  # an older version's checkpoint: no id, accepted
    with pytest.raises(UserError, match="written by another run"):
        check_owner(out, out / "checkpoints" / "step2", {"run_id": "f" * 32})


def _state(tmp_path, **position):
    from melp_fast.training.safe_load import save_train_state

    torch.manual_seed(SEED)
    return save_train_state(tmp_path, 0, {"step": 3, "epoch": 0, "batch": 3, "skipped": 0, **position})


def _rewrite_meta(path, edit):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["melp_train_state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(meta)
    save_file(tensors, str(path), metadata={"melp_train_state": json.dumps(meta)})


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["position"].update(step=-3), "step = -3"),
    (lambda m: m["position"].update(step=10 ** 18), "step = 1000000000000000000"),
    (lambda m: m["position"].update(step=1e300), "step = "),
    (lambda m: m["numpy"].__setitem__(0, "os.system"), "numpy RNG state 'os.system'"),
    (lambda m: m["python"].__setitem__(0, 99), "Python RNG state"),
])
def test_train_state_values_out_of_range_are_refused(tmp_path, edit, words):
    from melp_fast.training.safe_load import read_train_state

    path = _state(tmp_path)
    read_train_state(tmp_path, 0)  # as written: fine
    _rewrite_meta(path, edit)
    with pytest.raises(UserError) as e:
        read_train_state(tmp_path, 0)
    msg = str(e.value)
    assert words in msg and str(path) in msg and "\n" not in msg, msg


def test_tensors_with_a_swapped_dtype_are_refused_before_loading(tmp_path):
    from melp_fast.checks import check_tensors, expected_tensors
    from melp_fast.training.safe_load import deepspeed_weights_only

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    exp = expected_tensors(model)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    check_tensors(good, exp, "f")
    bad = dict(good, **{"0.weight": good["0.weight"].view(torch.int32)})  # F32 -> I32, same bytes
    with pytest.raises(UserError, match=r"f: tensor 0.weight is int32, the model's is float32"):
        check_tensors(bad, exp, "f")
    with pytest.raises(UserError, match=r"shape \[2, 4\]"):
        check_tensors(dict(good, **{"0.weight": torch.zeros(2, 4)}), exp, "f")
    # through DeepSpeed's loading path: the file is refused, the model keeps its weights
    f = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": bad}, f)
    with pytest.raises(UserError, match="mp_rank_00_model_states.pt: tensor 0.weight is int32"):
        with deepspeed_weights_only(expect=exp):
            torch.load(f, weights_only=False)
    os.mkfifo(tmp_path / "fifo.pt")
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="not a regular file"):
        with deepspeed_weights_only(expect=exp):
            torch.load(tmp_path / "fifo.pt", weights_only=False)
    assert time.perf_counter() - t0 < 5


def test_a_fifo_among_the_run_files_is_refused_before_it_can_block(tmp_path):
    from melp_fast.training.run_dir import check_run_dir

    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / "history.jsonl")
    for resume, overwrite in ((False, False), (False, True)):
        with pytest.raises(UserError, match=r"history.jsonl is not a regular file"):
            check_run_dir(out, resume=resume, overwrite=overwrite)
