"""What a trained model says about real ECGs it never saw: the real 12-lead set, or one file and perturbed copies.

    python benchmarks/real_ecg.py [--model runs/tiny/model ...] [--set-dir DIR] [--write]  # the real set
    python benchmarks/real_ecg.py [--model runs/tiny/model] --ecg FILE [--no-perturb] [--write]

Without --ecg: every record of the real set (tests/data/real/records.json: 13 real 12-lead ECGs from 4 sources,
melp_fast/eval/real_set.py), the model's beam report (width 4) grounded in the detected beats and checked: sinus named
on every sinus record, atrial fibrillation on every AF record, no infarction / ST elevation / block on a normal
record, no atrial fibrillation on a record without it, a stated rate within 5 bpm of the measured one; the raw
model text, its rate error and the rhythm flags beside it. --set-dir names the set's folder where this is no clone
of the repository (a missing set is one line and exit status 2). --model is repeatable (one per training seed):
a summary row per model (checks met, AF named on the AF records, PVC named where no beat is premature, the
synthetic zero-shot mean and lowest class from ``<run>/zero_shot.json`` when saved there) and the spread, then each
model's table. --write puts them in benchmarks/results/real_ecg_set.md (--label names each model).

With --ecg: for each ECG file ('example': pydicom's real 12-lead test ECG, a normal sinus recording) and, unless
--no-perturb, copies of it with white noise (SD 0.02-0.05 mV, two draws each), baseline wander (0.3 mV at 0.3 Hz),
50 Hz hum (0.05 mV) and a slower rate (the signal stretched in time x1.15 and x1.3), the model's beam-search report (width 4,
as the demo) is checked as a report on a normal ECG must read:

- it names a sinus rhythm ("sinus ...");
- it names no infarction, ST elevation, injury or block;
- where it states a rate, the rate is within 10 bpm of the rate from the detected beats;
- and, reported apart (not a criterion of the issue), whether it calls premature ventricular complexes.

The gain of a record is not varied: the spec's min-max normalisation removes it. --write puts the table in
benchmarks/results/real_ecg.md. Every file must be a normal sinus ECG for the checks to mean anything.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from melp_fast.testing.common import machine  # noqa: E402
from melp_fast.inference import generate  # noqa: E402
from melp_fast.data.sources.single import read_record  # noqa: E402
from melp_fast.inference.export import load_model  # noqa: E402

FORBIDDEN = ("infarct", "st elevation", "injury", "block")
RATE = re.compile(r"\b(?:rate|heart rate) (\d+)")


def check(report: str, rate_from_beats: float) -> dict:
    """The checks of a report on a normal sinus ECG: {"ok", "problems", "pvc"}."""
    problems = []
    if "sinus" not in report:
        problems.append("no sinus rhythm")
    problems += [f"says '{w}'" for w in FORBIDDEN if w in report]
    for stated in RATE.findall(report):
        if abs(int(stated) - rate_from_beats) > 10:
            problems.append(f"rate {stated} vs {rate_from_beats:.0f} from beats")
    pvc = "pvc" in report or "premature" in report
    return {"ok": not problems, "problems": problems, "pvc": pvc}


def stretch(x: np.ndarray, s: float) -> np.ndarray:
    """The signal slowed by s (> 1) in time: a lower rate and proportionally longer intervals; same length."""
    n = x.shape[1]
    src = np.linspace(0.0, n - 1, int(round(n * s)))[:n]
    return np.stack([np.interp(src, np.arange(n), lead) for lead in x])


def variants(raw: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(raw.shape[1]) / generate.FS
    out = {"as recorded": raw}
    for sd in (0.02, 0.03, 0.04, 0.05):
        for k in (1, 2):
            out[f"white noise {sd} mV (draw {k})"] = raw + rng.normal(0.0, sd, raw.shape)
    out["wander 0.3 mV, 0.3 Hz"] = raw + 0.3 * np.sin(2 * np.pi * 0.3 * t)
    out["50 Hz hum 0.05 mV"] = raw + 0.05 * np.sin(2 * np.pi * 50.0 * t)
    out["slower (x1.15)"] = stretch(raw, 1.15)
    out["slower (x1.3)"] = stretch(raw, 1.3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="an exported model directory (the demo's by default); "
                    "repeatable for the real set (e.g. one per training seed: a summary row each, and the spread)")
    ap.add_argument("--ecg", action="append", help="a normal sinus ECG file (.hea / .dcm / .xml) and perturbed "
                    "copies of it; repeatable ('example': pydicom's test ECG); default: the real set instead")
    ap.add_argument("--set-dir", default=None, metavar="DIR", help="the real set's folder (default: tests/data/real "
                    "of this repository)")
    ap.add_argument("--label", action="append", help="a name for each --model in the set's results (e.g. 'seed 1'; "
                    "default: the run folder's name)")
    ap.add_argument("--no-perturb", action="store_true", help="only the files as recorded")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/real_ecg.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not args.ecg:
        from melp_fast.eval import real_set as realset

        try:  # before the model: a missing set is one line, not a traceback after loading
            realset.load_set(args.set_dir)
        except FileNotFoundError as e:
            print(f"real_ecg.py: {e}", file=sys.stderr)
            return 2
    args.model = args.model or ["runs/tiny/model"]
    if not args.ecg:
        return score_real_set(args)
    if len(args.model) > 1:
        ap.error("--ecg takes one --model")
    args.model = args.model[0]
    model = load_model(args.model)
    model.eval()
    files = [str(generate.example_ecg()) if f == generate.EXAMPLE else f for f in args.ecg]
    rows, n_ok, n_clean = [], 0, 0
    for f in files:
        raw = np.asarray(read_record(f, raw=True, max_beats=model.cfg.max_beats)[0], np.float64)
        cases = {"as recorded": raw} if args.no_perturb else variants(raw)
        for name, x in cases.items():
            batch = generate.ecg_batch(x, model)
            report = generate.generate_report(model, batch, "beam", beam_width=4)
            rate = generate.rate_bpm(batch["r_peaks"])
            c = check(report, rate)
            n_ok += c["ok"]
            n_clean += c["ok"] and not c["pvc"]
            verdict = "ok" if c["ok"] else "; ".join(c["problems"])
            rows.append(f"| {Path(f).name} | {name} | {rate:.0f} | {verdict} | {'yes' if c['pvc'] else 'no'} | "
                        f"{report} |")
            print(rows[-1], flush=True)
    total = len(rows)
    lines = [f"`python benchmarks/real_ecg.py --model {args.model}`" + (" --no-perturb" if args.no_perturb else ""),
             "", machine("cpu"), "",
             "| ECG | variant | bpm (beats) | normal-ECG checks | PVC call | beam report |", "|---|---|---:|---|---|---|",
             *rows, "",
             f"Checks met: {n_ok}/{total}; met and no PVC call: {n_clean}/{total}."]
    print(lines[-1])
    if args.write:
        out = ROOT / "benchmarks" / "results" / "real_ecg.md"
        out.write_text("# A trained model on real normal ECGs and perturbed copies\n\n" + "\n".join(lines) + "\n")
        print(f"written: {out}")
    return 0


def zero_shot_of(model_dir: str) -> dict | None:
    """The synthetic zero-shot result saved beside a model (``<run>/zero_shot.json``: the demo's, or
    ``melp-fast zero-shot --out``), or None."""
    import json

    f = Path(model_dir).parent / "zero_shot.json"
    if not f.is_file():
        return None
    d = json.loads(f.read_text())
    d = d.get("trained", d)
    return d if "per_class" in d and "mean" in d else None


def set_summary(rows: list[dict]) -> dict:
    """What one model's rows say: checks met, AF named on the AF records, PVC named where no beat is premature."""
    af = [r for r in rows if "atrial fibrillation" in r.get("expect", [])]
    return {"ok": sum(r["ok"] for r in rows), "n": len(rows),
            "af": sum("atrial fibrillation" in r["report"].lower() for r in af), "n_af": len(af),
            "pvc_no_premature": sum(any(f.startswith("premature complexes stated") for f in r["flags"]) for r in rows),
            "far_rate": sum(r["raw_rate_error"] is not None and r["raw_rate_error"] > 5 for r in rows),
            "flagged": sum(bool(r["flags"]) for r in rows)}


