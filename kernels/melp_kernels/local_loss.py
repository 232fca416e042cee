"""Local (beat-sentence) alignment loss of MELP, GLoRIA style: reference loop, batched PyTorch, fused Triton.

For ECG j with beats e_jq (q < K) and report i with sentences s_ik (k < S):

    a_qk    = e_jq . s_ik                                   raw dot product
    A1      = softmax over sentences k of a                 (valid sentences only)
    A2      = softmax over beats q of t1 * A1               (valid beats only)
    c_ik    = sum_q A2_qk e_jq                              beat context of sentence k
    cos_ik  = (s_ik . c_ik) / max(||s_ik|| ||c_ik||, 1e-8)  (eps on the norm product, as GLoRIA)
    S[j, i] = t3 * log sum_k exp(t2 * cos_ik)               (valid sentences only)
    loss    = 0.5 * (CE(S, arange) + CE(S^T, arange))

Algebra used by "batched" and "fused": s_ik . c_ik = sum_q A2_qk a_qk and ||c_ik||^2 = A2_k^T G_j A2_k with the
K x K Gram matrix G_j = E_j E_j^T, so the D-wide contexts c_ik are never formed. Only the dot products a
(B x B x K x S in "batched", one tile of many pairs in registers in "fused") and G (B x K x K) exist.

Masks: `beat_mask` [B, K] and `sent_mask` [B, S], bool, True = valid. Masked beats and sentences take no part
(their values are replaced with where() in "reference" / "batched" and never loaded by "fused", so NaN or huge
garbage there never leaks, and their gradients are 0).
Sample j is *valid* when ECG j has >= 1 valid beat AND report j has >= 1 valid sentence. Invalid samples are
removed from both rows and columns: the loss is 0.5 * (CE + CE) over the valid x valid submatrix of S, averaged
over the valid rows, so it equals the loss of the batch without those samples and the gradients of the others
are unchanged; invalid samples get zero gradient. With no valid sample the loss is a zero that still carries a
graph (all gradients zero).

Fused design (FlashAttention-shaped), 5 Triton launches and no other PyTorch op per fwd+bwd besides allocations
(autograd's own seed of backward() aside; on CUDA at small batches, where the dE pass splits, 2 more: the sum of
its partials and the cast; was about 85-100 ops of padding, masks, Gram, norms and CLIP glue). Every tile is
a^T = S_tile E_tile^T: rows BI reports x SP sentence slots, columns BJ ECGs x KP beat slots in the order of
_beat_cols, which puts the beats of an ECG in one thread's registers (the wgmma accumulator's column pattern), so
the softmax over beats and the three sums over beats (A2's normaliser, s . c, ||c||^2) are in-register adds and
the per-(j, i, k) epilogue (cosine, log-sum-exp) is not replicated across lanes; the softmax over sentences
reduces across 8 lanes. Inputs as they are ([B, K, D] contiguous, masks read as int8 views of the bool masks,
masked slots and rows past the batch never loaded).
- norms kernel: ||s|| of every sentence slot, once (the tile loops would otherwise reduce every S tile over D).
- forward kernel, program (ECG block, split): G_j = E_j E_j^T from its E tile (one [N, N] tensor-core dot masked
  to its diagonal blocks, loaded once for D <= 256), the report blocks walked in turn: a^T one (BI SP) x (BJ KP)
  tensor-core dot (128 x 64 at K = S = 16, bf16), the two softmaxes as segmented reductions over the 6-d view
  [BI, SP, NG, BJ, LPE, 2] of a^T (exp2 of fused multiply-adds, masked beats as -inf in the exponent, one
  reciprocal per segment; the softmax over beats of t1 A1 needs no max since |t1 A1| <= |t1| <= 80),
  ||c||^2 = A2^T G_j A2 through one 2-d dot with the block-diagonal Gram matrix, the log-sum-exp over sentences
  gives S[j, i]. It also writes G and has-a-beat / has-a-sentence flags (small workspaces) for the rest.
- CLIP kernel (one program): the masked 0.5 * (CE rows + CE columns) over the valid x valid submatrix and its
  gradient dL/dS [B, B] (row and online column log-sum-exps, two sweeps).
- backward: two passes recompute every tile; no dL/da tensor (B^2 K S, 1 GB at B = 1024, K = 32, S = 16) ever
  exists. sum_q A2 dL/dA2 has a closed form per segment and G_j (gnc2 A2) = gnc2 (G_j A2), so the backward adds
  no reduction over beats and no Gram dot to the recompute. The dE pass (program: ECG block x output-column
  chunk) walks all report blocks, accumulating (S_i^T ga^T) in fp32 registers as dE^T [BDO, BJ KP] and dL/dG_j,
  then adds 2 dG_j E_j (block-diagonal dot) and writes dE; the dS pass (program: report block x column chunk)
  walks all ECGs accumulating ga E_j and dL/d||s||, then adds (dL/d||s|| / ||s||) s and writes dS. No atomics.
  Extra memory: S and dL/dS [B, B] fp32, G [B, KP, KP], ||s||, flags, and at small batches fp32 partial sums of
  the split dE pass (12.1 MB at B = 1024, K = 32, S = 16; fused_workspace_bytes).
Matmul work per fwd+bwd, u = 2 B^2 K S D: 5 u D-wide at K = 16, D = 256, bf16 (a three times, the two
accumulations; the backward tiles that split D over programs recompute a once per split) plus the Gram dots.
bf16 inputs: tensor-core dots with fp32 accumulation, ga rounded to bf16 for the accumulating dots; fp16 and fp32
inputs: those dots on fp32 operands (fp16's range would flush small ga); fp32 inputs: "tf32x3" dots (3-pass
split, about fp32 accuracy) or precision="ieee". Under TRITON_INTERPRET=1 every dot operand is cast to fp32
(triton issue 11584) and computed exactly. The sm_90 builds (sm90_specs) have no stack frame: 128 x 32 dE tiles
and 128 x KP dS tiles (16-bit; 64-row tiles in fp32; under Triton >= 3.9 some 16-bit ones are 64-row tiles or
take another D chunk or one stage: _triton39_tiles); benchmarks/kernel_resources.py lists their instruction counts.

Precision: float32 and bfloat16 (and float16) inputs are computed with float32 accumulation and give a float32
loss; float64 inputs are computed in float64 by "reference" and "batched", in float32 by "fused".
"""
from __future__ import annotations


from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._dispatch import HAS_TRITON, interpreting, resolve_impl

if HAS_TRITON:
    import triton
    import triton.language as tl

__all__ = [
    "IMPLS",
    "local_alignment_loss",
    "local_similarity",
    "local_attention",
    "sm90_specs",
    "matmul_flops",
    "OpCounter",
]

IMPLS = ("reference", "batched", "fused", "auto")
COS_EPS = 1e-8  # eps on the norm product of the cosine
NC2_FLOOR = 1e-30  # ||c||^2 from the Gram form is clamped here before sqrt (a zero context has cos 0 anyway)


# ----------------------------------------------------------------------------------------------------------------
# dispatched-op counting (tests and benchmarks): what the CPU hands the GPU besides the Triton launches
# ----------------------------------------------------------------------------------------------------------------
_NO_LAUNCH = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "sym_size",
              "sym_stride", "sym_numel", "sym_storage_offset", "size", "stride", "numel", "lift_fresh", "alias",
              "_unsafe_view", "view", "reshape", "t", "transpose", "permute", "expand", "squeeze", "unsqueeze",
              "slice", "select", "as_strided", "diagonal", "unbind", "split", "chunk", "narrow", "_reshape_alias",
              "set_", "is_same_size", "_has_compatible_shallow_copy_type", "resolve_conj", "resolve_neg",
              "promote_types", "result_type"}
_LAUNCHING = [0]  # > 0 inside a Triton launch: the interpreter's own host copies are not the op's dispatches


class _launching:
    """Around a Triton launch: under TRITON_INTERPRET=1 the interpreter copies every tensor argument to the host
    and back through aten ops that a compiled launch does not issue; OpCounter files them under `skipped`."""

    def __enter__(self):
        _LAUNCHING[0] += 1

    def __exit__(self, *exc):
        _LAUNCHING[0] -= 1


def _make_op_counter():
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        """Counts the aten ops dispatched inside the `with` block that launch work (a kernel or a copy), leaving
        out those that launch nothing: views, reshapes, transposes, expand, detach, empty allocations, size
        queries. Triton launches are not aten ops and are not counted. `ops` lists the counted names in order,
        `skipped` the others."""

        def __init__(self):
            super().__init__()
            self.ops, self.skipped = [], []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            launches = not (name in _NO_LAUNCH or func.is_view or _LAUNCHING[0])
            (self.ops if launches else self.skipped).append(str(func))
            return func(*args, **(kwargs or {}))

        @property
        def count(self):
            return len(self.ops)

    return OpCounter


OpCounter = _make_op_counter()


# ----------------------------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------------------------
def _check(beats, beat_mask, sents, sent_mask):
    if not isinstance(beats, torch.Tensor) or beats.dim() != 3:
        raise ValueError(f"local loss: beats must be a [B, K, D] tensor, got {_shape(beats)}")
    if not isinstance(sents, torch.Tensor) or sents.dim() != 3:
        raise ValueError(f"local loss: sents must be a [B, S, D] tensor, got {_shape(sents)}")
    B, K, D = beats.shape
    if sents.shape[0] != B:
        raise ValueError(f"local loss: beats has batch {B} but sents has batch {sents.shape[0]}")
    if sents.shape[2] != D:
        raise ValueError(f"local loss: beats have width D={D} but sentences have width {sents.shape[2]}")
    S = sents.shape[1]
    if not isinstance(beat_mask, torch.Tensor) or tuple(beat_mask.shape) != (B, K):
        raise ValueError(f"local loss: beat_mask must be [B, K] = [{B}, {K}], got {_shape(beat_mask)}")
    if not isinstance(sent_mask, torch.Tensor) or tuple(sent_mask.shape) != (B, S):
        raise ValueError(f"local loss: sent_mask must be [B, S] = [{B}, {S}], got {_shape(sent_mask)}")
    if not (beats.is_floating_point() and sents.is_floating_point()):
        raise ValueError(f"local loss: beats and sents must be floating point, got {beats.dtype}, {sents.dtype}")
    devs = {beats.device, sents.device, beat_mask.device, sent_mask.device}
    if len(devs) != 1:
        raise ValueError(f"local loss: all inputs must be on one device, got {sorted(map(str, devs))}")
    return B, K, S, D


