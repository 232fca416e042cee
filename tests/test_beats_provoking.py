"""Beat detection on signals built to provoke its errors: T waves taken for beats, beats lost beside tall
T waves, wide, low-voltage, paced, bigeminal and fast irregular rhythms, at 250, 360, 500 and 1000 Hz.

Each case is scored against its reference beats and against NeuroKit2 (lead II) on the same records in the same
run: Se and +P >= 99.5% and never below NeuroKit2's, and no false detection 200-450 ms after a true beat (the
T-wave window). The real recordings are altered to provoke (T waves scaled to 1.5-2x the R
wave in some leads) and there the R points are also held to the annotations (|error| 95th percentile <= 10 ms).
Inputs are drawn at random from seeds fixed per case (so CI is repeatable; the seeds are in the failure messages);
MELP_TEST_SEED=<int> draws another fixed set, MELP_TEST_SEED=random a fresh one (printed, so it can be replayed);
`python -m pytest -m stress` and benchmarks/segmentation.py sweep many more records. The real recordings are the
repository's (tests/data: 5 min of MIT-BIH record 100; pydicom's 12-lead test ECG).
"""

from __future__ import annotations


import numpy as np
import pytest

from melp_fast.data.beats import detect_r_peaks

from melp_fast.testing import beat_cases as bc  # noqa: E402
from melp_fast.testing.common import match_beats  # noqa: E402
from helpers import rng_for  # noqa: E402

MIN_RATE = 0.995


def nk_peaks(sig, fs):
    pytest.importorskip("neurokit2")
    return bc.nk_peaks(sig, fs)


class Tally:
    """Se / +P over records; beats and detections within 100 ms of a record edge are not required / not counted."""

    def __init__(self):
        self.tp = self.fn = self.fp = self.t_fp = 0
        self.err_ms: list[np.ndarray] = []

    def add(self, ref, det, n, fs):
        m, tol = int(0.1 * fs), int(round(0.15 * fs))
        tp, fn, _, err = match_beats(ref[(ref >= m) & (ref < n - m)], det, tol)
        inner = det[(det >= m) & (det < n - m)]
        _, _, fp, _ = match_beats(ref, inner, tol)
        self.tp += tp
        self.fn += fn
        self.fp += fp
        self.t_fp += bc.t_window_fp(ref, inner, fs)
        self.err_ms.append(np.abs(err) * 1000.0 / fs)

    @property
    def se(self):
        return self.tp / max(1, self.tp + self.fn)

    @property
    def ppv(self):
        return self.tp / max(1, self.tp + self.fp)

    def p95_ms(self):
        return float(np.percentile(np.concatenate(self.err_ms), 95))

    def __repr__(self):
        counts = f"{self.tp} tp, {self.fn} fn, {self.fp} fp, {self.t_fp} in the T-wave window"
        return f"Se {100 * self.se:.2f} +P {100 * self.ppv:.2f} ({counts})"


def assert_holds(ours, theirs, what):
    assert ours.se >= MIN_RATE and ours.ppv >= MIN_RATE, f"{what}: ours {ours}"
    assert ours.t_fp == 0, f"{what}: detections in the T-wave window: ours {ours}"
    assert ours.se >= theirs.se and ours.ppv >= theirs.ppv, f"{what}: ours {ours} vs NeuroKit2 {theirs}"



def case_rng(*key) -> np.random.Generator:
    """The random generator of one test case: seeded from the case's name and the base seed (tests/helpers.py:
    MELP_TEST_SEED, default 2026, printed in failure reports)."""
    return rng_for(*key)


# ---------------------------------------------------------------------------------------------------------------
# synthetic records built to provoke each error
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fs", bc.RATES)
@pytest.mark.parametrize("kind", bc.KINDS)
def test_provoking_synthetic(kind, fs):
    seeds = case_rng(kind, fs).integers(0, 2**31, size=3)
    ours, theirs = Tally(), Tally()
    for s in seeds:
        x, ref = bc.synth_case(kind, fs, int(s))
        n = x.shape[1]
        ours.add(ref, detect_r_peaks(x, fs), n, fs)
        theirs.add(ref, nk_peaks(x[1], fs), n, fs)
    assert_holds(ours, theirs, f"{kind} at {fs} Hz, seeds {seeds.tolist()}")


