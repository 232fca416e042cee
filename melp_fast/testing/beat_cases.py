"""Provoking test cases for the beat detector, shared by tests/test_beats_provoking.py and
benchmarks/segmentation.py (not part of the installed library).

Each builder returns ``(x, ref)``: float64 ``(leads, samples)`` in mV and the int64 reference R-peak samples.

- ``synth_case(kind, fs, seed)``: a 10 s, 12-lead record from Gaussian-bump beat templates, drawn to provoke one
  error: ``KINDS`` = tall peaked T waves (hyperkalaemia-like), T taller than the QRS in some leads, large U waves,
  wide QRS (bundle branch block), low-voltage QRS beside normal T waves, paced rhythm (pacing spikes, some with an
  atrial spike), ventricular bigeminy, AF with a fast irregular rate. The reference is the centre of the main R
  bump (the same time in every lead).
- ``generator_case(kind, fs, index)``: a record of melp_fast.data.synthetic with the wanted label (LBBB, RBBB, PVC,
  AF, LVOLT, STE), resampled from 500 Hz to ``fs``.
- ``scale_t_waves(x, ref, fs, leads, factor)``: a copy of a real record whose T waves (the 120-520 ms after each
  annotated beat, never closer than 200 ms to the next one) are scaled to ``factor`` x that lead's R amplitude.
- ``match_beats`` lives in melp_fast/testing/common.py; ``t_window_fp(ref, det, fs)`` counts the false detections that
  fall 200-450 ms after a true beat (the T-wave class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

KINDS = ("tall_t", "t_over_qrs", "u_wave", "wide_qrs", "low_voltage", "paced", "bigeminy", "af_fast")
GENERATOR_KINDS = ("LBBB", "RBBB", "PVC", "AF", "LVOLT", "STE")
RATES = (250, 360, 500, 1000)


def nk_peaks(sig, fs):
    """NeuroKit2's R peaks of one lead (``ecg_clean`` then ``ecg_peaks``, default method), the peer every beat
    check is judged against; a record NeuroKit2 gives up on scores as finding nothing."""
    import warnings

    import neurokit2 as nk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            clean = nk.ecg_clean(sig, sampling_rate=fs)
            _, info = nk.ecg_peaks(clean, sampling_rate=fs)
        except Exception:  # NeuroKit2 gives up on some records: it found nothing
            return np.zeros(0, np.int64)
    return np.asarray(info["ECG_R_Peaks"], np.int64)


def t_window_fp(ref, det, fs, tol_s=0.15, lo_s=0.2, hi_s=0.45):
    """False detections (no reference beat within tol_s) that fall lo_s..hi_s after a reference beat."""
    ref = np.sort(np.asarray(ref, np.int64))
    det = np.asarray(det, np.int64)
    if det.size == 0:
        return 0
    if ref.size == 0:
        return 0
    tol = int(round(tol_s * fs))
    j = np.searchsorted(ref, det)
    near = np.full(det.size, np.iinfo(np.int64).max)
    has_r = j < ref.size
    near[has_r] = np.abs(ref[np.minimum(j, ref.size - 1)] - det)[has_r]
    has_l = j > 0
    near[has_l] = np.minimum(near[has_l], np.abs(det - ref[np.maximum(j - 1, 0)])[has_l])
    false = near > tol
    prev = np.where(j > 0, ref[np.maximum(j - 1, 0)], -(10**9))
    lag = det - prev
    return int(np.sum(false & (lag >= lo_s * fs) & (lag <= hi_s * fs)))


# ---------------------------------------------------------------------------------------------------------------
# synthetic provoking records
# ---------------------------------------------------------------------------------------------------------------
def _g(t, c, s):
    return np.exp(-0.5 * ((t - c) / s) ** 2)


def _rr_sinus(rng, hr, dur):
    base = 60.0 / hr
    n = int(dur / base) + 4
    rr = base * (1.0 + 0.03 * np.sin(2 * np.pi * 0.25 * np.arange(n) * base + rng.uniform(0, 6.3))
                 + rng.normal(0, 0.01, n))
    return rr


def synth_case(kind: str, fs: float, seed: int, dur: float = 10.0):
    """One 12-lead record provoking ``kind`` (see KINDS) at ``fs`` Hz: (x mV float64 (12, n), ref int64)."""
    if kind not in KINDS:
        raise ValueError(f"unknown case {kind!r}; expected one of {KINDS}")
    rng = np.random.default_rng([int(seed), KINDS.index(kind), int(fs)])
    L = 12
    n = int(round(dur * fs))
    t = np.arange(n) / fs
    x = np.zeros((L, n))
    # per-lead QRS: q, R, s bumps; lead gains with random signs for R (aVR-like negative leads too)
    r_amp = rng.uniform(0.6, 1.6, L) * np.where(rng.random(L) < 0.2, -1.0, 1.0)
    q_amp = -rng.uniform(0.0, 0.15, L) * np.abs(r_amp)
    s_amp = -rng.uniform(0.05, 0.5, L) * np.abs(r_amp)
    t_amp = rng.uniform(0.15, 0.35, L) * np.sign(r_amp)
    r_sig = rng.uniform(0.009, 0.012)
    t_sig = rng.uniform(0.045, 0.06)
    t_lag = rng.uniform(0.26, 0.32)
    hr = rng.uniform(55, 100)
    u_amp = np.zeros(L)
    pvc = None
    is_pvc = None
    p_amp = rng.uniform(0.05, 0.15, L)
    spike_leads = np.zeros(L)
    atrial_spike = False
    wide = False
    if kind == "tall_t":  # hyperkalaemia: tall, narrow-based, peaked T, 1.5-2x R in 4-8 leads
        t_sig = rng.uniform(0.028, 0.04)
        t_lag = rng.uniform(0.22, 0.28)
        k = rng.choice(L, size=int(rng.integers(4, 9)), replace=False)
        t_amp[k] = rng.uniform(1.5, 2.0, k.size) * np.abs(r_amp[k]) * np.sign(rng.normal(size=k.size) + 0.7)
        t_amp[1] = rng.uniform(1.5, 2.0) * abs(r_amp[1])  # lead II among them (the peers' lead)
    elif kind == "t_over_qrs":  # small QRS beside a normal T in some leads: T 1.5-2x the R there
        k = rng.choice(L, size=int(rng.integers(3, 7)), replace=False)
        k = np.union1d(k, [1])
        r_amp[k] *= rng.uniform(0.15, 0.3, k.size)
        q_amp[k] *= 0.2
        s_amp[k] *= 0.2
        t_amp[k] = rng.uniform(1.5, 2.0, k.size) * np.abs(r_amp[k]) * np.where(rng.random(k.size) < 0.8, 1, -1)
    elif kind == "u_wave":  # large U waves (as tall as T), 140-180 ms after it
        hr = rng.uniform(45, 70)
        t_amp = rng.uniform(0.3, 0.6, L) * np.sign(r_amp)
        u_amp = t_amp * rng.uniform(0.8, 1.2, L)
    elif kind == "wide_qrs":  # bundle branch block: 130-170 ms QRS, notched, discordant T
        wide = True
        r_sig = rng.uniform(0.018, 0.026)
        t_amp = -rng.uniform(0.3, 0.7, L) * np.sign(r_amp)
        t_lag = rng.uniform(0.32, 0.38)
    elif kind == "low_voltage":  # QRS 0.15-0.35 mV everywhere, T 0.3-0.6 mV
        r_amp = rng.uniform(0.15, 0.35, L) * np.sign(r_amp)
        q_amp *= 0.3
        s_amp = -rng.uniform(0.05, 0.4, L) * np.abs(r_amp)
        t_amp = rng.uniform(0.3, 0.6, L) * np.sign(r_amp)
    elif kind == "paced":  # ventricular pacing: spike then a wide QRS; half with an atrial spike before
        wide = True
        r_sig = rng.uniform(0.02, 0.028)
        t_amp = -rng.uniform(0.3, 0.6, L) * np.sign(r_amp)
        t_lag = rng.uniform(0.32, 0.38)
        spike_leads = rng.uniform(1.0, 6.0, L) * np.where(rng.random(L) < 0.5, -1, 1)
        atrial_spike = rng.random() < 0.5
        hr = rng.uniform(60, 90)
    elif kind == "bigeminy":  # every second beat a wide PVC, coupling 0.45-0.6 RR, discordant T
        is_pvc = True
        t_amp = rng.uniform(0.2, 0.5, L) * np.sign(r_amp)
        pvc = dict(amp=rng.uniform(1.0, 2.2, L) * np.sign(rng.normal(size=L)), sig=rng.uniform(0.02, 0.03))
        hr = rng.uniform(55, 80)
    elif kind == "af_fast":  # AF at 120-180 bpm, irregular RR, fibrillatory waves, no P
        hr = rng.uniform(120, 180)
        p_amp[:] = 0.0
    # beat times
    if kind == "af_fast":
        base = 60.0 / hr
        cv = rng.uniform(0.18, 0.3)
        rr = np.maximum(base * rng.lognormal(-0.5 * cv * cv, cv, int(dur / (0.5 * base)) + 4), 0.25)
    else:
        rr = _rr_sinus(rng, hr, dur)
    times = -rng.uniform(0, rr[0]) + np.cumsum(rr)
    kinds = np.zeros(times.size, bool)
    if kind == "bigeminy":  # N, PVC at 0.45-0.6 RR, the next N two RR after the first (compensatory pause)
        rr0 = 60.0 / hr
        nb = int(dur / rr0) + 4
        times = -rng.uniform(0, 2 * rr0) + 2 * rr0 * np.arange(nb // 2 + 1) + rng.normal(0, 0.005, nb // 2 + 1)
        pv = times + rng.uniform(0.45, 0.6, times.size) * rr0
        times = np.concatenate([times, pv])
        kinds = np.concatenate([np.zeros(pv.size, bool), np.ones(pv.size, bool)])
        o = np.argsort(times)
        times, kinds = times[o], kinds[o]
    keep = (times > -1.0) & (times < dur + 1.0)
    times, kinds = times[keep], kinds[keep]
    for bt, pv in zip(times, kinds):
        tt = t - bt
        sel = (tt > -0.5) & (tt < 0.9)
        u = tt[sel]
        if pv:
            a = pvc["amp"][:, None]
            sg = pvc["sig"]
            wav = a * (_g(u, -0.02, sg) + 0.6 * _g(u, 0.05, sg))
            wav += -0.4 * a * _g(u, 0.33, 0.06)
            x[:, sel] += wav
            continue
        if wide:
            qrs = r_amp[:, None] * (0.9 * _g(u, -0.025, r_sig) + _g(u, 0.025, r_sig)) / 1.0
            qrs += q_amp[:, None] * _g(u, -0.07, 0.012)
        else:
            qrs = (q_amp[:, None] * _g(u, -0.025, 0.008) + r_amp[:, None] * _g(u, 0.0, r_sig)
                   + s_amp[:, None] * _g(u, 0.025, 0.009))
        tw = t_amp[:, None] * _g(u, t_lag, t_sig)
        uw = u_amp[:, None] * _g(u, t_lag + rng.uniform(0.14, 0.18), 0.04)
        pw = p_amp[:, None] * _g(u, -0.16, 0.02)
        x[:, sel] += qrs + tw + uw + pw
        if kind == "paced":
            # spikes: 1 ms rectangular pulses integrated over each sample (sub-sample at low rates)
            for c, gain in ((-0.06, 1.0),) + (((-0.22, 0.7),) if atrial_spike else ()):
                a0, a1 = bt + c, bt + c + 0.001
                lo = np.clip((np.arange(n) - 0.5) / fs, a0, a1)
                hi = np.clip((np.arange(n) + 0.5) / fs, a0, a1)
                frac = (hi - lo) * fs
                x += gain * spike_leads[:, None] * frac[None, :]  # block mean of the pulse
    if kind == "af_fast":
        f0 = rng.uniform(5.0, 8.0)
        ph = 2 * np.pi * np.cumsum(f0 + 0.5 * np.sin(2 * np.pi * 0.3 * t)) / fs
        x += rng.uniform(0.04, 0.12, L)[:, None] * np.sin(ph + rng.uniform(0, 6.3, L)[:, None])
    # noise: white, baseline wander, sometimes mains hum (white noise and hum scaled with the QRS, so every kind
    # has the same signal-to-noise ratio: low-voltage records provoke the T-wave test, not the noise test)
    snr = 0.25 if kind == "low_voltage" else 1.0
    x += snr * rng.uniform(0.005, 0.02) * rng.normal(size=x.shape)
    x += rng.uniform(0.05, 0.3, (L, 1)) * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 6.3, (L, 1)))
    if rng.random() < 0.3:
        x += snr * rng.uniform(0.005, 0.02) * np.sin(2 * np.pi * 50.0 * t + rng.uniform(0, 6.3, (L, 1)))
    ref = np.round(times * fs).astype(np.int64)
    ref = ref[(ref >= 0) & (ref < n)]
    return x, ref


# ---------------------------------------------------------------------------------------------------------------
# records of the project's generator
# ---------------------------------------------------------------------------------------------------------------
def generator_case(kind: str, fs: float, index: int, seed: int = 0):
    """The ``index``-th record (counting from 0) of melp_fast.data.synthetic with label ``kind``, at ``fs`` Hz."""
    from scipy.signal import resample_poly

    from melp_fast.data import synthetic

    if kind not in GENERATOR_KINDS:
        raise ValueError(f"unknown generator case {kind!r}; expected one of {GENERATOR_KINDS}")
    col = synthetic.CLASSES.index(kind)
    found = -1
    i = 0
    while True:
        rec = synthetic.generate_record(10_000_000 + i, seed)
        i += 1
        if rec.labels[col] > 0:
            found += 1
            if found == index:
                break
    x = rec.signal.astype(np.float64)
    ref = rec.r_peaks
    if int(fs) != synthetic.FS:
        g = np.gcd(int(fs), synthetic.FS)
        x = resample_poly(x, int(fs) // g, synthetic.FS // g, axis=1)
        ref = np.round(ref * fs / synthetic.FS).astype(np.int64)
        ref = ref[ref < x.shape[1]]
    return x, ref


# ---------------------------------------------------------------------------------------------------------------
# real records altered to provoke
# ---------------------------------------------------------------------------------------------------------------
def scale_t_waves(x, ref, fs, leads, factor):
    """A copy of x whose T waves in ``leads`` are scaled so that their peak is ``factor`` x the lead's median R
    amplitude (``factor`` a scalar or one per lead). The T segment of a beat is 120-520 ms after it (ending 200 ms
    before the next beat), baseline-removed by the line through its ends and scaled with a smooth (Hann-edged)
    window, so the record stays continuous. Only the segment's low band (a 120 ms triangular smoothing) is scaled, so
    the noise riding on it is not amplified."""
    y = np.array(x, np.float64, copy=True)
    ref = np.sort(np.asarray(ref, np.int64))
    n = y.shape[1]
    factor = np.broadcast_to(np.asarray(factor, np.float64), (len(leads),))
    w_qrs = int(0.06 * fs)
    k = max(1, int(0.06 * fs))
    box = np.convolve(np.ones(k), np.ones(k)) / (k * k)  # triangular 120 ms smoother (noise is not amplified)
    for li, l in enumerate(leads):
        xl = x[l]
        r_amp = []
        t_amp = []
        segs = []
        for i, r in enumerate(ref):
            a = r + int(0.12 * fs)
            e = r + int(0.52 * fs)
            if i + 1 < ref.size:
                e = min(e, ref[i + 1] - int(0.2 * fs))
            if r < w_qrs or e >= n or e - a < int(0.1 * fs):
                continue
            base_r = 0.5 * (xl[max(0, r - int(0.1 * fs))] + xl[a])
            r_amp.append(np.max(np.abs(xl[r - w_qrs : r + w_qrs] - base_r)))
            line = np.linspace(xl[a], xl[e], e - a)
            seg = np.convolve(xl[a:e] - line, box, mode="same")  # T waves are slow: scale only the low band
            segs.append((a, e, seg))
            t_amp.append(np.max(np.abs(seg)))
        if not segs:
            continue
        gain = factor[li] * np.median(r_amp) / max(np.median(t_amp), 1e-9)
        for a, e, seg in segs:
            m = e - a
            edge = max(2, m // 4)
            win = np.ones(m)
            ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(edge) / edge)
            win[:edge] = ramp
            win[m - edge :] = ramp[::-1]
            y[l, a:e] += (gain - 1.0) * win * seg
    return y


BEAT_CODES = set("NLRBAaJSVrFejnE/fQ?")  # MIT-BIH annotation symbols that mark a beat


# The real recordings: the repository's own (tests/data, see its README: 5 min of MIT-BIH record 100; pydicom's test
# ECG from the installed pydicom), or the whole MIT-BIH record where ../shared/data holds it (benchmarks only).
ROOT = Path(__file__).resolve().parents[2]  # the repository (a checkout: tests/data is not installed)
FIXTURE_MITBIH = ROOT / "tests" / "data" / "mitbih" / "100"
SHARED_MITBIH = ROOT.parent / "shared" / "data" / "mitbih" / "100"


def mitbih_record(whole: bool = False) -> Path:
    """MIT-BIH record 100 (path without extension): the repository's 5 min excerpt, or with ``whole`` the 30 min
    record of ../shared/data when it is there (else the excerpt)."""
    if whole and SHARED_MITBIH.with_suffix(".dat").is_file():
        return SHARED_MITBIH
    return FIXTURE_MITBIH


def dicom_ecg() -> Path:
    """pydicom's annotated 12-lead test ECG (waveform_ecg.dcm) from the installed pydicom."""
    import pydicom.data

    p = Path(pydicom.data.__file__).resolve().parent / "test_files" / "waveform_ecg.dcm"
    if p.is_file():
        return p
    return Path(pydicom.data.get_testdata_file("waveform_ecg.dcm", download=False))


