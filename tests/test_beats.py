"""Tests of melp_fast.data.beats: accuracy on real recordings, robustness (units, polarity, NaN, flat, noise, wander,
sampling rates, short records) and the span / batch API."""

from __future__ import annotations

import numpy as np
import pytest

from melp_fast.data.beats import beat_spans, detect_r_peaks, segment_batch, token_spans

from melp_fast.testing import beat_cases as bc  # noqa: E402
from melp_fast.testing.common import match_beats  # noqa: E402  (the scoring helper lives beside the benchmarks)

from helpers import rng_for  # noqa: E402  (fixed, printed seeds; the recordings: conftest's fixtures `mit`, `dcm`)


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def last_start(mit, dur_s):
    """The latest start (s) of a dur_s window of the record."""
    x, fs, _ = mit
    return x.shape[1] / fs - dur_s


def window(mit, start_s, dur_s):
    """A window of record 100 (both leads, mV) and its reference beats, re-based to the window."""
    x, fs, ref = mit
    a, b = int(start_s * fs), int((start_s + dur_s) * fs)
    r = ref[(ref >= a) & (ref < b)] - a
    return np.ascontiguousarray(x[:, a:b]), fs, r


def inner(ref, n, fs, margin_s=0.1):
    """Reference beats at least margin_s from both record edges (beats cut by the edge are not required)."""
    m = int(margin_s * fs)
    return ref[(ref >= m) & (ref < n - m)]


def assert_accurate(peaks, ref, n, fs, max_err_ms=20.0, margin_s=0.1, edge_fp_s=0.0):
    """Every inner reference beat found within 150 ms and within max_err_ms; no detection that matches nothing
    (detections within edge_fp_s of the record edges excepted)."""
    tol = int(round(0.15 * fs))
    tp, fn, fp, err = match_beats(inner(ref, n, fs, margin_s), peaks, tol)
    # detections near the edges may match edge beats that were not required
    me = int(edge_fp_s * fs)
    _, _, fp_all, _ = match_beats(ref, peaks[(peaks >= me) & (peaks < n - me)], tol)
    assert fn == 0, f"missed {fn} beats"
    assert fp_all == 0, f"{fp_all} extra detections"
    assert np.all(np.abs(err) * 1000.0 / fs <= max_err_ms), np.abs(err).max() * 1000.0 / fs


def check_output(p, n):
    assert p.dtype == np.int64 and p.ndim == 1
    assert np.all(np.diff(p) > 0), "sorted and unique"
    assert p.size == 0 or (p[0] >= 0 and p[-1] < n)


# ---------------------------------------------------------------------------------------------------------------
# accuracy on real recordings (the acceptance criteria)
# ---------------------------------------------------------------------------------------------------------------
def test_mitbih_100_whole_record_both_leads(mit):
    x, fs, ref = mit
    p = detect_r_peaks(x, fs)
    check_output(p, x.shape[1])
    tp, fn, fp, err = match_beats(ref, p, int(round(0.15 * fs)))
    se, ppv = tp / (tp + fn), tp / (tp + fp)
    assert se >= 0.997 and ppv >= 0.997, (se, ppv)
    err_ms = np.abs(err) * 1000.0 / fs
    assert np.mean(err_ms <= 20.0) >= 0.95
    assert np.median(err_ms) <= 3.0  # on the R peak itself (MIT-BIH marks are within a sample of the maximum)


def test_dicom_12_lead_all_reference_r_points(dcm):
    x, fs, ref = dcm
    assert ref.size == 10
    p = detect_r_peaks(x, fs)
    check_output(p, x.shape[1])
    tp, fn, fp, err = match_beats(ref, p, int(round(0.15 * fs)))
    assert (tp, fn, fp) == (10, 0, 0)
    assert np.all(np.abs(err) * 1000.0 / fs <= 20.0), err


# ---------------------------------------------------------------------------------------------------------------
# units, polarity, sampling rate
# ---------------------------------------------------------------------------------------------------------------
def test_any_unit_and_scale_gives_the_same_peaks(mit):
    """mV, microvolts (float32, int16), a random gain and offset: the same peaks (the detector is invariant to a
    record-wide gain and to per-lead offsets). Per-lead gains (e.g. min-max scaling of each lead to [0, 1]) may
    change which lead places the R point (leads are ranked by QRS amplitude), so there the R points are checked
    against the reference instead."""
    rng = rng_for("test_any_unit_and_scale_gives_the_same_peaks")
    x, fs, ref = window(mit, rng.uniform(0, last_start(mit, 20.0)), 20.0)
    n = x.shape[1]
    base = detect_r_peaks(x, fs)
    assert_accurate(base, ref, n, fs)
    uv = x * 1000.0
    rand = x * 10.0 ** rng.uniform(-3, 4) + rng.uniform(-1e3, 1e3, size=(2, 1))
    for y in (uv, rand, uv.astype(np.float32), np.round(uv).astype(np.int16)):
        p = detect_r_peaks(y, fs)
        check_output(p, n)
        assert p.shape == base.shape
        assert np.abs(p - base).max() <= 1
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    minmax = (x - lo) / (hi - lo)
    per_lead = x * 10.0 ** rng.uniform(-3, 4, size=(2, 1)) + rng.uniform(-1e3, 1e3, size=(2, 1))
    for y in (minmax, per_lead, (minmax - lo.min()) / np.ptp(minmax)):
        assert_accurate(detect_r_peaks(y, fs), ref, n, fs)


