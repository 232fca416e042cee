"""Caption head: the vocabulary projection and the next-token cross-entropy in one chunked operation.

    loss = sum_n [valid_n] * (logsumexp_v(z_nv) - z_n,t_n) / max(#valid, 1),    z = x W^T (+ b)

x [N, D] decoder states, W [V, D] the projection (tied to the word embeddings or not), b [V] or None, targets [N]
with -100 = ignored. With no valid target the loss is 0 and every gradient is 0.

impl:
- "reference": the plain path, F.linear then F.cross_entropy on fp32 logits: holds the [N, V] logits, their fp32
  copy, the saved log-softmax and, in backward, the [N, V] gradient.
- "chunked" (= "auto" on every device): Liger-Kernel's fused linear cross-entropy in PyTorch ops. Token chunks of C
  rows: z_c = x_c W^T in fp32 (16-bit operands on tensor cores with an fp32 result on CUDA), lp = log_softmax(z_c),
  the target's lp gathered for the loss, and right away g_c = (softmax(z_c) - onehot(t_c)) * valid * P (in place),
  which gives dx_c = g_c W (into an fp32 buffer) and dW += g_c^T x_c (fp32 accumulator), db += sum g_c. Only one
  [C, V] chunk exists at a time (two for a moment: z and lp); the gradients are computed in the forward and the
  backward only scales them (in place) by upstream / (#valid * P) in fp32 and casts each once to its dtype, so a
  graph through this head can be backpropagated once (a second backward raises). P = 2^15 for fp16 (else 1): fp16's
  normal range starts at 6e-5, below which softmax probabilities over a 30k vocabulary, and all the more (softmax -
  onehot) / #valid, would round to subnormals or 0; the loss scale (DeepSpeed starts at 2^16) never meets fp16
  before the last cast. 8 dispatched ops per chunk for fp32 (was 17), 10 for 16-bit on CUDA (was 21), 11 on the CPU
  (its 16-bit GEMM operands are upcast to fp32). C defaults to Liger's choice (the chunk's logits about as large as
  x: C ~ N / ceil(V / D)), a power of two clamped to [64, 1024]. No host synchronisation (the valid count stays on
  the device).

No impl "fused": the op has no Triton kernels, and asking for them is an error (melp_kernels/_dispatch.py; the
run-wide loss.impl "fused" gives this op "chunked"). Why no Triton kernel: the work is three GEMMs of N x D x V (the
logits, dx, dW), which cuBLAS runs at tensor-core rate; the rest is a few elementwise passes over one [C, V] chunk
(31 MB fp32 at C = 256, V = 30522: it fits the H100 / H200 L2). A fused epilogue would save those passes, about as
much time as one GEMM at the paper shape, but the memory saving, the point of this op, is already there. Liger's own
kernel fuses only the elementwise part.

Under autocast (CUDA bf16 training) the inputs are cast to the autocast dtype first, as F.linear would be.
Precision: fp32 inputs are computed in fp32; bf16 / fp16 inputs get low-precision GEMM operands with fp32 logits,
softmax, loss, dx and dW accumulation; the chunk gradient g is rounded once to the input dtype as a GEMM operand
(scaled by P, not by 1 / #valid), the gradients once more at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import OPS, resolve_impl

IGNORE_INDEX = -100
IMPLS = OPS["caption head"].choices  # reference, chunked, auto (melp_kernels/_dispatch.py)

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
FP16_PRESCALE = 2.0 ** 15  # fp16 chunk gradients are held as 2^15 (softmax - onehot): |g| <= 2^15 < 65504


def _mm32_ok(t: torch.Tensor) -> bool:
    """Whether torch.mm(a, b, out_dtype=torch.float32) runs for 16-bit operands on t's device (CUDA, torch >= 2.8):
    16-bit operands on tensor cores, an fp32 result, no 16-bit rounding of the product. Probed once."""
    if not t.is_cuda or t.dtype == torch.float32:
        return False
    if _MM_OUT_DTYPE["ok"] is None:
        try:
            a = torch.ones((16, 16), dtype=t.dtype, device=t.device)
            torch.mm(a, a, out_dtype=torch.float32)
            _MM_OUT_DTYPE["ok"] = True
        except (TypeError, RuntimeError, NotImplementedError):
            _MM_OUT_DTYPE["ok"] = False
    return bool(_MM_OUT_DTYPE["ok"])


class _FusedLinearCE(torch.autograd.Function):
    """Per chunk: z = x_c W^T (+ b) in fp32, lp = log_softmax(z), the target's lp gathered for the loss, then
    g = (exp(lp) - onehot) * valid * P in place, held in the input dtype for the two gradient GEMMs (dx_c = g W into
    an fp32 buffer, dW += g^T x_c into an fp32 accumulator). P = 2^15 for fp16 (fp16's normal range starts at
    6e-5: unscaled softmax probabilities of a 30k vocabulary, and all the more (softmax - onehot) / #valid, would
    round to subnormals or zero), 1 otherwise. 1 / #valid, 1 / P and the upstream gradient (a DeepSpeed loss scale
    up to 2^16 or more) are applied in the backward, in fp32, to the fp32 buffers, then each gradient is cast once
    to its dtype: nothing is rounded to 16 bits before the scale, and the scale itself is never cast to fp16."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, chunk, grads):
        N, _ = x.shape
        V = weight.shape[0]
        need_x, need_w = grads and ctx.needs_input_grad[0], grads and ctx.needs_input_grad[1]
        need_b = grads and bias is not None and ctx.needs_input_grad[2]
        need_g = need_x or need_w or need_b
        low = x.dtype != torch.float32
        mm32 = _mm32_ok(x)  # CUDA: 16-bit operands, fp32 results
        # off CUDA (or old torch) 16-bit operands are upcast to fp32 for the GEMMs: the same rounding of g and W,
        # fp32 products, as the out_dtype GEMMs compute
        wf = weight.float() if low and not mm32 else weight
        bf = bias.float() if bias is not None and bias.dtype != torch.float32 else bias
        prescale = FP16_PRESCALE if x.dtype == torch.float16 else 1.0
        valid = targets != IGNORE_INDEX
        count = valid.sum().clamp_min(1)
        wk = valid.to(torch.float32)[:, None]  # [N, 1]: 1 on valid rows (times P once the grads need it)
        safe = torch.where(valid, targets, 0)[:, None]
        lpt = torch.empty((N, 1), dtype=torch.float32, device=x.device)  # log p(target) per row
        gx = torch.empty(x.shape, dtype=torch.float32, device=x.device) if need_x else None
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if need_w else None
        gb = torch.zeros(V, dtype=torch.float32, device=x.device) if need_b else None
        if need_g and prescale != 1.0:
            wk = wk.mul_(prescale)
        negwk = wk.neg() if need_g else None
        for s in range(0, N, chunk):
            xc = x[s:s + chunk]
            if mm32:
                z = torch.mm(xc, weight.t(), out_dtype=torch.float32)
                if bf is not None:
                    z.add_(bf)
            else:
                xc = xc.float() if low else xc
                z = F.linear(xc, wf, bf)
            lp = torch.log_softmax(z, dim=1)
            del z
            torch.gather(lp, 1, safe[s:s + chunk], out=lpt[s:s + chunk])
            if not need_g:
                continue
            g = lp.exp_()  # softmax, in place
            g.mul_(wk[s:s + chunk])  # P on valid rows, 0 on ignored ones
            g.scatter_add_(1, safe[s:s + chunk], negwk[s:s + chunk])  # minus P * onehot at valid rows
            if need_b:
                gb.add_(g.sum(0))
            gl = g.to(x.dtype) if low else g  # the 16-bit GEMM operand, unscaled by 1 / #valid
            if mm32:
                if need_x:
                    torch.mm(gl, weight, out_dtype=torch.float32, out=gx[s:s + chunk])
                if need_w:
                    gw.add_(torch.mm(gl.t(), xc, out_dtype=torch.float32))
            else:
                gf = gl.float() if low else gl
                if need_x:
                    torch.mm(gf, wf, out=gx[s:s + chunk])
                if need_w:
                    gw.addmm_(gf.t(), xc)
        # loss = -sum_n valid_n log p_n(t_n) / #valid
        loss = torch.mm(lpt.t(), wk).view(()).div_(-prescale if need_g else -1.0).div_(count)
        ctx.save_for_backward(gx, gw, gb, count)
        ctx.prescale = prescale
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        # the stored gradients are scaled in place (no second [V, D] buffer), so they serve one backward only
        if getattr(ctx, "used", False):
            raise RuntimeError("caption_head_loss: a second backward through the chunked caption head is not "
                               "supported (its gradients are computed in the forward and scaled in place)")
        ctx.used = True
        gx, gw, gb, count = ctx.saved_tensors
        dx_t, dw_t, db_t = ctx.dtypes
        # one fp32 factor: upstream gradient (any loss scale) / (#valid * P); each gradient cast once at the end
        scale = grad_out.float() / (count * ctx.prescale)
        dx = gx.mul_(scale).to(dx_t) if gx is not None else None
        dw = gw.mul_(scale).to(dw_t) if gw is not None else None
        db = gb.mul_(scale).to(db_t) if gb is not None else None
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
    impl = resolve_impl("caption head", impl, x.device)
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
