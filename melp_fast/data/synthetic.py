"""The embedded default corpus: deterministic synthetic 12-lead ECGs with machine-style reports.

Each record is a 10 s, 500 Hz, 12-lead ECG in millivolts (PTB-XL lead order) paired with a lower-case report in
the style of an ECG cart's statements ("sinus bradycardia. left bundle branch block. abnormal ecg.").

How a signal is made
--------------------
The heart is a 3-D cardiac dipole (a vectorcardiogram in Frank X = left, Y = foot, Z = back coordinates). The P
wave, the QRS complex and the ST-T segment of each beat type are sums of Gaussian bumps in 3-D (in the manner of
McSharry's ECGSYN), built once per record as short templates around the R peak and added at every beat time. The
dipole is projected onto I, II and V1..V6 with Dower's inverse transform; III, aVR, aVL and aVF are derived
from I and II exactly (as an ECG cart does), so Einthoven's and Goldberger's relations hold to rounding.

Rhythm (exactly one): SR 60-100 bpm, SB 40-59, STACH 101-150 (all with respiratory sinus arrhythmia and small
jitter), AF (60-160 bpm, most over 100; irregularly irregular RR, no P waves, fine to coarse, irregular 4-9 Hz
fibrillatory waves). Every beat's QRS-T axis and amplitude swing a little with respiration. Add-ons, independent with
some exclusivity: IAVB (PR 220-320 ms; never with AF), LBBB / RBBB (never both), PVC (1-4 early wide beats,
no P, compensatory pause, discordant T), STE (anterior, inferior or lateral ST elevation with reciprocal
depression and R-wave loss in the territory; never with LBBB), LVOLT (QRS amplitude below 0.5 mV in every limb
lead and 1 mV in every precordial lead). Per record: axis, amplitudes, durations, Gaussian noise, baseline
wander, sometimes mains hum.

Calibration: amplitudes, T/R ratios, QRS / PR / QT, axis, rates, wander and noise are drawn inside published adult
normal ranges (cited below at ``REFERENCE_RANGES``) and checked against the real recordings in ../shared/data by
benchmarks/calibration.py (table: benchmarks/results/calibration.md). ST elevation lives where it survives the
spec's 4 Hz high-pass: a J-point take-off from the terminal QRS into an ST plateau, with reciprocal depression and
often Q waves, not in taller T waves. Normal variants carry no label of their own and so belong to the normal class:
tall precordial T waves (0.8-1.3 mV in V2-V4), early repolarisation (concave J elevation up to 0.2 mV in V2-V3,
J notch), the healthy J elevation of V2-V3, and marked respiratory sinus arrhythmia.

Reports: a rhythm statement, the findings in random order (territory, wording, sometimes a rate or PR), a summary.
A report with a diagnostic finding leaves out its rhythm a quarter of the time, and a third of the ST-elevation
statements name no territory, so that a one-finding zero-shot prompt ("st elevation ...") is pulled toward that
finding in every rhythm and territory rather than toward the most common rhythm.

Everything is drawn from ``np.random.default_rng([seed, index])``: a record depends on (index, seed) only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "FS",
    "N_SAMPLES",
    "LEADS",
    "CLASSES",
    "CLASS_NAMES",
    "PROMPTS",
    "SyntheticRecord",
    "generate_record",
    "split_indices",
    "generate_split",
]

from .constants import FS, LEADS, N_SAMPLES

# Bumped whenever the generator's output changes. Stores are keyed by corpus_id() (this version plus a hash of this
# file), so stores of an older or edited corpus are rebuilt, never reused.
# 2: calibrated against published normal ranges and real recordings; ST elevation as an ST-T shape change.
# 3: ST elevation 0.3-0.8 mV (was 0.25-0.6) with loss of R-wave amplitude in the injured territory and a smaller
#    hyperacute T; healthy records: precordial T up to 1 mV (was 0.8) and J points up to 0.07 mV outside V2-V3
#    (was 0.05), nearer the real recordings' values; baseline wander at least 0.065 mV (was 0.06); in a low-voltage
#    record ST elevation 0.12-0.2 mV (was 0.15-0.25), so its measured limb QRS stays under 0.5 mV.
# 4: a report with a diagnostic finding leaves out its rhythm statement 25 % of the time, and one ST-elevation
#    statement in three names no territory (signals unchanged; reports only).
# 5: atrial fibrillation as resting ECGs show it: 60 % with a rapid ventricular response (100-160 bpm, the rest
#    60-100), RR variation 10-32 % (was 16-30 %, at 70-150 bpm), fibrillatory waves fine to coarse (0.02-0.12 mV,
#    was 0.04-0.09) and irregular (band-limited noise mixed with the wandering oscillation, not a near-pure tone);
#    every beat's QRS-T axis and amplitude swing with respiration (axis 1-5 deg, amplitude 3-10 %; was 5 % amplitude).
CORPUS_VERSION = 5


def corpus_id() -> str:
    """The corpus version plus a hash of this module's source: a store built by an edited generator whose version
    was not bumped is rebuilt too, never reused."""
    import hashlib

    return f"{CORPUS_VERSION}-{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]}"

CLASSES: tuple[str, ...] = ("SR", "SB", "STACH", "AF", "IAVB", "LBBB", "RBBB", "PVC", "STE", "LVOLT")

CLASS_NAMES: dict[str, str] = {
    "SR": "sinus rhythm",
    "SB": "sinus bradycardia",
    "STACH": "sinus tachycardia",
    "AF": "atrial fibrillation",
    "IAVB": "first degree av block",
    "LBBB": "left bundle branch block",
    "RBBB": "right bundle branch block",
    "PVC": "premature ventricular complexes",
    "STE": "st elevation",
    "LVOLT": "low qrs voltages",
}


def _shipped_prompts() -> dict[str, str]:
    """The zero-shot prompts of the corpus: the shipped, user-editable melp_fast/eval/prompts/synthetic.json."""
    shipped = Path(__file__).resolve().parent.parent / "eval" / "prompts" / "synthetic.json"
    d = json.loads(shipped.read_text(encoding="utf-8"))
    return {k: v for k, v in d.items() if not k.startswith("_")}


PROMPTS: dict[str, str] = _shipped_prompts()

_SPLIT_OFFSETS = {"train": 0, "val": 20_000_000, "test": 10_000_000}
_SPLIT_ALIASES = {"valid": "val", "validation": "val", "dev": "val"}
_SPLIT_SPAN = 10_000_000

# Dower's inverse transform (rows I, II, V1..V6; columns Frank X, Y, Z), Edenbrandt & Pahlm 1988.
_DOWER = np.array(
    [
        [0.632, -0.235, 0.059],
        [0.235, 1.066, -0.132],
        [-0.515, 0.157, -0.917],
        [0.044, 0.164, -1.387],
        [0.882, 0.098, -1.277],
        [1.213, 0.127, -0.601],
        [1.125, 0.127, -0.086],
        [0.831, 0.076, 0.230],
    ]
)
# 12 leads from the 8 independent ones (I, II, V1..V6).
_DERIVE = np.zeros((12, 8))
_DERIVE[0, 0] = 1.0
_DERIVE[1, 1] = 1.0
_DERIVE[2][[0, 1]] = (-1.0, 1.0)  # III = II - I
_DERIVE[3][[0, 1]] = (-0.5, -0.5)  # aVR = -(I + II) / 2
_DERIVE[4][[0, 1]] = (1.0, -0.5)  # aVL = I - II / 2
_DERIVE[5][[0, 1]] = (-0.5, 1.0)  # aVF = II - I / 2
_DERIVE[6:, 2:] = np.eye(6)
_LEAD12 = _DERIVE @ _DOWER  # [12, 3]: dipole -> 12 leads
_LIMB = slice(0, 6)
_PREC = slice(6, 12)

# ----------------------------------------------------------------------------------------------------------
# calibration: published adult normal ranges (and the real recordings in ../shared/data, see
# benchmarks/calibration.py and benchmarks/results/calibration.md)
#
#   Mason JW, Hancock EW, Gettes LS. AHA/ACCF/HRS recommendations for the standardization and interpretation of
#     the ECG, Part II: electrocardiography diagnostic statement list. JACC 2007;49:1128-35  [sinus rates,
#     low voltage: QRS < 0.5 mV in every limb lead / < 1.0 mV in every precordial lead]
#   Surawicz B et al. Part III: intraventricular conduction disturbances. JACC 2009;53:976-81  [QRS < 110 ms
#     normal, >= 120 ms complete bundle branch block; PR 120-200 ms; frontal axis -30..+90 deg]
#   Rautaharju PM et al. Part IV: the ST segment, T and U waves, and the QT interval. JACC 2009;53:982-91
#     [QTc prolonged >= 450 ms (men) / 460 ms (women), short <= 390 ms... 350 ms lower normal used here]
#   Hancock EW et al. Part V: chamber hypertrophy. JACC 2009;53:992-1002  [P in II < 0.25 mV; LVH voltage:
#     R aVL > 1.1 mV, Sokolow-Lyon SV1 + RV5/6 > 3.5 mV; Romhilt-Estes: R or S in a limb lead >= 2.0 mV]
#   Thygesen K et al. Fourth universal definition of myocardial infarction. Circulation 2018;138:e618-51
#     [ST elevation at J: >= 0.1 mV in two contiguous leads, V2-V3 >= 0.2 mV (men >= 40 y), 0.25 (men < 40),
#     0.15 (women): below these is normal J-point elevation]
#   Prineas RJ, Crow RS, Zhang ZM. The Minnesota Code Manual of Electrocardiographic Findings, 2nd ed. 2010
#     [code 5-4: T / R < 1/20 with R >= 1 mV is a flat T: normal T / R >= 0.05]
#   Nunan D, Sandercock GR, Brodie DA. A quantitative systematic review of normal values for short-term heart
#     rate variability in healthy adults. Pacing Clin Electrophysiol 2010;33:1407-17  [SDNN 32-93 ms]
#   Goldberger AL. Clinical Electrocardiography: A Simplified Approach, 9th ed. 2017  [T up to 0.5 mV in limb
#     leads, up to 1.0 mV (young men 1.5 mV) in precordial leads; respiratory sinus arrhythmia]
_QRS_S = (0.058, 0.078)  # nominal QRS of the dipole model; measured onset-offset 75-105 ms (normal < 110)
_QTC_S = (0.385, 0.425)  # Bazett QTc of the model; measured 360-450 ms (normal 350-450/460)
_LIMB_QRS_MV = (0.6, 1.7)  # largest limb-lead QRS, peak to peak (>= 0.5 normal, < 2.0 Romhilt-Estes)
_PREC_QRS_MV = (1.2, 2.1)  # largest precordial QRS, peak to peak (>= 1.0 normal; S V1/V2, R V5/V6 < 3.0 mV)
_T_LIMB_MV = (0.1, 0.5)  # T in the limb lead that shows it best (< 0.5 mV)
_P_EARLY_REPOL = 0.25  # early repolarisation pattern, 5-13 % of adults, more in young men: over-represented
_P_TALL_T = 0.25  # tall precordial T waves (0.8-1.3 mV in V2-V4), common in young men
_P_SINUS_ARRHYTHMIA = 0.2  # marked respiratory sinus arrhythmia (RR modulation 5-9 %)
# A report with a diagnostic finding leaves out its rhythm statement this often (as an over-read that states only
# what it adds: "anterior st elevation, consider acute infarct. abnormal ecg."), whatever the rhythm. Without such
# reports every training text names a rhythm, and a one-finding zero-shot prompt lands wherever the text encoder
# puts "no rhythm": near sinus rhythm, so that a sinus-rhythm record without the finding outscores an atrial-
# fibrillation record with it (seen as STE zero-shot 0.66 where a probe on the same features gave 0.89).
_P_NO_RHYTHM = 0.25
_P_STE_NO_TERRITORY = 1 / 3  # an ST-elevation statement names no territory this often
_NOISE_MV = (0.0075, 0.022)  # white noise SD (the real recordings: 9-28 uV above 25 Hz)
# Atrial fibrillation (Goldberger 2017; Mason 2007): the ventricular response of untreated AF is typically 100-160
# bpm ("rapid"), slower on rate control; the RR intervals are irregularly irregular (coefficient of variation
# 10-35 % at rest, the lower values at fast rates); fibrillatory waves 350-600 / min (4-10 Hz), "fine" (< 0.1 mV,
# often hard to see) to "coarse" (>= 0.1 mV). With the f-waves always clearly visible the corpus lets a model read
# AF from them alone, and fast AF with fine waves from real recordings then looks like sinus tachycardia.
_P_AF_RAPID = 0.6
_AF_RATE_RAPID = (100.0, 160.0)
_AF_RATE_CONTROLLED = (60.0, 100.0)
_AF_RR_CV = (0.10, 0.32)
_AF_F_MV = (0.02, 0.12)  # f-wave peak amplitude in the lead that shows it best, drawn log-uniform
# respiration turns the heart's electrical axis and changes the QRS amplitude beat to beat (the basis of
# ECG-derived respiration): a few degrees and some per cent
_RESP_AXIS_DEG = (1.0, 5.0)
_RESP_AMP = (0.03, 0.10)

REFERENCE_RANGES: dict[str, tuple[str, float, float, str, str]] = {
    # statistic (benchmarks/calibration.py): (corpus group, low, high, unit, source); nan = no published bound
    "hr:SR": ("SR", 60.0, 100.0, "bpm", "sinus rhythm 60-100 (Mason 2007)"),
    "hr:SB": ("SB", 30.0, 60.0, "bpm", "sinus bradycardia < 60 (Mason 2007)"),
    "hr:STACH": ("STACH", 100.0, 180.0, "bpm", "sinus tachycardia > 100 (Mason 2007)"),
    "rr_cv": ("sinus", 0.0, 0.10, "", "SDNN / RR <= 93 / 926 ms (Nunan 2010, short-term)"),
    "qrs_ms": ("normal", 60.0, 110.0, "ms", "QRS < 110 ms (Surawicz 2009)"),
    "qrs_ms:LBBB": ("LBBB", 120.0, 220.0, "ms", "complete LBBB >= 120 ms (Surawicz 2009)"),
    "qrs_ms:RBBB": ("RBBB", 120.0, 220.0, "ms", "complete RBBB >= 120 ms (Surawicz 2009)"),
    "pr_ms": ("normal", 120.0, 200.0, "ms", "PR 120-200 ms (Surawicz 2009)"),
    "pr_ms:IAVB": ("IAVB", 200.0, 400.0, "ms", "first degree AV block PR > 200 ms (Surawicz 2009)"),
    "qtc_ms": ("normal", 350.0, 460.0, "ms", "QTc 350-450/460 ms (Rautaharju 2009)"),
    "axis": ("normal", -30.0, 90.0, "deg", "frontal QRS axis -30..+90 (Surawicz 2009)"),
    "P_II": ("normal", 0.05, 0.25, "mV", "P in II < 0.25 mV (Hancock 2009)"),
    "limb_qrs_max": ("normal", 0.5, 2.0, "mV", "limb QRS >= 0.5 (Mason 2007), < 2.0 (Romhilt-Estes)"),
    "prec_qrs_max": ("normal", 1.0, 3.5, "mV", "precordial QRS >= 1.0 (Mason 2007); Sokolow-Lyon 3.5"),
    "R_aVL": ("normal", 0.0, 1.1, "mV", "R aVL < 1.1 mV (Hancock 2009)"),
    "sokolow": ("normal", 0.5, 3.5, "mV", "SV1 + RV5/6 < 3.5 mV (Hancock 2009)"),
    "limb_qrs_max:LVOLT": ("LVOLT", 0.0, 0.5, "mV", "low voltage < 0.5 mV in limb leads (Mason 2007)"),
    "prec_qrs_max:LVOLT": ("LVOLT", 0.0, 1.0, "mV", "low voltage < 1.0 mV in precordial leads (Mason 2007)"),
    "T_II": ("normal", 0.0, 0.5, "mV", "T upright, < 0.5 mV in limb leads (Goldberger 2017)"),
    "T_V3": ("normal", 0.0, 1.5, "mV", "T < 1.0 mV (young men 1.5) in V1-V6 (Goldberger 2017)"),
    "T_V5": ("normal", 0.0, 1.0, "mV", "T upright, < 1.0 mV in V5 (Goldberger 2017)"),
    "TR_II": ("normal", 0.05, float("nan"), "", "T / R >= 1/20 (Minnesota 5-4); high: real"),
    "TR_V5": ("normal", 0.05, float("nan"), "", "T / R >= 1/20 (Minnesota 5-4); high: real"),
    "stj_v2v3": ("normal", -0.05, 0.2, "mV", "J elevation V2-V3 < 0.2 mV (Thygesen 2018)"),
    "stj_other": ("normal", -0.05, 0.1, "mV", "J elevation < 0.1 mV, other leads (Thygesen 2018)"),
    "stj_max:STE": ("STE", 0.1, 1.0, "mV", "ST elevation >= 0.1-0.25 mV at J (Thygesen 2018)"),
    "wander_uv": ("sinus", float("nan"), float("nan"), "uV", "real recordings only"),
    "hf_noise_uv": ("sinus", float("nan"), float("nan"), "uV", "real recordings only"),
}

_PRE = int(0.20 * FS)  # template samples before the R peak
_POST = int(0.75 * FS)  # template samples after it
_T = (np.arange(-_PRE, _POST) / FS).astype(np.float64)  # template time axis, s
_P_HALF = int(0.09 * FS)
_TP = np.arange(-_P_HALF, _P_HALF + 1) / FS
_PAD = int(1.0 * FS)
_DURATION = N_SAMPLES / FS


@dataclass
class SyntheticRecord:
    signal: np.ndarray  # float32 [12, 5000], mV
    report: str
    labels: np.ndarray  # float32 [len(CLASSES)] multi-hot
    r_peaks: np.ndarray  # int64, sample index of every QRS (PVCs included)


# ----------------------------------------------------------------------------------------------------------
# small helpers


def _unit(*v: float) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def _bumps(t: np.ndarray, centres, sigmas, vecs) -> np.ndarray:
    """Sum of 3-D Gaussian bumps: vecs [n, 3] -> [3, len(t)]."""
    c = np.asarray(centres, dtype=np.float64)[:, None]
    s = np.asarray(sigmas, dtype=np.float64)[:, None]
    g = np.exp(-0.5 * ((t[None, :] - c) / s) ** 2)
    return np.asarray(vecs, dtype=np.float64).T @ g


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _t_profile(t: np.ndarray, t_peak: float, width: float) -> np.ndarray:
    """Asymmetric T wave (slow up-stroke, faster down-stroke), peak 1."""
    g = 0.75 * np.exp(-0.5 * ((t - (t_peak - 0.6 * width)) / (1.1 * width)) ** 2)
    g += 0.6 * np.exp(-0.5 * ((t - (t_peak + 0.15 * width)) / (0.75 * width)) ** 2)
    return g / g.max()


def _st_profile(t: np.ndarray, t_j: float, t_end: float) -> np.ndarray:
    """A plateau from the J point that fades out with the T wave (an injury current), peak ~1."""
    return _sigmoid((t - t_j) / 0.004) * _sigmoid((t_end - t) / 0.025)


def _rot_small(rng: np.random.Generator, v: np.ndarray, deg: float) -> np.ndarray:
    w = v + np.deg2rad(deg) * rng.normal(size=3) * np.linalg.norm(v)
    return w / np.linalg.norm(w) * np.linalg.norm(v)


def _leads(v: np.ndarray) -> np.ndarray:
    return _LEAD12 @ v


# ----------------------------------------------------------------------------------------------------------
# labels


def _draw_labels(rng: np.random.Generator) -> dict:
    rhythm = CLASSES[rng.choice(4, p=[0.35, 0.20, 0.20, 0.25])]
    bb = rng.choice(3, p=[0.70, 0.15, 0.15])
    lab = {
        "rhythm": rhythm,
        "IAVB": rhythm != "AF" and rng.random() < 0.21,
        "LBBB": bb == 1,
        "RBBB": bb == 2,
        "PVC": rng.random() < 0.16,
        "STE": bb != 1 and rng.random() < 0.18,
        "LVOLT": rng.random() < 0.15,
    }
    # normal variants (no label of their own): they belong to whatever class the record has, so that they stop
    # meaning disease. Early repolarisation only where no ST elevation / bundle branch block (it would be hidden).
    plain = bb == 0 and not lab["STE"]
    lab["ER"] = plain and rng.random() < _P_EARLY_REPOL
    lab["TALL_T"] = plain and rng.random() < _P_TALL_T
    lab["RSA"] = rhythm in ("SR", "SB") and rng.random() < _P_SINUS_ARRHYTHMIA
    return lab


# ----------------------------------------------------------------------------------------------------------
# beat times


def _sinus_times(rng: np.random.Generator, hr: float, marked_rsa: bool = False) -> np.ndarray:
    base = 60.0 / hr
    n = int((_DURATION + 2.5) / base) + 3
    k = np.arange(n)
    f_resp = rng.uniform(0.15, 0.35)  # 9-21 breaths / min
    # respiratory sinus arrhythmia: RR modulation 1-4 % (marked, a normal variant of the young: 5-9 %)
    a_rsa = (rng.uniform(0.05, 0.09) if marked_rsa else rng.uniform(0.01, 0.04) * (base / 0.8) ** 0.5)
    rr = base * (1.0 + a_rsa * np.sin(2 * np.pi * f_resp * k * base + rng.uniform(0, 2 * np.pi))
                 + rng.normal(0.0, 0.008, n))
    t = -1.0 - rng.uniform(0.0, base) + np.cumsum(rr)
    return t[t < _DURATION + 1.0]


def _af_times(rng: np.random.Generator, hr: float) -> np.ndarray:
    """Irregularly irregular beat times: independent log-normal RR intervals (CV in ``_AF_RR_CV``) above the AV
    node's refractory period (0.26-0.31 s)."""
    base = 60.0 / hr
    cv = rng.uniform(*_AF_RR_CV)
    n = int((_DURATION + 2.5) / (0.6 * base)) + 3
    rr = base * rng.lognormal(-0.5 * cv * cv, cv, n)
    rr = np.maximum(rr, 0.26 + 0.05 * rng.random(n))
    t = -1.0 - rng.uniform(0.0, base) + np.cumsum(rr)
    return t[t < _DURATION + 1.0]


