"""Beat detection on a real atrial fibrillation record with tall T waves: CPSC 2018 A0009 (tests/data/real).

A0009 is 16 s of AF at about 66 bpm (RR 0.6-1.9 s) whose T waves, in V1-V6, are broad humps as tall as the small
QRS complexes, 0.28-0.31 s after them. The reference beats below are the 16 QRS complexes on which our detector and
NeuroKit2 (lead II) agree within 4 samples (8 ms); every detection the two do not share was checked on the plotted leads
to be a T-wave hump 0.28-0.31 s after a QRS (ours before it judged a wave by the lag and lead pattern of the record's
other T waves: 696, 1059, 3793, 4879; NeuroKit2: 1065, 2476, 3802, 4887, 6782, 7247). In irregular AF a T wave at that
lag looks like an early beat with a pause after it; a T wave follows every beat at that lag with that lead pattern, an
ectopic beat only some.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat

from melp_fast.data.beats import detect_r_peaks
from melp_fast.testing import beat_cases as bc
from melp_fast.testing.common import match_beats

from test_beats_provoking import MIN_RATE, Tally

FS = 500
RECORD = Path(__file__).parent / "data" / "real" / "cpsc2018" / "A0009.mat"
REFERENCE = np.array([210, 553, 918, 1296, 1858, 2321, 3270, 3648, 4361, 4737, 5186, 6012, 6629, 7093, 7464, 7815])


def _record() -> np.ndarray:
    return np.asarray(loadmat(RECORD)["val"], dtype=np.float64) / 1000.0  # 1 uV steps -> mV


def _tally(det) -> Tally:
    t = Tally()
    t.add(REFERENCE, np.asarray(det), _record().shape[1], FS)
    return t


def test_reference_beats_are_the_ones_both_detectors_find():
    """The reference is what both detectors find: every reference beat is matched by ours and by NeuroKit2."""
    pytest.importorskip("neurokit2")
    x = _record()
    tol = int(0.15 * FS)
    for name, det in (("ours", detect_r_peaks(x, FS)), ("NeuroKit2", bc.nk_peaks(x[1], FS))):
        tp, fn, _, err = match_beats(REFERENCE, det, tol)
        assert fn == 0 and tp == len(REFERENCE), f"{name} misses reference beats of A0009"
        assert np.abs(err).max() <= 4, f"{name}'s R points are > 4 samples from the reference: {err}"


def test_not_below_neurokit2():
    pytest.importorskip("neurokit2")
    x = _record()
    ours, theirs = _tally(detect_r_peaks(x, FS)), _tally(bc.nk_peaks(x[1], FS))
    assert ours.se >= theirs.se and ours.ppv >= theirs.ppv, f"A0009: ours {ours} vs NeuroKit2 {theirs}"


def test_t_waves_of_a_real_af_record_are_not_beats():
    ours = _tally(detect_r_peaks(_record(), FS))
    assert ours.se >= MIN_RATE and ours.ppv >= MIN_RATE and ours.t_fp == 0, f"A0009: ours {ours}"
