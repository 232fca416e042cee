"""The embedded synthetic corpus: determinism, format, class balance and label/signal consistency."""

import numpy as np
import pytest

from melp_fast.data.synthetic import (
    CLASS_NAMES,
    CLASSES,
    FS,
    LEADS,
    N_SAMPLES,
    PROMPTS,
    SyntheticRecord,
    generate_record,
    generate_split,
    split_indices,
)

from helpers import seed_for

# the module's records start at an index drawn from the base seed: fixed by default, another set with
# MELP_TEST_SEED=<int> or =random (tests/helpers.py); the start is in the failure messages, the replay command in
# pytest's report of every failure. Under the default base seed the key "test_synthetic" drew START 1572827, whose
# records failed test_tall_t_waves_alone_do_not_mean_st_elevation by a hair under corpus 4 (AUROC 0.705, limit
# 0.7; 15 other draws measured passed): that draw is kept as a regression case
# (test_regression_tall_t_auroc_start_1572827) and the module draws from the key "test_synthetic/2"
START = seed_for("test_synthetic/2", high=5_000_000)
N = 400


@pytest.fixture(scope="module")
def records():
    return [generate_record(i) for i in range(START, START + N)]


@pytest.fixture(scope="module")
def labels(records):
    lab = np.stack([r.labels for r in records]).astype(bool)
    return {c: lab[:, i] for i, c in enumerate(CLASSES)}


@pytest.fixture(scope="module")
def records2(records):
    """Twice the module's records, for statistics of a small group (STE, marked sinus arrhythmia)."""
    return list(records) + [generate_record(i) for i in range(START + N, START + 2 * N)]


@pytest.fixture(scope="module")
def labels2(records2):
    lab = np.stack([r.labels for r in records2]).astype(bool)
    return {c: lab[:, i] for i, c in enumerate(CLASSES)}


# ---------------------------------------------------------------------------------------- signal measurements


def _avg_beat(r, pre=0.45, post=0.45):
    a, b = int(pre * FS), int(post * FS)
    ok = [p for p in r.r_peaks if p - a >= 0 and p + b <= r.signal.shape[1]]
    return np.mean([r.signal[:, p - a:p + b] for p in ok], 0), a


def _qrs_width_ms(r):
    """Span where the smoothed spatial velocity of the average beat exceeds 15% of its peak."""
    m, a = _avg_beat(r)
    k = np.ones(7) / 7
    sm = np.stack([np.convolve(x, k, mode="same") for x in m])
    v = np.sqrt((np.diff(sm, axis=1) ** 2).sum(0))[a - 60:a + 60]
    idx = np.nonzero(v > 0.15 * v.max())[0]
    return (idx[-1] - idx[0]) / FS * 1000


def _limb_p2p(r):
    m, a = _avg_beat(r)
    w = m[:6, a - 50:a + 50]
    return (w.max(1) - w.min(1)).max()


def _rr_cv(r):
    d = np.diff(r.r_peaks)
    return d.std() / d.mean()


def _hr(r):
    return 60.0 * FS / np.diff(r.r_peaks).mean()


def _p_to_r_ms(r):
    """Distance from the P peak in lead II to the R peak, on the average beat."""
    m, a = _avg_beat(r)
    lo, hi = int(0.36 * FS), int(0.07 * FS)
    return (lo - np.argmax(m[1, a - lo:a - hi])) / FS * 1000


def _st_shift(r):
    """Largest |ST level 80 ms after R - PR level 60 ms before R| over the 12 leads."""
    m, a = _avg_beat(r)
    return np.abs(m[:, a + int(0.08 * FS)] - m[:, a - int(0.06 * FS)]).max()


def _auc(pos, neg):
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


# ---------------------------------------------------------------------------------------- API and format


def test_constants_and_vocabulary():
    assert FS == 500 and N_SAMPLES == 5000
    assert LEADS == ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    assert CLASSES == ("SR", "SB", "STACH", "AF", "IAVB", "LBBB", "RBBB", "PVC", "STE", "LVOLT")
    for c in CLASSES:
        assert CLASS_NAMES[c] and CLASS_NAMES[c] == CLASS_NAMES[c].lower()
        assert CLASS_NAMES[c] in PROMPTS[c], c
    assert set(CLASS_NAMES) == set(PROMPTS) == set(CLASSES)


def test_determinism():
    idx = START + 12345
    a, b = generate_record(idx), generate_record(idx)
    assert np.array_equal(a.signal, b.signal)
    assert a.report == b.report
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.r_peaks, b.r_peaks)
    c, d = generate_record(idx, seed=1), generate_record(idx + 1)
    assert not np.array_equal(a.signal, c.signal)
    assert not np.array_equal(a.signal, d.signal)


