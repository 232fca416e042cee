"""ECG encoder (wav2vec 2.0 style, docs/SPEC.md "Model"): conv stack -> tokens of 32 ms -> post-LN transformer."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..data.constants import FS
from .attention import EncoderLayer
from .beat_timing import BeatTimingEmbedding


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class ConvFeatureExtractor(nn.Module):
    """n_layers Conv1d (kernel 2, stride 2, no bias), GroupNorm on the first, GELU: 12 x 5000 -> C x 312."""

    def __init__(self, in_ch: int, channels: int, n_layers: int):
        super().__init__()
        layers = []
        for i in range(n_layers):
            layers.append(nn.Conv1d(in_ch if i == 0 else channels, channels, kernel_size=2, stride=2, bias=False))
            if i == 0:
                layers.append(nn.GroupNorm(channels, channels))
            layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class ConvPositionalEncoding(nn.Module):
    """Grouped convolution over the token sequence, weight-normalised, GELU (added to the tokens)."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel_size=kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=(4.0 / (kernel * dim)) ** 0.5)
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.even = kernel % 2 == 0
        self.act = nn.GELU()

    def forward(self, x):  # x [B, T, D]
        y = self.conv(x.transpose(1, 2))
        if self.even:
            y = y[..., :-1]
        return self.act(y).transpose(1, 2)


class ECGEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.features = ConvFeatureExtractor(cfg.n_leads, cfg.conv_channels, cfg.conv_layers)
        self.feature_norm = nn.LayerNorm(cfg.conv_channels)
        self.proj = nn.Linear(cfg.conv_channels, cfg.width)
        self.drop = nn.Dropout(cfg.dropout)
        self.pos = ConvPositionalEncoding(cfg.width, cfg.pos_conv_kernel, cfg.pos_conv_groups)
        self.pos_norm = nn.LayerNorm(cfg.width)
        # model.beat_timing: each beat's timing (model/beat_timing.py) added to its tokens before the transformer
        self.timing = BeatTimingEmbedding(cfg.width, cfg.token_stride / FS) if cfg.beat_timing else None
        self.layers = nn.ModuleList(EncoderLayer(cfg.width, cfg.heads, cfg.ffn, cfg.dropout) for _ in range(cfg.layers))

    @property
    def stride(self) -> int:
        return self.cfg.token_stride

    def n_tokens(self, n_samples: int) -> int:
        for _ in range(self.cfg.conv_layers):
            n_samples //= 2
        return n_samples

    def forward(self, ecg: torch.Tensor, beat_spans=None, beat_mask=None, beat_seconds=None) -> torch.Tensor:
        """ecg [B, leads, samples] -> tokens [B, T, width]. With model.beat_timing, each beat's timing embedding is
        added to its tokens (beat_spans [B, K, 2] in token units, beat_mask [B, K]); without spans nothing is added,
        as for a record with no detected beat. With model.beat_timing_samples the timing is read from beat_seconds
        [B, K] (each span's duration in seconds from the spans in samples, as data.dataset and
        inference.generate.ecg_batch give it); a caller without it gets the durations of the token spans (to 32 ms)."""
        x = self.features(ecg.to(self.proj.weight.dtype))
        if self.training and self.cfg.conv_grad_scale != 1.0:
            x = _GradScale.apply(x, self.cfg.conv_grad_scale)
        x = self.drop(self.proj(self.feature_norm(x.transpose(1, 2))))
        x = self.pos_norm(x + self.pos(x))
        if self.timing is not None and beat_spans is not None and beat_mask is not None:
            durations = beat_seconds if self.cfg.beat_timing_samples else None
            x = x + self.timing(beat_spans, beat_mask, x.shape[1], x.dtype, durations)
        for layer in self.layers:
            x = layer(x)
        return x