def test_dicom_units(dcm):
    rng = rng_for("test_dicom_units")
    x, fs, ref = dcm
    base = detect_r_peaks(x, fs)
    for y in (x / 1000.0, (x - x.min()) / np.ptp(x), x * rng.uniform(1e-4, 1e4) + rng.normal(size=(12, 1))):
        p = detect_r_peaks(y, fs)
        assert p.shape == base.shape and np.abs(p - base).max() <= 1
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    assert_accurate(detect_r_peaks((x - lo) / (hi - lo), fs), ref, x.shape[1], fs, margin_s=0.0)


def test_inverted_polarity(mit):
    """A whole inverted record gives the same R points; one inverted lead among others changes nothing either."""
    rng = rng_for("test_inverted_polarity")
    x, fs, ref = window(mit, rng.uniform(0, last_start(mit, 20.0)), 20.0)
    base = detect_r_peaks(x, fs)
    p = detect_r_peaks(-x, fs)
    assert p.shape == base.shape and np.abs(p - base).max() <= 1
    y = x.copy()
    y[1] *= -1.0
    assert_accurate(detect_r_peaks(y, fs), ref, x.shape[1], fs)
    # single inverted lead alone: the R point is the (negative) extremum, still the same beat
    assert_accurate(detect_r_peaks(-x[0], fs), ref, x.shape[1], fs)


