"""Gradient accumulation that keeps every negative: the embedding cache (train.accum_mode = "cache").

With train.accum_steps = N, one optimiser step takes N micro-batches of train.batch_size per process. DeepSpeed's
own accumulation ("plain") runs each micro-batch's losses on its own, so InfoNCE and the beat-sentence loss see
one micro-batch as negatives. The cache gives them the whole batch, as OpenCLIP's --accum-freq and GradCache do:

1. first pass, no autograd graph: every micro-batch's forward, its RNG state saved before it; the embeddings the
   contrastive losses read are kept (per process: B x D ECG and B x D text embeddings, B x K x D beat and
   B x S x D sentence embeddings, B = N x micro batch; twice that with their gradients), and each micro-batch's
   caption loss;
2. the contrastive losses over the whole batch from the cached embeddings (across processes the InfoNCE gathers
   every rank's: N x micro x W rows), and their gradients with respect to the cached embeddings and the logit
   scale; every loss of the step is known here, before any backward (the non-finite rule skips the whole step);
3. second pass, per micro-batch: its RNG state restored (dropout draws the same masks, so the forward reproduces
   the cached embeddings exactly), its forward again, and backward of the surrogate
   sum(embeddings x cached gradients) + caption weight x (its targets / the batch's targets) x its caption loss,
   whose parameter gradient is that micro-batch's share of the big batch's. Summed over the micro-batches
   (DeepSpeed's accumulation, without its 1/N), the gradient is the one-big-batch gradient.

The caption loss is per micro-batch, weighted by its share of the batch's target tokens: the batch's mean over
all its target tokens, as one big batch gives it. Cost: a second forward per micro-batch (about one third more
compute than one big batch; benchmarks/throughput.py measures it), the cache above, and activation memory of one
micro-batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from melp_kernels.infonce import infonce_loss
from melp_kernels.local_loss import local_alignment_loss

from ..losses import caption_term

EMBEDDINGS = ("rhythm", "text", "beats", "sents")  # the model outputs the contrastive losses read


def rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def pad_beats(xs: list[torch.Tensor], k: int, value=0) -> torch.Tensor:
    """[b_i, K_i, ...] tensors padded on dim 1 to k slots and concatenated (masked slots take no part)."""
    out = []
    for x in xs:
        pad = [0, 0] * (x.ndim - 2) + [0, k - x.shape[1]]
        out.append(F.pad(x, pad, value=value))
    return torch.cat(out)


def cache_bytes(batch: int, beats: int, sentences: int, dim: int, esize: int = 4) -> int:
    """Bytes of the cache of one step on one process: embeddings and their gradients."""
    return 2 * esize * batch * dim * (2 + beats + sentences)


class EmbeddingCache:
    """The cache mode of Trainer.accum_step for MELP (``criterion``: losses.MELPLoss). ``check_replay``: record,
    per micro-batch, the largest difference between the second pass's embeddings and the cached ones
    (``replay_diffs``; 0 when the RNG replay reproduces them)."""

    def __init__(self, criterion, check_replay: bool = False):
        self.criterion, self.check_replay, self.replay_diffs = criterion, check_replay, []

    def first_pass(self, engine, batches: list[dict]) -> tuple[dict, dict]:
        c, impl = self.criterion.cfg, self.criterion.impl
        device = engine.device
        rng, cached, caps, counts, dropped = [], [], [], [], []
        with torch.no_grad():
            for batch in batches:
                rng.append(rng_state(device))
                out = engine(batch)
                cached.append({k: getattr(out, k).detach() for k in (*EMBEDDINGS, "beat_mask", "sent_mask", "logit_scale")})
                caps.append(caption_term(out, impl["caption head"]).float())
                counts.append((out.caption_targets != -100).sum().float())
                if out.caption_dropped is not None:
                    dropped.append(out.caption_dropped.float())
        k = max(x["beats"].shape[1] for x in cached)
        leaves = {"rhythm": torch.cat([x["rhythm"] for x in cached]), "text": torch.cat([x["text"] for x in cached]),
                  "beats": pad_beats([x["beats"] for x in cached], k),
                  "sents": torch.cat([x["sents"] for x in cached])}
        leaves = {name: t.requires_grad_() for name, t in leaves.items()}
        scale = cached[0]["logit_scale"].clone().requires_grad_()
        beat_mask = pad_beats([x["beat_mask"] for x in cached], k, value=False)
        sent_mask = torch.cat([x["sent_mask"] for x in cached])
        with torch.enable_grad():
            g = infonce_loss(leaves["rhythm"], leaves["text"].to(leaves["rhythm"].dtype), scale, impl=impl["infonce"])
            loc = local_alignment_loss(leaves["beats"], beat_mask, leaves["sents"], sent_mask,
                                       t1=c.t1, t2=c.t2, t3=c.t3, impl=impl["local loss"])
            contrastive = c.global_weight * g + c.local_weight * loc
            grads = torch.autograd.grad(contrastive, [*leaves.values(), scale], allow_unused=True)
        grads = [torch.zeros_like(t) if d is None else d for d, t in zip(grads, [*leaves.values(), scale])]
        total = torch.stack(counts).sum().clamp(min=1)
        weights = [n / total for n in counts]
        cap = sum(w * x for w, x in zip(weights, caps))
        # every micro-batch's rows of each cached gradient (beats: its own slots)
        split, start = [], 0
        for x in cached:
            b, kb = x["rhythm"].shape[0], x["beats"].shape[1]
            d = dict(zip(EMBEDDINGS, grads[:4]))
            split.append({"rhythm": d["rhythm"][start:start + b], "text": d["text"][start:start + b],
                          "beats": d["beats"][start:start + b, :kb], "sents": d["sents"][start:start + b]})
            start += b
        losses = {"loss": contrastive.detach() + c.caption_weight * cap, "global": g.detach(), "local": loc.detach(),
                  "caption": cap.detach(), "logit_scale": scale.detach()}
        if dropped:
            losses["caption_dropped"] = torch.stack(dropped).sum()
        state = {"batches": batches, "rng": rng, "grads": split, "scale_grad": grads[4], "weights": weights,
                 "cached": cached if self.check_replay else None}
        if self.check_replay:
            self.replay_diffs = []
        return losses, state

    def second_pass(self, engine, state: dict, i: int) -> torch.Tensor:
        """Micro-batch i's forward again (its RNG state replayed) and its surrogate loss, for engine.backward."""
        c = self.criterion.cfg
        set_rng_state(state["rng"][i], engine.device)
        out = engine(state["batches"][i])
        grads = state["grads"][i]
        sur = sum((getattr(out, k).float() * grads[k].float()).sum() for k in EMBEDDINGS)
        if i == 0:  # the logit scale is one parameter of the whole batch: its gradient enters once
            sur = sur + (out.logit_scale.float() * state["scale_grad"].float()).sum()
        sur = sur + c.caption_weight * state["weights"][i] * caption_term(out, self.criterion.impl["caption head"]).float()
        if self.check_replay:
            was = state["cached"][i]
            self.replay_diffs.append(max(float((getattr(out, k).detach() - was[k]).abs().max()) for k in EMBEDDINGS))
        return sur
