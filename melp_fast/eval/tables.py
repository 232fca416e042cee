"""Writing evaluation results: JSON (NaN as null) and markdown, including the paper's Table 2 (linear probing,
six tasks x 1/10/100%) and Table 3 (zero-shot, six tasks + average) with the published MELP and MERL rows
(``paper_results.json``, transcribed from the paper) printed beside ours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .metrics import SCORING_TEXT, SCORINGS

TASK_TITLES = {"ptbxl-super": "PTB-XL Super", "ptbxl-sub": "PTB-XL Sub", "ptbxl-form": "PTB-XL Form",
               "ptbxl-rhythm": "PTB-XL Rhythm", "cpsc2018": "CPSC2018", "csn-rhythm4": "CSN (4 rhythms)",
               "csn-38": "CSN", "synthetic": "Synthetic"}
# The paper's column order.
TABLE2_TASKS = ("ptbxl-rhythm", "ptbxl-sub", "ptbxl-form", "ptbxl-super", "cpsc2018", "csn-38")
TABLE3_TASKS = ("csn-38", "ptbxl-rhythm", "ptbxl-form", "ptbxl-sub", "ptbxl-super", "cpsc2018")
PAPER_FILE = Path(__file__).parent / "paper_results.json"
PAPER_ROWS = ("MERL", "MELP")


def load_paper_results(path=PAPER_FILE) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def title(key: str) -> str:
    base, _, ds = key.partition(":")
    return TASK_TITLES.get(key, TASK_TITLES.get(base, base) + (f" ({ds})" if ds else ""))


def fmt(x, ci=None) -> str:
    """AUROC x 100 with two decimals (and its interval), or n/a."""
    if x is None or not np.isfinite(x):
        return "n/a"
    s = f"{100 * x:.2f}"
    if ci and ci[0] is not None and np.isfinite(ci[0]):
        s += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return s


def _task_of(key: str) -> str:
    return key.partition(":")[0]


def _columns(results: dict, order) -> list[tuple[str, str | None, str | None]]:
    """(title, result key or None, paper task or None) per column: the paper's tasks in its order, then any other
    evaluated task (no paper number)."""
    cols, used = [], set()
    for t in order:
        key = next((k for k in results if _task_of(k) == t), None)
        cols.append((TASK_TITLES[t], key, t))
        if key:
            used.add(key)
    return cols + [(title(k), k, None) for k in results if k not in used]


def _rows(results: dict, models: list) -> list[tuple[str, str, str | None]]:
    """(row label, model, scoring or None) of Table 2: one row per model and probe scoring it was scored with
    (a single-scoring run keeps the model's name alone)."""
    out = []
    for m in models:
        scs = list(dict.fromkeys(sc for k in results if m in results[k]
                                 for sc in (results[k][m].get("linear_probe_by_scoring") or {})))
        if len(scs) <= 1:
            out.append((m, m, None))
        else:
            out += [(f"{m} ({sc} scoring)", m, sc) for sc in scs]
    return out


def _probe_cell(results: dict, key, model: str, scoring, f: str):
    r = results.get(key, {}).get(model, {}) if key else {}
    lp = (r.get("linear_probe_by_scoring") or {}).get(scoring) if scoring else r.get("linear_probe")
    return (lp or {}).get(f)


def paper_tables(results: dict, fractions=("1%", "10%", "100%"), paper: dict | None = None) -> str:
    """Markdown Table 2 (linear probing) and Table 3 (zero-shot) in the paper's layout: our models first (Table 2:
    one row per probe scoring when a run has two), then the paper's MERL and MELP rows, with footnotes on what each
    row's numbers are. AUROC x 100; n/a where a score is not available."""
    paper = load_paper_results() if paper is None else paper
    models = list(dict.fromkeys(m for k in results for m in results[k]))
    protocols = sorted({r.get("protocol", "default") for k in results for r in results[k].values()})
    src = paper.get("_cite", "the MELP paper")
    L = [f"## Table 2: linear probing (AUROC x 100; ours: protocol {', '.join(protocols)})", ""]
    cols = _columns(results, TABLE2_TASKS)
    L.append("| model | " + " | ".join(f"{t} {f}" for t, _, _ in cols for f in fractions) + " |")
    L.append("|---|" + "---:|" * (len(cols) * len(fractions)))
    scorings_seen = set()
    for label, m, sc in _rows(results, models):
        cells = []
        for _, k, _ in cols:
            for f in fractions:
                e = _probe_cell(results, k, m, sc, f)
                if e:
                    scorings_seen.add(e.get("scoring", "per-class"))
                cells.append(fmt(e["mean"]) if e else "")
        L.append(f"| {label} | " + " | ".join(cells) + " |")
    for p in PAPER_ROWS:
        row = paper["linear_probe"][p]
        cells = [f"{row[t][f]:.2f}" if t in row else "" for _, _, t in cols for f in fractions]
        mark = "¹" if p == "MELP" and any(t == "ptbxl-sub" for _, _, t in cols) else ("²" if p == "MERL" else "")
        L.append(f"| {p} (paper){mark} | " + " | ".join(cells) + " |")
    L += ["", "Scoring of our rows: " + "; ".join(f"**{sc}**: {SCORING_TEXT[sc]}" for sc in SCORINGS
                                                   if sc in scorings_seen) + "."]
    if any(t == "ptbxl-sub" for _, _, t in cols):
        L.append("¹ PTB-XL Sub (paper rows): the reference reads the sub-class training file's label columns by "
                 "position while its val / test files list three of them in another order, so three classes are "
                 "trained on another class's labels; if the paper ran that code its sub-class probe numbers are low "
                 "(about 2-7 points in simulation). We read labels by name: an equal model scores higher here.")
    L.append("² MERL (paper row): MERL's own protocol (its own subset draw; the best test AUROC over 100 epochs, no "
             "validation-based selection), not the MELP reference's probe.")
    L += ["", f"## Table 3: zero-shot (AUROC x 100; ours: protocol {', '.join(protocols)})", ""]
    cols = _columns(results, TABLE3_TASKS)
    L.append("| model | " + " | ".join(t for t, _, _ in cols) + " | Average |")
    L.append("|---|" + "---:|" * (len(cols) + 1))
    for m in models:
        vals = [results[k][m]["zero_shot"]["mean"] if k and m in results.get(k, {}) else None for _, k, _ in cols]
        six = vals[:len(TABLE3_TASKS)]
        ok = [v for v in six if v is not None and np.isfinite(v)]
        avg = fmt(float(np.mean(ok))) if len(ok) == len(TABLE3_TASKS) else (
            f"n/a ({len(ok)} of {len(TABLE3_TASKS)} tasks)" if ok else "n/a")
        L.append(f"| {m} | " + " | ".join(fmt(v) if v is not None else "" for v in vals) + f" | {avg} |")
    for p in PAPER_ROWS:
        row = paper["zero_shot"][p]
        cells = [f"{row[t]:.1f}" if t in row else "" for _, _, t in cols]
        L.append(f"| {p} (paper) | " + " | ".join(cells) + f" | {row['average']:.1f} |")
    L += ["", f"Paper rows: {src}, transcribed in melp_fast/eval/paper_results.json. Zero-shot (ours and the "
              f"reference's test_zeroshot.py alike): per-class AUROC of the raw cosine scores (no softmax), macro-averaged over "
              f"the classes with both label values on the test set."]
    return "\n".join(L) + "\n"


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


def nan_to_none(obj):
    """NaN (an undefined AUROC) as JSON null."""
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def save_json(obj, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(nan_to_none(obj), indent=2))


def markdown_report(results: dict, fractions=(0.01, 0.1, 1.0)) -> str:
    """Markdown: zero-shot macro AUROC per task; the linear-probe table (rows = models, columns = task x training
    fraction); per-class tables per task, with sizes and notes. AUROC x 100."""
    from .linear_probe import fraction_label

    tasks = list(results)
    models = list(dict.fromkeys(m for t in tasks for m in results[t]))
    fr = [fraction_label(f) for f in sorted(fractions)]
    L = ["## Zero-shot (macro AUROC x 100, 95% bootstrap interval)", "",
         "| model | " + " | ".join(title(t) for t in tasks) + " | mean |",
         "|---|" + "---:|" * (len(tasks) + 1)]
    for m in models:
        vals = [results[t][m]["zero_shot"] for t in tasks if m in results[t]]
        mean = np.nanmean([v["mean"] for v in vals]) if vals else float("nan")
        L.append(f"| {m} | " + " | ".join(fmt(results[t][m]["zero_shot"]["mean"],
                                                results[t][m]["zero_shot"].get("ci", {}).get("mean"))
                                            if m in results[t] else "" for t in tasks) + f" | {fmt(mean)} |")
    heads = sorted({results[t][m].get("scoring", "per-class") for t in tasks for m in results[t]})
    L += ["", f"## Linear probing (macro AUROC x 100 on test; one linear layer on frozen features; scoring "
              f"{', '.join(heads)})", "",
          "| model | " + " | ".join(f"{title(t)} {f}" for t in tasks for f in fr) + " |",
          "|---|" + "---:|" * (len(tasks) * len(fr))]
    for m in models:
        cells = []
        for t in tasks:
            for f in fr:
                e = results[t].get(m, {}).get("linear_probe", {}).get(f)
                cells.append(fmt(e["mean"]) if e else "")
        L.append(f"| {m} | " + " | ".join(cells) + " |")
    notes = []
    for t in tasks:
        L += ["", f"### {title(t)}: per class (AUROC x 100)", ""]
        first = results[t][models[0]] if models[0] in results[t] else next(iter(results[t].values()))
        L.append(f"{first['n_train']} training / {first.get('n_val', 0)} validation / {first['n_test']} test records "
                 f"({first['split']}; protocol {first.get('protocol', 'default')}).")
        L.append("")
        head = [f"{m} {k}" for m in models if m in results[t] for k in ["zero-shot", *fr]]
        L += ["| class | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
        for c in first["classes"]:
            cells = []
            for m in models:
                if m not in results[t]:
                    continue
                r = results[t][m]
                cells.append(fmt(r["zero_shot"]["per_class"][c], r["zero_shot"].get("ci", {}).get("per_class", {}).get(c)))
                cells += [fmt(r["linear_probe"][f]["per_class"][c]) for f in fr]
            L.append(f"| {c} | " + " | ".join(cells) + " |")
        for m in models:
            r = results[t].get(m)
            if not r:
                continue
            for f in fr:
                e = r["linear_probe"][f]
                if e.get("not_available"):
                    notes.append(f"{title(t)}, {m}, {f}: not available ({e['not_available']})")
                elif e.get("no_train_positive"):
                    notes.append(f"{title(t)}, {m}, {f} ({e['n_train']} records): no positive of "
                                 f"{', '.join(e['no_train_positive'])} in the training sample (trained and scored "
                                 f"all the same, as the reference does)")
                elif e.get("skipped"):
                    notes.append(f"{title(t)}, {m}, {f} ({e['n_train']} records): skipped {', '.join(e['skipped'])} "
                                 f"(one label value in the training subset)")
            if r.get("scoring") == "reference" and r["linear_probe"][fr[-1]].get("undefined"):
                notes.append(f"{title(t)}, {m}: the reference scoring counts "
                             f"{', '.join(r['linear_probe'][fr[-1]]['undefined'])} as AUROC 0 in the probe's mean "
                             f"(one label value in the test split; torchmetrics returns 0 there)")
            if r["zero_shot"]["undefined"]:
                notes.append(f"{title(t)}: no AUROC for {', '.join(r['zero_shot']['undefined'])} "
                             f"(one label value in the test split)")
            if r.get("missing"):
                notes.append(f"{title(t)}: {sum(r['missing'].values())} listed records not in the store "
                             f"({', '.join(f'{k} {v}' for k, v in r['missing'].items())})")
    if notes:
        L += ["", "### Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(L) + "\n"
