"""Beat detection on the harder provoking records: coupled ectopy (bigeminy, trigeminy) with ectopic beats
taller, shorter, wider or of opposite polarity at coupling intervals down to 300 ms, baseline steps (single, paired,
in one lead or in most leads, 250 ms or 600 ms after a beat, at the same instant as a real QRS) and a transient at
the end of the T-wave window, at 250, 360, 500 and 1000 Hz, each judged against NeuroKit2 (lead II) on the same
record in the same run; plus the draws that once failed, kept as fixed regression cases, and unit checks of the
step test and the T-window boundary.

Seeds are fixed (two representative draws per case and rate, listed below and printed in every failure message);
``python benchmarks/segmentation.py --seeds 200`` runs 200 random draws of every case and rate.
"""

from __future__ import annotations


import numpy as np
import pytest

from melp_fast.data.beats import _detector as det
from melp_fast.data.beats import detect_r_peaks

from melp_fast.testing import beat_cases as bc  # noqa: E402
from melp_fast.testing.common import match_beats  # noqa: E402

from helpers import rng_for  # noqa: E402  (fixed, printed seeds)

MIN_RATE = 0.995
SEEDS = (11, 2026)  # two draws per case and rate (each case's generator mixes in the case and the rate)


def nk_peaks(sig, fs):
    pytest.importorskip("neurokit2")
    return bc.nk_peaks(sig, fs)


def rates(ref, peaks, n, fs):
    """(Se, +P, T-window false detections) of one record; beats within 100 ms of an edge are not required and
    detections there are not counted."""
    m, tol = int(0.1 * fs), int(round(0.15 * fs))
    tp, fn, _, _ = match_beats(ref[(ref >= m) & (ref < n - m)], peaks, tol)
    inner = peaks[(peaks >= m) & (peaks < n - m)]
    fp = match_beats(ref, inner, tol)[2]
    return tp / max(1, tp + fn), tp / max(1, tp + fp), bc.t_window_fp(ref, inner, fs)


def check_draw(x, ref, fs, what):
    """Ours >= 99.5 % Se and +P on this record, no detection in the T-wave window, never below NeuroKit2."""
    n = x.shape[1]
    p = detect_r_peaks(x, fs)
    se, ppv, tfd = rates(ref, p, n, fs)
    kse, kppv, _ = rates(ref, nk_peaks(x[1], fs), n, fs)
    msg = (f"{what}: ours Se {100 * se:.1f} +P {100 * ppv:.1f} ({tfd} in the T-wave window), NeuroKit2 Se "
           f"{100 * kse:.1f} +P {100 * kppv:.1f}; reference {ref.tolist()}, ours {p.tolist()}")
    assert se >= MIN_RATE and ppv >= MIN_RATE and tfd == 0, msg
    assert se >= kse and ppv >= kppv, msg


# ---------------------------------------------------------------------------------------------------------------
# the hard cases, fixed draws
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fs", bc.RATES)
@pytest.mark.parametrize("kind", bc.HARD_KINDS)
def test_hard_case(kind, fs):
    for seed in SEEDS:
        x, ref = bc.hard_case(kind, fs, seed)
        check_draw(x, ref, float(fs), f"{kind} at {fs} Hz, seed {seed} (melp_fast.testing.beat_cases.hard_case)")


def test_issue_bigeminy_draw():
    """The draw of the issue: bigeminy at 250 Hz, record seed 2013483785 (the detector found 50 % of the beats,
    NeuroKit2 91.7 %)."""
    x, ref = bc.synth_case("bigeminy", 250, 2013483785)
    check_draw(x, ref, 250.0, "bigeminy at 250 Hz, seed 2013483785 (melp_fast.testing.beat_cases.synth_case)")


