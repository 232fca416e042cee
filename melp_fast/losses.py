"""The three MELP losses and the one switch between reference and fused implementations.

total = global_weight * global + caption_weight * caption + local_weight * local   (1.0 / 2.0 / 0.2)
- global (rhythm level): CLIP InfoNCE with OpenCLIP's local_loss=True, gather_with_grad=True semantics across
  ranks (melp_kernels.infonce);
- local (beat level): attention-weighted beat-sentence loss on this rank's batch (melp_kernels.local_loss);
- caption (token level): next-token cross-entropy, targets of -100 ignored (melp_kernels.caption_head: the plain
  logits for "reference", the chunked fused head that never holds [tokens, vocabulary] logits otherwise).
impl (passed to every op; the rule is melp_kernels/_dispatch.py's):
- "reference": literal PyTorch formulas (materialised logits, per-sample loop);
- "auto" (the default): the Triton kernels on CUDA, their chunked / batched PyTorch paths elsewhere;
- "fused": the Triton kernels, or an error that says why they cannot run here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from melp_kernels.infonce import infonce_loss
from melp_kernels.local_loss import local_alignment_loss

from .config import LOSS_IMPLS, LossConfig

IMPLS = LOSS_IMPLS


def caption_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the target tokens (labels == -100 are ignored); 0 when there is none.

    logits [..., V] and labels [...] (the model passes only the positions that have a target)."""
    labels = labels.reshape(-1)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels, ignore_index=-100, reduction="sum")
    return ce / (labels != -100).sum().clamp(min=1)  # no host sync: the count stays on the device


def caption_term(out: dict, impl: str) -> torch.Tensor:
    """The caption loss from the model's outputs: its head on the target positions' states, through
    melp_kernels.caption_head (impl "reference": plain logits; otherwise the chunked fused head, no logits held).
    Outputs that carry "caption_logits" instead are scored by caption_loss."""
    if "caption_logits" in out:
        return caption_loss(out["caption_logits"], out["caption_targets"])
    return out["caption_head"](out["caption_hidden"], out["caption_targets"],
                               impl="reference" if impl == "reference" else "fused")


class MELPLoss(nn.Module):
    def __init__(self, cfg: LossConfig):
        super().__init__()
        if cfg.impl not in IMPLS:
            raise ValueError(f"loss impl must be one of {IMPLS}, not {cfg.impl!r}")
        self.cfg = cfg

    def forward(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        c = self.cfg
        g = infonce_loss(out["rhythm"], out["text"].to(out["rhythm"].dtype), out["logit_scale"], impl=c.impl)
        loc = local_alignment_loss(out["beats"], out["beat_mask"], out["sents"], out["sent_mask"],
                                   t1=c.t1, t2=c.t2, t3=c.t3, impl=c.impl)
        cap = caption_term(out, c.impl)
        total = c.global_weight * g + c.caption_weight * cap + c.local_weight * loc
        res = {"loss": total, "global": g.detach(), "local": loc.detach(), "caption": cap.detach()}
        if "caption_dropped" in out:  # model.caption_tokens > 0: targets beyond the head's rows (model/melp.py)
            res["caption_dropped"] = out["caption_dropped"].detach()
        return res
