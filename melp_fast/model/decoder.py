"""Token level: the captioning decoder (CoCa's multimodal text decoder)."""

from __future__ import annotations

import torch
from torch import nn

from melp_kernels.caption_head import caption_head_loss

from .attention import DecoderLayer


class CaptionHead(nn.Linear):
    """The vocabulary projection. head(x) gives logits (generation: the last position only);
    head(x, targets, impl) gives the caption loss without logits when impl is not "reference"
    (melp_kernels.caption_head). Called as a module either way, so ZeRO-3 gathers the (possibly tied) weight."""

    def forward(self, x, targets=None, impl: str = "reference"):
        if targets is None:
            return super().forward(x)
        return caption_head_loss(x, self.weight, targets, self.bias, impl=impl)


class CaptionDecoder(nn.Module):
    """Causal self-attention over the text encoder's token states + cross-attention to the pooled ECG tokens.

    The output projection is initialised (normal, std 0.02): the reference creates it with torch.empty and
    never initialises it.
    """

    def __init__(self, dim: int, heads: int, layers: int, vocab_size: int, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, 4 * dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = CaptionHead(dim, vocab_size, bias=False)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, text_states, ecg_context, attention_mask=None, project: bool = True):
        """Vocabulary logits [B, L, V] (or the normalised hidden states [B, L, D] with project=False)."""
        x = text_states
        keep = attention_mask.bool() if attention_mask is not None else None
        for layer in self.layers:
            x = layer(x, ecg_context, key_padding_mask=keep)
        x = self.norm(x)
        return self.head(x) if project else x