def _insert_pvcs(rng: np.random.Generator, times: np.ndarray):
    """Replace 1-4 beats by early ectopic ones; the next normal beat keeps its time (compensatory pause)."""
    n_pvc = int(rng.choice([1, 1, 2, 2, 3, 4]))
    # the beats before and after stay inside the window, so the prematurity and the pause can be seen
    prev = np.concatenate([[-np.inf], times[:-1]])
    nxt = np.concatenate([times[1:], [np.inf]])
    ok = np.nonzero((prev > 0.05) & (nxt < _DURATION - 0.05))[0]
    rng.shuffle(ok)
    chosen: list[int] = []
    for k in ok:
        if all(abs(int(k) - c) > 1 for c in chosen):
            chosen.append(int(k))
        if len(chosen) == n_pvc:
            break
    is_pvc = np.zeros(len(times), dtype=bool)
    times = times.copy()
    for k in chosen:
        rr = times[k] - times[k - 1]
        times[k] = times[k - 1] + max(rng.uniform(0.5, 0.68) * rr, 0.3)
        is_pvc[k] = True
    return times, is_pvc


def _resp_rotations(rng: np.random.Generator, resp: np.ndarray) -> np.ndarray:
    """Rotation matrices [beats, 3, 3] about one random axis by ``resp`` (in [-1, 1]) times an angle drawn from
    ``_RESP_AXIS_DEG`` (Rodrigues' formula)."""
    axis = _unit(*rng.normal(size=3))
    kx = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    ang = np.deg2rad(rng.uniform(*_RESP_AXIS_DEG)) * np.asarray(resp, dtype=np.float64)
    return (np.eye(3)[None] + np.sin(ang)[:, None, None] * kx[None]
            + (1.0 - np.cos(ang))[:, None, None] * (kx @ kx)[None])


