"""Signal preprocessing of docs/SPEC.md ("Data"): per-lead high-pass, then min-max over the whole record to [0, 1]."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import signal as sps


@lru_cache(maxsize=16)
def _highpass_sos(fs: float, hz: float, order: int):
    return sps.butter(order, hz, btype="highpass", fs=fs, output="sos")


def highpass(x: np.ndarray, fs: float, hz: float = 4.0, order: int = 2) -> np.ndarray:
    """Zero-phase Butterworth high-pass along the last axis (hz <= 0 returns x unchanged)."""
    if hz <= 0:
        return np.asarray(x, dtype=np.float32)
    return sps.sosfiltfilt(_highpass_sos(float(fs), float(hz), order), x, axis=-1).astype(np.float32)


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale the whole record (all leads together) to [0, 1]; a constant record becomes all zeros."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("record holds NaN or Inf samples")
    if hi - lo <= 0:
        return np.zeros_like(x, dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def preprocess(x: np.ndarray, fs: float, highpass_hz: float = 4.0) -> np.ndarray:
    """[leads, samples] raw signal -> float32 high-passed and min-max scaled to [0, 1]."""
    return minmax(highpass(np.asarray(x, dtype=np.float64), fs, highpass_hz))
