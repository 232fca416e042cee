"""Fast multi-lead R-peak detection and beat segmentation (Numba).

``detect_r_peaks(signal, fs)`` gives the R peaks of one record (``(leads, samples)`` or ``(samples,)``, any unit,
250-1000 Hz tested, ~100 Hz and up works); ``segment_batch`` runs it over ``[N, leads, samples]`` in parallel;
``beat_spans`` / ``token_spans`` turn R peaks into beat spans in samples / encoder tokens.

Method (``_detector.py``, every loop ``@njit(cache=True)``):
1. block-mean decimation to ~125 Hz; short NaN runs (<= 24 ms) interpolated, longer ones stay missing;
2. per lead a linear-phase band-pass slope (a +-16 ms central difference minus the +-100 ms mean slope: QRS band,
   peak ~12-15 Hz; wander and most of the T-wave slope removed), normalised by the lead's typical QRS slope; noisy,
   flat or all-missing leads dropped; the leads' clipped squared slopes averaged, then integrated over 120 ms;
3. candidates: the envelope's local maxima, less the baseline steps (an electrode or amplifier DC jump: its edge is
   as steep as a QRS, but a QRS rises as much as it falls within +-120 ms and a step only rises or only falls; the
   balance of the steep first differences, weighted over the leads steep there, is under 0.4 in the window centred
   on the candidate, in the one centred on its steepest instant and in the one shifted towards that instant), so a
   step is never a beat and never replaces one; a QRS at the same instant as a step keeps its balance and stays;
   Pan-Tompkins decisions on that envelope: adaptive signal / noise levels, one beat per QRS (160 ms; a lower peak
   within 200 ms of a beat, also between their steepest instants, is its tail lobe), search-back
   after 1.66 mean RR, the record's head and tail, and a T-wave test: a peak < 450 ms after a beat is its T (or U)
   wave when, beside the beat, its integrated energy is under 1/2, or its shape value (peak squared slope x the
   agreement of leads, the fraction of leads steep there) under 0.4, or under 0.7 while 1.6x wider. An early wide
   ectopic beat taken for a T wave is recovered from the long gap it leaves when it is 3x the record's usual T wave
   (and >= 0.02 of the beats' median shape value); coupled ectopy (bigeminy, trigeminy, where every gap is long and
   the "usual T wave" is the ectopic beat): in each gap, an early candidate (first half, >= 200 ms from both beats)
   that is narrow (a T wave's envelope is broad even where the T is tall or the QRS low), steep in enough leads (or,
   a wide one, steep at 0.3 of the QRS slope in every lead: a tall T wave is tall in some leads only), stands out of
   the other waves of its gap and repeats at the same coupling interval (within 100 ms) with a similar shape value
   and lead pattern is a beat, as are those at that coupling before the first and after the last beat (taller,
   shorter, wider or inverted ectopic beats, any coupling >= 300 ms), when they leave a pause or are steeper than the
   beat before them (the median interval to the next beat >= 1.5x the coupling: a T wave beside a low, wide QRS is
   followed by the next beat at 1-1.5x); one as broad as a T wave beside a low QRS (an equivalent envelope width of
   80-95 ms, steep in 0.7 of the leads and at 0.3 of the QRS slope in every lead) only with the rhythm's evidence: a
   T wave follows every beat, an ectopic beat only some and leaves a longer gap (the gaps holding it >= 1.3x longer
   than every gap without it; >= 2 and a quarter of the gaps without it), or, where every gap holds one (bigeminy),
   the morphologies' evidence: a lead pattern unlike the beat before it (|cosine| under 0.7, for >= 3 of them; the T
   waves that broad and steep beside a low QRS had >= 0.87 in the provoking records and the generator's) and a pause
   (>= 1.5x its coupling interval); a beat is dropped as "a T wave before its QRS" only when it is also unlike the
   two kept beats before it (the record's two morphologies) or under 0.25 of the later beat's shape value; the head
   is searched whenever the first beat lies further in than the mean or the shortest RR (of the beats without the T
   or P waves taken for beats); the T-wave window includes its last sample;
4. the R point (the fiducial): the R peak, i.e. the largest baseline-removed deflection, in the lead's QRS polarity
   (the opposite one when twice as large, e.g. an inverted ectopic beat), of the dominant lead: the lead with the
   largest median QRS deviation among those of the record's majority QRS polarity (so an R wave, not the deep S
   of V1-V3), finite there; taken on the +-4 ms moving average of the full-rate signal, it does not depend on the
   filters' delay. R points within 200 ms of each other are merged.

Edges: an all-zero, constant, all-NaN, pure-noise (every lead noise-like and rough), empty or < 50 ms record gives
no beat; no beat is placed in a NaN run; a beat cut by the record edge is reported only when its R point is >= 10 ms
inside and clearly formed. Invariant to a record-wide gain of either sign and to per-lead offsets; per-lead gains
may move the R point to another lead's R peak (a few ms). Known limit: an early ectopic beat with under 0.4 of the
previous beat's slope and no long compensatory gap after it is taken for that beat's T wave, unless it repeats
(coupled ectopy, above); in bigeminy a coupled ectopic beat as broad as a T wave (equivalent envelope width
>= 80 ms) whose lead pattern is like the sinus beat's (up to sign) is not told apart from a T wave.

How it is checked (there is no second, plain implementation of this detector): against expert annotations of
real recordings (MIT-BIH record 100, the DICOM record's R fiducials, and copies of both with T waves scaled to
1.5-2x the R wave), against synthetic records built to provoke each failure (tests/test_beats_provoking.py,
tests/test_beats_hard.py: coupled ectopy, baseline steps), and against NeuroKit2 on the same records in the same
run (benchmarks/segmentation.py; ``--seeds N`` draws N random records of every provoking case and rate).
"""

from __future__ import annotations

import numpy as np

from ._detector import TARGET_FS, detect_core, segment_batch_core

__all__ = [
    "detect_r_peaks",
    "beat_spans",
    "token_spans",
    "span_seconds",
    "segment_batch",
    "TARGET_FS",
]


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
    return detect_core(x, float(fs))


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
        segment_batch_core(x, float(fs), int(max_beats), peaks, counts)
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


def span_seconds(spans, fs: float) -> np.ndarray:
    """Each beat span's duration in seconds, float32 ``[n_beats]``, from the spans in samples (``beat_spans``): the
    model's beat timing to one sample (``model.beat_timing_samples``; the batch's ``beat_seconds``)."""
    sp = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    return ((sp[:, 1] - sp[:, 0]) / float(fs)).astype(np.float32)