# ----------------------------------------------------------------------------------------------------------
# beat templates


def _normal_qrs(rng, theta, amp, d):
    """Septal q, main R along the axis, terminal basal S: centres, sigmas, vectors."""
    z_r = rng.uniform(0.05, 0.45)
    main = amp * _unit(np.cos(theta), np.sin(theta), z_r)
    sept = rng.uniform(0.10, 0.22) * _unit(-0.5, rng.uniform(-0.2, 0.4), -0.85)
    term = rng.uniform(0.25, 0.6) * amp / 1.5 * _unit(-0.45, rng.uniform(-0.5, 0.0), 0.85)
    c = [-0.33 * d, 0.0, 0.28 * d]
    s = [0.085 * d, 0.12 * d, 0.10 * d]
    return c, s, [sept, main, term]


def _qrs_p2p(centres, sigmas, vecs, win) -> tuple[float, float]:
    lq = _leads(_bumps(_T, centres, sigmas, vecs)[:, win])
    p2p = lq.max(1) - lq.min(1)
    return float(p2p[_LIMB].max()), float(p2p[_PREC].max())


def _calibrate_voltage(rng, centres, sigmas, vecs, win, low: bool) -> tuple[np.ndarray, float]:
    """Scale the QRS vectors so the largest limb-lead QRS (peak to peak) and the largest precordial one land on
    drawn targets: limb 0.6-1.7 mV, precordial 1.2-2.8 mV (low voltage: below 0.5 / 1.0 mV). The precordial
    target is met by scaling the antero-posterior (Z) component, which the limb leads hardly see.
    Returns the vectors and the overall scale factor."""
    vecs = np.asarray(vecs, dtype=np.float64).copy()
    if low:
        limb_t, prec_t = rng.uniform(0.2, 0.4), rng.uniform(0.4, 0.8)
    else:
        limb_t, prec_t = rng.uniform(*_LIMB_QRS_MV), rng.uniform(*_PREC_QRS_MV)
    limb, _ = _qrs_p2p(centres, sigmas, vecs, win)
    scale = limb_t / limb
    vecs *= scale
    for _ in range(3):
        limb, prec = _qrs_p2p(centres, sigmas, vecs, win)
        vecs[:, 2] *= float(np.clip(prec_t / prec, 0.5, 2.0))
        limb, _ = _qrs_p2p(centres, sigmas, vecs, win)
        vecs *= limb_t / limb
    lq = _leads(_bumps(_T, centres, sigmas, vecs)[:, win])
    sokolow = -lq[6].min() + lq[10:12].max()  # S V1 + R V5/V6 under the 3.5 mV LVH limit
    if sokolow > 3.2:
        vecs *= 3.2 / sokolow
    limb, prec = _qrs_p2p(centres, sigmas, vecs, win)
    if low:  # the criteria hold exactly
        vecs *= min(1.0, 0.38 / limb, 0.85 / prec)
    return vecs, scale


