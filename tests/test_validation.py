"""Validation during pretraining (melp_fast/eval/validation.py): held-out losses equal the criterion on the held-out
batches, downstream zero-shot equals the evaluation's, the best-checkpoint rule, the config fields; and the
evaluation's beat spans follow the model's own token stride (2 ** conv_layers), not a hard-coded 16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from melp_fast.eval import zero_shot as ev
from melp_fast.eval import validation as val
from melp_fast.config import Config
from melp_fast.data import synthetic
from melp_fast.data.dataset import Collate, ECGTextDataset
from melp_fast.data.store import Store, write_store
from melp_fast.losses import MELPLoss
from helpers import tiny_cfg


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    recs = [synthetic.generate_record(i, 11) for i in range(40)]
    return write_store(tmp_path_factory.mktemp("v") / "mini", ((r.signal, r.report, r.labels) for r in recs),
                       classes=synthetic.CLASSES, source="synthetic:mini", progress=False)


@pytest.fixture(scope="module")
def down(tmp_path_factory):
    """A downstream store of 60 synthetic records (seed 11): its stratified 70/10/20 split has 7 validation
    records, with both label values for most classes."""
    recs = [synthetic.generate_record(i, 11) for i in range(60)]
    return write_store(tmp_path_factory.mktemp("d") / "down", ((r.signal, r.report, r.labels) for r in recs),
                       classes=synthetic.CLASSES, source="synthetic:down", progress=False)


def _model(**kw):
    from melp_fast.model.melp import MELP

    torch.manual_seed(3)
    cfg = tiny_cfg(**kw)
    return MELP(cfg.model), cfg


def test_validation_losses_equal_the_criterion_on_held_out_batches(mini):
    torch.set_num_threads(1)
    model, cfg = _model()
    crit = MELPLoss(cfg.loss)
    idx = np.array([3, 5, 8, 13, 21, 34, 1, 2, 30, 17])
    model.train()
    out = val.validate(model, crit, mini, idx, batch_size=4)
    assert model.training  # mode restored
    assert set(out) == {"val/loss", "val/global", "val/local", "val/caption", "val/n"} and out["val/n"] == 8
    model.eval()
    ds = ECGTextDataset(mini, stride=cfg.model.token_stride, indices=idx)
    coll = Collate(model.tokenizer)
    want = {}
    with torch.no_grad():
        for s in (0, 4):  # full batches only: the last 2 records are left out
            b = coll([ds[i] for i in range(s, s + 4)])
            for k, v in crit(model(b), b).items():
                want[k] = want.get(k, 0.0) + float(v) / 2
    for k, v in want.items():
        assert out[f"val/{k}"] == pytest.approx(v, rel=1e-5, abs=1e-6)
        assert np.isfinite(v)
    other = val.validate(model, crit, mini, idx[::-1].copy(), batch_size=4)
    assert other["val/global"] != pytest.approx(out["val/global"], rel=1e-9)  # other batches, other contrast


def test_downstream_zero_shot_equals_the_evaluation_on_validation_records(down):
    model, cfg = _model()
    res = val.validate(model, MELPLoss(cfg.loss), downstream=[str(down.path)])
    assert set(res) == {"zs/synthetic", "zs/mean"}
    st = ev.task_sets(down, "labels")
    va = st["val"][0]
    assert len(va) == 7 and not set(va) & set(st["test"][0])
    want = ev.zero_shot(model, down, ev.load_prompts("synthetic"), progress=False, indices=va)
    assert np.isfinite(want["mean"])
    assert res["zs/synthetic"] == pytest.approx(want["mean"], abs=1e-9) and res["zs/mean"] == res["zs/synthetic"]


def test_model_selection_never_reads_a_test_record(down, tmp_path, monkeypatch):
    """A copy of the downstream store whose test records hold NaN signals: validation (and the best-model choice
    on zs/mean) stays finite and equal to the clean store's, and the store is never asked for a test record."""
    import shutil

    poisoned = tmp_path / "poisoned"
    shutil.copytree(down.path, poisoned)
    clean = Store(down.path)
    test_idx = set(ev.task_sets(clean, "labels")["test"][0].tolist())
    bad = Store(poisoned)
    for k in range(len(bad.offsets) - 1):
        sig = np.memmap(bad._shard(k) / "signals.f16", dtype=np.float16, mode="r+",
                        shape=(int(bad.offsets[k + 1] - bad.offsets[k]), len(bad.meta["leads"]),
                               bad.meta["n_samples"]))
        for i in range(int(bad.offsets[k]), int(bad.offsets[k + 1])):
            if i in test_idx:
                sig[i - int(bad.offsets[k])] = np.nan
        sig.flush()
        del sig
    bad = Store(poisoned)
    assert np.isnan(bad.read([min(test_idx)])[0]).all()  # the poison is there
    read = []
    orig = Store.read_signals

    def spy(self, indices, *a, **k):
        if Path(self.path) == poisoned:
            read.extend(np.asarray(indices).reshape(-1).tolist())
        return orig(self, indices, *a, **k)

    monkeypatch.setattr(Store, "read_signals", spy)
    model, cfg = _model()
    crit = MELPLoss(cfg.loss)
    want = val.validate(model, crit, downstream=[clean])
    best = val.BestTracker("zs/mean")
    for step in (1, 2):
        got = val.validate(model, crit, downstream=[str(poisoned)])
        assert np.isfinite(got["zs/mean"]) and got["zs/mean"] == pytest.approx(want["zs/mean"], abs=1e-9)
        best.update(step, got)
    assert best.step == 1 and read and not set(read) & test_idx
    assert set(read) <= set(ev.task_sets(clean, "labels")["val"][0].tolist())


