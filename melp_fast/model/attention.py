"""Attention blocks on torch's scaled_dot_product_attention (flash / memory-efficient backends on CUDA).

With `set_backend("flash_attn")` and the optional flash-attn package installed, unmasked attention on CUDA in
bf16/fp16 goes through flash_attn_func instead (masked attention, CPU and fp32 stay on SDPA, whose CUDA flash
backend is the default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_BACKEND = "sdpa"


def set_backend(name: str):
    """"sdpa" (default) or "flash_attn" (needs the flash-attn package)."""
    global _BACKEND
    if name not in ("sdpa", "flash_attn"):
        raise ValueError(f"attention backend must be 'sdpa' or 'flash_attn', not {name!r}")
    if name == "flash_attn":
        try:
            import flash_attn  # noqa: F401
        except ImportError as e:
            raise ImportError("attention backend 'flash_attn' needs the flash-attn package (pip install flash-attn)") from e
    _BACKEND = name


def attention(q, k, v, mask=None, dropout_p: float = 0.0, causal: bool = False):
    """q, k, v [B, H, L, Dh]; mask bool broadcastable to [B, H, Lq, Lk] (True = attend)."""
    if _BACKEND == "flash_attn" and mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from flash_attn import flash_attn_func

        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p, causal=causal)
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)


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
        y = attention(q, k, v, mask, self.dropout if self.training else 0.0, causal)
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
