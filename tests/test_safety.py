"""Loading never runs code, and a run folder is never replaced by accident.

A crafted pickle (its __reduce__ calls exec, which would write a marker file) is planted where a run folder holds
pickles: our train state, DeepSpeed's model states, its optimizer states, and beside the exported model. Resuming,
zero-shot evaluation and generation must refuse it (naming the file) or never open it: the marker never appears.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
from helpers import DCM as DICOM, need_fixture  # noqa: E402  (pydicom's 12-lead test ECG)
SMALL = ["--preset", "tiny", "--text-encoder", "random:tiny", "--batch-size", "4",
         "--set", "data.n_train=20", "--set", "model.width=32", "--set", "model.ffn=64", "--set", "model.heads=2",
         "--set", "model.conv_channels=16", "--set", "model.text_freeze_layers=1", "--set", "train.warmup_steps=2",
         "--quiet"]
TRAIN = "import sys; from melp_fast.cli import main; sys.exit(main(['train', *sys.argv[1:]]))"


def run_py(code, *args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MELP_DEBUG", None)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def train(out, *extra, timeout=600):
    # ZeRO-1 bf16: the checkpoint holds model states and optimizer states in separate pickles
    return run_py(TRAIN, *SMALL, "--ds_config", ROOT / "configs/cpu_bf16.json", "--out", out, *extra, timeout=timeout)


class Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def craft(path: Path, marker: Path):
    """Replace ``path`` by a torch zip checkpoint whose unpickling runs code (it writes ``marker``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"module": Exploit(marker)}, path)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "run"
    r = train(out, "--steps", "2", "--set", "train.save_every=1")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def copy_run(base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(base, out)
    shutil.copytree(base.parent / "data", tmp_path / "data")
    return out


def test_crafted_pickle_is_live(tmp_path):
    # the exploit really runs under a plain unpickling load: the tests below would catch a regression
    marker = tmp_path / "marker"
    craft(tmp_path / "x.pt", marker)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.read_text() == "pwned"


def test_checkpoint_holds_no_pickle_of_ours(base_run):
    folder = base_run / "checkpoints" / "step2"
    assert (folder / "train_state_rank0.safetensors").is_file()
    assert not list(folder.glob("train_state*.pt"))


@pytest.mark.parametrize("member", ["mp_rank_00_model_states.pt", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                    "train_state_rank0.pt"])
def test_resume_refuses_a_crafted_pickle(base_run, tmp_path, member):
    out = copy_run(base_run, tmp_path)
    marker = tmp_path / "marker"
    folder = out / "checkpoints" / "step2"
    if member == "train_state_rank0.pt":  # an older checkpoint layout: our state as a pickle, read weights-only
        (folder / "train_state_rank0.safetensors").unlink()
    assert member == "train_state_rank0.pt" or (folder / member).is_file()
    craft(folder / member, marker)
    r = train(out, "--steps", "3", "--resume")
    assert not marker.exists(), "the crafted checkpoint ran code"
    assert r.returncode == 2, r.stderr[-3000:]
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("error: refused to load") and member in err[-1], err[-1]
    assert "Traceback" not in r.stderr


def test_crafted_pickles_beside_the_model_are_never_opened(base_run, tmp_path):
    out = copy_run(base_run, tmp_path)
    marker = tmp_path / "marker"
    for rel in ["model/pytorch_model.bin", "model/text_encoder/pytorch_model.bin", "model/training_args.bin",
                "model/text_encoder/training_args.bin", "checkpoints/step2/mp_rank_00_model_states.pt",
                "checkpoints/step2/train_state_rank0.pt", "checkpoints/step1/mp_rank_00_model_states.pt"]:
        craft(out / rel, marker)
    store = tmp_path / "data" / "synthetic-train-20-seed0"
    cli = "import sys; from melp_fast.cli import main; sys.exit(main(sys.argv[1:]))"
    r = run_py(cli, "zero-shot", "--model", out / "model", "--store", store)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not marker.exists()
    need_fixture(DICOM)
    r = run_py(cli, "generate", "--ckpt", out / "model", "--ecg", DICOM, "--beam-width", "1", "--max-len", "3",
               "--out", tmp_path / "gen")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "gen" / "report.json").read_text())["n_beats"] > 0
    assert not marker.exists()


