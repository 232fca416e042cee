"""Training augmentations (melp_fast/data/augment.py) and their hook in the dataset."""

import numpy as np
import pytest
import torch

from melp_fast.config import DataConfig
from melp_fast.data import beats as beatlib
from melp_fast.data import synthetic
from melp_fast.data.augment import Augment
from melp_fast.data.dataset import ECGTextDataset
from melp_fast.data.signal import preprocess
from melp_fast.data.store import write_store

from helpers import rng_for, seed_for

from melp_fast.testing.common import match_beats  # noqa: E402

# the module's records start at a fixed index drawn from the base seed (MELP_TEST_SEED; printed on failure)
START = seed_for("test_augment", high=5_000_000)
OFF = dict(gain=0.0, warp=0.0, noise=0.0, hum=0.0, lead_reversal_p=0.0)


@pytest.fixture(scope="module")
def recs():
    out = []
    for i in range(START, START + 6):
        r = synthetic.generate_record(i, 1)
        out.append((r, preprocess(r.signal, synthetic.FS)))
    return out


def _centred(x):
    return x - np.median(x)


def test_all_off_is_identity_and_output_is_a_preprocessed_record(recs):
    for k, (_, x) in enumerate(recs):
        y = Augment(**OFF).record(x, k)
        assert np.allclose(y, x, atol=1e-5), START
        z = Augment(seed=3).record(x, k, epoch=2)
        assert z.dtype == np.float32 and z.shape == x.shape
        assert abs(z.min()) < 1e-6 and abs(z.max() - 1) < 1e-6
        assert not np.allclose(z, x, atol=1e-3)


def test_deterministic_in_seed_epoch_index(recs):
    x = recs[0][1]
    a = Augment(seed=5)
    assert np.array_equal(a.record(x, 11, 1), a.record(x, 11, 1))
    assert not np.array_equal(a.record(x, 11, 1), a.record(x, 11, 2))
    assert not np.array_equal(a.record(x, 11, 1), a.record(x, 12, 1))
    assert not np.array_equal(a.record(x, 11, 1), Augment(seed=6).record(x, 11, 1))


def test_gain_scales_each_lead_within_bounds(recs):
    g = 0.2
    for k, (_, x) in enumerate(recs):
        y = Augment(**{**OFF, "gain": g}).record(x, k)
        # gain only: every lead is a scaled copy of itself (one common scale from the min-max, one per lead)
        xc, yc = _centred(x), y.astype(np.float64)
        ratios = []
        for i in range(12):
            s, t = np.polyfit(xc[i], yc[i], 1)  # y_i = s_i * x_i + t
            assert np.abs(yc[i] - (s * xc[i] + t)).max() < 1e-4
            ratios.append(s)
        ratios = np.array(ratios)
        assert (ratios > 0).all()
        spread = ratios.max() / ratios.min()
        assert 1.0 < spread <= (1 + g) ** 2 + 1e-6, (spread, START)
        # the offsets are one common value (the zero level of the high-passed signal)
        offs = [np.polyfit(xc[i], yc[i], 1)[1] for i in range(12)]
        assert np.ptp(offs) < 1e-4


def test_limb_lead_reversal(recs):
    for k, (r, x) in enumerate(recs):
        y = Augment(**{**OFF, "lead_reversal_p": 1.0}).record(x, k)
        xc = _centred(x)
        expect = np.stack([-xc[0], xc[2], xc[1], xc[4], xc[3], xc[5], *xc[6:]])
        s, t = np.polyfit(expect.ravel(), y.ravel(), 1)  # one scale and one offset for the whole record
        assert s > 0 and np.abs(y - (s * expect + t)).max() < 1e-4, START
        yc = y - t
        # Einthoven's law still holds on the reversed record (as on a real reversed ECG), up to the constant
        # by which the median misses the high-passed zero level
        i, ii, iii = yc[0], yc[1], yc[2]
        assert np.ptp(iii - (ii - i)) < 1e-3 * np.abs(yc).max()
    x = recs[0][1]
    assert np.allclose(Augment(**{**OFF, "lead_reversal_p": 0.0}).record(x, 0), x, atol=1e-5)