# draws that failed while the rules were built, each for its own reason
REGRESSIONS = [
    ("bigeminy_var", 500, 7, "shorter ectopic beats (0.08 of the sinus shape value, steep in 0.41-0.58 of leads)"),
    ("bigeminy_var", 250, 8, "the ectopic wave's envelope lobes 70 ms apart: coupling judged at the wave's peak"),
    ("bigeminy_var", 1000, 5, "an ectopic beat before the first sinus beat and one after the last"),
    ("trigeminy_var", 250, 3, "an ectopic beat 136 ms before the record's end"),
    # failing draws of `python benchmarks/segmentation.py --seeds 200` (record seeds as the case builder gets them)
    ("step_multi", 360, 611769301, "a step 0.24 s after a beat: a window shifted away from its edge took in the "
                                   "beat's S wave"),
    ("step_late", 360, 1659916773, "a late step seen from a shoulder of its envelope"),
    ("bigeminy_var", 250, 1028227658, "wide ectopic beats steep at 0.3 of the QRS slope in every lead, at 0.5 in "
                                      "0.6 of them"),
    ("bigeminy_var", 500, 82679357, "shorter ectopic beats at 0.05 of the sinus shape value"),
    ("trigeminy_var", 1000, 438821955, "a sinus beat 390 ms before a taller ectopic beat, once replaced by it as "
                                       "a T wave before its QRS"),
    ("bigeminy_var", 250, 70184977, "the record's first beat, a sinus beat before a taller ectopic beat"),
    ("bigeminy_var", 500, 125139734, "an ectopic first beat in the T-wave window of the record start"),
    ("bigeminy_var", 250, 191500654, "an ectopic beat 1.6 s before the first sinus beat (slow bigeminy)"),
    ("bigeminy_var", 1000, 1964708926, "a sinus beat at 0.125 s, closer to the first detection than the mean RR"),
    ("trigeminy_var", 500, 1226843171, "an ectopic beat after the last sinus beat"),
    ("trigeminy_var", 1000, 389162916, "ectopic beats of the decisions kept at an envelope lobe 80 ms past their "
                                       "steep part: the coupling and shape value taken there missed the tail one"),
    ("trigeminy_var", 250, 1670079142, "wide ectopic beats steep at 0.5 of the QRS slope in only 0.41 of the leads"),
    ("bigeminy_var", 360, 1034198221, "shorter ectopic beats at 0.03 of the sinus shape value"),
    ("trigeminy_var", 1000, 16, "wide ectopic beats, equivalent width 0.080 s, steep in 0.75 of the leads: absent "
                                "after the beats followed by the shorter gaps"),
    ("trigeminy_var", 360, 297152929, "wide ectopic beats, equivalent width 0.080-0.083 s"),
    ("trigeminy_var", 250, 458642238, "wide ectopic beats, equivalent width 0.078-0.080 s"),
    ("trigeminy_var", 250, 401794961, "wide ectopic beats as broad as a T wave, steep in 0.74 of the leads"),
    ("trigeminy_var", 250, 825497598, "wide ectopic beats as broad as a T wave"),
    ("trigeminy_var", 360, 1616785010, "wide ectopic beats as broad as a T wave"),
    ("trigeminy_var", 1000, 99539938, "wide ectopic beats as broad as a T wave"),
    ("bigeminy_var", 1000, 1647601513, "an ectopic beat 117 ms before the record's end, its envelope 0.082 s broad "
                                       "(the edge cuts it): judged by its likeness to the found ones"),
    ("af_fast", 250, 1896047064, "a QRS 248 ms after the previous one, whose highest envelope lobe lies 32 ms past "
                                 "its steepest instant: the refractory period measured between steepest instants"),
    ("af_fast", 1000, 1155719256, "a flat stretch's ripple (shape value 0.002 of a beat's) in a long gap is no "
                                  "ectopic beat"),
    ("low_voltage", 250, 247292838, "T waves beside a low QRS, broad and steep in every lead, in every gap: not "
                                    "coupled ectopic beats"),
    ("bigeminy_var", 250, 1572638876, "wide ectopic beats, equivalent width 0.080-0.082 s, after every sinus beat: "
                                      "a lead pattern unlike the sinus beat's (a T wave's is its QRS's up to sign)"),
    ("bigeminy_var", 250, 1369290023, "an ectopic beat whose steepest instant lies on its other flank (72 ms off): "
                                      "coupling intervals compared between envelope peaks too"),
    ("bigeminy", 250, 1347562282, "coupling intervals 0.47-0.58 s (sinus arrhythmia): alike within 100 ms"),
]