def test_a_downstream_store_without_validation_records_is_an_error(mini):
    """40 records (seed 11) leave 1 validation record: enough to run; 24 records (seed 5) leave none: an error
    naming the store, before training (check_downstream) and at validation alike."""
    val.check_downstream([mini])
    recs = [synthetic.generate_record(i, 5) for i in range(24)]
    small = write_store(Path(mini.path).parent / "small24", ((r.signal, r.report, r.labels) for r in recs),
                        classes=synthetic.CLASSES, source="synthetic:small", progress=False)
    with pytest.raises(ev.EvalError, match="no validation record.*small24|small24.*no validation record"):
        val.check_downstream([str(small.path)])
    model, cfg = _model()
    with pytest.raises(ev.EvalError, match="never scores test records"):
        val.validate(model, MELPLoss(cfg.loss), downstream=[small])


def test_best_tracker_and_held_out_indices():
    b = val.BestTracker("val/loss")
    assert b.mode == "min" and b.update(10, {"val/loss": 2.0}) and not b.update(20, {"val/loss": 2.5})
    assert not b.update(25, {"val/loss": float("nan")}) and not b.update(26, {})
    assert b.update(30, {"val/loss": 1.5}) and (b.step, b.value) == (30, 1.5)
    z = val.BestTracker("zs/mean")
    assert z.mode == "max" and z.update(1, {"zs/mean": 0.6}) and not z.update(2, {"zs/mean": 0.55})
    assert z.update(3, {"zs/mean": 0.7})
    r = val.BestTracker("zs/mean")
    r.load_state_dict(z.state_dict())
    assert not r.update(4, {"zs/mean": 0.69}) and r.step == 3

    class S:
        records = [{"subject": f"p{i % 97}"} for i in range(1000)]

    from melp_fast.data.tasks import subject_split

    held = val.held_out_indices(S, 0.02)
    np.testing.assert_array_equal(held, subject_split([r["subject"] for r in S.records], 0.02, seed=42)[1])
    subj = {S.records[i]["subject"] for i in held}
    assert len(subj) == 2 and all(S.records[i]["subject"] not in subj for i in set(range(1000)) - set(held))

    class NoSubject:
        records = [{"subject": ""}] * 5

    assert val.held_out_indices(NoSubject) is None


def test_train_config_fields_round_trip():
    cfg = Config()
    assert (cfg.train.eval_every, cfg.train.best_metric, tuple(cfg.train.downstream)) == (0, "val/loss", ())
    d = cfg.to_dict()
    d["train"].update(eval_every=500, best_metric="zs/mean", downstream=["stores/ptbxl", "stores/csn"])
    back = Config.from_dict(d)
    assert back.train.eval_every == 500 and back.train.best_metric == "zs/mean"
    assert list(back.train.downstream) == ["stores/ptbxl", "stores/csn"]


def test_evaluation_beat_spans_follow_the_model_stride(mini):
    """A model with 3 conv layers (8 samples per token) is embedded with beat spans in its own token units: the
    evaluation's embeddings equal encode_ecg on spans built with stride 8, and differ from stride 16's."""
    torch.set_num_threads(1)
    model, cfg = _model(conv_layers=3)
    assert cfg.model.token_stride == 8
    idx = np.arange(6)
    got = ev.embed_store(model, mini, progress=False, indices=idx)["rhythm"]
    model.eval()
    with torch.no_grad():
        res = {}
        for stride in (8, 16):
            b = ECGTextDataset(mini, stride=stride, indices=idx).batch(np.arange(6))
            res[stride] = model.encode_ecg(b["ecg"], b["beat_spans"], b["beat_mask"], b["beat_seconds"])["rhythm"].numpy()
    np.testing.assert_allclose(got, res[8], atol=1e-5)
    assert np.abs(got - res[16]).max() > 1e-3