def _shape(x):
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _comp_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _prepare(beats, beat_mask, sents, sent_mask):
    """Bool masks, garbage in masked slots replaced by 0 (where(), so NaN cannot leak); beats and sents in one
    dtype (the wider of the two: under autocast the two encoders can hand different ones)."""
    if beats.dtype != sents.dtype:
        dt = torch.promote_types(beats.dtype, sents.dtype)
        beats, sents = beats.to(dt), sents.to(dt)
    beat_mask = beat_mask if beat_mask.dtype == torch.bool else beat_mask != 0
    sent_mask = sent_mask if sent_mask.dtype == torch.bool else sent_mask != 0
    beats = torch.where(beat_mask[..., None], beats, torch.zeros((), dtype=beats.dtype, device=beats.device))
    sents = torch.where(sent_mask[..., None], sents, torch.zeros((), dtype=sents.dtype, device=sents.device))
    return beats, beat_mask, sents, sent_mask


def _effective_masks(beat_mask, sent_mask):
    """Give an ECG with no beat (a report with no sentence) all its (zeroed) slots, so every pair stays finite.

    Pairs touching such a sample are never used: S marks them NaN and the loss drops them."""
    has_beat = beat_mask.any(dim=1)
    has_sent = sent_mask.any(dim=1)
    bm = beat_mask | ~has_beat[:, None]
    sm = sent_mask | ~has_sent[:, None]
    return bm, sm, has_beat, has_sent


def _zero_loss(beats, sents, dtype):
    # a zero that carries a graph to both inputs (inputs already sanitised, so no NaN * 0)
    return beats.to(dtype).sum() * 0.0 + sents.to(dtype).sum() * 0.0


def _resolve(impl, device, K, S, t1=4.0):
    asked = impl
    impl = resolve_impl("local loss", impl, device)
    if impl == "fused" and asked == "auto" and not abs(float(t1)) <= 80.0:
        return "batched"  # the fused softmax over beats takes |t1| <= 80
    if impl == "fused" and not fused_supported(K, S):
        if asked == "auto":
            return "batched"
        raise RuntimeError(f"local loss: impl 'fused' holds whole ECGs and reports in one tile: K = {K}, S = {S}, "
                           f"at most {MAX_KS} each; use impl 'batched'")
    return impl


# ----------------------------------------------------------------------------------------------------------------
# reference: the literal per-sample loop
# ----------------------------------------------------------------------------------------------------------------
def _pair_reference(e, s, t1, t2, t3):
    """e [Kv, D] valid beats, s [Sv, D] valid sentences -> (A2 [Kv, Sv], S_ji scalar)."""
    a = e @ s.T  # [Kv, Sv]
    A1 = torch.softmax(a, dim=1)  # over sentences
    A2 = torch.softmax(t1 * A1, dim=0)  # over beats
    c = A2.T @ e  # [Sv, D] beat context per sentence
    w12 = (s * c).sum(dim=-1)
    w1 = torch.linalg.vector_norm(s, dim=-1)
    w2 = torch.linalg.vector_norm(c, dim=-1)
    cos = w12 / (w1 * w2).clamp(min=COS_EPS)
    return A2, t3 * torch.logsumexp(t2 * cos, dim=0)


def _reference_sim(beats, beat_mask, sents, sent_mask, t1, t2, t3):
    B = beats.shape[0]
    nan = torch.full((), float("nan"), dtype=beats.dtype, device=beats.device)
    rows = []
    for j in range(B):
        row = []
        e = beats[j][beat_mask[j]]
        for i in range(B):
            s = sents[i][sent_mask[i]]
            if e.shape[0] == 0 or s.shape[0] == 0:
                row.append(nan)
            else:
                row.append(_pair_reference(e, s, t1, t2, t3)[1])
        rows.append(torch.stack(row))
    return torch.stack(rows)


def _reference_loss(beats, beat_mask, sents, sent_mask, t1, t2, t3):
    valid = beat_mask.any(dim=1) & sent_mask.any(dim=1)
    idx = [j for j in range(beats.shape[0]) if bool(valid[j])]
    n = len(idx)
    if n == 0:
        return _zero_loss(beats, sents, beats.dtype)
    ecgs = [beats[j][beat_mask[j]] for j in idx]
    reports = [sents[i][sent_mask[i]] for i in idx]
    sim = []
    for e in ecgs:
        sim.append(torch.stack([_pair_reference(e, s, t1, t2, t3)[1] for s in reports]))
    sim = torch.stack(sim)  # [n, n], rows ECGs, columns reports
    labels = torch.arange(n, device=beats.device)
    return 0.5 * (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels))


# ----------------------------------------------------------------------------------------------------------------
# batched: vectorised PyTorch, B x B x K x S intermediates, no D-wide contexts
# ----------------------------------------------------------------------------------------------------------------
def _batched_sim(beats, sents, bm, sm, t1, t2, t3):
    """beats [B, K, D], sents [B, S, D] (sanitised, compute dtype); bm, sm effective masks (>= 1 True per row).

    Returns S [B, B] (rows ECGs j, columns reports i), finite everywhere."""
    neg_inf = float("-inf")
    a = torch.einsum("jqd,ikd->jiqk", beats, sents)  # [Bj, Bi, K, S]
    A1 = torch.softmax(a.masked_fill(~sm[None, :, None, :], neg_inf), dim=3)
    A2 = torch.softmax((t1 * A1).masked_fill(~bm[:, None, :, None], neg_inf), dim=2)
    num = (A2 * a).sum(dim=2)  # s . c, [Bj, Bi, S]
    G = beats @ beats.transpose(1, 2)  # [Bj, K, K]
    GA = torch.einsum("jqr,jirk->jiqk", G, A2)
    nc2 = (A2 * GA).sum(dim=2)  # ||c||^2
    nc = nc2.clamp(min=NC2_FLOOR).sqrt()
    ns = torch.linalg.vector_norm(sents, dim=-1)  # [Bi, S]
    cos = num / (ns[None] * nc).clamp(min=COS_EPS)
    x = (t2 * cos).masked_fill(~sm[None], neg_inf)
    return t3 * torch.logsumexp(x, dim=2)


def _masked_clip_loss(sim, valid):
    """0.5 * (CE(S) + CE(S^T)) over the valid x valid submatrix, mean over valid rows; sim finite everywhere."""
    neg_inf = torch.full((), float("-inf"), dtype=sim.dtype, device=sim.device)
    zero = torch.zeros((), dtype=sim.dtype, device=sim.device)
    vv = valid[:, None] & valid[None, :]
    diag = torch.diagonal(sim)
    # invalid columns drop out of valid rows (-inf); invalid rows become a harmless constant row
    rows = torch.where(vv, sim, torch.where(valid[:, None], neg_inf, zero))
    cols = torch.where(vv, sim, torch.where(valid[None, :], neg_inf, zero))
    d = torch.where(valid, diag, zero)
    ce_r = torch.logsumexp(rows, dim=1) - d
    ce_c = torch.logsumexp(cols, dim=0) - d
    per = torch.where(valid, 0.5 * (ce_r + ce_c), zero)
    return per.sum() / valid.sum().clamp(min=1).to(sim.dtype)


# ----------------------------------------------------------------------------------------------------------------
# fused: Triton, tiles of BJ ECGs x BI reports = one (BJ*KP) x (BI*SP) tile of E_flat S_flat^T on tensor cores
# ----------------------------------------------------------------------------------------------------------------
MAX_KS = 128  # the fused tiles hold whole ECGs and reports: K and S up to this ("auto" uses "batched" above)
BEAT_COLS = 64  # columns of a tile: BJ ECGs x KP beat slots (BJ = 64 / KP: 4 at K <= 16, 2 at K = 32; 1 to 4)
FWD_ROWS = 128  # rows of a forward tile (BI reports x SP sentence slots; fp32 inputs: half)
BWD_ROWS = 128  # rows of a backward tile (fp32 inputs: half); the dE pass holds a [BDO, BJ KP] and the dS pass a
# [rows, BDO] fp32 accumulator in registers beside the tile
BE_COLS = 32  # beat columns of a dE tile (BJ = 32 / KP ECGs: 2 at K <= 16, 1 at K = 32)
NUM_STAGES = 2
WHOLE_D = 256  # 16-bit inputs with D up to this: whole-D tiles (the held tile loaded once per program)
OUT_D = 256  # the backward passes accumulate dE / dS over output column chunks of at most this width (bf16,
# K <= 16; half that otherwise: fp32 and fp16 take fp32 operands in the accumulating dots, K = 32 a larger tile state)
NORM_ROWS = 64  # sentence slots per program of the ||s|| kernel
CLIP_ELEMS = 4096  # elements of the B x B similarity matrix one step of the CLIP kernel holds


