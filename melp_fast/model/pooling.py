"""Beat level: encoder tokens -> one embedding per heartbeat; rhythm level: beats -> one ECG embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .attention import AttentionalPooler


def span_mean(tokens: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Mean of tokens[b, start:end] for every span. tokens [B, T, D], spans int [B, K, 2] (half-open, token units).

    Uses a prefix sum, so the cost is O(B T D + B K D) whatever the span lengths. Empty spans give zeros.
    """
    b, t, d = tokens.shape
    spans = spans.clamp(0, t)
    prefix = F.pad(tokens.float().cumsum(dim=1), (0, 0, 1, 0))  # [B, T + 1, D]
    start = prefix.gather(1, spans[..., 0:1].expand(-1, -1, d))
    end = prefix.gather(1, spans[..., 1:2].expand(-1, -1, d))
    length = (spans[..., 1] - spans[..., 0]).clamp(min=1).unsqueeze(-1)
    return ((end - start) / length).to(tokens.dtype)


class BeatPooler(nn.Module):
    """Tokens -> beats [B, K, embed_dim] (+ mask) and the rhythm (global) embedding [B, embed_dim].

    beat_pooling = "beats": the mean of the tokens inside each detected beat, then a linear map.
    beat_pooling = "queries": the reference code's learned queries (not real beats; every query is valid).
    The rhythm embedding is the mean of the valid beat embeddings; an ECG with no detected beat uses the mean
    of all its tokens instead (its beats stay masked, so the local loss leaves it out).
    `features` (the linear-probe feature) is that mean before the final projection; `rhythm` is projected and
    L2-normalised.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mode = cfg.beat_pooling
        if self.mode == "beats":
            self.norm = nn.LayerNorm(cfg.width)
            self.beat_proj = nn.Linear(cfg.width, cfg.embed_dim)
        elif self.mode == "queries":
            self.pooler = AttentionalPooler(cfg.embed_dim, cfg.width, cfg.beat_queries, heads=8 if cfg.embed_dim % 8 == 0 else 1)
        else:
            raise ValueError(f"beat_pooling must be 'beats' or 'queries', not {self.mode!r}")
        self.global_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, tokens, beat_spans=None, beat_mask=None):
        b, t, _ = tokens.shape
        if self.mode == "queries":
            beats = self.pooler(tokens)
            beat_mask = torch.ones(beats.shape[:2], dtype=torch.bool, device=tokens.device)
            weights = beat_mask
        else:
            if beat_spans is None or beat_mask is None:
                raise ValueError("beat_pooling='beats' needs beat_spans and beat_mask from the data pipeline")
            beats = self.beat_proj(self.norm(span_mean(tokens, beat_spans)))
            # whole-record fallback for the rhythm embedding only, computed for every record and selected with
            # masks (no host sync): a record with no beat gets it in slot 0, with weight 1
            empty = ~beat_mask.any(dim=1, keepdim=True)  # [B, 1]
            first = torch.arange(beats.shape[1], device=beats.device) == 0  # [K]
            use_whole = empty & first  # [B, K]
            whole = self.beat_proj(self.norm(tokens.mean(dim=1)))
            beats = torch.where(use_whole.unsqueeze(-1), whole.unsqueeze(1), beats)
            weights = beat_mask | use_whole
        w = weights.to(beats.dtype).unsqueeze(-1)
        features = (beats * w).sum(1) / w.sum(1).clamp(min=1)
        g = self.global_proj(features)
        rhythm = F.normalize(g.float(), dim=-1).to(g.dtype)  # normalised in fp32, handed on in the compute dtype
        return {"beats": beats, "beat_mask": beat_mask, "features": features, "rhythm": rhythm}
