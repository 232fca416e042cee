"""What a trained model says about real ECGs it never saw: the real 12-lead set, or one file and perturbed copies.

    python benchmarks/real_ecg.py [--model runs/tiny/model] [--write]                 # the real set
    python benchmarks/real_ecg.py [--model runs/tiny/model] --ecg FILE [--no-perturb] [--write]

Without --ecg: every record of the real set (tests/data/real/records.json: 13 real 12-lead ECGs from 4 sources,
melp_fast/eval/real_set.py), the model's beam report (width 4) grounded in the detected beats and checked: sinus named
on every sinus record, atrial fibrillation on every AF record, no infarction / ST elevation / block on a normal
record, no atrial fibrillation on a record without it, a stated rate within 5 bpm of the measured one; the raw
model text, its rate error and the rhythm flags beside it. --set-dir names the set's folder where this is no clone
of the repository (a missing set is one line and exit status 2). --write puts the table in
benchmarks/results/real_ecg_set.md (--label names the run in it).

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
    ap.add_argument("--model", default="runs/tiny/model", help="an exported model directory (the demo's by default)")
    ap.add_argument("--ecg", action="append", help="a normal sinus ECG file (.hea / .dcm / .xml) and perturbed "
                    "copies of it; repeatable ('example': pydicom's test ECG); default: the real set instead")
    ap.add_argument("--set-dir", default=None, metavar="DIR", help="the real set's folder (default: tests/data/real "
                    "of this repository)")
    ap.add_argument("--label", default="", help="a name for the model in the set's results file (e.g. 'seed 1')")
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
    model = load_model(args.model)
    model.eval()
    if not args.ecg:
        return score_real_set(model, args)
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


def score_real_set(model, args) -> int:
    from melp_fast.eval import real_set as realset

    rows = realset.score_set(model, args.set_dir, progress=lambda r: print(f"{r['id']}: {'ok' if r['ok'] else r['problems']} | "
                                                             f"{r['report']}", flush=True))
    text = realset.table(rows)
    print(text)
    if args.write:
        out = ROOT / "benchmarks" / "results" / "real_ecg_set.md"
        head = out.read_text() if out.is_file() else "# A trained model on the real 12-lead ECG set\n"
        label = f" ({args.label})" if args.label else ""
        out.write_text(head.rstrip("\n") + f"\n\n## `python benchmarks/real_ecg.py --model {args.model}`{label}\n\n"
                       + machine("cpu") + "\n\n" + text + "\n")
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
