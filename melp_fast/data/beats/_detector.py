"""The detector's Numba kernels, in one file on purpose: Numba's disk cache (cache=True) checks only the file of the
function it compiled, so a kernel calling helpers from another module would keep running their stale code after
an edit there.

Sections: constants; 1-3 filters (decimation, band-pass slope, lead scale, combined envelope); 4 decisions
(candidates, shape values, thresholds, RR statistics, T-wave test, search-back, head / tail search, the decision);
5 the R point; the whole record and a batch.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

TARGET_FS = 125.0  # rate the detector works at (Hz), after block-mean decimation
CLIP = 4.0  # cap on a lead's normalised squared slope
MIN_QUALITY = 2.75  # scale / mean|slope| below this -> noise-like lead, dropped (white noise: 2.2)
FULL_QUALITY = 7.5  # leads at or above this get full weight (clean ECG leads: ~6-12)
MAX_SMOOTH_ROUGHNESS = 1.0  # when no lead passes, the smooth ones (see roughness) are kept
THR_FRAC = 0.25  # threshold = NPK + f (SPK - NPK), f = 0.25 (Pan-Tompkins) while NPK/SPK <= 0.1, rising linearly
THR_FRAC_NOISY = 0.5  # to 0.5 at NPK/SPK >= 0.25 (a noisy record: steadier against noise peaks)
REFRACTORY_S = 0.20  # R points closer than this are one beat (the larger deviation is kept)
SAME_QRS_S = 0.16  # envelope peaks this close to where a beat was first detected belong to it (the highest wins)
TWAVE_S = 0.45  # a candidate this soon after a beat must not look like a T wave (see is_t_wave)
T_MWI_RATIO = 0.5  # ... its integrated energy at least half the beat's (Pan-Tompkins) ...
T_SHAPE_RATIO = 0.4  # ... and (peak squared slope x lead agreement) at least 0.4 of the beat's
T_WIDE_SHAPE_RATIO = 0.7  # ... or, when it is wide (>= T_MIN_WIDTH_S and T_WIDTH_RATIO x the beat's width), 0.7
T_WIDTH_RATIO = 1.6
T_PROTECT_RATIO = 0.25  # a beat before a taller one is kept as the record's other morphology only above this ratio
T_MIN_WIDTH_S = 0.06  # width: time the combined squared slope stays above half its peak, within +-MWI
AGREE_LEVEL = 0.5  # a lead agrees on a QRS when its |slope| there reaches half its typical QRS slope
SEARCHBACK_RR = 1.66  # search back for a missed beat after 1.66 mean RR (Pan-Tompkins)
ECTOPIC_GAP_RR = 1.5  # in a gap this long (x median RR) ...
ECTOPIC_VS_T = 3.0  # ... a peak with this many times the shape value of the record's usual T wave ...
ECTOPIC_MWI_VS_T = 1.4  # ... and this many times its energy is a beat ...
ECTOPIC_MIN_THR = 0.25  # ... when its envelope reaches this fraction of the detection threshold
ECTOPIC_MIN_Q = 0.02  # ... and its shape value this fraction of the beats' median (not a flat stretch's ripple)
ECT_Q = 0.025  # a coupled ectopic beat (bigeminy, trigeminy) has this fraction of the earlier beat's shape value ...
ECT_MAX_EW_S = 0.08  # ... an equivalent envelope width under this (T waves beside a low QRS: 0.083 s and up) ...
ECT_NARROW_EW_S = 0.05  # ... and is steep in ECT_AGREE_NARROW of the leads when this narrow (a QRS: 0.03-0.04 s),
ECT_AGREE_NARROW = 0.25  # ... rising to ECT_AGREE_WIDE at ECT_WIDE_EW_S and wider (tall T waves: 0.07-0.088 s wide,
ECT_WIDE_EW_S = 0.075  # steep in at most ~0.55 of the leads) ...
ECT_AGREE_WIDE = 0.7
ECT_ALL_LEVEL = 0.3  # ... or, however wide (under ECT_MAX_EW_S), steep at 0.3 of the lead's QRS slope in every lead
ECT_ALL_FRAC = 0.99  # (weighted fraction of leads) ...
ECT_ALL_AGREE = 0.4  # ... and at AGREE_LEVEL in 0.4 of them ...
ECT_STAND_OUT = 2.0  # ... and its envelope is 2x every other wave's in its gap (not a noise burst among others)
ECT_BROAD_EW_S = 0.095  # a broad one (ECT_MAX_EW_S up to this: a T wave beside a low QRS is as broad), steep in
ECT_BROAD_AGREE = 0.7  # ECT_BROAD_AGREE of the leads and at ECT_ALL_LEVEL in every lead, only with the rhythm's
ECT_RESET = 1.3  # evidence: absent after the beats followed by shorter gaps (>= ECT_RESET x shorter than every gap
# holding one; an ectopic beat leaves a long gap, a T wave follows every beat), see absent_elsewhere ...
ECT_UNLIKE_COS = 0.7  # ... or, every gap holding one (bigeminy), a lead pattern unlike its beat's (|cosine| under
ECT_PAUSE = 1.5  # this) and an interval to the next beat >= ECT_PAUSE x its coupling, see unlike_its_beats
ECT_T_LAG_FRAC = 0.75  # a coupled one is the record's T wave when this fraction (of >= ECT_T_LAG_MIN) of the gaps
ECT_T_LAG_MIN = 3  # without one hold a wave at its coupling with its lead pattern (see follows_every_beat)
ECT_T_LAG_LEADS = 3  # ... judged in records of at least this many leads (one lead's pattern is alike everywhere)
ECT_MIN_PAUSE = 1.5  # rescued ones leave a pause: their median interval to the next beat >= this x their coupling
# (a compensatory pause: >= 1.86x at couplings up to 0.7 RR; a T wave beside a low, wide QRS at 1-1.5x)
ECT_EDGE_EW_S = 0.1  # before the first and after the last beat, one like the found coupled beats may be this broad
ECT_PREMATURE = 0.8  # a beat of the decisions counts as coupled when its interval is under 0.8 of the next one
ECT_GROUP_TOL_S = 0.1  # coupled beats alike: coupling intervals within 100 ms (sinus arrhythmia moves them), ...
ECT_GROUP_Q = 1.6  # ... shape values within 1.6x of each other ...
ECT_GROUP_COS = 0.8  # ... and lead patterns (slope per lead at one instant) with a |cosine| >= 0.8
MWI_S = 0.12  # moving-window integral (Pan-Tompkins: ~ the widest QRS)
SLOPE_S = 0.016  # half-span of the central difference (QRS band, peak ~12-15 Hz)
WANDER_S = 0.10  # half-width of the mean slope that is subtracted (baseline wander, T-wave slope)
FLAT_S = 0.10  # runs of exactly-zero slope this long are missing (flat, zero-filled, clipped)
SHORT_GAP_S = 0.024  # NaN runs up to this long (after decimation) are interpolated, longer ones are missing
REFINE_S = 0.08  # the R point is searched within +-80 ms of the detection
BASE_S = 0.15  # baseline flanks: [c - 150 ms, c - 80 ms) and (c + 80 ms, c + 150 ms]
SMOOTH_S = 0.004  # the R point is the extremum of the +-4 ms moving average (robust to noise, unbiased on a peak)
FLIP_RATIO = 2.0  # a beat whose opposite-polarity deflection is 2x larger takes that one
EDGE_S = 0.01  # an R point this close to the record edge is not told apart from a cut QRS: not reported
EDGE_MIN_SCORE = 0.5  # an edge beat needs half the record's median QRS deviation (else its R is outside)
STEP_W_S = 0.12  # a QRS (even a wide one) rises as much as it falls within +-120 ms; a baseline step only rises
STEP_STEEP = 0.25  # or only falls (the differences counted: >= 0.25 of the lead's QRS slope, not a T wave's slope)
STEP_MAX = 0.4  # a candidate whose slope-weighted 1 - |rise - fall| / (rise + fall) is under 0.4 is a step
STEP_MIN_WEIGHT = 0.01  # leads whose clipped normalised squared slope at the candidate is under this are skipped
STEP_MIN_SPK = 0.1  # candidates under this fraction of the first signal level are not examined (they never matter)


@njit(cache=True, nogil=True, fastmath=False)  # (explicit, as median_ranked)
def median_of(a):
    """np.median of a short 1-D array (the mean of the two middle values for an even length), by an insertion sort
    of a copy: Numba's np.median costs ~170 ns on a dozen values, this a fraction of it."""
    n = a.shape[0]
    if n == 0:
        return np.nan
    b = np.empty(n, np.float64)
    for i in range(n):
        v = a[i]
        j = i
        while j > 0 and b[j - 1] > v:
            b[j] = b[j - 1]
            j -= 1
        b[j] = v
    if n % 2 == 1:
        return b[n // 2]
    return (b[n // 2 - 1] + b[n // 2]) / 2


@njit(cache=True, nogil=True, fastmath=False)  # (explicit: a callee inherits an unset fastmath from its first caller,
def median_ranked(a):                          # lead_scale's, whose no-NaN flag would fold the NaN check away)
    """median_of(a) without sorting: each value's rank is the number of values below it plus the equal ones before it
    (its place in a stable sort), counted without branches (an insertion sort's exits mispredict on every record's
    new data); the values of ranks (n - 1) // 2 and n // 2 are the sorted array's middle ones, so the median is the
    same. With a NaN, or over 32 values (n^2 counts), median_of."""
    n = a.shape[0]
    if n == 0 or n > 32:
        return median_of(a)
    for i in range(n):
        if np.isnan(a[i]):
            return median_of(a)
    k1 = (n - 1) // 2
    k2 = n // 2
    v1 = 0.0
    v2 = 0.0
    for i in range(n):
        ai = a[i]
        r = 0
        for j in range(i):
            r += a[j] <= ai
        for j in range(i + 1, n):
            r += a[j] < ai
        v1 = ai if r == k1 else v1
        v2 = ai if r == k2 else v2
    if n % 2 == 1:
        return v2
    return (v1 + v2) / 2


# ----------------------------------------------------------------------------------------------------------------
# 1-3. filters: decimation, the per-lead band-pass slope, lead scale / quality, the combined QRS envelope
# ----------------------------------------------------------------------------------------------------------------
FM = {"reassoc", "contract", "arcp", "nsz"}  # fast-math without the no-NaN/no-inf assumptions


@njit(cache=True, nogil=True, inline="always")
def _block_mean(v, b, D):
    """The mean of the D samples v[b : b + D], D in (2, 4, 8), unrolled (a plain accumulation loop is latency-bound)."""
    if D == 2:
        return (v[b] + v[b + 1]) * 0.5
    if D == 4:
        return ((v[b] + v[b + 1]) + (v[b + 2] + v[b + 3])) * 0.25
    return (((v[b] + v[b + 1]) + (v[b + 2] + v[b + 3])) + ((v[b + 4] + v[b + 5]) + (v[b + 6] + v[b + 7]))) * 0.125


@njit(cache=True, nogil=True, inline="always")
def _block_means(xa, xb, oa, ob, D, nfull, inv):
    """Block means of D samples of two leads at once, into oa and ob (the same arithmetic per block as one lead at a
    time; reading two leads' streams at once keeps more memory reads in flight: ~30 us instead of ~36 us for a
    480 KB record out of cache). The common factors are unrolled (a plain accumulation loop is latency-bound)."""
    if D == 1:
        for n in range(nfull):
            oa[n] = xa[n]
            ob[n] = xb[n]
    elif D == 2 or D == 4 or D == 8:
        for n in range(nfull):
            oa[n] = _block_mean(xa, D * n, D)
            ob[n] = _block_mean(xb, D * n, D)
    elif D == 3:
        for n in range(nfull):
            b = 3 * n
            oa[n] = (xa[b] + xa[b + 1] + xa[b + 2]) * inv
            ob[n] = (xb[b] + xb[b + 1] + xb[b + 2]) * inv
    elif D == 6:
        for n in range(nfull):
            b = 6 * n
            oa[n] = ((xa[b] + xa[b + 1]) + (xa[b + 2] + xa[b + 3]) + (xa[b + 4] + xa[b + 5])) * inv
            ob[n] = ((xb[b] + xb[b + 1]) + (xb[b + 2] + xb[b + 3]) + (xb[b + 4] + xb[b + 5])) * inv
    else:
        for n in range(nfull):
            b = D * n
            acc = 0.0
            acc2 = 0.0
            for j in range(D):
                acc += xa[b + j]
                acc2 += xb[b + j]
            oa[n] = acc * inv
            ob[n] = acc2 * inv


@njit(cache=True, nogil=True)
def _block_means6(x, out, l, D, nfull):
    """_block_means of the six leads l..l+5 at once, D in (2, 4, 8) (the 250 / 500 / 1000 Hz factors): six memory
    streams keep more reads in flight than two (~2-4 us less for a 480 KB record out of cache)."""
    x0, x1, x2, x3, x4, x5 = x[l], x[l + 1], x[l + 2], x[l + 3], x[l + 4], x[l + 5]
    o0, o1, o2, o3, o4, o5 = out[l], out[l + 1], out[l + 2], out[l + 3], out[l + 4], out[l + 5]
    for n in range(nfull):
        b = D * n
        o0[n] = _block_mean(x0, b, D)
        o1[n] = _block_mean(x1, b, D)
        o2[n] = _block_mean(x2, b, D)
        o3[n] = _block_mean(x3, b, D)
        o4[n] = _block_mean(x4, b, D)
        o5[n] = _block_mean(x5, b, D)


@njit(cache=True, nogil=True)
def decimate(x, D, nd):
    """Block means of D samples: (L, S) -> (L, nd), float64 (float32 input is read as is, no float64 copy); the
    last block may be partial. NaN/inf in a block make the block non-finite. Leads are read six at a time for the
    factors 2, 4 and 8, then two at a time."""
    L, S = x.shape
    out = np.empty((L, nd), np.float64)
    nfull = S // D
    inv = 1.0 / D
    l0 = 0
    if D == 2 or D == 4 or D == 8:
        while l0 + 6 <= L:
            _block_means6(x, out, l0, D, nfull)
            l0 += 6
    for l in range(l0, L - 1, 2):
        _block_means(x[l], x[l + 1], out[l], out[l + 1], D, nfull, inv)
    if L % 2 == 1:  # the odd lead alone (written twice, the same values)
        _block_means(x[L - 1], x[L - 1], out[L - 1], out[L - 1], D, nfull, inv)
    if nd > nfull:  # partial last block
        for l in range(L):
            acc = 0.0
            for t in range(nfull * D, S):
                acc += x[l, t]
            out[l, nfull] = acc / (S - nfull * D)
    return out


@njit(cache=True, nogil=True)
def decimate_reference(x, D, nd):
    """decimate written plainly, one lead and one block at a time (the parity reference; the same sums per block)."""
    L, S = x.shape
    out = np.empty((L, nd), np.float64)
    inv = 1.0 / D
    for l in range(L):
        for n in range(nd):
            b = n * D
            e = min(S, b + D)
            v = np.empty(e - b, x.dtype)  # (float32 input: float32 block sums, as in decimate)
            for j in range(e - b):
                v[j] = x[l, b + j]
            if e - b < D:
                acc = 0.0
                for j in range(e - b):
                    acc += v[j]
                out[l, n] = acc / (e - b)
            elif D == 1:
                out[l, n] = v[0]
            elif D == 2:
                out[l, n] = (v[0] + v[1]) * 0.5
            elif D == 3:
                out[l, n] = (v[0] + v[1] + v[2]) * inv
            elif D == 4:
                out[l, n] = ((v[0] + v[1]) + (v[2] + v[3])) * 0.25
            elif D == 6:
                out[l, n] = ((v[0] + v[1]) + (v[2] + v[3]) + (v[4] + v[5])) * inv
            elif D == 8:
                out[l, n] = (((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]))) * 0.125
            else:
                acc = 0.0
                for j in range(D):
                    acc += v[j]
                out[l, n] = acc * inv
    return out


@njit(cache=True, nogil=True, fastmath=FM)
def finite_sum(a):  # (the reference of smooth's finiteness test)
    tot = 0.0
    for i in range(a.shape[0]):
        tot += a[i]
    return tot


@njit(cache=True, nogil=True)
def fill_short_gaps(xl, maxgap):
    """Linearly interpolate runs of <= maxgap non-finite samples between finite neighbours, in place (isolated
    dropped samples cannot hide a beat; longer runs stay missing). Returns True when xl is then all finite."""
    nd = xl.shape[0]
    allfinite = True
    n = 0
    while n < nd:
        if abs(xl[n]) < np.inf:
            n += 1
            continue
        a = n
        while n < nd and not (abs(xl[n]) < np.inf):
            n += 1
        if a > 0 and n < nd and n - a <= maxgap:
            v0 = xl[a - 1]
            v1 = xl[n]
            for j in range(a, n):
                xl[j] = v0 + (v1 - v0) * (j - a + 1) / (n - a + 1)
        else:
            allfinite = False
    return allfinite


@njit(cache=True, nogil=True, fastmath=FM)
def smooth(xl, s):
    """The [1, 2, 1] / 4 smoothing of the decimated lead xl into s ([3, 1] / 4 at the ends), and whether xl is all
    finite (its sum is: a NaN or inf anywhere makes it non-finite; finite_sum's test), in one pass over xl."""
    # (loops index views from 0: Numba then knows the index is non-negative and vectorises)
    nd = xl.shape[0]
    s[0] = 0.25 * (3.0 * xl[0] + xl[min(1, nd - 1)])
    s[nd - 1] = 0.25 * (xl[max(nd - 2, 0)] + 3.0 * xl[nd - 1])
    xa = xl[: nd - 2]
    xb = xl[1 : nd - 1]
    xc = xl[2:]
    so = s[1 : nd - 1]
    tot = xl[0] + xl[nd - 1]
    for i in range(nd - 2):
        so[i] = 0.25 * (xa[i] + 2.0 * xb[i] + xc[i])
        tot += xb[i]
    return abs(tot) < np.inf


@njit(cache=True, nogil=True, fastmath=FM)
def lead_slope(s, k, h, flat_len, d, valid, finite_in):
    """Band-passed slope of one decimated lead into d, from its smoothing s (smooth), with valid (1/0, any numeric
    dtype); d is 0.0 where missing.

    finite_in: the lead is known to be all finite (fast path). Missing = non-finite input in the filter
    span, or a run of >= flat_len exactly-zero slopes. Returns whether every output is finite, and whether every
    one is valid (finite, and too few zero slopes for a flat run)."""
    # (loops index views from 0: Numba then knows the index is non-negative and vectorises)
    nd = s.shape[0]
    # slope over +-k, minus the mean slope over +-h (removes baseline wander: 3rd-order high-pass at low f)
    g = k / h
    nz = 0  # zero slopes (a NaN or inf is no zero)
    if nd > 2 * h:
        dd = d[h : nd - h]
        kp = s[h + k : nd - h + k]
        km = s[h - k : nd - h - k]
        hp = s[2 * h :]
        hm = s[: nd - 2 * h]
        for i in range(nd - 2 * h):  # (the zero slopes counted here: an int64 count beside the stores vectorises)
            v = (kp[i] - km[i]) - g * (hp[i] - hm[i])
            dd[i] = v
            nz += np.int64(v == 0.0)
        lo = h
        hi = nd - h
    else:
        lo = 0
        hi = 0
    for n in range(lo):  # edges, indices clamped
        d[n] = (s[min(n + k, nd - 1)] - s[max(n - k, 0)]) - g * (s[min(n + h, nd - 1)] - s[max(n - h, 0)])
        nz += np.int64(d[n] == 0.0)
    for n in range(hi, nd):
        d[n] = (s[min(n + k, nd - 1)] - s[max(n - k, 0)]) - g * (s[min(n + h, nd - 1)] - s[max(n - h, 0)])
        nz += np.int64(d[n] == 0.0)
    finite = finite_in
    if not finite:
        tot = 0.0
        for n in range(nd):
            tot += d[n]
        finite = abs(tot) < np.inf
    if finite:  # fast path: every output finite (a NaN or inf anywhere would make the sum non-finite)
        valid[:] = 1
    else:
        nz = 0
        for n in range(nd):
            v = d[n]
            ok = abs(v) < np.inf
            d[n] = v if ok else 0.0
            valid[n] = 1 if ok else 0
            nz += ok and v == 0.0
    # runs of exactly-zero slope (flat, zero-filled or clipped stretches) are missing
    if nz >= flat_len:
        run = 0
        for n in range(nd + 1):
            if n < nd and d[n] == 0.0 and valid[n] > 0:
                run += 1
            else:
                if run >= flat_len:
                    for j in range(n - run, n):
                        valid[j] = 0
                run = 0
    return finite, finite and nz < flat_len


@njit(cache=True, nogil=True, fastmath=True)  # inputs are finite by construction
def lead_scale(d, valid, wlen, vals, all_valid=False):
    """(scale, quality) of one lead's slope d.

    scale: median over ~1 s windows of the window's peak-weighted RMS slope sqrt(sum d^4 / sum d^2), a smooth
    stand-in for the window maximum (~0.7-0.9 of the largest QRS slope; sums vectorise, max reductions do not).
    Windows less than half valid are skipped. quality: scale / mean |d| over valid samples (ECG ~10-40, white noise
    sqrt(3) / sqrt(2 / pi) = 2.2). vals: scratch, >= max(1, len(d) // wlen) long; all_valid: valid is all ones."""
    nd = d.shape[0]
    nw = max(1, nd // wlen)
    m = 0
    tot = 0.0
    cnt = 0.0
    for w in range(nw):
        a = w * wlen
        b = nd if w == nw - 1 else a + wlen
        s2 = 0.0
        s4 = 0.0
        sa = 0.0
        nv = 0.0
        dw = d[a:b]
        if all_valid:  # (the mask is all ones: its sum is the window's length, no need to read it)
            for i in range(b - a):
                v = dw[i]
                q = v * v
                s2 += q
                s4 += q * q
                sa += abs(v)
            nv = float(b - a)
        else:
            vw = valid[a:b]
            for i in range(b - a):
                v = dw[i]
                q = v * v
                s2 += q
                s4 += q * q
                sa += abs(v)
                nv += vw[i]
        tot += sa
        cnt += nv
        if nv * 2.0 >= (b - a) and s2 > 0.0:
            vals[m] = np.sqrt(s4 / s2)
            m += 1
    if m == 0 or cnt == 0.0:
        return 0.0, 0.0
    scale = median_ranked(vals[:m])
    mean = tot / cnt
    if not (scale > 0.0) or not (mean > 0.0):
        return 0.0, 0.0
    return scale, scale / mean


@njit(cache=True, nogil=True, fastmath=True)  # inputs are finite by construction
def envelope(d, valid, scales, weights, fd):
    """Weighted mean over the leads valid at each sample of the clipped normalised squared slope, and its centred
    moving-window integral (0 where no lead is valid). (detect_core takes the sums from lead_signals, which adds
    each lead while its slope is in the cache, and finishes them with envelope_from_sums.)"""
    L, nd = d.shape
    E = np.zeros(nd, np.float64)
    cnt = np.zeros(nd, np.float64)
    for l in range(L):
        if scales[l] != 0.0:
            add_lead(E, cnt, d[l], valid[l], scales[l], weights[l])
    return envelope_from_sums(E, cnt, fd)


@njit(cache=True, nogil=True, fastmath=True)  # inputs are finite by construction
def add_lead(E, cnt, dl, vl, sc, w, all_valid=False):
    """One lead's share of the envelope: its clipped normalised squared slope times its weight added to E, and its
    weight to cnt, where it is valid. all_valid: vl is all ones, not read (w * 1 is w, so the same sums), and cnt is
    left to the caller (w at every sample; lead_signals keeps it as one number while every lead is all valid)."""
    inv = 1.0 / sc
    if all_valid:
        for n in range(E.shape[0]):
            e = dl[n] * inv
            E[n] += min(e * e, CLIP) * w
        return
    for n in range(E.shape[0]):
        e = dl[n] * inv
        wv = w * vl[n]
        E[n] += min(e * e, CLIP) * wv
        cnt[n] += wv


@njit(cache=True, nogil=True, fastmath=True)  # inputs are finite by construction
def envelope_from_sums(E, cnt, fd):
    """The envelope from the leads' sums (add_lead): E / cnt in place (0 where no lead is valid) and its centred
    moving-window integral m; returns (E, m)."""
    nd = E.shape[0]
    h = max(1, int(round(0.5 * MWI_S * fd)))
    m = np.empty(nd, np.float64)
    c = np.zeros(nd + 1, np.float64)
    acc = 0.0
    for n in range(nd):  # the division beside the prefix sum (whose chain of additions sets the pace anyway)
        cn = cnt[n]
        e = E[n] / cn if cn > 0.0 else 0.0
        E[n] = e
        acc += e
        c[n + 1] = acc
    inv_w = 1.0 / (2 * h + 1)
    lo = min(h, nd)  # inside [lo, hi) the window needs no clamping (a plain loop over views vectorises)
    hi = max(lo, nd - h - 1)
    for n in range(lo):
        m[n] = (c[min(n + h + 1, nd)] - c[max(n - h, 0)]) * inv_w
    mi = m[lo:hi]
    cp = c[lo + h + 1 : hi + h + 1]
    cm = c[lo - h : hi - h]
    for i in range(hi - lo):
        mi[i] = (cp[i] - cm[i]) * inv_w
    for n in range(hi, nd):
        m[n] = (c[min(n + h + 1, nd)] - c[max(n - h, 0)]) * inv_w
    for n in range(nd):
        m[n] = m[n] if cnt[n] > 0.0 else 0.0
    return E, m


@njit(cache=True, nogil=True)
def lead_signals(x, D, nd, k, fd):
    """Decimated leads xd, their band-passed slopes d with validity masks, whether each lead is all finite (after
    short gaps are filled), each lead's scale (0: dropped) and weight (from its quality), and whether each lead of x
    is all finite (its decimated lead before any filling: a block with a NaN or inf is non-finite); and the envelope's
    sums (E, cnt) of the kept leads (add_lead, in lead order as envelope adds them; envelope_from_sums finishes them).
    """
    L = x.shape[0]
    xd = decimate(x, D, nd)
    d = np.empty((L, nd), np.float64)
    valid = np.empty((L, nd), np.uint8)  # (1 / 0: an eighth of the float64 mask's memory traffic)
    s = np.empty(nd, np.float64)
    flat_len = max(3, int(round(FLAT_S * fd)))
    hw = max(k + 1, int(round(WANDER_S * fd)))
    wlen = max(2, int(round(fd)))
    gap = max(1, int(round(SHORT_GAP_S * fd)))
    scales = np.zeros(L, np.float64)
    weights = np.zeros(L, np.float64)
    finite = np.zeros(L, np.bool_)
    spare = np.zeros(L, np.float64)
    raw = np.zeros(L, np.bool_)
    E = np.zeros(nd, np.float64)
    cnt = np.zeros(nd, np.float64)
    wsum = 0.0  # cnt at every sample while every lead added is all valid (the same sums, kept as one number)
    lazy = True
    vals = np.empty(max(1, nd // wlen), np.float64)  # lead_scale's scratch
    for l in range(L):
        xl = xd[l]
        fin = smooth(xl, s)  # (and whether xl is all finite)
        raw[l] = fin
        if not fin:
            fin = fill_short_gaps(xl, gap)
            smooth(xl, s)
        finite[l], all_valid = lead_slope(s, k, hw, flat_len, d[l], valid[l], fin)
        sc, q = lead_scale(d[l], valid[l], wlen, vals, all_valid)
        if sc > 0.0 and q >= MIN_QUALITY:
            scales[l] = sc
            weights[l] = min(1.0, (q - 2.5) / (FULL_QUALITY - 2.5))
            if lazy and not all_valid:
                cnt[:] = wsum
                lazy = False
            add_lead(E, cnt, d[l], valid[l], scales[l], weights[l], all_valid)  # (while d[l] is in the cache)
            if all_valid and lazy:
                wsum += weights[l]
            elif all_valid:
                for n in range(nd):
                    cnt[n] += weights[l]
        elif sc > 0.0:
            spare[l] = sc
    if not np.any(scales > 0.0):  # no lead passed: keep the smooth ones (a low-voltage QRS beside large T waves)
        for l in range(L):
            if spare[l] > 0.0 and roughness(xd[l]) < MAX_SMOOTH_ROUGHNESS:
                scales[l] = spare[l]
                weights[l] = 1.0
                add_lead(E, cnt, d[l], valid[l], scales[l], weights[l])  # (no lead was added: cnt is 0)
    elif lazy:
        cnt[:] = wsum
    return xd, d, valid, finite, scales, weights, raw, E, cnt


@njit(cache=True, nogil=True, fastmath=FM)
def roughness(xl):
    """mean |second difference| / mean |first difference| over finite stretches: white noise ~1.7 (at any rate),
    a smooth ECG ~0.4-0.8, real leads with their noise ~0.8-1.5."""
    s1 = 0.0
    s2 = 0.0
    for n in range(1, xl.shape[0] - 1):
        a = xl[n] - xl[n - 1]
        b = xl[n + 1] - xl[n]
        if abs(a) < np.inf and abs(b) < np.inf:
            s1 += abs(a)
            s2 += abs(b - a)
    return s2 / s1 if s1 > 0.0 else np.inf


# ----------------------------------------------------------------------------------------------------------------
# 4. decisions
# ----------------------------------------------------------------------------------------------------------------
# Candidates are the local maxima of the integrated envelope ``m``. Each carries its height ``m[t]`` and a shape
# value ``q = p * a``: ``p`` the peak of the (unintegrated) combined squared slope ``E`` within +-MWI/2, ``a`` the
# agreement of leads, the weighted fraction of valid leads whose |slope| there reaches AGREE_LEVEL of their typical
# QRS slope. A QRS is steep in (nearly) every lead; a T wave (or a U wave) is slower and wider, so its peak squared
# slope is low even where it is tall, and it is steep in fewer leads; a paced spike or a P wave lies within the
# same QRS window of its QRS (only the highest envelope peak is kept), and R points < 200 ms apart are merged.


@njit(cache=True, nogil=True)
def candidates(m):
    """Local maxima of m (plateaus: their first sample), as int64 indices."""
    nd = m.shape[0]
    cand = np.empty(nd, np.int64)
    nc = 0
    for n in range(1, nd - 1):  # written every sample, kept by the count: no branch on the data
        v = m[n]
        cand[nc] = n
        nc += (v > 0.0) & (v > m[n - 1]) & (v >= m[n + 1])
    return cand[:nc]


ABS_BITS = 0x7FFFFFFFFFFFFFFF  # a float64's bits without the sign


@intrinsic
def _bits_to_float(typingctx, bits):
    """The float64 whose IEEE-754 bit pattern is the int64 bits (a reinterpretation, no conversion)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@intrinsic
def _float_to_bits(typingctx, x):
    """The int64 holding the IEEE-754 bit pattern of the float64 x (a reinterpretation, no conversion)."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def order_key(v):
    """An int64 key of the non-NaN float64 v in the same order as the floats (-0.0 just below +0.0): the bits, with
    the magnitude bits flipped for negative values."""
    b = _float_to_bits(v)
    return b ^ ((b >> 63) & ABS_BITS)


@njit(cache=True, nogil=True, inline="always")
def order_key_inverse(k):
    """The bits of the float64 whose order_key is k (the map is its own inverse)."""
    return k ^ ((k >> 63) & ABS_BITS)


@njit(cache=True, nogil=True, inline="always")
def abs_max_bits(bits, a, b):
    """max |v[a:b]| (0 for an empty range) of a finite float64 array v given as its bits (v.view(np.int64)): the
    maximum is taken over the bit patterns of |v| as integers (for non-negative finite floats their order is the
    float order, so the result is the same float). An integer max reduction vectorises, the float one (a compare
    and select) does not. Callers with many windows take the view once."""
    seg = bits[a:b]
    mx = 0
    for i in range(b - a):
        mx = max(mx, seg[i] & ABS_BITS)
    return _bits_to_float(mx)


@njit(cache=True, nogil=True, fastmath=False)  # (explicit: step_score, a fastmath caller, may compile it first;
def abs_max(v, a, b):                          # integer operations only, so the same either way: see the tests)
    """max |v[a:b]| (0 for an empty range); v finite and contiguous (see abs_max_bits)."""
    return abs_max_bits(v.view(np.int64), a, b)


@njit(cache=True, nogil=True)
def abs_max_reference(v, a, b):
    """abs_max written plainly (the parity reference)."""
    mx = 0.0
    for i in range(a, b):
        mx = max(mx, abs(v[i]))
    return mx


@njit(cache=True, nogil=True)
def shape_values(cand, E, mx, valid, scales, weights, h):
    """Shape values of the candidates, F (5, nc): F[0] q = (peak p of E within +-h) x (agreement of leads), F[1]
    width = the number of samples within +-2h where E exceeds p / 2, F[2] the equivalent width (equivalent_width; a
    finer width, used for coupled ectopic beats only: -1 here, filled on demand), F[3] the agreement of leads (see the
    section comment), F[4] the agreement at the lower level ECT_ALL_LEVEL (a wide ectopic beat: every lead). mx:
    lead_peaks of cand (each lead's max |slope| within +-h)."""
    L = mx.shape[1]
    nd = E.shape[0]
    F = np.empty((5, cand.shape[0]), np.float64)
    Eb = E.view(np.int64)
    for ci in range(cand.shape[0]):
        t = cand[ci]
        a = max(0, t - h)
        b = min(nd, t + h + 1)
        p = abs_max_bits(Eb, a, b)  # E >= 0
        cnt = 0  # (an integer count vectorises)
        half = 0.5 * p
        for n in range(max(0, t - 2 * h), min(nd, t + 2 * h + 1)):
            cnt += E[n] > half
        F[1, ci] = cnt
        F[2, ci] = -1.0  # filled on demand (equivalent_width)
        agree = 0.0
        low = 0.0
        wsum = 0.0
        for l in range(L):  # selects, not branches (which leads are steep varies from candidate to candidate)
            w = weights[l] if (scales[l] != 0.0) & (valid[l, t] != 0.0) else 0.0  # (adding 0.0 changes no sum)
            wsum += w
            agree += w if mx[ci, l] >= AGREE_LEVEL * scales[l] else 0.0
            low += w if mx[ci, l] >= ECT_ALL_LEVEL * scales[l] else 0.0
        F[3, ci] = agree / wsum if wsum > 0.0 else 0.0
        F[4, ci] = low / wsum if wsum > 0.0 else 0.0
        F[0, ci] = p * F[3, ci]
    return F


@njit(cache=True, nogil=True)
def equivalent_width(E, t, h):
    """The equivalent width of the envelope wave at t: sum over +-2h of min(E, p) / p, p the peak of E within +-h
    (samples; inf when p is 0). Asked for a few candidates only (coupled_like), so not computed for all of them."""
    nd = E.shape[0]
    p = abs_max(E, max(0, t - h), min(nd, t + h + 1))  # E >= 0
    area = 0.0
    for n in range(max(0, t - 2 * h), min(nd, t + 2 * h + 1)):
        area += min(E[n], p)
    return area / p if p > 0.0 else np.inf


@njit(cache=True, nogil=True)
def lead_peaks(cand, d, scales, h):
    """Per candidate and lead, max |d[l]| within +-h of the candidate (clipped to the record), (nc, L); 0 for dropped
    leads. The step test and the shape values both need it: computed once."""
    L, nd = d.shape
    out = np.zeros((cand.shape[0], L), np.float64)
    db = d.view(np.int64)
    for ci in range(cand.shape[0]):
        t = cand[ci]
        a = max(0, t - h)
        b = min(nd, t + h + 1)
        for l in range(L):
            if scales[l] != 0.0:
                out[ci, l] = abs_max_bits(db[l], a, b)
    return out


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _balance(xl, t, w, steep):
    """(P, N) of step_score for one lead: the steep rising and falling first differences of xl over [t - w, t + w]
    less the baseline wander (see step_score)."""
    w2 = w // 2
    # baseline wander: the slopes of the window's outer quarters (a step or a QRS lies between them), the one
    # nearer zero when they agree in sign, else none (a wide QRS's tails there slope opposite ways)
    c0 = (xl[t - w2] - xl[t - w]) / (w - w2)
    c1 = (xl[t + w] - xl[t + w2]) / (w - w2)
    c = 0.0
    if c0 > 0.0 and c1 > 0.0:
        c = min(c0, c1)
    elif c0 < 0.0 and c1 < 0.0:
        c = max(c0, c1)
    up = 0.0
    down = 0.0
    xa = xl[t - w : t + w]
    xb = xl[t - w + 1 : t + w + 1]
    for i in range(2 * w):  # the steep differences only (not a nearby T wave's slow slope); selects vectorise
        v = xb[i] - xa[i] - c
        up += v if v >= steep else 0.0
        down += -v if v <= -steep else 0.0
    return up, down


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _judged(valid, finite, l, t, w):
    """Lead l is valid over [t - w, t + w] (always when it is all finite)."""
    if finite[l]:
        return True
    for n in range(t - w, t + w + 1):
        if valid[l, n] == 0.0:
            return False
    return True


@njit(cache=True, nogil=True, fastmath=True)
def step_score(xd, d, valid, finite, scales, weights, t, w, h, k):
    """How much candidate t goes up and comes back: per lead, over [t - w, t + w], the sums P and N of the steep
    (>= STEP_STEEP x the lead's typical QRS slope: not a nearby T wave's slow slope) rising and falling first
    differences of xd less the baseline wander (the slopes of the window's outer quarters, the one nearer zero
    when they agree in sign), and 1 - |P - N| / (P + N); averaged over the leads weighted
    by their clipped normalised squared slope there. A QRS (and a T or P wave, a pacing spike) rises as much as it
    falls: ~1; a baseline step (an electrode or amplifier DC jump) only rises or only falls: ~0, though its edge is
    as steep as a QRS. A QRS at the same instant as a step keeps its rise and fall. (The detector asks is_step, the
    same test with an early answer; this is its reference.)"""
    L, nd = xd.shape
    if t - w < 0 or t + w >= nd:
        return 1.0  # cut by the record edge: not judged
    num = 0.0
    den = 0.0
    for l in range(L):
        if scales[l] == 0.0:
            continue
        mx = abs_max(d[l], t - h, t + h + 1)
        e = mx / scales[l]
        e = min(e * e, CLIP) * weights[l]
        if e < STEP_MIN_WEIGHT or not _judged(valid, finite, l, t, w):  # a lead not steep here has no say
            continue
        up, down = _balance(xd[l], t, w, STEP_STEEP * scales[l] / (2.0 * k))  # (steep: of the typical QRS slope)
        if up + down > 0.0:
            num += e * (1.0 - abs(up - down) / (up + down))
            den += e
    return num / den if den > 0.0 else 1.0


@njit(cache=True, nogil=True, fastmath=True)
def is_step(xd, mx, valid, finite, scales, weights, t, w, k):
    """step_score(..., t, ...) < STEP_MAX, answered as soon as the leads left cannot bring the score under it (a
    QRS is balanced in most leads: about half of them settle it). mx: each lead's max |slope| within +-MWI/2 of t
    (lead_peaks). The bound is conservative (a relative margin far above rounding), so the answer is step_score's."""
    L, nd = xd.shape
    if t - w < 0 or t + w >= nd:
        return False  # cut by the record edge: not judged
    rest = 0.0  # the weights of the leads not yet counted (an upper bound on what they can add to den)
    for l in range(L):
        if scales[l] != 0.0:
            e = mx[l] / scales[l]
            e = min(e * e, CLIP) * weights[l]
            rest += e if e >= STEP_MIN_WEIGHT else 0.0  # (a select; adding 0.0 changes no sum)
    margin = 1e-9 * rest
    num = 0.0
    den = 0.0
    for l in range(L):
        if scales[l] == 0.0:
            continue
        e = mx[l] / scales[l]
        e = min(e * e, CLIP) * weights[l]
        if e < STEP_MIN_WEIGHT:
            continue
        rest -= e
        if not _judged(valid, finite, l, t, w):
            continue
        up, down = _balance(xd[l], t, w, STEP_STEEP * scales[l] / (2.0 * k))
        if up + down > 0.0:
            num += e * (1.0 - abs(up - down) / (up + down))
            den += e
        if num >= STEP_MAX * (den + max(rest, 0.0)) + margin:
            return False  # num / den stays >= STEP_MAX whatever the leads left give
    return (num / den if den > 0.0 else 1.0) < STEP_MAX


@njit(cache=True, nogil=True)
def drop_steps(cand, m, E, xd, d, valid, finite, scales, weights, fd, min_v, mx):
    """The positions in cand of the candidates left after dropping the baseline steps among those >= min_v (see
    step_score): unbalanced in the window
    centred on them, in the one centred on their steepest instant p (the peak of E within +-MWI/2) and in the one
    shifted half a window towards p (both shifted ones when p is the candidate): a step is unbalanced in every
    window that holds it, a QRS (wide, or seen from a shoulder of its envelope) is balanced in one of these. (A
    window shifted away from p could take in the neighbouring beat's QRS instead of the candidate's own wave.)
    mx: lead_peaks of cand."""
    w = max(1, int(round(STEP_W_S * fd)))
    h = max(1, int(round(0.5 * MWI_S * fd)))
    k = max(1, int(round(SLOPE_S * fd)))
    one = np.empty(1, np.int64)
    out = np.empty(cand.shape[0], np.int64)
    no = 0
    for ci in range(cand.shape[0]):
        c = cand[ci]
        if m[c] >= min_v and is_step(xd, mx[ci], valid, finite, scales, weights, c, w, k):
            p = steepest(E, c, h)
            one[0] = p
            if p == c or is_step(xd, lead_peaks(one, d, scales, h)[0], valid, finite, scales, weights, p, w, k):
                one[0] = c + w // 2
                if p < c or is_step(xd, lead_peaks(one, d, scales, h)[0], valid, finite, scales, weights, c + w // 2,
                                    w, k):
                    one[0] = c - w // 2
                    if p > c or is_step(xd, lead_peaks(one, d, scales, h)[0], valid, finite, scales, weights,
                                        c - w // 2, w, k):
                        continue
        out[no] = ci
        no += 1
    return out[:no]


@njit(cache=True, nogil=True)
def median_window_stats(m, wlen, n_windows):
    """Medians over the first n_windows windows of wlen samples of the window max and of the window mean of m (one
    pass for both). Eight full windows (a record of >= 8 s) are summed side by side: eight independent chains of
    additions instead of one (each window's sum in the same order, so the same sums; median_window_stats_reference
    sums one window after the other)."""
    nd = m.shape[0]
    nw = max(1, min(n_windows, nd // wlen))
    if nw != 8:
        return median_window_stats_reference(m, wlen, n_windows)
    maxs = np.empty(8, np.float64)
    means = np.empty(8, np.float64)
    w0, w1, w2, w3 = m[:wlen], m[wlen : 2 * wlen], m[2 * wlen : 3 * wlen], m[3 * wlen : 4 * wlen]
    w4, w5, w6, w7 = m[4 * wlen : 5 * wlen], m[5 * wlen : 6 * wlen], m[6 * wlen : 7 * wlen], m[7 * wlen : 8 * wlen]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    x0 = x1 = x2 = x3 = x4 = x5 = x6 = x7 = 0.0
    for i in range(wlen):
        a0 += w0[i]
        a1 += w1[i]
        a2 += w2[i]
        a3 += w3[i]
        a4 += w4[i]
        a5 += w5[i]
        a6 += w6[i]
        a7 += w7[i]
        x0 = w0[i] if w0[i] > x0 else x0  # (selects, not branches)
        x1 = w1[i] if w1[i] > x1 else x1
        x2 = w2[i] if w2[i] > x2 else x2
        x3 = w3[i] if w3[i] > x3 else x3
        x4 = w4[i] if w4[i] > x4 else x4
        x5 = w5[i] if w5[i] > x5 else x5
        x6 = w6[i] if w6[i] > x6 else x6
        x7 = w7[i] if w7[i] > x7 else x7
    maxs[0], maxs[1], maxs[2], maxs[3], maxs[4], maxs[5], maxs[6], maxs[7] = x0, x1, x2, x3, x4, x5, x6, x7
    means[0], means[1], means[2], means[3] = a0 / wlen, a1 / wlen, a2 / wlen, a3 / wlen
    means[4], means[5], means[6], means[7] = a4 / wlen, a5 / wlen, a6 / wlen, a7 / wlen
    return median_ranked(maxs), median_ranked(means)


@njit(cache=True, nogil=True)
def median_window_stats_reference(m, wlen, n_windows):
    """median_window_stats one window after the other (the reference; any number of windows)."""
    nd = m.shape[0]
    nw = max(1, min(n_windows, nd // wlen))
    maxs = np.empty(nw, np.float64)
    means = np.empty(nw, np.float64)
    for w in range(nw):
        a = w * wlen
        b = min(nd, a + wlen)
        acc = 0.0
        mx = 0.0
        for n in range(a, b):
            acc += m[n]
            mx = m[n] if m[n] > mx else mx  # (a select, not a branch)
        maxs[w] = mx
        means[w] = acc / max(1, b - a)
    return median_ranked(maxs), median_ranked(means)


@njit(cache=True, nogil=True)
def threshold(spk, npk):
    """NPK + f (SPK - NPK), f from THR_FRAC (clean) to THR_FRAC_NOISY as NPK / SPK goes from 0.1 to 0.25."""
    r = npk / spk if spk > 0.0 else 0.0
    f = THR_FRAC + (THR_FRAC_NOISY - THR_FRAC) * min(1.0, max(0.0, (r - 0.1) / 0.15))
    return npk + f * (spk - npk)


@njit(cache=True, nogil=True)
def rr_mean(rr, nrr, fd):
    """Mean of the last (up to 8) RR intervals in the ring rr; 100 bpm when there is none."""
    if nrr == 0:
        return 0.6 * fd
    k = min(nrr, rr.shape[0])
    acc = 0.0
    for j in range(k):
        acc += rr[j]
    return acc / k


@njit(cache=True, nogil=True)
def is_t_wave(cand, m, F, ci, bi, twave, min_wide):
    """Candidate ci lies within the T-wave window after beat bi and looks like a repolarisation wave beside it:
    less than T_MWI_RATIO of its integrated energy (Pan-Tompkins), less than T_SHAPE_RATIO of its shape value, or
    wide (T_WIDTH_RATIO x the beat's width and >= min_wide samples) and less than T_WIDE_SHAPE_RATIO of it."""
    dt = cand[ci] - cand[bi]
    if dt < 0 or dt > twave:  # inclusive: a peak on the window's last sample is judged too
        return False
    return looks_like_t(cand, m, F, ci, bi, min_wide)


@njit(cache=True, nogil=True)
def looks_like_t(cand, m, F, ci, bi, min_wide, by_energy=True):
    """The shape half of is_t_wave (no timing); F = (shape values, widths) of the candidates. by_energy=False
    leaves out the integrated-energy test (a narrow QRS has less energy than a wide ectopic beat beside it)."""
    q = F[0]
    wd = F[1]
    if (by_energy and m[cand[ci]] < T_MWI_RATIO * m[cand[bi]]) or q[ci] < T_SHAPE_RATIO * q[bi]:
        return True
    wide = wd[ci] >= min_wide and wd[ci] >= T_WIDTH_RATIO * wd[bi]
    return wide and q[ci] < T_WIDE_SHAPE_RATIO * q[bi]


@njit(cache=True, nogil=True)
def search_back(cand, m, F, lo, hi, last, min_v, refr, twave, min_wide):
    """The highest candidate strictly between candidate indices lo and hi, above min_v, outside the refractory
    period of both ends and not a T wave of beat `last`; -1 when none."""
    best = -1
    bestv = min_v
    for cj in range(lo + 1, hi):
        tj = cand[cj]
        if tj - cand[last] < refr or cand[hi] - tj < refr:
            continue
        if is_t_wave(cand, m, F, cj, last, twave, min_wide):
            continue
        if m[tj] > bestv:
            bestv = m[tj]
            best = cj
    return best


@njit(cache=True, nogil=True)
def search_head(cand, m, F, first, rr_avg, rr_min, min_v, gap_min, twave, out):
    """Beats missed before the first detection, walking backwards one expected RR at a time (into out, latest
    first) while the earliest beat lies further in than the mean or the shortest RR (coupled ectopy: the record
    may start with a beat at the coupling interval); returns their number."""
    nh = 0
    ref = first
    while cand[ref] > min(rr_avg, rr_min):
        best = -1
        bestv = min_v
        for cj in range(ref):
            tj = cand[cj]
            if cand[ref] - tj < gap_min:
                break
            if cand[ref] - tj <= SEARCHBACK_RR * rr_avg and m[tj] > bestv:
                bestv = m[tj]
                best = cj
        if best < 0:
            break
        out[nh] = best
        nh += 1
        ref = best
    return nh


@njit(cache=True, nogil=True)
def search_tail(cand, m, F, last, rr_avg, min_v, gap_min, twave, min_wide, nd, out):
    """Beats missed after the last detection, one expected RR at a time (into out); returns their number."""
    nt = 0
    nc = cand.shape[0]
    while nd - 1 - cand[last] > rr_avg:
        best = -1
        bestv = min_v
        for cj in range(last + 1, nc):
            tj = cand[cj]
            if tj - cand[last] < gap_min:
                continue
            if tj - cand[last] > SEARCHBACK_RR * rr_avg:
                break
            if is_t_wave(cand, m, F, cj, last, twave, min_wide):
                continue
            if m[tj] > bestv:
                bestv = m[tj]
                best = cj
        if best < 0:
            break
        out[nt] = best
        nt += 1
        last = best
    return nt


@njit(cache=True, nogil=True)
def drop_t_waves(cand, m, F, beats, twave, min_wide):
    """Final pass over the beats (candidate indices, in time order): of two beats within the T-wave window, a
    later one that is a T wave of the earlier is dropped, and so is an earlier one that would be a T wave of the
    later by the shape half of the test (a T wave taken before its QRS); a first beat within the T-wave window of
    the record start is judged by its shape value against the lower quartile of the beats' (two morphologies)."""
    nb = beats.shape[0]
    out = np.empty(nb, np.int64)
    if nb == 0:
        return out
    qv = np.empty(nb, np.float64)
    for j in range(nb):
        qv[j] = F[0, beats[j]]
    # the record's beats may have two morphologies (coupled ectopy: half or a third of them taller or shorter):
    # a beat is judged against the lower one, the lower quartile of the beats' shape values
    low_q = np.sort(qv)[nb // 4]
    no = 0
    for j in range(nb):
        b = beats[j]
        if no == 0 and cand[b] < twave and qv[j] < T_SHAPE_RATIO * low_q:
            continue  # the T wave of a beat before the record start (its shape judged against the median beat)
        if no > 0:
            a = out[no - 1]
            if cand[b] - cand[a] <= twave:
                if is_t_wave(cand, m, F, b, a, twave, min_wide):
                    continue
                # a T wave before its QRS is judged by shape alone: a normal beat 250-450 ms before an early
                # ectopic beat has a fraction of its integrated energy, but its slope is a QRS's; and it is one
                # only when it is unlike the kept beats before it too (a sinus beat before a taller coupled
                # ectopic beat is like the sinus beat before it)
                if looks_like_t(cand, m, F, a, b, min_wide, False) and not (
                        F[0, a] >= T_PROTECT_RATIO * F[0, b] and like_earlier(F[0], out, no - 1, low_q)):
                    out[no - 1] = b
                    continue
        out[no] = b
        no += 1
    return out[:no]


@njit(cache=True, nogil=True)
def like_earlier(q, out, j, low_q):
    """Kept beat out[j] has T_SHAPE_RATIO of the shape value of one of the two kept beats before it (the record's
    two morphologies, in coupled ectopy), so it is a beat; the first beat is judged against low_q (the lower
    quartile of the record's beats)."""
    if j == 0:
        return q[out[0]] >= T_SHAPE_RATIO * low_q
    for i in range(max(0, j - 2), j):
        if q[out[j]] >= T_SHAPE_RATIO * q[out[i]]:
            return True
    return False


@njit(cache=True, nogil=True)
def median_t_wave(cand, m, F, beats, refr, twave, guard):
    """Median (energy, shape value) of the record's T waves: the highest candidate refr..twave after each beat
    and more than MWI_S before the next one (the next QRS's envelope starts ~MWI_S/2 before its peak; a guard of
    refr left no T wave to measure above ~130 bpm); (0, 0) when fewer than 3 beats have one."""
    nb = beats.shape[0]
    tm = np.empty(nb, np.float64)
    tq = np.empty(nb, np.float64)
    n = 0
    for j in range(nb):
        t0 = cand[beats[j]]
        t1 = cand[beats[j + 1]] if j + 1 < nb else t0 + twave
        best = -1
        for cj in range(beats[j] + 1, cand.shape[0]):
            tc = cand[cj]
            if tc - t0 >= twave or tc >= t1 - guard:
                break
            if tc - t0 >= refr and (best < 0 or m[tc] > m[cand[best]]):
                best = cj
        if best >= 0:
            tm[n] = m[cand[best]]
            tq[n] = F[0, best]
            n += 1
    if n < 3:
        return 0.0, 0.0
    return median_ranked(tm[:n]), median_ranked(tq[:n])


@njit(cache=True, nogil=True)
def rescue_ectopic(cand, m, F, beats, refr, twave, guard, min_v, d, scales, h, E, tol):
    """Beats taken for T waves in a long gap: an early wide ectopic beat (a PVC soon after a beat has a T wave's
    low slope) is found in the gap its compensatory pause leaves, as a peak far above the record's usual T wave
    (ECTOPIC_VS_T x its shape value, ECTOPIC_MWI_VS_T x its energy) and above min_v (ECTOPIC_MIN_THR x the final
    threshold: a slow-rising ectopic beat can have a fifth of a sinus beat's envelope), unless it is T-like beside
    its beat (under T_SHAPE_RATIO of its shape value) and follows the other beats too, at its lag and with its lead
    pattern (follows_every_beat: the record's T wave, tall in AF). Returns the beats with the rescued ones, in time
    order."""
    nb = beats.shape[0]
    if nb < 4:
        return beats
    tm, tq = median_t_wave(cand, m, F, beats, refr, twave, guard)
    if tm == 0.0:
        return beats
    rr = np.empty(nb - 1, np.float64)
    for j in range(nb - 1):
        rr[j] = cand[beats[j + 1]] - cand[beats[j]]
    rr_med = median_ranked(rr)
    qb = np.empty(nb, np.float64)
    for j in range(nb):
        qb[j] = F[0, beats[j]]
    min_q = ECTOPIC_MIN_Q * median_ranked(qb)
    skip = np.zeros(nb, np.bool_)
    v = np.empty(d.shape[0], np.float64)
    out = np.empty(2 * nb, np.int64)
    no = 0
    for j in range(nb):
        out[no] = beats[j]
        no += 1
        if j + 1 == nb or rr[j] <= ECTOPIC_GAP_RR * rr_med:
            continue
        a = cand[beats[j]]
        b = cand[beats[j + 1]]
        best = -1
        for cj in range(beats[j] + 1, beats[j + 1]):
            tc = cand[cj]
            if tc - a < refr or b - tc < refr or m[tc] < min_v or F[0, cj] < min_q:
                continue
            if m[tc] > ECTOPIC_MWI_VS_T * tm and F[0, cj] > ECTOPIC_VS_T * tq and (best < 0 or F[0, cj] > F[0, best]):
                best = cj
        if best < 0:
            continue
        if F[0, best] < T_SHAPE_RATIO * qb[j]:  # T-like beside its beat: the record's T wave if it follows the others
            lead_pattern(d, scales, cand[best], h, v)
            skip[j] = True
            t_wave = follows_every_beat(cand, beats, skip, steepest(E, cand[best], h) - steepest(E, a, h), v, F, d,
                                        scales, h, E, tol, refr)
            skip[j] = False
            if t_wave:
                continue
        out[no] = best
        no += 1
    return out[:no]


@njit(cache=True, nogil=True)
def dominant(cand, m, cj, w, tb, refr):
    """The candidate of the highest envelope within w samples of candidate cj (the peak of the wave cj is on),
    leaving out the QRS of the beat at tb (candidates within refr of it)."""
    dom = cj
    k = cj - 1
    while k >= 0 and cand[cj] - cand[k] <= w:
        if m[cand[k]] > m[cand[dom]] and abs(cand[k] - tb) >= refr:
            dom = k
        k -= 1
    k = cj + 1
    while k < cand.shape[0] and cand[k] - cand[cj] <= w:
        if m[cand[k]] > m[cand[dom]] and abs(cand[k] - tb) >= refr:
            dom = k
        k += 1
    return dom


@njit(cache=True, nogil=True)
def coupled_like(cand, m, F, cj, bi, min_v, fd, E, h, max_ew=ECT_MAX_EW_S):
    """Candidate cj looks like a QRS of a second morphology, not like beat bi's T wave (see rescue_coupled): 1;
    broad (an equivalent envelope width of ECT_MAX_EW_S up to ECT_BROAD_EW_S) and steep in nearly every lead, like
    a wide ectopic beat and like the T wave beside a low QRS alike: 2 (a beat only with the rhythm's or the
    morphologies' evidence, see absent_elsewhere and unlike_its_beats); else 0. Its width and agreement are those
    of the wave it is on (its highest envelope peak within MWI_S: a T wave's envelope has side peaks on its slopes,
    narrower than the wave)."""
    if m[cand[cj]] < min_v or F[0, cj] < ECT_Q * F[0, bi]:
        return 0
    dom = dominant(cand, m, cj, MWI_S * fd, cand[bi], REFRACTORY_S * fd)
    if F[2, dom] < 0.0:  # not yet computed
        F[2, dom] = equivalent_width(E, cand[dom], h)
    ew = F[2, dom] / fd
    if ew < max_ew:
        need = ECT_AGREE_NARROW + (ECT_AGREE_WIDE - ECT_AGREE_NARROW) * min(1.0, max(0.0, (ew - ECT_NARROW_EW_S) / (
            ECT_WIDE_EW_S - ECT_NARROW_EW_S)))
        # a wide ectopic beat (a slow depolarisation) is steep in every lead at a lower level; a tall or peaked T
        # wave is tall in some leads and a normal T wave's slope in the others is far below it
        if F[3, dom] >= need or (F[3, dom] >= ECT_ALL_AGREE and F[4, dom] >= ECT_ALL_FRAC):
            return 1
    if ew < ECT_BROAD_EW_S and F[3, dom] >= ECT_BROAD_AGREE and F[4, dom] >= ECT_ALL_FRAC:
        return 2
    return 0


@njit(cache=True, nogil=True)
def stands_out(cand, m, cj, lo, hi, w):
    """The wave candidate cj is on (its highest envelope peak within w) is ECT_STAND_OUT x every other wave's between
    the beats lo and hi (candidate indices; waves within w samples of it or of either beat left out): an ectopic
    beat stands out of the T waves around it, a noise burst does not stand out of the others."""
    dom = dominant(cand, m, cj, w, cand[lo], w)
    top = m[cand[dom]]
    for k in range(lo + 1, hi):
        tk = cand[k]
        if (tk - cand[lo] > w and cand[hi] - tk > w and abs(tk - cand[cj]) > w and abs(tk - cand[dom]) > w
                and ECT_STAND_OUT * m[tk] > top):
            return False
    return True


@njit(cache=True, nogil=True)
def lead_pattern(d, scales, t, h, out):
    """The band-passed slope of each lead, in units of its typical QRS slope (0 for dropped leads), at the instant
    within +-h of t where the leads' summed squared normalised slope peaks: the candidate's morphology across leads
    at one phase of it, into out (a wave with two equal slopes may peak on either: compare up to sign)."""
    L, nd = d.shape
    best = -1.0
    nb = t
    for n in range(max(0, t - h), min(nd, t + h + 1)):
        acc = 0.0
        for l in range(L):
            if scales[l] > 0.0:
                v = d[l, n] / scales[l]
                acc += v * v
        if acc > best:
            best = acc
            nb = n
    for l in range(L):
        out[l] = d[l, nb] / scales[l] if scales[l] > 0.0 else 0.0


@njit(cache=True, nogil=True)
def similar(i, j, q, cpl, cpd, P, tol):
    """Two coupled beats alike: coupling intervals within tol (between the waves' steepest instants, cpl, or their
    envelope peaks, cpd: a symmetric wave's two flanks are about as steep, so its steepest instant can move from one
    to the other between beats), shape values within ECT_GROUP_Q of each other and lead patterns with a cosine >=
    ECT_GROUP_COS in size."""
    if min(abs(cpl[i] - cpl[j]), abs(cpd[i] - cpd[j])) > tol or q[i] > ECT_GROUP_Q * q[j] or q[j] > ECT_GROUP_Q * q[i]:
        return False
    uv = 0.0
    uu = 0.0
    vv = 0.0
    for l in range(P.shape[1]):
        uv += P[i, l] * P[j, l]
        uu += P[i, l] * P[i, l]
        vv += P[j, l] * P[j, l]
    return uu > 0.0 and vv > 0.0 and abs(uv) >= ECT_GROUP_COS * np.sqrt(uu * vv)


@njit(cache=True, nogil=True)
def rescue_coupled(cand, m, F, beats, refr, min_v, fd, d, scales, h, E):
    """Ectopic beats coupled to the beat before them (bigeminy, trigeminy). In each gap between two beats, the candidate
    of the highest shape value that lies in the gap's first half (an ectopic beat comes early and leaves a longer
    interval after it; this also keeps an atrial pacing spike 220 ms before its QRS out), >= refr from both beats,
    above min_v, and that looks like a QRS of a second morphology, not like the earlier beat's T wave
    (coupled_like): at least ECT_Q x that beat's shape value, narrow (equivalent envelope width under ECT_MAX_EW_S:
    a T wave's slope is broad, even where the T is tall or the QRS is low) and steep in enough leads
    (ECT_AGREE_NARROW of them when it is as narrow as a QRS, rising to ECT_AGREE_WIDE at the width limit: a tall,
    narrow T wave is tall in some leads), and standing out of the other waves in its gap (stands_out). Such a
    candidate is a beat when the record holds another beat like it (similar): another such candidate, or a beat of
    the decisions that came early (its interval under ECT_PREMATURE of the next one), at the same coupling interval
    (intervals are measured between the waves' steepest instants, see steepest)
    (within ECT_GROUP_TOL_S), of a similar shape value and lead pattern: coupled ectopy repeats itself, a noise
    burst does not. Taller, shorter, wider and inverted ectopic beats pass, whatever the coupling interval (>= 300
    ms) and however the earlier T-wave tests judged them beside the sinus beat. One as broad as a T wave beside a
    low QRS (coupled_like: 2) needs the rhythm's or the morphologies' evidence too (absent_elsewhere,
    unlike_its_beats), and none T-like beside its beat (under T_SHAPE_RATIO of its shape value) may follow the
    other beats too, at its lag and with its lead pattern (follows_every_beat: the record's T wave). Then the
    record's head and tail are searched for one at one of the found coupling intervals, with a similar lead pattern
    (before the first beat: at one of their intervals to the next beat). Returns the beats with the found ones, in
    time order."""
    nb = beats.shape[0]
    nc = cand.shape[0]
    L = d.shape[0]
    if nb < 2:
        return beats
    # the pool: per gap, its rescue candidate (kind 1) or its early beat of the decisions (kind 2)
    idx = np.empty(nb, np.int64)
    kind = np.zeros(nb, np.int64)
    gap = np.empty(nb, np.int64)
    cpl = np.empty(nb, np.float64)
    cpd = np.empty(nb, np.float64)
    apd = np.empty(nb, np.float64)
    aft = np.empty(nb, np.float64)
    qv = np.empty(nb, np.float64)
    P = np.zeros((nb, L), np.float64)
    npool = 0
    for j in range(nb - 1):
        a = cand[beats[j]]
        b = cand[beats[j + 1]]
        best = -1
        broad = -1
        for cj in range(beats[j] + 1, beats[j + 1]):
            tc = cand[cj]
            if tc - a < refr or b - tc < refr or b - tc < tc - a:
                continue
            c = coupled_like(cand, m, F, cj, beats[j], min_v, fd, E, h)
            if c == 1 and (best < 0 or F[0, cj] > F[0, best]):
                best = cj
            elif c == 2 and (broad < 0 or F[0, cj] > F[0, broad]):
                broad = cj
        is_broad = best < 0 and broad >= 0
        if is_broad:
            best = broad
        if best >= 0:
            best = dominant(cand, m, best, MWI_S * fd, a, refr)  # the wave's peak (its lobes move about)
            if cand[best] - a < refr or b - cand[best] < refr or not stands_out(cand, m, best, beats[j], beats[j + 1],
                                                                               MWI_S * fd):
                best = -1
        if best >= 0:
            idx[npool] = best
            kind[npool] = 3 if is_broad else 1
            cpl[npool] = steepest(E, cand[best], h) - steepest(E, a, h)
            cpd[npool] = cand[best] - a
            aft[npool] = steepest(E, b, h) - steepest(E, cand[best], h)
            apd[npool] = b - cand[best]
        elif j > 0 and a - cand[beats[j - 1]] < ECT_PREMATURE * (b - a):
            # the decisions keep a wave's highest envelope peak, which can be a lobe beside its steep part: its
            # shape value and lead pattern are taken at the wave's lobe of the highest shape value
            idx[npool] = best_lobe(cand, F, beats[j], 2 * h)
            kind[npool] = 2
            cpl[npool] = steepest(E, cand[idx[npool]], h) - steepest(E, cand[beats[j - 1]], h)
            cpd[npool] = a - cand[beats[j - 1]]
            aft[npool] = steepest(E, b, h) - steepest(E, cand[idx[npool]], h)
            apd[npool] = b - a
        else:
            continue
        gap[npool] = j
        qv[npool] = F[0, idx[npool]]
        lead_pattern(d, scales, cand[idx[npool]], h, P[npool])
        npool += 1
    tol = ECT_GROUP_TOL_S * fd
    # alike pairs; a broad one (kind 3) needs the rhythm's evidence too, and counts as a partner only then
    ok = np.zeros(npool, np.bool_)
    for i in range(npool):
        for k in range(npool):
            if k != i and (kind[k] != 3 or kind[i] == 3) and similar(i, k, qv, cpl, cpd, P, tol):
                ok[i] = True
                break
    for i in range(npool):
        if ok[i] and kind[i] == 3:
            ok[i] = (absent_elsewhere(cand, beats, i, gap, npool, qv, cpl, cpd, P, F, d, scales, h, E, tol, refr)
                     or unlike_its_beats(cand, beats, i, gap, npool, qv, cpl, cpd, aft, P, d, scales, h, tol))
    for i in range(npool):
        if not ok[i] and kind[i] != 3:
            for k in range(npool):
                if kind[k] == 3 and ok[k] and similar(i, k, qv, cpl, cpd, P, tol):
                    ok[i] = True
                    break
    # a wave that follows the other beats too, at its lag and with its lead pattern, and that the T-wave test judged
    # T-like beside its beat (under T_SHAPE_RATIO of its shape value), is the record's T wave (in atrial
    # fibrillation the pause after a tall T wave is as random as after a beat)
    skip = np.zeros(nb, np.bool_)
    for k in range(npool):
        skip[gap[k]] = kind[k] != 2
    for i in range(npool):
        if (ok[i] and kind[i] == 1 and qv[i] < T_SHAPE_RATIO * F[0, beats[gap[i]]]
                and follows_every_beat(cand, beats, skip, cpl[i], P[i], F, d, scales, h, E, tol, refr)):
            ok[i] = False
    # rescued ones leave a pause after them (the median over those alike): the next beat comes soon after a T wave
    # as steep and as narrow as a low, wide QRS (one of a higher shape value than the beat before it is no T wave)
    ratio = np.empty(npool, np.float64)
    for i in range(npool):
        if not (ok[i] and kind[i] == 1) or qv[i] > F[0, beats[gap[i]]]:
            continue
        n = 0
        for k in range(npool):
            if k == i or similar(i, k, qv, cpl, cpd, P, tol):
                ratio[n] = aft[k] / max(cpl[k], 1.0)
                n += 1
        ok[i] = median_ranked(ratio[:n]) >= ECT_MIN_PAUSE
    out = np.empty(nb + npool + 2, np.int64)
    no = 1  # out[0] is left for an ectopic beat before the first beat
    pi = 0
    for j in range(nb):
        out[no] = beats[j]
        no += 1
        while pi < npool and gap[pi] < j:
            pi += 1
        if pi < npool and gap[pi] == j and kind[pi] != 2 and ok[pi]:
            out[no] = idx[pi]
            no += 1
    first = 1
    v = np.empty(L, np.float64)
    n_ok = 0
    for i in range(npool):
        n_ok += ok[i]
    if n_ok >= 2:
        # the tail: after the last beat, at one of the found coupling intervals, with that beat's lead pattern
        a = cand[beats[nb - 1]]
        best = -1
        max_cpl = 0.0
        max_aft = 0.0
        for i in range(npool):
            if ok[i]:
                max_cpl = max(max_cpl, cpl[i], cpd[i])
                max_aft = max(max_aft, aft[i], apd[i])
        for cj in range(beats[nb - 1] + 1, nc):
            tc = cand[cj]
            if tc - a > max_cpl + tol:
                break
            if tc - a < refr or coupled_like(cand, m, F, cj, beats[nb - 1], min_v, fd, E, h, ECT_EDGE_EW_S) != 1:
                continue
            dj = dominant(cand, m, cj, MWI_S * fd, a, refr)
            lead_pattern(d, scales, cand[dj], h, v)
            alike = (matches_pool(steepest(E, cand[dj], h) - steepest(E, a, h), F[0, dj], v, cpl, qv, P, ok, tol)
                     or matches_pool(cand[dj] - a, F[0, dj], v, cpd, qv, P, ok, tol))
            if alike and (best < 0 or F[0, dj] > F[0, best]):
                best = dj
        if best >= 0:
            out[no] = best
            no += 1
        # the head: before the first beat, at one of the found intervals from an ectopic beat to the next beat
        b = cand[beats[0]]
        best = -1
        for cj in range(beats[0] - 1, -1, -1):
            tc = cand[cj]
            if b - tc > max_aft + tol:
                break
            if b - tc < refr or coupled_like(cand, m, F, cj, beats[0], min_v, fd, E, h, ECT_EDGE_EW_S) != 1:
                continue
            dj = dominant(cand, m, cj, MWI_S * fd, b, refr)
            lead_pattern(d, scales, cand[dj], h, v)
            alike = (matches_pool(steepest(E, b, h) - steepest(E, cand[dj], h), F[0, dj], v, aft, qv, P, ok, tol)
                     or matches_pool(b - cand[dj], F[0, dj], v, apd, qv, P, ok, tol))
            if alike and (best < 0 or F[0, dj] > F[0, best]):
                best = dj
        if best >= 0:
            out[0] = best
            first = 0
    return out[first:no].copy()


@njit(cache=True, nogil=True)
def absent_elsewhere(cand, beats, i, gap, npool, qv, cpl, cpd, P, F, d, scales, h, E, tol, refr):
    """The rhythm's evidence for broad coupled beat i of the pool (see coupled_like): a T wave follows every beat at
    its lag with its lead pattern, an ectopic beat follows only some and leaves a longer gap (trigeminy: the beat
    before it is followed by a shorter gap without it). True when the gaps that hold a wave like it (a pool entry
    similar to it) are each >= ECT_RESET x longer than every gap without one, and >= 2 and >= 1/4 of the inner
    gaps (long enough to hold it) have none: no candidate there at its coupling (within tol) with a similar shape
    value and lead pattern."""
    nb = beats.shape[0]
    L = d.shape[0]
    v = np.empty(L, np.float64)
    min_hold = np.inf
    for k in range(npool):
        if k == i or similar(i, k, qv, cpl, cpd, P, tol):
            min_hold = min(min_hold, cand[beats[gap[k] + 1]] - cand[beats[gap[k]]])
    n_gaps = 0
    n_without = 0
    for j in range(nb - 1):
        a = cand[beats[j]]
        b = cand[beats[j + 1]]
        if b - a < cpl[i] + refr:
            continue  # too short to hold it
        n_gaps += 1
        held = False
        for k in range(npool):
            if gap[k] == j and (k == i or similar(i, k, qv, cpl, cpd, P, tol)):
                held = True
        if held:
            continue
        sa = steepest(E, a, h)
        for cj in range(beats[j] + 1, beats[j + 1]):
            iv = steepest(E, cand[cj], h) - sa
            if abs(iv - cpl[i]) > tol or F[0, cj] > ECT_GROUP_Q * qv[i] or qv[i] > ECT_GROUP_Q * F[0, cj]:
                continue
            lead_pattern(d, scales, cand[cj], h, v)
            uv = 0.0
            uu = 0.0
            vv = 0.0
            for l in range(L):
                uv += v[l] * P[i, l]
                uu += v[l] * v[l]
                vv += P[i, l] * P[i, l]
            if uu > 0.0 and vv > 0.0 and abs(uv) >= ECT_GROUP_COS * np.sqrt(uu * vv):
                held = True
                break
        if held:
            return False  # a gap without a pool entry holds a wave like it: the record's T wave
        n_without += 1
        if ECT_RESET * (b - a) > min_hold:
            return False
    return n_without >= 2 and 4 * n_without >= n_gaps


@njit(cache=True, nogil=True)
def follows_every_beat(cand, beats, skip, lag, p, F, d, scales, h, E, tol, refr):
    """The rhythm's evidence against an early candidate at interval lag (between steepest instants) after its beat,
    of lead pattern p: a T wave follows every beat at its lag, an ectopic beat only some. True when the record has
    >= ECT_T_LAG_LEADS leads and >= ECT_T_LAG_MIN inner gaps not in skip (the gaps holding such candidates) and
    long enough to hold one, and ECT_T_LAG_FRAC of them hold a wave at that lag (within tol) with a lead pattern
    like p (|cosine| >= ECT_GROUP_COS) and at least ECT_Q x the shape value of the beat before it (not a flat
    stretch's ripple), however tall (a T wave's height varies from beat to beat; in AF the tallest pass as early
    beats, and the pause after them is as random as after a beat)."""
    nb = beats.shape[0]
    L = d.shape[0]
    n_leads = 0
    for l in range(L):
        n_leads += scales[l] > 0.0
    if n_leads < ECT_T_LAG_LEADS:
        return False
    v = np.empty(L, np.float64)
    n_gaps = 0
    n_held = 0
    for j in range(nb - 1):
        a = cand[beats[j]]
        b = cand[beats[j + 1]]
        if skip[j] or b - a < lag + refr:
            continue  # a gap with such a candidate of its own, or too short to hold one
        n_gaps += 1
        sa = steepest(E, a, h)
        for cj in range(beats[j] + 1, beats[j + 1]):
            if abs(steepest(E, cand[cj], h) - sa - lag) > tol or F[0, cj] < ECT_Q * F[0, beats[j]]:
                continue
            lead_pattern(d, scales, cand[cj], h, v)
            if pattern_cos(v, p) >= ECT_GROUP_COS:
                n_held += 1
                break
    return n_gaps >= ECT_T_LAG_MIN and n_held >= ECT_T_LAG_FRAC * n_gaps


@njit(cache=True, nogil=True)
def pattern_cos(u, v):
    """|cosine| of two lead patterns (0 when either is all zero)."""
    uv = 0.0
    uu = 0.0
    vv = 0.0
    for l in range(u.shape[0]):
        uv += u[l] * v[l]
        uu += u[l] * u[l]
        vv += v[l] * v[l]
    return abs(uv) / np.sqrt(uu * vv) if uu > 0.0 and vv > 0.0 else 0.0


@njit(cache=True, nogil=True)
def unlike_its_beats(cand, beats, i, gap, npool, qv, cpl, cpd, aft, P, d, scales, h, tol):
    """The morphologies' evidence for broad coupled beat i of the pool where every gap holds one (bigeminy): the T
    waves as broad and as steep beside a low QRS had a lead pattern like their QRS's up to sign (|cosine| >= 0.87
    in the provoking records and the generator's), an ectopic beat has its own; and an ectopic beat leaves a pause.
    True when i and the >= 2 others like it each have a lead pattern with a |cosine| under ECT_UNLIKE_COS with the
    beat before them and an interval to the next beat >= ECT_PAUSE x their coupling interval."""
    L = d.shape[0]
    v = np.empty(L, np.float64)
    n = 0
    for k in range(npool):
        if k != i and not similar(i, k, qv, cpl, cpd, P, tol):
            continue
        if aft[k] < ECT_PAUSE * cpl[k]:
            return False
        lead_pattern(d, scales, cand[beats[gap[k]]], h, v)
        c = pattern_cos(v, P[k])
        if c == 0.0 or c >= ECT_UNLIKE_COS:
            return False
        n += 1
    return n >= 3


@njit(cache=True, nogil=True)
def steepest(E, t, h):
    """The instant of the highest combined squared slope E within +-h of t: where a wave is steepest, whichever of
    its envelope lobes t is on (intervals between beats are measured there)."""
    a = max(0, t - h)
    b = min(E.shape[0], t + h + 1)
    top = abs_max(E, a, b)  # E >= 0: its max (a vectorised reduction; a scan for a larger value mispredicts)
    if not top > E[t]:
        return t  # t itself holds the maximum (the scan keeps t unless a larger value comes)
    for n in range(a, b):  # the first sample of the maximum
        if E[n] == top:
            return n
    return t


@njit(cache=True, nogil=True)
def steepest_reference(E, t, h):
    """steepest written plainly (the parity reference)."""
    p = t
    for n in range(max(0, t - h), min(E.shape[0], t + h + 1)):
        if E[n] > E[p]:
            p = n
    return p


@njit(cache=True, nogil=True)
def best_lobe(cand, F, ci, w):
    """The candidate of the highest shape value within w samples of candidate ci (ci itself on ties)."""
    best = ci
    k = ci - 1
    while k >= 0 and cand[ci] - cand[k] <= w:
        if F[0, k] > F[0, best]:
            best = k
        k -= 1
    k = ci + 1
    while k < cand.shape[0] and cand[k] - cand[ci] <= w:
        if F[0, k] > F[0, best]:
            best = k
        k += 1
    return best


@njit(cache=True, nogil=True)
def matches_pool(iv, q, v, ivs, qv, P, ok, tol):
    """A candidate at interval iv with shape value q and lead pattern v is like a found coupled beat (ok)."""
    for i in range(ivs.shape[0] if ivs.shape[0] < ok.shape[0] else ok.shape[0]):
        if not ok[i] or abs(iv - ivs[i]) > tol or q > ECT_GROUP_Q * qv[i] or qv[i] > ECT_GROUP_Q * q:
            continue
        uv = 0.0
        uu = 0.0
        vv = 0.0
        for l in range(v.shape[0]):
            uv += v[l] * P[i, l]
            uu += v[l] * v[l]
            vv += P[i, l] * P[i, l]
        if uu > 0.0 and vv > 0.0 and abs(uv) >= ECT_GROUP_COS * np.sqrt(uu * vv):
            return True
    return False


@njit(cache=True, nogil=True)
def decide(m, E, d, valid, scales, weights, fd, xd, finite):
    """Beats (decimated indices) from the integrated envelope m: adaptive signal / noise levels and threshold,
    one beat per QRS (the envelope peaks within SAME_QRS_S of where a beat was first detected: the highest is kept),
    T-wave test, search-back for missed beats, the record's head and tail, then early ectopic beats in long gaps."""
    nd = m.shape[0]
    refr = max(1, int(round(REFRACTORY_S * fd)))
    same = max(1, int(round(SAME_QRS_S * fd)))
    twave = int(round(TWAVE_S * fd))
    wlen = max(2, int(round(fd)))
    spk, mean_level = median_window_stats(m, wlen, 8)
    hs = max(1, int(round(0.5 * MWI_S * fd)))
    cand = candidates(m)
    mx = lead_peaks(cand, d, scales, hs)
    keep = drop_steps(cand, m, E, xd, d, valid, finite, scales, weights, fd, STEP_MIN_SPK * spk, mx)
    cand = cand[keep]
    nc = cand.shape[0]
    if nc == 0:
        return cand
    F = shape_values(cand, E, mx[keep], valid, scales, weights, hs)
    min_wide = max(1, int(round(T_MIN_WIDTH_S * fd)))
    npk = min(mean_level, 0.5 * spk)
    beats = np.empty(nc, np.int64)  # candidate indices
    nb = 0
    rr = np.zeros(8, np.float64)
    nrr = 0
    ci = 0
    anchor = 0  # where the last beat was first detected
    while ci < nc:
        v = m[cand[ci]]
        if nb > 0 and cand[ci] - anchor < same:
            if v > m[cand[beats[nb - 1]]]:  # the same QRS: keep its highest envelope peak
                beats[nb - 1] = ci
            ci += 1
            continue
        if (nb > 0 and cand[ci] - cand[beats[nb - 1]] < refr and v <= m[cand[beats[nb - 1]]]
                and steepest(E, cand[ci], hs) - steepest(E, cand[beats[nb - 1]], hs) < refr):
            # a lower peak within the refractory period of the kept one, at their steepest instants too (an
            # envelope's highest lobe can lie 30 ms past its QRS's steepest instant): the tail lobe of a wide QRS's
            # envelope, never a beat (taken for one, it would claim the early ectopic beat that follows as part of
            # itself).
            # A higher one goes on to the tests below (the leading lobe of an early ectopic beat).
            ci += 1
            continue
        thr = threshold(spk, npk)
        if nb > 0 and nrr > 0 and cand[ci] - cand[beats[nb - 1]] > SEARCHBACK_RR * rr_mean(rr, nrr, fd):
            best = search_back(cand, m, F, beats[nb - 1], ci, beats[nb - 1], 0.5 * thr, refr, twave, min_wide)
            if best >= 0:
                rr[nrr % 8] = cand[best] - cand[beats[nb - 1]]
                nrr += 1
                beats[nb] = best
                nb += 1
                anchor = cand[best]
                spk = 0.25 * m[cand[best]] + 0.75 * spk
                continue  # re-examine the current candidate against the new last beat
        if v > thr and not (nb > 0 and is_t_wave(cand, m, F, ci, beats[nb - 1], twave, min_wide)):
            if nb > 0:
                rr[nrr % 8] = cand[ci] - cand[beats[nb - 1]]
                nrr += 1
            beats[nb] = ci
            nb += 1
            anchor = cand[ci]
            spk = 0.125 * v + 0.875 * spk
        else:
            npk = 0.125 * v + 0.875 * npk
        ci += 1
    if nb == 0:
        return cand[:0]
    rr_avg = rr_mean(rr, nrr, fd)
    min_v = 0.5 * threshold(spk, npk)
    # the shortest RR among the beats without the T (or P) waves taken for beats (they would make it short)
    clean = drop_t_waves(cand, m, F, beats[:nb], twave, min_wide)
    rr_min = rr_avg
    for j in range(1, clean.shape[0]):
        rr_min = min(rr_min, cand[clean[j]] - cand[clean[j - 1]])
    gap_min = max(refr, int(0.6 * min(rr_avg, rr_min)))
    head = np.empty(nc, np.int64)
    nh = search_head(cand, m, F, beats[0], rr_avg, rr_min, min_v, gap_min, twave, head)
    tail = np.empty(nc, np.int64)
    nt = search_tail(cand, m, F, beats[nb - 1], rr_avg, min_v, gap_min, twave, min_wide, nd, tail)
    allb = np.empty(nh + nb + nt, np.int64)
    for j in range(nh):
        allb[j] = head[nh - 1 - j]
    allb[nh : nh + nb] = beats[:nb]
    allb[nh + nb :] = tail[:nt]
    kept = drop_t_waves(cand, m, F, allb, twave, min_wide)
    kept = rescue_coupled(cand, m, F, kept, refr, ECTOPIC_MIN_THR * threshold(spk, npk), fd, d, scales,
                          max(1, int(round(0.5 * MWI_S * fd))), E)
    keep = rescue_ectopic(cand, m, F, kept, refr, twave, max(1, int(round(MWI_S * fd))),
                          ECTOPIC_MIN_THR * threshold(spk, npk), d, scales, hs, E, ECT_GROUP_TOL_S * fd)
    out = np.empty(keep.shape[0], np.int64)
    for j in range(keep.shape[0]):
        out[j] = cand[keep[j]]
    return out


# ----------------------------------------------------------------------------------------------------------------
# 5. the R point
# ----------------------------------------------------------------------------------------------------------------
# The fiducial is the R peak: the largest baseline-removed deflection, in the lead's QRS polarity, of the record's
# dominant lead (the lead with the largest median QRS deviation) that is finite around the beat; the opposite
# deflection when it is twice as large (a beat of inverted morphology, e.g. a ventricular ectopic beat).


@njit(cache=True, nogil=True, fastmath=True, inline="always")  # inlined: as fast as written out in each caller
def _baseline_finite(xl, c, w, h, lo, hi):
    """The window [a, e) around c and the straight baseline through the means of the flanks [c - h, a) and
    [e, c + h]: (a, e, b0, slope, t0), baseline(i) = b0 + slope * (i - t0) (sums over views vectorise)."""
    a = max(lo, c - w)
    e = min(hi, c + w + 1)
    l0 = max(lo, c - h)
    r1 = min(hi, c + h + 1)
    nl = a - l0
    nr = r1 - e
    sl = 0.0
    seg = xl[l0:a]
    for i in range(nl):
        sl += seg[i]
    sr = 0.0
    seg = xl[e:r1]
    for i in range(nr):
        sr += seg[i]
    slope = 0.0
    t0 = 0.0
    if nl > 0 and nr > 0:
        ml = sl / nl
        t0 = 0.5 * (l0 + a - 1)
        slope = (sr / nr - ml) / (0.5 * (e + r1 - 1) - t0)
        b0 = ml
    elif nl > 0:
        b0 = sl / nl
    elif nr > 0:
        b0 = sr / nr
    else:
        b0 = 0.0
        seg = xl[a:e]
        for i in range(e - a):
            b0 += seg[i]
        b0 /= max(1, e - a)
    return a, e, b0, slope, t0


@njit(cache=True, nogil=True, fastmath=True)  # xl is all finite (checked by the caller)
def extrema_finite(xl, c, w, h, lo, hi):
    """extrema for an all-finite lead (no NaN checks)."""
    a, e, b0, slope, t0 = _baseline_finite(xl, c, w, h, lo, hi)
    imax = a
    imin = a
    vmax = -np.inf
    vmin = np.inf
    seg = xl[a:e]
    for i in range(e - a):
        v = seg[i] - (b0 + slope * (a + i - t0))
        if v > vmax:
            vmax = v
            imax = a + i
        if v < vmin:
            vmin = v
            imin = a + i
    return imax, vmax, imin, vmin


@njit(cache=True, nogil=True, fastmath=True, inline="always")  # xl is all finite (checked by the caller); inlined
def deviation_finite(xl, c, w, h, lo, hi):
    """(v_max, v_min) of extrema_finite without their indices, as integer max / min reductions over order keys
    (see order_key; a float compare-and-select reduction does not vectorise). Empty window: (-inf, inf)."""
    a, e, b0, slope, t0 = _baseline_finite(xl, c, w, h, lo, hi)
    kmax = order_key(-np.inf)
    kmin = order_key(np.inf)
    seg = xl[a:e]
    for i in range(e - a):
        k = order_key(seg[i] - (b0 + slope * (a + i - t0)))
        kmax = max(kmax, k)
        kmin = min(kmin, k)
    return _bits_to_float(order_key_inverse(kmax)), _bits_to_float(order_key_inverse(kmin))


@njit(cache=True, nogil=True, fastmath=True)  # xl is all finite (checked by the caller)
def deviation_finite_reference(xl, c, w, h, lo, hi):
    """deviation_finite with float max / min (the parity reference)."""
    a, e, b0, slope, t0 = _baseline_finite(xl, c, w, h, lo, hi)
    vmax = -np.inf
    vmin = np.inf
    seg = xl[a:e]
    for i in range(e - a):
        v = seg[i] - (b0 + slope * (a + i - t0))
        vmax = max(vmax, v)
        vmin = min(vmin, v)
    return vmax, vmin


@njit(cache=True, nogil=True)
def moving_average(xl, a, e, m):
    """The centred moving average over +-m samples of xl at samples a..e-1 (float64), shrunk symmetrically at the
    record edges: per sample the sum xl[n - mm] + ... + xl[n + mm] from 0.0 in that order, over 2 mm + 1. Inside the
    record it is summed as 2m + 1 passes over the window (the same sums per sample; the passes vectorise), at the
    edges one sample at a time."""
    return moving_average_into(xl, a, e, m, np.zeros(max(0, e - a), np.float64))


@njit(cache=True, nogil=True)
def moving_average_into(xl, a, e, m, buf):
    """moving_average written into the scratch buf (>= e - a long; zeroed here): the view buf[:e - a]."""
    xs = buf[: max(0, e - a)]
    xs[:] = 0.0
    nd = xl.shape[0]
    ia = min(max(a, m), e)
    ib = max(min(e, nd - m), ia)
    dst = xs[ia - a : ib - a]
    for j in range(2 * m + 1):
        src = xl[ia - m + j : ib - m + j]
        for i in range(ib - ia):
            dst[i] += src[i]
    for i in range(ib - ia):
        dst[i] = dst[i] / (2 * m + 1)
    for n in range(a, e):
        if not ia <= n < ib:
            xs[n - a] = _centred_mean(xl, n, m)
    return xs


@njit(cache=True, nogil=True, inline="always")
def _centred_mean(xl, n, m):
    """The mean of xl[n - mm] .. xl[n + mm], summed from 0.0 in that order; mm = m shrunk symmetrically at the record
    edges (one sample of moving_average)."""
    mm = min(m, n, xl.shape[0] - 1 - n)
    acc = 0.0
    for j in range(n - mm, n + mm + 1):
        acc += xl[j]
    return acc / (2 * mm + 1)


@njit(cache=True, nogil=True)
def moving_average_reference(xl, a, e, m):
    """moving_average written plainly, one sample at a time (the parity reference of its vectorised inner part)."""
    xs = np.zeros(max(0, e - a), np.float64)
    for n in range(a, e):
        xs[n - a] = _centred_mean(xl, n, m)
    return xs


@njit(cache=True, nogil=True, inline="always")
def _flank_line(sl, tl, nl, sr, tr, nr):
    """The baseline of extrema / extrema_ma_finite from its flanks' sums (values sl / sr, times tl / tr, counts
    nl / nr): (b0, slope, t0), the line b0 + slope (n - t0) through the two flank means; one flank only -> its mean
    (slope 0, t0 0); none -> (0, 0, 0), and the caller takes the window mean."""
    if nl > 0 and nr > 0:
        ml = sl / nl
        t0 = tl / nl
        return ml, (sr / nr - ml) / (tr / nr - t0), t0
    if nl > 0:
        return sl / nl, 0.0, 0.0
    if nr > 0:
        return sr / nr, 0.0, 0.0
    return 0.0, 0.0, 0.0


@njit(cache=True, nogil=True)
def extrema(xl, c, w, h, lo, hi, m=0):
    """Baseline-removed extrema of xl within [c - w, c + w] (clipped to [lo, hi): the record, or the half-way
    points to the neighbouring detections, so that at fast rates no flank reaches into the next QRS).

    The baseline is the line through the means of the two flanks [c - h, c - w) and (c + w, c + h] (non-finite
    samples left out; one flank only -> a constant; none -> the window mean), so a linear trend (baseline wander)
    is removed exactly. Returns (i_max, v_max, i_min, v_min) of xl - baseline; i = -1 when no sample is finite."""
    a = max(lo, c - w)
    e = min(hi, c + w + 1)
    sl = 0.0
    nl = 0
    tl = 0.0
    for n in range(max(lo, c - h), a):
        v = xl[n]
        if abs(v) < np.inf:
            sl += v
            tl += n
            nl += 1
    sr = 0.0
    nr = 0
    tr = 0.0
    for n in range(e, min(hi, c + h + 1)):
        v = xl[n]
        if abs(v) < np.inf:
            sr += v
            tr += n
            nr += 1
    b0, slope, t0 = _flank_line(sl, tl, nl, sr, tr, nr)
    if nl == 0 and nr == 0:
        cnt = 0
        for n in range(a, e):
            v = xl[n]
            if abs(v) < np.inf:
                b0 += v
                cnt += 1
        if cnt > 0:
            b0 /= cnt
    imax = -1
    imin = -1
    vmax = -np.inf
    vmin = np.inf
    xs = moving_average(xl, a, e, m) if m > 0 else np.zeros(0, np.float64)
    for n in range(a, e):
        xv = xs[n - a] if m > 0 else xl[n]
        v = xv - (b0 + slope * (n - t0))
        if v > vmax:  # NaN compares False
            vmax = v
            imax = n
        if v < vmin:
            vmin = v
            imin = n
    return imax, vmax, imin, vmin



@njit(cache=True, nogil=True)
def extrema_ma_finite(xl, c, w, h, lo, hi, m, buf):
    """extrema(xl, c, w, h, lo, hi, m) for an all-finite lead (the R point's call): the same flank sums without the
    finiteness checks, and the window's extremes by integer max / min reductions over order keys (see order_key;
    they vectorise, the float compare-and-select scan does not), then the first sample holding each (extrema keeps
    the first of equal values). buf: scratch for the moving average (>= 2 w + 1 long). An empty window, m = 0 or a
    non-finite deviation (overflow) goes to extrema."""
    a = max(lo, c - w)
    e = min(hi, c + w + 1)
    if e <= a or m <= 0:
        return extrema(xl, c, w, h, lo, hi, m)
    sl = 0.0
    nl = 0
    tl = 0.0
    for n in range(max(lo, c - h), a):
        sl += xl[n]
        tl += n
        nl += 1
    sr = 0.0
    nr = 0
    tr = 0.0
    for n in range(e, min(hi, c + h + 1)):
        sr += xl[n]
        tr += n
        nr += 1
    b0, slope, t0 = _flank_line(sl, tl, nl, sr, tr, nr)
    if nl == 0 and nr == 0:
        for n in range(a, e):
            b0 += xl[n]
        b0 /= e - a
    xs = moving_average_into(xl, a, e, m, buf)
    kmax = order_key(-np.inf)
    kmin = order_key(np.inf)
    for i in range(e - a):
        k = order_key(xs[i] - (b0 + slope * ((a + i) - t0)))
        kmax = max(kmax, k)
        kmin = min(kmin, k)
    vmax = _bits_to_float(order_key_inverse(kmax))
    vmin = _bits_to_float(order_key_inverse(kmin))
    if not (abs(vmax) < np.inf and abs(vmin) < np.inf):
        return extrema(xl, c, w, h, lo, hi, m)
    imax = -1
    for i in range(e - a):
        v = xs[i] - (b0 + slope * ((a + i) - t0))
        if v == vmax:
            imax = a + i
            vmax = v  # (the first one's sign of zero, as extrema)
            break
    imin = -1
    for i in range(e - a):
        v = xs[i] - (b0 + slope * ((a + i) - t0))
        if v == vmin:
            imin = a + i
            vmin = v
            break
    return imax, vmax, imin, vmin


@njit(cache=True, nogil=True)
def bounds(dets, b, n, D):
    """[lo, hi) around detection b: the half-way points to its neighbours (decimated indices; full-rate ones when
    D > 0, at block centres), the record edges for the first and last."""
    f = max(1, D)
    o = D // 2
    lo = 0
    hi = n
    if b > 0:
        lo = ((dets[b - 1] + dets[b]) * f + 2 * o + 1) // 2
    if b + 1 < dets.shape[0]:
        hi = ((dets[b] + dets[b + 1]) * f + 2 * o) // 2 + 1
    return lo, hi


@njit(cache=True, nogil=True)
def rank_leads(xd, finite, scales, dets, wr, wb):
    """Per lead (decimated signal): (amp, sgn), the median size and the sign of the median of the signed QRS
    deviation from the local linear baseline at each detection. amp ranks the leads (0 for dropped leads)."""
    L = xd.shape[0]
    nb = dets.shape[0]
    amp = np.zeros(L, np.float64)
    sgn = np.ones(L, np.float64)
    dev = np.empty(nb, np.float64)
    adev = np.empty(nb, np.float64)
    los = np.empty(nb, np.int64)
    his = np.empty(nb, np.int64)
    for b in range(nb):
        los[b], his[b] = bounds(dets, b, xd.shape[1], 0)
    for l in range(L):
        if scales[l] == 0.0:
            continue
        xl = xd[l]
        nv = 0
        for b in range(nb):
            lo = los[b]
            hi = his[b]
            if finite[l]:
                vmax, vmin = deviation_finite(xl, dets[b], wr, wb, lo, hi)
                imax = 0
            else:
                imax, vmax, imin, vmin = extrema(xl, dets[b], wr, wb, lo, hi)
            if imax >= 0:
                best = vmax if vmax >= -vmin else vmin
                dev[nv] = best
                adev[nv] = abs(best)
                nv += 1
        if nv > 0:
            amp[l] = median_ranked(adev[:nv])
            sgn[l] = 1.0 if median_ranked(dev[:nv]) >= 0.0 else -1.0
    return amp, sgn


@njit(cache=True, nogil=True)
def lead_order(amp, sgn):
    """Leads in the order they are tried for the R point: first those whose QRS polarity is the record's majority
    polarity (so in a usual 12-lead record the R wave of a positive lead, not the deep S wave of V1-V3), by amp
    descending; then the others; dropped leads (amp 0) last. The majority is taken over the kept leads, ties
    broken by the amp-weighted sum, so an inverted record gives the same choice."""
    L = amp.shape[0]
    vote = 0.0
    wvote = 0.0
    top = 0.0
    for l in range(L):
        if amp[l] > 0.0:
            vote += sgn[l]
            wvote += sgn[l] * amp[l]
            top = max(top, amp[l])
    maj = 1.0 if vote > 0.0 or (vote == 0.0 and wvote >= 0.0) else -1.0
    key = np.empty(L, np.float64)
    for l in range(L):
        if amp[l] <= 0.0:
            key[l] = np.inf
        elif sgn[l] == maj:
            key[l] = -amp[l] - 2.0 * top - 1.0
        else:
            key[l] = -amp[l]
    return np.argsort(key)


@njit(cache=True, nogil=True)
def pick_lead(x, order, amp, a, e, raw):
    """The best-ranked lead that is finite over [a, e), else the best-ranked one with any finite sample there;
    -1 when none. raw: the leads known to be all finite (not scanned)."""
    L = order.shape[0]
    for oi in range(L):
        l = order[oi]
        if amp[l] <= 0.0:
            break
        if raw[l]:
            return l
        ok = True
        for t in range(a, e):
            if not np.isfinite(x[l, t]):
                ok = False
                break
        if ok:
            return l
    for oi in range(L):
        l = order[oi]
        if amp[l] <= 0.0:
            break
        for t in range(a, e):
            if np.isfinite(x[l, t]):
                return l
    return -1


@njit(cache=True, nogil=True)
def r_point(x, l, c, W, H, sm, sgn, lo, hi, raw_l, buf):
    """(index, deviation) of the R peak near c on lead l: the baseline-removed extremum in the lead's polarity sgn
    (or the opposite one when that is FLIP_RATIO x larger, or when the extremum is on the window's edge and the
    opposite one is not). raw_l: lead l is all finite (extrema_ma_finite, buf its scratch)."""
    if raw_l:
        imax, vmax, imin, vmin = extrema_ma_finite(x[l], c, W, H, lo, hi, sm, buf)
    else:
        imax, vmax, imin, vmin = extrema(x[l], c, W, H, lo, hi, sm)
    if sgn > 0.0:
        bi, bv, oi, ov = imax, vmax, imin, -vmin
    else:
        bi, bv, oi, ov = imin, -vmin, imax, vmax
    if ov > FLIP_RATIO * bv and ov > 0.0:
        return oi, ov
    a = max(lo, c - W)
    e = min(hi, c + W + 1)
    if ((bi <= a and a > 0) or (bi >= e - 1 and e < x.shape[1])) and a < oi < e - 1:  # (not the record's edge)
        # the extremum is the window's edge (the slope of a neighbouring beat, e.g. before an early ectopic beat
        # of the other polarity): not a peak; the opposite one is
        return oi, ov
    return bi, bv


@njit(cache=True, nogil=True)
def r_points(x, fs, D, dets, amp, sgn, W, H, edge, sm, raw):
    """R point (full-rate sample) and score (deviation in units of the lead's median QRS deviation) of each
    detection; -1 for a beat cut by the record edge whose R peak is not inside the record. raw: the leads of x known
    to be all finite."""
    S = x.shape[1]
    nb = dets.shape[0]
    order = lead_order(amp, sgn)
    peaks = np.empty(nb, np.int64)
    score = np.empty(nb, np.float64)
    buf = np.empty(2 * W + 1, np.float64)
    for b in range(nb):
        c = dets[b] * D + D // 2
        l = pick_lead(x, order, amp, max(0, c - W), min(S, c + W + 1), raw)
        if l < 0:
            peaks[b] = min(c, S - 1)
            score[b] = 0.0
            continue
        lo, hi = bounds(dets, b, S, D)
        bi, bv = r_point(x, l, c, W, H, sm, sgn[l], lo, hi, raw[l], buf)
        peaks[b] = bi
        score[b] = bv / amp[l]
        if (c - W < 0 or c + W >= S) and (score[b] < EDGE_MIN_SCORE or bi < edge or bi >= S - edge):
            peaks[b] = -1
    return peaks, score


@njit(cache=True, nogil=True)
def merge_close(peaks, score, fs):
    """Sorted R points with those closer than the refractory period merged (the higher score wins); -1 dropped."""
    nb = peaks.shape[0]
    idx = np.argsort(peaks, kind="mergesort")
    refr = max(1, int(round(REFRACTORY_S * fs)))
    out = np.empty(nb, np.int64)
    osc = np.empty(nb, np.float64)
    no = 0
    for j in range(nb):
        p = peaks[idx[j]]
        sc = score[idx[j]]
        if p < 0:
            continue
        if no > 0 and p - out[no - 1] < refr:
            if sc > osc[no - 1]:
                out[no - 1] = p
                osc[no - 1] = sc
            continue
        out[no] = p
        osc[no] = sc
        no += 1
    return out[:no].copy()


# ----------------------------------------------------------------------------------------------------------------
# the whole record, and a batch of records
# ----------------------------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def detect_core(x, fs):
    """R peaks of one record x (L, S) sampled at fs. Returns sorted unique int64 sample indices."""
    L, S = x.shape
    empty = np.empty(0, np.int64)
    if L == 0 or S == 0 or not (fs > 0.0):
        return empty
    D = max(1, int(round(fs / TARGET_FS)))
    fd = fs / D
    nd = (S + D - 1) // D
    k = max(1, int(round(SLOPE_S * fd)))
    if nd < 2 * k + 3:
        return empty
    xd, d, valid, finite, scales, weights, raw, E, cnt = lead_signals(x, D, nd, k, fd)
    if not np.any(scales > 0.0):
        return empty
    E, m = envelope_from_sums(E, cnt, fd)
    dets = decide(m, E, d, valid, scales, weights, fd, xd, finite)
    if dets.shape[0] == 0:
        return empty
    wr = max(1, int(round(REFINE_S * fd)))
    wb = max(1, int(round(BASE_S * fd)))
    amp, sgn = rank_leads(xd, finite, scales, dets, wr, wb)
    W = max(1, int(round(REFINE_S * fs)))
    H = max(1, int(round(BASE_S * fs)))
    edge = max(1, int(round(EDGE_S * fs)))
    sm = int(round(SMOOTH_S * fs))
    peaks, score = r_points(x, fs, D, dets, amp, sgn, W, H, edge, sm, raw)
    return merge_close(peaks, score, fs)


@njit(cache=True, parallel=True)
def segment_batch_core(x, fs, max_beats, peaks, counts):
    N = x.shape[0]
    for i in prange(N):
        p = detect_core(x[i], fs)
        n = min(p.shape[0], max_beats)
        for j in range(n):
            peaks[i, j] = p[j]
        for j in range(n, max_beats):
            peaks[i, j] = -1
        counts[i] = n
