"""`evaluate --protocol melp` against the MELP reference's own split and prompt files (shared/reference/
melp_reference), on miniature PTB-XL, CPSC2018 (ICBEB) and CSN (Chapman) trees written from the real recordings in
shared/data, with record names taken from real split rows: record sets and labels, the ICBEB window and the
unfiltered signal value by value, the CKEPE prompts, the probe subsets, the user errors, and the end-to-end
command printing Table 2 / Table 3 beside the paper's rows."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from melp_fast.eval import zero_shot as ev
from melp_fast.data import reference_splits as refsplits
from melp_fast.data import tasks as tasklib
from melp_fast.data.sources import LEADS
from melp_fast.data.store import Store
from melp_fast.errors import UserError
from melp_fast.data.preprocess import build_store
from test_sources import SCP, dicom_12lead_500, write_cinc, write_wfdb

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "melp_reference"
if not REF.is_dir():
    REF = Path("/work/shared/reference/melp_reference")
SPLITS, CKEPE = REF / "data_split", REF / "prompt" / "CKEPE_prompt.json"
SIX = ("ptbxl-super", "ptbxl-sub", "ptbxl-form", "ptbxl-rhythm", "cpsc2018", "csn-38")
PTBXL_COLUMN = {"ptbxl-super": "super_class", "ptbxl-sub": "sub_class", "ptbxl-form": "form", "ptbxl-rhythm": "rhythm"}

pytestmark = [pytest.mark.usefixtures("recordings"),
              pytest.mark.skipif(not SPLITS.is_dir(), reason="shared/reference (the MELP reference's files) not found")]


def split_csv(task: str, part: str) -> pd.DataFrame:
    return pd.read_csv(SPLITS / refsplits.LAYOUT[task][0].format(part=part))


# ------------------------------------------------------------------------------------------------ miniature trees
def ptbxl_rows() -> dict[int, dict]:
    """Real split rows: the first rows of every PTB-XL task's train / val / test file, the first rows of the
    reference's 10% sample of the super-class train file, and fold-10 records that have no form label."""
    rows: dict[int, dict] = {}
    sub_code = {}
    for code, dg, _, _, _, sub in SCP:
        if dg == 1:
            sub_code.setdefault(sub.strip("_"), code)

    def add(task, r):
        e = rows.setdefault(int(r["ecg_id"]), {"fold": int(r["strat_fold"]), "patient": r["patient_id"],
                                               "codes": set()})
        names = ast.literal_eval(r[PTBXL_COLUMN[task]])
        if task in ("ptbxl-form", "ptbxl-rhythm"):
            e["codes"] |= set(names)  # these columns list SCP codes themselves
        elif task == "ptbxl-sub":
            e["codes"] |= {sub_code[n.strip("_")] for n in names}

    for task in PTBXL_COLUMN:
        for part in refsplits.PARTS:
            df = split_csv(task, part)
            for _, r in df.head(3).iterrows():
                add(task, r)
    sup = split_csv("ptbxl-super", "train")
    for _, r in sup.sample(frac=0.1, random_state=42).head(2).iterrows():
        add("ptbxl-super", r)
    form_test = set(split_csv("ptbxl-form", "test")["ecg_id"])
    for _, r in split_csv("ptbxl-super", "test").iterrows():
        if int(r["ecg_id"]) not in form_test and int(r["ecg_id"]) not in rows:
            add("ptbxl-super", r)
            if sum(1 for k, v in rows.items() if v["fold"] == 10 and k not in form_test) >= 2:
                break
    # every record needs its sub-class codes (super and sub labels of the default protocol come from them)
    sub = pd.concat([split_csv("ptbxl-sub", p) for p in refsplits.PARTS]).set_index("ecg_id")
    for k, e in rows.items():
        if k in sub.index:
            e["codes"] |= {sub_code[n.strip("_")] for n in ast.literal_eval(sub.loc[k, "sub_class"])}
    return rows


