"""The whole MELP model: ECG encoder, beat/rhythm pooling, text encoder, captioning decoder, logit scale."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..config import ModelConfig
from ..data.tokenize import ReportTokenizer
from .attention import AttentionalPooler, set_backend
from .decoder import CaptionDecoder
from .ecg_encoder import ECGEncoder
from .pooling import BeatPooler
from .text import TextEncoder


class ModelOutput(NamedTuple):
    """What MELP.forward gives the losses (melp_fast.losses): tensors only, by name (out.rhythm, ...).

    A NamedTuple rather than a dataclass: DeepSpeed's ZeRO-3 hooks find the tensors of a module's output only in
    tuples, lists and dicts; with a dataclass the root module's backward hooks are left out (DeepSpeed warns) and a
    ZeRO-3 run's gradient norm drifted from ZeRO-1's at the first step (tests/test_engine.py: ZeRO stages agree).

    rhythm [B, E], text [B, E]: the global embeddings; beats [B, K, E] + beat_mask [B, K], sents [B, S, E] +
    sent_mask [B, S]: the local ones; caption_hidden [N, H], caption_targets [N] (-100: no target), caption_weight
    [V, H] and caption_bias ([V] or None): the caption head's input and parameters (the head runs in the loss, with
    or without [N, V] logits); logit_scale: exp(logit scale), 0-d; caption_dropped: the targets left out when
    model.caption_tokens > 0 (0-d), else None."""

    rhythm: torch.Tensor
    beats: torch.Tensor
    beat_mask: torch.Tensor
    text: torch.Tensor
    sents: torch.Tensor
    sent_mask: torch.Tensor
    caption_hidden: torch.Tensor
    caption_targets: torch.Tensor
    caption_weight: torch.Tensor
    caption_bias: torch.Tensor | None
    logit_scale: torch.Tensor
    caption_dropped: torch.Tensor | None = None


class MELP(nn.Module):
    def __init__(self, cfg: ModelConfig, text_backbone=None, tokenizer=None):
        super().__init__()
        self.cfg = cfg
        set_backend(cfg.attention)
        self.ecg = ECGEncoder(cfg)
        self.beat_pool = BeatPooler(cfg)
        self.text = TextEncoder(cfg, backbone=text_backbone, tokenizer=tokenizer)
        h = self.text.hidden
        self.caption_pool = AttentionalPooler(h, cfg.width, cfg.caption_queries, cfg.caption_pool_heads)
        self.decoder = CaptionDecoder(h, cfg.decoder_heads, cfg.decoder_layers, self.text.vocab_size, cfg.dropout)
        if cfg.tie_caption_head:
            self.decoder.head.weight = self.text.backbone.get_input_embeddings().weight
        # shape [1], not 0-dim: DeepSpeed broadcasts parameters as byte views, which 0-dim tensors refuse
        self.logit_scale = nn.Parameter(torch.full((1,), float(cfg.logit_scale_init)))

    @property
    def tokenizer(self) -> ReportTokenizer:
        return ReportTokenizer(self.text.tokenizer, self.cfg.max_text_len, self.cfg.max_sentences)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped to [1, 100] (also clamped in place after every optimiser step)."""
        return self.logit_scale.float().clamp(0.0, self.cfg.logit_scale_max).exp().squeeze(0)

    @torch.no_grad()
    def clamp_logit_scale(self):
        self.logit_scale.data.clamp_(0.0, self.cfg.logit_scale_max)

    def encode_ecg(self, ecg, beat_spans=None, beat_mask=None, beat_seconds=None) -> dict:
        tokens = self.ecg(ecg, beat_spans, beat_mask, beat_seconds)
        out = self.beat_pool(tokens, beat_spans, beat_mask)
        out["tokens"] = tokens
        return out

    def encode_text(self, input_ids, attention_mask, sent_ids, eos_pos, **_) -> dict:
        return self.text(input_ids, attention_mask, sent_ids, eos_pos)

    def forward(self, batch: dict) -> ModelOutput:
        e = self.encode_ecg(batch["ecg"], batch.get("beat_spans"), batch.get("beat_mask"), batch.get("beat_seconds"))
        t = self.encode_text(batch["input_ids"], batch["attention_mask"], batch["sent_ids"], batch["eos_pos"])
        # the caption head runs in the loss on (hidden, the head's weight and bias, targets), with or without
        # [tokens, vocabulary] logits; positions without a target (-100: padding, the end token) weigh 0. The
        # decoder returns the head's parameters so that ZeRO-3 keeps them gathered for the loss (model/decoder.py)
        hidden, weight, bias = self.decoder(t["states"], self.caption_pool(e["tokens"]), batch["attention_mask"],
                                            project=False, with_head=True)
        hidden, targets, dropped = self.caption_rows(hidden, batch["caption_labels"])
        return ModelOutput(rhythm=e["rhythm"], beats=e["beats"], beat_mask=e["beat_mask"], text=t["text"],
                           sents=t["sents"], sent_mask=t["sent_mask"], caption_hidden=hidden,
                           caption_targets=targets, caption_weight=weight, caption_bias=bias,
                           logit_scale=self.scale(), caption_dropped=dropped)

    def caption_rows(self, hidden: torch.Tensor, targets: torch.Tensor):
        """The decoder states [N, D] and targets [N] the caption head scores, with N fixed by the batch shape (no
        host sync, no boolean indexing), and the number of targets left out (None when none can be).

        model.caption_tokens = 0: every position, N = B x L (those without a target weigh 0: the loss is exact).
        caption_tokens = n > 0 and B x n < B x L: the positions with a target moved to the front in order (a
        stable sort on the device) and the first N = B x n kept; a batch with more targets than N loses the excess,
        which is returned as a 0-d tensor (the loss logs it as caption_dropped)."""
        h = hidden.reshape(-1, hidden.shape[-1])
        t = targets.reshape(-1)
        n = self.cfg.caption_tokens * hidden.shape[0]
        if not 0 < n < t.numel():
            return h, t, None
        keep = t != -100
        order = torch.argsort((~keep).to(torch.uint8), stable=True)[:n]
        return h.index_select(0, order), t.index_select(0, order), (keep.sum() - n).clamp(min=0)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Normalised text embeddings [N, embed_dim] of free-text prompts (zero-shot classification)."""
        device = self.logit_scale.device
        batch = {k: v.to(device) for k, v in self.tokenizer(prompts).items()}
        return self.encode_text(**batch)["text"]