def test_time_warp_is_small_and_keeps_the_beats(recs):
    w = 0.02
    limit = w * 5000 / (2 * np.pi) + 1  # the largest shift of the warp, samples
    rng = rng_for("test_time_warp_is_small_and_keeps_the_beats")
    t = np.arange(5000)
    moved = 0
    for k in range(6):
        # narrow "beats" at known places on every lead
        pos = np.sort(rng.choice(np.arange(100, 4900, 300), 12, replace=False)) + rng.integers(-40, 40, 12)
        x = np.exp(-0.5 * ((t[None, :] - pos[:, None]) / 3.0) ** 2).sum(0)[None].repeat(12, 0)
        x = (x * rng.uniform(0.5, 1.0, (12, 1))).astype(np.float32)
        x = (x - x.min()) / (x.max() - x.min())
        y = Augment(**{**OFF, "warp": w}).record(x, k, epoch=int(rng.integers(5)))
        got = np.array([p - 60 + int(np.argmax(y[0, p - 60:p + 60])) for p in pos])
        assert np.abs(got - pos).max() <= limit, (np.abs(got - pos).max(), START)
        moved = max(moved, int(np.abs(got - pos).max()))
        assert y[0, got].min() > 0.9 * x[0, pos].min()  # the beats are still there, hardly blunted
    # it moves them (a warp's amplitude is drawn from [0, warp]: one record may barely move, not all six)
    assert moved >= 1, START
    # on ECGs: same beats, a little displaced. Like with like: the detector on the preprocessed record before and
    # after the warp (not on the raw record), on the module's records where it finds the generator's beats before the
    # warp (on some low-voltage / bundle-branch-block / PVC records it does not, with or without a warp: that is the
    # detector's limit, test_beats_provoking's business, not the warp's)
    tol = int(0.15 * synthetic.FS)
    checked = 0
    for k, (r, x) in enumerate(recs):
        before = beatlib.detect_r_peaks((x - np.median(x)).astype(np.float32), synthetic.FS)
        tp, fn, fp, _ = match_beats(r.r_peaks, before, tol)
        if fn or fp:
            continue
        checked += 1
        y = Augment(**{**OFF, "warp": w}).record(x, k)
        assert not np.allclose(y, x, atol=1e-3)
        after = beatlib.detect_r_peaks((y - np.median(y)).astype(np.float32), synthetic.FS)
        # the same beats (a beat at the record's edge may move out or in), most moved by at most the warp's shift
        # (the shift bound itself is checked exactly on the pulses above: the detector's R point on a wide ectopic
        # beat may move by more than the warp, e.g. 42 samples on record 5 of MELP_TEST_SEED=63581239)
        tp, fn, fp, err = match_beats(before, after, tol)
        assert fn + fp <= 1, (k, before, after, START)
        assert np.median(np.abs(err)) <= limit + 2, (k, before, after, START)
    assert checked >= 2, (checked, START)


def test_electrode_noise_level(recs):
    for k, (_, x) in enumerate(recs):
        y = Augment(**{**OFF, "noise": 0.01}).record(x, k)
        d = (y - np.median(y)) - _centred(x) * (np.ptp(y) / np.ptp(x))
        sd = d.std(1)
        assert (sd > 0).all() and sd.max() < 0.03, (sd.max(), START)


def _fit_hum(x, y, f):
    """Least-squares fit of y = s * x + t + a_l sin(2 pi f t) + b_l cos(2 pi f t) (one scale s and offset t for the
    record, a sine of its own amplitude and phase per lead): (s, per-lead hum amplitude, largest residual)."""
    n_leads, n = x.shape
    tt = 2 * np.pi * f * np.arange(n) / synthetic.FS
    cols = [x.ravel().astype(np.float64), np.ones(x.size)]
    for lead in range(n_leads):
        for base in (np.sin(tt), np.cos(tt)):
            c = np.zeros((n_leads, n))
            c[lead] = base
            cols.append(c.ravel())
    a = np.stack(cols, 1)
    coef, *_ = np.linalg.lstsq(a, y.ravel().astype(np.float64), rcond=None)
    amp = np.hypot(coef[2::2], coef[3::2])
    return coef[0], amp, float(np.abs(a @ coef - y.ravel()).max())