def make_ptbxl(tmp: Path) -> Path:
    root = tmp / "ptb-xl"
    (root / "records500").mkdir(parents=True)
    lines = [",diagnostic,form,rhythm,diagnostic_class,diagnostic_subclass"]
    lines += [",".join(map(str, r)) for r in SCP]
    (root / "scp_statements.csv").write_text("\n".join(lines) + "\n")
    ecg = dicom_12lead_500()
    out = []
    for k, (ecg_id, e) in enumerate(sorted(ptbxl_rows().items())):
        hr = f"records500/{ecg_id // 1000 * 1000:05d}/{ecg_id:05d}_hr"
        write_wfdb(root / Path(hr).parent, Path(hr).name, np.roll(ecg, 137 * k, axis=1) * (1 + 0.1 * k), 500, LEADS)
        scp = "{" + ", ".join(f"'{c}': 100.0" for c in sorted(e["codes"])) + "}"
        lr = f"records100/{ecg_id // 1000 * 1000:05d}/{ecg_id:05d}_lr"
        out.append(f'{ecg_id},{e["patient"]},"{scp}",report {ecg_id},{e["fold"]},{lr},{hr}')
    (root / "ptbxl_database.csv").write_text("ecg_id,patient_id,scp_codes,report,strat_fold,filename_lr,filename_hr\n"
                                             + "\n".join(out) + "\n")
    return root


def make_cinc(tmp: Path, task: str) -> Path:
    """CPSC2018 records named by ICBEB split rows (A0001..., 10 s long: the reference keeps 5 s of them), or CSN
    records at the paths of Chapman split rows (WFDBRecords/18/186/JS18048.mat, ...), the first 3 of each part."""
    root = tmp / tasklib.TASK_SOURCE[task]
    ecg = dicom_12lead_500()
    col = refsplits.LAYOUT[task][1]
    for k, v in enumerate(v for p in refsplits.PARTS for v in split_csv(task, p)[col].head(3)):
        rel = Path(str(v).replace("/chapman/", "")) if task == "csn-38" else Path("g1") / str(v)
        dx = "251166008" if k == 0 else "426783006"  # (AVNRT as PhysioNet/CinC 2021 codes it)
        write_cinc(root / rel.parent, Path(rel).stem, np.roll(ecg, 97 * k, axis=1), 500, LEADS, dx, gain=200.0)
    return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trees")
    roots = {"ptbxl": make_ptbxl(tmp), "cpsc2018": make_cinc(tmp, "cpsc2018"), "csn": make_cinc(tmp, "csn-38")}
    stores = {}
    for src, root in roots.items():
        for protocol in ("melp", "default"):
            if protocol == "default" and src == "csn":
                continue
            stores[(src, protocol)] = build_store(tmp / f"{src}-{protocol}", src, root, workers=1, progress=False,
                                                  protocol=protocol)
    return roots, stores


# ------------------------------------------------------------------------------------------------ record sets
@pytest.mark.parametrize("task", SIX)
def test_melp_sets_equal_the_reference_split_restricted_to_present_records(trees, task):
    _, stores = trees
    store = stores[(tasklib.TASK_SOURCE[task], "melp")]
    st = ev.task_sets(store, task, "melp", SPLITS)
    ids = store.ids
    present = set(ids)
    for part in refsplits.PARTS:
        df = split_csv(task, part)
        rid = [refsplits.record_id(task, v) for v in df[refsplits.LAYOUT[task][1]]]
        keep = [i for i, r in enumerate(rid) if r in present]
        assert 3 <= len(keep) < len(df)  # the tree holds some listed records, not all
        idx, labels = st[part]
        assert [ids[i] for i in idx] == [rid[i] for i in keep]  # the split's records, in its order
        cols = [tasklib.reference_name(task, c) for c in st["classes"]]
        np.testing.assert_array_equal(labels, df.iloc[keep][cols].to_numpy(np.float32))  # its labels, by name
        assert labels.any(1).all() or task == "csn-38"  # the reference lists only labelled records
        assert st["missing"][part] == len(df) - len(keep)
    if task in tasklib.PTBXL_TASKS:  # the reference's names with PTB-XL's underscores stripped
        assert len(st["classes"]) == {"ptbxl-super": 5, "ptbxl-sub": 23, "ptbxl-form": 19, "ptbxl-rhythm": 12}[task]
    # probe subsets: DataFrame.sample(frac, random_state=42) of the whole train file, then the records present
    df = split_csv(task, "train")
    for f in (0.01, 0.1, 1.0):
        want = [refsplits.record_id(task, v) for v in df.sample(frac=f, random_state=42)[refsplits.LAYOUT[task][1]]]
        if f == 1.0:
            want = [refsplits.record_id(task, v) for v in df[refsplits.LAYOUT[task][1]]]
        got = [ids[i] for i in st["subsets"][f][0]]
        assert got == [w for w in want if w in present]
    if task == "ptbxl-super":
        assert len(st["subsets"][0.1][0]) >= 2


