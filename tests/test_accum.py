"""Gradient accumulation (train.accum_steps, melp_fast/training/accum.py): 4 micro-batches of 8 in "cache" mode give the loss
and the gradients of one batch of 32 (fp32, dropout off), on one process and on two gloo processes (against two
processes with a batch of 32 each); with dropout on, each micro-batch's second pass reproduces its cached
embeddings exactly; "plain" (DeepSpeed's accumulation: negatives per micro-batch) differs, and says so; a
non-finite loss in any micro-batch skips the whole step and leaves no gradient behind.

The data and model are drawn from fixed seeds (tests/accum_worker.py: model seed 7, data seed 100 + rank)."""


import pytest
import torch

from helpers import free_port, spawn

pytestmark = pytest.mark.slow


def run_workers(world: int, out, cases, limit_s: int = 240) -> dict:
    """accum_worker.worker on `world` spawned processes; their results by rank."""
    from accum_worker import worker

    spawn(worker, (world, free_port(), str(out), cases), world, limit_s, f"{world}-process accumulation run")
    return {r: torch.load(out / f"rank{r}.pt") for r in range(world)}


def grad_errors(got: dict, want: dict) -> dict:
    """Per parameter: ||got - want|| / max(||want||, 1e-3 x the largest parameter gradient's norm). The floor
    is for parameters whose exact gradient is (near) zero, e.g. attention key biases, whose fp32 values are
    rounding noise of either computation."""
    assert got.keys() == want.keys() and len(want) > 50
    floor = 1e-3 * max(float(g.norm()) for g in want.values())
    return {n: float((got[n] - g).norm()) / max(float(g.norm()), floor) for n, g in want.items()}


def check_same_step(cache: dict, big: dict):
    for k in ("loss", "global", "local", "caption"):
        assert cache["losses"][k] == pytest.approx(big["losses"][k], rel=1e-5), k
    err = grad_errors(cache["grads"], big["grads"])
    worst = max(err, key=err.get)
    assert err[worst] <= 1e-5, (worst, err[worst])


# "cache_nan" / "plain_nan": a step with a NaN in micro-batch 1 / 3 first (skipped), then the clean step
CASES = [("big", "big", 0.0), ("cache_nan", "cache", 0.0, 1), ("plain", "plain", 0.0), ("dropout", "cache", 0.1),
         ("plain_nan", "plain", 0.0, 3)]


def test_cache_mode_is_one_big_batch_on_one_process(tmp_path):
    r = run_workers(1, tmp_path, CASES)[0]
    # the cache step (after a skipped one, which must have left no gradient behind) is the big batch's
    assert r["cache_nan"]["skipped_step"] is None and r["cache_nan"]["after_skip"] == (0, 1)
    check_same_step(r["cache_nan"], r["big"])
    # "plain": each micro-batch its own negatives: another objective, other gradients
    assert r["plain"]["losses"]["global"] < 0.9 * r["big"]["losses"]["global"]
    assert max(grad_errors(r["plain"]["grads"], r["big"]["grads"]).values()) > 1e-2
    # dropout on: the second pass replays each micro-batch's RNG state and reproduces its cached embeddings
    assert r["dropout"]["replay"] == [0.0, 0.0, 0.0, 0.0]
    assert r["dropout"]["wrong_rng"] > 1e-3  # the check can fail: another micro-batch's RNG state differs
    # plain: a NaN in the last micro-batch skips the step after three were accumulated; the next step's gradients
    # are exactly those of a fresh one
    assert r["plain_nan"]["skipped_step"] is None and r["plain_nan"]["after_skip"] == (0, 1)
    assert r["plain_nan"]["losses"] == r["plain"]["losses"]
    for n, g in r["plain"]["grads"].items():
        assert torch.equal(r["plain_nan"]["grads"][n], g), n


def test_cache_mode_is_one_big_batch_on_two_processes(tmp_path):
    r = run_workers(2, tmp_path, [("big", "big", 0.0), ("cache", "cache", 0.0)])
    for rank in (0, 1):
        check_same_step(r[rank]["cache"], r[rank]["big"])
    # the ranks had different data, and DeepSpeed handed both the same all-reduced gradients
    assert r[0]["big"]["losses"]["local"] != r[1]["big"]["losses"]["local"]
    for n, g in r[0]["cache"]["grads"].items():
        torch.testing.assert_close(g, r[1]["cache"]["grads"][n], rtol=0, atol=0)


def test_modes_say_what_the_negatives_are(capsys):
    from melp_fast.training.accum import EmbeddingCache
    from melp_fast.config import get_preset
    from melp_fast.losses import MELPLoss
    from melp_fast.train import accumulation

    cfg = get_preset("tiny")
    cfg.train.batch_size, cfg.train.accum_steps = 8, 4
    crit = MELPLoss(cfg.loss)
    assert isinstance(accumulation(cfg, None, 2, 0, crit), EmbeddingCache)
    said = capsys.readouterr().out
    assert "cache (4 micro-batches of 8" in said and "InfoNCE 64 candidates, beat-sentence 32" in said
    assert "MiB per process" in said
    cfg.train.accum_mode = "plain"
    assert accumulation(cfg, None, 2, 0, crit) is None
    said = capsys.readouterr().out
    assert "plain" in said and "one micro-batch at a time: InfoNCE 16 candidates, beat-sentence 8" in said
    cfg.train.accum_steps = 1
    assert accumulation(cfg, None, 2, 0, crit) is None and capsys.readouterr().out == ""


def test_deepspeed_json_accumulation_must_agree(tmp_path):
    import json

    from melp_fast.training.engine import load_ds_config
    from melp_fast.errors import UserError

    f = tmp_path / "ds.json"
    f.write_text(json.dumps({"gradient_accumulation_steps": 2}))
    with pytest.raises(UserError, match=r"ds.json: gradient_accumulation_steps is 2, but train.accum_steps is 4"):
        load_ds_config(f, batch_size=8, world=1, accum=4)
    ds = load_ds_config(f, batch_size=8, world=3, accum=2)
    assert ds["gradient_accumulation_steps"] == 2 and ds["train_batch_size"] == 48
    assert load_ds_config(None, 8, 1, accum=4)["gradient_accumulation_steps"] == 4
    # train.py refuses the disagreement before any work
    from melp_fast.training.preflight import preflight_train
    from melp_fast.config import from_args, get_preset
    from melp_fast.train import FLAGS, parse_args

    common = ["--ds_config", str(f), "--text-encoder", "random:tiny", "--out", str(tmp_path / "run"),
              "--set", "model.text_freeze_layers=1"]
    args = parse_args([*common, "--set", "train.accum_steps=4"])
    with pytest.raises(UserError, match=r"gradient_accumulation_steps is 2, but train.accum_steps is 4"):
        preflight_train(from_args(get_preset("tiny"), args, FLAGS), args, FLAGS)
    args = parse_args([*common, "--set", "train.accum_steps=2", "--set", "train.accum_mode=plain"])
    preflight_train(from_args(get_preset("tiny"), args, FLAGS), args, FLAGS)  # agreeing is fine
    with pytest.raises(UserError, match=r"train.accum_mode must be one of cache, plain"):
        from_args(get_preset("tiny"), parse_args(["--set", "train.accum_mode=big"]), FLAGS)