def load_mitbih(record=None):
    """A MIT-BIH record (path without extension; default: the repository's excerpt of record 100) and its annotated
    beats: (signal [leads, n] in mV, fs, beats)."""
    import wfdb

    record = FIXTURE_MITBIH if record is None else record

    rec = wfdb.rdrecord(str(record))
    ann = wfdb.rdann(str(record), "atr")
    ref = np.array([s for s, c in zip(ann.sample, ann.symbol) if c in BEAT_CODES], np.int64)
    return np.ascontiguousarray(rec.p_signal.T), float(rec.fs), ref


def resample_to(x, ref, fs, fs_new):
    """A record [leads, n] and its beat samples at another sampling rate (polyphase resampling)."""
    from scipy.signal import resample_poly

    if int(fs_new) == int(fs):
        return x, ref
    g = np.gcd(int(fs_new), int(fs))
    y = resample_poly(x, int(fs_new) // g, int(fs) // g, axis=1)
    r = np.round(ref * fs_new / fs).astype(np.int64)
    return y, r[r < y.shape[1]]


def load_dicom_annotated(path=None):
    """A 12-lead DICOM ECG and its annotated R points: (signal [leads, n] in microvolts, fs, beats). The beats are
    the rhythm strip's fiducial points (annotation groups >= 100; group 2 is the median beat), made 0-based.
    Default path: pydicom's test ECG."""
    import pydicom

    path = dicom_ecg() if path is None else path
    ds = pydicom.dcmread(str(path))
    x = np.ascontiguousarray(ds.waveform_array(0).T)
    ref = np.array([a.ReferencedSamplePositions - 1 for a in ds.WaveformAnnotationSequence
                    if "ConceptNameCodeSequence" in a
                    and a.ConceptNameCodeSequence[0].CodeMeaning == "Fiducial Point"
                    and int(a.AnnotationGroupNumber) >= 100], np.int64)
    return x, float(ds.WaveformSequence[0].SamplingFrequency), ref


# ---------------------------------------------------------------------------------------------------------------
# harder provoking records: coupled ectopy of every morphology, baseline steps, the T-window boundary
# ---------------------------------------------------------------------------------------------------------------
HARD_KINDS = ("bigeminy_var", "trigeminy_var", "step_t", "step_late", "step_pair", "step_multi", "step_on_qrs",
              "transient_t_end")
ECTOPIC_SHAPES = ("taller", "shorter", "wider", "inverted")


def _sinus_leads(rng, L):
    r_amp = rng.uniform(0.6, 1.6, L) * np.where(rng.random(L) < 0.2, -1.0, 1.0)
    return dict(r=r_amp, q=-rng.uniform(0.0, 0.15, L) * np.abs(r_amp), s=-rng.uniform(0.05, 0.5, L) * np.abs(r_amp),
                t=rng.uniform(0.15, 0.4, L) * np.sign(r_amp), p=rng.uniform(0.05, 0.15, L),
                r_sig=rng.uniform(0.009, 0.012), t_sig=rng.uniform(0.045, 0.06), t_lag=rng.uniform(0.26, 0.32))


def _sinus_beat(u, a):
    return (a["q"][:, None] * _g(u, -0.025, 0.008) + a["r"][:, None] * _g(u, 0.0, a["r_sig"])
            + a["s"][:, None] * _g(u, 0.025, 0.009) + a["t"][:, None] * _g(u, a["t_lag"], a["t_sig"])
            + a["p"][:, None] * _g(u, -0.16, 0.02))


def _add_noise(rng, x, t):
    x += rng.uniform(0.005, 0.02) * rng.normal(size=x.shape)
    x += rng.uniform(0.05, 0.3, (x.shape[0], 1)) * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t
                                                          + rng.uniform(0, 6.3, (x.shape[0], 1)))
    if rng.random() < 0.3:
        x += rng.uniform(0.005, 0.02) * np.sin(2 * np.pi * 50.0 * t + rng.uniform(0, 6.3, (x.shape[0], 1)))


