"""Model selection during pretraining never reads a test record: `train.eval_every` with `train.best_metric =
zs/mean` on a downstream store whose test records hold NaN signals runs, scores finite zero-shot AUROC (on the
store's validation records) and keeps the best model. Synthetic records, seed 11, 60 of them (7 validation)."""

from __future__ import annotations

import json
import shutil

import numpy as np

from melp_fast.eval import zero_shot as ev
from melp_fast.data import synthetic
from melp_fast.data.store import Store, write_store
from test_train import SMALL, run_train


def poison_test_records(path) -> set:
    """Overwrite the signals of the default task's test records with NaN in place; returns their indices."""
    store = Store(path)
    test = set(ev.task_sets(store, store.meta["task"])["test"][0].tolist())
    for k in range(len(store.offsets) - 1):
        lo, hi = int(store.offsets[k]), int(store.offsets[k + 1])
        sig = np.memmap(store._shard(k) / "signals.f16", dtype=np.float16, mode="r+",
                        shape=(hi - lo, len(store.meta["leads"]), store.meta["n_samples"]))
        for i in range(lo, hi):
            if i in test:
                sig[i - lo] = np.nan
        sig.flush()
        del sig
    return test


def test_eval_every_with_zs_mean_never_reads_a_test_record(tmp_path):
    recs = [synthetic.generate_record(i, 11) for i in range(60)]
    clean = write_store(tmp_path / "down", ((r.signal, r.report, r.labels) for r in recs), classes=synthetic.CLASSES,
                        source="synthetic:down", progress=False)
    shutil.copytree(clean.path, tmp_path / "poisoned")
    test = poison_test_records(tmp_path / "poisoned")
    assert len(test) == 12 and np.isnan(Store(tmp_path / "poisoned").read([min(test)])[0]).all()
    out = tmp_path / "run"
    r = run_train([*SMALL, "--out", str(out), "--steps", "4", "--set", "train.eval_every=2",
                   "--set", f'train.downstream=["{tmp_path / "poisoned"}"]', "--set", "train.best_metric=zs/mean"])
    assert r.returncode == 0, r.stderr[-3000:]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    scored = [h for h in history if "zs/mean" in h]
    assert [h["step"] for h in scored] == [2, 4]
    assert all(h["zs/mean"] is not None and 0.0 <= h["zs/mean"] <= 1.0 for h in scored)
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["metric"] == "zs/mean" and best["step"] == max(scored, key=lambda h: h["zs/mean"])["step"]
