"""The rhythm features of the real 12-lead set beside the synthetic corpus's: where the corpus is unlike real ECGs.

    python benchmarks/rhythm_gap.py [--n 400] [--seed 0] [--write]

Every record (the real set's 13, and ``--n`` held-out corpus records) is measured the same way, from its signal
with the project's beat detector (``melp_fast.data.beats``):

- rate and RR variation: ``grounding.measure_rr`` (CV of the RR intervals outside premature beats; of all of them);
- f-wave spectral concentration: lead V1 band-passed 3-30 Hz, the median beat (R-0.25 s to R+0.5 s) subtracted at
  every beat and +-80 ms around each R blanked; the share of the 3-12 Hz power within +-0.75 Hz of its peak
  (a near-pure tone: near 1; an irregular baseline: lower);
- QRS beat-to-beat variation: the 4-40 Hz band-passed QRS (R-80 ms to R+120 ms) of every non-premature beat against
  the median one, RMS difference over RMS, median over beats, in the 6 leads of the largest QRS.

Real records are listed one by one; corpus records are summarised per rhythm (5th, 50th, 95th percentiles; fast
AF: over 100 bpm). The real set is a test set: these numbers say where the corpus differs, never what to fit.
--write puts the tables in benchmarks/results/rhythm_gap.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.signal import butter, sosfiltfilt, welch

from melp_fast.data import synthetic as syn
from melp_fast.data.beats import detect_r_peaks
from melp_fast.data.sources.single import read_record
from melp_fast.eval.real_set import load_set
from melp_fast.inference.grounding import measure_rr
from melp_fast.testing.common import machine

ROOT = Path(__file__).resolve().parents[1]
FS = syn.FS
_F_WAVE = butter(2, [3, 30], "bandpass", fs=FS, output="sos")
_QRS = butter(2, [4, 40], "bandpass", fs=FS, output="sos")


def f_wave_concentration(x: np.ndarray, rp: np.ndarray, lead: int = 6) -> float:
    y = sosfiltfilt(_F_WAVE, x[lead])
    pre, post = int(0.25 * FS), int(0.5 * FS)
    ok = [r for r in rp if r - pre >= 0 and r + post <= y.size]
    if len(ok) < 3:
        return float("nan")
    tmpl = np.median(np.stack([y[r - pre:r + post] for r in ok]), 0)
    res = y.copy()
    for r in ok:
        res[r - pre:r + post] -= tmpl
    for r in rp:
        res[max(r - 40, 0):r + 40] = 0.0
    f, p = welch(res, FS, nperseg=1024)
    band = (f >= 3) & (f <= 12)
    peak = f[band][np.argmax(p[band])]
    return float(p[(f >= peak - 0.75) & (f <= peak + 0.75)].sum() / p[band].sum())


def qrs_variation(x: np.ndarray, rp: np.ndarray) -> float:
    y = sosfiltfilt(_QRS, x, axis=1)
    rr = np.diff(rp)
    if len(rr) < 3:
        return float("nan")
    keep = [rp[k] for k in range(1, len(rp)) if rr[k - 1] > 0.9 * np.median(rr)]
    keep = [r for r in keep if r - 40 >= 0 and r + 60 <= x.shape[1]]
    if len(keep) < 4:
        return float("nan")
    seg = np.stack([y[:, r - 40:r + 60] for r in keep])
    tmpl = np.median(seg, 0)
    lead = np.argsort((tmpl ** 2).mean(1))[-6:]
    err = np.sqrt(((seg - tmpl)[:, lead] ** 2).mean(2)) / np.sqrt((tmpl[lead] ** 2).mean(1) + 1e-12)
    return float(np.median(err))


def features(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64)
    rp = detect_r_peaks(x, FS)
    rr = measure_rr(rp, FS)
    return {"rate": rr.rate_bpm, "cv": rr.cv, "cv_all": rr.cv_all, "premature": rr.premature,
            "f_conc": f_wave_concentration(x, rp), "qrs_var": qrs_variation(x, rp)}


COLS = ("rate", "cv", "cv_all", "f_conc", "qrs_var")
HEAD = "| rate (bpm) | RR CV | RR CV (all) | f-wave concentration | QRS variation |"


def real_rows() -> list[str]:
    lines = ["| record | statement " + HEAD, "|---|---|---:|---:|---:|---:|---:|"]
    for rec in load_set():
        x, _ = read_record(rec["path"], raw=True)
        f = features(x)
        lines.append(f"| {rec['id']} | {rec['statement'].split(' (')[0]} | {f['rate']:.0f} | {f['cv']:.3f} | "
                     f"{f['cv_all']:.3f} | {f['f_conc']:.2f} | {f['qrs_var']:.3f} |")
    return lines


def corpus_rows(n: int, seed: int) -> list[str]:
    groups: dict[str, list[dict]] = {}
    for i in syn.split_indices("test", n):
        r = syn.generate_record(i, seed)
        lab = {c for c, v in zip(syn.CLASSES, r.labels) if v}
        if "PVC" in lab:
            continue
        rhythm = next(c for c in syn.CLASSES[:4] if c in lab)
        f = features(r.signal)
        groups.setdefault(rhythm, []).append(f)
        if rhythm == "AF" and f["rate"] > 100:
            groups.setdefault("AF over 100 bpm", []).append(f)
    lines = ["| corpus rhythm (no PVC) | records " + HEAD, "|---|---:|---|---|---|---|---|"]
    for g in ("SR", "SB", "STACH", "AF", "AF over 100 bpm"):
        rows = groups.get(g, [])
        cells = []
        for c in COLS:
            v = np.array([r[c] for r in rows], dtype=np.float64)
            v = v[np.isfinite(v)]
            fmt = "{:.0f}" if c == "rate" else "{:.3f}" if c != "f_conc" else "{:.2f}"
            cells.append("-" if not v.size else " / ".join(fmt.format(q) for q in np.percentile(v, [5, 50, 95])))
        lines.append(f"| {g} | {len(rows)} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400, help="held-out corpus records (test split)")
    ap.add_argument("--seed", type=int, default=0, help="corpus seed")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/rhythm_gap.md")
    args = ap.parse_args(argv)
    text = "\n".join([f"`python benchmarks/rhythm_gap.py --n {args.n} --seed {args.seed}`", "",
                      machine("cpu") + f"; corpus {syn.CORPUS_VERSION}", "", *real_rows(), "",
                      "Corpus: 5th / 50th / 95th percentiles.", "", *corpus_rows(args.n, args.seed)])
    print(text)
    if args.write:
        out = ROOT / "benchmarks" / "results" / "rhythm_gap.md"
        out.write_text("# Rhythm features: the real 12-lead set beside the synthetic corpus\n\n" + text + "\n")
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