def test_shapes_and_dtypes(records):
    for r in records[:50]:
        assert isinstance(r, SyntheticRecord)
        assert r.signal.shape == (12, N_SAMPLES) and r.signal.dtype == np.float32
        assert np.isfinite(r.signal).all()
        assert r.labels.shape == (len(CLASSES),) and r.labels.dtype == np.float32
        assert set(np.unique(r.labels)) <= {0.0, 1.0}
        assert r.r_peaks.dtype == np.int64 and r.r_peaks.ndim == 1
        assert (np.diff(r.r_peaks) > 0).all()
        assert r.r_peaks.min() >= 0 and r.r_peaks.max() < N_SAMPLES
        assert len(r.r_peaks) >= 5, f"start={START}"
        # millivolt scale: a QRS of a few tenths to a few mV
        assert 0.2 < np.abs(r.signal).max() < 8.0


def test_exactly_one_rhythm_and_exclusivity(labels):
    rhythm = np.stack([labels[c] for c in ("SR", "SB", "STACH", "AF")]).sum(0)
    assert (rhythm == 1).all()
    assert not (labels["LBBB"] & labels["RBBB"]).any()
    assert not (labels["AF"] & labels["IAVB"]).any()


def test_report_format(records, labels):
    for r in records:
        rep = r.report
        assert rep == rep.lower() and rep.endswith(".") and not rep.endswith("..")
        assert ".." not in rep and "  " not in rep
        assert all(s.strip() for s in rep[:-1].split(". "))
        assert len(rep.split()) >= 4, rep
    # the report names each positive label (in some wording) and not the absent rhythms
    words = {
        "SR": ("sinus rhythm",), "SB": ("sinus bradycardia",), "STACH": ("sinus tachycardia",),
        "AF": ("atrial fibrillation",), "IAVB": ("av block", "a-v block", "atrioventricular block", "pr interval"),
        "LBBB": ("left bundle branch block",), "RBBB": ("right bundle branch block",),
        "PVC": ("premature ventricular", "ventricular premature", "pvc"), "STE": ("st elevation",),
        "LVOLT": ("low qrs voltage", "low voltage qrs"),
    }
    rhythms = ("SR", "SB", "STACH", "AF")
    for i, r in enumerate(records):
        no_rhythm = not any(w in r.report for c in rhythms for w in words[c])
        for c in CLASSES:
            said = any(w in r.report for w in words[c])
            # a rhythm may go unsaid (synthetic._P_NO_RHYTHM), but only where a diagnostic finding is stated
            if c in rhythms and no_rhythm:
                assert any(labels[d][i] for d in CLASSES[4:]), (START + i, r.report)
                continue
            assert said == bool(labels[c][i]), (START + i, c, r.report)
        if labels["SR"][i] and not any(labels[c][i] for c in CLASSES[4:]) and "axis" not in r.report:
            assert "abnormal" not in r.report
        if "normal ecg" in r.report.replace("abnormal ecg", "").replace("otherwise normal ecg", ""):
            assert labels["SR"][i] and not any(labels[c][i] for c in CLASSES[4:])


def test_rhythm_left_out_of_some_finding_reports_of_every_rhythm(records2, labels2):
    """Reports that state a finding without the rhythm: about 25 % of those with a diagnostic finding,
    in every rhythm, so that a one-finding prompt is not drawn toward one rhythm."""
    rhythm_words = ("sinus", "atrial fibrillation")
    finding = np.stack([labels2[c] for c in CLASSES[4:]]).any(0)
    left_out = np.array([not any(w in r.report for w in rhythm_words) for r in records2])
    assert not left_out[~finding].any(), START
    assert 0.12 <= left_out[finding].mean() <= 0.32, (left_out[finding].mean(), START)
    for c in ("SR", "SB", "STACH", "AF"):
        assert left_out[finding & labels2[c]].any(), (c, START)


def test_class_frequencies(labels):
    for c in CLASSES:
        assert labels[c].mean() >= 0.08, (c, labels[c].mean(), START)


def test_einthoven_goldberger(records):
    for r in records[:40]:
        s = r.signal.astype(np.float64)
        i, ii, iii, avr, avl, avf = s[:6]
        assert np.abs(iii - (ii - i)).max() < 1e-5
        assert np.abs(avr + (i + ii) / 2).max() < 1e-5
        assert np.abs(avl - (i - ii / 2)).max() < 1e-5
        assert np.abs(avf - (ii - i / 2)).max() < 1e-5


# ---------------------------------------------------------------------------------------- labels vs signal