def _early_repol_profile(t: np.ndarray, t_j: float, t_peak: float) -> np.ndarray:
    """J-point elevation that rises gently out of the QRS and fades into the T wave: with the T wave's up-stroke
    above it the ST segment is concave upwards (the benign shape)."""
    return _sigmoid((t - t_j) / 0.008) * _sigmoid((t_peak - t) / 0.03)


def _build_templates(rng, lab, rr_mean):
    """3-D templates of the sinus (or AF) beat, the P wave and the PVC; plus facts for the report."""
    facts: dict = {}
    # frontal QRS axis: normal -30..+90 deg (Surawicz 2009) for 90 %, deviated for the rest
    theta = np.deg2rad(rng.uniform(-25.0, 70.0) if rng.random() < 0.9 else rng.uniform(-50.0, 100.0))
    amp = 1.5
    qtc = rng.uniform(*_QTC_S)

    if lab["LBBB"]:
        d = rng.uniform(0.13, 0.17)
        th = theta * 0.5 - np.deg2rad(10)
        a1 = amp * rng.uniform(0.9, 1.3)
        m1 = a1 * _unit(np.cos(th), np.sin(th), rng.uniform(0.5, 0.8))
        m2 = a1 * rng.uniform(0.8, 1.05) * _unit(np.cos(th) + 0.1, np.sin(th) - 0.1, rng.uniform(0.7, 1.0))
        init = rng.uniform(0.1, 0.25) * _unit(0.7, 0.2, -0.5)
        sig = 0.14 * d
        sep = rng.uniform(1.9, 2.3) * sig  # just over 2 sigma: a shallow notch on a broad R
        centres = [-0.40 * d, -0.5 * sep, 0.5 * sep]
        sigmas = [0.07 * d, sig, sig]
        vecs = [init, m1, m2]
    elif lab["RBBB"]:
        d = rng.uniform(0.13, 0.165)
        c, s, v = _normal_qrs(rng, theta, amp, 0.075)
        centres = [c[0] - 0.01, c[1] - 0.015, c[2] - 0.015]
        sigmas = s
        rprime = rng.uniform(0.5, 1.0) * _unit(-0.6, rng.uniform(-0.2, 0.3), -0.8)
        centres.append(0.5 * d - 0.02)
        sigmas.append(0.11 * d)
        vecs = v + [rprime]
    else:
        d = rng.uniform(*_QRS_S)
        centres, sigmas, vecs = _normal_qrs(rng, theta, amp, d)
    vecs = np.asarray(vecs, dtype=np.float64)
    if lab["STE"] and rng.random() < 0.65:
        facts["q_wave"] = True  # placed below, once the territory is known
    t_on, t_j = -0.5 * d, 0.5 * d
    qt = qtc * np.sqrt(np.clip(rr_mean, 0.35, 1.6)) + (d - 0.08) * 0.8
    t_end = t_on + qt
    t_peak = t_end - rng.uniform(0.07, 0.09)
    t_width = rng.uniform(0.035, 0.05)

    # QRS-only window for the voltage criteria
    qrs_win = (_T >= t_on - 0.02) & (_T <= t_j + 0.02)
    vecs, scale = _calibrate_voltage(rng, centres, sigmas, vecs, qrs_win, lab["LVOLT"])
    qrs = _bumps(_T, centres, sigmas, vecs)
    t_scale = rng.uniform(0.5, 0.8) if lab["LVOLT"] else 1.0

    mean_qrs = vecs.sum(0)
    if lab["LBBB"] or lab["RBBB"]:
        if lab["LBBB"]:
            tv = -rng.uniform(0.25, 0.45) * _unit(*mean_qrs)
            st = -rng.uniform(0.08, 0.16) * _unit(*mean_qrs)
        else:
            tv = rng.uniform(0.15, 0.3) * _unit(0.7, 0.4, 0.6)  # discordant to the terminal R'
            st = -0.05 * _unit(*vecs[-1])
    else:
        # T axis within ~ 20 deg of the QRS axis in the frontal plane, pointing anterior; amplitude set in the
        # lead that shows it best: limb 0.15-0.5 mV; a tall precordial T (normal variant): 0.8-1.3 mV in V2-V4
        th_t = np.clip(theta + np.deg2rad(rng.normal(0, 15)), np.deg2rad(-10), np.deg2rad(80))
        z_t = rng.uniform(-1.3, -0.8) if lab.get("TALL_T") else rng.uniform(-0.6, -0.1)
        tv = _unit(np.cos(th_t), np.sin(th_t), z_t)
        lt = _leads(tv)
        lq = _leads(qrs[:, qrs_win])
        qp2p = lq.max(1) - lq.min(1)
        # T / QRS in the limb lead of the largest T: 0.2-0.45, within 0.1-0.5 mV
        best = int(np.argmax(lt[_LIMB]))
        tv = tv * float(np.clip(rng.uniform(0.2, 0.45) * qp2p[best], *_T_LIMB_MV)) / lt[best]
        if lab.get("TALL_T"):
            tv = tv * rng.uniform(0.8, 1.3) / _leads(tv)[7:10].max()
        else:
            tv = tv * min(1.0, rng.uniform(0.35, 1.0) / _leads(tv)[_PREC].max())
        # T / QRS at most 0.45 in II and 0.37 in V5 (the real recordings: 0.03-0.49 and 0.12-0.41)
        tv = tv * min(1.0, 0.45 * qp2p[1] / max(_leads(tv)[1], 1e-6), 0.37 * qp2p[10] / max(_leads(tv)[10], 1e-6))
        st = np.zeros(3)
    tv = tv * t_scale
    beat = qrs + np.outer(tv, _t_profile(_T, t_peak, t_width)) + np.outer(st, _st_profile(_T, t_j, t_peak))

    if not (lab["LBBB"] or lab["RBBB"] or lab["STE"]):
        # J-point elevation of healthy hearts: up to 0.1 mV in V2-V3 in most records; early repolarisation
        # (normal variant): 0.05-0.2 mV in V2-V3 (under the 0.2-0.25 mV limits of Thygesen 2018), under 0.1 mV
        # elsewhere, concave ST, and a J notch at the end of the QRS in the inferolateral leads
        j_dir = _unit(*(_unit(*tv) + np.array([0.0, 0.0, -0.8])))
        lj = _leads(j_dir)
        others = np.abs(np.delete(lj, [3, 7, 8]))  # all but aVR, V2, V3
        a23 = rng.uniform(0.05, 0.2) if lab.get("ER") else rng.uniform(0.0, 0.1)
        j_dir = j_dir * min(a23 / max(lj[7:9].max(), 1e-6), 0.07 / max(others.max(), 1e-6))
        beat += np.outer(j_dir, _early_repol_profile(_T, t_j, t_peak))
        if lab.get("ER"):
            notch = rng.uniform(0.03, 0.06) * _unit(0.8, 0.6, -0.2)
            beat += np.outer(notch, np.exp(-0.5 * ((_T - t_j - 0.004) / rng.uniform(0.007, 0.011)) ** 2))

    if lab["STE"]:
        territory = rng.choice(["anterior", "inferior", "lateral"], p=[0.45, 0.4, 0.15])
        if territory == "anterior":
            v = _unit(0.25, -0.35, -1.0)
        elif territory == "inferior":
            v = _unit(-0.15, 1.0, rng.uniform(0.1, 0.4))
        else:
            v = _unit(1.0, -0.45, -0.1)
        v = _rot_small(rng, v, 8.0)
        target = rng.uniform(0.3, 0.8)  # ST elevation in the most elevated lead, mV (>= 0.1-0.25 mV: Thygesen 2018)
        if lab["LVOLT"]:  # the injury starts inside the QRS: keep the limb-lead QRS of a low-voltage record < 0.5 mV
            target = rng.uniform(0.12, 0.2)
        v = v * target / _leads(v).max()
        # injury current: a sharp J-point take-off into a horizontal-to-convex ST plateau that carries the T wave
        # (the ST-T shape relative to the QRS changes; the 4 Hz high-pass keeps the J step and the dome's edges),
        # reciprocal depression in the opposite leads; the T wave itself only a little taller
        hyper = np.exp(-0.5 * ((_T - (t_peak - 0.01)) / rng.uniform(0.025, 0.035)) ** 2)
        # the injury current starts inside the QRS: the terminal S wave is lost (terminal QRS distortion)
        beat += np.outer(v, _st_profile(_T, t_j - 0.012, t_peak + 0.03) + rng.uniform(0.0, 0.25) * hyper)
        if facts.pop("q_wave", False):
            # a pathological Q wave in the territory's leads: initial forces pointing away from the injury
            q_amp = rng.uniform(0.2, 0.45)
            q_vec = -_unit(*v) * q_amp / max(_leads(_unit(*v)).max(), 1e-6)
            beat += np.outer(q_vec, np.exp(-0.5 * ((_T - (t_on + 0.3 * d)) / (0.12 * d)) ** 2))
        facts["territory"] = territory
        # loss of R-wave amplitude in the territory (evolving infarction; QS complexes in its leads): a change of
        # the QRS itself, which the 4 Hz high-pass keeps whole, where the ST plateau survives only as its edges
        u = _unit(*v)
        beat -= rng.uniform(0.5, 0.8) * np.outer(u, np.maximum(u @ qrs, 0.0))

    # P wave (sinus only): right then left atrium.
    p_dur = rng.uniform(0.08, 0.11)
    a_p = rng.uniform(0.10, 0.22) * (0.7 if lab["LVOLT"] else 1.0)
    p_vecs = [a_p * _unit(0.15, 0.85, -0.45), a_p * 0.9 * _unit(0.65, 0.45, 0.5)]
    p_wave = _bumps(_TP, [-0.15 * p_dur, 0.15 * p_dur], [p_dur / 6.5, p_dur / 6.5], p_vecs)
    pr = rng.uniform(0.25, 0.33) if lab["IAVB"] else rng.uniform(0.128, 0.19)
    p_offset = t_on - pr + 0.5 * p_dur  # P centre relative to the R peak

    # PVC: two broad bumps from an ectopic focus, discordant ST-T, no P.
    pvc = None
    if lab["PVC"]:
        dp = rng.uniform(0.14, 0.19)
        if rng.random() < 0.5:  # right-ventricular focus: LBBB-like, inferior or superior
            u1 = _unit(rng.uniform(0.3, 1.0), rng.uniform(-0.8, 1.0), rng.uniform(0.4, 1.0))
        else:  # left-ventricular focus: RBBB-like, anterior
            u1 = _unit(rng.uniform(-1.0, 0.2), rng.uniform(-0.8, 1.0), rng.uniform(-1.0, -0.4))
        u2 = _rot_small(rng, u1, 35.0)
        ap = rng.uniform(1.3, 2.2) * (scale if lab["LVOLT"] else 1.0)
        pvc_vecs = np.array([ap * u1, 0.75 * ap * u2])
        pvc = _bumps(_T, [-0.2 * dp, 0.18 * dp], [0.15 * dp, 0.15 * dp], pvc_vecs)
        mean_p = _unit(*pvc_vecs.sum(0))
        pvc += np.outer(-rng.uniform(0.35, 0.6) * mean_p, _t_profile(_T, 0.5 * dp + 0.2, 0.06))
        pvc += np.outer(-rng.uniform(0.05, 0.12) * mean_p, _st_profile(_T, 0.5 * dp, 0.5 * dp + 0.2))

    # frontal axis from the net QRS area in I and aVF (as a cart measures it)
    area = _leads(qrs[:, qrs_win].sum(1))
    facts["axis"] = float(np.degrees(np.arctan2(area[5], area[0])))
    facts["pr_ms"] = int(round(pr * 1000))
    facts["qrs_ms"] = int(round(d * 1000))
    return beat, p_wave, p_offset, pvc, facts