@pytest.mark.parametrize("fs_new", [250, 360, 500, 1000])
def test_sampling_rates(mit, fs_new):
    from scipy.signal import resample_poly

    rng = rng_for("test_sampling_rates", fs_new)
    x, fs, ref = window(mit, rng.uniform(0, last_start(mit, 30.0)), 30.0)
    g = np.gcd(int(fs_new), int(fs))
    y = resample_poly(x, int(fs_new) // g, int(fs) // g, axis=1)
    r = np.round(ref * fs_new / fs).astype(np.int64)
    assert_accurate(detect_r_peaks(y, float(fs_new)), r, y.shape[1], float(fs_new))


@pytest.mark.parametrize("fs_new", [250, 500])
def test_dicom_resampled(dcm, fs_new):
    from scipy.signal import resample_poly

    x, fs, ref = dcm
    y = resample_poly(x, int(fs_new), int(fs), axis=1)
    r = np.round(ref * fs_new / fs).astype(np.int64)
    assert_accurate(detect_r_peaks(y, float(fs_new)), r, y.shape[1], float(fs_new))


# ---------------------------------------------------------------------------------------------------------------
# missing data, flat leads, degenerate records
# ---------------------------------------------------------------------------------------------------------------
def test_nan_runs_are_missing_no_peak_invented(mit):
    """NaN runs in every lead: no detection inside a run; every beat >= 100 ms from a run is still found."""
    rng = rng_for("test_nan_runs_are_missing_no_peak_invented")
    x, fs, ref = window(mit, rng.uniform(0, last_start(mit, 20.0)), 20.0)
    n = x.shape[1]
    y = x.copy()
    runs = []
    for a_s in (rng.uniform(2, 6), rng.uniform(11, 15)):
        a, b = int(a_s * fs), int((a_s + rng.uniform(0.5, 3.0)) * fs)
        y[:, a:b] = np.nan
        runs.append((a, b))
    p = detect_r_peaks(y, fs)
    check_output(p, n)
    m = int(0.1 * fs)
    for a, b in runs:
        assert not np.any((p >= a) & (p < b)), "peak inside a NaN run"
    keep = np.ones(ref.size, bool)
    for a, b in runs:
        keep &= (ref < a - m) | (ref >= b + m)
    tp, fn, fp, err = match_beats(inner(ref[keep], n, fs), p, int(0.15 * fs))
    assert fn == 0 and np.all(np.abs(err) * 1000 / fs <= 20), (fn, np.abs(err).max())
    assert p.size - tp <= 2 * len(runs)  # at most a beat cut by each run edge


def test_nan_in_one_lead_other_lead_carries(mit):
    rng = rng_for("test_nan_in_one_lead_other_lead_carries")
    x, fs, ref = window(mit, rng.uniform(0, last_start(mit, 20.0)), 20.0)
    y = x.copy()
    a = int(rng.uniform(2, 10) * fs)
    y[0, a : a + int(5 * fs)] = np.nan  # lead MLII missing for 5 s: V5 carries detection and refinement
    y[1, :: int(rng.integers(50, 200))] = np.nan  # and scattered NaN samples in V5
    p = detect_r_peaks(y, fs)
    tp, fn, fp, err = match_beats(inner(ref, y.shape[1], fs), p, int(0.15 * fs))
    assert fn <= 2 and p.size - tp <= 2


def test_flat_and_zero_leads_are_ignored(mit):
    rng = rng_for("test_flat_and_zero_leads_are_ignored")
    x, fs, ref = window(mit, rng.uniform(0, last_start(mit, 20.0)), 20.0)
    n = x.shape[1]
    y = np.concatenate([x, np.zeros((1, n)), np.full((1, n), rng.normal()), np.full((1, n), np.nan)])
    y = y[rng.permutation(len(y))]
    assert_accurate(detect_r_peaks(y, fs), ref, n, fs)
    # a lead that is flat, zero-filled or all-NaN on its own has no beat
    for lead in (np.zeros(n), np.full(n, rng.normal()), np.full(n, np.nan)):
        assert detect_r_peaks(lead, fs).size == 0


def test_degenerate_records_return_empty():
    rng = rng_for("test_degenerate_records_return_empty")
    for y in (np.zeros((12, 5000)), np.full((12, 5000), np.nan), np.zeros((12, 0)), np.zeros((0, 5000)),
              np.full((3, 5000), np.inf), np.zeros(10)):
        p = detect_r_peaks(y, 500.0)
        assert p.dtype == np.int64 and p.size == 0
    # pure white noise on every lead: no lead passes the quality test -> nothing detected
    assert detect_r_peaks(rng.normal(size=(12, 5000)) * rng.uniform(1e-3, 1e3), 500.0).size == 0


def test_short_record(mit):
    """Shorter than 2 s: works the same way (statistics from the one short window) and returns the beats in it."""
    rng = rng_for("test_short_record")
    for dur in (1.5, 1.0):
        x, fs, ref = window(mit, rng.uniform(0, last_start(mit, dur)), dur)
        p = detect_r_peaks(x, fs)
        check_output(p, x.shape[1])
        assert_accurate(p, ref, x.shape[1], fs)


# ---------------------------------------------------------------------------------------------------------------
# noise and baseline wander
# ---------------------------------------------------------------------------------------------------------------
def test_strong_baseline_wander(mit):
    rng = rng_for("test_strong_baseline_wander")
    x, fs, ref = window(mit, rng.uniform(0, last_start(mit, 30.0)), 30.0)
    t = np.arange(x.shape[1]) / fs
    amp = np.ptp(x, axis=1, keepdims=True)  # wander 2x the record's peak-to-peak, plus a ramp and breathing
    w = amp * (2.0 * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t + rng.uniform(0, 6.3)) + 1.0 * t / t[-1])
    w += 0.5 * amp * np.sin(2 * np.pi * rng.uniform(0.2, 0.4) * t)
    # documented: under such wander a beat cut by the record edge (R within ~150 ms of it) may be lost or extra
    assert_accurate(detect_r_peaks(x + w, fs), ref, x.shape[1], fs, margin_s=0.15, edge_fp_s=0.15)


def test_added_noise(mit):
    """White noise at 10% of the QRS amplitude, and mains hum: still every beat, on the R peak (<= 20 ms)."""
    rng = rng_for("test_added_noise")
    x, fs, ref = window(mit, rng.uniform(0, last_start(mit, 30.0)), 30.0)
    qrs = np.ptp(x, axis=1, keepdims=True)
    t = np.arange(x.shape[1]) / fs
    y = x + 0.1 * qrs * rng.normal(size=x.shape) + 0.2 * qrs * np.sin(2 * np.pi * 60.0 * t)
    p = detect_r_peaks(y, fs)
    tp, fn, fp, err = match_beats(inner(ref, x.shape[1], fs), p, int(0.15 * fs))
    # extras are counted against every reference beat: a true beat within 100 ms of an edge is not required, but
    # finding it is no false positive (counting it as one failed ~1 run in 60 when both edges held a beat)
    _, _, fp_all, _ = match_beats(ref, p, int(0.15 * fs))
    assert fn == 0 and fp_all == 0, (fn, fp_all)
    assert np.mean(np.abs(err) * 1000 / fs <= 20) >= 0.95


