"""The three MELP losses on the model's output (model/melp.py ModelOutput), each through its melp_kernels op.

total = global_weight * global + caption_weight * caption + local_weight * local   (1.0 / 2.0 / 0.2)
- global (rhythm level): CLIP InfoNCE with OpenCLIP's local_loss=True, gather_with_grad=True semantics across
  ranks (melp_kernels.infonce);
- local (beat level): attention-weighted beat-sentence loss on this rank's batch (melp_kernels.local_loss);
- caption (token level): next-token cross-entropy of the decoder's hidden states projected by the caption head's
  weight (and bias), targets of -100 ignored (melp_kernels.caption_head).
The run-wide switch loss.impl ("reference" | "fused" | "auto") reaches each op as melp_kernels/_dispatch.py says
(op_impl): "reference" and "auto" as they are, "fused" the fastest path each op has (the Triton kernels of infonce
and the local loss, the chunked caption head, which has no kernels). The ops check the impl they get (resolve_impl).
"""

from __future__ import annotations

import torch
from torch import nn

from melp_kernels._dispatch import op_impl
from melp_kernels.caption_head import caption_head_loss
from melp_kernels.infonce import infonce_loss
from melp_kernels.local_loss import local_alignment_loss

from .config import LossConfig
from .model.melp import ModelOutput


def caption_term(out: ModelOutput, impl: str) -> torch.Tensor:
    """The caption loss of the model's output: the caption head (out.caption_weight, out.caption_bias) on the
    target positions' states, through melp_kernels.caption_head with `impl` (reference | chunked | auto)."""
    return caption_head_loss(out.caption_hidden, out.caption_weight, out.caption_targets, out.caption_bias,
                             impl=impl)


class MELPLoss(nn.Module):
    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        self.impl = {op: op_impl(op, cfg.impl) for op in ("infonce", "local loss", "caption head")}

    def forward(self, out: ModelOutput, batch: dict | None = None) -> dict[str, torch.Tensor]:
        c, impl = self.cfg, self.impl
        g = infonce_loss(out.rhythm, out.text.to(out.rhythm.dtype), out.logit_scale, impl=impl["infonce"])
        loc = local_alignment_loss(out.beats, out.beat_mask, out.sents, out.sent_mask, t1=c.t1, t2=c.t2, t3=c.t3,
                                   impl=impl["local loss"])
        cap = caption_term(out, impl["caption head"])
        total = c.global_weight * g + c.caption_weight * cap + c.local_weight * loc
        res = {"loss": total, "global": g.detach(), "local": loc.detach(), "caption": cap.detach()}
        if out.caption_dropped is not None:  # model.caption_tokens > 0: targets beyond the head's rows
            res["caption_dropped"] = out.caption_dropped.detach()
        return res
