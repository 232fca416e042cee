"""Fast multi-lead R-peak detection and beat segmentation (Numba).

Public API
----------
``detect_r_peaks(signal, fs)``
    int64 R-peak sample indices (sorted, unique) of one record, ``signal`` float ``(leads, samples)`` or
    ``(samples,)`` in any unit (mV, microvolts, min-max scaled to [0, 1], ...), ``fs`` in Hz (designed and tested
    for 250-1000 Hz; anything from ~100 Hz up works).
``beat_spans(r_peaks, n_samples)``
    int64 ``[n_beats, 2]`` half-open ``[start, end)`` sample spans, one per R peak.
``token_spans(spans, stride=16, n_tokens=312)``
    the same spans in encoder-token units.
``segment_batch(signals, fs, max_beats=32)``
    ``detect_r_peaks`` over ``[N, leads, samples]`` in parallel (Numba ``prange`` over records).

Algorithm (every heavy loop is ``@njit(cache=True)``; the compiled code is cached on disk, in ``__pycache__``
beside this file or in ``NUMBA_CACHE_DIR``)
---------------------------------------------------------------------------------------------------------
1. Decimate every lead by block means to ``fd = fs / D`` with ``D = round(fs / 125)`` (~125 Hz): QRS detection
   needs no more, and it cuts the work 2-8x. NaN / inf samples make their block missing; runs of missing blocks of
   <= 24 ms between finite ones (isolated dropped samples) are interpolated, longer runs stay missing.
2. Per lead, a linear-phase FIR band-pass: 3-tap smoothing ``[1, 2, 1] / 4``, a central difference over +-16 ms
   (``s[n + k] - s[n - k]``), minus the mean slope over +-100 ms (``(k / h) (s[n + h] - s[n - h])``). That passes
   the QRS band (peak ~12-15 Hz) and removes baseline wander (3rd-order high-pass at low frequencies) and most of
   the slow T-wave slope. Being FIR, a missing sample only invalidates the outputs that touch it: NaN runs are
   *missing*, never bridged, and no peak is invented inside them. Runs of exactly-zero slope of >= 100 ms (a
   flat, zero-filled or saturated stretch) are missing too.
3. Per-lead robust normalisation, so units and amplitude scale do not matter: ``scale`` = median over 1 s windows
   of the window's peak-weighted RMS slope ``sqrt(sum d^4 / sum d^2)``. A lead is dropped when it has no
   half-valid window, a zero scale (flat, all-zero) or looks like noise: quality ``scale / mean|slope|`` < 2.75
   (white noise 2.2, clean ECG leads ~6-12); leads are weighted by quality up to 7.5. Leads are combined by the
   weighted mean, over the leads valid at each sample, of the normalised squared slope (clipped at 4, so one
   lead's artefact cannot dominate), then a centred moving-window integral of 120 ms.
4. Pan-Tompkins style decisions on the integral's local maxima: signal / noise peak levels (SPK, NPK, started
   from medians over the first 8 one-second windows) updated online, threshold ``NPK + f (SPK - NPK)`` with
   ``f = 0.25`` (Pan-Tompkins) in clean records rising to 0.5 as NPK / SPK goes from 0.1 to 0.25 (noisy records),
   refractory period 200 ms (within it only the larger peak is kept), T-wave rejection (a peak < 360 ms after a
   beat with < half its height is noise), and search-back with half the threshold when no beat came for 1.66 x
   the mean of the last 8 RR intervals; the same search covers the record's head and tail.
5. Refinement to the true R peak on the original signal. Baseline: the line through the means of the two flanks
   ``[c - 150 ms, c - 80 ms)`` and ``(c + 80 ms, c + 150 ms]`` of a detection ``c`` (a linear trend, i.e. wander,
   is removed exactly). Leads are ranked once per record by their median QRS deviation from that baseline within
   +-80 ms (on the decimated signal), and each lead's polarity is the sign of the median signed deviation. A
   beat's R point is the extremum in that polarity, on the full-rate signal, of the best-ranked lead that is
   finite over the +-80 ms window (next lead if not); when the opposite deflection is 2x larger (e.g. a
   ventricular ectopic beat of inverted morphology), that one. So an inverted record gives the same peaks as the
   original, a lead with a negative QRS (aVR) is handled, and the point is the R peak itself (MIT-BIH 100: median
   |error| 0 ms). The extremum is taken on the +-4 ms moving average of the signal (robust to noise, unbiased on a
   symmetric peak). Detections that refine to within 200 ms of each other are merged (the larger deviation wins).

Documented behaviour at the edges
---------------------------------
* all-zero, constant, all-NaN, pure-noise (every lead fails the quality test) or empty record -> empty array;
* a flat / zero / NaN-filled lead is dropped, an inverted lead is handled; the other leads carry the detection;
* NaN runs (> 24 ms): no peak inside them; beats in the valid parts are found (a beat within ~20 ms of a run edge
  may be lost, as its band-pass output touches the missing samples);
* beats cut by the record edge: reported only when the R point is inside the record, >= 10 ms from its edge, and
  reaches half the record's median QRS deviation (else the R peak is probably outside the record); under very
  strong baseline wander a beat within ~150 ms of the edge may be lost or extra;
* a record shorter than 2 s works the same way and returns the beats it finds (statistics then come from the one
  short window; with a single beat the head/tail search assumes 100 bpm); a record shorter than the ~50 ms filter
  span returns an empty array.
* the R point is placed on the lead with the largest QRS in the record's own units; when each lead is scaled on
  its own (e.g. min-max per lead) that choice may change and the point moves by a few ms to that lead's R peak.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = [
    "detect_r_peaks",
    "beat_spans",
    "token_spans",
    "segment_batch",
    "TARGET_FS",
]

TARGET_FS = 125.0  # rate the detector works at (Hz), after block-mean decimation
_CLIP = 4.0  # cap on a lead's normalised squared slope
_MIN_QUALITY = 2.75  # scale / mean|slope| below this -> noise-like lead, dropped (white noise: 2.2)
_FULL_QUALITY = 7.5  # leads at or above this get full weight (clean ECG leads: ~6-12)
_THR_FRAC = 0.25  # threshold = NPK + f (SPK - NPK), f = 0.25 (Pan-Tompkins) while NPK/SPK <= 0.1, rising linearly
_THR_FRAC_NOISY = 0.5  # to 0.5 at NPK/SPK >= 0.25 (a noisy record: steadier against noise peaks)
_REFRACTORY_S = 0.20
_TWAVE_S = 0.36
_MWI_S = 0.12
_SLOPE_S = 0.016
_WANDER_S = 0.10  # half-width of the mean slope that is subtracted (baseline wander, T-wave slope)
_FLAT_S = 0.10
_SHORT_GAP_S = 0.024  # NaN runs up to this long (after decimation) are interpolated, longer ones are missing
_REFINE_S = 0.08
_BASE_S = 0.15
_SMOOTH_S = 0.004  # the R point is the extremum of the +-4 ms moving average (robust to noise, unbiased on a peak)
_FLIP_RATIO = 2.0  # a beat whose opposite-polarity deflection is 2x larger takes that one
_EDGE_S = 0.01  # an R point this close to the record edge is not told apart from a cut QRS: not reported
_EDGE_MIN_SCORE = 0.5  # an edge beat needs half the record's median QRS deviation (else its R is outside)


# ----------------------------------------------------------------------------------------------------------------
# Numba kernels
# ----------------------------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _decimate(x, D, nd):
    """Block means of D samples: (L, S) -> (L, nd). NaN/inf in a block make the block non-finite.

    The common factors are unrolled (a plain accumulation loop is latency-bound and ~6x slower)."""
    L, S = x.shape
    out = np.empty((L, nd), np.float64)
    nfull = S // D
    inv = 1.0 / D
    for l in range(L):
        xl = x[l]
        o = out[l]
        if D == 1:
            for n in range(nfull):
                o[n] = xl[n]
        elif D == 2:
            for n in range(nfull):
                b = 2 * n
                o[n] = (xl[b] + xl[b + 1]) * 0.5
        elif D == 3:
            for n in range(nfull):
                b = 3 * n
                o[n] = (xl[b] + xl[b + 1] + xl[b + 2]) * inv
        elif D == 4:
            for n in range(nfull):
                b = 4 * n
                o[n] = ((xl[b] + xl[b + 1]) + (xl[b + 2] + xl[b + 3])) * 0.25
        elif D == 6:
            for n in range(nfull):
                b = 6 * n
                o[n] = ((xl[b] + xl[b + 1]) + (xl[b + 2] + xl[b + 3]) + (xl[b + 4] + xl[b + 5])) * inv
        elif D == 8:
            for n in range(nfull):
                b = 8 * n
                o[n] = (((xl[b] + xl[b + 1]) + (xl[b + 2] + xl[b + 3]))
                        + ((xl[b + 4] + xl[b + 5]) + (xl[b + 6] + xl[b + 7]))) * 0.125
        else:
            for n in range(nfull):
                b = D * n
                acc = 0.0
                for j in range(D):
                    acc += xl[b + j]
                o[n] = acc * inv
        if nd > nfull:  # partial last block
            acc = 0.0
            for t in range(nfull * D, S):
                acc += xl[t]
            o[nfull] = acc / (S - nfull * D)
    return out


_FM = {"reassoc", "contract", "arcp", "nsz"}  # fast-math without the no-NaN/no-inf assumptions


@njit(cache=True, nogil=True, fastmath=_FM)
def _sum(a):
    tot = 0.0
    for i in range(a.shape[0]):
        tot += a[i]
    return tot


@njit(cache=True, nogil=True)
def _fill_short_gaps(xl, maxgap):
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


@njit(cache=True, nogil=True, fastmath=_FM)
def _add_lagdiff(s, lag, gain, out):
    """out[n] += gain * (s[n + lag] - s[n - lag]), indices clamped to the record."""
    nd = s.shape[0]
    for n in range(min(lag, nd)):
        out[n] += gain * (s[min(n + lag, nd - 1)] - s[0])
    for n in range(max(nd - lag, lag), nd):
        out[n] += gain * (s[nd - 1] - s[n - lag])
    if nd > 2 * lag:
        o = out[lag : nd - lag]
        sp = s[2 * lag :]
        sm = s[: nd - 2 * lag]
        for i in range(nd - 2 * lag):
            o[i] += gain * (sp[i] - sm[i])


@njit(cache=True, nogil=True, fastmath=_FM)
def _lead_slope(xl, k, h, flat_len, s, d, valid, finite_in):
    """Band-passed slope of one decimated lead into d, with valid (1.0/0.0); d is 0.0 where missing.

    s is scratch; finite_in: xl is known to be all finite (fast path). Missing = non-finite input in the filter
    span, or a run of >= flat_len exactly-zero slopes. Returns whether every output is finite."""
    # (loops index views from 0: Numba then knows the index is non-negative and vectorises)
    nd = xl.shape[0]
    s[0] = 0.25 * (3.0 * xl[0] + xl[min(1, nd - 1)])
    s[nd - 1] = 0.25 * (xl[max(nd - 2, 0)] + 3.0 * xl[nd - 1])
    xa = xl[: nd - 2]
    xb = xl[1 : nd - 1]
    xc = xl[2:]
    so = s[1 : nd - 1]
    for i in range(nd - 2):
        so[i] = 0.25 * (xa[i] + 2.0 * xb[i] + xc[i])
    # slope over +-k, minus the mean slope over +-h (removes baseline wander: 3rd-order high-pass at low f)
    g = k / h
    if nd > 2 * h:
        dd = d[h : nd - h]
        kp = s[h + k : nd - h + k]
        km = s[h - k : nd - h - k]
        hp = s[2 * h :]
        hm = s[: nd - 2 * h]
        for i in range(nd - 2 * h):
            dd[i] = (kp[i] - km[i]) - g * (hp[i] - hm[i])
        lo = h
        hi = nd - h
    else:
        lo = 0
        hi = 0
    for n in range(lo):  # edges, indices clamped
        d[n] = (s[min(n + k, nd - 1)] - s[max(n - k, 0)]) - g * (s[min(n + h, nd - 1)] - s[max(n - h, 0)])
    for n in range(hi, nd):
        d[n] = (s[min(n + k, nd - 1)] - s[max(n - k, 0)]) - g * (s[min(n + h, nd - 1)] - s[max(n - h, 0)])
    finite = finite_in
    if not finite:
        tot = 0.0
        for n in range(nd):
            tot += d[n]
        finite = abs(tot) < np.inf
    nz = 0
    if finite:  # fast path: every output finite (a NaN or inf anywhere would make the sum non-finite)
        for n in range(nd):
            valid[n] = 1.0
            nz += d[n] == 0.0
    else:
        for n in range(nd):
            v = d[n]
            ok = abs(v) < np.inf
            d[n] = v if ok else 0.0
            valid[n] = 1.0 if ok else 0.0
            nz += ok and v == 0.0
    # runs of exactly-zero slope (flat, zero-filled or clipped stretches) are missing
    if nz >= flat_len:
        run = 0
        for n in range(nd + 1):
            if n < nd and d[n] == 0.0 and valid[n] > 0.0:
                run += 1
            else:
                if run >= flat_len:
                    for j in range(n - run, n):
                        valid[j] = 0.0
                run = 0
    return finite


@njit(cache=True, nogil=True, fastmath=True)  # inputs are finite by construction
def _lead_scale(d, valid, wlen):
    """(scale, quality) of one lead's slope d.

    scale: median over ~1 s windows of the window's peak-weighted RMS slope sqrt(sum d^4 / sum d^2), a smooth
    stand-in for the window maximum (~0.7-0.9 of the largest QRS slope; sums vectorise, max reductions do not).
    Windows less than half valid are skipped. quality: scale / mean |d| over valid samples (ECG ~10-40, white noise
    sqrt(3) / sqrt(2 / pi) = 2.2)."""
    nd = d.shape[0]
    nw = max(1, nd // wlen)
    vals = np.empty(nw, np.float64)
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
    scale = np.median(vals[:m])
    mean = tot / cnt
    if not (scale > 0.0) or not (mean > 0.0):
        return 0.0, 0.0
    return scale, scale / mean


@njit(cache=True, nogil=True)
def _median_window_stat(m, wlen, n_windows, use_max):
    """Median over the first n_windows windows of wlen samples of the window max (or mean) of m."""
    nd = m.shape[0]
    nw = max(1, min(n_windows, nd // wlen))
    vals = np.empty(nw, np.float64)
    for w in range(nw):
        a = w * wlen
        b = min(nd, a + wlen)
        acc = 0.0
        mx = 0.0
        for n in range(a, b):
            acc += m[n]
            if m[n] > mx:
                mx = m[n]
        vals[w] = mx if use_max else acc / max(1, b - a)
    return np.median(vals)


@njit(cache=True, nogil=True)
def _threshold(spk, npk):
    r = npk / spk if spk > 0.0 else 0.0
    f = _THR_FRAC + (_THR_FRAC_NOISY - _THR_FRAC) * min(1.0, max(0.0, (r - 0.1) / 0.15))
    return npk + f * (spk - npk)


@njit(cache=True, nogil=True)
def _decide(m, fd):
    """Pan-Tompkins style adaptive-threshold decisions on the integrated envelope m. Returns decimated indices."""
    nd = m.shape[0]
    refr = max(1, int(round(_REFRACTORY_S * fd)))
    twave = int(round(_TWAVE_S * fd))
    # candidates: local maxima (plateaus: first sample)
    cand = np.empty(nd, np.int64)
    nc = 0
    for n in range(1, nd - 1):
        v = m[n]
        if v > 0.0 and v > m[n - 1] and v >= m[n + 1]:
            cand[nc] = n
            nc += 1
    beats = np.empty(nc + 1, np.int64)
    bval = np.empty(nc + 1, np.float64)
    if nc == 0:
        return beats[:0]
    wlen = max(2, int(round(fd)))
    spk = _median_window_stat(m, wlen, 8, True)
    npk = _median_window_stat(m, wlen, 8, False)
    if npk > 0.5 * spk:
        npk = 0.5 * spk
    nb = 0
    rr = np.zeros(8, np.float64)
    nrr = 0
    last_ci = -1  # candidate index of the last beat
    ci = 0
    while ci < nc:
        t = cand[ci]
        v = m[t]
        if nb > 0 and t - beats[nb - 1] < refr:
            if v > bval[nb - 1]:
                beats[nb - 1] = t
                bval[nb - 1] = v
                last_ci = ci
            ci += 1
            continue
        thr = _threshold(spk, npk)
        # search-back for a missed beat in a long gap
        if nb > 0 and nrr > 0:
            rr_avg = 0.0
            for j in range(min(nrr, 8)):
                rr_avg += rr[j]
            rr_avg /= min(nrr, 8)
            if t - beats[nb - 1] > 1.66 * rr_avg:
                best = -1
                bestv = 0.5 * thr
                for cj in range(last_ci + 1, ci):
                    tj = cand[cj]
                    vj = m[tj]
                    if tj - beats[nb - 1] < refr or t - tj < refr:
                        continue
                    if tj - beats[nb - 1] < twave and vj < 0.5 * bval[nb - 1]:
                        continue
                    if vj > bestv:
                        bestv = vj
                        best = cj
                if best >= 0:
                    tb = cand[best]
                    rr[nrr % 8] = tb - beats[nb - 1]
                    nrr += 1
                    beats[nb] = tb
                    bval[nb] = bestv
                    nb += 1
                    last_ci = best
                    spk = 0.25 * bestv + 0.75 * spk
                    continue  # re-examine the current candidate against the new last beat
        if v > thr:
            if nb > 0 and t - beats[nb - 1] < twave and v < 0.5 * bval[nb - 1]:
                npk = 0.125 * v + 0.875 * npk
                ci += 1
                continue
            if nb > 0:
                rr[nrr % 8] = t - beats[nb - 1]
                nrr += 1
            beats[nb] = t
            bval[nb] = v
            nb += 1
            last_ci = ci
            spk = 0.125 * v + 0.875 * spk
        else:
            npk = 0.125 * v + 0.875 * npk
        ci += 1
    if nb == 0:
        return beats[:0]
    # tail and head: beats missed after the last / before the first detection
    thr = _threshold(spk, npk)
    rr_avg = 0.0
    if nrr > 0:
        for j in range(min(nrr, 8)):
            rr_avg += rr[j]
        rr_avg /= min(nrr, 8)
    else:
        rr_avg = 0.6 * fd  # one beat only (a short record): assume 100 bpm for the head/tail search
    out = np.empty(nc + 1, np.int64)
    no = 0
    gap_min = max(refr, int(0.6 * rr_avg))
    # head: beats expected before the first detection (walk backwards)
    head = np.empty(nc + 1, np.int64)
    nh = 0
    ref_t = beats[0]
    while ref_t > rr_avg:
        best = -1
        bestv = 0.5 * thr
        for cj in range(nc):
            tj = cand[cj]
            if ref_t - tj < gap_min:
                break
            if ref_t - tj <= 1.66 * rr_avg and m[tj] > bestv:
                bestv = m[tj]
                best = cj
        if best < 0:
            break
        head[nh] = cand[best]
        nh += 1
        ref_t = cand[best]
    for j in range(nh - 1, -1, -1):
        out[no] = head[j]
        no += 1
    for j in range(nb):
        out[no] = beats[j]
        no += 1
    # tail: beats expected after the last detection
    last_t = beats[nb - 1]
    last_v = bval[nb - 1]
    while nd - 1 - last_t > rr_avg:
        best = -1
        bestv = 0.5 * thr
        for cj in range(nc):
            tj = cand[cj]
            if tj - last_t < gap_min:
                continue
            if tj - last_t > 1.66 * rr_avg:
                break
            if tj - last_t < twave and m[tj] < 0.5 * last_v:
                continue
            if m[tj] > bestv:
                bestv = m[tj]
                best = cj
        if best < 0:
            break
        out[no] = cand[best]
        no += 1
        last_t = cand[best]
        last_v = bestv
    return out[:no]


@njit(cache=True, nogil=True, fastmath=True)  # inputs are finite by construction
def _envelope(d, valid, scales, weights, fd):
    """Weighted mean over the leads valid at each sample of the clipped normalised squared slope, and its centred
    moving-window integral (0 where no lead is valid)."""
    L, nd = d.shape
    E = np.zeros(nd, np.float64)
    cnt = np.zeros(nd, np.float64)
    for l in range(L):
        sc = scales[l]
        if sc == 0.0:
            continue
        inv = 1.0 / sc
        w = weights[l]
        dl = d[l]
        vl = valid[l]
        for n in range(nd):
            e = dl[n] * inv
            wv = w * vl[n]
            E[n] += min(e * e, _CLIP) * wv
            cnt[n] += wv
    for n in range(nd):
        c = cnt[n]
        E[n] = E[n] / c if c > 0.0 else 0.0
    h = max(1, int(round(0.5 * _MWI_S * fd)))
    m = np.empty(nd, np.float64)
    c = np.zeros(nd + 1, np.float64)
    for n in range(nd):
        c[n + 1] = c[n] + E[n]
    inv_w = 1.0 / (2 * h + 1)
    for n in range(nd):
        m[n] = (c[min(n + h + 1, nd)] - c[max(n - h, 0)]) * inv_w
    for n in range(nd):
        m[n] = m[n] if cnt[n] > 0.0 else 0.0
    return E, m


@njit(cache=True, nogil=True, fastmath=True)  # xl is all finite (checked by the caller)
def _extrema_finite(xl, c, w, h):
    """_extrema for an all-finite lead (no NaN checks; sums over views vectorise)."""
    nd = xl.shape[0]
    a = max(0, c - w)
    e = min(nd, c + w + 1)
    l0 = max(0, c - h)
    r1 = min(nd, c + h + 1)
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


@njit(cache=True, nogil=True)
def _extrema(xl, c, w, h, m=0):
    """Baseline-removed extrema of xl within [c - w, c + w] (clipped to the record).

    The baseline is the line through the means of the two flanks [c - h, c - w) and (c + w, c + h] (non-finite
    samples left out; one flank only -> a constant; none -> the window mean), so a linear trend (baseline wander)
    is removed exactly. Returns (i_max, v_max, i_min, v_min) of xl - baseline; i = -1 when no sample is finite."""
    nd = xl.shape[0]
    a = max(0, c - w)
    e = min(nd, c + w + 1)
    sl = 0.0
    nl = 0
    tl = 0.0
    for n in range(max(0, c - h), a):
        v = xl[n]
        if abs(v) < np.inf:
            sl += v
            tl += n
            nl += 1
    sr = 0.0
    nr = 0
    tr = 0.0
    for n in range(e, min(nd, c + h + 1)):
        v = xl[n]
        if abs(v) < np.inf:
            sr += v
            tr += n
            nr += 1
    slope = 0.0
    if nl > 0 and nr > 0:
        ml = sl / nl
        mr = sr / nr
        t0 = tl / nl
        slope = (mr - ml) / (tr / nr - t0)
        b0 = ml
    elif nl > 0:
        b0 = sl / nl
        t0 = 0.0
    elif nr > 0:
        b0 = sr / nr
        t0 = 0.0
    else:
        b0 = 0.0
        t0 = 0.0
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
    for n in range(a, e):
        if m > 0:  # centred moving average over +-m samples (noise), shrunk symmetrically at the record edges
            mm = min(m, n, nd - 1 - n)
            acc = 0.0
            for j in range(n - mm, n + mm + 1):
                acc += xl[j]
            xv = acc / (2 * mm + 1)
        else:
            xv = xl[n]
        v = xv - (b0 + slope * (n - t0))
        if v > vmax:  # NaN compares False
            vmax = v
            imax = n
        if v < vmin:
            vmin = v
            imin = n
    return imax, vmax, imin, vmin


@njit(cache=True, nogil=True)
def _detect_core(x, fs):
    """R peaks of one record x (L, S) sampled at fs. Returns sorted unique int64 sample indices."""
    L, S = x.shape
    empty = np.empty(0, np.int64)
    if L == 0 or S == 0 or not (fs > 0.0):
        return empty
    D = max(1, int(round(fs / TARGET_FS)))
    fd = fs / D
    nd = (S + D - 1) // D
    k = max(1, int(round(_SLOPE_S * fd)))
    if nd < 2 * k + 3:
        return empty
    xd = _decimate(x, D, nd)
    d = np.empty((L, nd), np.float64)
    valid = np.empty((L, nd), np.float64)
    s = np.empty(nd, np.float64)
    flat_len = max(3, int(round(_FLAT_S * fd)))
    hw = max(k + 1, int(round(_WANDER_S * fd)))
    wlen = max(2, int(round(fd)))
    scales = np.zeros(L, np.float64)
    weights = np.zeros(L, np.float64)
    nlead = 0
    finite = np.zeros(L, np.bool_)
    gap = max(1, int(round(_SHORT_GAP_S * fd)))
    for l in range(L):
        xl = xd[l]
        fin = abs(_sum(xl)) < np.inf  # a NaN or inf anywhere makes the sum non-finite
        if not fin:
            fin = _fill_short_gaps(xl, gap)
        finite[l] = _lead_slope(xl, k, hw, flat_len, s, d[l], valid[l], fin)
        sc, q = _lead_scale(d[l], valid[l], wlen)
        if sc > 0.0 and q >= _MIN_QUALITY:
            scales[l] = sc
            weights[l] = min(1.0, (q - 2.5) / (_FULL_QUALITY - 2.5))
            nlead += 1
    if nlead == 0:
        return empty
    E, m = _envelope(d, valid, scales, weights, fd)
    dets = _decide(m, fd)
    nb = dets.shape[0]
    if nb == 0:
        return empty
    # ---- refinement on the original signal ----
    wr = max(1, int(round(_REFINE_S * fd)))
    wb = max(1, int(round(_BASE_S * fd)))
    # per lead: signed QRS deviation at each beat from the local (linear) baseline on the decimated signal; its
    # median size ranks the leads and its median sign is the lead's polarity
    amp = np.zeros(L, np.float64)
    sgn = np.ones(L, np.float64)
    dev = np.empty(nb, np.float64)
    adev = np.empty(nb, np.float64)
    for l in range(L):
        if scales[l] == 0.0:
            continue
        xl = xd[l]
        nv = 0
        fl = finite[l]
        for b in range(nb):
            if fl:
                imax, vmax, imin, vmin = _extrema_finite(xl, dets[b], wr, wb)
            else:
                imax, vmax, imin, vmin = _extrema(xl, dets[b], wr, wb)
            if imax >= 0:
                best = vmax if vmax >= -vmin else vmin
                dev[nv] = best
                adev[nv] = abs(best)
                nv += 1
        if nv > 0:
            amp[l] = np.median(adev[:nv])
            sgn[l] = 1.0 if np.median(dev[:nv]) >= 0.0 else -1.0
    order = np.argsort(-amp)
    W = max(1, int(round(_REFINE_S * fs)))
    H = max(1, int(round(_BASE_S * fs)))
    edge = max(1, int(round(_EDGE_S * fs)))
    sm = int(round(_SMOOTH_S * fs))
    peaks = np.empty(nb, np.int64)
    score = np.empty(nb, np.float64)
    for b in range(nb):
        c = dets[b] * D + D // 2
        a = max(0, c - W)
        e = min(S, c + W + 1)
        chosen = -1
        for oi in range(L):  # best-ranked lead that is finite over the window
            l = order[oi]
            if amp[l] <= 0.0:
                break
            ok = True
            for t in range(a, e):
                if not np.isfinite(x[l, t]):
                    ok = False
                    break
            if ok:
                chosen = l
                break
        if chosen < 0:  # else the best-ranked lead with any finite sample there
            for oi in range(L):
                l = order[oi]
                if amp[l] <= 0.0:
                    break
                for t in range(a, e):
                    if np.isfinite(x[l, t]):
                        chosen = l
                        break
                if chosen >= 0:
                    break
        if chosen < 0:
            peaks[b] = min(c, S - 1)
            score[b] = 0.0
            continue
        # baseline-removed extremum in the lead's polarity (or the opposite one when that is 2x larger)
        imax, vmax, imin, vmin = _extrema(x[chosen], c, W, H, sm)
        sg = sgn[chosen]
        if sg > 0.0:
            bi, bv, oi_, ov = imax, vmax, imin, -vmin
        else:
            bi, bv, oi_, ov = imin, -vmin, imax, vmax
        if ov > _FLIP_RATIO * bv and ov > 0.0:
            # a beat of opposite morphology (e.g. a ventricular ectopic beat): its dominant deflection
            bv = ov
            bi = oi_
        peaks[b] = bi
        score[b] = bv / amp[chosen]  # in units of the lead's median QRS deviation
        if (c - W < 0 or c + W >= S) and (score[b] < _EDGE_MIN_SCORE or bi < edge or bi >= S - edge):
            peaks[b] = -1  # a beat cut by the record edge whose R peak is not inside the record
    # sort and merge detections closer than the refractory period
    idx = np.argsort(peaks, kind="mergesort")
    refr = max(1, int(round(_REFRACTORY_S * fs)))
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


@njit(cache=True, parallel=True)
def _segment_batch_core(x, fs, max_beats, peaks, counts):
    N = x.shape[0]
    for i in prange(N):
        p = _detect_core(x[i], fs)
        n = min(p.shape[0], max_beats)
        for j in range(n):
            peaks[i, j] = p[j]
        for j in range(n, max_beats):
            peaks[i, j] = -1
        counts[i] = n


# ----------------------------------------------------------------------------------------------------------------
# Python API
# ----------------------------------------------------------------------------------------------------------------
def _as_float(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.float32 and a.dtype != np.float64:
        a = a.astype(np.float64)
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a


def detect_r_peaks(signal, fs: float) -> np.ndarray:
    """R-peak sample indices of one record (int64, sorted, unique).

    ``signal``: float ``(leads, samples)`` or ``(samples,)`` (other dtypes are converted to float64), any unit and
    offset: the result is invariant to a record-wide gain of either sign and to per-lead offsets (a per-lead gain
    may move the R point to another lead's R peak, a few ms away). NaN/inf are missing samples. ``fs``: sampling
    rate in Hz.
    See the module docstring for the method and the behaviour on flat, NaN, noisy and short records.
    """
    x = _as_float(signal)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"signal must be (leads, samples) or (samples,), got shape {x.shape}")
    return _detect_core(x, float(fs))


def segment_batch(signals, fs: float, max_beats: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """R peaks of many records at once, in parallel over records (Numba prange; ``numba.set_num_threads``).

    ``signals``: float ``[N, leads, samples]`` (one ``fs`` for all). Returns ``peaks`` int64 ``[N, max_beats]``
    (the first ``max_beats`` peaks of each record, ``-1`` padding) and ``counts`` int64 ``[N]``, the number of valid
    entries of each row (``<= max_beats``). Row ``i`` equals ``detect_r_peaks(signals[i], fs)[:max_beats]``.
    """
    x = _as_float(signals)
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3:
        raise ValueError(f"signals must be [N, leads, samples], got shape {x.shape}")
    N = x.shape[0]
    peaks = np.empty((N, int(max_beats)), np.int64)
    counts = np.zeros(N, np.int64)
    if N:
        _segment_batch_core(x, float(fs), int(max_beats), peaks, counts)
    return peaks, counts


def beat_spans(r_peaks, n_samples: int) -> np.ndarray:
    """Half-open sample spans ``[start, end)`` of the beats around R peaks, int64 ``[n_beats, 2]``.

    Boundary rule: beat ``i`` and beat ``i + 1`` meet at ``ceil((r_i + r_{i+1}) / 2)`` (spans tile the record
    between the first and last beat, without gap or overlap, and each contains its R peak). The first beat extends
    left of its R peak by half the following RR interval, the last one right by half the preceding RR interval,
    clipped to ``[0, n_samples)``. A single peak gets the whole record ``[0, n_samples)``; no peak gives ``(0, 2)``.
    Peaks are sorted and de-duplicated first; peaks outside ``[0, n_samples)`` are dropped.
    """
    r = np.unique(np.asarray(r_peaks, dtype=np.int64).ravel())
    r = r[(r >= 0) & (r < n_samples)]
    nb = r.shape[0]
    out = np.empty((nb, 2), np.int64)
    if nb == 0:
        return out
    if nb == 1:
        out[0] = (0, n_samples)
        return out
    mids = (r[:-1] + r[1:] + 1) // 2
    out[1:, 0] = mids
    out[:-1, 1] = mids
    out[0, 0] = max(0, r[0] - (r[1] - r[0]) // 2)
    out[-1, 1] = min(n_samples, r[-1] + (r[-1] - r[-2]) // 2 + 1)
    return out


def token_spans(spans, stride: int = 16, n_tokens: int = 312) -> np.ndarray:
    """Beat spans in encoder-token units, int64 ``[n_beats, 2]`` half-open.

    Token ``t`` covers samples ``[stride t, stride (t + 1))``; it belongs to the beat whose sample span contains its
    centre ``stride t + stride / 2``, so contiguous sample spans give contiguous, non-overlapping token spans. Then
    every span is clipped to ``[0, n_tokens)`` and made non-empty: a beat narrower than a token gets the token that
    holds its start, and a beat beyond the last token (e.g. in the last ``5000 - 16 * 312 = 8`` samples) gets the last
    token.
    """
    sp = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    half = stride // 2
    t0 = (sp[:, 0] - half + stride - 1) // stride
    t1 = (sp[:, 1] - half + stride - 1) // stride
    t0 = np.clip(t0, 0, n_tokens - 1)
    t1 = np.clip(t1, 0, n_tokens)
    # beats narrower than a token: the token holding the start sample
    narrow = t1 <= t0
    if narrow.any():
        t0 = np.where(narrow, np.clip(sp[:, 0] // stride, 0, n_tokens - 1), t0)
        t1 = np.where(narrow, t0 + 1, t1)
    return np.stack([t0, t1], axis=1).astype(np.int64)


def match_beats(ref, det, tol: int):
    """Score detections against reference beats (ANSI/AAMI EC57 style): greedy one-to-one matching within tol
    samples -> (tp, fn, fp, signed errors det - ref in samples). Se = tp / (tp + fn), +P = tp / (tp + fp)."""
    ref = np.sort(np.asarray(ref))
    det = np.sort(np.asarray(det))
    used = np.zeros(len(det), bool)
    errs = []
    j = 0
    for r in ref:
        while j < len(det) and det[j] < r - tol:
            j += 1
        best, bd = -1, tol + 1
        for k in range(j, len(det)):
            if det[k] > r + tol:
                break
            if not used[k] and abs(det[k] - r) < bd:
                best, bd = k, abs(det[k] - r)
        if best >= 0:
            used[best] = True
            errs.append(det[best] - r)
    tp = len(errs)
    return tp, len(ref) - tp, len(det) - tp, np.asarray(errs, float)