# ----------------------------------------------------------------------------------------------------------
# noise


def _band_noise(rng: np.random.Generator, n: int, f0: float, sd_hz: float) -> np.ndarray:
    """Gaussian noise band-limited around ``f0`` (a Gaussian spectral window of SD ``sd_hz``), scaled so its RMS
    is that of a unit sine (1 / sqrt 2)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / FS)
    x = np.fft.irfft(spec * np.exp(-0.5 * ((f - f0) / sd_hz) ** 2), n)
    return x / max(float(x.std()) * np.sqrt(2.0), 1e-12)


def _af_waves(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Fibrillatory waves in 3-D, strongest in V1 and II: two components, each a wandering 4-9 Hz oscillation mixed
    with band-limited noise around its frequency (irregular in shape and amplitude, as real f-waves are); fine to
    coarse (``_AF_F_MV``)."""
    out = np.zeros((3, t.size))
    knots = np.linspace(t[0], t[-1], 24)
    target = float(np.exp(rng.uniform(*np.log(_AF_F_MV))))  # peak amplitude in the lead that shows it best
    for c in range(2):
        f0 = rng.uniform(4.5, 8.5)
        f = f0 + np.interp(t, knots, rng.normal(0.0, 0.5, knots.size))
        phase = 2 * np.pi * np.cumsum(f) / FS + rng.uniform(0, 2 * np.pi)
        a = 1.0 + 0.35 * np.interp(t, knots, rng.uniform(-1, 1, knots.size))
        tone = rng.uniform(0.0, 1.0)  # share of the oscillation; the rest is band-limited noise
        wave = tone * a * np.sin(phase) + (1.0 - tone) * _band_noise(rng, t.size, f0, rng.uniform(0.6, 1.5))
        v = _unit(-0.3, 0.6, -0.75) + 0.2 * rng.normal(size=3)
        v *= (target if c == 0 else 0.4 * target) / np.abs(_leads(v)).max()
        out += np.outer(v, wave)
    return out