def test_records_without_a_task_label_are_never_evaluated(trees):
    _, stores = trees
    store = stores[("ptbxl", "default")]
    form = np.asarray(store.task_labels("ptbxl-form"))
    folds = np.asarray([r["strat_fold"] for r in store.records])
    unlabelled_test = np.flatnonzero((folds == 10) & ~form.any(1))
    assert len(unlabelled_test) >= 2
    for task in tasklib.PTBXL_TASKS:
        st = ev.task_sets(store, task, "default")
        lab = np.asarray(store.task_labels(task))
        for part in ("train", "test"):
            idx, y = st[part]
            assert len(idx) and y.any(1).all() and lab[idx].any(1).all()
        want = np.flatnonzero((folds == 10) & lab.any(1))
        np.testing.assert_array_equal(st["test"][0], want)
    assert not set(unlabelled_test) & set(ev.task_sets(store, "ptbxl-form", "default")["test"][0])
    assert set(unlabelled_test) <= set(ev.task_sets(store, "ptbxl-super", "default")["test"][0])


# ------------------------------------------------------------------------------------------------ signals
def test_icbeb_window_and_unfiltered_signal_value_by_value(trees):
    import wfdb
    from scipy.io import loadmat

    roots, stores = trees
    melp, default = stores[("cpsc2018", "melp")], stores[("cpsc2018", "default")]
    assert melp.meta["preprocess"] == {"protocol": "melp", "highpass_hz": 0.0, "window_samples": 2500}
    assert default.meta["preprocess"]["protocol"] == "default" and default.meta["preprocess"]["highpass_hz"] == 4.0
    for i, rec in enumerate(melp.records):
        # [12, 5000] in mV: what wfdb.rdsamp gives the reference on the real files (val / gain; our miniature .mat
        # files are written by scipy, whose layout wfdb's byte-offset reading does not follow)
        raw = loadmat(str(roots["cpsc2018"] / rec["path"]) + ".mat")["val"].astype(np.float64) / 200.0
        ecg = np.pad(raw[:, :2500], ((0, 0), (0, 2500)))  # the reference: first 2500 samples, zero-padded
        want = (ecg - ecg.min()) / (ecg.max() - ecg.min() + 1e-8)
        got = melp.read([i])[0][0].astype(np.float64)
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)  # float16 storage
        assert np.all(got[:, 2500:] == got[0, 2500])  # the padding: one value, the min-max image of 0
        other = default.read([i])[0][0].astype(np.float64)
        assert np.abs(other[:, :2500] - want[:, :2500]).max() > 0.05  # the default store is high-passed, 10 s
    ptb = stores[("ptbxl", "melp")]
    rec = ptb.records[0]
    raw = wfdb.rdsamp(str(roots["ptbxl"] / rec["path"]))[0].T
    want = (raw - raw.min()) / (raw.max() - raw.min() + 1e-8)  # PTB-XL: 10 s, no high-pass, min-max per record
    np.testing.assert_allclose(ptb.read([0])[0][0].astype(np.float64), want, atol=1e-3, rtol=0)