@pytest.mark.parametrize("fs", bc.RATES)
def test_project_generator_records(fs):
    """Records of melp_fast.data.synthetic with bundle branch blocks, PVCs, AF, low voltage and ST elevation with
    hyperacute T waves, resampled to fs. Known limit: an early ectopic beat (RR < 0.8 x the record's median) whose
    envelope is within 1.4x the record's usual T wave, or that leaves no long compensatory gap, is taken for the
    previous beat's T wave (at most 11 of 3686 beats in the first 40 records of each label, at 250 Hz); such
    premature beats are held to NeuroKit2's sensitivity only, all other beats to 99.5%."""
    rng = case_rng("test_project_generator_records")
    ours, theirs, ours_pre, theirs_pre = Tally(), Tally(), Tally(), Tally()
    picked = []
    for kind in bc.GENERATOR_KINDS:
        i = int(rng.integers(0, 10))
        picked.append((kind, i))
        x, ref = bc.generator_case(kind, fs, i)
        rr = np.diff(ref)
        early = np.concatenate([[False], rr < 0.8 * np.median(rr)])
        p, q = detect_r_peaks(x, fs), nk_peaks(x[1], fs)
        ours.add(ref[~early], p[~near(p, ref[early], fs)], x.shape[1], fs)
        theirs.add(ref[~early], q[~near(q, ref[early], fs)], x.shape[1], fs)
        ours_pre.add(ref[early], p[near(p, ref[early], fs)], x.shape[1], fs)
        theirs_pre.add(ref[early], q[near(q, ref[early], fs)], x.shape[1], fs)
    what = f"generator records {picked} at {fs} Hz"
    assert_holds(ours, theirs, what)
    assert ours_pre.se >= theirs_pre.se and ours_pre.fp == 0, f"{what}, premature beats: {ours_pre} vs {theirs_pre}"


@pytest.mark.parametrize("fs", bc.RATES)
def test_early_ectopic_beats_found(fs):
    """Generator records whose early beats the detector once lost, each for its own reason: a wide QRS's envelope
    tail lobe taken for a second beat, which then claimed the PVC 300 ms later as part of itself (LBBB 7); a narrow
    sinus beat 250 ms before a wide PVC dropped as "a T wave before its QRS" for having half its energy (PVC 18); a
    slow PVC with a fifth of the sinus envelope in a compensatory gap (LBBB 25); and a P wave replaced by its own QRS
    (PVC 0). Every beat found within 150 ms, no extra detection (the generator's beat time is its template's
    centre, not an R peak, so R-point error is scored on the real recordings only). The records are those of the
    corpus the cases were found in; a later corpus (respiratory modulation, new AF) redraws them, and PVC 18 became
    another record (test_early_pvc_of_the_redrawn_pvc_18)."""
    for kind, i in (("LBBB", 7), ("LBBB", 25), ("PVC", 0)):
        _assert_all_found(kind, i, fs)


# PVC record 18 as corpus 5 draws it: a PVC 0.39 s after a sinus beat, then a 0.96 s pause, missed at 250, 500 and
# 1000 Hz (found at 360 Hz); NeuroKit2 misses it too and finds 6-7 of the record's 12 beats. Known limit, strict.
_PVC18_MISSED = {250, 500, 1000}


@pytest.mark.parametrize("fs", [pytest.param(f, marks=pytest.mark.xfail(
    strict=True, reason="known limit: an early PVC 0.39 s after its sinus beat (corpus 5's PVC record 18)"))
    if f in _PVC18_MISSED else f for f in bc.RATES])
def test_early_pvc_of_the_redrawn_pvc_18(fs):
    _assert_all_found("PVC", 18, fs)


def _assert_all_found(kind, i, fs):
    """Every beat of generator record (kind, i) found within 150 ms, no extra detection."""
    x, ref = bc.generator_case(kind, fs, i)
    n = x.shape[1]
    p = detect_r_peaks(x, fs)
    tol = int(0.15 * fs)
    m = int(0.1 * fs)
    _, fn, _, _ = match_beats(ref[(ref >= m) & (ref < n - m)], p, tol)
    fp = match_beats(ref, p, tol)[2]
    assert fn == 0 and fp == 0, f"{kind} record {i} at {fs} Hz: {fn} missed, {fp} extra"


def near(det, ref, fs):
    """Which detections lie within 150 ms of one of ref."""
    if ref.size == 0:
        return np.zeros(det.size, bool)
    return np.min(np.abs(det[:, None] - ref[None, :]), axis=1) <= 0.15 * fs


def test_t_window_counter():
    """The T-wave-class counter of the benchmark counts exactly the false detections 200-450 ms after a beat."""
    fs = 500.0
    ref = np.array([1000, 1500, 2000])
    det = np.array([1002, 1150, 1240, 1499, 1700, 2004, 2300])  # 1150: +300 ms; 1240: +480 ms; 1700: +400 ms
    assert bc.t_window_fp(ref, det, fs) == 2
    assert bc.t_window_fp(ref, ref, fs) == 0 and bc.t_window_fp(ref, np.zeros(0, np.int64), fs) == 0