def test_a_finished_run_is_not_replaced_without_resume_or_overwrite(base_run, tmp_path):
    out = copy_run(base_run, tmp_path)
    before = (out / "history.jsonl").read_text()
    r = train(out, "--steps", "1")
    assert r.returncode == 2 and "--resume" in r.stderr and "--overwrite" in r.stderr, r.stderr[-2000:]
    assert str(out) in r.stderr.strip().splitlines()[-1]
    assert (out / "history.jsonl").read_text() == before and (out / "checkpoints" / "step2").is_dir()
    r = train(out, "--steps", "1", "--overwrite")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "--overwrite: removed" in r.stderr
    assert [json.loads(x)["step"] for x in (out / "history.jsonl").read_text().splitlines()] == [1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["step1"]


def test_resume_with_nothing_to_resume_is_one_line(tmp_path):
    r = train(tmp_path / "empty", "--steps", "1", "--resume")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no complete checkpoint" in r.stderr.strip().splitlines()[-1]


def test_demo_replaces_only_its_own_folder(tmp_path, capsys):
    from melp_fast.demo import demo_folder
    from melp_fast.errors import UserError

    out = tmp_path / "demo"
    assert demo_folder(out) == [] and (out / ".melp_demo").is_file()  # a first demo
    (out / "history.jsonl").write_text('{"step": 1}\n')  # ... that trained
    assert demo_folder(out) == ["--overwrite"]  # a second demo replaces it, saying so
    assert f"replacing the previous demo run in {out}" in capsys.readouterr().err
    other = tmp_path / "real"
    (other / "checkpoints").mkdir(parents=True)  # a training run the demo did not make
    with pytest.raises(UserError, match="did not make"):
        demo_folder(other)
    assert not (other / ".melp_demo").exists()


def test_demo_seed_reaches_the_training_run(tmp_path):
    # melp-fast demo --seed N trains with train.seed = N (the seed a table of demo runs names); without it, the
    # tiny preset's seed
    from melp_fast.config import Config, base_config, from_args
    from melp_fast.demo import train_argv
    from melp_fast.options import TRAIN_FLAGS, parse

    def seed_of(demo_argv):
        args = parse("demo", demo_argv)
        targs = parse("train", train_argv(args, tmp_path / "demo", 5))
        return from_args(base_config(targs, Config, default_preset="tiny"), targs, TRAIN_FLAGS).train.seed

    preset = seed_of([])
    assert seed_of(["--seed", str(preset + 7)]) == preset + 7


def _swap_a_dtype(folder: Path):
    """A same-size dtype swap in DeepSpeed's model states (float -> int of the same width), as a tampered file."""
    f = folder / "mp_rank_00_model_states.pt"
    state = torch.load(f, weights_only=False)  # our own file, written by the base run
    name, t = next((k, v) for k, v in state["module"].items() if v.is_floating_point() and v.numel() > 1)
    state["module"][name] = t.clone().view({2: torch.int16, 4: torch.int32}[t.element_size()])
    torch.save(state, f)
    return name


@pytest.mark.parametrize("how", ["dtype_swap", "foreign_run", "fifo", "pointer_outside"])
def test_resume_refuses_a_tampered_or_foreign_checkpoint(base_run, tmp_path, how):
    """Each refusal is one line naming the file and exit 2, in seconds (a FIFO never blocks), and the
    run's files are left as they were."""
    out = copy_run(base_run, tmp_path)
    folder = out / "checkpoints" / "step2"
    words = []
    if how == "dtype_swap":
        words = [f"tensor {_swap_a_dtype(folder)} is int", "mp_rank_00_model_states.pt"]
    elif how == "foreign_run":
        (out / ".melp_run_id").write_text("0123456789abcdef0123456789abcdef\n")
        words = ["was written by another run", str(folder)]
    elif how == "fifo":
        victim = next(folder.glob("*optim_states.pt"))
        victim.unlink()
        os.mkfifo(victim)
        words = [victim.name, "is a FIFO"]
    else:
        other = tmp_path / "other" / "checkpoints" / "step2"
        shutil.copytree(folder, other)
        (out / "checkpoints" / "complete").write_text("../../other/checkpoints/step2")
        words = ["not a checkpoint folder of this run"]
    history = (out / "history.jsonl").read_text()
    r = train(out, "--steps", "3", "--resume", timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    err = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    for w in words:
        assert w in err[0], (w, err[0])
    assert (out / "history.jsonl").read_text() == history
