"""Global InfoNCE (CLIP) loss without the B x B logits: "fused" (Triton), "chunked" (PyTorch) and "reference".

Semantics are those of OpenCLIP's ``ClipLoss(local_loss=True, gather_with_grad=True)``: with E, T this rank's
[b, D] ECG and text embeddings, E_g, T_g the embeddings of all ranks gathered with gradient ([N, D], N = W b),
s the logit scale (already exponentiated) and o = rank * b,

    loss_r = 0.5 * ( CE(s E T_g^T, o + arange(b)) + CE(s T E_g^T, o + arange(b)) )

Single process (or world size 1): E_g = E, T_g = T and the loss is the usual symmetric CLIP loss.

Distributed semantics (every impl): the embeddings are gathered with ``torch.distributed.nn.functional.all_gather``
whose backward sums the gradients of all ranks into each rank's slice (reduce-scatter). Let L be the 1-process loss
on the global batch (the concatenation of the ranks' batches, in rank order). Then

* mean over ranks of loss_r == L (each loss_r averages over b rows, L over N = W b rows);
* the gradient arriving at rank r's local embeddings is d(sum_r' loss_r')/dE_r = W * dL/dE[rank r rows];
  parameters upstream are therefore W * dL/dtheta on each rank, and DDP / DeepSpeed, which *average* gradients
  over ranks, end with exactly dL/dtheta;
* the gradient of logit_scale on rank r is d loss_r / ds (s is replicated, not gathered); averaged over ranks it is
  dL/ds.

The three implementations give the same loss and gradients (to rounding):

* "reference": materialises the [b, N] logits in fp32 and calls ``F.cross_entropy``; O(b N) memory.
* "chunked":   one autograd Function in PyTorch; the forward computes per-row log-sum-exp vectors in blocks of
               ``chunk_size`` rows, the backward recomputes the blocks; peak extra memory O(chunk_size * N).
* "fused":     the same Function with Triton kernels: tiles of E T^T with an online log-sum-exp by rows and by
               columns and the positives in the forward; the backward recomputes the tiles. Inputs fp32, bf16 or
               fp16, accumulation in fp32 (fp32 dots in IEEE precision, not TF32). Any B and D (D above the
               largest D block is handled by a loop over D chunks). Runs compiled on CUDA; on a CPU tensor it runs
               under the Triton interpreter when TRITON_INTERPRET=1 (set before this module is imported),
               otherwise it falls back to "chunked".
* "auto":      "fused" on CUDA, "chunked" elsewhere.

The loss is returned in fp32 whatever the input dtype; gradients come back in the inputs' dtypes.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch
import torch.nn.functional as F

try:  # triton is optional: "chunked" and "reference" need only torch
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ["infonce_loss", "IMPLS", "HAS_TRITON"]

IMPLS = ("reference", "chunked", "fused", "auto")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _dot_tile(X, Y, offs_m, offs_n, mask_m, mask_n, D, stride_x, stride_y,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  UPCAST: tl.constexpr, PRECISION: tl.constexpr):
        """Raw dot products X[offs_m] . Y[offs_n] over all of D, in fp32, as a [BLOCK_M, BLOCK_N] tile."""
        z = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < D
            x = tl.load(X + offs_m[:, None] * stride_x + offs_d[None, :],
                        mask=mask_m[:, None] & mask_d[None, :], other=0.0)
            y = tl.load(Y + offs_n[:, None] * stride_y + offs_d[None, :],
                        mask=mask_n[:, None] & mask_d[None, :], other=0.0)
            if UPCAST:
                x = x.to(tl.float32)
                y = y.to(tl.float32)
            z += tl.dot(x, tl.trans(y), input_precision=PRECISION)
        return z

    @triton.jit
    def _infonce_lse_kernel(X, Y, PARTNER, S, LSE, POS, M, N, D, stride_x, stride_y, stride_p,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                            SINGLE_D: tl.constexpr, WITH_POS: tl.constexpr, UPCAST: tl.constexpr,
                            PRECISION: tl.constexpr):
        """LSE[i] = log sum_j exp(s X_i . Y_j) (online, by tiles of Y); POS[i] = X_i . PARTNER_i."""
        pid = tl.program_id(0)
        offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        s2 = tl.load(S).to(tl.float32) * 1.4426950408889634  # base-2 exponent scale
        offs_d0 = tl.arange(0, BLOCK_D)
        if SINGLE_D:
            mask_d0 = offs_d0 < D
            x = tl.load(X + offs_m[:, None] * stride_x + offs_d0[None, :],
                        mask=mask_m[:, None] & mask_d0[None, :], other=0.0)
            if UPCAST:
                x = x.to(tl.float32)
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            if SINGLE_D:
                y = tl.load(Y + offs_n[:, None] * stride_y + offs_d0[None, :],
                            mask=mask_n[:, None] & mask_d0[None, :], other=0.0)
                if UPCAST:
                    y = y.to(tl.float32)
                z = tl.dot(x, tl.trans(y), input_precision=PRECISION)
            else:
                z = _dot_tile(X, Y, offs_m, offs_n, mask_m, mask_n, D, stride_x, stride_y,
                              BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, PRECISION)
            z = tl.where(mask_n[None, :], z * s2, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(z, axis=1))
            l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(z - m_new[:, None]), axis=1)
            m_i = m_new
        lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
        tl.store(LSE + offs_m, lse, mask=mask_m)
        if WITH_POS:
            pos = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                msk = mask_m[:, None] & (offs_d[None, :] < D)
                a = tl.load(X + offs_m[:, None] * stride_x + offs_d[None, :], mask=msk, other=0.0)
                b = tl.load(PARTNER + offs_m[:, None] * stride_p + offs_d[None, :], mask=msk, other=0.0)
                pos += tl.sum(a.to(tl.float32) * b.to(tl.float32), axis=1)
            tl.store(POS + offs_m, pos, mask=mask_m)

    @triton.jit
    def _infonce_grad_kernel(X, Y, PARTNER, S, LSE_R, LSE_C, DX, DS, M, N, D, pos_coef,
                             stride_x, stride_y, stride_p, stride_dx,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                             SINGLE_D: tl.constexpr, HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr,
                             HAS_PARTNER: tl.constexpr, COMPUTE_DS: tl.constexpr, UPCAST: tl.constexpr,
                             PRECISION: tl.constexpr):
        """DX[i, dchunk] = sum_j P_ij Y[j, dchunk] - pos_coef * PARTNER[i, dchunk], recomputing the tiles, with
        P_ij = [HAS_ROW] exp(s X_i.Y_j - LSE_R[i]) + [HAS_COL] exp(s X_i.Y_j - LSE_C[j]);
        DS[i] = sum_j P_ij X_i.Y_j (the logit-scale partial sums), written by the first D-chunk program."""
        pid_m = tl.program_id(0)
        pid_d = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        offs_do = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # this program's output D chunk
        mask_do = offs_do < D
        s2 = tl.load(S).to(tl.float32) * 1.4426950408889634
        if SINGLE_D:
            x = tl.load(X + offs_m[:, None] * stride_x + offs_do[None, :],
                        mask=mask_m[:, None] & mask_do[None, :], other=0.0)
            if UPCAST:
                x = x.to(tl.float32)
        if HAS_ROW:
            lr2 = tl.load(LSE_R + offs_m, mask=mask_m, other=0.0) * 1.4426950408889634
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        ds_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            y = tl.load(Y + offs_n[:, None] * stride_y + offs_do[None, :],
                        mask=mask_n[:, None] & mask_do[None, :], other=0.0)
            if UPCAST:
                y = y.to(tl.float32)
            if SINGLE_D:
                z = tl.dot(x, tl.trans(y), input_precision=PRECISION)
            else:
                z = _dot_tile(X, Y, offs_m, offs_n, mask_m, mask_n, D, stride_x, stride_y,
                              BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, PRECISION)
            zs = z * s2
            p = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            if HAS_ROW:
                p += tl.exp2(zs - lr2[:, None])
            if HAS_COL:
                lc2 = tl.load(LSE_C + offs_n, mask=mask_n, other=0.0) * 1.4426950408889634
                p += tl.exp2(zs - lc2[None, :])
            p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)
            if COMPUTE_DS:
                ds_acc += tl.sum(p * z, axis=1)
            acc += tl.dot(p.to(y.dtype), y, input_precision=PRECISION)
        if HAS_PARTNER:
            q = tl.load(PARTNER + offs_m[:, None] * stride_p + offs_do[None, :],
                        mask=mask_m[:, None] & mask_do[None, :], other=0.0)
            acc -= pos_coef * q.to(tl.float32)
        tl.store(DX + offs_m[:, None] * stride_dx + offs_do[None, :], acc, mask=mask_m[:, None] & mask_do[None, :])
        if COMPUTE_DS:
            tl.store(DS + offs_m, ds_acc, mask=mask_m & (pid_d == 0))

    def _cuda_configs():
        cfgs = []
        for bm, bn, w, st in [(64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3),
                              (64, 64, 4, 2), (128, 32, 4, 3), (32, 64, 4, 3)]:
            cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st))
        return cfgs

    # configs that do not fit (shared memory) are dropped by the autotuner; one set per shape and variant
    _lse_tuned = triton.autotune(configs=_cuda_configs(), key=["M", "N", "D", "WITH_POS"])(_infonce_lse_kernel)
    _grad_tuned = triton.autotune(configs=_cuda_configs(),
                                  key=["M", "N", "D", "HAS_ROW", "HAS_COL", "COMPUTE_DS"])(_infonce_grad_kernel)

    try:
        from triton.runtime.interpreter import InterpretedFunction as _InterpretedFunction

        KERNELS_INTERPRETED = isinstance(_infonce_lse_kernel, _InterpretedFunction)
    except Exception:  # pragma: no cover
        KERNELS_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
else:  # pragma: no cover
    KERNELS_INTERPRETED = False

# Block sizes used under the interpreter (one config; autotune cannot run there). A small D block makes the tests
# exercise the loop over D chunks with D = 130.
INTERP_BLOCK_M = 32
INTERP_BLOCK_N = 32
INTERP_MAX_BLOCK_D = 64
CUDA_MAX_BLOCK_D = 256


CUDA_CHUNK_BLOCK_D = 128  # D chunk when D > CUDA_MAX_BLOCK_D (fits fp32 tiles in H100 shared memory)


def _block_d(D: int, interpreted: bool):
    """(BLOCK_D, SINGLE_D): one padded D block when it is small enough, else a loop over D chunks."""
    cap = INTERP_MAX_BLOCK_D if interpreted else CUDA_MAX_BLOCK_D
    bd = max(16, triton.next_power_of_2(D))
    if bd <= cap:
        return bd, True
    return (INTERP_MAX_BLOCK_D if interpreted else CUDA_CHUNK_BLOCK_D), False


def _kernel_flags(x: torch.Tensor, interpreted: bool):
    upcast = interpreted or x.dtype == torch.float32  # interpreter: triton issue 11584 (bf16 tl.dot)
    precision = "ieee"  # fp32 parity needs IEEE fp32 dots (TF32 would cost ~1e-3 relative)
    return upcast, precision


def _tri_lse(x, y, partner, s, with_pos):
    M, D = x.shape
    N = y.shape[0]
    interp = not x.is_cuda or KERNELS_INTERPRETED
    lse = torch.empty(M, device=x.device, dtype=torch.float32)
    pos = torch.empty(M, device=x.device, dtype=torch.float32) if with_pos else lse
    bd, single = _block_d(D, interp)
    upcast, prec = _kernel_flags(x, interp)
    args = (x, y, partner if partner is not None else x, s, lse, pos, M, N, D,
            x.stride(0), y.stride(0), (partner if partner is not None else x).stride(0))
    meta = dict(BLOCK_D=bd, SINGLE_D=single, WITH_POS=with_pos, UPCAST=upcast, PRECISION=prec)
    if interp:
        grid = (triton.cdiv(M, INTERP_BLOCK_M),)
        _infonce_lse_kernel[grid](*args, BLOCK_M=INTERP_BLOCK_M, BLOCK_N=INTERP_BLOCK_N, **meta)
    else:
        _lse_tuned[lambda m: (triton.cdiv(M, m["BLOCK_M"]),)](*args, **meta)
    return lse, (pos if with_pos else None)


def _tri_grad(x, y, partner, s, lse_row, lse_col, pos_coef, compute_ds):
    M, D = x.shape
    N = y.shape[0]
    interp = not x.is_cuda or KERNELS_INTERPRETED
    dx = torch.empty(M, D, device=x.device, dtype=torch.float32)
    ds = torch.empty(M, device=x.device, dtype=torch.float32) if compute_ds else dx
    bd, single = _block_d(D, interp)
    upcast, prec = _kernel_flags(x, interp)
    dummy = lse_row if lse_row is not None else lse_col
    p = partner if partner is not None else x
    args = (x, y, p, s, lse_row if lse_row is not None else dummy, lse_col if lse_col is not None else dummy,
            dx, ds, M, N, D, float(pos_coef), x.stride(0), y.stride(0), p.stride(0), dx.stride(0))
    meta = dict(BLOCK_D=bd, SINGLE_D=single, HAS_ROW=lse_row is not None, HAS_COL=lse_col is not None,
                HAS_PARTNER=partner is not None and pos_coef != 0, COMPUTE_DS=compute_ds, UPCAST=upcast,
                PRECISION=prec)
    nd = triton.cdiv(D, bd)
    if interp:
        grid = (triton.cdiv(M, INTERP_BLOCK_M), nd)
        _infonce_grad_kernel[grid](*args, BLOCK_M=INTERP_BLOCK_M, BLOCK_N=INTERP_BLOCK_N, **meta)
    else:
        _grad_tuned[lambda m: (triton.cdiv(M, m["BLOCK_M"]), nd)](*args, **meta)
    return dx, (ds if compute_ds else None)


# ----------------------------------------------------------------------------------------------------------------
# PyTorch blocks ("chunked"): row blocks of chunk_size, every [chunk, N] block used for all it can give
# ----------------------------------------------------------------------------------------------------------------
def _torch_lse(x, y, s, chunk, with_cols):
    """Row LSE of s X Y^T by row blocks; with_cols: also the column LSE (= row LSE of s Y X^T), merged online."""
    yf = y.float()
    sf = s.float().reshape(())
    rows = torch.empty(x.shape[0], device=x.device, dtype=torch.float32)
    cols = torch.full((y.shape[0],), float("-inf"), device=x.device, dtype=torch.float32) if with_cols else None
    for i in range(0, x.shape[0], chunk):
        a = (x[i:i + chunk].float() @ yf.T).mul_(sf)  # [c, N] scaled logits
        rows[i:i + chunk] = torch.logsumexp(a, dim=1)
        if with_cols:
            cols = torch.logaddexp(cols, torch.logsumexp(a, dim=0))
        del a
    return rows, cols


def _torch_block_grads(x, y, s, lse_row, lse_col, need_dx, need_dy, need_ds, chunk):
    """With P = exp(s X Y^T - lse_row[:, None]) [+ exp(s X Y^T - lse_col[None, :])], by row blocks:
    dx = P Y, dy = P^T X, ds = sum(P * X Y^T); one recomputed [c, N] block serves all three."""
    xf, yf = x.float(), y.float()
    sf = s.float().reshape(())
    dx = torch.empty(x.shape, device=x.device, dtype=torch.float32) if need_dx else None
    dy = torch.zeros(y.shape, device=x.device, dtype=torch.float32) if need_dy else None
    ds = torch.zeros((), device=x.device, dtype=torch.float32)
    for i in range(0, x.shape[0], chunk):
        xc = xf[i:i + chunk]
        z = xc @ yf.T  # raw dots [c, N]
        a = z * sf
        p = None
        if lse_row is not None:
            p = (a - lse_row[i:i + chunk, None]).exp_()
        if lse_col is not None:
            q = a.sub_(lse_col[None, :]).exp_()
            p = q if p is None else p.add_(q)
        del a
        if need_ds:
            ds += torch.dot(p.reshape(-1), z.reshape(-1))  # no [c, N] temporary
        del z
        if need_dx:
            dx[i:i + chunk] = p @ yf
        if need_dy:
            dy.addmm_(p.T, xc)
        del p
    return dx, dy, ds


# ----------------------------------------------------------------------------------------------------------------
# The autograd Function shared by "fused" and "chunked"
# ----------------------------------------------------------------------------------------------------------------
class _InfoNCE(torch.autograd.Function):
    """Inputs: e, t [b, D]; e_all, t_all [N, D] or None (single process: the square case); s (1 element);
    backend "triton" | "torch". Saves only the inputs and the LSE / positive vectors (O(b + N)).

    With c = grad * 0.5 / b, P1 = softmax_rows(s E T_all^T), P2 = softmax_rows(s T E_all^T), Z the raw dots:
      dE = c s (P1 T_all - T)        dT_all = c s P1^T E        (term 1; T = T_all[o:o+b])
      dT = c s (P2 E_all - E)        dE_all = c s P2^T T        (term 2)
      ds = c (sum P1 * Z1 + sum P2 * Z2 - 2 sum_i E_i . T_i)
    The identity parts of dT_all and dE_all (-E and -T at the rank's own rows) are added to dE and dT instead
    (-2T, -2E): the all_gather backward sums the rank's slice into the local gradient, so the total is the same.
    Square case (E_all = E, T_all = T): dE = c s ((P1 + P2^T) T - 2T), dT = c s ((P1 + P2^T)^T E - 2E).
    """

    @staticmethod
    def forward(ctx, e, t, e_all, t_all, s, backend, chunk):
        square = e_all is None
        if backend == "triton":
            lse1, pos = _tri_lse(e, t if square else t_all, t, s, True)
            lse2, _ = _tri_lse(t, e if square else e_all, None, s, False)
        else:
            pos = (e.float() * t.float()).sum(1)
            if square:  # one pass: rows of s E T^T and its columns (= rows of s T E^T)
                lse1, lse2 = _torch_lse(e, t, s, chunk, True)
            else:
                lse1, _ = _torch_lse(e, t_all, s, chunk, False)
                lse2, _ = _torch_lse(t, e_all, s, chunk, False)
        sf = s.float().reshape(())
        loss = 0.5 * (lse1.mean() + lse2.mean()) - sf * pos.mean()
        ctx.save_for_backward(e, t, e_all, t_all, s, lse1, lse2, pos)
        ctx.backend, ctx.chunk, ctx.square = backend, chunk, square
        return loss

    @staticmethod
    def backward(ctx, g):
        e, t, e_all, t_all, s, lse1, lse2, pos = ctx.saved_tensors
        need = ctx.needs_input_grad
        b = e.shape[0]
        sf = s.float().reshape(())
        c = g.float() * (0.5 / b)  # d loss / d(sum of the 2b CE terms)
        cs = c * sf
        need_ds = need[4]
        with torch.autocast(device_type=e.device.type, enabled=False):
            if ctx.backend == "triton":
                dE, dT, dE_all, dT_all, ds_sum = _tri_backward(e, t, e_all, t_all, s, lse1, lse2, need, ctx.square)
            else:
                dE, dT, dE_all, dT_all, ds_sum = _torch_backward(e, t, e_all, t_all, s, lse1, lse2, need,
                                                                 ctx.square, ctx.chunk)

        def fin(d, like):
            return None if d is None else (d * cs).to(like.dtype)

        ds = (c * (ds_sum - 2.0 * pos.sum())).to(s.dtype).reshape(s.shape) if need_ds else None
        return (fin(dE, e), fin(dT, t), fin(dE_all, e_all), fin(dT_all, t_all), ds, None, None)


def _torch_backward(e, t, e_all, t_all, s, lse1, lse2, need, square, chunk):
    """Unscaled gradients (to be multiplied by c s) and sum P * Z, by row blocks."""
    need_ds = need[4]
    ef, tf = e.float(), t.float()
    if square:
        dE, dT, ds = _torch_block_grads(e, t, s, lse1, lse2, need[0], need[1], need_ds, chunk)
        if dE is not None:
            dE.sub_(tf, alpha=2.0)
        if dT is not None:
            dT.sub_(ef, alpha=2.0)
        return dE, dT, None, None, ds
    dE, dT_all, ds1 = _torch_block_grads(e, t_all, s, lse1, None, need[0], need[3], need_ds, chunk)
    dT, dE_all, ds2 = _torch_block_grads(t, e_all, s, lse2, None, need[1], need[2], need_ds, chunk)
    if dE is not None:
        dE.sub_(tf, alpha=2.0)
    if dT is not None:
        dT.sub_(ef, alpha=2.0)
    return dE, dT, dE_all, dT_all, ds1 + ds2


def _tri_backward(e, t, e_all, t_all, s, lse1, lse2, need, square):
    """The same with the Triton gradient kernel (one output matrix per launch, rows recomputed per launch)."""
    need_ds = need[4]
    dE = dT = dE_all = dT_all = None
    ds = torch.zeros((), device=e.device, dtype=torch.float32)
    if square:
        # dE_i = sum_j (P1_ij + P2_ji) T_j - 2 T_i; dT likewise with the roles swapped
        if need[0] or need_ds:
            dx, dsp = _tri_grad(e, t, t, s, lse1, lse2, 2.0, need_ds)
            dE = dx if need[0] else None
            if need_ds:
                ds = dsp.sum()
        if need[1]:
            dT, _ = _tri_grad(t, e, e, s, lse2, lse1, 2.0, False)
        return dE, dT, None, None, ds
    if need[0] or need_ds:
        dx, dsp = _tri_grad(e, t_all, t, s, lse1, None, 2.0, need_ds)
        dE = dx if need[0] else None
        if need_ds:
            ds = ds + dsp.sum()
    if need[1] or need_ds:
        dx, dsp = _tri_grad(t, e_all, e, s, lse2, None, 2.0, need_ds)
        dT = dx if need[1] else None
        if need_ds:
            ds = ds + dsp.sum()
    if need[2]:
        dE_all, _ = _tri_grad(e_all, t, None, s, None, lse2, 0.0, False)
    if need[3]:
        dT_all, _ = _tri_grad(t_all, e, None, s, None, lse1, 0.0, False)
    return dE, dT, dE_all, dT_all, ds


# ----------------------------------------------------------------------------------------------------------------
# Reference and entry point
# ----------------------------------------------------------------------------------------------------------------
def _reference(e, t, e_all, t_all, s, offset):
    if e_all is None:
        e_all, t_all = e, t
    sf = s.float().reshape(())
    # (s E) T^T as OpenCLIP writes it: scaling the [b, D] side keeps a single [b, N] tensor per direction
    logits_e = (sf * e.float()) @ t_all.float().T
    logits_t = (sf * t.float()) @ e_all.float().T
    labels = torch.arange(e.shape[0], device=e.device) + offset
    return 0.5 * (F.cross_entropy(logits_e, labels) + F.cross_entropy(logits_t, labels))


def _check(ecg_emb, text_emb, logit_scale):
    if not isinstance(ecg_emb, torch.Tensor) or not isinstance(text_emb, torch.Tensor):
        raise ValueError("infonce_loss: ecg_emb and text_emb must be torch.Tensors")
    if ecg_emb.dim() != 2 or text_emb.dim() != 2:
        raise ValueError(f"infonce_loss: embeddings must be [B, D]; got ecg {tuple(ecg_emb.shape)}, "
                         f"text {tuple(text_emb.shape)}")
    if ecg_emb.shape != text_emb.shape:
        raise ValueError(f"infonce_loss: ecg_emb {tuple(ecg_emb.shape)} and text_emb {tuple(text_emb.shape)} "
                         "must have the same shape")
    if ecg_emb.shape[0] == 0 or ecg_emb.shape[1] == 0:
        raise ValueError(f"infonce_loss: empty embeddings {tuple(ecg_emb.shape)}")
    if ecg_emb.dtype != text_emb.dtype:
        raise ValueError(f"infonce_loss: dtype mismatch, ecg {ecg_emb.dtype} vs text {text_emb.dtype}")
    if ecg_emb.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"infonce_loss: dtype {ecg_emb.dtype} not supported; use float32, bfloat16 or float16")
    if ecg_emb.device != text_emb.device:
        raise ValueError(f"infonce_loss: device mismatch, ecg on {ecg_emb.device}, text on {text_emb.device}")
    if not isinstance(logit_scale, torch.Tensor):
        logit_scale = torch.tensor(float(logit_scale), device=ecg_emb.device, dtype=torch.float32)
    if logit_scale.numel() != 1:
        raise ValueError(f"infonce_loss: logit_scale must have one element; got shape {tuple(logit_scale.shape)}")
    if logit_scale.device != ecg_emb.device:
        raise ValueError(f"infonce_loss: logit_scale on {logit_scale.device}, embeddings on {ecg_emb.device}")
    if not logit_scale.is_floating_point():
        logit_scale = logit_scale.float()
    return logit_scale


def _resolve_impl(impl: str, device: torch.device) -> str:
    if impl not in IMPLS:
        raise ValueError(f"infonce_loss: unknown impl {impl!r}; choose one of {', '.join(IMPLS)}")
    if impl == "auto":
        impl = "fused" if device.type == "cuda" and HAS_TRITON else "chunked"
    if impl == "fused":
        if not HAS_TRITON:
            warnings.warn("infonce_loss: triton is not installed; impl 'fused' falls back to 'chunked'")
            return "chunked"
        if device.type == "cuda":
            return "fused"
        if os.environ.get("TRITON_INTERPRET") == "1" and KERNELS_INTERPRETED:
            return "fused"
        return "chunked"  # CPU without the interpreter: same semantics, PyTorch blocks
    return impl


def infonce_loss(ecg_emb, text_emb, logit_scale, impl: str = "reference", *, group=None,
                 chunk_size: int = 1024) -> torch.Tensor:
    """This rank's symmetric InfoNCE loss, 0.5 * (CE(s E T_g^T, labels) + CE(s T E_g^T, labels)).

    ecg_emb, text_emb: [B_local, D] fp32 / bf16 / fp16 on the same device (normalisation is not assumed).
    logit_scale: s itself (already exponentiated), a one-element tensor that may require grad (or a float).
    impl: "reference" | "chunked" | "fused" | "auto" (see the module docstring).
    group: the process group to gather over when torch.distributed is initialised (default: the world);
    embeddings are gathered with gradient, labels = arange(B_local) + rank * B_local; every rank must have the same
    B_local. Mean over ranks of the returned losses = the 1-process loss on the global batch; embedding gradients
    are W times the global-loss gradients, so averaging over ranks (DDP) gives the 1-process gradients.
    chunk_size: rows per block for "chunked" (peak extra memory about 5 * chunk_size * B_global * 4 bytes;
    605 MiB measured at B = 32768 with the default 1024).
    Returns a 0-dim fp32 tensor.
    """
    s = _check(ecg_emb, text_emb, logit_scale)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"infonce_loss: chunk_size must be a positive int; got {chunk_size!r}")
    impl = _resolve_impl(impl, ecg_emb.device)
    e = ecg_emb if ecg_emb.stride(-1) == 1 else ecg_emb.contiguous()
    t = text_emb if text_emb.stride(-1) == 1 else text_emb.contiguous()

    e_all = t_all = None
    offset = 0
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        grp = group if group is not None else dist.group.WORLD
        world = dist.get_world_size(grp)
        if world > 1:
            from torch.distributed.nn.functional import all_gather

            rank = dist.get_rank(grp)
            offset = rank * e.shape[0]
            e_all = torch.cat(all_gather(e, grp), dim=0)
            t_all = torch.cat(all_gather(t, grp), dim=0)

    # fp32 math whatever autocast says (an autocast bf16 matmul would round the logits themselves)
    with torch.autocast(device_type=e.device.type, enabled=False):
        if impl == "reference":
            return _reference(e, t, e_all, t_all, s, offset)
        sc = s.reshape(1) if s.dim() != 1 else s
        sc = sc if sc.is_contiguous() else sc.contiguous()
        return _InfoNCE.apply(e, t, e_all, t_all, sc, "triton" if impl == "fused" else "torch", chunk_size)


def load_open_clip_loss():
    """OpenCLIP's open_clip/loss.py loaded on its own (the peer of tests and benchmarks; None if absent).

    The package __init__ imports torchvision, which would pull a CUDA build of torch on CPU machines."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "loss.py")
    if not os.path.exists(path):
        return None
    mspec = importlib.util.spec_from_file_location("_open_clip_loss_only", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod
