"""Resuming on another number of processes (melp_fast/training/resharding.py): a 2-process ZeRO-2 run stopped after k steps
resumes on 1 process, and a 1-process run on 2, from weights and optimiser states equal (gathered, exactly) to
those it saved; the resumed run takes exactly the records of the interrupted epoch it had not seen (by record id;
the tail the new world size cannot share evenly dropped) and trains on with a continuous history."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import free_port
from melp_fast.training.engine import warmup_cosine

ROOT = Path(__file__).resolve().parent.parent
N, BATCH, SEED = 24, 4, 42  # records (no held-out split), batch per process, train.seed
SMALL = ["--preset", "tiny", "--text-encoder", "random:tiny", "--batch-size", str(BATCH),
         "--set", f"data.n_train={N}", "--set", "data.val_fraction=0", "--set", "model.width=32",
         "--set", "model.ffn=64", "--set", "model.heads=2", "--set", "model.layers=1",
         "--set", "model.conv_channels=16", "--set", "model.text_freeze_layers=1", "--set", "train.warmup_steps=2",
         "--set", "model.dropout=0.1", "--quiet"]

# STOP_AT=k: rank 0 sends itself SIGTERM after optimiser step k (the run saves and stops: a pre-emption);
# RECORDS: every rank appends (epoch, record ids) of each batch it trains on to RECORDS/rank<r>.jsonl;
# DUMP: every rank's fragments of the fp32 weights and Adam moments after the save of the stopped run
# (DUMP/saved<r>.pt) and right after the resumed run's load (DUMP/loaded<r>.pt)
RUNNER = """
import json, os, signal, sys
import torch
import melp_fast.training.engine as e
import melp_fast.train as t
rank, stop_at = int(os.environ.get("RANK", "0")), int(os.environ.get("STOP_AT", "0"))
records, dump = os.environ["RECORDS"], os.environ["DUMP"]
orig_clamp, orig_step, orig_save, orig_load = t.clamp_logit_scale, e.Trainer.train_step, e.Trainer.save, e.Trainer.load
def full_states(trainer):
    # this rank's fragments of every parameter's fp32 weights and Adam moments (ZeRO 1-2 partitions), by offset
    opt = trainer.engine.optimizer
    out = {}
    for n, p in trainer.engine.module.named_parameters():
        m = getattr(p, "_hp_mapping", None)
        if m is None:
            continue
        flat = opt.single_partition_of_fp32_groups[m.param_group_index]
        st = opt.optimizer.state.get(flat, {})
        h = m.hp_fragment_address
        parts = [None if x is None else x.detach().narrow(0, h.start, h.numel).clone()
                 for x in (flat, st.get("exp_avg"), st.get("exp_avg_sq"))]
        out[n] = {"start": m.lp_fragment_address.start, "numel": p.numel(), "parts": parts}
    return out
def clamp(engine):
    orig_clamp(engine)
    if rank == 0 and stop_at and stop_at == trainer_ref[0].step:
        os.kill(os.getpid(), signal.SIGTERM)
def train_step(self, batch, compute):
    trainer_ref[0] = self
    with open(os.path.join(records, f"rank{rank}.jsonl"), "a") as f:
        f.write(json.dumps([self.epoch, batch["index"].tolist()]) + "\\n")
    return orig_step(self, batch, compute)
def save(self):
    tag = orig_save(self)
    if stop_at and self.step == stop_at:
        torch.save(full_states(self), os.path.join(dump, f"saved{rank}.pt"))
    return tag
def load(self, *a, **k):
    folder = orig_load(self, *a, **k)
    torch.save(full_states(self), os.path.join(dump, f"loaded{rank}.pt"))
    return folder
trainer_ref = [None]
t.clamp_logit_scale, e.Trainer.train_step, e.Trainer.save, e.Trainer.load = clamp, train_step, save, load
t.main(sys.argv[1:])
"""


def launch(out, world, steps, ds, tmp, *extra, stop_at=0):
    port, procs = free_port(), []
    for d in ("records", "dump"):
        (tmp / d).mkdir(exist_ok=True)
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), STOP_AT=str(stop_at),
                   RECORDS=str(tmp / "records"), DUMP=str(tmp / "dump"))
        procs.append(subprocess.Popen([sys.executable, "-c", RUNNER, *SMALL, "--ds_config", str(ds), "--steps",
                                       str(steps), "--out", str(out), *extra], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return [(p.wait(timeout=600), p.communicate()[1]) for p in procs]


def seen(tmp, world):
    """(epoch, record id) of every record the ranks trained on, in order; the files are then cleared."""
    out = []
    for r in range(world):
        path = tmp / "records" / f"rank{r}.jsonl"
        out += [(e, i) for e, ids in map(json.loads, path.read_text().splitlines()) for i in ids]
        path.unlink()
    return out


def gathered(tmp, what, world):
    """Every parameter's [fp32 weights, exp_avg, exp_avg_sq], assembled from the ranks' fragments."""
    full, covered = {}, {}
    for r in range(world):
        for name, f in torch.load(tmp / "dump" / f"{what}{r}.pt").items():
            if name not in full:
                full[name] = [torch.full((f["numel"],), float("nan")) for _ in range(3)]
                covered[name] = 0
            for k, part in enumerate(f["parts"]):
                assert part is not None, (what, name, k)
                full[name][k][f["start"]:f["start"] + part.numel()] = part
            covered[name] += f["parts"][0].numel()
    assert all(covered[n] == full[n][0].numel() for n in full), what  # every element from exactly one rank
    return full


def permutation(epoch):
    """The epoch's order of the records (engine.ResumableSampler: DistributedSampler's seeding, any world)."""
    g = torch.Generator()
    g.manual_seed(SEED + epoch)
    return torch.randperm(N, generator=g).tolist()


# (processes, processes on resume, stopped after step, DeepSpeed JSON); 1 -> 2 stops mid-epoch at a record count
# that is not a whole number of the new world's batches, and leaves a tail that 2 ranks cannot share
CASES = [(2, 1, 4, {"zero_optimization": {"stage": 2}}), (1, 2, 3, {"zero_optimization": {"stage": 1}})]
EXTRA = json.loads(os.environ.get("MELP_RESUME_WORLD_CASE", "null"))  # one more case by hand, e.g. ZeRO-3 or bf16
CASES += [tuple(EXTRA)] if EXTRA else []


def case_id(case) -> str:
    world, new_world, _, ds = case
    prec = "-bf16" if ds.get("bf16", {}).get("enabled") else ""
    return f"{world}to{new_world}-zero{ds.get('zero_optimization', {}).get('stage', 0)}{prec}"


@pytest.mark.slow
@pytest.mark.parametrize("world,new_world,stop_at,ds_json", CASES, ids=[case_id(c) for c in CASES])
def test_resume_on_another_world_size(tmp_path, world, new_world, stop_at, ds_json):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps(ds_json))
    out = tmp_path / "run"
    per_epoch = N // (BATCH * world)
    epoch, done = divmod(stop_at, per_epoch)
    consumed = done * BATCH * world  # records of the interrupted epoch seen before the stop
    steps = stop_at + (N - consumed) // (BATCH * new_world)  # the resumed run ends with the interrupted epoch
    res = launch(out, world, steps, ds, tmp_path, stop_at=stop_at)
    assert all(rc == 128 + signal.SIGTERM for rc, _ in res), res[0][1][-3000:]
    before = seen(tmp_path, world)
    assert sorted(i for e, i in before if e == epoch) == sorted(permutation(epoch)[:consumed])

    res = launch(out, new_world, steps, ds, tmp_path, "--resume")
    assert all(rc == 0 for rc, _ in res), res[0][1][-3000:]
    assert "converting it to a universal checkpoint" in res[0][1] and "converted in" in res[0][1]
    # weights and Adam moments after the load are those saved (gathered over the ranks), exactly
    saved, loaded = gathered(tmp_path, "saved", world), gathered(tmp_path, "loaded", new_world)
    assert saved.keys() == loaded.keys() and len(saved) > 20
    for name in saved:
        for a, b in zip(saved[name], loaded[name]):
            assert torch.equal(a, b), name
    # the interrupted epoch goes on with exactly the records not yet seen; the tail that does not give every new
    # rank a full batch is dropped
    after = [i for e, i in seen(tmp_path, new_world) if e == epoch]
    rest = permutation(epoch)[consumed:]
    used = len(rest) // new_world // BATCH * BATCH * new_world
    assert sorted(after) == sorted(rest[:used])
    assert not set(after) & set(permutation(epoch)[:consumed])
    assert len(rest) - used < BATCH * new_world + new_world
    # the history: one record per step, continuous across the resume
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == list(range(1, steps + 1))
    assert all(h["loss"] == h["loss"] for h in hist)
    # the schedule went on from the saved step (DeepSpeed restored it with the universal checkpoint)
    lr = warmup_cosine(2, steps)
    for h in hist:
        assert h["lr"] == pytest.approx(1e-3 * lr(h["step"]), rel=1e-9, abs=1e-15), h["step"]


@pytest.mark.parametrize("n", [23, 24])
def test_sampler_positions_in_records(n):
    """ResumableSampler: DistributedSampler(drop_last=True) from the start and on a same-world resume; after a
    change of world size, the records not yet consumed, each once, over the new ranks (the tail dropped)."""
    from torch.utils.data import DistributedSampler

    from melp_fast.training.engine import ResumableSampler

    data = list(range(n))
    for world in (1, 2, 3):
        for rank in range(world):
            want = DistributedSampler(data, world, rank, shuffle=True, seed=5, drop_last=True)
            want.set_epoch(3)
            got = ResumableSampler(data, world, rank, shuffle=True, seed=5, drop_last=True)
            got.set_epoch(3)
            assert list(got) == list(want) and len(got) == len(want)
            got.set_epoch(3, start=4)  # 4 records per rank consumed: the same world goes on where it was
            assert list(got) == list(want)[4:] and len(got) == len(want) - 4
    g = torch.Generator()
    g.manual_seed(5 + 3)
    order = torch.randperm(n, generator=g).tolist()
    for consumed in (0, 7, 12):  # e.g. 7 records: not a whole number of batches of the new world
        for world in (1, 2, 3):
            parts = []
            for rank in range(world):
                s = ResumableSampler(data, world, rank, shuffle=True, seed=5, drop_last=True)
                s.set_epoch(3, consumed=consumed)
                parts.append(list(s))
                assert len(s) == len(parts[-1])
            taken = [i for p in parts for i in p]
            rest = order[consumed:]
            assert len(set(taken)) == len(taken) and not set(taken) & set(order[:consumed])
            assert sorted(taken) == sorted(rest[:len(rest) // world * world])  # the tail of < world dropped


def test_run_format_version(tmp_path):
    from melp_fast.errors import UserError
    from melp_fast.training.run_dir import FORMAT_FILE, RUN_FORMAT, prepare_run_dir, release_lock, run_format

    assert run_format(tmp_path) == 1  # a folder of a version before the format file
    out = tmp_path / "run"
    prepare_run_dir(out, resume=False, overwrite=False)
    release_lock(out)
    assert run_format(out) == RUN_FORMAT == int((out / FORMAT_FILE).read_text())
    for bad in (str(RUN_FORMAT + 1), "x"):
        (out / FORMAT_FILE).write_text(bad + "\n")
        with pytest.raises(UserError) as e:
            run_format(out)
        msg = str(e.value)
        assert "\n" not in msg and str(out / FORMAT_FILE) in msg and f"run format '{bad}' is unknown" in msg
