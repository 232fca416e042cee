"""Export of trained weights (safetensors + config + text-encoder config/tokenizer) and loading them back.

    model = melp_fast.load_model("runs/tiny/model")
    z = model.encode_ecg(ecg, beat_spans, beat_mask)["rhythm"];  t = model.encode_prompts(["atrial fibrillation"])
Loading never touches the network: the text encoder is rebuilt from the saved config, then all weights load.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .config import Config
from .model.melp import MELP


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

    from .model.text import load_backbone, load_tokenizer

    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} holds no exported model (model.safetensors missing)")
    cfg = Config.from_dict(json.loads((path / "config.json").read_text()))
    text_dir = str(path / "text_encoder")
    model = MELP(cfg.model, text_backbone=load_backbone(text_dir, weights=False), tokenizer=load_tokenizer(text_dir))
    missing, unexpected = model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.config = cfg
    return model.to(device).eval()


def untrained_model(cfg: Config, seed: int) -> MELP:
    """The model exactly as training starts it (same seed), for before/after comparisons."""
    torch.manual_seed(seed)
    return MELP(cfg.model).eval()