def _noise(rng: np.random.Generator) -> np.ndarray:
    """Noise on the 8 independent leads (I, II, V1..V6): white noise, baseline wander, sometimes mains hum."""
    t = np.arange(N_SAMPLES) / FS
    out = rng.standard_normal((8, N_SAMPLES), dtype=np.float32).astype(np.float64)
    out *= rng.uniform(*_NOISE_MV)
    n_w = 3
    freqs = rng.uniform(0.05, 0.5, n_w)
    waves = np.sin(2 * np.pi * freqs[:, None] * t[None, :] + rng.uniform(0, 2 * np.pi, (n_w, 1)))
    total = rng.uniform(0.065, 0.13)  # mV summed over the components
    mix = rng.uniform(-1.0, 1.0, (8, n_w))
    mix *= total / np.maximum(np.abs(mix).sum(1, keepdims=True), 1e-6)
    out += mix @ waves
    if rng.random() < 0.1:
        f = 50.0 if rng.random() < 0.5 else 60.0
        hum = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
        out += np.outer(rng.uniform(0.002, 0.01) * rng.uniform(0.3, 1.0, 8), hum)
    return out


# ----------------------------------------------------------------------------------------------------------
# reports


def _pick(rng: np.random.Generator, options, weights=None) -> str:
    if weights is None:
        return options[int(rng.integers(len(options)))]
    w = np.asarray(weights, dtype=np.float64)
    return options[int(rng.choice(len(options), p=w / w.sum()))]


