"""Attention blocks on torch's scaled_dot_product_attention (flash / memory-efficient backends on CUDA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiheadAttention(nn.Module):
    """Self- or cross-attention. `key_padding_mask` is bool [B, Lk], True = keep."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, kv_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, context=None, key_padding_mask=None, causal: bool = False):
        context = x if context is None else context
        b, lq, d = x.shape
        q = self.q(x).view(b, lq, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = None
        if key_padding_mask is not None:
            mask = key_padding_mask[:, None, None, :]
            if causal:
                mask = mask & torch.ones(lq, k.shape[2], dtype=torch.bool, device=x.device).tril()
                causal = False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )
        return self.out(y.transpose(1, 2).reshape(b, lq, d))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Post-LN transformer layer (as wav2vec 2.0 / the reference ECG encoder)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0):
        super().__init__()
        self.attn = MultiheadAttention(dim, heads, dropout)
        self.ffn = FeedForward(dim, ffn, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, key_padding_mask=None):
        x = self.norm1(x + self.drop(self.attn(x, key_padding_mask=key_padding_mask)))
        return self.norm2(x + self.drop(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Pre-LN causal self-attention + cross-attention + FFN (the captioning decoder of CoCa)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads, dropout)
        self.cross_attn = MultiheadAttention(dim, heads, dropout)
        self.ffn = FeedForward(dim, ffn, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context, key_padding_mask=None):
        x = x + self.self_attn(self.norm1(x), key_padding_mask=key_padding_mask, causal=True)
        x = x + self.cross_attn(self.norm2(x), context=context)
        return x + self.ffn(self.norm3(x))


class AttentionalPooler(nn.Module):
    """Learned queries cross-attending to a sequence (CoCa's attentional pooler), followed by LayerNorm."""

    def __init__(self, dim: int, context_dim: int, n_queries: int, heads: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_queries, dim) * dim**-0.5)
        self.attn = MultiheadAttention(dim, heads, kv_dim=context_dim)
        self.norm_k = nn.LayerNorm(context_dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype)
        return self.norm(self.attn(q, context=self.norm_k(x)))