def test_head_search_not_led_by_p_waves():
    """Project generator record LVOLT 4 (250 Hz): waves 280 ms before each QRS that the decisions take for beats
    (then dropped as T waves before their QRS) once made the shortest RR short enough for the head search to add a
    beat at 64 ms, which then kept every one of those waves as a second morphology (10 false beats)."""
    x, ref = bc.generator_case("LVOLT", 250, 4)
    p = detect_r_peaks(x, 250.0)
    tol = int(0.15 * 250)
    _, fn, fp, _ = match_beats(ref, p, tol)
    assert fn == 0 and fp == 0, f"LVOLT record 4 at 250 Hz: {fn} missed, {fp} extra; reference {ref.tolist()}, ours {p.tolist()}"
@pytest.mark.parametrize("kind, index, why", [
    ("LBBB", 6, "T waves 0.3 s after a low, wide QRS, as narrow and steep: the next beat comes 1-1.5x their "
                "interval after them, no compensatory pause"),
    ("LVOLT", 18, "T waves 0.26 s after a low QRS, steep in most leads"),
    ("STE", 14, "waves 0.43 s after the beats"),
])
def test_generator_t_waves_not_coupled_beats(kind, index, why):
    """Project generator records (250 Hz) whose T waves repeat at one interval after every beat with one shape, as
    coupled ectopic beats do, but leave no pause after them: not beats."""
    x, ref = bc.generator_case(kind, 250, index)
    p = detect_r_peaks(x, 250.0)
    _, fn, fp, _ = match_beats(ref, p, int(0.15 * 250))
    assert fn == 0 and fp == 0, (f"{kind} record {index} at 250 Hz ({why}): {fn} missed, {fp} extra; reference "
                                 f"{ref.tolist()}, ours {p.tolist()}")


T_WAVE_REGRESSIONS = [
    ("low_voltage", 360, 1, "a T wave's envelope side peaks narrower than the T wave"),
    ("low_voltage", 1000, 11, "a T wave's side peak next to the QRS's own envelope lobe"),
]


@pytest.mark.parametrize("kind, fs, seed, why", REGRESSIONS + T_WAVE_REGRESSIONS)
def test_regression_draws(kind, fs, seed, why):
    build = bc.hard_case if kind in bc.HARD_KINDS else bc.synth_case
    x, ref = build(kind, fs, seed)
    check_draw(x, ref, float(fs), f"{kind} at {fs} Hz, seed {seed} ({why})")


# The draws beyond the committed 200 that fail (`python benchmarks/segmentation.py --seeds 600`, draws 200-599 of
# each case and rate; 4 of 25,600): known limits, strict (a fix makes them pass and must move them to REGRESSIONS).
KNOWN_LIMIT_DRAWS = [
    ("trigeminy_var", 250, 1431023810, "ectopic beats of 0.022 of the sinus beat's shape value (the coupled-beat rule "
                                       "asks 0.025), steep at half the QRS slope in 0.17 of the leads: all 4 missed "
                                       "(Se 70 %; NeuroKit2 on lead II 90 %)"),
    ("bigeminy_var", 250, 1743360224, "wide ectopic beats at the 0.08 s equivalent-width boundary: those at 0.080 s "
                                      "and up are judged broad and are steep in 0.67 of the leads (the broad rule "
                                      "asks 0.7): 2 of 6 missed (Se 84.6 %; NeuroKit2 38.5 %)"),
    ("low_voltage", 360, 1975714314, "T waves beside a low QRS with a higher envelope and 0.75 of its shape value "
                                     "(a wide wave needs under 0.7 to be a T wave), steep in every lead: each taken "
                                     "for a beat (+P 50 %; NeuroKit2 finds no beat at all)"),
    ("bigeminy", 500, 416968761, "the first beat, 0.128 s into the record, not reported (Se 90 %; NeuroKit2 misses "
                                 "it too)"),
]


@pytest.mark.parametrize("kind, fs, seed, why", [
    pytest.param(*case, marks=pytest.mark.xfail(strict=True, reason=f"known limit: {case[3]}"),
                 id=f"{case[0]}-{case[1]}-{case[2]}")
    for case in KNOWN_LIMIT_DRAWS])
def test_known_limit_draws(kind, fs, seed, why):
    build = bc.hard_case if kind in bc.HARD_KINDS else bc.synth_case
    x, ref = build(kind, fs, seed)
    check_draw(x, ref, float(fs), f"{kind} at {fs} Hz, seed {seed} ({why})")