def _report(rng: np.random.Generator, lab: dict, hr: float, n_pvc: int, facts: dict) -> str:
    rhythm = lab["rhythm"]
    if rhythm == "SR":
        rs = _pick(rng, ["sinus rhythm", "normal sinus rhythm", "sinus rhythm with normal rate"], [5, 4, 1])
    elif rhythm == "SB":
        opts = ["sinus bradycardia"]
        if hr < 50:
            opts.append("marked sinus bradycardia")
        rs = _pick(rng, opts)
    elif rhythm == "STACH":
        rs = "sinus tachycardia"
    else:
        opts = ["atrial fibrillation", "atrial fibrillation"]
        if hr > 110:
            opts += ["atrial fibrillation with rapid ventricular response"] * 2
        elif hr < 100:
            opts.append("atrial fibrillation with controlled ventricular response")
        rs = _pick(rng, opts)

    rhythm_only = rs
    findings: list[str] = []
    if lab["IAVB"]:
        s = _pick(rng, ["first degree av block", "1st degree a-v block", "prolonged pr interval",
                        "first degree atrioventricular block"])
        if rng.random() < 0.25:
            rs = f"{rs} with {s}"
        else:
            findings.append(s if rng.random() < 0.8 else f"{s}, pr {facts['pr_ms']} ms")
    if lab["PVC"]:
        if n_pvc <= 1:
            s = _pick(rng, ["ventricular premature complex", "premature ventricular complex", "single pvc",
                            "isolated premature ventricular complex"])
        else:
            s = _pick(rng, ["premature ventricular complexes", "ventricular premature complexes",
                            "occasional pvcs", "multiple premature ventricular complexes"])
        if rng.random() < 0.2:
            rs = f"{rs} with {s}"
        else:
            findings.append(s)
    if lab["LBBB"]:
        findings.append(_pick(rng, ["left bundle branch block", "complete left bundle branch block",
                                    "left bundle branch block, qrs widened"], [5, 4, 1]))
    if lab["RBBB"]:
        findings.append(_pick(rng, ["right bundle branch block", "complete right bundle branch block",
                                    "right bundle branch block with rsr' in v1"], [5, 4, 1]))
    if lab["STE"]:
        terr = facts["territory"]
        leads = {"anterior": "v1-v4", "inferior": "ii, iii, avf", "lateral": "i, avl, v5, v6"}[terr]
        # one statement in three names no territory, as a cart's "st elevation, consider acute infarct" does:
        # then "st elevation" is one finding whatever the leads, not three territory patterns that (with their
        # reciprocal depression) point different ways and average out in a one-prompt zero-shot score
        named = [f"{terr} st elevation", f"{terr} st elevation, consider acute infarct",
                 f"st elevation in {leads}, consider {terr} injury", f"{terr} injury pattern with st elevation",
                 f"st elevation, consider {terr} acute myocardial infarction"]
        unnamed = ["st elevation, consider acute infarct", "st elevation, consider acute myocardial infarction",
                   "st elevation, consider injury"]
        findings.append(_pick(rng, named) if rng.random() >= _P_STE_NO_TERRITORY else _pick(rng, unnamed))
    if lab["LVOLT"]:
        findings.append(_pick(rng, ["low qrs voltages", "low voltage qrs", "generalized low qrs voltages",
                                    "low qrs voltages in limb and precordial leads"], [4, 4, 1, 1]))
    if lab.get("ER") and rng.random() < 0.5:
        findings.append(_pick(rng, ["early repolarization", "early repolarization pattern",
                                    "early repolarization, normal variant"]))
    if lab.get("RSA") and rng.random() < 0.6:
        findings.append(_pick(rng, ["sinus arrhythmia", "marked sinus arrhythmia"]))
    axis = facts["axis"]
    if axis < -30 and not lab["LBBB"]:
        findings.append("left axis deviation")
    elif axis > 100:
        findings.append("right axis deviation")
    order = rng.permutation(len(findings))
    findings = [findings[i] for i in order]

    # a rhythm statement that carries no finding of its own ("... with first degree av block") may be left out
    # when a diagnostic finding is stated (not with only axis or normal-variant sentences)
    diagnostic = any(lab[k] for k in CLASSES[4:])  # the add-on findings IAVB .. LVOLT
    no_rhythm = diagnostic and rs == rhythm_only and rng.random() < _P_NO_RHYTHM
    if rng.random() < 0.25:
        rate = _pick(rng, ["rate {} bpm", "ventricular rate {} bpm", "heart rate {}"]).format(int(round(hr)))
        findings.insert(0 if rng.random() < 0.5 else len(findings), rate)
    if no_rhythm:
        sentences = findings
    elif rng.random() < 0.88:
        sentences = [rs] + findings
    else:
        pos = int(rng.integers(len(findings) + 1))
        sentences = findings[:pos] + [rs] + findings[pos:]

    major = rhythm == "AF" or lab["LBBB"] or lab["RBBB"] or lab["STE"] or lab["PVC"]
    minor = [rhythm in ("SB", "STACH"), lab["IAVB"], lab["LVOLT"]]
    axis_dev = "axis deviation" in " ".join(sentences)
    if major:
        summary = "abnormal ecg"
    elif any(minor) or axis_dev:
        summary = "otherwise normal ecg" if sum(minor) + axis_dev == 1 and rng.random() < 0.4 else "borderline ecg"
    else:
        summary = "normal ecg"
    # a summary most of the time, and always when the report would be under 4 words (such reports are dropped)
    if rng.random() < 0.75 or sum(len(x.split()) for x in sentences) < 4:
        sentences.append(summary)
    if rng.random() < 0.15:
        sentences.append("unconfirmed report")
    return ". ".join(sentences) + "."


