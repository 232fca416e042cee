"""Calibration of the embedded synthetic corpus against real recordings and published normal ranges.

    python benchmarks/calibration.py [--n 600] [--write]      (--write: into benchmarks/results/calibration.md)

Measures the same statistics, with the same code, on
- the corpus (records of the train split; the normal class, i.e. sinus rhythm without any finding, for the
  statistics that have a normal range, and each condition's class for its own signature),
- real recordings: the 12-lead DICOM resting ECG (pydicom's test file; its device's own measurements are listed
  too) and MIT-BIH record 100 (MLII ~ lead II and V5; 180 consecutive 10 s windows of the whole record in
  ../shared/data, or the 30 of the repository's 5 min excerpt, tests/data, where ../shared is absent),
and compares them with the published normal ranges cited in melp_fast/data/synthetic.py (``REFERENCE_RANGES``).

A corpus statistic passes when its 5th-95th percentile interval lies inside the reference interval: the published
normal range widened to take in every value measured on the real recordings.

Measurements are made on the average beat (R-aligned, raw mV signal), baseline = the PR segment just before QRS
onset; QRS onset / offset from the spatial velocity of the leads; T end and P onset by the tangent method.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from melp_fast.testing.common import add_output, output_path

ROOT = Path(__file__).resolve().parent.parent

FS = 500
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


# ------------------------------------------------------------------------------------------- measurements


def average_beat(x: np.ndarray, r_peaks, pre: float = 0.40, post: float = 0.60):
    """Median beat [leads, pre+post] around the R peaks that fit, and the R index in it."""
    a, b = int(pre * FS), int(post * FS)
    ok = [int(p) for p in r_peaks if p - a >= 0 and p + b <= x.shape[1]]
    if len(ok) < 2:
        raise ValueError("fewer than 2 complete beats")
    return np.median(np.stack([x[:, p - a:p + b] for p in ok]), 0), a


def _smooth(x: np.ndarray, n: int = 5) -> np.ndarray:
    k = np.ones(n) / n
    return np.stack([np.convolve(v, k, mode="same") for v in np.atleast_2d(x)])


def qrs_bounds(m: np.ndarray, r: int, frac: float = 0.04, hold: float = 0.012, frac_off: float = 0.07):
    """QRS onset and offset (sample indices in the average beat): walking out from the peak of the spatial
    velocity of the smoothed leads (inside R +- 60 ms), the first points where it stays below ``frac`` of that
    peak for ``hold`` seconds."""
    v = np.sqrt((np.diff(_smooth(m), axis=1) ** 2).sum(0))
    lo, hi = r - int(0.06 * FS), r + int(0.06 * FS)
    pk = lo + int(np.argmax(v[lo:hi]))
    h = max(int(hold * FS), 1)
    below = v < frac * v[pk]
    on = pk
    while on > r - int(0.10 * FS) and not below[on - h:on].all():
        on -= 1
    off = pk
    below = v < frac_off * v[pk]  # the T wave's up-stroke follows closely at fast rates
    while off < r + int(0.12 * FS) and not below[off:off + h].all():
        off += 1
    return on, off


def measure(x: np.ndarray, r_peaks, leads=LEADS) -> dict:
    """Statistics of one record (x: [leads, samples] mV at 500 Hz; r_peaks: sample indices)."""
    r_peaks = np.asarray(r_peaks, dtype=np.int64)
    out: dict = {}
    rr = np.diff(r_peaks) / FS
    out["hr"] = 60.0 / rr.mean()
    out["rr_cv"] = rr.std() / rr.mean()
    m, r = average_beat(x, r_peaks)
    on, off = qrs_bounds(m, r)
    out["qrs_ms"] = (off - on) / FS * 1000
    base = m[:, on - int(0.025 * FS):on - int(0.008 * FS)].mean(1)
    mb = m - base[:, None]
    q = mb[:, on:off]
    li = {name: i for i, name in enumerate(leads)}
    for name, i in li.items():
        out[f"R_{name}"] = float(max(q[i].max(), 0.0))
        out[f"S_{name}"] = float(max(-q[i].min(), 0.0))
        out[f"qrs_p2p_{name}"] = float(q[i].max() - q[i].min())
    # T wave: the extreme of the segment from QRS offset + 80 ms to R + 0.8 RR (capped at the window)
    t_lo = off + int(0.08 * FS)
    t_hi = min(r + int(min(0.8 * rr.mean(), 0.58) * FS), m.shape[1] - 1)
    tw = mb[:, t_lo:t_hi]
    big = int(np.argmax(np.abs(tw).max(1)))
    tp = t_lo + int(np.argmax(np.abs(tw[big])))
    for name, i in li.items():
        t_amp = float(mb[i, tp - 20:tp + 21][np.argmax(np.abs(mb[i, tp - 20:tp + 21]))])
        out[f"T_{name}"] = t_amp
        out[f"TR_{name}"] = abs(t_amp) / max(out[f"qrs_p2p_{name}"], 1e-6)
        out[f"ST60_{name}"] = float(mb[i, off + int(0.06 * FS)])
        out[f"STJ_{name}"] = float(mb[i, off])
    if len(leads) == 12:
        p2p = np.array([out[f"qrs_p2p_{n}"] for n in leads])
        out["limb_qrs_max"] = float(p2p[:6].max())
        out["prec_qrs_max"] = float(p2p[6:].max())
        out["sokolow"] = out["S_V1"] + max(out["R_V5"], out["R_V6"])
        stj = np.array([out[f"STJ_{n}"] for n in leads])
        out["stj_v2v3"] = float(stj[7:9].max())
        other = np.delete(stj, [3, 6, 7, 8])  # aVR and V1 (normally depressed) and V2-V3 (own limit) left out
        out["stj_other"] = float(other[np.argmax(np.abs(other))])
        out["stj_max"] = float(stj.max())
    # T end by the tangent method on the lead of the largest T, QT from QRS onset
    s = np.sign(mb[big, tp]) * mb[big]
    d = np.diff(_smooth(s[None], 7)[0])
    k = tp + int(np.argmin(d[tp:tp + int(0.12 * FS)]))
    slope = d[k]
    t_end = k + (s[k] / -slope if slope < 0 else 0.0)
    out["qt_ms"] = (t_end - on) / FS * 1000
    out["qtc_ms"] = out["qt_ms"] / np.sqrt(rr.mean())
    # frontal QRS axis from the net QRS areas of I and aVF
    if "I" in li and "aVF" in li:
        out["axis"] = float(np.degrees(np.arctan2(q[li["aVF"]].sum(), q[li["I"]].sum())))
    # P wave on lead II: peak in [onset - 300 ms, onset - 30 ms], onset by the tangent of the steepest up-stroke
    if "II" in li and out["hr"] < 100:
        p = mb[li["II"]]
        lo, hi = max(on - int(0.30 * FS), int(0.06 * FS)), on - int(0.03 * FS)
        if hi - lo < int(0.05 * FS):
            return out
        pk = lo + int(np.argmax(p[lo:hi]))
        out["P_II"] = float(p[pk])
        ps = _smooth(p[None], 5)[0]
        dp = np.diff(ps)
        j0 = max(pk - int(0.08 * FS), 0)
        if pk - j0 < 3:
            return out
        j = j0 + int(np.argmax(dp[j0:pk]))
        p_on = j - (ps[j] / dp[j] if dp[j] > 0 else 0.0)
        out["pr_ms"] = (on - p_on) / FS * 1000
    return out


def noise_stats(x: np.ndarray, r_peaks) -> dict:
    """Baseline wander (RMS below 0.7 Hz) and high-frequency noise (RMS above 25 Hz of the residual after the
    average beat is subtracted at every beat), median over the leads, in microvolts; mains share (50 / 60 Hz)."""
    from scipy import signal as sps

    x = np.asarray(x, dtype=np.float64)
    lp = sps.sosfiltfilt(sps.butter(2, 0.7, "lowpass", fs=FS, output="sos"), x - x.mean(1, keepdims=True), axis=1)
    m, r = average_beat(x, r_peaks)
    res = x.copy()
    rr = int(np.median(np.diff(r_peaks)))
    lo_k, hi_k = max(r - int(0.4 * rr), 0), min(r + int(0.6 * rr), m.shape[1])  # one beat: no overlap
    for p in np.asarray(r_peaks, dtype=np.int64):
        a, b = max(p - r + lo_k, 0), min(p - r + hi_k, x.shape[1])
        res[:, a:b] -= m[:, a - (p - r):b - (p - r)]
    hp = sps.sosfiltfilt(sps.butter(4, 25.0, "highpass", fs=FS, output="sos"), res, axis=1)
    f, pw = sps.welch(x, fs=FS, nperseg=1000, axis=1)
    mains = max(pw[:, (np.abs(f - hz) < 1.0)].sum(1).max() / max(pw.sum(1).max(), 1e-12) for hz in (50.0, 60.0))
    return {"wander_uv": float(np.median(np.sqrt((lp ** 2).mean(1)))) * 1000,
            "hf_noise_uv": float(np.median(np.sqrt((hp[:, 25:-25] ** 2).mean(1)))) * 1000,
            "mains_share": float(mains)}


# ------------------------------------------------------------------------------------------- sources


def real_dicom() -> tuple[dict, dict]:
    """(statistics, device measurements) of the DICOM 12-lead ECG (pydicom's test file)."""
    from melp_fast.testing.beat_cases import dicom_ecg
    from melp_fast.data import beats as beatlib
    from melp_fast.data.sources.single import read_record

    path = dicom_ecg()
    x, _ = read_record(path, raw=True)
    rp = beatlib.detect_r_peaks(x, FS)
    st = measure(x, rp)
    st.update(noise_stats(x, rp))
    device = {}
    try:
        import pydicom

        d = pydicom.dcmread(str(path))
        for it in d.WaveformAnnotationSequence:
            names = [c.CodeMeaning for c in getattr(it, "ConceptNameCodeSequence", [])]
            if names and getattr(it, "NumericValue", None) is not None:
                device[names[0]] = float(it.NumericValue)
    except Exception:  # noqa: BLE001  (device values are shown when readable)
        pass
    return st, device


def real_mitbih(n_windows: int = 180, record=None) -> list[dict]:
    """Statistics of consecutive 10 s windows of MIT-BIH record 100 (MLII as II, V5), resampled to 500 Hz,
    R peaks from the expert annotations. ``record``: the WFDB record (path without extension); default the whole
    record of ../shared/data where it is there, else the repository's 5 min excerpt (tests/data, 30 windows)."""
    import wfdb
    from scipy import signal as sps

    from melp_fast.testing.beat_cases import mitbih_record

    base = mitbih_record(whole=True) if record is None else record
    rec = wfdb.rdrecord(str(base))
    ann = wfdb.rdann(str(base), "atr")
    beat_codes = set("NLRBAaJSVrFejnE/fQ?")
    peaks = np.array([s for s, c in zip(ann.sample, ann.symbol) if c in beat_codes])
    sig = rec.p_signal.T  # [2, n] mV at 360 Hz
    fs0 = rec.fs
    out = []
    w0 = int(10 * fs0)
    for k in range(min(n_windows, sig.shape[1] // w0)):
        seg = sig[:, k * w0:(k + 1) * w0]
        x = sps.resample_poly(seg, 25, 18, axis=1)[:, :5000]
        rp = peaks[(peaks >= k * w0) & (peaks < (k + 1) * w0)] - k * w0
        rp = np.rint(rp * FS / fs0).astype(np.int64)
        # the annotations mark the fiducial, not always the sample of the peak: snap to the MLII maximum +- 30 ms
        rp = np.array([p - 15 + int(np.argmax(x[0, max(p - 15, 0):p + 16])) for p in rp if 15 <= p < 4985])
        try:
            st = measure(x, rp, leads=("II", "V5"))
            st.update(noise_stats(x, rp))
            out.append(st)
        except (ValueError, IndexError):
            continue
    return out


def corpus(n: int, seed: int = 0) -> list[tuple[dict, np.ndarray]]:
    from melp_fast.data import synthetic

    out = []
    for i in synthetic.split_indices("train", n):
        rec = synthetic.generate_record(i, seed)
        try:
            st = measure(rec.signal.astype(np.float64), rec.r_peaks)
            st.update(noise_stats(rec.signal.astype(np.float64), rec.r_peaks))
        except (ValueError, IndexError):
            continue
        out.append((st, rec.labels, rec.report))
    return out


# ------------------------------------------------------------------------------------------- table


def _pct(v, q):
    v = np.asarray([x for x in v if np.isfinite(x)])
    return np.percentile(v, q) if v.size else float("nan")


def rows(n: int = 600, seed: int = 0, q=(5, 95), mit_record=None):
    """(one row per statistic of REFERENCE_RANGES, DICOM device measurements). A row is ok when the corpus's
    q[0]-q[1] percentile interval lies inside the reference range. ``mit_record``: see real_mitbih."""
    from melp_fast.data.synthetic import CLASSES, REFERENCE_RANGES

    corp = corpus(n, seed)
    dic, device = real_dicom()
    mit = real_mitbih(record=mit_record)
    lab = np.stack([c[1] for c in corp]).astype(bool)
    ci = {c: i for i, c in enumerate(CLASSES)}
    normal = lab[:, ci["SR"]] & ~lab[:, 4:].any(1) & np.array(["axis deviation" not in c[2] for c in corp])
    sel = {"normal": normal, "SR": lab[:, ci["SR"]] & ~lab[:, ci["PVC"]], "SB": lab[:, ci["SB"]] & ~lab[:, ci["PVC"]],
           "STACH": lab[:, ci["STACH"]] & ~lab[:, ci["PVC"]], "all": np.ones(len(corp), bool),
           "sinus": ~lab[:, ci["AF"]] & ~lab[:, ci["PVC"]] & ~lab[:, ci["LBBB"]] & ~lab[:, ci["RBBB"]]}
    for c in CLASSES[3:]:
        sel[c] = lab[:, ci[c]]
    out = []
    for name, (group, lo, hi, unit, source) in REFERENCE_RANGES.items():
        key = name.split(":")[0]
        vals = [c[0].get(key, np.nan) for c, s in zip(corp, sel[group]) if s]
        p5, p50, p95 = _pct(vals, q[0]), _pct(vals, 50), _pct(vals, q[1])
        real = []
        normal_group = group in ("normal", "SR", "all", "sinus")  # the real recordings are normal sinus rhythms
        if key in dic and normal_group:
            real.append(dic[key])
        mit_vals = [m[key] for m in mit if key in m and np.isfinite(m[key])]
        mit_rng = (_pct(mit_vals, 5), _pct(mit_vals, 95)) if mit_vals else None
        if mit_rng and normal_group:
            real += list(mit_rng)
        r_lo = np.nanmin([lo] + real) if real or np.isfinite(lo) else -np.inf
        r_hi = np.nanmax([hi] + real) if real or np.isfinite(hi) else np.inf
        tol = 1000.0 / FS if unit == "ms" else 0.0  # interval statistics: one sample of measurement resolution
        ok = bool(np.isfinite(p5) and r_lo - tol <= p5 and p95 <= r_hi + tol)
        out.append({"stat": name, "group": group, "unit": unit, "p5": p5, "p50": p50, "p95": p95,
                    "dicom": dic.get(key, np.nan), "mit": mit_rng,
                    "published": (lo, hi), "source": source, "ok": ok, "n": len(vals),
                    "reference": (float(r_lo - tol), float(r_hi + tol)), "values": np.asarray(vals, np.float64)})
    return out, device


def _f(v, nd=2):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{nd}f}"


def table(res, device) -> str:
    lines = ["| statistic | corpus group (n) | corpus p5 / median / p95 | DICOM 12-lead | MIT-BIH 100 (p5 - p95 of 10 s windows) "
             "| published range | source | inside |", "|---|---|---|---|---|---|---|---|"]
    for r in res:
        nd = 1 if r["unit"] == "ms" else 0 if r["unit"] in ("bpm", "deg", "uV") else 2
        mit = f"{_f(r['mit'][0], nd)} - {_f(r['mit'][1], nd)}" if r["mit"] else "-"
        lo, hi = r["published"]
        pub = f"{_f(lo, nd) if np.isfinite(lo) else '-inf'} - {_f(hi, nd) if np.isfinite(hi) else 'inf'} {r['unit']}"
        lines.append(f"| {r['stat']} | {r['group']} ({r['n']}) | {_f(r['p5'], nd)} / {_f(r['p50'], nd)} / "
                     f"{_f(r['p95'], nd)} | {_f(r['dicom'], nd)} | {mit} | {pub} | {r['source']} | "
                     f"{'yes' if r['ok'] else 'NO'} |")
    if device:
        lines.append("")
        lines.append("DICOM device measurements: " + ", ".join(f"{k} {v:g}" for k, v in device.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=600, help="corpus records measured (train split)")
    p.add_argument("--seed", type=int, default=0)
    add_output(p)
    args = p.parse_args(argv)
    args.out = output_path(args, "calibration.md")
    from melp_fast.testing.common import machine

    res, device = rows(args.n, args.seed)
    text = (f"# Corpus calibration\n\n`python benchmarks/calibration.py --n {args.n}` ({machine()})\n\n"
            "Corpus: train split records 0..n-1, seed " f"{args.seed}. A statistic is inside when the corpus 5th-95th "
            "percentile interval lies within the published normal range widened to every value measured on the real "
            "recordings (intervals in ms: within one sample, 2 ms, the resolution of the measurement at 500 Hz). The real "
            "recordings are normal sinus rhythms: they widen the ranges of the normal groups only (their values are "
            "shown on the other rows for comparison). 'normal' = sinus rhythm 60-100 bpm without any finding or axis deviation (normal variants included); 'sinus' = no AF, PVC or bundle branch block.\n\n"
            + table(res, device) + "\n")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    bad = [r["stat"] for r in res if not r["ok"]]
    print("all inside" if not bad else f"outside: {', '.join(bad)}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