if HAS_TRITON:

    @triton.jit
    def _slot_masks(XM, blk, n, L, R: tl.constexpr, LP: tl.constexpr):
        """Masks of sample block blk (R samples x LP slots) of a [n, L] bool mask (read as int8): (raw [R * LP]
        bool: valid slot of a real sample, effective [R, LP] bool: raw, or slot 0 of a sample with no valid slot,
        so every segment of the softmaxes is non-empty; has [R] bool: the sample has a valid slot)."""
        r = tl.arange(0, R * LP)
        smp = blk * R + r // LP
        slot = r % LP
        raw = tl.load(XM + smp * L + slot, mask=(smp < n) & (slot < L), other=0) != 0
        m2 = tl.reshape(raw.to(tl.int32), [R, LP])
        has = tl.max(m2, axis=1)
        eff = tl.maximum(m2, ((tl.arange(0, LP)[None, :] == 0) & (has[:, None] == 0)).to(tl.int32))
        return raw, eff, has

    @triton.jit
    def _load_tile(X, blk, L, DIM, raw, R: tl.constexpr, LP: tl.constexpr, d0, BD: tl.constexpr,
                   F32DOT: tl.constexpr):
        """Rows of block blk of X [n, L, DIM] (contiguous), columns [d0, d0 + BD): [R * LP, BD]. Masked slots and
        rows past the batch are not read (0), so garbage there (NaN, inf) never enters a dot."""
        r = tl.arange(0, R * LP)
        base = X + tl.cast(blk * R, tl.int64) * L * DIM  # 64-bit block base, 32-bit offsets inside the block (loop
        # invariant: computed once, not per tile)
        offs_d = d0 + tl.arange(0, BD)
        x = tl.load(base + ((r // LP * L + r % LP) * DIM)[:, None] + offs_d[None, :],
                    mask=raw[:, None] & (offs_d < DIM)[None, :], other=0.0)
        if F32DOT:
            x = x.to(tl.float32)
        return x

    @triton.jit
    def _beat_cols(BMK, jb, n, K, BJ: tl.constexpr, KP: tl.constexpr):
        """The beat slots of ECG block jb (BJ ECGs, 1, 2 or 4) in the column order of a tile, N = BJ KP columns:
        column c = 8 g + 2 l + b (g < N / 8, l < 4, b < 2) holds ECG j = l // LPE, beat q = 2 LPE g + 2 (l % LPE)
        + b (LPE = 4 / BJ). In the wgmma accumulator lane l % 4 holds the columns 8 g + 2 l + {0, 1} of every g,
        so a thread holds all the beats of its ECG (LPE = 1) or a half / quarter of them, and the reductions over
        beats run in registers (a shuffle or two for LPE = 2, 4). Any order is correct; this one is fast.
        Returns (j [N], q [N], raw [N] bool: valid slot of a real sample, eff [N] bool: raw, or slot 0 of an ECG
        with no valid beat, has [BJ] int32: the ECG has a valid beat)."""
        NG: tl.constexpr = BJ * KP // 8
        LPE: tl.constexpr = 4 // BJ
        N: tl.constexpr = BJ * KP
        g = tl.arange(0, NG)[:, None, None, None]
        j = tl.arange(0, BJ)[None, :, None, None]
        l2 = tl.arange(0, LPE)[None, None, :, None]
        b = tl.arange(0, 2)[None, None, None, :]
        q4 = g * (2 * LPE) + l2 * 2 + b + j * 0
        j4 = j + q4 * 0
        smp = jb * BJ + j4
        raw4 = tl.load(BMK + smp * K + q4, mask=(smp < n) & (q4 < K), other=0) != 0
        has = tl.max(tl.max(tl.max(raw4.to(tl.int32), axis=3), axis=2), axis=0)  # [BJ]
        eff4 = raw4 | ((q4 == 0) & (has[None, :, None, None] == 0))
        return (tl.reshape(j4, [N]), tl.reshape(q4, [N]), tl.reshape(raw4, [N]), tl.reshape(eff4, [N]), has)

    @triton.jit
    def _load_beats(E, jb, K, DIM, jn, qn, raw, BJ: tl.constexpr, d0, BD: tl.constexpr, F32DOT: tl.constexpr):
        """Beat rows of ECG block jb in column order (_beat_cols), columns [d0, d0 + BD) of E [n, K, DIM]:
        [BJ KP, BD]; masked slots and rows past the batch are not read (0)."""
        base = E + tl.cast(jb * BJ, tl.int64) * K * DIM
        offs_d = d0 + tl.arange(0, BD)
        x = tl.load(base + ((jn * K + qn) * DIM)[:, None] + offs_d[None, :],
                    mask=raw[:, None] & (offs_d < DIM)[None, :], other=0.0)
        if F32DOT:
            x = x.to(tl.float32)
        return x

    @triton.jit
    def _sim_chunks(E, Sn, jb, ib, K, S, DIM, jn, qn, braw, sraw, BJ: tl.constexpr, BI: tl.constexpr,
                    SP: tl.constexpr, DP: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                    F32DOT: tl.constexpr, PREC: tl.constexpr):
        """a = S_tile E_tile^T [BM, BN] accumulated over column chunks of BD (the tiles that do not hold all of D)."""
        a = tl.zeros([BM, BN], dtype=tl.float32)
        for d0 in range(0, DP, BD):
            e = _load_beats(E, jb, K, DIM, jn, qn, braw, BJ, d0, BD, F32DOT)
            s = _load_tile(Sn, ib, S, DIM, sraw, BI, SP, d0, BD, F32DOT)
            a = tl.dot(s, tl.trans(e), a, input_precision=PREC)
        return a

    @triton.jit
    def _load_gram(G, jb, jn, qn, BJ: tl.constexpr, KP: tl.constexpr):
        """The block-diagonal [N, N] matrix of the Gram matrices G_j of ECG block jb in column order (0 between
        different ECGs), from G [n_jb BJ, KP, KP]."""
        same = jn[:, None] == jn[None, :]
        off = (jb * BJ + jn[:, None]).to(tl.int64) * (KP * KP) + qn[:, None] * KP + qn[None, :]
        return tl.load(G + off, mask=same, other=0.0)

    @triton.jit
    def _rcp(x, FAST: tl.constexpr):
        """1 / x: one MUFU reciprocal compiled (rcp.approx.ftz, about 1 ulp; the arguments here are sums >= 1, norms
        >= 1e-8 and sums of exponentials >= e^-80, all normal), exact division under the interpreter."""
        if FAST:
            return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                             is_pure=True, pack=1)
        else:
            return 1.0 / x

    @triton.jit
    def _beat_sum(x6):
        """Sum over the beats q of a [BI, SP, NG, BJ, LPE, 2] view: [BI, SP, BJ]."""
        return tl.sum(tl.sum(tl.sum(x6, axis=5), axis=4), axis=2)

    @triton.jit
    def _per_beat(y):
        """[BI, SP, BJ] -> broadcastable against the [BI, SP, NG, BJ, LPE, 2] view."""
        return y[:, :, None, :, None, None]

    @triton.jit
    def _tile_forward(a, Gb, bb6, sm6, sm3, ns3, t1, t2, BJ: tl.constexpr, KP: tl.constexpr, BI: tl.constexpr,
                      SP: tl.constexpr, GPREC: tl.constexpr, FAST: tl.constexpr):
        """From a^T = S_tile E_tile^T ([BI SP, BJ KP] fp32, rows sentences (i, k), columns beats (j, q) in
        _beat_cols order): the two softmaxes as segmented reductions over its 6-d view [BI, SP, NG, BJ, LPE, 2]
        (sentences: axis 1, across lanes; beats: axes 2, 4, 5, in registers), s . c and ||c||^2 (Gram form, one
        2-d dot with the block-diagonal Gb), the cosines and the log-sum-exp over sentences, [BI, BJ]."""
        LOG2E: tl.constexpr = 1.4426950408889634
        NG: tl.constexpr = BJ * KP // 8
        LPE: tl.constexpr = 4 // BJ
        a6 = tl.reshape(a, [BI, SP, NG, BJ, LPE, 2])
        # A1: softmax over the sentences k of report i (each report has >= 1 effective sentence): exp2 of a fused
        # multiply-add, one reciprocal per segment
        x1 = tl.where(sm6, a6, float("-inf"))
        m1 = tl.max(x1, axis=1) * LOG2E
        p1 = tl.exp2(x1 * LOG2E - m1[:, None])
        A1 = p1 * _rcp(tl.sum(p1, axis=1), FAST)[:, None]
        # A2: softmax over the beats q of ECG j of t1 * A1 (each ECG has >= 1 effective beat). |t1 A1| <= |t1| <=
        # 80 (the wrapper checks): exp neither overflows nor flushes, so no segment max is needed; masked beats:
        # bb6 = -inf in the exponent's fused multiply-add (0 for the others)
        p2 = tl.exp2(A1 * (t1 * LOG2E) + bb6)
        A2 = p2 * _per_beat(_rcp(_beat_sum(p2), FAST))
        num = _beat_sum(A2 * a6)  # s_ik . c_ik, [BI, SP, BJ]
        A2f = tl.reshape(A2, [BI * SP, BJ * KP])
        GA6 = tl.reshape(tl.dot(A2f, Gb, input_precision=GPREC), [BI, SP, NG, BJ, LPE, 2])  # G_j A2 (G symmetric)
        nc2 = _beat_sum(A2 * GA6)  # ||c_ik||^2
        nc = tl.sqrt(tl.maximum(nc2, 1e-30))
        prod = ns3 * nc
        den = tl.maximum(prod, 1e-8)
        rden = _rcp(den, FAST)
        x = tl.where(sm3, t2 * (num * rden), float("-inf"))
        mx = tl.max(x, axis=1)
        lse = mx + tl.log(tl.sum(tl.exp(x - mx[:, None, :]), axis=1))  # [BI, BJ]
        return a6, A1, A2, A2f, GA6, num, nc2, nc, prod, rden, x, lse

    @triton.jit
    def _tile_backward(a, Gb, bb6, sm6, sm3, ns3, gs, t1, t2, t3, BJ: tl.constexpr, KP: tl.constexpr,
                       BI: tl.constexpr, SP: tl.constexpr, GPREC: tl.constexpr, FAST: tl.constexpr):
        """Recompute the tile, then from gs = dL/dS[j, i] ([BI, BJ]): ga^T = dL/da^T ([BI SP, BJ KP] fp32), the
        tile's share of dL/dG_j (as A2 * gnc2 and A2: dG_j = sum (A2 gnc2) A2^T) and of dL/d||s|| ([BI, SP, BJ]).
        sum_q A2 dL/dA2 = gnum num + 2 gnc2 nc2 per segment, and G_j (gnc2 A2) = gnc2 (G_j A2): no reduction over
        beats and no Gram dot beyond the forward's."""
        a6, A1, A2, A2f, GA6, num, nc2, nc, prod, rden, x, lse = _tile_forward(a, Gb, bb6, sm6, sm3, ns3, t1, t2, BJ,
                                                                              KP, BI, SP, GPREC, FAST)
        w = tl.exp(x - lse[:, None, :])  # softmax over the valid k of t2 * cos
        gcos = gs[:, None, :] * (t3 * t2) * w
        gnum = gcos * rden
        gprod = tl.where(prod >= 1e-8, -gnum * num * rden, 0.0)
        gnc2 = tl.where(nc2 >= 1e-30, gprod * ns3 * 0.5 * _rcp(nc, FAST), 0.0)
        s1 = gnum * num + 2.0 * gnc2 * nc2  # sum_q A2 gA2
        # gA2 = gnum a + 2 gnc2 G_j A2; gA1 = t1 A2 (gA2 - s1)
        gA1 = (t1 * A2) * (_per_beat(gnum) * a6 + _per_beat(2.0 * gnc2) * GA6 - _per_beat(s1))
        ga6 = _per_beat(gnum) * A2 + A1 * (gA1 - tl.sum(A1 * gA1, axis=1)[:, None])
        ga = tl.reshape(ga6, [BI * SP, BJ * KP])
        return ga, tl.reshape(A2 * _per_beat(gnc2), [BI * SP, BJ * KP]), A2f, gprod * nc

    @triton.jit
    def _local_fwd_kernel(E, Sn, BMK, SMK, G, NS, FLAGS, OUT, n, K, S, D, n_ib, n_split, t1, t2, t3,
                          KP: tl.constexpr, SP: tl.constexpr, DP: tl.constexpr, BJ: tl.constexpr, BI: tl.constexpr,
                          BD: tl.constexpr, F32DOT: tl.constexpr, PREC: tl.constexpr, GPREC: tl.constexpr,
                          FAST: tl.constexpr):
        """E [n, K, D], Sn [n, S, D] (contiguous, input dtype), masks BMK [n, K], SMK [n, S] (bool read as int8).
        Program (jb, sp): ECG block jb (BJ ECGs, KP beat slots: the tile's columns) against report blocks sp,
        sp + n_split, ... (BI reports, SP sentence slots: its rows). G_j = E_j E_j^T comes from the E tile (one
        [N, N] dot, masked to the diagonal blocks), ||s|| from the S tiles; the masks are read as they are. Writes
        OUT[j, i] = S[j, i] ([n, n] fp32), G [n_jb * BJ, KP, KP] (programs sp = 0) for the backward, FLAGS [2, n]
        int32: has-a-beat (sp = 0) and has-a-sentence (jb = 0). Reads NS = ||s|| (_norms_kernel)."""
        BN: tl.constexpr = BJ * KP
        BM: tl.constexpr = BI * SP
        NG: tl.constexpr = BJ * KP // 8
        LPE: tl.constexpr = 4 // BJ
        jb = tl.program_id(0)
        sp = tl.program_id(1)
        jn, qn, bmr, bme, hb = _beat_cols(BMK, jb, n, K, BJ, KP)
        bb6 = tl.reshape(tl.where(bme, 0.0, float("-inf")), [1, 1, NG, BJ, LPE, 2])
        same = jn[:, None] == jn[None, :]
        # the block's Gram matrices from the E tile (loaded once for all report blocks when D fits)
        if BD == DP:
            e_all = _load_beats(E, jb, K, D, jn, qn, bmr, BJ, 0, DP, F32DOT)
            Gf = tl.dot(e_all, tl.trans(e_all), input_precision=GPREC)
        else:
            Gf = tl.zeros([BN, BN], dtype=tl.float32)
            for d0 in range(0, DP, BD):
                e = _load_beats(E, jb, K, D, jn, qn, bmr, BJ, d0, BD, F32DOT)
                Gf = tl.dot(e, tl.trans(e), Gf, input_precision=GPREC)
        Gb = tl.where(same, Gf, 0.0)
        jl = tl.arange(0, BJ)
        if sp == 0:
            g_off = (jb * BJ + jn[:, None]).to(tl.int64) * (KP * KP) + qn[:, None] * KP + qn[None, :]
            tl.store(G + g_off, Gb, mask=same)
            jg = jb * BJ + jl
            tl.store(FLAGS + jg, hb, mask=jg < n)
        for ib in range(sp, n_ib, n_split):
            smr, sm_eff, hs = _slot_masks(SMK, ib, n, S, BI, SP)
            if BD == DP:
                s = _load_tile(Sn, ib, S, D, smr, BI, SP, 0, DP, F32DOT)
                a = tl.dot(s, tl.trans(e_all), input_precision=PREC)
            else:
                a = _sim_chunks(E, Sn, jb, ib, K, S, D, jn, qn, bmr, smr, BJ, BI, SP, DP, BD, BM, BN, F32DOT, PREC)
            sm6 = tl.reshape(sm_eff, [BI, SP, 1, 1, 1, 1]) != 0
            sm3 = tl.reshape(sm_eff, [BI, SP, 1]) != 0
            ns3 = tl.reshape(tl.load(NS + ib * BM + tl.arange(0, BM)), [BI, SP, 1])
            lse = _tile_forward(a, Gb, bb6, sm6, sm3, ns3, t1, t2, BJ, KP, BI, SP, GPREC, FAST)[-1]
            jg = jb * BJ + jl
            ig = ib * BI + tl.arange(0, BI)
            tl.store(OUT + jg[None, :].to(tl.int64) * n + ig[:, None], t3 * lse,
                     mask=(jg < n)[None, :] & (ig < n)[:, None])
            if jb == 0:
                tl.store(FLAGS + n + ig, hs, mask=ig < n)

    @triton.jit
    def _norms_kernel(Sn, SMK, NS, n, S, D, R: tl.constexpr, SP: tl.constexpr, BD: tl.constexpr):
        """||s|| of R sentence slots per program (report r // SP, slot r % SP): NS [n_ib * BI * SP] fp32, 0 for
        masked slots and padding (never loaded). Once per forward: the tile loops read it rather than reduce their
        S tiles over D (a cross-lane reduction per row, per tile: a quarter of the forward's instructions)."""
        r = tl.program_id(0) * R + tl.arange(0, R)
        smp = r // SP
        slot = r % SP
        raw = tl.load(SMK + smp * S + slot, mask=(smp < n) & (slot < S), other=0) != 0
        row = smp.to(tl.int64) * S + slot
        acc = tl.zeros([R], dtype=tl.float32)
        for d0 in range(0, D, BD):
            offs_d = d0 + tl.arange(0, BD)
            x = tl.load(Sn + row[:, None] * D + offs_d[None, :], mask=raw[:, None] & (offs_d < D)[None, :],
                        other=0.0).to(tl.float32)
            acc += tl.sum(x * x, axis=1)
        tl.store(NS + r, tl.sqrt(acc))

    @triton.jit
    def _local_bwd_kernel(E, Sn, BMK, SMK, G, NS, GS, GOUT, GX, n, K, S, D, n_ob, n_sk, t1, t2, t3,
                          KP: tl.constexpr, SP: tl.constexpr, DP: tl.constexpr, BJ: tl.constexpr, BI: tl.constexpr,
                          BD: tl.constexpr, BDO: tl.constexpr, FOR_S: tl.constexpr, SCALED: tl.constexpr,
                          F32DOT: tl.constexpr, OPF32: tl.constexpr, PREC: tl.constexpr, GPREC: tl.constexpr,
                          FAST: tl.constexpr):
        """One backward pass, recomputing every tile (rows sentences, columns beats in _beat_cols order); no dL/da
        leaves the program.
        FOR_S = False: program (jb, dc) holds ECG block jb, walks all n_ob report blocks and accumulates
        dE_tile[:, dc-th BDO columns] = sum_i ga^T S_i + 2 dG_j E_j (dG_j = sum_i dL/dG_j, symmetric), written to
        GX (= dE [n, K, D], input dtype). FOR_S = True: program (ib, dc) holds report block ib, walks all n_ob ECG
        blocks and accumulates dS_tile = sum_j ga E_j + (dL/d||s|| / ||s||) s, written to GX (= dS [n, S, D]).
        gs = GS[j, i] (* GOUT[0] when SCALED: the loss's dL/dS times the upstream gradient). Masked slots get 0.
        OPF32: the accumulating dots take fp32 operands (fp32 and fp16 inputs), else ga is rounded to bf16.
        Program axis 2 (dE pass only): split sk of n_sk walks the partner blocks sk, sk + n_sk, ... and writes its
        fp32 partial sum (dG_j term included, it is linear) to GX + sk n K D (the caller adds the partials) when
        n_sk > 1: more programs than ECG blocks when the batch is small."""
        BN: tl.constexpr = BJ * KP
        BM: tl.constexpr = BI * SP
        NG: tl.constexpr = BJ * KP // 8
        LPE: tl.constexpr = 4 // BJ
        hb_ = tl.program_id(0)  # the held block
        dc = tl.program_id(1)
        sk = tl.program_id(2)
        d_out = dc * BDO
        jl = tl.arange(0, BJ)
        il = tl.arange(0, BI)
        if SCALED:
            gscale = tl.load(GOUT).to(tl.float32)
        else:
            gscale = 1.0
        if FOR_S:
            hr, h_eff, h_has = _slot_masks(SMK, hb_, n, S, BI, SP)
            sm6 = tl.reshape(h_eff, [BI, SP, 1, 1, 1, 1]) != 0
            sm3 = tl.reshape(h_eff, [BI, SP, 1]) != 0
            ns = tl.load(NS + hb_ * BM + tl.arange(0, BM))
            ns3 = tl.reshape(ns, [BI, SP, 1])
            acc = tl.zeros([BM, BDO], dtype=tl.float32)
            gns = tl.zeros([BM], dtype=tl.float32)
            if BD == DP:
                h_all = _load_tile(Sn, hb_, S, D, hr, BI, SP, 0, DP, F32DOT)
        else:
            jn, qn, hr, h_eff, h_has = _beat_cols(BMK, hb_, n, K, BJ, KP)
            bb6 = tl.reshape(tl.where(h_eff, 0.0, float("-inf")), [1, 1, NG, BJ, LPE, 2])
            Gb = _load_gram(G, hb_, jn, qn, BJ, KP)
            acc = tl.zeros([BDO, BN], dtype=tl.float32)  # dE^T: BDO rows, so its size does not follow BN
            dG = tl.zeros([BN, BN], dtype=tl.float32)
            if BD == DP:
                h_all = _load_beats(E, hb_, K, D, jn, qn, hr, BJ, 0, DP, F32DOT)
        for ob in range(sk, n_ob, n_sk):
            if FOR_S:
                jb = ob
                ib = hb_
                jn, qn, er, e_eff, _ = _beat_cols(BMK, jb, n, K, BJ, KP)
                bb6 = tl.reshape(tl.where(e_eff, 0.0, float("-inf")), [1, 1, NG, BJ, LPE, 2])
                Gb = _load_gram(G, jb, jn, qn, BJ, KP)
                if BD == DP:
                    e_t = _load_beats(E, jb, K, D, jn, qn, er, BJ, 0, DP, F32DOT)
                    a = tl.dot(h_all, tl.trans(e_t), input_precision=PREC)
                else:
                    a = _sim_chunks(E, Sn, jb, ib, K, S, D, jn, qn, er, hr, BJ, BI, SP, DP, BD, BM, BN, F32DOT,
                                    PREC)
            else:
                jb = hb_
                ib = ob
                sr, s_eff, _ = _slot_masks(SMK, ib, n, S, BI, SP)
                sm6 = tl.reshape(s_eff, [BI, SP, 1, 1, 1, 1]) != 0
                sm3 = tl.reshape(s_eff, [BI, SP, 1]) != 0
                ns3 = tl.reshape(tl.load(NS + ib * BM + tl.arange(0, BM)), [BI, SP, 1])
                if BD == DP:
                    s_t = _load_tile(Sn, ib, S, D, sr, BI, SP, 0, DP, F32DOT)
                    a = tl.dot(s_t, tl.trans(h_all), input_precision=PREC)
                else:
                    a = _sim_chunks(E, Sn, jb, ib, K, S, D, jn, qn, hr, sr, BJ, BI, SP, DP, BD, BM, BN, F32DOT,
                                    PREC)
            jg = jb * BJ + jl
            ig = ib * BI + il
            gs = tl.load(GS + jg[None, :].to(tl.int64) * n + ig[:, None], mask=(jg < n)[None, :] & (ig < n)[:, None],
                         other=0.0) * gscale
            ga, A2g, A2f, gns3 = _tile_backward(a, Gb, bb6, sm6, sm3, ns3, gs, t1, t2, t3, BJ, KP, BI, SP, GPREC,
                                                FAST)
            if OPF32:
                ga_op = ga
            else:
                ga_op = ga.to(tl.bfloat16)
            if FOR_S:
                if BD == DP and BDO == DP:
                    part = e_t
                else:
                    part = _load_beats(E, jb, K, D, jn, qn, er, BJ, d_out, BDO, F32DOT)
                if OPF32:
                    part = part.to(tl.float32)
                else:
                    part = part.to(tl.bfloat16)
                acc = tl.dot(ga_op, part, acc, input_precision=PREC)
                gns += tl.reshape(tl.sum(gns3, axis=2), [BM])
            else:
                if BD == DP and BDO == DP:
                    part = s_t
                else:
                    part = _load_tile(Sn, ib, S, D, sr, BI, SP, d_out, BDO, F32DOT)
                if OPF32:
                    part = part.to(tl.float32)
                else:
                    part = part.to(tl.bfloat16)
                acc = tl.dot(tl.trans(part), ga_op, acc, input_precision=PREC)
                dG = tl.dot(tl.trans(A2g), A2f, dG, input_precision=GPREC)
        offs_d = d_out + tl.arange(0, BDO)
        if FOR_S:
            # reloaded (L2) rather than kept alive in registers through the loop
            own = _load_tile(Sn, hb_, S, D, hr, BI, SP, d_out, BDO, True)
            acc += tl.where(ns > 0, gns / ns, 0.0)[:, None] * own  # d||s|| / ds = s / ||s||
            r = tl.arange(0, BM)
            smp = hb_ * BI + r // SP
            slot = r % SP
            row = smp.to(tl.int64) * S + slot
            tl.store(GX + row[:, None] * D + offs_d[None, :],
                     tl.where(hr[:, None], acc, 0.0).to(GX.dtype.element_ty),
                     mask=((smp < n) & (slot < S))[:, None] & (offs_d < D)[None, :])
        else:
            # reloaded (L2) rather than kept alive in registers through the loop
            own = _load_beats(E, hb_, K, D, jn, qn, hr, BJ, d_out, BDO, True)
            # 2 dG_j E_j for the BJ ECGs as one 2-d dot with the block-diagonal [BN, BN] matrix of the dG_j
            dGb = tl.where(jn[:, None] == jn[None, :], 2.0 * dG, 0.0)
            acc = tl.dot(tl.trans(own), dGb, acc, input_precision=GPREC)  # dG symmetric
            smp = hb_ * BJ + jn
            row = smp.to(tl.int64) * K + qn + sk.to(tl.int64) * n * K
            tl.store(GX + row[None, :] * D + offs_d[:, None], tl.where(hr[None, :], acc, 0.0).to(GX.dtype.element_ty),
                     mask=((smp < n) & (qn < K))[None, :] & (offs_d < D)[:, None])

    @triton.jit
    def _clip_kernel(SIM, FLAGS, LOSS, DSIM, RLSE, n, RB: tl.constexpr, BB: tl.constexpr):
        """Masked CLIP loss of the [n, n] similarity (rows ECGs, columns reports) in one program: sample k is valid
        when FLAGS[0, k] (has a beat) and FLAGS[1, k] (has a sentence); loss = 0.5 * (CE rows + CE columns) over
        the valid x valid submatrix, mean over the valid samples (0 when none). Writes LOSS[0] and
        DSIM = dloss / dS ([n, n], 0 outside valid x valid); RLSE [BB] is scratch (row log-sum-exps)."""
        cols = tl.arange(0, BB)
        cin = cols < n
        vc = (tl.load(FLAGS + cols, mask=cin, other=0) != 0) & (tl.load(FLAGS + n + cols, mask=cin, other=0) != 0)
        nv = tl.sum(vc.to(tl.float32), axis=0)
        cmax = tl.full([BB], float("-inf"), dtype=tl.float32)
        csum = tl.zeros([BB], dtype=tl.float32)
        total = tl.zeros([RB], dtype=tl.float32)
        for r0 in range(0, BB, RB):
            rows = r0 + tl.arange(0, RB)
            rin = rows < n
            vr = (tl.load(FLAGS + rows, mask=rin, other=0) != 0) & (tl.load(FLAGS + n + rows, mask=rin, other=0) != 0)
            vv = vr[:, None] & vc[None, :]
            x = tl.load(SIM + rows[:, None].to(tl.int64) * n + cols[None, :], mask=vv, other=0.0)
            xm = tl.where(vv, x, float("-inf"))
            rmax = tl.maximum(tl.max(xm, axis=1), -1e30)  # finite for a row with no valid entry
            rlse = rmax + tl.log(tl.sum(tl.exp(xm - rmax[:, None]), axis=1))
            tl.store(RLSE + rows, rlse)
            diag = tl.sum(tl.where(rows[:, None] == cols[None, :], x, 0.0), axis=1)
            total += tl.where(vr, rlse - diag, 0.0)
            # online column log-sum-exp
            bmax = tl.maximum(cmax, tl.max(xm, axis=0))
            safe = tl.maximum(bmax, -1e30)
            csum = csum * tl.exp(cmax - safe) + tl.sum(tl.exp(xm - safe[None, :]), axis=0)
            cmax = bmax
        clse = tl.maximum(cmax, -1e30) + tl.log(csum)
        # column terms: lse_c - diag_c over the valid columns (diag_c read once more)
        dg = tl.load(SIM + cols.to(tl.int64) * (n + 1), mask=vc, other=0.0)
        ctot = tl.sum(tl.where(vc, clse - dg, 0.0), axis=0)
        inv = 0.5 / tl.maximum(nv, 1.0)
        tl.store(LOSS, (tl.sum(total, axis=0) + ctot) * inv)
        for r0 in range(0, BB, RB):
            rows = r0 + tl.arange(0, RB)
            rin = rows < n
            vr = (tl.load(FLAGS + rows, mask=rin, other=0) != 0) & (tl.load(FLAGS + n + rows, mask=rin, other=0) != 0)
            vv = vr[:, None] & vc[None, :]
            x = tl.load(SIM + rows[:, None].to(tl.int64) * n + cols[None, :], mask=vv, other=0.0)
            rlse = tl.load(RLSE + rows)
            g = tl.exp(x - rlse[:, None]) + tl.exp(x - clse[None, :]) - 2.0 * (rows[:, None] == cols[None, :])
            tl.store(DSIM + rows[:, None].to(tl.int64) * n + cols[None, :], tl.where(vv, g * inv, 0.0),
                     mask=rin[:, None] & cin[None, :])


def _next_pow2(n):
    return 1 << max(0, (int(n) - 1).bit_length())


class _Cfg(NamedTuple):
    KP: int  # beat slots per ECG (pow2 >= 16: the Gram dots need 16-wide operands)
    SP: int  # sentence slots per report (pow2)
    DP: int  # D padded to a multiple of BD
    BJ: int  # ECGs per tile (all three kernels: the tile's columns, in _beat_cols order)
    BI_F: int  # reports per forward tile (its rows)
    BD: int  # D-chunk of the a = S E^T loop
    BJ_B: int  # ECGs per tile of the dE pass (= BJ; its [BJ KP, BDO_E] fp32 accumulator lives beside the tile)
    BI_E: int  # reports per tile of the dE pass
    BDO_E: int  # output columns per dE program (DP / BDO_E programs per ECG block, each recomputing its tiles)
    BJ_S: int  # ECGs per tile of the dS pass (= BJ)
    BI_B: int  # reports per tile of the dS pass (its accumulator is [BI_B SP, BDO_S])
    BDO_S: int  # output columns per dS program
    W_F: int  # warps of the forward (4 per 64 tile rows, one wgmma warpgroup each)
    W_E: int  # warps of the dE pass
    W_S: int  # warps of the dS pass
    ST_F: int  # pipeline stages of the forward
    ST_E: int  # pipeline stages of the dE pass (1: its next S tile's addresses and masks are not held in
    # registers beside the tile state, which would spill)
    ST_S: int  # pipeline stages of the dS pass (2 with whole-D 16-bit tiles, else 1: no stack frame)
    BD_E: int  # D-chunk of the dE pass's a = S E^T loop (BD but under _triton39_tiles)
    BD_S: int  # D-chunk of the dS pass's a loop


def _warps(rows):
    return max(4, min(8, rows // 16))


def _tile_cfg(B, K, S, D, wide16=True, bf16=None):
    """Tile shapes for a batch; wide16: 16-bit operands (bf16 / fp16), whose whole-D tiles fit in shared memory;
    bf16 (default: wide16): the backward's accumulating dots take bf16 operands (fp16 and fp32 take fp32). The
    backward sizes are those that build for sm_90 with no stack frame (benchmarks/kernel_resources.py; under
    Triton >= 3.9 with the changes of _triton39_tiles)."""
    bf16 = wide16 if bf16 is None else bf16
    KP = max(16, _next_pow2(K))
    SP = _next_pow2(S)
    nb = _next_pow2(B)
    shrink = 1 if wide16 else 2  # fp32: tf32x3 dots hold split operands, half the rows and columns
    BJ = max(1, min(4, BEAT_COLS // shrink // KP, nb))
    bi = lambda rows: max(1, min(rows // SP, nb), 16 // SP)  # noqa: E731 (>= 16 rows)
    BI_F = bi(FWD_ROWS // shrink)
    BD = max(16, _next_pow2(D)) if wide16 and D <= WHOLE_D else min(64, max(16, _next_pow2(D)))
    DP = -(-D // BD) * BD
    small = KP <= 16
    BI_B = bi(BWD_ROWS // shrink)

    def bdo(out_d):  # the widest power of two <= out_d that divides DP (a multiple of BD, a power of two)
        b = min(BD, out_d)
        while b * 2 <= out_d and DP % (b * 2) == 0:
            b *= 2
        return b

    # dE pass: BE_COLS beat columns (its accumulator is dE^T [BDO_E, BJ_B KP], BDO_E rows: as wide as bf16 allows
    # at any K); dS pass: one ECG per tile (its [rows, BDO_S] accumulator takes BDO_S / 2 registers per thread)
    # fp32 inputs (tf32x3 dots split their fp32 operands in registers): 64 and 32 output columns, one stage
    f = dict(BJ_B=max(1, min(BJ, BE_COLS // shrink // KP)), BI_E=BI_B,
             BDO_E=bdo((OUT_D if bf16 else OUT_D // 2) if wide16 else OUT_D // 4), BJ_S=1, BI_B=BI_B,
             BDO_S=bdo((OUT_D if bf16 and small else OUT_D // 2) if wide16 else OUT_D // 8))
    f.update({k: v for k, v in _BWD_OVERRIDE.items() if k in f})
    # the backward blocks index G and ||s|| as the forward wrote them (the same ECG blocks; its report blocks
    # cover theirs)
    assert BJ % f["BJ_B"] == 0 and BJ % f["BJ_S"] == 0 and BI_F % f["BI_B"] == 0 and BI_F % f["BI_E"] == 0, f
    w = dict(W_F=_warps(BI_F * SP), W_E=_warps(f["BI_E"] * SP), W_S=_warps(f["BI_B"] * SP),
             ST_F=NUM_STAGES if wide16 else 1, ST_E=1, ST_S=NUM_STAGES if wide16 and BD == DP else 1)
    w.update(BD_E=BD, BD_S=BD)
    if _TRITON39:
        _triton39_tiles(f, w, wide16, bf16, KP, BD, DP)
    w.update({k: v for k, v in _BWD_OVERRIDE.items() if k in w})
    return _Cfg(KP, SP, DP, BJ, BI_F, BD, **f, **w)


def _triton_at_least(major, minor):
    if not HAS_TRITON:
        return False
    return tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (major, minor)


_TRITON39 = _triton_at_least(3, 9)


def _triton39_tiles(f, w, wide16, bf16, KP, BD, DP):
    """Backward tiles for Triton >= 3.9, whose sm_90 builds of some 16-bit configs of _tile_cfg keep 8-48 B on a
    stack frame at 255 registers (3.6 and 3.7 build them with none; benchmarks/kernel_resources.py). Changes f and w
    (_tile_cfg's fields) in place. dS, bf16, K <= 16: whole-D tiles (D = 256) in one stage; D > 256: 64-row tiles
    on 8 warps, the a loop in 256-wide D chunks. dE, bf16, D > 256: 64-row tiles on 8 warps; fp16, K = 32, D = 256:
    the a loop in two 128-wide chunks instead of whole-D tiles."""
    if bf16 and KP <= 16 and f["BDO_S"] == 256:
        if BD == DP:
            w["ST_S"] = 1
        else:  # half the reports per tile (64 rows at training batches), the warps kept
            f["BI_B"], w["BD_S"] = max(1, f["BI_B"] // 2), 256 if DP % 256 == 0 else BD
    if bf16 and BD < DP:  # (bf16 implies wide16) half the reports per tile, the warps kept
        f["BI_E"] = max(1, f["BI_E"] // 2)
    if wide16 and not bf16 and BD == DP == 256 and KP == 32:
        w["BD_E"] = 128


_BWD_OVERRIDE: dict = {}  # tile experiments (benchmarks, sm_90 builds): fields of _Cfg to force


def _dot_precisions(dtype, precision=None):
    """(F32DOT, PREC, GPREC). bf16 / fp16 operands: tensor cores, fp32 accumulation. fp32 operands: `precision`
    ("tf32x3" by default, the 3-pass split that keeps about fp32 accuracy; "ieee" for exact fp32). The small Gram
    dots (||c||^2 is sensitive) run in tf32x3 unless `precision` is "ieee". Under the interpreter every dot operand
    is cast to fp32 (triton issue 11584) and computed exactly."""
    prec = precision or "tf32x3"
    if prec not in ("tf32x3", "ieee", "tf32"):
        raise ValueError(f"local loss: precision must be tf32x3, ieee or tf32, got {prec!r}")
    interp = interpreting()
    if interp or prec == "ieee":
        return True, "ieee", "ieee"
    if dtype == torch.float32:
        return True, prec, "tf32x3"
    return False, "tf32", "tf32"


def _programs_per_block(device, n_jb, n_ib):
    """Forward programs per ECG block: about four per multiprocessor in all (one is resident at a time: a short
    last wave costs less), each walking several report blocks with its E tile loaded once. Off CUDA (the
    interpreter) one program walks them all."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_ib, (4 * sms + n_jb - 1) // n_jb))


def _device_guard(device):
    import contextlib

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _fwd_meta(cfg, f32dot, prec, gprec):
    return dict(KP=cfg.KP, SP=cfg.SP, DP=cfg.DP, BJ=cfg.BJ, BI=cfg.BI_F, BD=cfg.BD, F32DOT=f32dot, PREC=prec,
                GPREC=gprec, FAST=not interpreting())


def _bwd_meta(cfg, for_s, scaled, opf32, f32dot, prec, gprec):
    return dict(KP=cfg.KP, SP=cfg.SP, DP=cfg.DP, BJ=cfg.BJ_S if for_s else cfg.BJ_B,
                BI=cfg.BI_B if for_s else cfg.BI_E, BD=cfg.BD_S if for_s else cfg.BD_E,
                BDO=cfg.BDO_S if for_s else cfg.BDO_E, FOR_S=for_s,
                SCALED=scaled, F32DOT=f32dot, OPF32=opf32, PREC=prec, GPREC=gprec, FAST=not interpreting())


def _cdiv(a, b):
    return -(-a // b)


SPLIT_BYTES = 32 * 2 ** 20  # the dE pass's fp32 partial sums (when split) stay below this


def _de_splits(device, programs, n_ob, numel, forced=None, sms=None):
    """Splits of the dE pass's walk over report blocks: enough programs to fill the GPU when the batch has few
    ECG blocks (fp32 partials of dE, at most SPLIT_BYTES, summed after). `forced` (tests): that many; off CUDA 1."""
    if forced:
        return max(1, min(int(forced), n_ob))
    if sms is None:
        if device.type != "cuda":
            return 1
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = sms // programs  # whole waves: at B = 256, K = 16 on 132 SMs, 64 ECG blocks x 2 splits
    return max(1, min(want, n_ob, 8, SPLIT_BYTES // max(1, 4 * numel)))


def _as_i8(m):
    """A bool mask read by the kernels as int8 (a view; other dtypes are compared with 0 once)."""
    m = m if m.dtype == torch.bool else m != 0
    return m.contiguous().view(torch.int8)


class _Fused:
    """The fused path's launches. forward: 1 launch (S, G, ||s||, has-beat / has-sentence flags), backward: 2
    launches (dE over ECG blocks, dS over report blocks), each recomputing its tiles; workspaces: G [B, KP, KP],
    ||s|| [B SP], flags [2, B] (no B^2 K S tensor)."""

    def __init__(self, beats, sents, bm8, sm8, t1, t2, t3, n_split, precision):
        if not abs(float(t1)) <= 80.0:
            raise ValueError(f"local loss: impl 'fused' takes |t1| <= 80 (exp(t1 * A1) is not shifted), got {t1}")
        self.E, self.Sn, self.bm8, self.sm8 = beats, sents, bm8, sm8
        self.t = (float(t1), float(t2), float(t3))
        self.B, self.K, self.D = beats.shape
        self.S = sents.shape[1]
        self.cfg = _tile_cfg(self.B, self.K, self.S, self.D, beats.dtype != torch.float32,
                             beats.dtype == torch.bfloat16)
        self.dots = _dot_precisions(beats.dtype, precision)
        self.n_split = n_split
        self.dev = beats.device

    def forward(self):
        cfg, B, dev = self.cfg, self.B, self.dev
        n_jb, n_ib = _cdiv(B, cfg.BJ), _cdiv(B, cfg.BI_F)
        n_sp = max(1, min(n_ib, self.n_split or _programs_per_block(dev, n_jb, n_ib)))
        f32 = torch.float32
        self.G = torch.empty((n_jb * cfg.BJ, cfg.KP, cfg.KP), dtype=f32, device=dev)
        self.NS = torch.empty((_cdiv(n_ib * cfg.BI_F * cfg.SP, NORM_ROWS) * NORM_ROWS,), dtype=f32, device=dev)
        self.flags = torch.empty((2, B), dtype=torch.int32, device=dev)
        sim = torch.empty((B, B), dtype=f32, device=dev)
        n_ns = self.NS.numel()
        with _device_guard(dev), _launching():
            _norms_kernel[(_cdiv(n_ns, NORM_ROWS),)](self.Sn, self.sm8, self.NS, B, self.S, self.D, R=NORM_ROWS,
                                                     SP=cfg.SP, BD=min(128, _next_pow2(self.D)), num_warps=4)
            _local_fwd_kernel[(n_jb, n_sp)](self.E, self.Sn, self.bm8, self.sm8, self.G, self.NS, self.flags, sim,
                                            B, self.K, self.S, self.D, n_ib, n_sp, *self.t, num_warps=cfg.W_F,
                                            num_stages=cfg.ST_F, **_fwd_meta(cfg, *self.dots))
        return sim

    def backward(self, gsim, gout=None):
        """(dE, dS) in the input dtype from gsim = dL/dS [B, B] fp32 (times gout[0] when given)."""
        cfg, B, dev = self.cfg, self.B, self.dev
        gE, gS = torch.empty_like(self.E), torch.empty_like(self.Sn)
        n_jb, n_js, n_ie, n_ib = _cdiv(B, cfg.BJ_B), _cdiv(B, cfg.BJ_S), _cdiv(B, cfg.BI_E), _cdiv(B, cfg.BI_B)
        n_de, n_ds = cfg.DP // cfg.BDO_E, cfg.DP // cfg.BDO_S
        opf32 = self.E.dtype != torch.bfloat16 or interpreting()
        scaled = gout is not None
        gout = gout if scaled else gsim
        t1, t2, t3 = self.t
        n_sk = _de_splits(dev, n_jb * n_de, n_ie, B * self.K * self.D, self.n_split)
        part = torch.empty((n_sk, B, self.K, self.D), dtype=torch.float32, device=dev) if n_sk > 1 else gE
        with _device_guard(dev), _launching():
            for for_s, grid, out, n_ob in ((False, (n_jb, n_de, n_sk), part, n_ie), (True, (n_ib, n_ds, 1), gS, n_js)):
                _local_bwd_kernel[grid](self.E, self.Sn, self.bm8, self.sm8, self.G, self.NS, gsim, gout, out, B,
                                        self.K, self.S, self.D, n_ob, grid[2], t1, t2, t3,
                                        num_warps=cfg.W_S if for_s else cfg.W_E,
                                        num_stages=cfg.ST_S if for_s else cfg.ST_E,
                                        **_bwd_meta(cfg, for_s, scaled, opf32, *self.dots))
        if n_sk > 1:  # 2 ops (1 for fp32 inputs): the partial sums of the split dE pass
            gE = part.sum(0) if gE.dtype == torch.float32 else part.sum(0).to(gE.dtype)
        return gE, gS

    def clip(self, sim):
        """(loss [] fp32, dloss/dS [B, B] fp32) of the masked CLIP loss, one launch."""
        B = self.B
        BB = _next_pow2(B)
        RB = max(1, min(BB, CLIP_ELEMS // BB))
        loss = torch.empty((), dtype=torch.float32, device=self.dev)
        dsim = torch.empty((B, B), dtype=torch.float32, device=self.dev)
        rlse = torch.empty((BB,), dtype=torch.float32, device=self.dev)
        with _device_guard(self.dev), _launching():
            _clip_kernel[(1,)](sim, self.flags, loss, dsim, rlse, B, RB=RB, BB=BB, num_warps=4)
        return loss, dsim


def fused_workspace_bytes(B, K, S, D, dtype=torch.bfloat16, sms=132):
    """Extra memory of one fused fwd+bwd beyond the inputs and their gradients, computed from the buffers the
    fused path allocates on a GPU with `sms` multiprocessors (132: H100 SXM, H200): S and dL/dS [B, B] fp32, G,
    ||s||, flags, the CLIP scratch, and the dE pass's fp32 partial sums when it splits (small batches only)."""
    cfg = _tile_cfg(B, K, S, D, dtype != torch.float32, dtype == torch.bfloat16)
    n_jb, n_ib = _cdiv(B, cfg.BJ), _cdiv(B, cfg.BI_F)
    ns = _cdiv(n_ib * cfg.BI_F * cfg.SP, NORM_ROWS) * NORM_ROWS
    n_sk = _de_splits(None, _cdiv(B, cfg.BJ_B) * (cfg.DP // cfg.BDO_E), _cdiv(B, cfg.BI_E), B * K * D, sms=sms)
    part = n_sk * B * K * D if n_sk > 1 else 0
    return 4 * (2 * B * B + n_jb * cfg.BJ * cfg.KP * cfg.KP + ns + 2 * B + _next_pow2(B) + part)


class _LocalLossFused(torch.autograd.Function):
    """The whole local loss (similarities and the masked CLIP loss) as one autograd node: 2 launches forward,
    2 backward, no PyTorch op besides allocations."""

    @staticmethod
    def forward(ctx, beats, sents, bm8, sm8, t1, t2, t3, n_split, precision):
        f = _Fused(beats, sents, bm8, sm8, t1, t2, t3, n_split, precision)
        loss, dsim = f.clip(f.forward())
        ctx.f, ctx.dsim = f, dsim
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        gE, gS = ctx.f.backward(ctx.dsim, gout.float() if gout.dtype != torch.float32 else gout)
        return gE, gS, None, None, None, None, None, None, None


class _LocalSimFused(torch.autograd.Function):
    """S [B, B] (fp32, rows ECGs, columns reports; pairs with an empty sample hold finite dummies) and the flags
    [2, B] (has a beat, has a sentence)."""

    @staticmethod
    def forward(ctx, beats, sents, bm8, sm8, t1, t2, t3, n_split, precision):
        f = _Fused(beats, sents, bm8, sm8, t1, t2, t3, n_split, precision)
        sim = f.forward()
        ctx.f = f
        ctx.mark_non_differentiable(f.flags)
        return sim, f.flags

    @staticmethod
    @once_differentiable
    def backward(ctx, gsim, _gflags):
        gE, gS = ctx.f.backward(gsim.float().contiguous())
        return gE, gS, None, None, None, None, None, None, None


def _fused_inputs(beats, sents, beat_mask, sent_mask):
    if beats.dtype != sents.dtype:
        dt = torch.promote_types(beats.dtype, sents.dtype)
        beats, sents = beats.to(dt), sents.to(dt)
    if beats.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        beats, sents = beats.float(), sents.float()
    return beats.contiguous(), sents.contiguous(), _as_i8(beat_mask), _as_i8(sent_mask)


def _fused_sim(beats, sents, bm, sm, t1, t2, t3, n_split=None, precision=None):
    """S [B, B] float32 through the Triton kernels (masks as given: a sample with no valid slot gives finite
    dummies in its row / column)."""
    e, s, bm8, sm8 = _fused_inputs(beats, sents, bm, sm)
    return _LocalSimFused.apply(e, s, bm8, sm8, t1, t2, t3, n_split, precision)[0]


def _fused_loss(beats, sents, bm, sm, t1, t2, t3, n_split=None, precision=None):
    e, s, bm8, sm8 = _fused_inputs(beats, sents, bm, sm)
    return _LocalLossFused.apply(e, s, bm8, sm8, t1, t2, t3, n_split, precision)


def fused_supported(K, S):
    return K <= MAX_KS and S <= MAX_KS


# ----------------------------------------------------------------------------------------------------------------
# sm_90 build specs (benchmarks/kernel_resources.py and the tests compile them with Triton's bundled ptxas)
# ----------------------------------------------------------------------------------------------------------------
# (K, S) of the shipped configs: K = S = 16, and the default max_beats 32 for the 16-bit training dtypes
SHIPPED_SHAPES = {"bf16": ((16, 16), (32, 16)), "fp16": ((16, 16), (32, 16)), "fp32": ((16, 16),)}
SM90_DTYPES = tuple(SHIPPED_SHAPES)  # benchmarks/kernel_resources.py compiles every one of them


def sm90_specs(D: int, dtype: str, shapes=None) -> list[dict]:
    """One dict per shipped config (per (K, S) in `shapes`: the forward and the two backward passes, dE and dS;
    and the CLIP kernel once) for input dtype "bf16", "fp16" or "fp32": name, fn (the @triton.jit function),
    signature, constexprs, num_warps, num_stages, divisible (the integer arguments that are multiples of 16 at the
    shipped shapes, as a launch specialises them). Compile with benchmarks/common.py's compile_spec (it assumes the
    16-byte aligned pointers the wrapper hands the launcher), TRITON_INTERPRET unset."""
    if dtype not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"sm90_specs: dtype must be bf16, fp16 or fp32, got {dtype!r}")
    f32dot = dtype == "fp32"
    prec = "tf32x3" if f32dot else "tf32"
    ints = {"n": "i32", "K": "i32", "S": "i32", "D": "i32"}
    temps = {"t1": "fp32", "t2": "fp32", "t3": "fp32"}
    out = []
    for K, S in shapes or SHIPPED_SHAPES[dtype]:
        cfg = _tile_cfg(1 << 16, K, S, D, not f32dot, dtype == "bf16")
        div = [k for k, v in (("n", 1 << 16), ("K", K), ("S", S), ("D", D)) if v % 16 == 0]
        ptrs = {"E": f"*{dtype}", "Sn": f"*{dtype}", "BMK": "*i8", "SMK": "*i8", "G": "*fp32", "NS": "*fp32"}
        cx = _fwd_meta(cfg, f32dot, prec, prec)
        sig = dict(ptrs, FLAGS="*i32", OUT="*fp32", **ints, n_ib="i32", n_split="i32", **temps,
                   **{k: "constexpr" for k in cx})
        rows, cols = cfg.BI_F * cfg.SP, cfg.BJ * cfg.KP
        trips = cfg.DP // cfg.BD  # the a = E S^T loop over D chunks (1: whole-D tiles)
        out.append(dict(name=f"local_fwd_K{K}_S{S}_D{D}_{dtype}", fn=_local_fwd_kernel, signature=sig,
                        constexprs=cx, num_warps=cfg.W_F, num_stages=cfg.ST_F, divisible=div,
                        config=(rows, cols, cfg.BD), hot_tile=(rows * cols, trips)))
        for for_s in (False, True):
            cx = _bwd_meta(cfg, for_s, True, dtype != "bf16", f32dot, prec, prec)
            sig = dict(ptrs, GS="*fp32", GOUT="*fp32", GX="*fp32" if not for_s else f"*{dtype}", **ints, n_ob="i32",
                       n_sk="i32", **temps,
                       **{k: "constexpr" for k in cx})
            rows, cols = cx["BI"] * cfg.SP, cx["BJ"] * cfg.KP
            # each of the DP / BDO output-column programs recomputes the tile: per element of a over the whole
            # pass, the loop's count is taken that many times (hot_tile's elements divided by it)
            n_col = cfg.DP // cx["BDO"]
            out.append(dict(name=f"local_bwd_{'dS' if for_s else 'dE'}_K{K}_S{S}_D{D}_{dtype}", fn=_local_bwd_kernel,
                            signature=sig, constexprs=cx, num_warps=cfg.W_S if for_s else cfg.W_E,
                            num_stages=cfg.ST_S if for_s else cfg.ST_E,
                            divisible=div, config=(rows, cols, cx["BDO"]),
                            hot_tile=(rows * cols / n_col, cfg.DP // cx["BD"])))
    BB = 1024  # the CLIP kernel at B = 1024 (its tile is CLIP_ELEMS at any B)
    out.append(dict(name=f"local_clip_B{BB}_{dtype}", fn=_clip_kernel,
                    signature={"SIM": "*fp32", "FLAGS": "*i32", "LOSS": "*fp32", "DSIM": "*fp32", "RLSE": "*fp32",
                               "n": "i32", "RB": "constexpr", "BB": "constexpr"},
                    constexprs={"RB": CLIP_ELEMS // BB, "BB": BB}, num_warps=4, num_stages=1, divisible=["n"]))
    return out


def matmul_flops(B, K, S, D, impl, dtype=torch.bfloat16):
    """(D-wide, Gram) matmul FLOPs one fwd+bwd of `impl` executes, padding included. In units of
    u = 2 B^2 K S D: fused 5 u D-wide (a in the forward, a again in each of the two backward passes, the dE and dS
    accumulations ga S and ga^T E) plus the Gram dots, 2-d dots with the block-diagonal [N, N] matrix of a tile's
    N = BJ KP beat columns (N / D u each: G A2 in the forward and in each backward pass, dG in the dE pass; G_j and
    2 dG_j E_j); batched 3 u (a and its two gradients); the reference loop and the naive vectorisation 6 u (they
    also form the D-wide contexts c = A2^T E, and their two gradients)."""
    u = 2.0 * B * B * K * S * D
    gram_e = 3 * 2.0 * B * K * K * D  # G = E E^T and its two gradients
    if impl == "fused":
        c = _tile_cfg(B, K, S, D, dtype != torch.float32, dtype == torch.bfloat16)
        Bj, Bi = _cdiv(B, c.BJ) * c.BJ, _cdiv(B, c.BI_F) * c.BI_F
        pe = 2.0 * _cdiv(B, c.BJ_B) * c.BJ_B * c.KP * _cdiv(B, c.BI_E) * c.BI_E * c.SP  # dE pass, padded
        ps = 2.0 * _cdiv(B, c.BJ_S) * c.BJ_S * c.KP * _cdiv(B, c.BI_B) * c.BI_B * c.SP  # dS pass, padded
        fwd = 2.0 * Bj * c.KP * Bi * c.SP
        # recomputed a per output-column program, plus one accumulation each
        wide = fwd * c.DP + pe * (c.DP // c.BDO_E + 1) * c.DP + ps * (c.DP // c.BDO_S + 1) * c.DP
        ne, ns = c.BJ_B * c.KP, c.BJ_S * c.KP  # beat columns of the backward tiles
        gram = fwd * c.BJ * c.KP + 2 * pe * (c.DP // c.BDO_E) * ne + ps * (c.DP // c.BDO_S) * ns + \
            2.0 * Bj * c.KP * (c.BJ * c.KP + ne) * c.DP
        return wide, gram
    if impl == "batched":
        return 3 * u, 3 * 2.0 * B * B * K * K * S + gram_e
    if impl in ("reference", "naive"):
        return 6 * u, 0.0
    raise ValueError(f"matmul_flops: unknown impl {impl!r}")


# ----------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------
def _sim_effective(beats, beat_mask, sents, sent_mask, t1, t2, t3, impl, **kw):
    """S [B, B] for sanitised inputs: finite everywhere; pairs with an empty ECG or report hold dummy values."""
    bm, sm, has_beat, has_sent = _effective_masks(beat_mask, sent_mask)
    cd = _comp_dtype(beats.dtype)
    with torch.autocast(device_type=beats.device.type, enabled=False):  # fp32 accumulation under autocast too
        return _batched_sim(beats.to(cd), sents.to(cd), bm, sm, t1, t2, t3), has_beat, has_sent


def local_alignment_loss(beats, beat_mask, sents, sent_mask, t1=4.0, t2=5.0, t3=10.0, impl="reference",
                         precision=None):
    """MELP beat-sentence loss (scalar). beats [B, K, D], beat_mask [B, K] bool, sents [B, S, D], sent_mask
    [B, S] bool (True = valid). impl: "reference" (per-sample loop), "batched" (vectorised PyTorch), "fused"
    (the Triton kernels, or a RuntimeError saying why they cannot run: on CPU tensors they run only under
    TRITON_INTERPRET=1, and K, S <= 128), "auto" (fused on CUDA when it can, else batched).
    precision: fused with fp32 inputs only, "tf32x3" (default) or "ieee" (exact fp32 dots, for parity checks).

    Samples with no valid beat or no valid sentence are dropped from rows and columns (see module docstring);
    with no valid sample the loss is 0 with zero gradients."""
    B, K, S, D = _check(beats, beat_mask, sents, sent_mask)
    impl = _resolve(impl, beats.device, K, S, t1)
    if impl == "fused" and B and K and S:
        # masks read as they are, masked slots never loaded: no sanitising, padding or mask op before the kernels
        cd = _comp_dtype(torch.promote_types(beats.dtype, sents.dtype))
        with torch.autocast(device_type=beats.device.type, enabled=False):
            loss = _fused_loss(beats, sents, beat_mask, sent_mask, t1, t2, t3, precision=precision)
        return loss if cd == torch.float32 else loss.to(cd)
    beats, beat_mask, sents, sent_mask = _prepare(beats, beat_mask, sents, sent_mask)
    cd = _comp_dtype(beats.dtype)
    if B == 0 or K == 0 or S == 0:
        return _zero_loss(beats, sents, cd)
    if impl == "reference":
        with torch.autocast(device_type=beats.device.type, enabled=False):
            return _reference_loss(beats.to(cd), beat_mask, sents.to(cd), sent_mask, t1, t2, t3)
    sim, has_beat, has_sent = _sim_effective(beats, beat_mask, sents, sent_mask, t1, t2, t3, impl)
    return _masked_clip_loss(sim, has_beat & has_sent)


def local_similarity(beats, beat_mask, sents, sent_mask, t1=4.0, t2=5.0, t3=10.0, impl="reference",
                     precision=None):
    """The B x B matrix S[j, i] (rows ECGs j, columns reports i) of the local loss, differentiable.

    S[j, i] is NaN where ECG j has no valid beat or report i has no valid sentence."""
    B, K, S, D = _check(beats, beat_mask, sents, sent_mask)
    impl = _resolve(impl, beats.device, K, S, t1)
    if impl == "fused" and B and K and S:
        cd = _comp_dtype(torch.promote_types(beats.dtype, sents.dtype))
        e, s, bm8, sm8 = _fused_inputs(beats, sents, beat_mask, sent_mask)
        with torch.autocast(device_type=beats.device.type, enabled=False):
            sim, flags = _LocalSimFused.apply(e, s, bm8, sm8, t1, t2, t3, None, precision)
        sim = sim if cd == torch.float32 else sim.to(cd)
        defined = (flags[0] != 0)[:, None] & (flags[1] != 0)[None, :]
        return torch.where(defined, sim, torch.full((), float("nan"), dtype=sim.dtype, device=sim.device))
    beats, beat_mask, sents, sent_mask = _prepare(beats, beat_mask, sents, sent_mask)
    cd = _comp_dtype(beats.dtype)
    if B == 0 or K == 0 or S == 0:
        return torch.full((B, B), float("nan"), dtype=cd, device=beats.device)
    if impl == "reference":
        with torch.autocast(device_type=beats.device.type, enabled=False):
            return _reference_sim(beats.to(cd), beat_mask, sents.to(cd), sent_mask, t1, t2, t3)
    sim, has_beat, has_sent = _sim_effective(beats, beat_mask, sents, sent_mask, t1, t2, t3, impl)
    defined = has_beat[:, None] & has_sent[None, :]
    return torch.where(defined, sim, torch.full((), float("nan"), dtype=sim.dtype, device=sim.device))


def local_attention(beats, beat_mask, sents, sent_mask, t1=4.0):
    """Per-sentence beat attention A2 [K, S] of one ECG-report pair: beats [K, D], sents [S, D], masks [K], [S].

    Column k is the distribution over valid beats that builds the context of sentence k (sums to 1); rows of
    masked beats and columns of masked sentences are 0. An empty ECG or report gives all zeros."""
    if beats.dim() != 2 or sents.dim() != 2:
        raise ValueError(f"local_attention: beats [K, D] and sents [S, D], got {_shape(beats)}, {_shape(sents)}")
    _check(beats[None], beat_mask[None] if isinstance(beat_mask, torch.Tensor) else beat_mask,
           sents[None], sent_mask[None] if isinstance(sent_mask, torch.Tensor) else sent_mask)
    beats, beat_mask, sents, sent_mask = _prepare(beats, beat_mask, sents, sent_mask)
    cd = _comp_dtype(beats.dtype)
    out = torch.zeros((beats.shape[0], sents.shape[0]), dtype=cd, device=beats.device)
    if not bool(beat_mask.any()) or not bool(sent_mask.any()):
        return out
    A2, _ = _pair_reference(beats[beat_mask].to(cd), sents[sent_mask].to(cd), t1, 1.0, 1.0)
    qi = beat_mask.nonzero()[:, 0]
    ki = sent_mask.nonzero()[:, 0]
    out[qi[:, None], ki[None, :]] = A2
    return out