# ----------------------------------------------------------------------------------------------------------
# public API


def generate_record(index: int, seed: int = 0) -> SyntheticRecord:
    """One record, a pure function of (index, seed)."""
    rng = np.random.default_rng([int(seed), int(index)])
    lab = _draw_labels(rng)
    rhythm = lab["rhythm"]
    if rhythm == "SR":
        hr = rng.uniform(61.0, 99.0)
    elif rhythm == "SB":
        hr = rng.uniform(41.0, 58.0)
    elif rhythm == "STACH":
        hr = rng.uniform(102.0, 120.0 if lab["IAVB"] else 148.0)
    else:
        hr = rng.uniform(*(_AF_RATE_RAPID if rng.random() < _P_AF_RAPID else _AF_RATE_CONTROLLED))
    times = _af_times(rng, hr) if rhythm == "AF" else _sinus_times(rng, hr, lab["RSA"])
    rr_mean = 60.0 / hr
    is_pvc = np.zeros(len(times), dtype=bool)
    if lab["PVC"]:
        times, is_pvc = _insert_pvcs(rng, times)
        lab["PVC"] = bool(is_pvc.any())

    beat, p_wave, p_offset, pvc, facts = _build_templates(rng, lab, rr_mean)

    dipole = np.zeros((3, N_SAMPLES + 2 * _PAD))
    pos = np.rint(times * FS).astype(np.int64)
    resp = np.sin(2 * np.pi * rng.uniform(0.15, 0.35) * times + rng.uniform(0, 6.3))  # respiration at each beat
    amp_mod = 1.0 + rng.uniform(*_RESP_AMP) * resp
    amp_mod *= 1.0 + rng.normal(0.0, 0.01, len(times))
    turn = _resp_rotations(rng, resp)  # [beats, 3, 3]: the QRS-T axis turning with respiration
    p_shift = int(round(p_offset * FS))
    n_t, n_p = _T.size, _TP.size
    for k in range(len(times)):
        a = pos[k] + _PAD - _PRE
        if a < 0 or a + n_t > dipole.shape[1]:
            continue
        if is_pvc[k]:
            dipole[:, a:a + n_t] += pvc
        else:
            dipole[:, a:a + n_t] += amp_mod[k] * (turn[k] @ beat)
            if rhythm != "AF":
                b = pos[k] + _PAD + p_shift - _P_HALF
                if b >= 0:
                    dipole[:, b:b + n_p] += p_wave
    dipole = dipole[:, _PAD:_PAD + N_SAMPLES]
    if rhythm == "AF":
        dipole += _af_waves(rng, np.arange(N_SAMPLES) / FS)

    eight = _DOWER @ dipole + _noise(rng)
    signal = (_DERIVE @ eight).astype(np.float32)

    inside = (pos >= 0) & (pos < N_SAMPLES)
    r_peaks = pos[inside].astype(np.int64)
    n_pvc = int(is_pvc[inside].sum())
    rr = np.diff(r_peaks)
    hr_meas = 60.0 * FS / rr.mean() if rr.size else hr

    labels = np.zeros(len(CLASSES), dtype=np.float32)
    labels[CLASSES.index(rhythm)] = 1.0
    for key in ("IAVB", "LBBB", "RBBB", "PVC", "STE", "LVOLT"):
        if lab[key]:
            labels[CLASSES.index(key)] = 1.0
    report = _report(rng, lab, hr_meas, n_pvc, facts)
    return SyntheticRecord(signal=signal, report=report, labels=labels, r_peaks=r_peaks)


def split_indices(split: str, n: int) -> range:
    """Record indices of a split: "train" from 0, "test" from 10,000,000, "val" from 20,000,000 (disjoint)."""
    key = _SPLIT_ALIASES.get(split, split)
    if key not in _SPLIT_OFFSETS:
        raise ValueError(f"unknown synthetic split {split!r}; expected one of 'train', 'val', 'test'")
    if not 0 <= int(n) <= _SPLIT_SPAN:
        raise ValueError(f"synthetic split {split!r}: n must be in [0, {_SPLIT_SPAN}], got {n}")
    start = _SPLIT_OFFSETS[key]
    return range(start, start + int(n))


def generate_split(split: str, n: int, seed: int = 0) -> list[SyntheticRecord]:
    return [generate_record(i, seed) for i in split_indices(split, n)]
