"""Evaluation suite: AUROC and bootstrap against scikit-learn on known scores, nested stratified probe subsets,
the linear probe, prompts for every class of every task, and `melp-fast evaluate` on miniature stores."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from melp_fast.eval import zero_shot as ev
from melp_fast.data import synthetic
from melp_fast.data import tasks as tasklib
from melp_fast.eval.linear_probe import fit_probe, linear_probe, nested_subsets, predict
from helpers import export_tiny

# Real PTB-XL 1.0.3 class lists (scp_statements.csv): the prompt files must cover every one.
PTBXL_CLASSES = {
    "ptbxl-super": ["CD", "HYP", "MI", "NORM", "STTC"],
    "ptbxl-sub": ["AMI", "CLBBB", "CRBBB", "ILBBB", "IMI", "IRBBB", "ISCA", "ISCI", "ISC_", "IVCD", "LAFB/LPFB",
                  "LAO/LAE", "LMI", "LVH", "NORM", "NST_", "PMI", "RAO/RAE", "RVH", "SEHYP", "STTC", "WPW", "_AVB"],
    "ptbxl-form": ["ABQRS", "DIG", "HVOLT", "INVT", "LNGQT", "LOWT", "LPR", "LVOLT", "NDT", "NST_", "NT_", "PAC",
                   "PRC(S)", "PVC", "QWAVE", "STD_", "STE_", "TAB_", "VCLVH"],
    "ptbxl-rhythm": ["AFIB", "AFLT", "BIGU", "PACE", "PSVT", "SARRH", "SBRAD", "SR", "STACH", "SVARR", "SVTAC",
                     "TRIGU"],
}


def known_scores(n=300, c=5, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < np.linspace(0.1, 0.5, c)).astype(np.float32)
    s = y * rng.normal(1.0, 1.0, (n, c)) + rng.normal(0, 1.0, (n, c))
    s[:, 1] = np.round(s[:, 1])  # many ties
    return s, y


def test_auroc_matches_sklearn_with_ties_and_degenerate_columns():
    s, y = known_scores()
    y[:, 3] = 0  # one label value: undefined
    auc = ev.auroc(s, y)
    for k in range(y.shape[1]):
        if k == 3:
            assert np.isnan(auc[k])
        else:
            assert auc[k] == pytest.approx(roc_auc_score(y[:, k], s[:, k]), abs=1e-12)
    s[0, 2] = np.nan
    assert np.isnan(ev.auroc(s, y)[2])
    res = ev.per_class_auroc(s, y, list("abcde"))
    assert res["a"] == pytest.approx(auc[0])


def test_bootstrap_ci_percentiles_match_a_sklearn_loop():
    s, y = known_scores(n=120, c=3, seed=1)
    classes = ["x", "y", "z"]
    ci = ev.bootstrap_ci(s, y, classes, n_boot=60, seed=7)
    assert ci == ev.bootstrap_ci(s, y, classes, n_boot=60, seed=7)  # seeded
    rng = np.random.default_rng(7)
    boots = []
    for _ in range(60):
        idx = rng.integers(0, len(s), len(s))
        boots.append([roc_auc_score(y[idx, k], s[idx, k]) if 0 < y[idx, k].sum() < len(idx) else np.nan
                      for k in range(3)])
    boots = np.array(boots)
    for k, c in enumerate(classes):
        want = np.nanpercentile(boots[:, k], [2.5, 97.5])
        assert ci["per_class"][c] == pytest.approx(list(want), abs=1e-12)
        point = roc_auc_score(y[:, k], s[:, k])
        assert ci["per_class"][c][0] <= point <= ci["per_class"][c][1]
    assert ci["mean"] == pytest.approx(list(np.nanpercentile(np.nanmean(boots, 1), [2.5, 97.5])), abs=1e-12)


def multilabel(n=2000, c=6, seed=0):
    rng = np.random.default_rng(seed)
    p = np.array([0.4, 0.2, 0.1, 0.05, 0.03, 0.02])[:c]
    return (rng.random((n, c)) < p).astype(np.float32)


def test_probe_subsets_nested_stratified_seeded():
    labels = multilabel()
    train = np.arange(100, 1900)
    sub = nested_subsets(train, labels, (0.01, 0.1, 1.0), seed=3)
    assert list(sub) == [0.01, 0.1, 1.0]
    assert np.array_equal(sub[1.0], train)
    assert set(sub[0.01]) <= set(sub[0.1]) <= set(sub[1.0])  # nested
    assert len(sub[0.1]) == pytest.approx(180, abs=8) and len(sub[0.01]) == pytest.approx(18, abs=8)
    present = labels[train].sum(0) > 0
    for f in (0.01, 0.1):  # stratified: every class of the training split is kept
        assert ((labels[sub[f]].sum(0) > 0) == present).all()
        # class frequencies follow the split's within sampling error of a stratified draw
        assert np.allclose(labels[sub[f]].mean(0)[:2], labels[train].mean(0)[:2], atol=0.12)
    again = nested_subsets(train, labels, (0.01, 0.1, 1.0), seed=3)
    assert all(np.array_equal(sub[f], again[f]) for f in sub)  # seeded
    other = nested_subsets(train, labels, (0.01, 0.1, 1.0), seed=4)
    assert not np.array_equal(sub[0.1], other[0.1])


def test_linear_probe_per_class_auroc_no_softmax_and_skips():
    rng = np.random.default_rng(0)
    labels = multilabel(1500, 4, seed=2)
    feats = rng.normal(size=(1500, 16)).astype(np.float32)
    feats[:, :4] += 2.0 * labels  # each class readable from its own feature
    labels[:1000, 3] = 0  # class 3: no positive in the training records -> skipped
    train, test = np.arange(1000), np.arange(1000, 1500)
    res = linear_probe(feats, labels, train, test, list("abcd"), fractions=(0.1, 1.0), epochs=100, n_boot=20)
    r = res["fractions"]
    assert set(r) == {"10%", "100%"}
    assert r["100%"]["skipped"] == ["d"] and np.isnan(r["100%"]["per_class"]["d"])
    for k, c in enumerate("abc"):  # the reported AUROC is the per-class AUROC of the probe's own logits
        s = res["scores"]["100%"][:, k]
        assert r["100%"]["per_class"][c] == pytest.approx(roc_auc_score(labels[test, k], s), abs=1e-9)
        assert r["100%"]["per_class"][c] > 0.85
    assert r["100%"]["mean"] == pytest.approx(np.mean([r["100%"]["per_class"][c] for c in "abc"]))
    assert r["100%"]["n_train"] == 1000 and "ci" in r["100%"]
    # fixed seeds: the same numbers twice
    p1 = fit_probe(feats[:200], labels[:200], epochs=5, seed=1)
    p2 = fit_probe(feats[:200], labels[:200], epochs=5, seed=1)
    assert np.array_equal(predict(p1, feats), predict(p2, feats))


def test_task_split_sources(tmp_path):
    """Split CSVs (ids, labels by name) first, then PTB-XL strat_fold, else a seeded stratified split; each with
    its validation part (fold 9, the stratified 10 %, <task>_val.csv) disjoint from the test records."""

    class FakeStore:
        def __init__(self, records):
            self.records = records
            self.meta = {"tasks": {"t": {"classes": ["A", "B"]}}}

        def indices_of(self, ids):
            table = {r["id"]: i for i, r in enumerate(self.records)}
            return np.asarray([table[str(x)] for x in ids])

    labels = multilabel(50, 2, seed=5)
    folds = FakeStore([{"id": str(i), "strat_fold": 1 + i % 10} for i in range(50)])
    tr, va, te, how = ev.task_split(folds, "t", labels)
    labelled = labels.any(1)  # records without a label in the task are never evaluated (nor trained on)
    assert 0 < (~labelled).sum() < 40
    assert set(te) == {i for i in range(50) if i % 10 == 9 and labelled[i]} and "strat_fold" in how
    assert set(tr) == {i for i in range(50) if i % 10 < 8 and labelled[i]}
    assert set(va) == {i for i in range(50) if i % 10 == 8 and labelled[i]}
    plain = FakeStore([{"id": str(i)} for i in range(50)])
    tr, va, te, how = ev.task_split(plain, "t", labels, seed=1)
    n_lab = int(labelled.sum())
    assert len(te) == round(0.2 * n_lab) and not set(tr) & set(te) and "stratified" in how
    assert len(va) > 0 and not set(va) & (set(tr) | set(te)) and len(tr) + len(va) + len(te) == n_lab
    assert labelled[tr].all() and labelled[te].all()
    (tmp_path / "t_train.csv").write_text("ecg_id,B,A\n3,0,1\n4,1,0\n")
    (tmp_path / "t_test.csv").write_text("ecg_id,A,B\n7,1,1\n")
    tr, va, te, how = ev.task_split(folds, "t", labels, split_dir=tmp_path)
    assert list(tr) == [3, 4] and list(va) == [] and list(te) == [7] and "split files" in how
    (tmp_path / "t_val.csv").write_text("ecg_id,A,B\n5,0,1\n")
    tr, va, te, how = ev.task_split(folds, "t", labels, split_dir=tmp_path)
    assert list(va) == [5] and "t_val.csv" in how


def test_store_tasks_and_prompt_overrides(tmp_path):
    class S:
        path = "s"
        meta = {"task": "ptbxl-super", "tasks": {"ptbxl-super": {"classes": ["NORM"]}, "ptbxl-sub": {"classes": ["X"]},
                                                 "csn-all": {"classes": None}}}

    assert ev.store_tasks(S, None) == ["ptbxl-super"]
    assert ev.store_tasks(S, ["all"]) == ["ptbxl-super", "ptbxl-sub"]  # open tasks (classes None) left out
    assert ev.store_tasks(S, ["ptbxl-sub", "cpsc2018"]) == ["ptbxl-sub"]
    with pytest.raises(ValueError):
        ev.store_tasks(S, ["cpsc2018"])
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"NORM": "a normal ecg"}))
    assert ev.load_prompts("ptbxl-super", flat) == {"NORM": "a normal ecg"}
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"ptbxl-super": {"NORM": ["normal", "normal ecg"]}}))
    assert ev.load_prompts("ptbxl-super", nested) == {"NORM": ["normal", "normal ecg"]}
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "cpsc2018.json").write_text(json.dumps({"AF": "af"}))
    assert ev.load_prompts("cpsc2018", tmp_path / "dir") == {"AF": "af"}
    assert "NORM" in ev.load_prompts("ptbxl-super", tmp_path / "dir")  # not in the directory: the shipped file


def test_every_class_of_every_task_has_a_prompt(tmp_path):
    tasks = {k: v["classes"] for k, v in tasklib.fixed_tasks().items() if v["classes"]}
    tasks.update(PTBXL_CLASSES)
    tasks["synthetic"] = list(synthetic.CLASSES)
    # the PTB-XL lists are those tasks.py builds from a scp_statements.csv with the real subclasses
    rows = [("NORM", 1, "", "", "NORM", "NORM")]
    sub_super = {"AMI": "MI", "IMI": "MI", "LMI": "MI", "PMI": "MI", "CLBBB": "CD", "CRBBB": "CD", "ILBBB": "CD",
                 "IRBBB": "CD", "IVCD": "CD", "LAFB/LPFB": "CD", "WPW": "CD", "_AVB": "CD", "ISCA": "STTC",
                 "ISCI": "STTC", "ISC_": "STTC", "NST_": "STTC", "STTC": "STTC", "LAO/LAE": "HYP", "LVH": "HYP",
                 "RAO/RAE": "HYP", "RVH": "HYP", "SEHYP": "HYP"}
    rows += [(f"D{i}", 1, "", "", sup, sub) for i, (sub, sup) in enumerate(sub_super.items())]
    rows += [(c, "", 1, "", "", "") for c in PTBXL_CLASSES["ptbxl-form"]]
    rows += [(c, "", "", 1, "", "") for c in PTBXL_CLASSES["ptbxl-rhythm"]]
    csv = tmp_path / "scp_statements.csv"
    csv.write_text(",diagnostic,form,rhythm,diagnostic_class,diagnostic_subclass\n"
                   + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    built = tasklib.ptbxl_tasks(csv)
    for t in PTBXL_CLASSES:
        assert built[t]["classes"] == PTBXL_CLASSES[t]
    assert set(tasks) <= set(ev.prompt_tasks())
    for task, classes in tasks.items():
        prompts = ev.load_prompts(task)
        for c in classes:
            p = prompts.get(c)
            assert isinstance(p, str) and p.strip(), f"task {task}: class {c} has no prompt"


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("m") / "model", seed=0)


def test_evaluate_cli_on_miniature_stores(tmp_path, tiny_export, capsys):
    """`melp-fast evaluate` on a small synthetic pair of stores and on a miniature store split by itself; the
    zero-shot numbers equal scikit-learn on the model's own cosine scores."""
    from melp_fast.cli import main as cli_main
    from melp_fast.data.store import Store, write_store
    from melp_fast.inference.export import load_model

    torch.set_num_threads(1)
    recs = [synthetic.generate_record(i, 5) for i in range(60)]
    mini = write_store(tmp_path / "mini", ((r.signal, r.report, r.labels) for r in recs), classes=synthetic.CLASSES,
                       source="synthetic:mini", progress=False)
    out = tmp_path / "eval"
    rc = cli_main(["evaluate", "--ckpt", str(tiny_export), "--store", "synthetic", "--store", str(mini.path),
                   "--n-test", "40", "--n-train", "60", "--data-dir", str(tmp_path / "data"), "--epochs", "5",
                   "--n-boot", "50", "--out", str(out), "--quiet", "--prompts", str(ev.prompt_path("synthetic"))])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())["results"]
    assert set(res) == {"synthetic", "synthetic:mini"}  # the same task in two datasets: both kept
    md = (out / "results.md").read_text()
    assert "Linear probing" in md and "Synthetic 1%" in md and (out / "roc_synthetic.png").stat().st_size > 10_000
    # zero-shot check against sklearn on the mini store, split 70/10/20 by the suite
    model = load_model(tiny_export)
    store = Store(mini.path)
    emb = ev.embed_store(model, store, progress=False)
    test = ev.task_split(store, "labels", store.labels)[2]
    text = ev.prompt_embeddings(model, ev.load_prompts("synthetic"), store.classes)
    scores = emb["rhythm"][test] @ text.T
    assert list(res["synthetic"]) == list(res["synthetic:mini"]) == ["m0"]  # model named after its run directory
    r = res["synthetic:mini"]["m0"]
    assert r["n_test"] == len(test) and r["split"].startswith("stratified")
    for k, c in enumerate(store.classes):
        y = store.labels[test, k]
        if 0 < y.sum() < len(y):
            assert r["zero_shot"]["per_class"][c] == pytest.approx(roc_auc_score(y, scores[:, k]), abs=1e-6)
        else:
            assert r["zero_shot"]["per_class"][c] is None or np.isnan(r["zero_shot"]["per_class"][c])
    lo, hi = r["zero_shot"]["ci"]["mean"]
    assert lo <= r["zero_shot"]["mean"] <= hi
    assert set(r["linear_probe"]) == {"1%", "10%", "100%"}


