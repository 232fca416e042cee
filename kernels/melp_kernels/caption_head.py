"""Caption head: the vocabulary projection and the next-token cross-entropy in one chunked operation.

    loss = sum_n [valid_n] * (logsumexp_v(z_nv) - z_n,t_n) / max(#valid, 1),    z = x W^T (+ b)

x [N, D] decoder states, W [V, D] the projection (tied to the word embeddings or not), b [V] or None, targets [N]
with -100 = ignored. With no valid target the loss is 0 and every gradient is 0.

impl:
- "reference": the plain path, F.linear then F.cross_entropy on fp32 logits: holds the [N, V] logits, their fp32
  copy, the saved log-softmax and, in backward, the [N, V] gradient.
- "chunked" (= "fused" = "auto"): Liger-Kernel's fused linear cross-entropy in PyTorch ops. Token chunks of C rows:
  z_c = x_c W^T in the input dtype (tensor cores under bf16), upcast to fp32, logsumexp, the loss, and right away
  the gradient g_c = (softmax(z_c) - onehot(t_c)) * valid / #valid, which gives dx_c = g_c W and
  dW += g_c^T x_c (fp32 accumulator), db += sum g_c. Only one [C, V] chunk exists at a time; the gradients are
  computed in the forward and the backward only scales them (in place) by the incoming gradient, so a graph through
  this head can be backpropagated once (a second backward raises). C defaults to Liger's
  choice (the chunk's logits about as large as x: C ~ N / ceil(V / D)), a power of two clamped to [64, 1024].
  No host synchronisation (the valid count stays on the device).

Why no Triton kernel: the work is three GEMMs of N x D x V (the logits, dx, dW), which cuBLAS runs at tensor-core
rate; the rest is a few elementwise passes over one [C, V] chunk (31 MB fp32 at C = 256, V = 30522: it fits the
H100 / H200 L2). A fused epilogue would save those passes, about as much time as one GEMM at the paper shape, but
the memory saving, the point of this op, is already there. Liger's own kernel fuses only the elementwise part.

Under autocast (CUDA bf16 training) the inputs are cast to the autocast dtype first, as F.linear would be.
Precision: fp32 inputs are computed in fp32; bf16 / fp16 inputs get low-precision matmuls with fp32 logits,
softmax, loss and dW accumulation, like the plain path's `logits.float()`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
IMPLS = ("reference", "chunked", "fused", "auto")

__all__ = ["IMPLS", "IGNORE_INDEX", "caption_head_loss", "caption_head_reference", "default_chunk_size"]


def default_chunk_size(n: int, vocab: int, dim: int) -> int:
    """Liger's chunk: logits of one chunk about the size of the states, a power of two in [64, 1024]."""
    inc = max(1, -(-vocab // max(dim, 1)))
    c = max(1, -(-n // inc))
    return int(min(1024, max(64, 1 << (c - 1).bit_length())))


def caption_head_reference(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """The plain path: materialised logits, fp32 cross-entropy, mean over the valid targets (0 when none)."""
    logits = F.linear(x, weight, bias)
    n = (targets != IGNORE_INDEX).sum().clamp_min(1)
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum") / n


_MM_OUT_DTYPE = {"ok": None}  # whether torch.mm(..., out_dtype=fp32) works for low-precision CUDA operands


def _accumulate_wgrad(acc: torch.Tensor, g: torch.Tensor, x: torch.Tensor):
    """acc (fp32) += g^T x, with tensor-core operands when g and x are low precision."""
    if g.dtype == torch.float32:
        acc.addmm_(g.t(), x)
        return
    if acc.is_cuda and _MM_OUT_DTYPE["ok"] is not False:
        try:  # torch >= 2.8 on CUDA: low-precision operands, fp32 output, no [V, D] low-precision temporary
            acc.add_(torch.mm(g.t(), x, out_dtype=torch.float32))
            _MM_OUT_DTYPE["ok"] = True
            return
        except (TypeError, RuntimeError, NotImplementedError):
            _MM_OUT_DTYPE["ok"] = False
    acc.add_(torch.mm(g.t(), x))


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, targets, chunk, grads):
        N, _ = x.shape
        V = weight.shape[0]
        need_x, need_w = grads and ctx.needs_input_grad[0], grads and ctx.needs_input_grad[1]
        need_b = grads and bias is not None and ctx.needs_input_grad[2]
        valid = targets != IGNORE_INDEX
        count = valid.sum().clamp_min(1).to(torch.float32)
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        gx = torch.empty_like(x) if need_x else None
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if need_w else None
        gb = torch.zeros(V, dtype=torch.float32, device=x.device) if need_b else None
        for s in range(0, N, chunk):
            xc, tc, vc = x[s:s + chunk], targets[s:s + chunk], valid[s:s + chunk]
            z = F.linear(xc, weight, bias)
            z = z.float() if z.dtype != torch.float32 else z  # fresh fp32 buffer either way: free to overwrite
            lse = torch.logsumexp(z, dim=1)
            safe = torch.where(vc, tc, torch.zeros_like(tc))[:, None]
            w = vc.to(torch.float32) / count
            loss += ((lse - z.gather(1, safe).squeeze(1)) * w).sum()
            if not (need_x or need_w or need_b):
                continue
            z.sub_(lse[:, None]).exp_()  # softmax, in place
            z.scatter_add_(1, safe, -vc.to(torch.float32)[:, None])  # minus the one-hot at valid rows
            z.mul_(w[:, None])  # 1 / #valid on valid rows, 0 on ignored ones
            if need_b:
                gb += z.sum(0)
            g = z.to(x.dtype)
            if need_x:
                torch.mm(g, weight, out=gx[s:s + chunk])
            if need_w:
                _accumulate_wgrad(gw, g, xc)
        ctx.save_for_backward(gx, gw, gb)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        # the stored gradients are scaled in place (no second [V, D] buffer), so they serve one backward only
        if getattr(ctx, "used", False):
            raise RuntimeError("caption_head_loss: a second backward through the fused caption head is not "
                               "supported (its gradients are computed in the forward and scaled in place)")
        ctx.used = True
        gx, gw, gb = ctx.saved_tensors
        dx_t, dw_t, db_t = ctx.dtypes
        dx = gx.mul_(grad_out.to(gx.dtype)) if gx is not None else None
        dw = gw.mul_(grad_out).to(dw_t) if gw is not None else None
        db = gb.mul_(grad_out).to(db_t) if gb is not None else None
        return dx, dw, db, None, None, None


def _check(x, weight, targets, bias):
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"caption_head_loss: states [N, D] and weight [V, D] expected, got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if targets.shape != (x.shape[0],):
        raise ValueError(f"caption_head_loss: targets [N={x.shape[0]}] expected, got {tuple(targets.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"caption_head_loss: bias [V={weight.shape[0]}] expected, got {tuple(bias.shape)}")


def caption_head_loss(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None,
                      impl: str = "reference", chunk_size: int | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy of the states x [..., D] projected by weight [V, D] (+ bias) against
    targets [...] (-100 ignored; 0 when no target is valid). impl: see the module docstring."""
    if impl not in IMPLS:
        raise ValueError(f"caption_head_loss: unknown impl {impl!r}; choose one of {', '.join(IMPLS)}")
    x = x.reshape(-1, x.shape[-1])
    targets = targets.reshape(-1)
    _check(x, weight, targets, bias)
    if impl == "reference":
        return caption_head_reference(x, weight, targets, bias)
    dev = x.device.type
    if torch.is_autocast_enabled(dev):  # what F.linear would compute in
        dt = torch.get_autocast_dtype(dev)
        x, weight = x.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
    if x.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise ValueError(f"caption_head_loss: states, weight and bias must share a dtype, got {x.dtype}, "
                         f"{weight.dtype}" + (f", {bias.dtype}" if bias is not None else ""))
    chunk = chunk_size or default_chunk_size(x.shape[0], weight.shape[0], weight.shape[1])
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    with torch.autocast(dev, enabled=False):
        return _FusedLinearCE.apply(x.contiguous(), weight.contiguous(), bias, targets, int(chunk), grads)
