"""Training augmentations (melp_fast/data/augment.py) and their hook in the dataset."""

import os

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

START = int(os.environ.get("MELP_AUG_START", np.random.default_rng().integers(0, 5_000_000)))
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
    rng = np.random.default_rng(START)
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
    # on an ECG: same beats, a little displaced
    r, x = recs[0]
    y = Augment(**{**OFF, "warp": w}).record(x, 0)
    assert not np.allclose(y, x, atol=1e-3)
    before = beatlib.detect_r_peaks(r.signal, synthetic.FS)
    after = beatlib.detect_r_peaks((y - np.median(y)).astype(np.float32), synthetic.FS)
    assert abs(len(after) - len(before)) <= 1


def test_electrode_noise_level(recs):
    for k, (_, x) in enumerate(recs):
        y = Augment(**{**OFF, "noise": 0.01}).record(x, k)
        d = (y - np.median(y)) - _centred(x) * (np.ptp(y) / np.ptp(x))
        sd = d.std(1)
        assert (sd > 0).all() and sd.max() < 0.03, (sd.max(), START)


def test_mains_hum(recs):
    """Hum in 30 % of records: a 50 or 60 Hz line in every lead, at most ``hum`` of the range; none when off."""
    x = recs[2][1]
    n = x.shape[1]
    freqs = np.fft.rfftfreq(n, 1 / synthetic.FS)
    found = 0
    for k in range(40):
        y = Augment(**{**OFF, "hum": 0.02}).record(x, k)
        d = (y - np.median(y)) - _centred(x) * (np.ptp(y) / np.ptp(x))
        if np.abs(d).max() < 1e-6:
            continue
        found += 1
        spec = np.abs(np.fft.rfft(d, axis=1)).sum(0)
        assert freqs[np.argmax(spec)] in (50.0, 60.0), START
        assert np.abs(d).max() <= 0.02 * np.ptp(y) / np.ptp(x) + 1e-4, START
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
