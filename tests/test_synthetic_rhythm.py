"""The corpus's rhythms as resting ECGs show them: atrial fibrillation fast and slow, with fine to coarse, irregular
fibrillatory waves; regular sinus tachycardia; beats whose axis turns with respiration; premature complexes named
only on records that hold a premature beat. Records from an index drawn from the base seed (tests/helpers.py)."""

import re

import numpy as np
import pytest

from melp_fast.data import synthetic as syn

from helpers import rng_for, seed_for

START = seed_for("test_synthetic_rhythm", high=5_000_000)
N = 300


@pytest.fixture(scope="module")
def records():
    return [syn.generate_record(i) for i in range(START, START + N)]


@pytest.fixture(scope="module")
def labels(records):
    lab = np.stack([r.labels for r in records]).astype(bool)
    return {c: lab[:, i] for i, c in enumerate(syn.CLASSES)}


def _rr(r):
    return np.diff(r.r_peaks) / syn.FS


def _rate(r):
    return 60.0 / _rr(r).mean()


def _cv(r):
    d = _rr(r)
    return d.std() / d.mean()


def test_af_has_a_rapid_and_a_controlled_ventricular_response(records, labels):
    af = labels["AF"] & ~labels["PVC"]
    rate = np.array([_rate(r) for r in records])[af]
    assert af.sum() >= 40, START
    assert 0.45 <= (rate > 100).mean() <= 0.8, (np.round(rate), START)  # 60 % drawn at 100-160 bpm
    assert rate.max() > 150 and rate.min() < 80, (rate.min(), rate.max(), START)
    assert 50 <= rate.min() and rate.max() <= 175, (rate.min(), rate.max(), START)


def test_fast_af_is_irregular_and_sinus_tachycardia_regular(records, labels):
    """RR coefficient of variation at > 100 bpm: fast AF 6-40 % each, median 12-26 % (drawn 10-32 %, less the
    refractory floor); sinus tachycardia under 5 % each."""
    rate = np.array([_rate(r) for r in records])
    cv = np.array([_cv(r) for r in records])
    fast_af = labels["AF"] & ~labels["PVC"] & (rate > 100)
    stach = labels["STACH"] & ~labels["PVC"]
    assert fast_af.sum() >= 20 and stach.sum() >= 20, START
    assert ((cv[fast_af] > 0.06) & (cv[fast_af] < 0.40)).all(), (np.round(cv[fast_af], 3), START)
    assert 0.12 <= np.median(cv[fast_af]) <= 0.26, (np.median(cv[fast_af]), START)
    assert (cv[stach] < 0.05).all(), (cv[stach].max(), START)
    assert cv[fast_af].min() > 2 * cv[stach].max(), START


def _f_wave_stats(rng, n=200):
    """Peak amplitude (largest over the 12 leads) and spectral concentration (share of the 3-12 Hz power within
    +-0.5 Hz of the peak, in the lead of the largest wave) of ``n`` drawn f-wave signals."""
    t = np.arange(syn.N_SAMPLES) / syn.FS
    f = np.fft.rfftfreq(t.size, 1.0 / syn.FS)
    band = (f > 3) & (f < 12)
    amp, conc, peak = [], [], []
    for _ in range(n):
        leads = syn._LEAD12 @ syn._af_waves(rng, t)
        best = leads[int(np.argmax(np.abs(leads).max(1)))]
        p = np.abs(np.fft.rfft(best)) ** 2
        pk = f[band][np.argmax(p[band])]
        amp.append(np.abs(leads).max())
        conc.append(p[band & (np.abs(f - pk) < 0.5)].sum() / p[band].sum())
        peak.append(pk)
    return np.array(amp), np.array(conc), np.array(peak)


def test_f_waves_fine_to_coarse_and_irregular():
    """Fine waves (under 0.05 mV: a rhythm that must be read from the RR intervals) and coarse ones (over 0.12 mV)
    both common; 4-9 Hz; not a near-pure tone (the corpus-4 waves: median concentration 0.67, none under 0.059 mV)."""
    rng = rng_for("test_f_waves_fine_to_coarse_and_irregular")
    amp, conc, peak = _f_wave_stats(rng)
    assert (amp < 0.05).mean() >= 0.15 and (amp > 0.12).mean() >= 0.15, (np.percentile(amp, [5, 50, 95]))
    assert amp.min() >= 0.015 and amp.max() <= 0.4, (amp.min(), amp.max())
    assert ((peak >= 3.5) & (peak <= 9.5)).mean() >= 0.95, (np.percentile(peak, [5, 95]))
    assert np.median(conc) < 0.62 and (conc < 0.45).mean() >= 0.15, (np.percentile(conc, [5, 50, 95]))


def test_respiratory_rotations_are_small_proper_rotations():
    rng = rng_for("test_respiratory_rotations_are_small_proper_rotations")
    resp = np.sin(np.linspace(0.0, 6.0, 25))
    rot = syn._resp_rotations(rng, resp)
    assert rot.shape == (25, 3, 3)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    angle = np.degrees(np.arccos(np.clip((np.trace(rot, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)))
    lo, hi = syn._RESP_AXIS_DEG
    assert (angle <= hi * np.abs(resp) + 1e-6).all(), (angle)
    assert angle.max() >= lo * 0.9, angle.max()  # the largest |resp| here is ~1


def _qrs_variation(r):
    """Median over beats of the RMS difference between a beat's QRS and the median QRS, relative to the median
    QRS's RMS, in the 6 leads of the largest QRS (premature beats left out)."""
    d = np.diff(r.r_peaks)
    keep = [r.r_peaks[k] for k in range(1, len(r.r_peaks)) if d[k - 1] > 0.9 * np.median(d)]
    keep = [p for p in keep if p >= 40 and p + 60 <= r.signal.shape[1]]
    seg = np.stack([r.signal[:, p - 40:p + 60].astype(np.float64) for p in keep])
    seg -= seg.mean(2, keepdims=True)
    tmpl = np.median(seg, 0)
    lead = np.argsort((tmpl ** 2).mean(1))[-6:]
    err = np.sqrt(((seg - tmpl)[:, lead] ** 2).mean(2)) / np.sqrt((tmpl[lead] ** 2).mean(1))
    return float(np.median(err))


def test_beats_vary_with_respiration(records, labels):
    """Sinus beats are not copies: their QRS differs from the median one by several per cent (axis and amplitude
    swing with respiration, plus noise). Measured median: 0.073 (SE ~0.003); amplitude-only modulation (corpus 4):
    0.062."""
    sinus = (labels["SR"] | labels["SB"] | labels["STACH"]) & ~labels["PVC"]
    v = np.array([_qrs_variation(r) for r, s in zip(records, sinus) if s])
    assert len(v) >= 100, START
    assert 0.065 <= np.median(v) <= 0.12, (np.median(v), START)


def test_premature_complexes_named_only_with_a_premature_beat(records, labels):
    for i, r in enumerate(records):
        named = re.search(r"premature|pvc", r.report) is not None
        d = np.diff(r.r_peaks)
        assert named == bool(labels["PVC"][i]), (START + i, r.report)
        if named and not labels["AF"][i]:
            assert d.min() < 0.8 * np.median(d), (START + i, r.report)