# ---------------------------------------------------------------------------------------------------------------
# batch and spans
# ---------------------------------------------------------------------------------------------------------------
def test_segment_batch_matches_single_calls(mit):
    rng = rng_for("test_segment_batch_matches_single_calls")
    x, fs, _ = mit
    starts = rng.integers(0, x.shape[1] - 3600, size=12)
    recs = np.stack([x[:, s : s + 3600] for s in starts])
    recs[3] = 0.0  # an all-zero record in the batch
    recs[5] = -recs[5] * 1000.0
    peaks, counts = segment_batch(recs, fs, max_beats=32)
    assert peaks.shape == (12, 32) and peaks.dtype == np.int64 and counts.dtype == np.int64
    for i in range(len(recs)):
        p = detect_r_peaks(recs[i], fs)
        assert counts[i] == min(p.size, 32)
        np.testing.assert_array_equal(peaks[i, : counts[i]], p[:32])
        assert np.all(peaks[i, counts[i] :] == -1)
    assert counts[3] == 0
    small, c2 = segment_batch(recs, fs, max_beats=4)
    assert np.all(c2 == np.minimum(counts, 4)) and np.array_equal(small, peaks[:, :4])


def test_beat_spans_tile_and_contain_peaks():
    rng = rng_for("test_beat_spans_tile_and_contain_peaks")
    n = 5000
    for _ in range(20):
        r = np.sort(rng.choice(n, size=rng.integers(2, 30), replace=False))
        sp = beat_spans(r, n)
        assert sp.dtype == np.int64 and sp.shape == (r.size, 2)
        assert np.all(sp[:, 0] <= r) and np.all(r < sp[:, 1])  # each span holds its R peak
        assert np.all(sp[1:, 0] == sp[:-1, 1])  # contiguous, no overlap
        assert sp[0, 0] >= 0 and sp[-1, 1] <= n
        assert sp[0, 0] == max(0, r[0] - (r[1] - r[0]) // 2)
        assert sp[-1, 1] == min(n, r[-1] + (r[-1] - r[-2]) // 2 + 1)
    assert beat_spans(np.array([], np.int64), n).shape == (0, 2)
    np.testing.assert_array_equal(beat_spans([1234], n), [[0, n]])
    np.testing.assert_array_equal(beat_spans([300, 100, 300, -5, 9999], 1000), beat_spans([100, 300], 1000))


def test_token_spans_non_empty_inside_and_aligned():
    rng = rng_for("test_token_spans_non_empty_inside_and_aligned")
    n, stride, nt = 5000, 16, 312
    for _ in range(20):
        r = np.sort(rng.choice(n, size=rng.integers(2, 40), replace=False))
        sp = beat_spans(r, n)
        tk = token_spans(sp, stride, nt)
        assert tk.dtype == np.int64 and tk.shape == sp.shape
        assert np.all(tk[:, 1] > tk[:, 0]) and tk.min() >= 0 and tk[:, 1].max() <= nt
        # a token belongs to the beat that holds its centre sample, when that beat is wider than a token
        for (s, e), (a, b) in zip(sp, tk):
            if e - s >= stride and s < stride * nt - stride:
                assert s <= stride * a + stride // 2 < e or a == 0
                assert b == nt or stride * b + stride // 2 >= e
    # contiguous sample spans -> contiguous tokens; a beat in the last 8 samples gets the last token
    tk = token_spans(np.array([[0, 100], [100, 4995], [4995, 5000]]))
    np.testing.assert_array_equal(tk, [[0, 6], [6, 312], [311, 312]])


def test_real_record_token_spans(dcm):
    x, fs, ref = dcm
    from scipy.signal import resample_poly

    y = resample_poly(x, 1, 2, axis=1)  # 500 Hz, 5000 samples -> 312 tokens
    p = detect_r_peaks(y, 500.0)
    tk = token_spans(beat_spans(p, y.shape[1]))
    assert tk.shape == (10, 2) and np.all(tk[:, 1] > tk[:, 0]) and tk[:, 1].max() <= 312
    assert np.all((p // 16 >= tk[:, 0]) & (p // 16 < tk[:, 1]))  # the token of each R peak is in its beat


# ---------------------------------------------------------------------------------------------------------------
# the detector's fast helpers against their plain references
# ---------------------------------------------------------------------------------------------------------------
def test_fast_helpers_match_references():
    """median_of (insertion sort) equals np.median, abs_max (an integer max over bit patterns) equals max |v[a:b]| and
    its plain reference (signed zeros, subnormals, huge values too), and deviation_finite (integer order keys) gives
    its float reference's values and those of extrema_finite (the lead ranking's reduction without indices), on
    random inputs."""
    from melp_fast.data.beats import _detector as det

    rng = rng_for("test_fast_helpers_match_references")
    for n in range(1, 40):
        a = rng.normal(size=n)
        if n > 3:
            a[rng.integers(0, n, 2)] = a[0]  # ties
        assert det.median_of(a) == np.median(a), (n, a.tolist())
    assert np.isnan(det.median_of(np.zeros(0)))
    for _ in range(200):
        v = rng.normal(size=int(rng.integers(1, 60)))
        a = int(rng.integers(0, v.size))
        b = int(rng.integers(a, v.size + 1))
        ref = float(np.max(np.abs(v[a:b]))) if b > a else 0.0
        assert det.abs_max(v, a, b) == ref == det.abs_max_reference(v, a, b), (a, b, v.tolist())
    for _ in range(200):  # the integer max over bit patterns: signed zeros, subnormals, huge and tiny values
        v = rng.choice([0.0, -0.0, 5e-324, -5e-324, 1e-300, -1e300, 1.7e308, -1.0, 2.5], size=int(rng.integers(1, 40)))
        v = v * rng.choice([1.0, -1.0], size=v.size)
        a = int(rng.integers(0, v.size))
        b = int(rng.integers(a, v.size + 1))
        got = det.abs_max(v, a, b)
        ref = det.abs_max_reference(v, a, b)
        assert got == ref and not np.signbit(got), (a, b, v.tolist())
        assert got == (float(np.max(np.abs(v[a:b]))) if b > a else 0.0), (a, b, v.tolist())
    for _ in range(200):
        xl = np.cumsum(rng.normal(size=300))
        c = int(rng.integers(0, 300))
        w, h = int(rng.integers(1, 15)), int(rng.integers(15, 30))
        lo = int(rng.integers(0, c + 1))
        hi = int(rng.integers(c + 1, 301))
        _, vmax, _, vmin = det.extrema_finite(xl, c, w, h, lo, hi)
        got = det.deviation_finite(xl, c, w, h, lo, hi)
        assert np.allclose(got, (vmax, vmin), rtol=1e-12, atol=1e-12), (c, w, h)
        assert got == det.deviation_finite_reference(xl, c, w, h, lo, hi), (c, w, h)  # integer keys: the same floats
    import numba

    roundtrip = numba.njit(lambda v: det._bits_to_float(det.order_key_inverse(det.order_key(v))))
    key = numba.njit(lambda v: det.order_key(v))
    for v in rng.choice([0.0, -0.0, 5e-324, -5e-324, 1e-300, -1e300, 1.7e308, -1.7e308, -1.0, 2.5, np.inf, -np.inf],
                        size=200):  # order keys: the float order, and back to the same float
        back = roundtrip(v)
        assert back == v and np.signbit(back) == np.signbit(v), v
        assert (key(v) < key(2.5)) == (v < 2.5) or v == 2.5, v
        assert (key(v) > key(-1.0)) == (v > -1.0) or v == -1.0, v


def test_bit_helpers_same_under_fastmath():
    """abs_max, abs_max_bits and the order keys are integer operations on bit patterns: called from a fastmath caller
    (as step_score and deviation_finite call them; an unset fastmath is inherited from the first caller) they give
    the same results as from a plain one, NaN and inf included: abs_max of a range holding inf is inf, one holding
    NaN is NaN (a NaN's bits lie above inf's), and +-inf keep their place at the ends of the key order."""
    import numba

    from melp_fast.data.beats import _detector as det

    def wrappers(fm):
        amax = numba.njit(fastmath=fm)(lambda v, a, b: det.abs_max(v, a, b))
        abits = numba.njit(fastmath=fm)(lambda v, a, b: det.abs_max_bits(v.view(np.int64), a, b))
        key = numba.njit(fastmath=fm)(lambda v: det.order_key(v))
        return amax, abits, key

    rng = rng_for("test_bit_helpers_same_under_fastmath")
    fast, plain = wrappers(True), wrappers(False)
    for _ in range(100):
        v = rng.normal(size=int(rng.integers(2, 30)))
        i = int(rng.integers(0, v.size))
        v[i] = rng.choice([np.nan, -np.nan, np.inf, -np.inf])
        a = int(rng.integers(0, i + 1))
        b = int(rng.integers(i + 1, v.size + 1))  # the range holds v[i]
        for amax, abits, _ in (fast, plain):
            for got in (amax(v, a, b), abits(v, a, b)):
                if np.isnan(v[i]):
                    assert np.isnan(got), (a, b, v.tolist())
                else:
                    assert got == np.inf, (a, b, v.tolist())
    for _, _, key in (fast, plain):
        assert key(-np.inf) < key(-1.7e308) < key(-0.0) < key(0.0) < key(5e-324) < key(1.7e308) < key(np.inf)
        assert key(np.nan) > key(np.inf) and key(-np.nan) < key(-np.inf)  # (NaN: outside the float order's ends)
    for v in (np.nan, np.inf, -np.inf, -0.0, 2.5):
        assert fast[2](v) == plain[2](v), v


def test_decimate_matches_reference():
    """decimate (six or two leads at a time, unrolled block sums) equals the plain one-block-at-a-time reference bit for
    bit, at every factor the rates give, odd lead counts, partial last blocks, NaN / inf and float32 input."""
    from melp_fast.data.beats import _detector as det

    rng = rng_for("test_decimate_matches_reference")
    for D in (1, 2, 3, 4, 5, 6, 8, 11):
        for L in (1, 2, 3, 7, 12, 13):  # (six leads at a time for D = 2, 4, 8, then pairs, then an odd one)
            S = int(rng.integers(D, 40 * D))
            x = rng.normal(size=(L, S)) * 10.0 ** rng.uniform(-3, 3)
            x[rng.random(size=x.shape) < 0.02] = rng.choice([np.nan, np.inf, -np.inf])
            nd = (S + D - 1) // D
            for a in (x, x.astype(np.float32)):
                got, ref = det.decimate(a, D, nd), det.decimate_reference(a, D, nd)
                assert got.dtype == np.float64 and got.shape == (L, nd)
                assert np.array_equal(got, ref, equal_nan=True), (D, L, S, a.dtype)


def test_r_point_fast_paths_match_references():
    """extrema_ma_finite (an all-finite lead: integer order-key reductions, then the first sample of each extreme)
    gives extrema's (index, value) pairs bit for bit, with ties, plateaus, zeros, one-flank and no-flank windows and
    float32; pick_lead told which leads are all finite picks the lead it picks by scanning; median_ranked (ranks
    counted without a sort) equals median_of, with ties, signed zeros and NaN."""
    from melp_fast.data.beats import _detector as det

    rng = rng_for("test_r_point_fast_paths_match_references")
    n_tie = 0
    for _ in range(600):
        n = int(rng.integers(5, 200))
        xl = np.cumsum(rng.normal(size=n)) * 10.0 ** rng.uniform(-3, 3)
        if rng.random() < 0.3:  # plateaus and repeated values: ties in the window
            xl = np.round(xl / np.abs(xl).max() * 4.0)
            n_tie += 1
        if rng.random() < 0.1:
            xl[:] = 0.0
        if rng.random() < 0.3:
            xl = xl.astype(np.float32)
        c = int(rng.integers(0, n))
        w, h = int(rng.integers(0, 30)), int(rng.integers(0, 60))
        lo = int(rng.integers(0, c + 1))
        hi = int(rng.integers(c + 1, n + 1))
        m = int(rng.integers(0, 4))
        got = det.extrema_ma_finite(xl, c, w, h, lo, hi, m, np.full(2 * w + 1, np.nan))  # (scratch: zeroed there)
        ref = det.extrema(xl, c, w, h, lo, hi, m)
        assert got[0] == ref[0] and got[2] == ref[2], (n, c, w, h, lo, hi, m, got, ref)
        for a, b in ((got[1], ref[1]), (got[3], ref[3])):
            assert a == b and np.signbit(a) == np.signbit(b), (n, c, w, h, lo, hi, m, got, ref)
    assert n_tie > 100
    for _ in range(300):
        L, S = int(rng.integers(1, 8)), int(rng.integers(1, 60))
        x = rng.normal(size=(L, S))
        x[rng.random(size=x.shape) < rng.choice([0.0, 0.05, 0.5])] = rng.choice([np.nan, np.inf])
        amp = rng.uniform(0.0, 2.0, L) * (rng.random(L) < 0.8)
        order = np.argsort(-amp)
        raw = np.isfinite(x).all(axis=1)
        a = int(rng.integers(0, S))
        e = int(rng.integers(a, S + 1))
        assert det.pick_lead(x, order, amp, a, e, raw) == det.pick_lead(x, order, amp, a, e, np.zeros(L, bool))
    for n in list(range(0, 40)) * 5 + [60]:
        a = rng.normal(size=n)
        if n > 3:
            a[rng.integers(0, n, 2)] = a[0]  # ties
            a[rng.integers(0, n, 2)] = rng.choice([0.0, -0.0], size=2)
        if n > 0 and rng.random() < 0.1:
            a[rng.integers(0, n)] = np.nan
        want = det.median_of(a)
        got = det.median_ranked(a)
        assert (got == want and np.signbit(got) == np.signbit(want)) or (np.isnan(got) and np.isnan(want)), a.tolist()


def test_envelope_peak_helpers_match_references():
    """candidates (branch-free: written every sample, kept by the count) equals the local maxima of m (plateaus: their
    first sample), and steepest (a max reduction, then its first sample) equals the plain scan, on random envelopes
    with plateaus, zeros and ties, windows at and across the record edges."""
    from melp_fast.data.beats import _detector as det

    rng = rng_for("test_envelope_peak_helpers_match_references")
    for _ in range(300):
        nd = int(rng.integers(0, 120))
        m = np.round(rng.exponential(size=nd) * rng.choice([1.0, 4.0]), int(rng.integers(0, 3)))
        m[rng.random(size=nd) < 0.2] = 0.0
        n = np.arange(1, max(1, nd - 1))
        ref = n[(m[n] > 0) & (m[n] > m[n - 1]) & (m[n] >= m[np.minimum(n + 1, nd - 1)])] if nd > 2 else n[:0]
        assert np.array_equal(det.candidates(m), ref), m.tolist()
        for _ in range(5 if nd else 0):
            t, h = int(rng.integers(0, nd)), int(rng.integers(0, 12))
            assert det.steepest(m, t, h) == det.steepest_reference(m, t, h), (m.tolist(), t, h)


def test_lead_signals_envelope_sums_match_envelope():
    """The envelope's sums lead_signals adds lead by lead (add_lead while the slope is in the cache), finished by
    envelope_from_sums, equal envelope on its outputs bit for bit: provoking records at every rate, NaN / inf / zero
    runs, a lead all NaN, float32, and smooth sine records whose leads all fail the quality test (the smooth-lead
    fallback); lead_scale's all-valid path equals the masked one; and lead_signals' all-finite flags are the
    record's."""
    from melp_fast.data.beats import _detector as det

    rng = rng_for("test_lead_signals_envelope_sums_match_envelope")
    records = []
    for kind in ("tall_t", "bigeminy", "low_voltage", "paced"):
        for fs in bc.RATES:
            records.append((bc.synth_case(kind, float(fs), int(rng.integers(0, 2**31)))[0], float(fs)))
    for x, fs in list(records[::3]):
        y = x.copy()
        for _ in range(3):
            a = int(rng.integers(0, y.shape[1] - 50))
            y[int(rng.integers(0, y.shape[0])), a : a + int(rng.integers(1, 50))] = rng.choice([np.nan, np.inf, 0.0])
        y[int(rng.integers(0, y.shape[0]))] = np.nan
        records += [(y, fs), (y.astype(np.float32), fs)]
    t = np.arange(5000) / 500.0
    records.append((np.stack([np.sin(2 * np.pi * 1.2 * t), 0.5 * np.sin(2 * np.pi * 0.9 * t + 1.0)]), 500.0))
    n_fallback = n_all_valid = 0
    for x, fs in records:
        D = max(1, int(round(fs / det.TARGET_FS)))
        fd = fs / D
        nd = (x.shape[1] + D - 1) // D
        k = max(1, int(round(det.SLOPE_S * fd)))
        xd, d, valid, finite, scales, weights, raw, E, cnt = det.lead_signals(x, D, nd, k, fd)
        assert np.array_equal(raw, np.isfinite(x).all(axis=1)), fs
        if not np.any(scales > 0.0):
            continue
        got = det.envelope_from_sums(E, cnt, fd)
        ref = det.envelope(d, valid, scales, weights, fd)
        for a, b in zip(got, ref):
            assert np.array_equal(a.view(np.int64), b.view(np.int64)), fs
        wlen = max(2, int(round(fd)))
        vals = np.empty(max(1, nd // wlen))
        q = [det.lead_scale(d[l], valid[l], wlen, vals)[1] for l in range(x.shape[0])]
        n_fallback += all(v < det.MIN_QUALITY for v in q)
        for l in np.flatnonzero(valid.all(axis=1)):  # the all-valid path (the mask not read) gives the same floats
            n_all_valid += 1
            assert det.lead_scale(d[l], valid[l], wlen, vals, True) == det.lead_scale(d[l], valid[l], wlen, vals), fs
    assert n_fallback >= 1 and n_all_valid >= 50  # the smooth-lead fallback was taken


def test_smooth_matches_reference():
    """smooth (the lead's [1, 2, 1] / 4 smoothing and its finiteness in one pass) gives finite_sum's finiteness test and
    the plain smoothing, on random leads with NaN / inf, float32-sized values and short lengths."""
    from melp_fast.data.beats import _detector as det

    rng = rng_for("test_smooth_matches_reference")
    n_bad = 0
    for _ in range(300):
        nd = int(rng.integers(3, 300))
        xl = rng.normal(size=nd) * 10.0 ** rng.uniform(-3, 3)
        if rng.random() < 0.4:
            xl[rng.integers(0, nd, int(rng.integers(1, 4)))] = rng.choice([np.nan, np.inf, -np.inf])
            n_bad += 1
        s = np.full(nd, np.nan)
        fin = det.smooth(xl, s)
        assert fin == (abs(det.finite_sum(xl)) < np.inf) == bool(np.isfinite(xl).all()), xl.tolist()
        ref = np.empty(nd)
        ref[0] = 0.25 * (3.0 * xl[0] + xl[1])
        ref[-1] = 0.25 * (xl[-2] + 3.0 * xl[-1])
        ref[1:-1] = 0.25 * (xl[:-2] + 2.0 * xl[1:-1] + xl[2:])
        assert np.allclose(s, ref, rtol=1e-14, atol=0.0, equal_nan=True) or not fin, xl.tolist()
    assert n_bad > 50


def test_moving_average_matches_reference():
    """moving_average (2m + 1 vectorised passes inside the record) equals the plain per-sample sums bit for bit,
    windows at and across both record edges, NaN, float32."""
    from melp_fast.data.beats import _detector as det

    rng = rng_for("test_moving_average_matches_reference")
    for _ in range(300):
        nd = int(rng.integers(1, 80))
        xl = rng.normal(size=nd) * 10.0 ** rng.uniform(-3, 3)
        if rng.random() < 0.3:
            xl[rng.integers(0, nd)] = np.nan
        if rng.random() < 0.3:
            xl = xl.astype(np.float32)
        m = int(rng.integers(1, 6))
        a = int(rng.integers(0, nd))
        e = int(rng.integers(a, nd + 1))
        got, ref = det.moving_average(xl, a, e, m), det.moving_average_reference(xl, a, e, m)
        buf = np.full(e - a + int(rng.integers(0, 5)), np.nan)  # a longer scratch holding garbage
        assert np.array_equal(det.moving_average_into(xl, a, e, m, buf), ref, equal_nan=True), (nd, m, a, e)
        assert np.array_equal(got, ref, equal_nan=True), (nd, m, a, e, xl.dtype)


def test_equivalent_width_matches_reference():
    """equivalent_width (computed on demand for the coupled-ectopy rule) equals sum(min(E, p)) / p over +-2h, p the
    peak of E within +-h, on random envelopes, at and across the record edges."""
    from melp_fast.data.beats import _detector as det

    rng = rng_for("test_equivalent_width_matches_reference")
    for _ in range(300):
        nd = int(rng.integers(1, 60))
        E = rng.exponential(size=nd) * (rng.random(size=nd) < 0.8)
        t, h = int(rng.integers(0, nd)), int(rng.integers(1, 10))
        p = E[max(0, t - h) : t + h + 1].max()
        win = E[max(0, t - 2 * h) : t + 2 * h + 1]
        ref = np.minimum(win, p).sum() / p if p > 0 else np.inf
        assert np.isclose(det.equivalent_width(E, t, h), ref, rtol=1e-12), (nd, t, h)


def test_envelope_window_and_window_stats_match_references():
    """The envelope's moving-window integral (unclamped inside the record, clamped at the edges) equals the plain
    prefix-sum formula, 0 where no lead is valid; median_window_stats equals the medians of the windows' max and
    mean, and its reference bit for bit (eight windows side by side, or fewer); on random slopes, validity masks and
    short records."""
    from melp_fast.data.beats import _detector as det

    rng = rng_for("test_envelope_window_and_window_stats_match_references")
    for _ in range(100):
        L, nd = int(rng.integers(1, 5)), int(rng.integers(1, 400))
        fd = float(rng.choice([120.0, 125.0]))
        d = rng.normal(size=(L, nd))
        valid = (rng.random(size=(L, nd)) < 0.9).astype(np.float64)
        d *= valid
        scales = rng.uniform(0.5, 2.0, L) * (rng.random(L) < 0.8)
        weights = rng.uniform(0.1, 1.0, L)
        E, m = det.envelope(d, valid, scales, weights, fd)
        h = max(1, int(round(0.5 * det.MWI_S * fd)))
        c = np.concatenate([[0.0], np.cumsum(E)])
        n = np.arange(nd)
        ref = (c[np.minimum(n + h + 1, nd)] - c[np.maximum(n - h, 0)]) / (2 * h + 1)
        ref[((scales > 0)[:, None] * valid).sum(axis=0) == 0] = 0.0
        assert np.allclose(m, ref, rtol=1e-12, atol=1e-15), (L, nd, fd)
        wlen = int(rng.integers(2, 60))
        nw = max(1, min(8, nd // wlen))
        wins = [m[w * wlen : min(nd, w * wlen + wlen)] for w in range(nw)]
        got = det.median_window_stats(m, wlen, 8)
        assert got == det.median_window_stats_reference(m, wlen, 8), (nd, wlen)  # the same sums bit for bit
        assert np.isclose(got[0], np.median([max(0.0, w.max()) if w.size else 0.0 for w in wins]), rtol=1e-12)
        assert np.isclose(got[1], np.median([w.mean() if w.size else 0.0 for w in wins]), rtol=1e-12)