# ------------------------------------------------------------------------------------------------ prompts
@pytest.mark.parametrize("task", SIX)
def test_ckepe_prompt_file_loads_for_every_task(trees, task):
    _, stores = trees
    store = stores[(tasklib.TASK_SOURCE[task], "melp")]
    classes = ev.task_sets(store, task, "melp", SPLITS)["classes"]
    ckepe = json.loads(CKEPE.read_text())
    got = ev.task_prompts(task, classes, CKEPE, lower=True)
    assert list(got) == classes
    for c in classes:
        assert got[c] == ckepe[tasklib.reference_name(task, c)].lower() and got[c].strip()
    if task == "cpsc2018":  # our AF is the reference's AFIB (atrial fibrillation), not its AF (flutter)
        assert got["AF"] == ckepe["AFIB"].lower() != ckepe["AF"].lower()


# ------------------------------------------------------------------------------------------------ user errors
def test_user_errors(trees, tmp_path):
    _, stores = trees
    ptb = stores[("ptbxl", "melp")]
    # a split file with an unknown class column
    bad = tmp_path / "splits"
    shutil.copytree(SPLITS / "ptbxl" / "form", bad / "ptbxl" / "form")
    f = bad / "ptbxl" / "form" / "ptbxl_form_val.csv"
    df = pd.read_csv(f)
    df["FOO"] = 0
    f.chmod(0o644)
    df.to_csv(f, index=False)
    with pytest.raises(UserError, match="'FOO' is not a class of task ptbxl-form"):
        ev.task_sets(ptb, "ptbxl-form", "melp", bad)
    # a prompt file without a class, and a malformed one
    p = json.loads(CKEPE.read_text())
    del p["NORM"]
    (tmp_path / "p.json").write_text(json.dumps(p))
    with pytest.raises(UserError, match="no prompt for class.*NORM"):
        ev.task_prompts("ptbxl-super", ["CD", "HYP", "MI", "NORM", "STTC"], tmp_path / "p.json")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(UserError, match="not readable JSON"):
        ev.task_prompts("ptbxl-super", ["NORM"], tmp_path / "m.json")
    # a store preprocessed for the other protocol, both ways, naming the preprocess flags
    with pytest.raises(UserError, match="--protocol melp"):
        ev.check_protocol(stores[("ptbxl", "default")], "melp")
    with pytest.raises(UserError, match="no --protocol flag"):
        ev.check_protocol(ptb, "default")
    # protocol melp without the reference's splits of a task; csn-38 without splits
    with pytest.raises(UserError, match="--splits"):
        ev.task_sets(ptb, "ptbxl-form", "melp", None)
    with pytest.raises(UserError, match="--splits"):
        ev.task_sets(stores[("csn", "melp")], "csn-38", "default", None)