@pytest.mark.parametrize("seed", [28, 51])
def test_noisy_mitbih_no_coupled_false_beats(mit, seed):
    """Noise bursts are not coupled ectopic beats: MIT-BIH 100 windows with white noise at 10 % of the QRS and
    mains hum (the draws of tests/test_beats.py::test_added_noise that the first coupled-ectopy rule took extra
    beats in; they must stand out of their gap and repeat at one coupling with one lead pattern)."""
    x0, fs, ref0 = mit
    rng = np.random.default_rng(seed)
    a = int(rng.uniform(0, x0.shape[1] / fs - 30) * fs)  # a 30 s window inside the recording (5 min in tests/data)
    assert a + int(30 * fs) <= x0.shape[1]
    b = a + int(30 * fs)
    x = np.ascontiguousarray(x0[:, a:b])
    ref = ref0[(ref0 >= a) & (ref0 < b)] - a
    assert ref.size >= 20, ref.size  # about 37 annotated beats in 30 s of record 100
    qrs = np.ptp(x, axis=1, keepdims=True)
    t = np.arange(x.shape[1]) / fs
    y = x + 0.1 * qrs * rng.normal(size=x.shape) + 0.2 * qrs * np.sin(2 * np.pi * 60.0 * t)
    p = detect_r_peaks(y, fs)
    _, fn, _, _ = match_beats(ref[(ref >= 0.1 * fs) & (ref < x.shape[1] - 0.1 * fs)], p, int(0.15 * fs))
    fp = match_beats(ref, p, int(0.15 * fs))[2]
    assert fn == 0 and fp == 0, f"seed {seed} (window from {a / fs:.1f} s): {fn} missed, {fp} extra"


# ---------------------------------------------------------------------------------------------------------------
# the rules themselves
# ---------------------------------------------------------------------------------------------------------------
def _slope_inputs(x, fs):
    D = max(1, int(round(fs / det.TARGET_FS)))
    fd = fs / D
    nd = (x.shape[1] + D - 1) // D
    k = max(1, int(round(det.SLOPE_S * fd)))
    xd, d, valid, finite, scales, weights = det.lead_signals(x, D, nd, k, fd)[:6]
    return xd, d, valid, finite, scales, weights, fd, k


@pytest.mark.parametrize("fs", bc.RATES)
def test_step_score_step_vs_qrs(fs):
    """A step (linear rise 0-10 ms) scores ~0, a QRS ~1, a QRS with a step at the same instant stays a QRS."""
    rng = np.random.default_rng(5)
    n = int(6 * fs)
    t = np.arange(n) / fs
    beats = np.arange(0.5, 6.0, 0.9)
    qrs = sum(np.exp(-0.5 * ((t - b) / 0.01) ** 2) - 0.3 * np.exp(-0.5 * ((t - b - 0.025) / 0.009) ** 2)
              for b in beats)
    x = np.stack([qrs * g for g in (1.0, 0.7, -0.5)]) + 0.005 * rng.normal(size=(3, n))
    for t0, lead_gain in ((2.6, (1.5, -1.2, 0.0)), (beats[4], (1.5, 0.0, 1.0))):  # a lone step; one on a QRS
        x = x + np.asarray(lead_gain)[:, None] * np.clip((t - t0) / 0.006, 0.0, 1.0)[None, :]
    xd, d, valid, finite, scales, weights, fd, k = _slope_inputs(x, float(fs))
    w = max(1, int(round(det.STEP_W_S * fd)))
    h = max(1, int(round(0.5 * det.MWI_S * fd)))

    def score(ts):
        c = int(round(ts * fd))
        return max(det.step_score(xd, d, valid, finite, scales, weights, cc, w, h, k) for cc in (c - 1, c, c + 1))

    assert score(2.6) < 0.2, score(2.6)
    for b in beats[1:-1]:
        if b == beats[4]:  # the QRS with a step at the same instant: rises and falls less evenly, still a QRS
            assert score(b) > det.STEP_MAX + 0.1, (b, score(b))
        else:
            assert score(b) > 0.8, (b, score(b))
    p = detect_r_peaks(x, float(fs))
    assert np.all(np.min(np.abs(p[:, None] - np.round(beats * fs)[None, :]), axis=1) <= 0.02 * fs), p
    assert p.size == beats.size, p


