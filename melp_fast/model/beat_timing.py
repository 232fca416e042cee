"""Beat timing as a model input: per detected beat, how long it lasts and how that compares with its neighbours and
the record, embedded and added to the encoder tokens of the beat (``model.beat_timing``).

The data pipeline hands the model beat spans in token units (``data.beats.beat_spans`` then ``token_spans``): beat
``i`` and beat ``i + 1`` meet half-way between their R peaks, so an interior beat's span lasts
``(RR before + RR after) / 2`` (to one token, 32 ms). With ``model.beat_timing_samples`` the durations come from the
spans in samples instead (``durations``, the batch's ``beat_seconds``: to one sample, 2 ms at 500 Hz): the 32 ms
rounding alone moves a regular rhythm's irregularity measures to 0.04-0.07, as far as a nearly regular atrial
fibrillation's. The first and last spans are clipped at the record's ends and
say nothing reliable about timing; they take the duration of their interior neighbour. Everything is computed on the
device with masks (no host sync, no data-dependent shapes).

Features per beat (``FEATURES``, in this order), all 0 on a beat without timing (masked, or a record with fewer
than 3 valid beats, where no span is interior):

- ``log_interval``: log of the beat's duration in seconds;
- ``log_rel``: log of its ratio to the record's median duration (interior beats);
- ``log_prev`` / ``log_next``: log ratio to the previous / next beat's duration (0 where there is none);
- ``irregularity``: the record's median of |log ratio| of successive interior durations (persistent irregularity,
  atrial fibrillation; robust to a single ectopic beat);
- ``irregularity_lag2``: the same median for durations two beats apart. Successive spans share one RR interval,
  which cancels in their ratio; two apart they share none, so RR irregularity shows about sqrt(2) times more
  against the same 1-token quantisation (on the synthetic corpus: AF 10th percentile 0.076, regular sinus
  tachycardia 90th percentile 0.061, where the successive median overlaps);
- ``irregularity_mean``: the mean of the successive |log ratio| (also sensitive to single premature beats);
- ``timed``: 1.

The log ratios are clipped to [-2, 2], then scaled by fixed factors (``_BEAT_SCALE`` for the beat's own,
``_RECORD_SCALE`` for the record's three irregularities) so the MLP sees inputs of order 1. Valid beats are expected in time order (as the detector gives them); a beat
counts as interior when its neighbours on both sides are valid.
"""

from __future__ import annotations

import math

import torch
from torch import nn

FEATURES = ("log_interval", "log_rel", "log_prev", "log_next", "irregularity", "irregularity_lag2", "irregularity_mean",
            "timed")
_CLIP = 2.0
# fixed input scales, so that the MLP starts with features of order 1: a beat's log ratios (a premature beat's is
# about -0.5) x 4, the record's irregularity (about 0.03-0.06 regular, 0.08-0.25 irregular) x 10
_BEAT_SCALE = 4.0
_RECORD_SCALE = 10.0
_MIN_SECONDS = 1e-3  # a duration floor (masked slots hold 0)


