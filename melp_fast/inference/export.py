"""Export of trained weights (safetensors + config + text-encoder config/tokenizer) and loading them back.

    model = melp_fast.load_model("runs/tiny/model")
    z = model.encode_ecg(ecg, beat_spans, beat_mask, beat_seconds)["rhythm"];  t = model.encode_prompts(["atrial fibrillation"])
    (the four as inference.generate.ecg_batch makes them from a raw record)
Loading never touches the network: the text encoder is rebuilt from the saved config, then all weights load.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..config import Config
from ..errors import UserError
from ..model.melp import MELP


def full_state_dict(engine_or_model) -> dict | None:
    """The whole state dict of a model or a DeepSpeed engine (ZeRO-3: gathered on rank 0, None elsewhere)."""
    if getattr(engine_or_model, "zero_optimization_partition_weights", lambda: False)():
        return engine_or_model._zero3_consolidated_16bit_state_dict()
    return getattr(engine_or_model, "module", engine_or_model).state_dict()


def export_model(engine_or_model, cfg: Config, path, rank: int = 0) -> Path:
    """Write path/config.json, path/model.safetensors (fp32) and path/text_encoder/ atomically (rank 0)."""
    from safetensors.torch import save_file

    path = Path(path)
    module = getattr(engine_or_model, "module", engine_or_model)
    state = full_state_dict(engine_or_model)  # every rank takes part in the ZeRO-3 gather
    if rank != 0:
        return path
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors = {k: v.detach().float().cpu().clone() for k, v in state.items()}  # clone: tied weights share storage
    save_file(tensors, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(cfg.to_json())
    module.text.backbone.config.save_pretrained(tmp / "text_encoder")
    module.text.tokenizer.save_pretrained(tmp / "text_encoder")
    if path.exists():
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    return path


def load_model(path, device: str | torch.device = "cpu") -> MELP:
    """Load an exported model for encode_ecg / encode_text / generation (eval mode)."""
    from safetensors.torch import load_file

    from ..model.text import load_backbone, load_tokenizer

    path = Path(path)
    cfg = _checked_config(path)
    text_dir = str(path / "text_encoder")
    from ..checks import text_dir_bounds

    text_dir_bounds(text_dir)  # e.g. 100,000 layers: refused before any model is built
    try:
        model = MELP(cfg.model, text_backbone=load_backbone(text_dir, weights=False), tokenizer=load_tokenizer(text_dir))
    except Exception as e:  # noqa: BLE001 - a damaged text_encoder/ or a config the model cannot be built from
        raise UserError(f"{path}: cannot build the model from config.json and text_encoder/: "
                        f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
    try:
        weights = load_file(str(path / "model.safetensors"))
    except Exception as e:  # noqa: BLE001 - truncated or not a safetensors file
        raise UserError(f"{path / 'model.safetensors'} is damaged (truncated or not a safetensors file): "
                        f"{' '.join(str(e).split())[:200]}; export the model again") from None
    from ..checks import check_tensors, expected_tensors

    check_tensors(weights, expected_tensors(model), path / "model.safetensors")  # a swapped dtype is refused
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shapes that do not match config.json
        raise UserError(f"{path}: model.safetensors does not match config.json: "
                        f"{' '.join(str(e).split())[:300]}") from None
    if missing or unexpected:
        raise UserError(f"{path}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.config = cfg
    return model.to(device).eval()


def _checked_config(path: Path) -> Config:
    """config.json of an exported model, every section and field known and of its default's type (a tampered or
    mistyped file is refused with one line)."""
    import dataclasses

    if not path.is_dir():
        raise UserError(f"--model {path} is not a folder (an exported model: config.json, model.safetensors, "
                        f"text_encoder/)")
    for need in ("model.safetensors", "config.json"):
        if not (path / need).is_file():
            raise UserError(f"{path} holds no exported model ({need} missing); point to the model/ folder of a "
                            f"finished training run")
    try:
        d = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path / 'config.json'} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"{path / 'config.json'} must hold an object with sections {list(Config().to_dict())}")
    default = Config()
    sections = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(d) - sections)
    if unknown:
        raise UserError(f"{path / 'config.json'}: unknown section(s) {unknown}; valid: {sorted(sections)}")
    for name in sections:
        sec = d.get(name, {})
        if not isinstance(sec, dict):
            raise UserError(f"{path / 'config.json'}: section {name!r} must be an object")
        for key, value in sec.items():
            if not hasattr(getattr(default, name), key):
                continue  # a field of another version: ignored (Config.from_dict)
            want = getattr(getattr(default, name), key)
            ok = (isinstance(value, bool) == isinstance(want, bool)) and (
                isinstance(value, type(want)) or (isinstance(want, float) and isinstance(value, int))
                or (isinstance(want, tuple) and isinstance(value, list)))
            if not ok:
                raise UserError(f"{path / 'config.json'}: {name}.{key} = {value!r} should be a "
                                f"{type(want).__name__} (like {want!r})")
    return Config.from_dict(d)


def untrained_model(cfg: Config, seed: int) -> MELP:
    """The model exactly as training starts it (same seed), for before/after comparisons."""
    torch.manual_seed(seed)
    return MELP(cfg.model).eval()
