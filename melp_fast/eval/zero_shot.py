"""Evaluation suite: zero-shot and linear-probe AUROC on downstream tasks, with bootstrap intervals.

Zero-shot: every class has a text prompt (a clinical description; a list of prompts is averaged), read from the
task's JSON file in ``melp_fast/eval/prompts/`` (users may edit them or pass ``--prompts``); its normalised text
embedding is scored against the normalised rhythm (global) ECG embedding by cosine; AUROC per class on the
multi-hot labels (no softmax across classes, as in the reference's test_zeroshot.py), and their macro mean.
Linear probing: see ``melp_fast.eval.linear_probe``. Intervals: percentile bootstrap over test records (seeded).

    melp-fast evaluate --model runs/tiny/model --data synthetic --untrained --out runs/eval
    melp-fast evaluate --model DIR --data stores/ptbxl --task all --data stores/cpsc2018 --data stores/csn
    melp-fast evaluate --model DIR --protocol melp --splits MELP/src/melp/data_split \\
        --prompts MELP/src/melp/prompt/CKEPE_prompt.json --data stores/ptbxl-melp --data stores/cpsc2018-melp \\
        --data stores/csn-melp --task ptbxl-super --task ptbxl-sub --task ptbxl-form --task ptbxl-rhythm \\
        --task cpsc2018 --task csn-38

Each task is evaluated on the store whose source holds it (PTB-XL tasks on a PTB-XL store, cpsc2018 on a CPSC2018
store, csn-38 / csn-rhythm4 on a CSN store).

Protocols. ``--protocol melp`` reproduces the MELP reference: the record sets AND labels are those of the
reference's split files (``--splits DIR``, a copy of its ``data_split``; labels read by column name), the store
must be built with ``melp-fast preprocess --protocol melp`` (no high-pass; ICBEB 5 s zero-padded to 10 s), the
prompts are a CKEPE-format JSON (``--prompts``, lower-cased), the probe subsets are ``sample(frac,
random_state=42)`` of the train split with early stopping on its validation split. ``--protocol default`` (ours):
the store's own preprocessing and labels; records from ``--splits`` (the reference layout, or files
``<task>_train.csv`` / ``<task>_test.csv``), else PTB-XL's ``strat_fold`` (train 1-8, test 10), else a seeded
stratified 70/10/20 split; records without a label in the task are dropped; nested stratified probe subsets,
fixed epochs. ``--data synthetic`` builds the embedded corpus' held-out test split and a training split.

Scoring (``--scoring``; every result names the scoring that produced it). Zero-shot is always the per-class AUROC
of the raw cosine scores, macro-averaged: that is also what the reference's ``test_zeroshot.py`` computes (it
takes no softmax). The linear probe has two scorings: "per-class" (ours, the only one under the default protocol:
per-class AUROC of the logits, macro mean over the classes defined on the test set) and "reference" (the
reference's ``ssl_finetuner.py``: torchmetrics' multilabel macro AUROC of ``logits.softmax(-1)``, for early
stopping and test alike; a class with one label value on the test set scores 0 and counts in the mean). Under
``--protocol melp`` both are computed by default (``--scoring both``; "reference" is the headline, Table 2 prints
a row for each); ``--scoring reference`` or ``per-class`` computes one. Test logits, labels and zero-shot scores
of every cell are written to ``scores.npz`` beside ``results.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.dataset import Collate, ECGTextDataset
from ..data.store import Store
from .tasks import (KNOWN_TASKS, PROTOCOLS, EvalError, check_protocol, open_store, route_tasks,  # noqa: F401
                    store_tasks, task_key, task_sets, task_split)
from .linear_probe import linear_probe, reference_probe
from .metrics import SCORING_TEXT, SCORINGS, auroc, bootstrap_ci, per_class_auroc, score_set  # noqa: F401
from .prompts import load_prompts, prompt_embeddings, prompt_path, prompt_tasks, task_prompts  # noqa: F401
from .tables import comparison_table, markdown_report, paper_tables, save_json  # noqa: F401


@torch.no_grad()
def embed_store(model, store: Store, batch_size: int = 64, desc: str = "embed", progress: bool = True,
                indices=None) -> dict:
    """Rhythm embeddings [n, d], linear-probe features [n, d] and labels [n, C] of the records ``indices`` of a
    store (all when None). Beat spans are mapped to tokens with the model's own stride (2 ** conv_layers)."""
    model.eval()
    device = model.logit_scale.device
    ds = ECGTextDataset(store, stride=model.cfg.token_stride, indices=indices)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=Collate(model.tokenizer))
    rhythm, feats = [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, mininterval=2.0):
        out = model.encode_ecg(batch["ecg"].to(device), batch["beat_spans"].to(device), batch["beat_mask"].to(device),
                               batch["beat_seconds"].to(device))
        rhythm.append(out["rhythm"].float().cpu())
        feats.append(out["features"].float().cpu())
    d = rhythm[0].shape[1] if rhythm else 0
    labels = None if store.labels is None else np.asarray(store.labels)
    if labels is not None and indices is not None:
        labels = labels[np.asarray(indices, dtype=np.int64)]
    cat = (lambda xs: torch.cat(xs).numpy()) if rhythm else (lambda xs: np.zeros((0, d), np.float32))
    return {"rhythm": cat(rhythm), "features": cat(feats), "labels": labels}