def masked_median(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Median along the last dim of ``values`` [..., K] over ``mask`` (the mean of the two middle values for an even
    count); 0 where the mask is empty."""
    n = mask.sum(-1, keepdim=True)
    s = torch.where(mask, values, torch.full_like(values, math.inf)).sort(dim=-1).values
    lo = ((n - 1).clamp(min=0) // 2).clamp(max=values.shape[-1] - 1)
    hi = (n // 2).clamp(max=values.shape[-1] - 1)
    med = 0.5 * (s.gather(-1, lo) + s.gather(-1, hi))
    return torch.where(n > 0, med, torch.zeros_like(med)).squeeze(-1)


def _shift(x: torch.Tensor, by: int, fill) -> torch.Tensor:
    """x [B, K] shifted along K: by = n > 0 puts x[i - n] at i, by = -n puts x[i + n] at i; ``fill`` enters."""
    n = min(abs(by), x.shape[1])
    pad = torch.full_like(x[:, :n], fill)
    return torch.cat([pad, x[:, : x.shape[1] - n]], 1) if by > 0 else torch.cat([x[:, n:], pad], 1)


def beat_timing_features(beat_spans: torch.Tensor, beat_mask: torch.Tensor, seconds_per_token: float,
                         durations: torch.Tensor | None = None):
    """``beat_spans`` int [B, K, 2] (half-open, token units), ``beat_mask`` bool [B, K] -> features float32
    [B, K, len(FEATURES)] and ``timed`` bool [B, K] (the beats that carry timing). ``durations`` [B, K]: each span's
    duration in seconds measured finer than the tokens (from the spans in samples); None: from ``beat_spans``."""
    mask = beat_mask.bool()
    if durations is None:
        dur = (beat_spans[..., 1] - beat_spans[..., 0]).float().clamp(min=1.0) * seconds_per_token
    else:
        dur = durations.float().clamp(min=_MIN_SECONDS)
    prev_ok, next_ok = _shift(mask, 1, False), _shift(mask, -1, False)
    interior = mask & prev_ok & next_ok
    # edge beats (and beats next to a gap) take an interior neighbour's duration
    nxt_int, prv_int = _shift(interior, -1, False), _shift(interior, 1, False)
    dur = torch.where(interior, dur, torch.where(nxt_int, _shift(dur, -1, 1.0), torch.where(prv_int, _shift(dur, 1, 1.0), dur)))
    timed = mask & (interior | nxt_int | prv_int)
    log_d = torch.where(timed, dur.log(), torch.zeros_like(dur))
    med = masked_median(log_d, interior)  # [B]
    rel = (log_d - med[:, None]).clamp(-_CLIP, _CLIP)
    t_prev, t_next = _shift(timed, 1, False), _shift(timed, -1, False)
    d_prev = torch.where(timed & t_prev, log_d - _shift(log_d, 1, 0.0), torch.zeros_like(log_d)).clamp(-_CLIP, _CLIP)
    d_next = torch.where(timed & t_next, _shift(log_d, -1, 0.0) - log_d, torch.zeros_like(log_d)).clamp(-_CLIP, _CLIP)
    # interior beats 1 and 2 apart: |log d[i + lag] - log d[i]|
    pairs, steps = [], []
    for lag in (1, 2):
        pairs.append(interior & _shift(interior, -lag, False))
        steps.append((_shift(log_d, -lag, 0.0) - log_d).abs().clamp(max=_CLIP))
    stats = [masked_median(step, pair) for step, pair in zip(steps, pairs)]
    mean1 = torch.where(pairs[0], steps[0], torch.zeros_like(steps[0])).sum(1) / pairs[0].sum(1).clamp(min=1)
    b, k = mask.shape
    record = torch.stack([stats[0], stats[1], mean1], dim=-1)[:, None, :].expand(b, k, 3)
    beat = torch.stack([log_d, _BEAT_SCALE * rel, _BEAT_SCALE * d_prev, _BEAT_SCALE * d_next], dim=-1)
    feats = torch.cat([beat, _RECORD_SCALE * record, torch.ones_like(log_d)[..., None]], dim=-1)
    feats = torch.where(timed[..., None], feats, torch.zeros_like(feats))
    return feats, timed


def spread_to_tokens(beat_values: torch.Tensor, beat_spans: torch.Tensor, beat_mask: torch.Tensor, n_tokens: int):
    """beat_values [B, K, D] -> [B, T, D]: each token gets the value of the beat whose span holds it (0 outside
    every valid span; overlapping spans would add)."""
    t = torch.arange(n_tokens, device=beat_values.device)
    member = (t >= beat_spans[..., 0:1]) & (t < beat_spans[..., 1:2]) & beat_mask.bool()[..., None]  # [B, K, T]
    return torch.einsum("bkt,bkd->btd", member.to(beat_values.dtype), beat_values)


class BeatTimingEmbedding(nn.Module):
    """Beat timing features -> a small MLP -> [B, T, width], to add to the encoder tokens."""

    def __init__(self, width: int, seconds_per_token: float):
        super().__init__()
        self.seconds_per_token = seconds_per_token
        self.mlp = nn.Sequential(nn.Linear(len(FEATURES), width), nn.GELU(), nn.Linear(width, width))

    def forward(self, beat_spans, beat_mask, n_tokens: int, dtype=None, durations=None) -> torch.Tensor:
        feats, timed = beat_timing_features(beat_spans, beat_mask, self.seconds_per_token, durations)
        w = self.mlp[0].weight
        emb = self.mlp(feats.to(w.dtype))
        emb = torch.where(timed[..., None], emb, torch.zeros_like(emb))
        out = spread_to_tokens(emb, beat_spans.clamp(0, n_tokens), timed, n_tokens)
        return out if dtype is None else out.to(dtype)