def test_prompt_lists_are_averaged(tiny_export):
    from melp_fast.inference.export import load_model

    model = load_model(tiny_export)
    emb = ev.prompt_embeddings(model, {"a": ["sinus rhythm", "normal ecg"], "b": "atrial fibrillation"}, ["a", "b"])
    raw = model.encode_prompts(["sinus rhythm", "normal ecg", "atrial fibrillation"]).float()
    np.testing.assert_allclose(emb[0], torch.nn.functional.normalize(raw[:2].sum(0), dim=0).numpy(), atol=1e-6)
    np.testing.assert_allclose(emb[1], raw[2].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="no prompt"):
        ev.prompt_embeddings(model, {"a": "x"}, ["a", "b"])


def test_reference_probe_early_stopping_best_epoch_and_not_available():
    """The probe of --protocol melp: early stopping on validation keeps the best epoch's weights; per-class AUROC of
    its logits (no softmax) under scoring per-class; an empty sample is reported as not available, one without
    positives is trained and scored on every class (as the reference does)."""
    from melp_fast.eval.linear_probe import fit_probe_early_stopping, reference_probe

    rng = np.random.default_rng(4)
    labels = multilabel(900, 3, seed=6)
    feats = rng.normal(size=(900, 12)).astype(np.float32)
    feats[:, :3] += 4.0 * labels
    tr, va, te = np.arange(500), np.arange(500, 650), np.arange(650, 900)
    p = fit_probe_early_stopping(feats[tr], labels[tr], feats[va], labels[va], max_epochs=40, seed=1)
    assert 1 <= p["best_epoch"] <= p["epochs"] <= 40
    assert p["best_val"] == pytest.approx(np.mean(ev.auroc(predict(p, feats[va]), labels[va])), abs=1e-6)
    shuffled = labels[va][rng.permutation(len(va))]  # a validation set that says nothing: it stops early
    q = fit_probe_early_stopping(feats[tr], labels[tr], feats[va], shuffled, max_epochs=100, seed=1)
    assert q["epochs"] < 100 and q["epochs"] - q["best_epoch"] == 5
    neg = np.array([i for i in tr if not labels[i].any()][:20])
    res = reference_probe(feats, labels, {0.01: np.zeros(0, np.int64), 0.1: neg, 1.0: tr}, va, te, list("abc"),
                          max_epochs=100, n_boot=10)
    r = res["fractions"]
    assert r["1%"]["not_available"] == "empty training sample" and r["1%"]["n_train"] == 0
    assert "not_available" not in r["10%"] and r["10%"]["no_train_positive"] == list("abc")
    assert all(np.isfinite(r["10%"]["per_class"][c]) for c in "abc") and r["10%"]["scoring"] == "per-class"
    assert "not_available" not in r["100%"] and r["100%"]["n_train"] == 500 and "ci" in r["100%"]
    for k, c in enumerate("abc"):
        s = res["scores"]["100%"][:, k]
        assert r["100%"]["per_class"][c] == pytest.approx(roc_auc_score(labels[te, k], s), abs=1e-9)
        np.testing.assert_array_equal(s, res["logits"]["100%"][:, k])  # per-class scoring: the logits themselves
    assert min(r["100%"]["per_class"]["a"], r["100%"]["per_class"]["b"]) > 0.9  # each readable from its own feature