def zero_shot_scores(rhythm: np.ndarray, text: np.ndarray, labels: np.ndarray, classes: list[str],
                     n_boot: int = 0, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Cosine scores [n, C] of normalised rhythm embeddings against normalised class texts, and their
    {"per_class", "mean", "undefined", ["ci"]}: the one zero-shot computation of the suite."""
    scores = np.asarray(rhythm) @ np.asarray(text).T
    return score_set(scores, labels, classes, n_boot=n_boot, seed=seed), scores


@torch.no_grad()
def zero_shot(model, store: Store, prompts: dict, batch_size: int = 64, progress: bool = True,
              embedded: dict | None = None, task: str | None = None, indices=None, n_boot: int = 0,
              boot_seed: int = 0, return_scores: bool = False) -> dict:
    """Zero-shot AUROC of a store's task (default task unless ``task``), over ``indices`` (all records unless
    given): {"per_class", "mean"} (+ "ci" with ``n_boot`` > 0, + "scores" with ``return_scores``). The model is
    put in eval mode first (prompt embeddings without dropout)."""
    model.eval()
    classes = store.classes if task is None else list(store.meta["tasks"][task]["classes"])
    labels = store.labels if task is None else store.task_labels(task)
    text = prompt_embeddings(model, prompts, classes)
    emb = embedded or embed_store(model, store, batch_size, progress=progress)
    rhythm = emb["rhythm"]
    if indices is not None:
        rhythm, labels = rhythm[indices], np.asarray(labels)[indices]
    out, scores = zero_shot_scores(rhythm, text, labels, classes, n_boot=n_boot, seed=boot_seed)
    if return_scores:
        out["scores"] = scores
    return out


def _synthetic_sets(args, cfg) -> tuple[Store, Store]:
    from ..data.store import build_synthetic_store

    d = Path(args.data_dir)
    seed, hp, mb = cfg.data.seed, cfg.data.highpass_hz, cfg.model.max_beats
    test = build_synthetic_store(d / f"synthetic-test-{args.n_test}-seed{seed}", "test", args.n_test, seed, hp, mb)
    train = build_synthetic_store(d / f"synthetic-train-{args.n_train}-seed{seed}", "train", args.n_train, seed, hp, mb)
    return train, test


# ------------------------------------------------------------------------------------------------- the suite
def _dataset_sets(ds: dict, protocol: str, splits, fractions, seed: int) -> dict:
    """{task: sets} of a dataset, indices into its pool (the train store's records, then the test store's)."""
    test = ds["test"]
    if ds["train"] is None:
        return {t: task_sets(test, t, protocol, splits, fractions, seed) for t in ds["tasks"]}
    n_tr = len(ds["train"])
    out = {}
    for t in ds["tasks"]:
        classes = list(test.meta["tasks"][t]["classes"])
        lab_tr = np.asarray(ds["train"].task_labels(t), dtype=np.float32)
        lab_te = np.asarray(test.task_labels(t), dtype=np.float32)
        out[t] = {"classes": classes, "train": (np.arange(n_tr), lab_tr), "val": (np.zeros(0, np.int64), lab_te[:0]),
                  "test": (n_tr + np.arange(len(test)), lab_te), "subsets": None,
                  "how": "separate train and test stores", "missing": {}, "missing_ids": {}}
    return out


def _embed_pool(model, ds: dict, needed: np.ndarray, batch_size: int, desc: str, progress: bool) -> dict:
    """Rhythm embeddings and features of the pool rows ``needed`` (the other rows stay NaN)."""
    stores = ([ds["train"]] if ds["train"] is not None else []) + [ds["test"]]
    n_pool = sum(len(s) for s in stores)
    rhythm = feats = None
    start = 0
    for s in stores:
        local = needed[(needed >= start) & (needed < start + len(s))] - start
        if len(local):
            e = embed_store(model, s, batch_size, desc=desc, progress=progress, indices=local)
            if rhythm is None:
                rhythm = np.full((n_pool, e["rhythm"].shape[1]), np.nan, np.float32)
                feats = np.full((n_pool, e["features"].shape[1]), np.nan, np.float32)
            rhythm[start + local], feats[start + local] = e["rhythm"], e["features"]
        start += len(s)
    return {"rhythm": rhythm, "features": feats}


def scorings_of(protocol: str, scoring: str | None = None) -> tuple[str, ...]:
    """The probe scorings a run computes, headline first: ``scoring`` "both" / None under protocol melp ->
    ("reference", "per-class"); "reference" or "per-class" -> that one. The default protocol has "per-class" only."""
    if scoring not in (None, "both", *SCORINGS):
        raise EvalError(f"unknown scoring {scoring!r} (choose from {', '.join(SCORINGS)}, both)")
    if protocol != "melp":
        if scoring not in (None, "per-class"):
            raise EvalError(f"--scoring {scoring} is the MELP reference's probe metric: use it with --protocol melp "
                            f"(the default protocol scores per class)")
        return ("per-class",)
    return SCORINGS if scoring in (None, "both") else (scoring,)


def evaluate_models(models: dict, datasets: list[dict], *, fractions=(0.01, 0.1, 1.0), n_boot: int = 1000,
                    seed: int = 42, epochs: int = 100, prompts=None, split_dir=None, batch_size: int = 64,
                    progress: bool = True, log=print, protocol: str = "default", verbose: bool = False,
                    scoring: str | None = None, arrays: dict | None = None) -> tuple[dict, dict]:
    """Zero-shot and linear probing of every model on every task of every dataset.

    ``datasets``: [{"name", "test": Store, "train": Store | None, "tasks": [...]}] (train None: split the test
    store). ``scoring``: see ``scorings_of``. Returns (results, curves): results[task_key][model] =
    {"zero_shot", "linear_probe" (the headline scoring's), "scoring" (its name), "linear_probe_by_scoring"
    ({scoring: fractions}), "protocol", "n_train", "n_val", "n_test", "split", ...}; curves[task_key] =
    {"classes", "labels", "zero_shot": scores, "linear_probe": scores} (first model) for plots. ``arrays`` (a dict,
    optional) receives arrays[(task_key, model)] = {"labels", "zero_shot", "<scoring>/<fraction>": test logits}."""
    if protocol not in PROTOCOLS:
        raise EvalError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    scorings = scorings_of(protocol, scoring)
    results: dict = {}
    curves: dict = {}
    owner: dict = {}  # task key -> the dataset that has it (a second dataset with the same task gets "key:name")
    for ds in datasets:
        if ds["train"] is None:
            check_protocol(ds["test"], protocol)
        sets = _dataset_sets(ds, protocol, split_dir, fractions, seed)
        texts = {}
        for task, st in sets.items():
            pkey = task_key(ds["test"], task)
            texts[task] = task_prompts(pkey, st["classes"], prompts, lower=protocol == "melp")
            if st["missing"] and sum(st["missing"].values()):
                miss = ", ".join(f"{p} {n}" for p, n in st["missing"].items())
                log(f"{task}: records listed in the split files but not in store {ds['test'].path}: {miss}")
                if verbose:
                    for p, ids in st["missing_ids"].items():
                        if ids:
                            log(f"  {p}: {' '.join(map(str, ids))}")
        for task, st in sets.items():
            if not len(st["test"][0]):
                raise EvalError(f"task {task}: none of its test records is in store {ds['test'].path}")
        parts = ("train", "val", "test") if protocol == "melp" else ("train", "test")  # the default probe uses no val
        needed = np.unique(np.concatenate([np.asarray(st[p][0], np.int64) for st in sets.values() for p in parts]))
        for mi, (mname, model) in enumerate(models.items()):
            t0 = time.perf_counter()
            model.eval()
            emb = _embed_pool(model, ds, needed, batch_size, f"{mname}: {ds['name']}", progress)
            for task, st in sets.items():
                pkey = task_key(ds["test"], task)
                key = pkey if owner.setdefault(pkey, id(ds)) == id(ds) else f"{pkey}:{ds['name']}"
                classes = st["classes"]
                (tr, y_tr), (va, y_va), (te, y_te) = st["train"], st["val"], st["test"]
                text = prompt_embeddings(model, texts[task], classes)
                zs, zs_scores = zero_shot_scores(emb["rhythm"][te], text, y_te, classes, n_boot=n_boot, seed=seed)
                zs["scoring"] = "per-class"
                lps = {sc: _probe(emb["features"], st, classes, fractions, seed, epochs, n_boot, protocol, sc)
                       for sc in scorings}
                lp = lps[scorings[0]]
                results.setdefault(key, {})[mname] = {
                    "zero_shot": zs, "linear_probe": lp["fractions"], "scoring": scorings[0],
                    "linear_probe_by_scoring": {sc: v["fractions"] for sc, v in lps.items()},
                    "classes": classes, "split": st["how"],
                    "protocol": protocol, "n_train": int(len(tr)), "n_val": int(len(va) if protocol == "melp" else 0),
                    "n_test": int(len(te)), "missing": st["missing"], "store": str(ds["test"].path), "task": task,
                    "probe": "reference (early stopping on val)" if protocol == "melp" else "fixed epochs"}
                if arrays is not None:
                    cell = arrays.setdefault((key, mname), {"labels": y_te, "zero_shot": zs_scores})
                    for sc, v in lps.items():
                        for fk, z in v.get("logits", v["scores"]).items():
                            cell[f"{sc}/{fk}"] = z
                if mi == 0:
                    curves[key] = {"classes": classes, "labels": y_te, "zero_shot": zs_scores,
                                   "linear_probe": lp["scores"][max(lp["scores"], key=lambda k: float(k[:-1]))]}
                fr = ", ".join(f"{k} {v['mean']:.3f}" for k, v in lp["fractions"].items())
                if len(lps) > 1:
                    fr += "  (" + "; ".join(f"{sc}: " + ", ".join(f"{k} {v['mean']:.3f}"
                                                                   for k, v in lps[sc]["fractions"].items())
                                            for sc in scorings[1:]) + ")"
                fr = f"[{scorings[0]}] " + fr
                log(f"[{mname}] {key}: zero-shot {zs['mean']:.3f}; linear probe {fr}  ({st['how']}; "
                    f"{len(tr)} train / {len(va)} val / {len(te)} test; {time.perf_counter() - t0:.0f} s)")
    return results, curves


def _probe(feats: np.ndarray, st: dict, classes, fractions, seed, epochs, n_boot, protocol,
           scoring: str = "per-class") -> dict:
    """The linear probe of one task: concatenated rows (train, val, test) so the probes index one array."""
    (tr, y_tr), (va, y_va), (te, y_te) = st["train"], st["val"], st["test"]
    if protocol == "melp":
        subs = st["subsets"]
        blocks = [(va, y_va), (te, y_te)] + [subs[f] for f in sorted(subs)]
        x = np.concatenate([feats[np.asarray(i, np.int64)] for i, _ in blocks])
        y = np.concatenate([np.asarray(l, np.float32).reshape(-1, len(classes)) for _, l in blocks])
        off = np.cumsum([0] + [len(i) for i, _ in blocks])
        subsets = {f: np.arange(off[2 + k], off[3 + k]) for k, f in enumerate(sorted(subs))}
        return reference_probe(x, y, subsets, np.arange(off[0], off[1]), np.arange(off[1], off[2]), classes,
                               seed=seed, max_epochs=epochs, n_boot=n_boot, boot_seed=seed, scoring=scoring,
                               bf16=True)
    x = np.concatenate([feats[tr], feats[te]])
    y = np.concatenate([y_tr, y_te]).astype(np.float32)
    return linear_probe(x, y, np.arange(len(tr)), len(tr) + np.arange(len(te)), classes, fractions=fractions,
                        seed=seed, epochs=epochs, n_boot=n_boot, boot_seed=seed)


def save_scores(arrays: dict, path):
    """``scores.npz``: per (task, model) the test labels, zero-shot cosine scores and the probe's test logits of
    every scoring and fraction, under keys "<task>|<model>|labels", "...|zero_shot", "...|<scoring>/<fraction>"."""
    flat = {f"{task}|{model}|{k}": np.asarray(v) for (task, model), d in arrays.items() for k, v in d.items()}
    np.savez_compressed(path, **flat)


def _model_name(ckpt: str) -> str:
    p = Path(ckpt).resolve()
    return p.parent.name if p.name == "model" else p.name


def parse_args(argv):
    from ..options import parse  # melp_fast/options.py holds every command's options

    return parse("evaluate", argv)


def _main(argv=None) -> int:
    args = parse_args(argv)
    from ..checks import check_evaluate_args

    check_evaluate_args(args)  # ranges, device and a writable --out before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..inference.export import load_model, untrained_model

    try:
        fractions = tuple(float(x) for x in args.fractions.split(","))
    except ValueError:
        raise EvalError(f"--fractions {args.fractions!r}: comma-separated numbers in (0, 1] expected") from None
    if any(not 0 < f <= 1 for f in fractions):
        raise EvalError(f"--fractions {args.fractions!r}: every fraction must be in (0, 1]")
    if args.protocol == "melp":
        if args.prompts is None:
            raise EvalError("--protocol melp needs --prompts FILE, the reference's prompt file (e.g. MELP/src/melp/"
                            "prompt/CKEPE_prompt.json)")
        if args.splits is None:
            raise EvalError("--protocol melp needs --splits DIR, a copy of the reference's split files (e.g. MELP/src/"
                            "melp/data_split)")
        if "synthetic" in args.data:
            raise EvalError("--data synthetic has no reference split: use it with --protocol default")
    scorings = scorings_of(args.protocol, args.scoring)
    for p in (args.prompts, args.splits):
        if p is not None and not Path(p).exists():
            raise EvalError(f"{p} does not exist")
    stores = [open_store(s) for s in args.data if s != "synthetic"]
    wanted = [t for t in (args.task or []) if t != "synthetic"] or None
    models = {}
    for ck in args.model:
        name = _model_name(ck)
        while name in models:
            name += "'"
        try:
            models[name] = load_model(ck, args.device)
        except FileNotFoundError as e:
            raise EvalError(f"--model {ck}: {e}") from None
    first = next(iter(models.values()))
    if args.untrained:
        cfg = first.config
        models["untrained"] = untrained_model(cfg, cfg.train.seed).to(args.device)
    datasets = []
    if "synthetic" in args.data:
        train, test = _synthetic_sets(args, first.config)
        datasets.append({"name": "synthetic", "test": test, "train": train, "tasks": ["labels"]})
    if stores or wanted:
        for st, ts in route_tasks(stores, wanted, args.protocol):
            datasets.append({"name": Path(st.path).name, "test": st, "train": None, "tasks": ts})
    t0 = time.perf_counter()
    arrays: dict = {}
    results, curves = evaluate_models(models, datasets, fractions=fractions, n_boot=args.n_boot, seed=args.seed,
                                      epochs=args.epochs, prompts=args.prompts, split_dir=args.splits,
                                      batch_size=args.batch_size, progress=not args.quiet, protocol=args.protocol,
                                      verbose=args.verbose, scoring=args.scoring, arrays=arrays)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    probe = ("reference: raw features, default init, every class, AdamW lr 1e-3 wd 1e-4, batch 128, cosine to "
             "1e-5, bf16 autocast, early stopping on the validation macro AUROC of the scoring (patience 5)"
             if args.protocol == "melp" else
             "linear layer on standardised frozen features, BCE with logits, AdamW lr 1e-3, zero init, fixed epochs")
    settings = {"ckpt": args.model, "stores": args.data, "protocol": args.protocol, "splits": args.splits,
                "prompts": args.prompts, "fractions": list(fractions), "epochs": args.epochs, "n_boot": args.n_boot,
                "seed": args.seed, "probe": probe, "scorings": list(scorings),
                "auroc": {"zero_shot": "per-class: " + SCORING_TEXT["per-class"] + " (raw cosine, as the reference)",
                          "linear_probe": {sc: SCORING_TEXT[sc] for sc in scorings}},
                "minutes": (time.perf_counter() - t0) / 60}
    from .tables import load_paper_results

    save_json({"settings": settings, "results": results, "paper": load_paper_results()}, out / "results.json")
    save_scores(arrays, out / "scores.npz")
    tables = paper_tables(results)
    md = tables + "\n" + markdown_report(results, fractions)
    (out / "results.md").write_text(md)
    written = [out / "results.json", out / "results.md", out / "scores.npz"]
    if not args.no_plots:
        from ..plots import plot_roc
        from .tables import title

        for key, c in curves.items():
            f = out / f"roc_{key.replace(':', '_').replace('/', '_')}.png"
            plot_roc(c["labels"], {"zero-shot": c["zero_shot"], "linear probe (100%)": c["linear_probe"]},
                     c["classes"], f, title=f"{title(key)} ({next(iter(models))})")
            written.append(f)
    print()
    print(md)
    print("written: " + ", ".join(str(w) for w in written))
    return 0


def main(argv=None) -> int:
    """`melp-fast evaluate`: a user error is one line on stderr and exit code 2 (``errors.run_main``)."""
    from ..errors import run_main

    return run_main(_main, argv)