def test_rates_from_r_peaks(records, labels):
    ok = ~labels["PVC"]
    lim = {"SR": (60, 100), "SB": (40, 59.5), "STACH": (100.5, 150)}
    for i, r in enumerate(records):
        if not ok[i]:
            continue
        for c, (lo, hi) in lim.items():
            if labels[c][i]:
                assert lo - 1.5 <= _hr(r) <= hi + 1.5, (START + i, c, _hr(r))


def test_af_is_irregular(records, labels):
    ok = ~labels["PVC"]
    cv = np.array([_rr_cv(r) for r in records])
    af, sinus = cv[labels["AF"] & ok], cv[~labels["AF"] & ok]
    assert len(af) >= 20 and len(sinus) >= 100
    assert sinus.max() < 0.08, START
    assert np.median(af) > 4 * np.median(sinus)
    assert (af > 0.08).mean() > 0.95, START


def test_pvc_beats_are_premature(records, labels):
    ratio = np.array([np.diff(r.r_peaks).min() / np.median(np.diff(r.r_peaks)) for r in records])
    pvc, clean = labels["PVC"] & ~labels["AF"], ~labels["PVC"] & ~labels["AF"]
    assert (ratio[pvc] < 0.8).all(), START
    assert (ratio[clean] > 0.85).all(), START


def test_bundle_branch_blocks_widen_the_qrs(records, labels):
    ok = ~labels["PVC"]
    w = np.array([_qrs_width_ms(r) for r in records])
    normal = w[~labels["LBBB"] & ~labels["RBBB"] & ok]
    lbbb, rbbb = w[labels["LBBB"] & ok], w[labels["RBBB"] & ok]
    assert len(lbbb) >= 10 and len(rbbb) >= 10
    assert np.median(lbbb) > np.median(normal) + 50, (np.median(lbbb), np.median(normal), START)
    assert np.median(rbbb) > np.median(normal) + 20, (np.median(rbbb), np.median(normal), START)
    assert _auc(lbbb, normal) > 0.9 and _auc(rbbb, normal) > 0.75


def test_low_voltage(records, labels):
    # the window around R would take in part of an elevated ST segment, which is not QRS voltage
    ok = ~labels["PVC"] & ~labels["STE"]
    p2p = np.array([_limb_p2p(r) for r in records])
    low, other = p2p[labels["LVOLT"] & ok], p2p[~labels["LVOLT"] & ok]
    assert low.max() < min(0.65, np.median(other)), (low.max(), START)
    assert np.median(low) < 0.5 and (other > 0.5).mean() > 0.97


def test_first_degree_av_block_prolongs_pr(records, labels):
    sel = (labels["SR"] | labels["SB"]) & ~labels["PVC"] & ~labels["LBBB"] & ~labels["RBBB"]
    pr = np.array([_p_to_r_ms(r) if s else 0.0 for r, s in zip(records, sel)])
    iavb, normal = pr[sel & labels["IAVB"]], pr[sel & ~labels["IAVB"]]
    assert len(iavb) >= 5
    assert np.median(iavb) > np.median(normal) + 60, START
    assert _auc(iavb, normal) > 0.9


def test_st_elevation_is_visible(records, labels):
    sel = ~labels["PVC"] & ~labels["LBBB"] & ~labels["RBBB"]
    st = np.array([_st_shift(r) for r in records])
    ste, other = st[sel & labels["STE"]], st[sel & ~labels["STE"]]
    assert len(ste) >= 10
    assert np.median(ste) > 0.15 and np.median(ste) > 3 * np.median(other), START
    assert _auc(ste, other) > 0.85


# ---------------------------------------------------------------------------------------- splits


def test_splits_disjoint_and_reproducible():
    tr, te, va = split_indices("train", 1000), split_indices("test", 1000), split_indices("val", 1000)
    assert tr == range(0, 1000)
    assert not set(tr) & set(te) and not set(tr) & set(va) and not set(te) & set(va)
    assert split_indices("train", 10_000_000)[-1] < split_indices("test", 1)[0]
    assert split_indices("validation", 5) == split_indices("val", 5)
    with pytest.raises(ValueError):
        split_indices("nope", 3)
    a = generate_split("test", 3, seed=2)
    assert len(a) == 3
    for k, rec in zip(split_indices("test", 3), a):
        b = generate_record(k, seed=2)
        assert np.array_equal(rec.signal, b.signal) and rec.report == b.report
    assert generate_split("train", 1)[0].report == generate_record(0).report


# ---------------------------------------------------------------------------------------- calibration and variants


def _calibration():
    from benchmarks import calibration

    return calibration