def test_cli_user_errors_are_one_line_exit_2(trees, tmp_path, capsys, tiny_export):
    _, stores = trees
    ptb, cps = str(stores[("ptbxl", "melp")].path), str(stores[("cpsc2018", "melp")].path)
    base = ["--ckpt", str(tiny_export), "--n-boot", "0", "--epochs", "2", "--no-plots", "--quiet",
            "--out", str(tmp_path / "o")]
    melp = ["--protocol", "melp", "--splits", str(SPLITS), "--prompts", str(CKEPE)]
    from melp_fast.data.store import write_store

    nolab = write_store(tmp_path / "nolab", [(dicom_12lead_500(), "r", None)], progress=False)
    cases = [
        (["--store", ptb, "--task", "ptbxl-foo", *melp], "unknown task(s) ptbxl-foo; valid tasks: ptbxl-super"),
        (["--store", str(tmp_path / "nowhere"), *melp], "does not exist"),
        (["--store", str(nolab.path)], "no default task (no labels)"),
        (["--store", ptb, "--task", "cpsc2018", *melp], "needs a store built with `melp-fast preprocess --source cpsc2018`"),
        (["--store", str(stores[("ptbxl", "default")].path), "--task", "ptbxl-super", *melp], "--protocol melp"),
        (["--store", cps, "--task", "cpsc2018", "--protocol", "melp", "--splits", str(SPLITS)], "needs --prompts"),
        (["--store", ptb, "--task", "ptbxl-super", "--protocol", "melp", "--splits", str(SPLITS), "--prompts",
          str(tmp_path / "none.json")], "does not exist"),
        (["--store", str(stores[("ptbxl", "default")].path), "--task", "ptbxl-super", "--scoring", "reference"],
         "--scoring reference is the MELP reference's probe metric: use it with --protocol melp"),
    ]
    for argv, msg in cases:
        rc = ev.main(base + argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error: ") and msg in err and "\n" not in err, (argv, err)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from helpers import tiny_cfg
    from melp_fast.inference.export import export_model
    from melp_fast.model.melp import MELP

    torch.manual_seed(0)
    cfg = tiny_cfg()
    return export_model(MELP(cfg.model), cfg, tmp_path_factory.mktemp("tinyproto") / "model")


def test_end_to_end_preprocess_then_evaluate_prints_the_paper_tables(trees, tmp_path, tiny_export, capsys):
    from melp_fast.cli import main as cli

    roots, stores = trees
    torch.set_num_threads(1)
    store = tmp_path / "ptbxl-store"
    assert cli(["preprocess", "--source", "ptbxl", "--root", str(roots["ptbxl"]), "--out", str(store),
                "--protocol", "melp", "--workers", "1", "--no-progress"]) == 0
    out = tmp_path / "eval"
    argv = ["evaluate", "--ckpt", str(tiny_export), "--store", str(store), "--store",
            str(stores[("cpsc2018", "melp")].path), "--store", str(stores[("csn", "melp")].path),
            "--protocol", "melp", "--splits", str(SPLITS), "--prompts", str(CKEPE), "--epochs", "3",
            "--n-boot", "0", "--no-plots", "--quiet", "--out", str(out)]
    for t in SIX:
        argv += ["--task", t]
    capsys.readouterr()
    assert cli(argv) == 0
    text = capsys.readouterr().out
    assert "Table 2: linear probing" in text and "Table 3: zero-shot" in text
    t2 = text.split("## Table 2")[1].split("## Table 3")[0]
    t3 = text.split("## Table 3")[1].split("## Zero-shot")[0]
    assert "| MELP (paper)¹ | 88.83 | 94.65 | 96.91 | 79.22 | 84.40 | 87.46 | 63.41 |" in t2
    assert "| MERL (paper)² | 53.33 | 82.88 | 88.34 |" in t2
    assert "¹ PTB-XL Sub (paper rows)" in t2 and "² MERL (paper row): MERL's own protocol" in t2
    assert "| MELP (paper) | 77.6 | 85.4 | 69.1 | 81.2 | 76.2 | 84.2 | 79.0 |" in t3
    assert "| MERL (paper) | 74.4 | 78.5 | 65.9 | 75.7 | 74.2 | 82.8 | 75.3 |" in t3
    name = ev._model_name(str(tiny_export))  # the run directory's name
    ours = [line for line in t3.splitlines() if line.startswith(f"| {name} |")]
    assert len(ours) == 1 and ours[0].count("|") == 9
    # Table 2: one row per scoring for our model, each row's scoring named under the table
    rows2 = [line.split(" | ")[0] for line in t2.splitlines() if line.startswith(f"| {name} ")]
    assert rows2 == [f"| {name} (reference scoring)", f"| {name} (per-class scoring)"]
    assert "**reference**: the MELP reference's probe metric" in t2 and "**per-class**:" in t2
    res = json.loads((out / "results.json").read_text())
    from melp_fast.inference.export import load_model
    from sklearn.metrics import roc_auc_score

    from test_scoring import torchmetrics_macro

    model = load_model(tiny_export)
    assert set(res["results"]) == set(SIX) and res["paper"]["zero_shot"]["MELP"]["average"] == 79.0
    assert res["settings"]["scorings"] == ["reference", "per-class"]
    assert "softmax" in res["settings"]["auroc"]["linear_probe"]["reference"]
    arrays = np.load(out / "scores.npz")
    for task in SIX:
        r = res["results"][task][name]
        st = ev.task_sets(Store(r["store"]), task, "melp", SPLITS)
        assert r["protocol"] == "melp"
        assert (r["n_train"], r["n_val"], r["n_test"]) == tuple(len(st[p][0]) for p in refsplits.PARTS)
        assert r["scoring"] == "reference" and r["zero_shot"]["scoring"] == "per-class"
        assert r["linear_probe"] == r["linear_probe_by_scoring"]["reference"]
        te, y = st["test"]
        np.testing.assert_array_equal(arrays[f"{task}|{name}|labels"], y)
        for f, key in ((0.01, "1%"), (0.1, "10%"), (1.0, "100%")):
            for sc in ("reference", "per-class"):
                e = r["linear_probe_by_scoring"][sc][key]
                assert e["n_train"] == len(st["subsets"][f][0]) and e["scoring"] == sc
                assert list(e["per_class"]) == st["classes"]  # every class of the task is in the probe's table
                if e["n_train"] == 0:
                    assert e["not_available"] == "empty training sample" and e["mean"] is None
                    continue
                assert e["skipped"] == [] and "not_available" not in e
                # the cell equals an independent reimplementation of its metric on the same test logits
                z = arrays[f"{task}|{name}|{sc}/{key}"]
                assert z.shape == y.shape and np.isfinite(z).all()
                if sc == "reference":
                    want = torchmetrics_macro(torch.from_numpy(z).softmax(-1).numpy(), y)
                else:
                    ok = [k for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
                    want = float(np.mean([roc_auc_score(y[:, k], z[:, k]) for k in ok])) if ok else None
                assert (e["mean"] is None) if want is None else e["mean"] == pytest.approx(want, abs=1e-6)
        # zero-shot equals scikit-learn's AUROC of the model's cosine scores (CKEPE prompts, lower-cased) per class
        text = ev.prompt_embeddings(model, ev.task_prompts(task, st["classes"], CKEPE, lower=True), st["classes"])
        scores = ev.embed_store(model, Store(r["store"]), progress=False, indices=te)["rhythm"] @ text.T
        for k, c in enumerate(st["classes"]):
            if 0 < y[:, k].sum() < len(y):
                assert r["zero_shot"]["per_class"][c] == pytest.approx(roc_auc_score(y[:, k], scores[:, k]), abs=1e-6)
            else:
                assert r["zero_shot"]["per_class"][c] is None
    assert res["results"]["ptbxl-super"][name]["linear_probe"]["10%"]["n_train"] >= 2


def test_csn_codes_of_both_layouts_join_gsvt(trees):
    """AVNRT / wandering pacemaker: 233896004 / 195101003 (ecg-arrhythmia tree), 251166008 / 17366009 (CinC 2021)."""
    t = tasklib.fixed_tasks()["csn-rhythm4"]
    lab = tasklib.labels_for(t, [["251166008"], ["17366009"], ["233896004"], ["195101003"], ["426783006"]])
    np.testing.assert_array_equal(lab[:, t["classes"].index("GSVT")], [1, 1, 1, 1, 0])
    _, stores = trees
    csn = stores[("csn", "melp")]
    first = [i for i, r in enumerate(csn.records) if r["codes"] == ["251166008"]]
    assert len(first) == 1 and csn.task_labels("csn-rhythm4")[first[0]].tolist() == [0, 0, 0, 1]


def test_tasks_are_routed_to_the_store_of_their_source(trees):
    _, stores = trees
    ptb, cps, csn = (stores[(s, "melp")] for s in ("ptbxl", "cpsc2018", "csn"))
    plan = ev.route_tasks([csn, ptb, cps], ["cpsc2018", "ptbxl-form", "csn-38", "ptbxl-super", "csn-rhythm4"])
    assert [(s.path, ts) for s, ts in plan] == [(cps.path, ["cpsc2018"]), (ptb.path, ["ptbxl-form", "ptbxl-super"]),
                                               (csn.path, ["csn-38", "csn-rhythm4"])]
    allm = {s.meta["source"]: ts for s, ts in ev.route_tasks([ptb, cps, csn], ["all"], "melp")}
    assert allm == {"ptbxl": ["ptbxl-form", "ptbxl-rhythm", "ptbxl-sub", "ptbxl-super"], "cpsc2018": ["cpsc2018"],
                    "csn": ["csn-38"]}  # under protocol melp: the tasks the reference has splits of
    assert [ts for _, ts in ev.route_tasks([ptb, cps], None)] == [["ptbxl-super"], ["cpsc2018"]]  # default tasks