def _ramp(t, t0, rise):
    """0 before t0, 1 after t0 + rise, linear between (a step with a linear rise; rise 0: a sharp step), as the
    block mean over each sample so a sub-sample rise is rendered like an anti-aliased recording."""
    if rise <= 0.0:
        return (t >= t0).astype(np.float64)
    return np.clip((t - t0) / rise, 0.0, 1.0)


def hard_case(kind: str, fs: float, seed: int, dur: float = 10.0):
    """One 12-lead record of ``kind`` (see HARD_KINDS) at ``fs`` Hz: (x mV float64 (12, n), ref int64).

    - ``bigeminy_var`` / ``trigeminy_var``: every 2nd / 3rd beat ventricular ectopic, coupling interval 300-600 ms
      (never past 0.65 of the sinus RR), the ectopic beat ``taller`` (1.5-2.5x |R|), ``shorter`` (0.4-0.7x),
      ``wider`` (sigma 30-40 ms) or ``inverted`` (opposite polarity to the sinus R in every lead), each with its own
      discordant T wave; the reference of an ectopic beat is its largest deflection's time.
    - ``step_t`` / ``step_late``: regular 50-100 bpm beats plus one baseline step of k x |R| per lead (k 0.8-2.3,
      random sign per lead) with a linear rise of 0-10 ms, 250 ms (``step_t``) or 600 ms (``step_late``, or
      half-way to the next beat at fast rates) after an R, in one lead or in 10 of 12 leads.
    - ``step_pair``: two opposite steps 0.4-0.9 s apart (a rectangular excursion of 1-2.3x |R|, rise 14-25 ms
      10-90 %), 215-250 ms or > 0.85 s after a beat, in one lead or with opposite signs in two.
    - ``step_multi``: a simultaneous step of 0.5-1x each lead's QRS amplitude in 10 of 12 leads, sub-millisecond
      rise, in the T-wave window or late.
    - ``step_on_qrs``: a step (0.8-2x |R|, one lead or 10 of 12) at the same instant as a real R peak: the beat
      must stay.
    - ``transient_t_end``: a single-lead smooth transient of ~70 % of that lead's QRS peaking 430-470 ms after an
      R (at the end of the T-wave window).
    """
    if kind not in HARD_KINDS:
        raise ValueError(f"unknown case {kind!r}; expected one of {HARD_KINDS}")
    rng = np.random.default_rng([int(seed), 100 + HARD_KINDS.index(kind), int(fs)])
    L = 12
    n = int(round(dur * fs))
    t = np.arange(n) / fs
    x = np.zeros((L, n))
    a = _sinus_leads(rng, L)
    ref_t = []
    if kind in ("bigeminy_var", "trigeminy_var"):
        period = 2 if kind == "bigeminy_var" else 3
        hr = rng.uniform(50, 85)
        rr0 = 60.0 / hr
        coupling = min(rng.uniform(0.3, 0.6), 0.65 * rr0)
        shape = ECTOPIC_SHAPES[int(rng.integers(0, len(ECTOPIC_SHAPES)))]
        sig = rng.uniform(0.02, 0.03)
        if shape == "taller":
            amp = rng.uniform(1.5, 2.5, L) * np.abs(a["r"]) * np.sign(rng.normal(size=L))
        elif shape == "shorter":
            amp = rng.uniform(0.4, 0.7, L) * np.abs(a["r"]) * np.sign(rng.normal(size=L))
            sig = rng.uniform(0.012, 0.02)
        elif shape == "wider":
            amp = rng.uniform(0.8, 1.5, L) * np.abs(a["r"]) * np.sign(rng.normal(size=L))
            sig = rng.uniform(0.03, 0.04)
        else:  # inverted: the sinus R's size, opposite sign in every lead
            amp = -rng.uniform(0.8, 1.5, L) * a["r"]
        # sinus beats every period-1 RR (+ the compensatory pause), ectopic beats at the coupling interval
        cycle = period * rr0
        n_cyc = int(dur / cycle) + 3
        starts = -rng.uniform(0, cycle) + cycle * np.arange(n_cyc) + rng.normal(0, 0.005, n_cyc)
        for st in starts:
            sinus = [st + j * rr0 for j in range(period - 1)]
            ect = sinus[-1] + coupling
            for bt in sinus:
                sel = (t > bt - 0.5) & (t < bt + 0.9)
                x[:, sel] += _sinus_beat(t[sel] - bt, a)
                ref_t.append(bt)
            sel = (t > ect - 0.5) & (t < ect + 0.9)
            u = t[sel] - ect
            x[:, sel] += amp[:, None] * (_g(u, 0.0, sig) + 0.5 * _g(u, 0.06, sig) - 0.35 * _g(u, 0.33, 0.06))
            ref_t.append(ect)
    else:
        hr = rng.uniform(50, 100)
        rr = _rr_sinus(rng, hr, dur)
        times = -rng.uniform(0, rr[0]) + np.cumsum(rr)
        for bt in times:
            sel = (t > bt - 0.5) & (t < bt + 0.9)
            x[:, sel] += _sinus_beat(t[sel] - bt, a)
            ref_t.append(bt)
        inner = times[(times > 1.0) & (times < dur - 2.0)]
        b0 = float(inner[int(rng.integers(0, max(1, inner.size - 1)))])
        nxt = float(times[np.searchsorted(times, b0) + 1])
        R = np.abs(a["r"])
        one = rng.random() < 0.5
        if kind in ("step_t", "step_late", "step_on_qrs"):
            leads = np.array([int(rng.integers(0, L))]) if one else rng.choice(L, size=10, replace=False)
            k = rng.uniform(0.8, 2.3) if kind != "step_on_qrs" else rng.uniform(0.8, 2.0)
            if kind == "step_t":
                t0 = b0 + 0.25
            elif kind == "step_late":
                t0 = b0 + min(0.6, 0.5 * (nxt - b0))
            else:
                t0 = b0
            rise = rng.uniform(0.0, 0.01)
            sgn = np.sign(rng.normal(size=leads.size))
            x[leads] += (k * R[leads] * sgn)[:, None] * _ramp(t, t0 - 0.5 * rise, rise)[None, :]
        elif kind == "step_pair":
            rise = rng.uniform(0.014, 0.025) / 0.8  # 10-90 % rise of a linear ramp is 0.8 of it
            t0 = b0 + (rng.uniform(0.215, 0.25) if rng.random() < 0.5 else rng.uniform(0.85, 0.95))
            t1 = t0 + rng.uniform(0.4, 0.9)
            k = rng.uniform(1.0, 2.3)
            if one:
                leads, sgn = np.array([int(rng.integers(0, L))]), np.array([np.sign(rng.normal())])
            else:
                leads = rng.choice(L, size=2, replace=False)
                s0 = np.sign(rng.normal())
                sgn = np.array([s0, -s0])
            step = _ramp(t, t0, rise) - _ramp(t, t1, rise)
            x[leads] += (k * R[leads] * sgn)[:, None] * step[None, :]
        elif kind == "step_multi":
            leads = rng.choice(L, size=10, replace=False)
            t0 = b0 + (rng.uniform(0.215, 0.25) if rng.random() < 0.5 else min(0.6, 0.5 * (nxt - b0)))
            qrs = R + np.abs(a["s"])
            k = rng.uniform(0.5, 1.0, leads.size) * qrs[leads] * np.sign(rng.normal(size=leads.size))
            x[leads] += k[:, None] * _ramp(t, t0, 0.0008)[None, :]
        else:  # transient_t_end
            lead = int(rng.integers(0, L))
            tc = b0 + rng.uniform(0.43, 0.47)
            amp = 0.7 * (R[lead] + abs(a["s"][lead])) * np.sign(rng.normal())
            x[lead] += amp * _g(t, tc, rng.uniform(0.012, 0.02))
    _add_noise(rng, x, t)
    ref = np.round(np.sort(np.asarray(ref_t)) * fs).astype(np.int64)
    ref = ref[(ref >= 0) & (ref < n)]
    return x, ref
