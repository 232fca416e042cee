"""Grounded reports (melp_fast/inference/grounding.py): stated rates set to the measured one, rhythm statements that the RR
intervals contradict flagged. Crafted model outputs and crafted R-peak trains: no model needed."""

import numpy as np
import pytest

from helpers import rng_for
from melp_fast.inference.grounding import RULES, ground_rates, ground_report, measure_rr, rhythm_flags

FS = 500


def regular(bpm: float, seconds: float = 10.0) -> np.ndarray:
    rr = 60.0 / bpm * FS
    return np.arange(int(0.3 * FS), int(seconds * FS), rr).round().astype(int)


def af_like(rng, bpm: float = 110.0) -> np.ndarray:
    """RR intervals drawn independently around the mean, 25 % spread (irregularly irregular)."""
    rr = 60.0 / bpm * FS * rng.uniform(0.7, 1.3, size=20)
    return (150 + np.cumsum(rr)).round().astype(int)


def with_pvc(bpm: float = 75.0) -> np.ndarray:
    rp = regular(bpm).astype(float)
    rr = rp[1] - rp[0]
    rp[6] -= 0.3 * rr  # the 7th beat early; the next one on time: a full compensatory pause
    return rp.round().astype(int)


def test_measure_rr():
    r = measure_rr(regular(96), FS)
    assert abs(r.rate_bpm - 96) < 0.5 and r.cv < 0.01 and r.premature == 0 and r.regular and not r.irregular
    p = measure_rr(with_pvc(), FS)
    assert p.premature == 1 and not p.irregular  # the premature beat and its pause are left out of the CV
    seed_rng = rng_for("grounding", "af")
    a = measure_rr(af_like(seed_rng), FS)
    assert a.irregular and not a.regular, a
    one = measure_rr([100], FS)
    assert one.rate_bpm != one.rate_bpm and not one.regular


@pytest.mark.parametrize("raw, expected", [
    ("sinus rhythm. ventricular rate 76 bpm. premature ventricular complexes. abnormal ecg.",
     "sinus rhythm. ventricular rate 96 bpm. premature ventricular complexes. abnormal ecg."),
    ("sinus rhythm. heart rate 45. normal ecg.", "sinus rhythm. heart rate 96. normal ecg."),
    ("sinus rhythm with a rate of 120 bpm.", "sinus rhythm with a rate of 96 bpm."),
    ("sinus rhythm at 58 bpm. atrial rate 300.", "sinus rhythm at 96 bpm. atrial rate 300."),
    ("sinus rhythm. normal ecg.", "sinus rhythm. normal ecg."),
])
def test_stated_rates_become_the_measured_rate(raw, expected):
    g = ground_report(raw, regular(96), FS)
    assert g.text == expected and g.raw == raw
    assert len(g.changes) == (raw != expected)


def test_no_rate_measured_keeps_the_number_and_says_so():
    text, changes = ground_rates("rate 76 bpm.", float("nan"))
    assert text == "rate 76 bpm." and changes and "no rate measured" in changes[0]


def test_rhythm_statements_the_rr_intervals_contradict_are_flagged():
    rng = rng_for("grounding", "flags")
    reg, af, pvc = measure_rr(regular(96), FS), measure_rr(af_like(rng), FS), measure_rr(with_pvc(), FS)
    # a regular rhythm called atrial fibrillation (the issue's beam report) is flagged, an irregular one is not
    assert any("atrial fibrillation" in f for f in rhythm_flags("atrial fibrillation. abnormal ecg.", reg))
    assert rhythm_flags("atrial fibrillation. abnormal ecg.", af) == []
    # premature complexes without a premature beat are flagged; with one they are not
    assert any("premature" in f for f in rhythm_flags("sinus rhythm. premature ventricular complexes.", reg))
    assert rhythm_flags("sinus rhythm. premature ventricular complexes.", pvc) == []
    # sinus rhythm on irregularly irregular intervals is flagged
    assert any("sinus" in f for f in rhythm_flags("sinus rhythm. normal ecg.", af))
    assert rhythm_flags("sinus rhythm. normal ecg.", reg) == []
    # rate words against the measured rate
    assert any("bradycardia" in f for f in rhythm_flags("sinus bradycardia.", reg))
    assert rhythm_flags("sinus bradycardia.", measure_rr(regular(50), FS)) == []
    assert any("tachycardia" in f for f in rhythm_flags("sinus tachycardia.", measure_rr(regular(70), FS)))
    assert rhythm_flags("sinus tachycardia.", measure_rr(regular(120), FS)) == []
    assert RULES["regular_cv"] < RULES["irregular_cv"]


def test_the_issues_report_grounded_on_a_96_bpm_regular_record():
    g = ground_report("sinus rhythm. ventricular rate 76 bpm. premature ventricular complexes. abnormal ecg.",
                      regular(96), FS)
    assert "ventricular rate 96 bpm" in g.text and g.changes == ["rate 76 -> 96 bpm (measured from the detected beats)"]
    assert len(g.flags) == 1 and "premature" in g.flags[0]
    d = g.as_dict()
    assert d["raw"].startswith("sinus rhythm. ventricular rate 76") and d["rate_bpm_measured"] == 96.0
