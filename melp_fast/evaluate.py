"""Evaluation: zero-shot classification by prompt similarity, per-class and mean AUROC.

Zero-shot: every class has one text prompt (class name with synonyms); its normalised text embedding is scored
against the normalised rhythm (global) ECG embedding by cosine; AUROC per class on the multi-hot labels (no
softmax across classes: the tasks are multi-label), and their mean.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data.dataset import Collate, ECGTextDataset
from .data.store import Store


@torch.no_grad()
def embed_store(model, store: Store, batch_size: int = 64, desc: str = "embed", progress: bool = True) -> dict:
    """Rhythm embeddings [N, d], linear-probe features [N, d] and labels [N, C] of every record of a store."""
    model.eval()
    device = model.logit_scale.device
    loader = DataLoader(ECGTextDataset(store), batch_size=batch_size, shuffle=False, collate_fn=Collate(model.tokenizer))
    rhythm, feats = [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, mininterval=2.0):
        out = model.encode_ecg(batch["ecg"].to(device), batch["beat_spans"].to(device), batch["beat_mask"].to(device))
        rhythm.append(out["rhythm"].float().cpu())
        feats.append(out["features"].float().cpu())
    return {"rhythm": torch.cat(rhythm).numpy(), "features": torch.cat(feats).numpy(),
            "labels": None if store.labels is None else np.asarray(store.labels)}


def per_class_auroc(scores: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    """AUROC of each class column (NaN where a class has only one label value in the set)."""
    out = {}
    for c, name in enumerate(classes):
        y = labels[:, c]
        out[name] = float(roc_auc_score(y, scores[:, c])) if 0 < y.sum() < len(y) else float("nan")
    return out


@torch.no_grad()
def zero_shot(model, store: Store, prompts: dict[str, str], batch_size: int = 64, progress: bool = True,
              embedded: dict | None = None) -> dict:
    classes = store.classes
    missing = [c for c in classes if c not in prompts]
    if missing:
        raise ValueError(f"no prompt for classes {missing}")
    emb = embedded or embed_store(model, store, batch_size, progress=progress)
    text = model.encode_prompts([prompts[c] for c in classes]).float().cpu().numpy()
    scores = emb["rhythm"] @ text.T
    auc = per_class_auroc(scores, emb["labels"], classes)
    return {"per_class": auc, "mean": float(np.nanmean(list(auc.values())))}


def comparison_table(results: dict[str, dict], names: dict[str, str] | None = None) -> str:
    """Markdown table: one row per class, one column per model (e.g. untrained / trained), mean last."""
    cols = list(results)
    classes = list(next(iter(results.values()))["per_class"])
    lines = ["| class | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for c in classes:
        label = f"{c} ({names[c]})" if names and c in names else c
        lines.append(f"| {label} | " + " | ".join(f"{results[m]['per_class'][c]:.3f}" for m in cols) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{results[m]['mean']:.3f}**" for m in cols) + " |")
    return "\n".join(lines)


def save_json(obj, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2))
