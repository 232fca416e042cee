"""Global InfoNCE (CLIP) loss without the B x B logits: "fused" (Triton), "chunked" (PyTorch) and "reference".

Semantics are those of OpenCLIP's ``ClipLoss(local_loss=True, gather_with_grad=True)``: with E, T this rank's
[b, D] ECG and text embeddings, E_g, T_g the embeddings of all ranks gathered with gradient ([N, D], N = W b),
s the logit scale (already exponentiated) and o = rank * b,

    loss_r = 0.5 * ( CE(s E T_g^T, o + arange(b)) + CE(s T E_g^T, o + arange(b)) )

Single process (or world size 1): E_g = E, T_g = T and the loss is the usual symmetric CLIP loss.

Distributed semantics (every impl): those of embeddings gathered with ``torch.distributed.nn.functional.all_gather``,
whose backward sums the gradients of all ranks into each rank's slice (reduce-scatter). "reference" does exactly
that; "chunked" and "fused" gather without autograd and compute, in each rank's backward, the gradient that sum
would hand its rows (from every rank's row statistics, one all_gather of 2 b + 1 numbers per direction; see
_InfoNCE), so no [N, D] gradient is reduce-scattered. Let L be the 1-process loss on the global batch (the
concatenation of the ranks' batches, in rank order). Then

* mean over ranks of loss_r == L (each loss_r averages over b rows, L over N = W b rows);
* the gradient arriving at rank r's local embeddings is d(sum_r' loss_r')/dE_r = W * dL/dE[rank r rows];
  parameters upstream are therefore W * dL/dtheta on each rank, and DDP / DeepSpeed, which *average* gradients
  over ranks, end with exactly dL/dtheta;
* the gradient of logit_scale on rank r is d loss_r / ds (s is replicated, not gathered); averaged over ranks it is
  dL/ds.

The implementations give the same loss and gradients (to rounding):

* "reference": materialises the [b, N] logits in fp32 and calls ``F.cross_entropy``; O(b N) memory.
* "chunked":   one autograd Function in PyTorch; the forward computes per-row log-sum-exp vectors in blocks of
               ``chunk_size`` rows, the backward recomputes the blocks; peak extra memory O(chunk_size * N).
* "fused":     the same Function with Triton kernels (tensor cores: bf16 / fp16 operands as given, fp32 operands
               in the `precision` asked for; fp32 accumulation and statistics). Work per fwd+bwd on one process,
               in units U = 2 B^2 D (one B x B x D matmul), for D <= 256:
                 forward  1 U: one pass over the tiles of Z = E T^T gives the row AND column statistics and the
                          positives. One exp2 per logit: p = 2^(zs - tile row max) feeds the row sums, and scaled
                          by 2^(row max - tile max) the column sums of the 128-row block, stored per row block and
                          reduced afterwards (a column that underflows takes an exact per-column path). Grid: row
                          blocks x column splits (about two waves of CTAs).
                 backward 4 U: dE (row blocks of E: Z recomputed, then (P - I) T) and dT (row blocks of T); grid
                          row blocks x column splits, each split's fp32 partial summed afterwards in split order.
               No atomics anywhere: deterministic for a fixed config (see Configs below).
               The forward's logit tile is computed by a software-pipelined loop over D in 64-column (bf16) /
               32-column (fp32) chunks, any D. The gradient keeps a [128, 256] fp32 accumulator in registers:
               D <= 256 in one part (X resident, the loop over column tiles of 64 pipelined); wider D in
               ceil(D / 256) parts over program_id(2), each recomputing Z by a pipelined D loop (32-column chunks
               in bf16, the forward's k order in 16-wide wgmma steps): (parts + 1) U
               per gradient launch, so 1 + 2 (parts + 1) U in all (D = 512: 7 U, 768: 9 U, 1024: 11 U), with no
               spill or stack at D <= 1024 (benchmarks/results/kernel_resources_*.md). Multi-process (gathered
               embeddings, b rows per rank, N = W b): 2 u' forward + 4 u' backward per rank (u' = 2 b N D; the
               same 2 + 4 as OpenCLIP, which stores the [b, N] logits; benchmarks/results/
               infonce_work_per_rank_cpu.md): each rank's two tiles s E T_all^T and s T E_all^T are recomputed
               once, each feeding its own rows' gradient through its row and column statistics (_InfoNCE).
               Compiled on CUDA; on CPU tensors only under the Triton interpreter (TRITON_INTERPRET=1 before this
               module is imported), else impl "fused" is an error.
* "auto":      "fused" on CUDA, "chunked" elsewhere (melp_kernels/_dispatch.py).

fp32 inputs and `precision` (fused only; chunked and reference always compute in IEEE fp32):
  "tf32" (the default on CUDA): 10-bit mantissa tensor-core dots; expected error on a GPU about 1e-3 relative on
  the loss and 1e-2 on the gradients at logit scale 100 (the GPU tests assert loss <= 2e-3, grads <= 2e-2);
  "tf32x3": three tf32 dots (split operands), about IEEE accuracy (asserted <= 1e-5 / 1e-4) at 3x the dot work;
  "ieee": fp32 FMA dots, exact to rounding, slow (no tensor cores). The interpreter computes every choice exactly.
bf16 / fp16 inputs: operands as given, P rounded to the input dtype for the P T / P^T E dots; against the fp32
reference on the same half inputs the tests assert loss <= 1e-2 and gradients <= 2e-2 relative.

Confident pairs (s = 100, P_ii -> 1, the regime training converges to): every path subtracts the positive inside
P in fp32 (P - I) before any rounding, so each output is the small difference itself; the fused path keeps its
statistics as (max, log2 sum) in log2 units and recomputes each logit by the same dots as the forward, so
zs - max is exact and the loss is the small log2 sum rather than a difference of two numbers near s. Tested
against float64 on the same half inputs (loss ~3e-5): gradients within 5x of the chunked path's error.

The loss is returned in fp32 whatever the input dtype; gradients come back in the inputs' dtypes.

Configs (melp_kernels/autotune.py): the first launch of each (device, versions, shape bucket) times the shipped
configs once, on rank 0, caches the choice on disk ($MELP_AUTOTUNE_CACHE, default ~/.cache/melp_fast/
autotune.json) and broadcasts it to every rank, so all ranks and later runs launch the same config.
MELP_AUTOTUNE=off (read at launch) takes the first shipped config that fits without timing anything: the
bitwise-reproducible setting (the kernels use no atomics; every reduction has a fixed order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import autotune
from ._dispatch import HAS_TRITON, KERNELS_INTERPRETED, OPS, resolve_impl

if HAS_TRITON:
    import triton
    import triton.language as tl

__all__ = ["infonce_loss", "IMPLS", "PRECISIONS"]

IMPLS = OPS["infonce"].choices  # reference, chunked, fused, auto (melp_kernels/_dispatch.py)
PRECISIONS = ("tf32", "tf32x3", "ieee")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
SHARED_BUDGET = 227 * 1024  # bytes of shared memory per block (H100 / H200), used when no device can be asked
ACC_WIDTH = 256  # widest [BLOCK_M, ACC_WIDTH] fp32 accumulator of the gradient kernels; up to 4 of them (D <= 1024)

# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _fwd_dots(X, Y, D, stride_x, stride_y, offs_m, mask_m, offs_n, mask_n, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                  MASK_M: tl.constexpr, MASK_N: tl.constexpr, EVEN_D: tl.constexpr):
        """The raw dots of one tile, X[rows] Y[cols]^T, by a loop over D chunks (the forward's order)."""
        z = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):  # narrow D chunks: the pipelined K loop of a matmul
            offs_d = d0 + tl.arange(0, BLOCK_D)
            xp = X + offs_m[:, None] * stride_x + offs_d[None, :]
            yp = Y + offs_n[:, None] * stride_y + offs_d[None, :]
            if EVEN_D:  # interior tiles load unmasked
                if MASK_M:
                    x = tl.load(xp, mask=mask_m[:, None], other=0.0)
                else:
                    x = tl.load(xp)
                if MASK_N:
                    y = tl.load(yp, mask=mask_n[:, None], other=0.0)
                else:
                    y = tl.load(yp)
            else:
                mask_d = offs_d < D
                x = tl.load(xp, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
                y = tl.load(yp, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
            if UPCAST:
                x = x.to(tl.float32)
                y = y.to(tl.float32)
            z += tl.dot(x, tl.trans(y), input_precision=PRECISION)
        return z

    @triton.jit
    def _fwd_tile(X, Y, COL_M, COL_L, POS, M, N, D, stride_x, stride_y, diag_off, s2, mb, nb, offs_m, mask_m,
                  m_i, l_i, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  WITH_COLS: tl.constexpr, WITH_POS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                  MASK_M: tl.constexpr, MASK_N: tl.constexpr, SAFE_COLS: tl.constexpr, EVEN_D: tl.constexpr):
        """One [BLOCK_M, BLOCK_N] tile of the forward: the row stats (m_i, l_i) merged online, the column stats
        of this row block stored, the positives stored where the tile holds them. One exp2 per logit:
        p = 2^(zs - mt_i) with mt_i the tile's row max serves the row sums as it is and the column sums scaled by
        a_i = 2^(mt_i - M_t) (M_t the tile max), stored as (M_t, sum_i p_ij a_i). A column whose every value in
        the tile lies more than 90 below M_t (its sum < 2^-90: precision lost to underflow) sends the tile down an
        exact path (its own column max, a second exp2 per logit); SAFE_COLS = False leaves that branch out (only
        for measuring the steady-state loop)."""
        offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        z = _fwd_dots(X, Y, D, stride_x, stride_y, offs_m, mask_m, offs_n, mask_n, BLOCK_M, BLOCK_N, BLOCK_D,
                      UPCAST, PRECISION, MASK_M, MASK_N, EVEN_D)
        zs = z * s2
        if WITH_POS:
            lo = nb * BLOCK_N - diag_off
            if (lo < mb * BLOCK_M + BLOCK_M) & (mb * BLOCK_M < lo + BLOCK_N):  # tile holds positives
                eq = (offs_m[:, None] + diag_off) == offs_n[None, :]
                d = tl.sum(tl.where(eq, zs, 0.0), axis=1)
                has = mask_m & (offs_m + diag_off >= nb * BLOCK_N) & (offs_m + diag_off < nb * BLOCK_N + BLOCK_N)
                tl.store(POS + offs_m, d, mask=has)
        if MASK_N:
            zs = zs + tl.where(mask_n, 0.0, float("-inf"))[None, :]
        mt = tl.max(zs, axis=1)
        p = tl.exp2(zs - mt[:, None])
        m_new = tl.maximum(m_i, mt)
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(p, axis=1) * tl.exp2(mt - m_new)
        if WITH_COLS:
            if MASK_M:
                mt = tl.where(mask_m, mt, float("-inf"))
            mtile = tl.max(mt, axis=0)
            csum = tl.sum(p * tl.exp2(mt - mtile)[:, None], axis=0)
            cref = tl.zeros((BLOCK_N,), dtype=tl.float32) + mtile
            if SAFE_COLS:
                low = tl.min(tl.where(mask_n, csum, 1.0), axis=0)
                if low < 8.077935669463161e-28:  # 2^-90; the logits again (keeps zs out of the registers)
                    zc = _fwd_dots(X, Y, D, stride_x, stride_y, offs_m, mask_m, offs_n, mask_n, BLOCK_M, BLOCK_N,
                                   BLOCK_D, UPCAST, PRECISION, MASK_M, MASK_N, EVEN_D) * s2
                    if MASK_N:
                        zc = zc + tl.where(mask_n, 0.0, float("-inf"))[None, :]
                    if MASK_M:
                        zc = zc + tl.where(mask_m, 0.0, float("-inf"))[:, None]
                    cref = tl.max(zc, axis=0)
                    csum = tl.sum(tl.exp2(zc - cref[None, :]), axis=0)
            tl.store(COL_M + mb * N + offs_n, cref, mask=mask_n)
            tl.store(COL_L + mb * N + offs_n, csum, mask=mask_n)
        return m_new, l_i

    @triton.jit
    def _infonce_fwd_kernel(X, Y, S, ROW_M, ROW_L, COL_M, COL_L, POS, M, N, D, stride_x, stride_y, diag_off,
                            M_BUCKET, N_BUCKET,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                            WITH_COLS: tl.constexpr, WITH_POS: tl.constexpr, UPCAST: tl.constexpr,
                            PRECISION: tl.constexpr, EVEN_D: tl.constexpr, SAFE_COLS: tl.constexpr = True):
        """One pass over the tiles of Z = X Y^T, scaled to log2 units (zs = s log2(e) z).

        Program (i, c) takes row block i against the column blocks of split c and writes
          ROW_M[c, r], ROW_L[c, r] = max_j zs_rj, sum_j 2^(zs_rj - max)   over the columns j of split c
          COL_M[i, j], COL_L[i, j] = a reference m_ij >= ... and sum_r 2^(zs_rj - m_ij) over the rows of block i
                                     (WITH_COLS; m_ij is the tile max, or the column max on the exact path)
          POS[r] = zs_{r, r + diag_off}                                    (WITH_POS; the program holding it)
        Row stats are merged online across column tiles; column stats are per row block (nothing merged in the
        loop) and reduced afterwards. Interior tiles (full rows and columns) compile without masks; the row
        block past M and the column block past N take masked copies of the tile code."""
        mb = tl.program_id(0)
        c = tl.program_id(1)
        n_nb = tl.cdiv(N, BLOCK_N)
        nb_per = tl.cdiv(n_nb, tl.num_programs(1))
        nb0 = c * nb_per
        nb1 = tl.minimum(nb0 + nb_per, n_nb)
        nb_full = tl.minimum(nb1, N // BLOCK_N)  # column blocks [nb0, nb_full) need no column mask
        s2 = tl.load(S).to(tl.float32) * 1.4426950408889634
        offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        if mb * BLOCK_M + BLOCK_M <= M:
            for nb in range(nb0, nb_full):
                m_i, l_i = _fwd_tile(X, Y, COL_M, COL_L, POS, M, N, D, stride_x, stride_y, diag_off, s2, mb, nb,
                                     offs_m, mask_m, m_i, l_i, BLOCK_M, BLOCK_N, BLOCK_D, WITH_COLS, WITH_POS,
                                     UPCAST, PRECISION, False, False, SAFE_COLS, EVEN_D)
        else:
            for nb in range(nb0, nb_full):
                m_i, l_i = _fwd_tile(X, Y, COL_M, COL_L, POS, M, N, D, stride_x, stride_y, diag_off, s2, mb, nb,
                                     offs_m, mask_m, m_i, l_i, BLOCK_M, BLOCK_N, BLOCK_D, WITH_COLS, WITH_POS,
                                     UPCAST, PRECISION, True, False, SAFE_COLS, EVEN_D)
        for nb in range(tl.maximum(nb0, nb_full), nb1):  # the last column block when N % BLOCK_N != 0
            m_i, l_i = _fwd_tile(X, Y, COL_M, COL_L, POS, M, N, D, stride_x, stride_y, diag_off, s2, mb, nb,
                                 offs_m, mask_m, m_i, l_i, BLOCK_M, BLOCK_N, BLOCK_D, WITH_COLS, WITH_POS,
                                 UPCAST, PRECISION, True, True, SAFE_COLS, EVEN_D)
        tl.store(ROW_M + c * M + offs_m, m_i, mask=mask_m)
        tl.store(ROW_L + c * M + offs_m, l_i, mask=mask_m)

    @triton.jit
    def _infonce_grad_kernel(X, Y, S, LSE_A, LSE_B, CS, WA, WB, DX, DS, M, N, D, pos_coef, ds_coef, diag_off,
                             stride_x, stride_y, stride_dx, M_BUCKET, N_BUCKET,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                             ACC_W: tl.constexpr, N_ACC: tl.constexpr, CHUNKED: tl.constexpr, SPLIT: tl.constexpr,
                             HAS_A: tl.constexpr, HAS_B: tl.constexpr, HAS_W: tl.constexpr,
                             HAS_PARTNER: tl.constexpr, COMPUTE_DS: tl.constexpr, DS_ROWS: tl.constexpr,
                             UPCAST: tl.constexpr, PRECISION: tl.constexpr, EVEN_D: tl.constexpr,
                             DS_ONLY: tl.constexpr = False):
        """DX[c, i] = cs * sum_{j in split c} (P_ij - [HAS_PARTNER] pos_coef wa [j = i + diag_off]) Y_j, each tile
        of Z = X Y^T computed once per program, with P_ij = [HAS_A] wa 2^(zs_ij - mA_i - lA_i)
        + [HAS_B] wb_j 2^(zs_ij - mB_j - lB_j) (log2 stats from the forward: LSE_A = [max; log2 sum], [2, M];
        wa = WA[0] and wb = WB[N] with HAS_W, else 1);
        DS[c, i] = sum_{j in split c} Q_ij z_ij - [HAS_PARTNER] ds_coef z_{i, i + diag_off}, with Q = P (unweighted
        row + column parts), or only the row part 2^(zs_ij - mA_i - lA_i) when DS_ROWS (summed against zs as it
        is made, so it needs no tile of its own, and divided by s2 at the end). DS_ONLY (with CHUNKED and
        DS_ROWS): that row-part DS alone, no accumulator and no DX: beside a wide-D accumulator the weighted P and
        the row sums left a stack frame (104 B at D = 1024), so wide D takes it as a launch of its own.

        Grid: (row blocks, column splits c = program_id(1), output-column parts = program_id(2)). The positive
        term is folded into P in fp32 before P is rounded to the dot's operand type (in the confident regime
        P_ii ~ 1 and the gradient is the small difference, which a bf16 P_ii would swamp); only tiles that hold
        positives pay for the select. CHUNKED = False (D <= ACC_W): X_i [BLOCK_M, ACC_W] stays loaded, each
        Y_j tile is loaded once and serves both dots (the loop over j is the pipelined one). CHUNKED (wider D):
        Z by the forward's pipelined loop over D chunks, then P Y for this program's ACC_W output columns
        (N_ACC is always 1: one [BLOCK_M, ACC_W] fp32 accumulator in registers)."""
        pid = tl.program_id(0)
        csp = tl.program_id(1)  # this program's split of the columns j (partials reduced afterwards, in order)
        n_cb = tl.cdiv(N, BLOCK_N)
        cb_per = tl.cdiv(n_cb, tl.num_programs(1))
        n_lo = csp * cb_per * BLOCK_N
        n_hi = tl.minimum(csp * cb_per + cb_per, n_cb) * BLOCK_N
        offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        s2 = tl.load(S).to(tl.float32) * 1.4426950408889634
        if HAS_A:  # row stats in log2 units: max and log2 of the sum below it (kept apart: exact zs - max)
            ma = tl.load(LSE_A + offs_m, mask=mask_m, other=0.0)
            la = tl.load(LSE_A + M + offs_m, mask=mask_m, other=0.0)
        wa = 1.0
        if HAS_W:
            wa = tl.load(WA).to(tl.float32)
        offs_w = tl.arange(0, ACC_W)
        if SPLIT > 1:  # this program's part of the output columns
            offs_w += tl.program_id(2) * ACC_W
        acc0 = tl.zeros((BLOCK_M, ACC_W), dtype=tl.float32)
        ds_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
        if not CHUNKED:
            x0 = tl.load(X + offs_m[:, None] * stride_x + offs_w[None, :],
                         mask=mask_m[:, None] & (offs_w[None, :] < D), other=0.0)
            if UPCAST:
                x0 = x0.to(tl.float32)
        for n0 in range(n_lo, n_hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            if CHUNKED:  # the forward's dots, in its order
                z = _fwd_dots(X, Y, D, stride_x, stride_y, offs_m, mask_m, offs_n, mask_n, BLOCK_M, BLOCK_N,
                              BLOCK_D, UPCAST, PRECISION, True, True, EVEN_D)
            if not DS_ONLY:
                y0 = tl.load(Y + offs_n[:, None] * stride_y + offs_w[None, :],
                             mask=mask_n[:, None] & (offs_w[None, :] < D), other=0.0)
                if UPCAST:
                    y0 = y0.to(tl.float32)
            if not CHUNKED:
                z = tl.dot(x0, tl.trans(y0), input_precision=PRECISION)
            zs = z * s2
            if DS_ONLY:  # the row part's sum of P * Z, positives subtracted; nothing else
                pa = tl.exp2((zs - ma[:, None]) - la[:, None])
                ds_acc += tl.sum(pa * zs, axis=1)
                if HAS_PARTNER:
                    lo = n0 - diag_off
                    if (lo < pid * BLOCK_M + BLOCK_M) & (pid * BLOCK_M < lo + BLOCK_N):  # tile holds positives
                        eq = offs_n[None, :] == offs_m[:, None] + diag_off
                        ds_acc -= tl.sum(tl.where(eq, ds_coef * zs, 0.0), axis=1)
            else:
                p = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                if HAS_A:
                    pa = tl.exp2((zs - ma[:, None]) - la[:, None])
                    if COMPUTE_DS and DS_ROWS:  # the row part's sum at once (zs units, / s2 at the end): pa dies
                        ds_acc += tl.sum(pa * zs, axis=1)
                    if HAS_W:
                        p += wa * pa
                    else:
                        p += pa
                if HAS_B:
                    mb_ = tl.load(LSE_B + offs_n, mask=mask_n, other=0.0)
                    lb = tl.load(LSE_B + N + offs_n, mask=mask_n, other=0.0)
                    pb = tl.exp2((zs - mb_[None, :]) - lb[None, :])
                    if HAS_W:
                        wb = tl.load(WB + offs_n, mask=mask_n, other=0.0)
                        p += wb[None, :] * pb
                    else:
                        p += pb
                # columns past N: Y rows are 0 there, so only a non-finite p could leak; rows past M are not stored
                p = tl.where(mask_n[None, :], p, 0.0)
                if HAS_PARTNER:  # the positives, folded into P in fp32 before any rounding (P_ii ~ 1 - pos_coef)
                    lo = n0 - diag_off
                    if (lo < pid * BLOCK_M + BLOCK_M) & (pid * BLOCK_M < lo + BLOCK_N):  # tile holds positives
                        eq = offs_n[None, :] == offs_m[:, None] + diag_off
                        if COMPUTE_DS:
                            if DS_ROWS:
                                ds_acc -= tl.sum(tl.where(eq, ds_coef * zs, 0.0), axis=1)
                            else:
                                ds_acc += tl.sum(tl.where(eq, p - ds_coef, p) * z, axis=1)
                        p = tl.where(eq, p - pos_coef * wa, p)
                    elif COMPUTE_DS and not DS_ROWS:
                        ds_acc += tl.sum(p * z, axis=1)
                elif COMPUTE_DS and not DS_ROWS:
                    ds_acc += tl.sum(p * z, axis=1)
                pd = p.to(Y.dtype.element_ty)  # the dot operand in the input dtype (bf16 P for bf16 inputs)
                if UPCAST:
                    pd = pd.to(tl.float32)
                acc0 += tl.dot(pd, y0, input_precision=PRECISION)
        if not DS_ONLY:
            cs = tl.load(CS).to(tl.float32)
            dxp = DX + csp * M * stride_dx + offs_m[:, None] * stride_dx + offs_w[None, :]  # split c's slice
            tl.store(dxp, (acc0 * cs).to(DX.dtype.element_ty), mask=mask_m[:, None] & (offs_w[None, :] < D))
        if COMPUTE_DS:
            if DS_ROWS:
                ds_acc = ds_acc / s2
            if SPLIT > 1:
                if tl.program_id(2) == 0:
                    tl.store(DS + csp * M + offs_m, ds_acc, mask=mask_m)
            else:
                tl.store(DS + csp * M + offs_m, ds_acc, mask=mask_m)


# ----------------------------------------------------------------------------------------------------------------
# Configs: shipped lists per kernel and operand width, pruned on shared memory before anything compiles
# ----------------------------------------------------------------------------------------------------------------
# (BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages); BLOCK_D is 128 bytes of a row: 64 half / 32 fp32 elements
# forward: BLOCK_M is always FWD_BLOCK_M (128), the row-block count of the column partials
_FWD_CONFIGS = {
    2: [(128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 64, 64, 4, 2)],
    4: [(128, 128, 32, 8, 3), (128, 128, 32, 8, 4), (128, 64, 32, 4, 2)],
}
# gradient kernels: (operand bytes, chunked) where chunked = D wider than one accumulator (ACC_WIDTH), split over
# program_id(2) in ACC_WIDTH-wide parts. The [BLOCK_M, ACC_W] fp32 accumulator sits in registers. Checked with
# benchmarks/kernel_resources.py (no spill, no stack, shared memory <= 227 KB) at D = 128 ... 1024.
_GRAD_CONFIGS = {
    (2, False): [(128, 64, 64, 8, 2), (128, 32, 64, 8, 3)],
    (2, True): [(128, 64, 32, 8, 2), (128, 32, 32, 8, 2)],  # BLOCK_D 64 left 8 B of stack under triton 3.6
    (4, False): [(64, 16, 32, 8, 2), (64, 16, 32, 8, 3)],
    (4, True): [(64, 32, 32, 8, 2), (64, 16, 32, 8, 2)],
}
if HAS_TRITON and tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 9):
    # Triton 3.9 gives the gathered gradient (row and weighted column parts, row-part DS sums) 24-32 B of stack at
    # 128 x 64 logit tiles; 128 x 32 builds with none and stays tensor-bound (0.84-0.87 warp-instructions per
    # logit: 0.21 issue clocks against 0.25 tensor clocks; benchmarks/results/kernel_resources_triton3.9.0.md)
    _GRAD_CONFIGS[(2, False)] = [(128, 32, 64, 8, 3), (128, 32, 64, 8, 2)]


def _grad_shape(D: int, interpreted: bool, esize: int = 2):
    """(ACC_W, N_ACC, CHUNKED, SPLIT) for feature width D: the accumulator's width, one accumulator per program,
    whether Z is computed by a loop over narrow D chunks, and in how many parts the output columns are split
    (program_id(2)). Up to ACC_WIDTH (256; 64 interpreted) one part holds all of D and Z is one dot with the
    resident X tile. Wider D: SPLIT = ceil(D / ACC_WIDTH) parts of ACC_WIDTH columns, each recomputing Z by the
    pipelined D loop: (SPLIT + 1) U per gradient launch instead of 2 U, but every part keeps a [BLOCK_M, 256] fp32
    accumulator in registers with logit tiles of 64 columns (several accumulators per program spilled at
    D = 1024 and forced 8-16-wide logit tiles)."""
    cap = INTERP_ACC_WIDTH if interpreted else ACC_WIDTH
    if interpreted and D <= cap:  # one accumulator is always the forward's BLOCK_D wide: the same dots
        return cap, 1, False, 1
    dp = max(16, 1 << (max(D, 1) - 1).bit_length())
    if dp <= cap:
        return dp, 1, False, 1
    return cap, 1, True, -(-D // cap)


def _fwd_shared(cfg, esize):
    bm, bn, bd, _, st = cfg
    return st * (bm + bn) * bd * esize + 2 * bm * bn * 4 // max(1, st)  # operand stages + epilogue scratch


def _grad_shared(cfg, esize, D):
    bm, bn, bd, _, st = cfg
    w, nacc, chunked, _ = _grad_shape(D, False, esize)
    if chunked:  # K-loop stages for Z, the [BLOCK_N, D] operand of P Y, P itself
        return st * (bm + bn) * bd * esize + bn * w * nacc * esize + bm * bn * esize
    return bm * w * nacc * esize + st * bn * w * nacc * esize + bm * bn * esize  # resident X, Y stages, P


def _grad_list(D, esize):
    return _GRAD_CONFIGS[(esize, _grad_shape(D, False, esize)[2])]


def _shared_limit(device=None):
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lim = getattr(props, "shared_memory_per_block_optin", 0)
        if lim:
            return int(lim)
    return SHARED_BUDGET


def shipped_configs(kernel: str, D: int, esize: int, shared_limit: int = SHARED_BUDGET):
    """The configs of `kernel` ("fwd" | "grad") kept for feature width D and operand size esize (2 or 4 bytes):
    the shipped list minus those whose estimated shared memory does not fit (pruned before any compile)."""
    if kernel == "fwd":
        allc = _FWD_CONFIGS[esize]
        keep = [c for c in allc if _fwd_shared(c, esize) <= shared_limit]
        return keep or [min(allc, key=lambda c: _fwd_shared(c, esize))]
    allc = _grad_list(D, esize)
    keep = [c for c in allc if _grad_shared(c, esize, D) <= shared_limit]
    return keep or [min(allc, key=lambda c: _grad_shared(c, esize, D))]


def _autotune_off() -> bool:
    return autotune.autotune_off()


if HAS_TRITON:

    def _as_config(c):
        bm, bn, bd, w, st = c
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd}, num_warps=w, num_stages=st)

    def _tuple_of(cfg):
        k = cfg.kwargs
        return (k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_D"], cfg.num_warps, cfg.num_stages)

    def _make_prune(kernel):
        def prune(configs, named_args, **kwargs):
            x = named_args["X"]
            D = int(named_args["D"])
            keep = set(shipped_configs(kernel, D, x.element_size(), _shared_limit(x.device)))
            out = [c for c in configs if _tuple_of(c) in keep] or configs[:1]
            return out[:1] if _autotune_off() else out
        return prune

    _TUNED = {}
    for _es in (2, 4):
        _TUNED[("fwd", _es)] = triton.autotune(
            configs=[_as_config(c) for c in _FWD_CONFIGS[_es]],
            key=["M_BUCKET", "N_BUCKET", "D", "WITH_COLS", "WITH_POS", "PRECISION", "EVEN_D"],
            prune_configs_by={"early_config_prune": _make_prune("fwd")})(_infonce_fwd_kernel)
        for _wide in (False, True):
            _TUNED[("grad", _es, _wide)] = triton.autotune(
                configs=[_as_config(c) for c in _GRAD_CONFIGS[(_es, _wide)]],
                key=["M_BUCKET", "N_BUCKET", "D", "HAS_A", "HAS_B", "HAS_W", "COMPUTE_DS", "DS_ONLY", "PRECISION",
                     "EVEN_D"],
                prune_configs_by={"early_config_prune": _make_prune("grad")})(_infonce_grad_kernel)

# Under the interpreter (one config; autotune cannot run there): small blocks, so the tests' shapes cross block
# and split boundaries, loop over D chunks and take the chunked-accumulator path for D > 64. BLOCK_D equals the
# interpreter's accumulator width so that the forward and the gradient kernels compute each logit by the same dots
# (the confident regime needs P from the same rounded logits as the statistics; see _tri_fwd).
INTERP_CFG = (32, 32, 64, 4, 1)
INTERP_ACC_WIDTH = 64
FWD_BLOCK_M = 128  # every compiled forward config: the column partials have cdiv(M, 128) rows
SM_COUNT = 132  # H100 SXM / H200, used when no device can be asked


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _sm_count(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return SM_COUNT


def _waves_split(n_rows, max_split, sms):
    """The split count in 1..max_split whose n_rows x split CTAs (one per SM: the tile kernels hold the register
    file) fill their waves best; ties go to fewer splits (less partial traffic)."""
    best, best_eff = 1, 0.0
    for k in range(1, max(1, max_split) + 1):
        ctas = n_rows * k
        eff = ctas / (-(-ctas // sms) * sms)
        if eff > best_eff + 1e-9:
            best, best_eff = k, eff
    return best


def _fwd_splits(n_mb, N, block_n_min, sms):
    """Column splits of the forward grid (n_mb row blocks x splits programs): the best-filled waves of CTAs, up
    to 16 splits, none narrower than two column blocks."""
    return _waves_split(n_mb, min(16, triton.cdiv(N, block_n_min) // 2), sms)


def _dev_guard(x):
    return torch.cuda.device(x.device) if x.is_cuda else _Null()


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _tri_fwd(x, y, s, with_cols, diag_off, precision):
    """Row stats [2, M], column stats [2, N] (with_cols, else None) and positives [M] (diag_off not None, else
    None) of zs = s log2(e) X Y^T, all in log2 units: stats[0] = the max of zs along the row (column), an exact
    zs value; stats[1] = log2 of sum 2^(zs - max). The row LSE in natural units is (max + lse2) ln 2; the
    per-row loss (max - positive + lse2) ln 2 keeps its precision when the positive is the max (confident pairs:
    the loss is the small lse2, not a difference of two numbers near s)."""
    M, D = x.shape
    N = y.shape[0]
    interp = KERNELS_INTERPRETED or not x.is_cuda
    bm = INTERP_CFG[0] if interp else FWD_BLOCK_M
    n_mb = triton.cdiv(M, bm)
    bn_min = INTERP_CFG[1] if interp else min(c[1] for c in _FWD_CONFIGS[x.element_size()])
    ns = _fwd_splits(n_mb, N, bn_min, 1 if interp else _sm_count(x.device))
    row_m = torch.empty((ns, M), device=x.device, dtype=torch.float32)
    row_l = torch.empty((ns, M), device=x.device, dtype=torch.float32)
    if with_cols:
        col_m = torch.empty((n_mb, N), device=x.device, dtype=torch.float32)
        col_l = torch.empty((n_mb, N), device=x.device, dtype=torch.float32)
    else:
        col_m = col_l = row_m
    with_pos = diag_off is not None
    pos = torch.empty(M, device=x.device, dtype=torch.float32) if with_pos else row_m
    args = (x, y, s, row_m, row_l, col_m, col_l, pos, M, N, D, x.stride(0), y.stride(0), diag_off or 0,
            _bucket(M), _bucket(N))
    meta = dict(WITH_COLS=with_cols, WITH_POS=with_pos, UPCAST=interp, PRECISION=precision)
    bd = INTERP_CFG[2] if interp else _FWD_CONFIGS[x.element_size()][0][2]  # one BLOCK_D per operand size
    meta["EVEN_D"] = D % bd == 0
    with _dev_guard(x):
        if interp:
            _, bn, bd, _, _ = INTERP_CFG
            _infonce_fwd_kernel[(n_mb, ns)](*args, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, **meta)
        else:
            tuner = _TUNED[("fwd", x.element_size())]

            def tune():
                tuner[(n_mb, ns)](*args, **meta)
                return _tuple_of(tuner.best_config)

            key = (_bucket(M), _bucket(N), D, with_cols, with_pos, precision, meta["EVEN_D"], str(x.dtype))
            first = shipped_configs("fwd", D, x.element_size(), _shared_limit(x.device))[0]
            bm_, bn, bd, w, st = autotune.pick("infonce_fwd", key, tune, first, x.device)
            _infonce_fwd_kernel[(n_mb, ns)](*args, BLOCK_M=bm_, BLOCK_N=bn, BLOCK_D=bd, num_warps=w,
                                            num_stages=st, **meta)
    return _merge(row_m, row_l), (_merge(col_m, col_l) if with_cols else None), (pos if with_pos else None)


def _merge(pm, pl):
    """[2, n] (max, log2 sum) from partial maxima pm and sums pl [parts, n] (sums relative to their max)."""
    m = pm.max(dim=0).values
    if pm.shape[0] == 1:
        return torch.stack([m, torch.log2(pl[0])])
    return torch.stack([m, torch.log2((pl * torch.exp2(pm - m)).sum(dim=0))])


def _row_losses(stats, pos):
    """Per-row CE in natural units from log2 stats and the positives (zs): ((max - pos) + lse2) ln 2."""
    return ((stats[0] - pos) + stats[1]) * _LN2


def _grad_splits(M, N, interp, device):
    """Column splits of the gradient grid (row blocks x splits): the best-filled waves of 128-row CTAs, up to 8
    splits of at least 256 columns (interpreter: 2 when there are columns for it). Independent of the autotuned
    BLOCK_M, so the partial buffer is sized before the launch."""
    if interp:
        return 2 if N > 2 * INTERP_CFG[1] else 1
    return _waves_split(triton.cdiv(M, 128), min(8, N // 256), _sm_count(device))


def _tri_grad(x, y, s, lse_a, lse_b, cs, pos_coef, diag_off, compute_ds, precision, ds_coef=0.0, wa=None, wb=None,
              ds_rows=False):
    """cs * (P Y - pos_coef * wa * Y[i + diag_off]) in x's dtype (no positive term when diag_off is None), and the
    per-row sums of Q * Z - ds_coef * Z[i, i + diag_off] (compute_ds; Q = P unweighted, or only its row part with
    ds_rows). wa (1 element) and wb ([N]) weight P's row and column parts (both or neither; fp32 tensors on the
    device, never read on the host). The grid is row blocks x column splits; with several splits each writes an
    fp32 partial, summed afterwards in split order (deterministic, no atomics)."""
    M, D = x.shape
    N = y.shape[0]
    interp = KERNELS_INTERPRETED or not x.is_cuda
    nsp = _grad_splits(M, N, interp, x.device)
    if nsp > 1:
        dx = torch.empty((nsp, M, D), device=x.device, dtype=torch.float32)
    else:
        dx = torch.empty((M, D), device=x.device, dtype=x.dtype)
    ds = torch.empty((nsp, M), device=x.device, dtype=torch.float32) if compute_ds else cs
    acc_w, n_acc, chunked, split = _grad_shape(D, interp, x.element_size())
    dummy = lse_a if lse_a is not None else lse_b
    has_w = wa is not None
    args = (x, y, s, lse_a if lse_a is not None else dummy, lse_b if lse_b is not None else dummy, cs,
            wa if has_w else cs, wb if has_w else cs, dx, ds,
            M, N, D, float(pos_coef), float(ds_coef), diag_off or 0, x.stride(0), y.stride(0), D,
            _bucket(M), _bucket(N))
    meta = dict(ACC_W=acc_w, N_ACC=n_acc, CHUNKED=chunked, SPLIT=split, HAS_A=lse_a is not None,
                HAS_B=lse_b is not None, HAS_W=has_w, HAS_PARTNER=diag_off is not None and pos_coef != 0,
                COMPUTE_DS=compute_ds, DS_ROWS=ds_rows, UPCAST=interp, PRECISION=precision,
                EVEN_D=D % (INTERP_CFG[2] if interp else _GRAD_CONFIGS[(x.element_size(), chunked)][0][2]) == 0,
                DS_ONLY=False)

    def launch(meta, parts):
        if interp:
            bm, bn, bd, _, _ = INTERP_CFG
            _infonce_grad_kernel[(triton.cdiv(M, bm), nsp, parts)](*args, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
                                                                   **meta)
            return
        tuner = _TUNED[("grad", x.element_size(), chunked)]

        def tune():
            tuner[lambda m: (triton.cdiv(M, m["BLOCK_M"]), nsp, parts)](*args, **meta)
            return _tuple_of(tuner.best_config)

        key = (_bucket(M), _bucket(N), D, meta["HAS_A"], meta["HAS_B"], has_w, meta["COMPUTE_DS"],
               meta["DS_ONLY"], precision, meta["EVEN_D"], str(x.dtype))
        first = shipped_configs("grad", D, x.element_size(), _shared_limit(x.device))[0]
        bm, bn, bd, w, st = autotune.pick("infonce_grad", key, tune, first, x.device)
        _infonce_grad_kernel[(triton.cdiv(M, bm), nsp, parts)](*args, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
                                                               num_warps=w, num_stages=st, **meta)

    with _dev_guard(x):
        if compute_ds and ds_rows and chunked:  # wide D: the row-part DS in a launch of its own (+1 U)
            launch(dict(meta, DS_ONLY=True), 1)
            meta["COMPUTE_DS"] = False
        launch(meta, split)
    if nsp > 1:
        dx = dx.sum(dim=0).to(x.dtype)
    return dx, (ds.sum(dim=0) if compute_ds else None)


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


def _torch_block_grads(x, y, s, lse_row, lse_col, need_dx, need_dy, need_ds, chunk, diag_off=0, pos_coef=0.0,
                       wa=None, wb=None):
    """With P = wa exp(s X Y^T - lse_row[:, None]) [+ wb[None, :] exp(s X Y^T - lse_col[None, :])] - pos_coef wa at
    the positives (i, i + diag_off), by row blocks: dx = P Y, dy = P^T X; one recomputed [c, N] block serves all.
    wa (1 element) and wb ([N]) are the rows' and columns' weights (both or neither; none: 1). ds: without weights
    sum(P * X Y^T) over the whole P, positives subtracted (the square case); with them, only the row part
    sum((exp(s X Y^T - lse_row) - I) * X Y^T) (this rank's own loss). The positives are subtracted in fp32 inside
    P (P_ii ~ 1 for confident pairs), so every output is the small difference itself, never two large terms
    rounded apart."""
    xf, yf = x.float(), y.float()
    sf = s.float().reshape(())
    dx = torch.empty(x.shape, device=x.device, dtype=torch.float32) if need_dx else None
    dy = torch.zeros(y.shape, device=x.device, dtype=torch.float32) if need_dy else None
    ds = torch.zeros((), device=x.device, dtype=torch.float32)
    weighted = wa is not None
    for i in range(0, x.shape[0], chunk):
        xc = xf[i:i + chunk]
        z = xc @ yf.T  # raw dots [c, N]
        a = z * sf
        p = None
        if lse_row is not None:
            p = (a - lse_row[i:i + chunk, None]).exp_()
            if weighted and need_ds:  # this rank's loss: the row part, its positives subtracted once
                ds += torch.dot(p.reshape(-1), z.reshape(-1)) - z.diagonal(offset=i + diag_off).sum()
            if weighted:
                p.mul_(wa)
        if lse_col is not None:
            q = a.sub_(lse_col[None, :]).exp_()
            if weighted:
                q.mul_(wb[None, :])
            p = q if p is None else p.add_(q)
        del a
        if pos_coef:  # the positives (r, r + diag_off) of this block lie on one diagonal of p: a view, no host sync
            p.diagonal(offset=i + diag_off).sub_(pos_coef * wa if weighted else pos_coef)
        if need_ds and not weighted:
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
    """Inputs: e, t [b, D] (this rank's rows); e_all, t_all [N, D] all ranks' rows, gathered WITHOUT autograd, or
    None (single process: the square case); s (1 element); backend "triton" | "torch"; offset = rank * b; group.
    Saves only the inputs and the LSE / positive vectors (O(b + N)).

    With c_r = grad_r * 0.5 / b (grad_r: the upstream gradient of rank r's loss), P1 = softmax_rows(s E T_all^T),
    P2 = softmax_rows(s T E_all^T) on each rank, Z the raw dots and I the one-hot labels, the gradient of
    sum_r c_r (CE terms of rank r) with respect to THIS rank's rows, with j over all N global rows:

      dE_i = s sum_j (c_r P1_ij + c_{r(j)} P2[j, i] - 2 c_r [j = o + i]) T_all_j
      dT_i = s sum_j (c_r P2_ij + c_{r(j)} P1[j, i] - 2 c_r [j = o + i]) E_all_j
      ds   = c_r (sum (P1 - I) * Z1 + sum (P2 - I) * Z2)             (this rank's loss only: s is replicated)

    P2[j, i] (rank r(j)'s row j against our E_i) is a column of our own tile s E T_all^T, weighted by the column
    statistics of rank r(j): the backward all-gathers the row statistics (2 x b numbers per direction) and c_r of
    every rank, one small collective, and recomputes each tile of s E T_all^T and s T E_all^T once. Work per rank:
    2 u' forward + 4 u' backward (u' = 2 b N D), OpenCLIP's 6 u' without its [b, N] logits, and no reduce-scatter
    of [N, D] gradients: what each rank gets is what OpenCLIP's all_gather backward would hand it (the sum over
    ranks of the gathered embeddings' gradients), computed where it lands. Every rank must run the backward (as
    with any gather-with-gradient loss). The positives are subtracted inside P in fp32 before anything is rounded:
    for confident pairs P - I is small.
    Square case (E_all = E, T_all = T): dE = c s (P1 + P2^T - 2I) T, dT = c s (P1 + P2^T - 2I)^T E.
    Backend "triton" saves [2, n] log2 statistics (max, log2 sum) and the positives in log2 units; "torch" the
    natural-log LSE vectors and the raw positive dots.
    """

    @staticmethod
    def forward(ctx, e, t, e_all, t_all, s, backend, chunk, precision, offset, group):
        square = e_all is None
        if backend == "triton":  # lse1, lse2: [2, n] log2 stats; pos: the positives in log2 units
            if square:  # one pass: rows of s E T^T, its columns (= rows of s T E^T) and the positives
                lse1, lse2, pos = _tri_fwd(e, t, s, True, 0, precision)
                loss = 0.5 * (_row_losses(lse1, pos).mean() + _row_losses(lse2, pos).mean())
            else:
                lse1, _, pos = _tri_fwd(e, t_all, s, False, offset, precision)
                lse2, _, pos2 = _tri_fwd(t, e_all, s, False, offset, precision)
                loss = 0.5 * (_row_losses(lse1, pos).mean() + _row_losses(lse2, pos2).mean())
        else:
            pos = (e.float() * t.float()).sum(1)
            if square:  # one pass: rows of s E T^T and its columns (= rows of s T E^T)
                lse1, lse2 = _torch_lse(e, t, s, chunk, True)
            else:
                lse1, _ = _torch_lse(e, t_all, s, chunk, False)
                lse2, _ = _torch_lse(t, e_all, s, chunk, False)
            loss = 0.5 * (lse1.mean() + lse2.mean()) - s.float().reshape(()) * pos.mean()
        ctx.save_for_backward(e, t, e_all, t_all, s, lse1, lse2, pos)
        ctx.backend, ctx.chunk, ctx.square, ctx.precision, ctx.offset = backend, chunk, square, precision, offset
        ctx.group = group
        return loss

    @staticmethod
    def backward(ctx, g):
        e, t, e_all, t_all, s, lse1, lse2, pos = ctx.saved_tensors
        need = ctx.needs_input_grad
        b = e.shape[0]
        sf = s.float().reshape(())
        c = g.float().reshape(()) * (0.5 / b)  # d loss / d(sum of the 2b CE terms)
        need_ds = need[4]
        with torch.autocast(device_type=e.device.type, enabled=False):
            if ctx.square:
                cs, wts = c * sf, None
            else:  # every rank's statistics and c_r; weights relative to kappa (c_r, or 1 if c_r = 0)
                lse1_all, lse2_all, c_all = _exchange(lse1, lse2, c, ctx.group)
                kappa = torch.where(c != 0, c, torch.ones_like(c))
                wa = (c / kappa).reshape(1)
                wb = (c_all / kappa).repeat_interleave(b)
                cs = kappa * sf
                wts = (lse1_all, lse2_all, wa, wb)
            if ctx.backend == "triton":
                dE, dT, ds_sum = _tri_backward(e, t, e_all, t_all, s, lse1, lse2, need, wts,
                                               cs.reshape(1).contiguous(), ctx.precision, ctx.offset)
                fin = _keep
            else:
                dE, dT, ds_sum = _torch_backward(e, t, e_all, t_all, s, lse1, lse2, need, wts, ctx.chunk,
                                                 ctx.offset)

                def fin(d, like):
                    return None if d is None else (d * cs).to(like.dtype)

        ds = (c * ds_sum).to(s.dtype).reshape(s.shape) if need_ds else None
        return fin(dE, e), fin(dT, t), None, None, ds, None, None, None, None, None


def _keep(d, like):
    return d


def _exchange(lse1, lse2, c, group):
    """All ranks' row statistics of both directions and their c_r, in one all_gather of (2 n + 1) floats per rank:
    lse1_all, lse2_all shaped like the local ones with the row axis N = W b long (rank order), and c_all [W]."""
    import torch.distributed as dist

    flat = torch.cat([lse1.reshape(-1).float(), lse2.reshape(-1).float(), c.reshape(1)])
    world = dist.get_world_size(group)
    out = torch.empty(world * flat.numel(), device=flat.device, dtype=torch.float32)
    dist.all_gather_into_tensor(out, flat, group=group)
    return _unpack(out.view(world, -1), lse1.shape)


def _unpack(rows, shape):
    """[W, 2 n + 1] exchanged rows -> (lse1_all, lse2_all, c_all); shape: the local [n] or [2, n] statistics."""
    world, n = rows.shape[0], shape[-1]
    k = n * (2 if len(shape) == 2 else 1)

    def cat_rows(x):  # [W, (2,) n] -> [(2,) W n]: each statistic's rows in rank order
        return x.reshape(world, -1, n).transpose(0, 1).reshape(*shape[:-1], world * n).contiguous()

    return cat_rows(rows[:, :k]), cat_rows(rows[:, k:2 * k]), rows[:, 2 * k].contiguous()


def _torch_backward(e, t, e_all, t_all, s, lse1, lse2, need, wts, chunk, offset):
    """Unscaled gradients dE, dT (to be multiplied by cs) and sum (P - I) * Z, by row blocks."""
    need_ds = need[4]
    if wts is None:  # square: (P1 - I) + (P2 - I)^T
        dE, dT, ds = _torch_block_grads(e, t, s, lse1, lse2, need[0], need[1], need_ds, chunk, 0, 2.0)
        return dE, dT, ds
    lse1_all, lse2_all, wa, wb = wts
    dE, _, ds1 = _torch_block_grads(e, t_all, s, lse1, lse2_all, need[0], False, need_ds, chunk, offset, 2.0,
                                    wa, wb)
    dT, _, ds2 = _torch_block_grads(t, e_all, s, lse2, lse1_all, need[1], False, need_ds, chunk, offset, 2.0,
                                    wa, wb)
    return dE, dT, ds1 + ds2


def _tri_backward(e, t, e_all, t_all, s, lse1, lse2, need, wts, cs, precision, offset):
    """Scaled gradients (cs folded in, in the inputs' dtypes) and sum (P - I) * Z with the gradient kernel: one
    launch per output matrix, each tile of Z recomputed once per launch (4 U in the square case, 4 u' per rank
    with gathered embeddings). The positives are subtracted inside P on every launch (P - I), so no output is a
    difference of two rounded tensors."""
    need_ds = need[4]
    dE = dT = None
    ds = torch.zeros((), device=e.device, dtype=torch.float32)
    if wts is None:
        # dE_i = sum_j (P1_ij + P2_ji - 2 [i = j]) T_j; dT likewise with the roles swapped; sum (P - I) * Z once
        if need[0] or need_ds:
            dx, dsp = _tri_grad(e, t, s, lse1, lse2, cs, 2.0, 0, need_ds, precision, ds_coef=2.0)
            dE = dx if need[0] else None
            if need_ds:
                ds = dsp.sum()
        if need[1]:
            dT, _ = _tri_grad(t, e, s, lse2, lse1, cs, 2.0, 0, False, precision)
        return dE, dT, ds
    # rows of s E T_all^T: P1 by our row stats, P2 of every rank by its column stats; then s T E_all^T likewise.
    # ds: each launch's row part only (this rank's loss)
    lse1_all, lse2_all, wa, wb = wts
    if need[0] or need_ds:
        dx, dsp = _tri_grad(e, t_all, s, lse1, lse2_all, cs, 2.0, offset, need_ds, precision, ds_coef=1.0,
                            wa=wa, wb=wb, ds_rows=True)
        dE = dx if need[0] else None
        if need_ds:
            ds = ds + dsp.sum()
    if need[1] or need_ds:
        dx, dsp = _tri_grad(t, e_all, s, lse2, lse1_all, cs, 2.0, offset, need_ds, precision, ds_coef=1.0,
                            wa=wa, wb=wb, ds_rows=True)
        dT = dx if need[1] else None
        if need_ds:
            ds = ds + dsp.sum()
    return dE, dT, ds


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


def infonce_loss(ecg_emb, text_emb, logit_scale, impl: str = "reference", *, group=None,
                 chunk_size: int = 1024, precision: str | None = None) -> torch.Tensor:
    """This rank's symmetric InfoNCE loss, 0.5 * (CE(s E T_g^T, labels) + CE(s T E_g^T, labels)).

    ecg_emb, text_emb: [B_local, D] fp32 / bf16 / fp16 on the same device (normalisation is not assumed).
    logit_scale: s itself (already exponentiated), a one-element tensor that may require grad (or a float).
    impl: "reference" | "chunked" | "fused" | "auto" (see the module docstring; melp_kernels/_dispatch.py).
    group: the process group to gather over when torch.distributed is initialised (default: the world);
    embeddings are gathered as with gradient (OpenCLIP's gather_with_grad; "chunked" / "fused" gather without
    autograd and hand each rank's rows the same gradient from its backward, which all-gathers 2 B_local + 1 numbers
    per direction, so every rank must run the backward), labels = arange(B_local) + rank * B_local; every rank must
    have the same B_local. Mean over ranks of the returned losses = the 1-process loss on the global batch;
    embedding gradients are W times the global-loss gradients, so averaging over ranks (DDP) gives the 1-process
    gradients.
    chunk_size: rows per block for "chunked" (peak extra memory about 5 * chunk_size * B_global * 4 bytes;
    605 MiB measured at B = 32768 with the default 1024).
    precision: fp32 dots of "fused": "tf32" (default on CUDA) | "tf32x3" | "ieee" (default off CUDA); ignored
    for bf16 / fp16 inputs and by the PyTorch paths (see the module docstring for the tolerances).
    Returns a 0-dim fp32 tensor.
    """
    s = _check(ecg_emb, text_emb, logit_scale)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"infonce_loss: chunk_size must be a positive int; got {chunk_size!r}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"infonce_loss: unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    impl = resolve_impl("infonce", impl, ecg_emb.device)
    if ecg_emb.dtype != torch.float32:
        prec = "ieee"  # half operands: the tensor-core dot whatever the flag says
    else:
        prec = precision or ("tf32" if ecg_emb.is_cuda else "ieee")
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
            if impl == "reference":  # OpenCLIP's way: the all_gather's backward reduce-scatters [N, D] gradients
                e_all = torch.cat(all_gather(e, grp), dim=0)
                t_all = torch.cat(all_gather(t, grp), dim=0)
            else:  # no autograd through the gather: _InfoNCE's backward computes each rank's rows' gradient
                e_all, t_all = _gather(e, grp, world), _gather(t, grp, world)

    # fp32 math whatever autocast says (an autocast bf16 matmul would round the logits themselves)
    with torch.autocast(device_type=e.device.type, enabled=False):
        if impl == "reference":
            return _reference(e, t, e_all, t_all, s, offset)
        sc = s.reshape(1) if s.dim() != 1 else s
        sc = sc if sc.is_contiguous() else sc.contiguous()
        return _InfoNCE.apply(e, t, e_all, t_all, sc, "triton" if impl == "fused" else "torch", chunk_size,
                              prec, offset, grp if e_all is not None else None)


def _gather(x, group, world):
    """All ranks' [b, D] rows in rank order ([W b, D]), detached: one all_gather_into_tensor."""
    out = torch.empty((world * x.shape[0], x.shape[1]), device=x.device, dtype=x.dtype)
    torch.distributed.all_gather_into_tensor(out, x.detach().contiguous(), group=group)
    return out
