"""Evaluation suite: zero-shot and linear-probe AUROC on downstream tasks, with bootstrap intervals.

Zero-shot: every class has a text prompt (a clinical description; a list of prompts is averaged), read from the
task's JSON file in ``melp_fast/prompts/`` (users may edit them or pass ``--prompts``); its normalised text
embedding is scored against the normalised rhythm (global) ECG embedding by cosine; AUROC per class on the
multi-hot labels (no softmax across classes: the tasks are multi-label, see MELP_SPEC.md), and their macro mean.
Linear probing: see ``melp_fast.linear_probe``. Intervals: percentile bootstrap over test records (seeded).

    melp-fast evaluate --ckpt runs/tiny/model --store synthetic --untrained --out runs/eval
    melp-fast evaluate --ckpt DIR --store stores/ptbxl --task all --store stores/cpsc2018 --store stores/csn

Where the test and training records of a store come from: files ``<task>_train.csv`` / ``<task>_test.csv`` in
``--split-dir`` (record ids, as MERL/MELP publish their splits), else PTB-XL's ``strat_fold`` (train 1-8, test
10), else a seeded stratified 70/10/20 split of the store (``data.tasks.stratified_split``). ``--store synthetic``
builds the embedded corpus' held-out test split and a training split for probing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data.dataset import Collate, ECGTextDataset
from .data.store import Store


@torch.no_grad()
def embed_store(model, store: Store, batch_size: int = 64, desc: str = "embed", progress: bool = True) -> dict:
    """Rhythm embeddings [N, d], linear-probe features [N, d] and labels [N, C] of every record of a store."""
    model.eval()
    device = model.logit_scale.device
    loader = DataLoader(ECGTextDataset(store), batch_size=batch_size, shuffle=False, collate_fn=Collate(model.tokenizer))
    rhythm, feats = [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, mininterval=2.0):
        out = model.encode_ecg(batch["ecg"].to(device), batch["beat_spans"].to(device), batch["beat_mask"].to(device))
        rhythm.append(out["rhythm"].float().cpu())
        feats.append(out["features"].float().cpu())
    return {"rhythm": torch.cat(rhythm).numpy(), "features": torch.cat(feats).numpy(),
            "labels": None if store.labels is None else np.asarray(store.labels)}


def per_class_auroc(scores: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    """AUROC of each class column (NaN where a class has only one label value in the set)."""
    return {name: float(a) for name, a in zip(classes, auroc(scores, labels))}


PROMPT_DIR = Path(__file__).parent / "prompts"
TASK_TITLES = {"ptbxl-super": "PTB-XL Super", "ptbxl-sub": "PTB-XL Sub", "ptbxl-form": "PTB-XL Form",
               "ptbxl-rhythm": "PTB-XL Rhythm", "cpsc2018": "CPSC2018", "csn-rhythm4": "CSN",
               "synthetic": "Synthetic"}


def auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-column AUROC [C] of scores [N, C] against multi-hot labels [N, C] (the Mann-Whitney statistic with
    average ranks for ties, equal to sklearn's roc_auc_score); NaN where a column has one label value or a
    non-finite score."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels) > 0
    if scores.shape != y.shape or scores.ndim != 2:
        raise ValueError(f"auroc: scores and labels must both be [N, C], got {scores.shape} and {y.shape}")
    n1 = y.sum(0).astype(np.float64)
    n0 = y.shape[0] - n1
    finite = np.isfinite(scores).all(0)
    ranks = rankdata(np.where(finite[None, :], scores, 0.0), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0) & finite, auc, np.nan)


def bootstrap_ci(scores: np.ndarray, labels: np.ndarray, classes: list[str], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Percentile bootstrap intervals (resampling records with replacement, seeded) of every class's AUROC and
    of the macro mean (over the classes defined on the full set; a resample where a class has one label value
    leaves it out of that resample's mean)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(scores)
    full = np.isfinite(auroc(scores, labels))
    rng = np.random.default_rng(seed)
    boot = np.full((n_boot, scores.shape[1]), np.nan)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        boot[b] = auroc(scores[idx], labels[idx])
    boot[:, ~full] = np.nan
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per = np.nanpercentile(boot, [lo_q, hi_q], axis=0)
            macro = np.nanmean(boot[:, full], axis=1) if full.any() else np.full(n_boot, np.nan)
            mac = np.nanpercentile(macro, [lo_q, hi_q]) if np.isfinite(macro).any() else [np.nan, np.nan]
    return {"per_class": {c: [float(per[0, k]), float(per[1, k])] for k, c in enumerate(classes)},
            "mean": [float(mac[0]), float(mac[1])], "n_boot": int(n_boot), "level": level, "seed": int(seed)}


# ------------------------------------------------------------------------------------------------- prompts
def prompt_path(task: str) -> Path:
    return PROMPT_DIR / f"{task}.json"


def prompt_tasks() -> list[str]:
    """Tasks with a shipped prompt file."""
    return sorted(p.stem for p in PROMPT_DIR.glob("*.json"))


def load_prompts(task: str, override: str | Path | None = None) -> dict[str, str | list[str]]:
    """{class: prompt or [prompts]} of a task: the shipped ``prompts/<task>.json``, or ``override`` (a directory
    holding ``<task>.json``, a JSON file {class: prompt}, or a JSON file {task: {class: prompt}})."""
    if override is not None:
        o = Path(override)
        if o.is_dir():
            f = o / f"{task}.json"
            if f.is_file():
                return _read_prompt_file(f)
        elif o.is_file():
            d = json.loads(o.read_text(encoding="utf-8"))
            if isinstance(d.get(task), dict):
                return d[task]
            if all(isinstance(v, (str, list)) for v in d.values()):
                return d
        else:
            raise FileNotFoundError(f"prompt file or directory {o} does not exist")
    f = prompt_path(task)
    if not f.is_file():
        raise FileNotFoundError(f"no prompt file for task {task!r} ({f}); pass --prompts FILE.json")
    return _read_prompt_file(f)


def _read_prompt_file(f: Path) -> dict:
    d = json.loads(f.read_text(encoding="utf-8"))
    return {k: v for k, v in d.items() if not k.startswith("_comment")}  # "_comment" keys are documentation


@torch.no_grad()
def prompt_embeddings(model, prompts: dict, classes: list[str]) -> np.ndarray:
    """[C, d] normalised text embedding of each class (the mean of its prompts' embeddings, renormalised)."""
    missing = [c for c in classes if c not in prompts or not prompts[c]]
    if missing:
        raise ValueError(f"no prompt for classes {missing}")
    texts, owner = [], []
    for k, c in enumerate(classes):
        ps = prompts[c] if isinstance(prompts[c], list) else [prompts[c]]
        texts += [str(p) for p in ps]
        owner += [k] * len(ps)
    emb = model.encode_prompts(texts).float().cpu()
    out = torch.zeros(len(classes), emb.shape[1])
    out.index_add_(0, torch.tensor(owner), emb)
    return torch.nn.functional.normalize(out, dim=-1).numpy()


@torch.no_grad()
def zero_shot(model, store: Store, prompts: dict, batch_size: int = 64, progress: bool = True,
              embedded: dict | None = None, task: str | None = None, indices=None, n_boot: int = 0,
              boot_seed: int = 0, return_scores: bool = False) -> dict:
    """Zero-shot AUROC of a store's task (default task unless ``task``), over ``indices`` (all records unless
    given): {"per_class", "mean"} (+ "ci" with ``n_boot`` > 0, + "scores" with ``return_scores``)."""
    classes = store.classes if task is None else list(store.meta["tasks"][task]["classes"])
    labels = store.labels if task is None else store.task_labels(task)
    text = prompt_embeddings(model, prompts, classes)
    emb = embedded or embed_store(model, store, batch_size, progress=progress)
    rhythm = emb["rhythm"]
    if indices is not None:
        rhythm, labels = rhythm[indices], np.asarray(labels)[indices]
    scores = rhythm @ text.T
    auc = auroc(scores, labels)
    per_class = {c: float(a) for c, a in zip(classes, auc)}
    out = {"per_class": per_class, "mean": float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"),
           "undefined": [c for c, a in zip(classes, auc) if not np.isfinite(a)]}
    if n_boot:
        out["ci"] = bootstrap_ci(scores, labels, classes, n_boot=n_boot, seed=boot_seed)
    if return_scores:
        out["scores"] = scores
    return out


def comparison_table(results: dict[str, dict], names: dict[str, str] | None = None) -> str:
    """Markdown table: one row per class, one column per model (e.g. untrained / trained), mean last."""
    cols = list(results)
    classes = list(next(iter(results.values()))["per_class"])
    lines = ["| class | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for c in classes:
        label = f"{c} ({names[c]})" if names and c in names else c
        lines.append(f"| {label} | " + " | ".join(f"{results[m]['per_class'][c]:.3f}" for m in cols) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{results[m]['mean']:.3f}**" for m in cols) + " |")
    return "\n".join(lines)


def save_json(obj, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2))


# ------------------------------------------------------------------------------------------------- the suite
def _task_key(store: Store, task: str) -> str:
    """Prompt-file / table key of a store's task ("synthetic" for the embedded corpus' label task)."""
    if task == "labels" and str(store.meta.get("source", "")).startswith("synthetic"):
        return "synthetic"
    return task


def store_tasks(store: Store, wanted: list[str] | None) -> list[str]:
    """The tasks of a store to evaluate: ``wanted`` (names, or "all" for every task with fixed classes), else
    the store's default task."""
    have = store.meta.get("tasks") or {}
    if not wanted:
        if not store.meta.get("task"):
            raise ValueError(f"store {store.path} has no default task; pass --task (it has {sorted(have)})")
        return [store.meta["task"]]
    if "all" in wanted:
        return [t for t, v in have.items() if v.get("classes")]
    out = [t for t in wanted if t in have]
    if not out:
        raise ValueError(f"store {store.path} has none of the tasks {wanted} (it has {sorted(have)})")
    return out


def task_split(store: Store, task: str, labels: np.ndarray, split_dir=None, seed: int = 42) -> tuple[np.ndarray, np.ndarray, str]:
    """(train indices, test indices, how) of a store's task: split CSVs, PTB-XL folds or a stratified split."""
    from .data import tasks as tasklib

    if split_dir is not None:
        d = Path(split_dir)
        tr, te = d / f"{task}_train.csv", d / f"{task}_test.csv"
        if tr.is_file() and te.is_file():
            classes = list(store.meta["tasks"][task]["classes"])
            ids_tr, _, _ = tasklib.read_split_csv(tr, classes)
            ids_te, _, _ = tasklib.read_split_csv(te, classes)
            return store.indices_of(ids_tr), store.indices_of(ids_te), f"split files {tr.name}, {te.name}"
    folds = [r.get("strat_fold") for r in store.records]
    if folds and all(f is not None for f in folds):
        tr, _, te = tasklib.ptbxl_fold_split(folds)
        return tr, te, "strat_fold (train 1-8, test 10)"
    tr, _, te = tasklib.stratified_split(labels, (0.7, 0.1, 0.2), seed)
    return tr, te, f"stratified 70/10/20 split, seed {seed}"


def _synthetic_sets(args, cfg) -> tuple[Store, Store]:
    from .data.store import build_synthetic_store

    d = Path(args.data_dir)
    seed, hp, mb = cfg.data.seed, cfg.data.highpass_hz, cfg.model.max_beats
    test = build_synthetic_store(d / f"synthetic-test-{args.n_test}-seed{seed}", "test", args.n_test, seed, hp, mb)
    train = build_synthetic_store(d / f"synthetic-train-{args.n_train}-seed{seed}", "train", args.n_train, seed, hp, mb)
    return train, test


def evaluate_models(models: dict, datasets: list[dict], *, fractions=(0.01, 0.1, 1.0), n_boot: int = 1000,
                    seed: int = 42, epochs: int = 100, prompts=None, split_dir=None, batch_size: int = 64,
                    progress: bool = True, log=print) -> tuple[dict, dict]:
    """Zero-shot and linear probing of every model on every task of every dataset.

    ``datasets``: [{"name", "test": Store, "train": Store | None, "tasks": [...]}] (train None: split the test
    store). Returns (results, curves): results[task_key][model] = {"zero_shot", "linear_probe", "split", ...};
    curves[task_key] = {"classes", "labels", "zero_shot": scores, "linear_probe": scores} (first model) for plots."""
    from .linear_probe import linear_probe

    results: dict = {}
    curves: dict = {}
    owner: dict = {}  # task key -> the dataset that has it (a second dataset with the same task gets "key:name")
    for ds in datasets:
        for mi, (mname, model) in enumerate(models.items()):
            t0 = time.perf_counter()
            emb_te = embed_store(model, ds["test"], batch_size, desc=f"{mname}: {ds['name']}", progress=progress)
            emb_tr = None
            if ds["train"] is not None:
                emb_tr = embed_store(model, ds["train"], batch_size, desc=f"{mname}: {ds['name']} train",
                                     progress=progress)
            for task in ds["tasks"]:
                pkey = _task_key(ds["test"], task)
                key = pkey if owner.setdefault(pkey, id(ds)) == id(ds) else f"{pkey}:{ds['name']}"
                classes = list(ds["test"].meta["tasks"][task]["classes"])
                lab_te = np.asarray(ds["test"].task_labels(task), dtype=np.float32)
                if emb_tr is None:
                    tr, te, how = task_split(ds["test"], task, lab_te, split_dir, seed)
                    feats, labels, rhythm = emb_te["features"], lab_te, emb_te["rhythm"]
                else:
                    lab_tr = np.asarray(ds["train"].task_labels(task), dtype=np.float32)
                    n_tr = len(lab_tr)
                    feats = np.concatenate([emb_tr["features"], emb_te["features"]])
                    labels = np.concatenate([lab_tr, lab_te])
                    rhythm = np.concatenate([emb_tr["rhythm"], emb_te["rhythm"]])
                    tr, te, how = np.arange(n_tr), n_tr + np.arange(len(lab_te)), "separate train and test stores"
                text = prompt_embeddings(model, load_prompts(pkey, prompts), classes)
                zs_scores = rhythm[te] @ text.T
                zs_auc = auroc(zs_scores, labels[te])
                zs = {"per_class": {c: float(a) for c, a in zip(classes, zs_auc)},
                      "mean": float(np.nanmean(zs_auc)) if np.isfinite(zs_auc).any() else float("nan"),
                      "undefined": [c for c, a in zip(classes, zs_auc) if not np.isfinite(a)]}
                if n_boot:
                    zs["ci"] = bootstrap_ci(zs_scores, labels[te], classes, n_boot=n_boot, seed=seed)
                lp = linear_probe(feats, labels, tr, te, classes, fractions=fractions, seed=seed, epochs=epochs,
                                  n_boot=n_boot, boot_seed=seed)
                results.setdefault(key, {})[mname] = {
                    "zero_shot": zs, "linear_probe": lp["fractions"], "classes": classes, "split": how,
                    "n_train": int(len(tr)), "n_test": int(len(te)), "store": str(ds["test"].path), "task": task}
                if mi == 0:
                    curves[key] = {"classes": classes, "labels": labels[te], "zero_shot": zs_scores,
                                   "linear_probe": lp["scores"][max(lp["scores"], key=lambda k: float(k[:-1]))]}
                fr = ", ".join(f"{k} {v['mean']:.3f}" for k, v in lp["fractions"].items())
                log(f"[{mname}] {key}: zero-shot {zs['mean']:.3f}; linear probe {fr}  ({how}; "
                    f"{len(tr)} train / {len(te)} test; {time.perf_counter() - t0:.0f} s)")
    return results, curves


def _fmt(x, ci=None) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    s = f"{100 * x:.2f}"
    if ci and np.isfinite(ci[0]):
        s += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return s


def markdown_report(results: dict, fractions=(0.01, 0.1, 1.0)) -> str:
    """Markdown: zero-shot macro AUROC per task; the linear-probe table laid out like the paper's Table 2
    (rows = models, columns = task x training fraction); per-class tables per task. AUROC x 100."""
    from .linear_probe import fraction_label

    tasks = list(results)
    models = list(dict.fromkeys(m for t in tasks for m in results[t]))
    fr = [fraction_label(f) for f in sorted(fractions)]
    def title(t):
        base, _, ds = t.partition(":")
        return TASK_TITLES.get(t, TASK_TITLES.get(base, base) + (f" ({ds})" if ds else ""))

    L = ["## Zero-shot (macro AUROC x 100, 95% bootstrap interval)", "",
         "| model | " + " | ".join(title(t) for t in tasks) + " | mean |",
         "|---|" + "---:|" * (len(tasks) + 1)]
    for m in models:
        vals = [results[t][m]["zero_shot"] for t in tasks if m in results[t]]
        mean = np.nanmean([v["mean"] for v in vals]) if vals else float("nan")
        L.append(f"| {m} | " + " | ".join(_fmt(results[t][m]["zero_shot"]["mean"],
                                                 results[t][m]["zero_shot"].get("ci", {}).get("mean"))
                                            if m in results[t] else "" for t in tasks) + f" | {_fmt(mean)} |")
    L += ["", "## Linear probing (macro AUROC x 100 on test; one linear layer on frozen features)", "",
          "| model | " + " | ".join(f"{title(t)} {f}" for t in tasks for f in fr) + " |",
          "|---|" + "---:|" * (len(tasks) * len(fr))]
    for m in models:
        cells = []
        for t in tasks:
            for f in fr:
                e = results[t].get(m, {}).get("linear_probe", {}).get(f)
                cells.append(_fmt(e["mean"]) if e else "")
        L.append(f"| {m} | " + " | ".join(cells) + " |")
    notes = []
    for t in tasks:
        L += ["", f"### {title(t)}: per class (AUROC x 100)", ""]
        first = results[t][models[0]] if models[0] in results[t] else next(iter(results[t].values()))
        L.append(f"{first['n_train']} training / {first['n_test']} test records ({first['split']}).")
        L.append("")
        head = [f"{m} {k}" for m in models if m in results[t] for k in ["zero-shot", *fr]]
        L += ["| class | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
        for c in first["classes"]:
            cells = []
            for m in models:
                if m not in results[t]:
                    continue
                r = results[t][m]
                cells.append(_fmt(r["zero_shot"]["per_class"][c], r["zero_shot"].get("ci", {}).get("per_class", {}).get(c)))
                cells += [_fmt(r["linear_probe"][f]["per_class"][c]) for f in fr]
            L.append(f"| {c} | " + " | ".join(cells) + " |")
        for m in models:
            r = results[t].get(m)
            if not r:
                continue
            for f in fr:
                e = r["linear_probe"][f]
                if e["skipped"]:
                    notes.append(f"{title(t)}, {m}, {f} ({e['n_train']} records): skipped {', '.join(e['skipped'])} "
                                 f"(one label value in the training subset)")
            if r["zero_shot"]["undefined"]:
                notes.append(f"{title(t)}: no AUROC for {', '.join(r['zero_shot']['undefined'])} "
                             f"(one label value in the test split)")
    if notes:
        L += ["", "### Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(L) + "\n"


def _nan_to_none(obj):
    """NaN (an undefined AUROC) as JSON null."""
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def _model_name(ckpt: str) -> str:
    p = Path(ckpt).resolve()
    return p.parent.name if p.name == "model" else p.name


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="melp-fast evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", required=True, metavar="DIR",
                   help="an exported model directory (repeatable: one row per model)")
    p.add_argument("--store", action="append", required=True, metavar="PATH",
                   help="a preprocessed store, or 'synthetic' for the embedded corpus (repeatable)")
    p.add_argument("--task", action="append", default=None,
                   help="task of the stores to evaluate (repeatable; 'all' = every task; default: the store's)")
    p.add_argument("--untrained", action="store_true",
                   help="also evaluate the untrained model (the first --ckpt's config, its training seed)")
    p.add_argument("--prompts", default=None, help="prompt JSON file or directory of <task>.json (default: shipped)")
    p.add_argument("--split-dir", default=None, help="directory of <task>_train.csv / <task>_test.csv split files")
    p.add_argument("--fractions", default="0.01,0.1,1.0", help="linear-probe training fractions")
    p.add_argument("--epochs", type=int, default=100, help="linear-probe epochs")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--n-test", type=int, default=600, help="synthetic: held-out test records")
    p.add_argument("--n-train", type=int, default=3000, help="synthetic: training records for probing")
    p.add_argument("--data-dir", default="runs/data", help="synthetic: where its stores are built / reused")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default="runs/eval", help="output directory (results.json, results.md, roc_*.png)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from .export import load_model, untrained_model

    models = {}
    for ck in args.ckpt:
        name = _model_name(ck)
        while name in models:
            name += "'"
        models[name] = load_model(ck, args.device)
    first = next(iter(models.values()))
    if args.untrained:
        cfg = first.config
        models["untrained"] = untrained_model(cfg, cfg.train.seed).to(args.device)
    fractions = tuple(float(x) for x in args.fractions.split(","))
    datasets = []
    for s in args.store:
        if s == "synthetic":
            train, test = _synthetic_sets(args, first.config)
            datasets.append({"name": "synthetic", "test": test, "train": train, "tasks": ["labels"]})
        else:
            st = Store(s)
            datasets.append({"name": Path(s).name, "test": st, "train": None, "tasks": store_tasks(st, args.task)})
    t0 = time.perf_counter()
    results, curves = evaluate_models(models, datasets, fractions=fractions, n_boot=args.n_boot, seed=args.seed,
                                      epochs=args.epochs, prompts=args.prompts, split_dir=args.split_dir,
                                      batch_size=args.batch_size, progress=not args.quiet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"ckpt": args.ckpt, "stores": args.store, "fractions": list(fractions), "epochs": args.epochs,
                "n_boot": args.n_boot, "seed": args.seed, "probe": "linear layer on standardised frozen features, "
                "BCE with logits, AdamW lr 1e-3, zero init", "minutes": (time.perf_counter() - t0) / 60}
    save_json(_nan_to_none({"settings": settings, "results": results}), out / "results.json")
    md = markdown_report(results, fractions)
    (out / "results.md").write_text(md)
    written = [out / "results.json", out / "results.md"]
    if not args.no_plots:
        from .plots import plot_roc

        for key, c in curves.items():
            f = out / f"roc_{key.replace(':', '_').replace('/', '_')}.png"
            plot_roc(c["labels"], {"zero-shot": c["zero_shot"], "linear probe (100%)": c["linear_probe"]},
                     c["classes"], f, title=f"{TASK_TITLES.get(key, key)} ({next(iter(models))})")
            written.append(f)
    print()
    print(md)
    print("written: " + ", ".join(str(w) for w in written))
    return 0