@pytest.mark.parametrize("fs", (250, 500))
def test_is_step_matches_step_score(fs):
    """is_step (the early answer, with lead_peaks shared with the shape values) gives step_score < STEP_MAX at every
    candidate and at +-1 and +-half a window of it, on the step and coupled-ectopy records and on noise; lead_peaks
    equals abs_max per candidate and lead."""
    rng = rng_for(f"test_is_step_matches_step_score_{fs}")
    records = [bc.hard_case(kind, float(fs), int(rng.integers(0, 2**31)))[0]
               for kind in ("step_t", "step_pair", "step_multi", "step_on_qrs", "bigeminy_var")]
    noise = rng.normal(size=(4, int(4 * fs))).cumsum(axis=1) * 0.01
    noise[1, int(2 * fs):] += 1.0  # a bare step
    records.append(noise)
    n_step = n_balanced = 0
    for x in records:
        xd, d, valid, finite, scales, weights, fd, k = _slope_inputs(x, float(fs))
        E, m = det.envelope(d, valid, scales, weights, fd)
        cand = det.candidates(m)
        w = max(1, int(round(det.STEP_W_S * fd)))
        h = max(1, int(round(0.5 * det.MWI_S * fd)))
        mx = det.lead_peaks(cand, d, scales, h)
        for ci, c in enumerate(cand):
            for l in range(d.shape[0]):
                ref = det.abs_max(d[l], max(0, c - h), min(d.shape[1], c + h + 1)) if scales[l] else 0.0
                assert mx[ci, l] == ref, (fs, c, l)
            for t in (c, c - 1, c + 1, c - w // 2, c + w // 2):
                row = det.lead_peaks(np.array([t]), d, scales, h)[0]
                ref = det.step_score(xd, d, valid, finite, scales, weights, t, w, h, k) < det.STEP_MAX
                assert det.is_step(xd, row, valid, finite, scales, weights, t, w, k) == ref, (fs, t)
                n_step += ref
                n_balanced += not ref
    assert n_step >= 5 and n_balanced >= 100, (n_step, n_balanced)  # both answers were asked


def test_t_window_boundary_inclusive():
    """A candidate exactly TWAVE_S after a beat is judged by the T-wave test (it used to be skipped one decimated
    sample short of it), one sample later it is not."""
    fd = det.TARGET_FS
    twave = int(round(det.TWAVE_S * fd))
    cand = np.array([100, 100 + twave, 100 + twave + 1], np.int64)
    m = np.zeros(400)
    m[cand] = (1.0, 0.7, 0.7)
    F = np.array([[1.0, 0.1, 0.1], [3.0, 3.0, 3.0], [4.0, 4.0, 4.0], [1.0, 0.2, 0.2]])  # q, width, ew, agreement
    assert det.is_t_wave(cand, m, F, 1, 0, twave, 7)  # on the boundary: judged (and a T wave by its shape)
    assert not det.is_t_wave(cand, m, F, 2, 0, twave, 7)  # past it: not judged


def test_hard_case_generator_is_what_it_says():
    """The provoking records hold what their names say: the ectopic beats at 300-600 ms coupling (bigeminy: every
    2nd beat, trigeminy: every 3rd), and the steps as big as asked in the leads asked."""
    for kind, period in (("bigeminy_var", 2), ("trigeminy_var", 3)):
        for seed in range(6):
            x, ref = bc.hard_case(kind, 500, seed)
            rr = np.diff(ref) / 500.0
            short = rr <= rr.min() + 0.02  # the coupling intervals (fixed, +-5 ms of jitter)
            assert np.all((rr[short] >= 0.295) & (rr[short] <= 0.605)), (kind, seed, rr)
            assert abs(short.sum() - rr.size / period) <= 1.5, (kind, seed, rr)
    x, ref = bc.hard_case("step_t", 500, 3)
    jump = np.abs(np.median(x[:, -400:], axis=1) - np.median(x[:, :400], axis=1))
    assert jump.max() > 0.4, jump  # a step of >= 0.8 x |R| in one or ten leads (beside wander)
