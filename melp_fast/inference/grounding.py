"""Generated reports grounded in what the beat detector measures.

A captioning model writes numbers from its features: a rate it states can be far from the rate of the beats the
detector found (76 bpm on a 96 bpm recording), and a rhythm it names can contradict the RR intervals (atrial
fibrillation on a regular rhythm, premature complexes with no premature beat). ``ground_report`` takes the raw
model text and the detected R peaks and returns

- the text with every stated ventricular / heart rate replaced by the measured one (rounded bpm; "N bpm" and
  "rate N" forms), each replacement listed;
- flags for rhythm statements the RR intervals contradict (``rhythm_flags``), never silently kept or dropped:
  atrial fibrillation on regular RR intervals, premature complexes with no premature beat, sinus rhythm on
  irregular intervals, bradycardia / tachycardia at a measured rate outside their range.

The raw text is kept beside it (``Grounded.raw``). The thresholds are plain rules on the RR intervals, stated
in ``RULES``; they judge only whether a statement is consistent with the intervals, not the ECG.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

RULES = {
    "premature": 0.9,  # an RR below this share of the median RR, then one 15 % longer: a premature beat
    "max_ectopic_share": 0.15,  # more premature beats than this share of the intervals: none is left out of the CV
    "regular_cv": 0.08,  # coefficient of variation of all RR intervals below this: regular
    "irregular_cv": 0.15,  # of the RR intervals outside ectopic beats above this: irregular (AF: typically 15-30 %)
    "brady_bpm": 65.0,  # "bradycardia" flagged above this measured rate (60 bpm plus a margin)
    "tachy_bpm": 95.0,  # "tachycardia" flagged below this measured rate (100 bpm less a margin)
}

# "ventricular rate 76 bpm", "heart rate 76", "rate of 76 bpm", "rate 76/min", and a bare "76 bpm"
_RATE = re.compile(r"\b(?P<what>(?:ventricular |heart )?rate(?: of)?:? )(?P<n>\d{1,3})(?P<unit> ?(?:bpm|/ ?min))?\b"
                   r"|\b(?P<n2>\d{1,3})(?P<unit2> ?bpm)\b")


@dataclass
class RR:
    """What the R peaks measure: rate (bpm), beats, RR coefficients of variation, premature beats."""
    n_beats: int
    rate_bpm: float
    cv: float  # of the RR intervals outside premature beats and their pauses
    premature: int
    cv_all: float = float("nan")  # of all RR intervals

    @property
    def regular(self) -> bool:
        return self.n_beats >= 4 and self.cv_all < RULES["regular_cv"]

    @property
    def irregular(self) -> bool:
        return self.n_beats >= 4 and self.cv > RULES["irregular_cv"]


def measure_rr(r_peaks, fs: float) -> RR:
    """RR statistics of R peaks (samples at ``fs``); NaN rate and CV with fewer than two / three beats."""
    rp = np.asarray(r_peaks, dtype=np.float64)
    if len(rp) < 2:
        return RR(len(rp), float("nan"), float("nan"), 0)
    rr = np.diff(rp) / fs
    rate = 60.0 / float(rr.mean())
    med = float(np.median(rr))
    early = [i for i in range(len(rr) - 1) if rr[i] < RULES["premature"] * med and rr[i + 1] > rr[i] * 1.15]
    # a few premature beats (ectopy) are left out with their pauses; many are no ectopy but an irregular rhythm
    skip = set(early) | {i + 1 for i in early} if len(early) <= RULES["max_ectopic_share"] * len(rr) else set()
    rest = np.array([r for i, r in enumerate(rr) if i not in skip])
    cv = float(rest.std() / rest.mean()) if len(rest) >= 2 else float("nan")
    return RR(len(rp), rate, cv, len(early), float(rr.std() / rr.mean()))


@dataclass
class Grounded:
    text: str  # the report with stated rates replaced by the measured one
    raw: str  # the model's text as generated
    rate_bpm: float  # measured from the detected beats (NaN with fewer than two)
    changes: list = field(default_factory=list)  # "rate 76 -> 96 bpm"
    flags: list = field(default_factory=list)  # rhythm statements the RR intervals contradict

    def as_dict(self) -> dict:
        return {"text": self.text, "raw": self.raw, "rate_bpm_measured": None if self.rate_bpm != self.rate_bpm
                else round(self.rate_bpm, 1), "changes": self.changes, "flags": self.flags}


def ground_rates(text: str, rate_bpm: float) -> tuple[str, list[str]]:
    """``text`` with each stated ventricular / heart rate set to ``rate_bpm`` (rounded); the changes made. An
    atrial rate is left alone. Without a measured rate (NaN) the numbers are left and a change says so."""
    changes: list[str] = []
    measured = None if rate_bpm != rate_bpm else int(round(rate_bpm))

    def sub(m: re.Match) -> str:
        n = m.group("n") if m.group("n") is not None else m.group("n2")
        if m.group("n") is not None and text[: m.start()].endswith("atrial "):
            return m.group(0)
        if measured is None:
            changes.append(f"rate {n} kept: fewer than two beats detected, no rate measured")
            return m.group(0)
        if int(n) != measured:
            changes.append(f"rate {n} -> {measured} bpm (measured from the detected beats)")
        if m.group("n") is not None:
            return f"{m.group('what')}{measured}{m.group('unit') or ''}"
        return f"{measured}{m.group('unit2')}"

    return _RATE.sub(sub, text), changes


def rhythm_flags(text: str, rr: RR) -> list[str]:
    """Rhythm and rate statements of ``text`` that the measured RR intervals contradict (one line each)."""
    t = text.lower()
    flags = []
    cv = f"RR variation {100 * rr.cv:.0f} %" if rr.cv == rr.cv else "RR variation unknown"
    if "atrial fibrillation" in t and rr.regular:
        flags.append(f"'atrial fibrillation' stated, but the RR intervals are regular (RR variation "
                     f"{100 * rr.cv_all:.0f} %, {rr.n_beats} beats)")
    if re.search(r"premature|pvc|\bpac\b|ectopi|extrasystol", t) and rr.n_beats >= 4 and rr.premature == 0:
        flags.append(f"premature complexes stated, but no premature beat among the {rr.n_beats} detected")
    if re.search(r"sinus (rhythm|bradycardia|tachycardia)", t) and rr.irregular:
        flags.append(f"a sinus rhythm stated, but the RR intervals are irregular ({cv})")
    if rr.rate_bpm == rr.rate_bpm:
        if "bradycardia" in t and rr.rate_bpm > RULES["brady_bpm"]:
            flags.append(f"'bradycardia' stated at a measured rate of {rr.rate_bpm:.0f} bpm")
        if "tachycardia" in t and rr.rate_bpm < RULES["tachy_bpm"]:
            flags.append(f"'tachycardia' stated at a measured rate of {rr.rate_bpm:.0f} bpm")
    return flags


def ground_report(raw: str, r_peaks, fs: float) -> Grounded:
    rr = measure_rr(r_peaks, fs)
    text, changes = ground_rates(raw, rr.rate_bpm)
    return Grounded(text, raw, rr.rate_bpm, changes, rhythm_flags(text, rr))