def summary_table(labels: list[str], sums: list[dict], zs: list[dict | None]) -> str:
    lines = ["| model | checks met | AF named on AF records | PVC named, no premature beat | raw rate > 5 bpm off | "
             "rhythm flags | synthetic zero-shot mean | lowest class |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for lab, m, z in zip(labels, sums, zs):
        zmean = f"{z['mean']:.3f}" if z else "-"
        zmin = "-"
        if z:
            c, v = min(((c, v) for c, v in z["per_class"].items() if v == v), key=lambda cv: cv[1])
            zmin = f"{v:.3f} ({c})"
        lines.append(f"| {lab} | {m['ok']}/{m['n']} ({100 * m['ok'] / max(m['n'], 1):.0f} %) | {m['af']}/{m['n_af']} | "
                     f"{m['pvc_no_premature']} | {m['far_rate']} | {m['flagged']} | {zmean} | {zmin} |")
    ok = [m["ok"] for m in sums]
    if len(ok) > 1:
        met = sum(m["ok"] >= 0.8 * m["n"] for m in sums)
        lines += ["", f"Checks met over {len(ok)} models: {min(ok)}-{max(ok)} of {sums[0]['n']} (mean "
                      f"{np.mean(ok):.1f}, spread {max(ok) - min(ok)}); at least 80 % on {met} of {len(ok)}."]
    return "\n".join(lines)


def score_real_set(args) -> int:
    from melp_fast.eval import real_set as realset

    labels = list(args.label or [])
    if len(labels) > len(args.model):
        raise SystemExit("real_ecg.py: more --label than --model")
    labels += [Path(m).resolve().parent.name for m in args.model[len(labels):]]
    expect = {r["id"]: r.get("expect", []) for r in realset.load_set(args.set_dir)}
    tables, sums, zs = [], [], []
    for lab, m in zip(labels, args.model):
        print(f"== {lab}: {m}", flush=True)
        model = load_model(m)
        model.eval()
        rows = realset.score_set(model, args.set_dir, progress=lambda r: print(
            f"{r['id']}: {'ok' if r['ok'] else r['problems']} | {r['report']}", flush=True))
        for r in rows:
            r["expect"] = expect[r["id"]]
        tables.append(f"### {lab} (`{m}`)\n\n" + realset.table(rows))
        sums.append(set_summary(rows))
        zs.append(zero_shot_of(m))
    head = summary_table(labels, sums, zs)
    print(head)
    if args.write:
        out = ROOT / "benchmarks" / "results" / "real_ecg_set.md"
        cmd = "python benchmarks/real_ecg.py " + " ".join(f"--model {m}" for m in args.model) \
            + "".join(f" --label '{lab}'" for lab in args.label or []) + " --write"
        out.write_text("# Trained models on the real 12-lead ECG set\n\n" + f"`{cmd}`\n\n" + machine("cpu") + "\n\n"
                       + head + "\n\n" + "\n\n".join(tables) + "\n")
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