# ---------------------------------------------------------------------------------------------------------------
# real recordings with tall T waves
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dcm_mv(dcm):
    """conftest's DICOM record in mV."""
    x, fs, ref = dcm
    return x / 1000.0, fs, ref


def test_scale_t_waves_makes_tall_t_waves(dcm_mv):
    """The alteration does what it says: T peaks at the asked multiple of the R amplitude, QRS untouched."""
    x, fs, ref = dcm_mv
    y = bc.scale_t_waves(x, ref, fs, [1, 9], 2.0)
    np.testing.assert_array_equal(y[[0, 2, 3, 4, 5, 6, 7, 8, 10, 11]], x[[0, 2, 3, 4, 5, 6, 7, 8, 10, 11]])
    for l in (1, 9):
        r_amp = np.median([np.ptp(x[l, r - 40 : r + 40]) for r in ref])
        t_amp = np.median([np.ptp(y[l, r + 150 : r + 500]) for r in ref[:-1]])
        assert 1.5 * r_amp < t_amp < 2.6 * r_amp, (l, r_amp, t_amp)
        for r in ref:
            np.testing.assert_array_equal(y[l, r - 60 : r + 100], x[l, r - 60 : r + 100])


@pytest.mark.parametrize("fs_new", bc.RATES)
def test_real_12_lead_tall_t_waves(dcm_mv, fs_new):
    """The DICOM 12-lead record with T waves scaled to 1.5-2x the R wave in lead II and 3-8 other leads."""
    rng = case_rng("test_real_12_lead_tall_t_waves")
    x, fs, ref = dcm_mv
    leads = np.union1d(rng.choice(12, size=int(rng.integers(3, 9)), replace=False), [1])
    factor = rng.uniform(1.5, 2.0, leads.size)
    y, r = bc.resample_to(bc.scale_t_waves(x, ref, fs, leads, factor), ref, fs, fs_new)
    ours, theirs = Tally(), Tally()
    ours.add(r, detect_r_peaks(y, fs_new), y.shape[1], fs_new)
    theirs.add(r, nk_peaks(y[1], fs_new), y.shape[1], fs_new)
    what = f"DICOM, T x {np.round(factor, 2).tolist()} in leads {leads.tolist()}, {fs_new} Hz"
    assert_holds(ours, theirs, what)
    assert ours.p95_ms() <= 10.0, (what, ours.p95_ms())


@pytest.mark.parametrize("fs_new", bc.RATES)
def test_real_mitbih_tall_t_waves(mit, fs_new):
    """60 s of MIT-BIH record 100 with the T waves of V5 scaled to 1.5-2x its R wave (MLII's T wave is too flat
    to be scaled into a physiological one)."""
    rng = case_rng("test_real_mitbih_tall_t_waves")
    x, fs, ref = mit
    a = int(rng.uniform(0, x.shape[1] / fs - 60.0) * fs)
    b = a + int(60.0 * fs)
    rw = ref[(ref >= a) & (ref < b)] - a
    factor = float(rng.uniform(1.5, 2.0))
    y, r = bc.resample_to(bc.scale_t_waves(x[:, a:b], rw, fs, [1], factor), rw, fs, fs_new)
    ours, theirs = Tally(), Tally()
    ours.add(r, detect_r_peaks(y, fs_new), y.shape[1], fs_new)
    theirs.add(r, nk_peaks(y[0], fs_new), y.shape[1], fs_new)
    what = f"MIT-BIH 100 from {a / fs:.1f} s, V5 T x {factor:.2f}, {fs_new} Hz"
    assert_holds(ours, theirs, what)
    assert ours.p95_ms() <= 10.0, (what, ours.p95_ms())


# ---------------------------------------------------------------------------------------------------------------
# regression cases found by the stress command (python -m pytest -m stress): expected to fail until fixed, then kept
# as plain regression cases
# ---------------------------------------------------------------------------------------------------------------
def test_regression_bigeminy_250hz_seed_2013483785():
    """Found whole since the coupled-ectopy pass (it lost every second beat, 6 of 12, before)."""
    fs = 250
    x, ref = bc.synth_case("bigeminy", fs, 2013483785)
    ours = Tally()
    ours.add(ref, detect_r_peaks(x, fs), x.shape[1], fs)
    assert ours.se >= MIN_RATE and ours.ppv >= MIN_RATE and ours.t_fp == 0, f"bigeminy, 250 Hz, seed 2013483785: {ours}"