def test_tall_t_waves_alone_do_not_mean_st_elevation(records2, labels2):
    """T height in V2-V4 must not separate ST elevation from the rest (normal tall precordial T is common);
    and the healthy records hold tall T waves (> 0.8 mV) and J-point elevation in V2-V3 too. Twice the module's
    records (about 50 STE records, not 25: the AUROC's spread across fresh seeds is then ~0.05, not ~0.08)."""
    c = _calibration()
    records, labels = records2, labels2
    sel = ~labels["PVC"] & ~labels["LBBB"] & ~labels["RBBB"] & ~labels["LVOLT"]
    t_max, stj = [], []
    for r, s in zip(records, sel):
        if not s:
            t_max.append(np.nan), stj.append(np.nan)
            continue
        st = c.measure(r.signal.astype(np.float64), r.r_peaks)
        t_max.append(max(st["T_V2"], st["T_V3"], st["T_V4"]))
        stj.append(st["stj_v2v3"])
    t_max, stj = np.array(t_max), np.array(stj)
    ste, other = t_max[sel & labels["STE"]], t_max[sel & ~labels["STE"]]
    assert _auc(ste, other) < 0.7, (_auc(ste, other), START)
    normal = sel & labels["SR"] & ~np.stack([labels[k] for k in CLASSES[4:]]).any(0)
    assert normal.sum() >= 15
    assert (t_max[normal] > 0.8).sum() >= 2, START  # ~20 % of healthy records
    assert (stj[normal] > 0.04).mean() > 0.15, START
    assert (stj[normal] < 0.2).all(), START  # under the 0.2 mV limit in V2-V3 (Thygesen 2018)


def test_regression_tall_t_auroc_start_1572827():
    """The draw that failed by a hair under corpus 4 (AUROC 0.705, limit 0.7); corpus 5 (atrial fibrillation and
    respiration redrawn) gives 0.688 on the same indices: kept as a fixed regression case."""
    recs = [generate_record(i) for i in range(1572827, 1572827 + 2 * N)]
    lab = np.stack([r.labels for r in recs]).astype(bool)
    test_tall_t_waves_alone_do_not_mean_st_elevation(recs, {c: lab[:, i] for i, c in enumerate(CLASSES)})


def test_normal_variants_belong_to_the_normal_class(records2, labels2):
    normal = labels2["SR"] & ~np.stack([labels2[k] for k in CLASSES[4:]]).any(0)
    reports = [r.report for r, n in zip(records2, normal) if n]
    assert any("early repolarization" in x for x in reports), START
    assert not any("st elevation" in x or "abnormal" in x for x in reports if "axis" not in x)
    # marked sinus arrhythmia (20 % of sinus records; RR modulation 5-9 %), still sinus. Counted over twice the
    # module's records: with ~80 normal records a fraction > 5 % failed on some fresh seeds (START 3338810)
    cv = np.array([_rr_cv(r) for r, n in zip(records2, normal) if n])
    assert (cv > 0.035).sum() >= 4 and cv.max() < 0.08, (int((cv > 0.035).sum()), cv.size, START)


def test_statistics_inside_the_published_and_real_ranges():
    """The calibration table (benchmarks/calibration.py) on a committed seed (derived from the default base seed;
    MELP_TEST_SEED draws others), the real recordings being the repository's (tests/data: 5 min of MIT-BIH 100;
    pydicom's ECG). Rule: every statistic's corpus median inside its reference range (published normal range widened
    to the real recordings' values, as in the committed table), and its 10th and 90th percentiles inside it within 2
    standard errors of those percentiles (bootstrap, 200 resamples). The margin is the corpus's own sampling spread:
    a group of ~56 normal records puts several percentiles 1.5-2.5 of their standard errors from a range limit
    (PR, P in II and T in II among them). Measured on corpus seeds 0-85 with the generator unchanged: without the
    margin 17 of 86 seeds fail (20 %, 10 different statistics), with 1 or 1.5 standard errors 2 and 1, with 2 none
    (the stress command reruns it on fresh seeds)."""
    c = _calibration()
    from helpers import MIT

    seed = seed_for("test_statistics_inside_the_published_and_real_ranges", high=1000)
    res, _ = c.rows(600, seed, q=(10, 90), mit_record=MIT)
    rng = np.random.default_rng(0)
    bad = []
    for r in res:
        lo, hi = r["reference"]
        v = r["values"][np.isfinite(r["values"])]
        assert v.size >= 20, (r["stat"], v.size, seed)
        boot = np.percentile(v[rng.integers(0, v.size, (200, v.size))], [10, 90], axis=1)
        se10, se90 = boot.std(axis=1)
        # rows' "p5" / "p95" hold its q percentiles: the 10th and 90th here
        if not (lo <= r["p50"] <= hi and r["p5"] >= lo - 2 * se10 and r["p95"] <= hi + 2 * se90):
            bad.append((r["stat"], (round(lo, 3), round(hi, 3)), r["p5"], r["p50"], r["p95"], (se10, se90)))
    assert not bad, (bad, seed)
