"""Training augmentations that real recordings need, applied to batches read from a store.

A store holds the spec's preprocessed signal: each lead high-passed (4 Hz), then the whole record min-max scaled to
[0, 1]. The min-max is one affine map for all leads, so the high-passed signal's zero level is one value ``c`` for
the whole record (estimated as the median of all samples of the present leads). Every augmentation works on
``x - c`` (the high-passed signal up to a positive scale) and the result is min-max scaled again, so an augmented
record looks exactly like a preprocessed one:

- per-lead gain: each lead multiplied by a factor in [1/(1+g), 1+g] (log-uniform): electrode contact and cart
  calibration differ between leads and machines;
- small time warps: a smooth monotone warp of the time axis, the local rate changing by at most ``warp``
  (default 2 %, a shift of at most ~16 samples, one encoder token: the beat spans stay valid);
- electrode noise: white noise of SD up to ``noise`` (in units of the record's range) on each lead, and with
  probability 0.3 a burst of muscle noise on one lead;
- mains hum: with probability 0.3, a 50 or 60 Hz sine of amplitude up to ``hum`` (units of the record's range;
  default 0.02, about 0.05 mV on a typical record) with a per-lead share in [0.3, 1]: the spec's preprocessing has
  no notch filter, and unfiltered real recordings carry more hum than the corpus (a 0.05 mV hum on
  pydicom's normal ECG drew an ST-elevation call from a model trained without it);
- limb lead reversal (an option, off by default): left / right arm electrodes swapped, as happens in practice:
  I -> -I, II <-> III, aVR <-> aVL, aVF unchanged (12-lead canonical order only).

Leads that the lead mask zeroed stay zero. The draws depend on (seed, epoch, record index) only: reproducible and
independent of batching, workers and order, like the lead mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .constants import FS

LEADS12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
# LA/RA reversal: new lead i = sign * old lead PERM[i]
_REV_PERM = np.array([0, 2, 1, 4, 3, 5, 6, 7, 8, 9, 10, 11])
_REV_SIGN = np.array([-1.0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])


@dataclass
class Augment:
    gain: float = 0.15  # per-lead gain in [1/(1+gain), 1+gain]; 0: off
    warp: float = 0.02  # largest local change of the time scale; 0: off
    noise: float = 0.01  # largest white-noise SD, units of the record's range; 0: off
    hum: float = 0.02  # largest 50 / 60 Hz hum amplitude (drawn in 30 % of records), units of the range; 0: off
    lead_reversal_p: float = 0.0  # probability of a limb lead (LA/RA) reversal per record
    seed: int = 0

    @classmethod
    def from_config(cls, data_cfg) -> "Augment | None":
        """From DataConfig's ``augment*`` fields; None when augmentation is off."""
        if not getattr(data_cfg, "augment", False):
            return None
        return cls(gain=data_cfg.augment_gain, warp=data_cfg.augment_warp, noise=data_cfg.augment_noise,
                   hum=data_cfg.augment_hum, lead_reversal_p=data_cfg.augment_lead_reversal_p, seed=data_cfg.seed)

    def __post_init__(self):
        for name in ("gain", "warp", "noise", "hum", "lead_reversal_p"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"augment {name} must be a finite number >= 0, got {v!r}")
        if self.warp >= 0.2:
            raise ValueError(f"augment warp must be below 0.2 (a small warp), got {self.warp}")
        if self.lead_reversal_p > 1:
            raise ValueError(f"augment lead_reversal_p is a probability, got {self.lead_reversal_p}")

    def record(self, x: np.ndarray, index: int, epoch: int = 0, present: np.ndarray | None = None,
               leads=LEADS12) -> np.ndarray:
        """One preprocessed record [leads, samples] in [0, 1] -> its augmented copy (float32, in [0, 1])."""
        x = np.asarray(x, dtype=np.float64)
        n_leads, n = x.shape
        present = np.ones(n_leads, dtype=bool) if present is None else np.asarray(present, dtype=bool)
        if not present.any():
            return x.astype(np.float32)
        rng = np.random.default_rng([int(self.seed) & 0xFFFFFFFF, int(epoch), int(index), 0xA06])
        c = float(np.median(x[present]))
        y = x - c
        y[~present] = 0.0
        if self.lead_reversal_p > 0 and tuple(leads) == LEADS12 and rng.random() < self.lead_reversal_p:
            y = _REV_SIGN[:, None] * y[_REV_PERM]
            present = present[_REV_PERM]
        if self.gain > 0:
            lg = np.log1p(self.gain)
            y *= np.exp(rng.uniform(-lg, lg, n_leads))[:, None]
        if self.warp > 0:
            y = _time_warp(y, rng, self.warp)
        if self.noise > 0:
            y += rng.normal(size=y.shape) * rng.uniform(0.0, self.noise, (n_leads, 1))
            if rng.random() < 0.3:  # a burst of muscle (EMG) noise on one lead
                k = int(rng.integers(n_leads))
                a = int(rng.integers(0, n - n // 10))
                b = a + int(rng.integers(n // 20, n // 5))
                y[k, a:b] += rng.normal(size=min(b, n) - a) * rng.uniform(0.5, 2.0) * self.noise
        if self.hum > 0 and rng.random() < 0.3:
            f = 50.0 if rng.random() < 0.5 else 60.0
            t = np.arange(n) / FS
            share = rng.uniform(0.3, 1.0, (n_leads, 1))
            y += rng.uniform(0.0, self.hum) * share * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
        y[~present] = 0.0
        lo, hi = float(y[present].min()), float(y[present].max())
        out = (y - lo) / (hi - lo) if hi > lo else np.zeros_like(y)
        out[~present] = 0.0
        return out.astype(np.float32)

    def batch(self, ecg: torch.Tensor, indices, epoch: int = 0, keep=None, leads=LEADS12) -> torch.Tensor:
        """A batch [b, leads, samples] (any float dtype) -> augmented batch of the same dtype. ``keep``: bool
        [b, leads] of the leads the lead mask kept (None: all; zero leads are treated as masked)."""
        x = ecg.detach().float().cpu().numpy()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if keep is None:
            keep = np.abs(x).max(-1) > 0
        keep = np.asarray(keep, dtype=bool)
        out = np.stack([self.record(x[i], int(idx[i]), epoch, keep[i], leads) for i in range(len(idx))])
        return torch.from_numpy(out).to(dtype=ecg.dtype, device=ecg.device)


def _time_warp(y: np.ndarray, rng: np.random.Generator, warp: float) -> np.ndarray:
    """Resample every lead along t -> t + A sin(2 pi f t / n + phase): 1-2 cycles per record, the local rate
    changing by at most ``warp`` (A = warp * n / (2 pi f)), so the warp is smooth and monotone."""
    n = y.shape[-1]
    t = np.arange(n, dtype=np.float64)
    f = rng.uniform(1.0, 2.0)
    amp = rng.uniform(0.0, warp) * n / (2 * np.pi * f)
    src = np.clip(t + amp * np.sin(2 * np.pi * f * t / n + rng.uniform(0, 2 * np.pi)), 0, n - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    w = src - i0
    return y[:, i0] * (1 - w) + y[:, i1] * w