def test_mains_hum(recs):
    """Hum in 30 % of records: a 50 or 60 Hz line in every lead, at most ``hum`` of the range; none when off.

    Like with like: the augmented record is an affine map of (record + hum), min-max scaled again after the hum is
    added, so its scale s is not 1. Each output is fitted as s * x + t + a 50 or 60 Hz sine per lead (exact up to
    float32 rounding); the hum's amplitude in units of the record's range before the rescale is amp / s <= hum."""
    x = recs[2][1]
    hum = 0.02
    found = 0
    for k in range(40):
        y = Augment(**{**OFF, "hum": hum}).record(x, k)
        fits = {f: _fit_hum(x, y, f) for f in (50.0, 60.0)}
        f = min(fits, key=lambda g: fits[g][2])
        s, amp, resid = fits[f]
        assert resid < 2e-6 and s > 0, (k, f, resid, START)  # the record, rescaled, plus one sine: nothing else
        if amp.max() < 1e-6:
            assert np.abs(np.ptp(y) - 1) < 1e-6 and abs(s - 1) < 1e-5, (k, s)  # no hum: the record itself
            continue
        found += 1
        assert (amp > 0).all(), (k, amp)  # in every lead
        assert (amp / s).max() <= hum * (1 + 1e-4), (k, f, (amp / s).max(), START)
        assert (amp / amp.max()).min() >= 0.3 - 1e-4, (k, amp)  # a per-lead share in [0.3, 1]
    assert 4 <= found <= 22, found  # 30 % of 40 (binomial 99.9 % range)


def test_masked_leads_stay_zero(recs):
    x = recs[1][1].copy()
    keep = np.ones(12, bool)
    keep[[2, 7, 9]] = False
    x[~keep] = 0.0
    y = Augment(seed=1, lead_reversal_p=1.0).record(x, 4, present=keep)
    moved = keep[[0, 2, 1, 4, 3, 5, 6, 7, 8, 9, 10, 11]]
    assert (y[~moved] == 0).all() and (np.abs(y[moved]).max(1) > 0).all()
    assert abs(y[moved].min()) < 1e-6 and abs(y[moved].max() - 1) < 1e-6


def test_bad_settings_raise():
    for kw in ({"gain": -0.1}, {"warp": 0.5}, {"noise": float("nan")}, {"hum": -0.01}, {"lead_reversal_p": 1.5}):
        with pytest.raises(ValueError):
            Augment(**kw)


def test_config_switch():
    assert Augment.from_config(DataConfig()) is None
    cfg = DataConfig(augment=True, augment_gain=0.1, augment_warp=0.01, augment_noise=0.0, augment_hum=0.03,
                     augment_lead_reversal_p=0.5, seed=9)
    a = Augment.from_config(cfg)
    assert (a.gain, a.warp, a.noise, a.hum, a.lead_reversal_p, a.seed) == (0.1, 0.01, 0.0, 0.03, 0.5, 9)


def test_dataset_hook(tmp_path):
    rs = [synthetic.generate_record(i, 2) for i in range(START, START + 8)]
    store = write_store(tmp_path / "s", ((r.signal, r.report, r.labels) for r in rs), 8, leads=synthetic.LEADS,
                        classes=synthetic.CLASSES, progress=False)
    plain = ECGTextDataset(store, lead_mask_p=0.3, seed=4)
    aug = ECGTextDataset(store, lead_mask_p=0.3, seed=4, augment=Augment(seed=4))
    idx = [0, 3, 5, 7]
    a, b = plain.batch(idx), aug.batch(idx)
    assert b["ecg"].shape == a["ecg"].shape and b["ecg"].dtype == a["ecg"].dtype
    zero_a = a["ecg"].abs().amax(-1) == 0
    assert torch.equal(zero_a, b["ecg"].abs().amax(-1) == 0)  # the lead mask is kept
    assert not torch.allclose(a["ecg"], b["ecg"], atol=1e-3)
    assert b["ecg"].min() >= 0 and b["ecg"].max() <= 1 + 1e-6
    assert torch.equal(b["ecg"], aug.batch(idx)["ecg"])  # reproducible
    assert torch.equal(b["beat_spans"], a["beat_spans"]) and b["reports"] == a["reports"]
    aug.set_epoch(1)
    assert not torch.equal(b["ecg"], aug.batch(idx)["ecg"])
    # an item and the batch agree
    assert torch.equal(aug[3]["ecg"], aug.batch([3])["ecg"][0])
