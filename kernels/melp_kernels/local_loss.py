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
(their values are replaced with where(), so NaN or huge garbage there never leaks, and their gradients are 0).
Sample j is *valid* when ECG j has >= 1 valid beat AND report j has >= 1 valid sentence. Invalid samples are
removed from both rows and columns: the loss is 0.5 * (CE + CE) over the valid x valid submatrix of S, averaged
over the valid rows, so it equals the loss of the batch without those samples and the gradients of the others
are unchanged; invalid samples get zero gradient. With no valid sample the loss is a zero that still carries a
graph (all gradients zero).

Fused design (FlashAttention-shaped): the wrapper pads E to [Bj, KP, DP] and S to [Bi, SP, DP] (KP = pow2 >= 16
beat slots, SP = pow2 sentence slots, padded samples get one dummy slot and a zero upstream gradient) and torch
computes G = E E^T [Bj, KP, KP] and ||s|| [Bi, SP] (fp32, differentiable). One Triton kernel works on tiles of
BJ ECGs x BI reports: a = E_tile S_tile^T is one (BJ KP) x (BI SP) tensor-core dot (128 x 64 at K = S = 16, bf16:
8 ECGs x 4 reports; the E tile is loaded once per program for D <= 256), the two softmaxes are segmented
reductions over its 4-d view [BJ, KP, BI, SP], ||c||^2 = A2^T G_j A2 a batched K x K dot, and the log-sum-exp
over sentences gives S[j, i] for the BJ x BI pairs. The backward launch recomputes each tile once and writes
ga = dL/da (input dtype, [Bj KP, Bi SP]), sum_i dL/dG_j and dL/d||s||; two GEMMs ga S and ga^T E give dE and
dS on tensor cores, autograd carries dL/dG and dL/d||s|| through the bmm and the norm. No atomics (partial sums
per program are added by torch). Matmul work per fwd+bwd, u = 2 B^2 K S D: 4 u D-wide (a twice, two GEMMs) plus
4 K x K Gram dots (KP / D u each). bf16 / fp16 inputs: tensor-core dots with fp32 accumulation (A1 held in 16 bits
in the backward); fp32 inputs: "tf32x3" dots (3-pass split, about fp32 accuracy) or precision="ieee". Under
TRITON_INTERPRET=1 every dot operand is cast to fp32 (triton issue 11584) and computed exactly.

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
              "set_", "is_same_size", "_has_compatible_shallow_copy_type", "resolve_conj", "resolve_neg"}


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
            launches = not (name in _NO_LAUNCH or func.is_view)
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


def _resolve(impl, device, K, S):
    asked = impl
    impl = resolve_impl("local loss", impl, device, IMPLS, "batched")
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
TILE_ROWS = 128  # rows of a tile (BJ ECGs x KP beat slots)
FWD_COLS = 64  # columns of a forward tile (BI reports x SP sentence slots)
BWD_ELEMS = 4096  # elements of a backward tile (rows x columns): what 8 warps hold without spilling
FWD_WARPS = BWD_WARPS = 8
NUM_STAGES = 2
WHOLE_D = 256  # 16-bit inputs with D up to this: the E tile is loaded once per program, whole-D dots


if HAS_TRITON:

    @triton.jit
    def _local_tiles_kernel(E, Sn, G, NS, BMK, SMK, GOUT, OUT, GA, DG, GNS, n_ib, n_split, t1, t2, t3,
                            KP: tl.constexpr, SP: tl.constexpr, DP: tl.constexpr, BJ: tl.constexpr,
                            BI: tl.constexpr, BD: tl.constexpr, BACKWARD: tl.constexpr, F32DOT: tl.constexpr,
                            PREC: tl.constexpr, GPREC: tl.constexpr):
        """Inputs padded by the caller (no bounds checks here): E [n_jb * BJ, KP, DP], Sn [n_ib * BI, SP, DP],
        G [n_jb * BJ, KP, KP], masks BMK [n_jb * BJ, KP], SMK / norms NS [n_ib * BI, SP] (int8 / fp32).

        Program (jb, sp): ECG block jb (BJ ECGs of KP beat slots) against report blocks ib = sp, sp + n_split, ...
        (BI reports of SP sentence slots). Per tile: a = E_tile S_tile^T (tensor cores, fp32 accumulation), the two
        softmaxes as segmented reductions over the 4-d view [BJ, KP, BI, SP] of a, ||c||^2 in Gram form (batched
        dot G_j A2), the log-sum-exp over sentences.
        Forward: OUT[j, i] = S[j, i] ([n_jb * BJ, n_ib * BI], fp32). Backward: from GOUT (same shape) writes
        ga = dL/da of the tile into GA [n_jb * BJ * KP, n_ib * BI * SP] (the caller's two GEMMs turn it into dE
        and dS), sum over its reports of dL/dG_j into DG [n_split, n_jb * BJ, KP, KP] and sum over the block's
        ECGs of dL/d||s_ik|| into GNS [n_jb, n_ib * BI * SP]."""
        BM: tl.constexpr = BJ * KP
        BN: tl.constexpr = BI * SP
        jb = tl.program_id(0).to(tl.int64)
        sp = tl.program_id(1).to(tl.int64)
        n_i = n_ib * BI  # padded number of reports (columns of OUT)
        n_c = n_ib * BN  # columns of GA
        r = tl.arange(0, BM)
        c = tl.arange(0, BN)
        offs_d = tl.arange(0, BD)
        e_ptr = (E + jb * (BM * DP)) + (r[:, None] * DP + offs_d[None, :])
        bm4 = tl.reshape(tl.load((BMK + jb * BM) + r), [BJ, KP, 1, 1]) != 0
        jl = tl.arange(0, BJ)
        gq = tl.arange(0, KP)
        g_off = jl[:, None, None] * (KP * KP) + gq[None, :, None] * KP + gq[None, None, :]
        G3 = tl.load((G + jb * (BJ * KP * KP)) + g_off)
        dG = tl.zeros([BJ, KP, KP], dtype=tl.float32)
        if BD == DP:  # the whole E tile fits: load it once for all report blocks (FlashAttention's Q tile)
            e_all = tl.load(e_ptr)
            if F32DOT:
                e_all = e_all.to(tl.float32)
        for ib in range(sp, n_ib, n_split):
            s_ptr = (Sn + ib * (BN * DP)) + (c[:, None] * DP + offs_d[None, :])
            if BD == DP:
                s = tl.load(s_ptr)
                if F32DOT:
                    s = s.to(tl.float32)
                a = tl.dot(e_all, tl.trans(s), input_precision=PREC)
            else:
                a = tl.zeros([BM, BN], dtype=tl.float32)
                for d0 in range(0, DP, BD):
                    e = tl.load(e_ptr + d0)
                    s = tl.load(s_ptr + d0)
                    if F32DOT:
                        e = e.to(tl.float32)
                        s = s.to(tl.float32)
                    a = tl.dot(e, tl.trans(s), a, input_precision=PREC)
            sm_c = tl.load((SMK + ib * BN) + c)
            sm4 = tl.reshape(sm_c, [1, 1, BI, SP]) != 0
            sm3 = tl.reshape(sm_c, [1, BI, SP]) != 0
            ns3 = tl.reshape(tl.load((NS + ib * BN) + c), [1, BI, SP])
            a4 = tl.reshape(a, [BJ, KP, BI, SP])
            # A1: softmax over the sentences k of report i (each report has >= 1 valid sentence)
            x1 = tl.where(sm4, a4, float("-inf"))
            p1 = tl.exp(x1 - tl.max(x1, axis=3)[:, :, :, None])
            A1 = p1 * (1.0 / tl.sum(p1, axis=3))[:, :, :, None]  # one division per segment
            # A2: softmax over the beats q of ECG j of t1 * A1 (each ECG has >= 1 valid beat)
            x2 = tl.where(bm4, t1 * A1, float("-inf"))
            p2 = tl.exp(x2 - tl.max(x2, axis=1)[:, None, :, :])
            A2 = p2 * (1.0 / tl.sum(p2, axis=1))[:, None, :, :]
            if BACKWARD and not F32DOT:
                # bf16 / fp16 inputs: A1 waits for the gradient in 16 bits (half the registers); ga is rounded to
                # bf16 for the GEMMs anyway
                A1 = A1.to(E.dtype.element_ty)
            num = tl.sum(A2 * a4, axis=1)  # s_ik . c_ik, [BJ, BI, SP]
            A2_3 = tl.reshape(A2, [BJ, KP, BN])
            GA4 = tl.reshape(tl.dot(G3, A2_3, input_precision=GPREC), [BJ, KP, BI, SP])  # G_j A2
            nc2 = tl.sum(A2 * GA4, axis=1)  # ||c_ik||^2
            nc = tl.sqrt(tl.maximum(nc2, 1e-30))
            prod = ns3 * nc
            den = tl.maximum(prod, 1e-8)
            x = tl.where(sm3, t2 * (num / den), float("-inf"))
            mx = tl.max(x, axis=2)
            lse = mx + tl.log(tl.sum(tl.exp(x - mx[:, :, None]), axis=2))  # [BJ, BI]
            o_base = jb * BJ * n_i + ib * BI
            o_off = jl[:, None] * n_i + tl.arange(0, BI)[None, :]
            if BACKWARD:
                gs = tl.load((GOUT + o_base) + o_off)
                w = tl.exp(x - lse[:, :, None])  # softmax over the valid k of t2 * cos
                gcos = gs[:, :, None] * (t3 * t2) * w
                gnum = gcos / den
                gprod = tl.where(prod >= 1e-8, -gcos * num / (den * den), 0.0)
                gnc2 = tl.where(nc2 >= 1e-30, gprod * ns3 * 0.5 / nc, 0.0)
                gnum4 = gnum[:, None, :, :]
                gnc24 = gnc2[:, None, :, :]
                # gA2 = gnum * a + 2 gnc2 * (G_j A2) = gnum * a + G_j (2 gnc2 A2): G_j A2 is recomputed rather
                # than kept alive through the forward part (a smaller register set)
                gA2 = gnum4 * a4 + tl.reshape(tl.dot(G3, tl.reshape(2.0 * gnc24 * A2, [BJ, KP, BN]),
                                                     input_precision=GPREC), [BJ, KP, BI, SP])
                gA1 = t1 * (A2 * (gA2 - tl.sum(A2 * gA2, axis=1)[:, None, :, :]))
                ga4 = gnum4 * A2 + A1 * (gA1 - tl.sum(A1 * gA1, axis=3)[:, :, :, None])
                ga_ptr = (GA + (jb * BM * n_c + ib * BN)) + (r[:, None] * n_c + c[None, :])
                tl.store(ga_ptr, tl.reshape(ga4, [BM, BN]).to(GA.dtype.element_ty))
                dG = tl.dot(tl.reshape(A2 * gnc24, [BJ, KP, BN]), tl.permute(A2_3, (0, 2, 1)), dG,
                            input_precision=GPREC)
                tl.store((GNS + (jb * n_c + ib * BN)) + c, tl.reshape(tl.sum(gprod * nc, axis=0), [BN]))
            else:
                tl.store((OUT + o_base) + o_off, t3 * lse)
        if BACKWARD:
            tl.store((DG + (sp * tl.num_programs(0) + jb) * (BJ * KP * KP)) + g_off, dG)


def _next_pow2(n):
    return 1 << max(0, (int(n) - 1).bit_length())


class _Cfg(NamedTuple):
    KP: int  # beat slots per ECG (pow2 >= 16: the batched Gram dots need 16-wide operands)
    SP: int  # sentence slots per report (pow2)
    DP: int  # D padded to a multiple of BD
    BJ: int  # ECGs per tile
    BI_F: int  # reports per forward tile
    BI_B: int  # reports per backward tile (divides BI_F)
    BD: int  # D-chunk of the a = E S^T loop
    Bj: int  # padded batch of ECGs (multiple of BJ)
    Bi: int  # padded batch of reports (multiple of BI_F)


def _tile_cfg(B, K, S, D, wide16=True):
    """Tile shapes for a batch; wide16: 16-bit operands (bf16 / fp16), whose whole-D tiles fit in shared memory."""
    KP = max(16, _next_pow2(K))
    SP = _next_pow2(S)
    BJ = max(1, min(TILE_ROWS // KP, _next_pow2(B)))
    shrink = 1 if wide16 else 2  # fp32: tf32x3 dots hold split operands, half the columns
    bi = lambda cols: max(1, min(cols // SP, _next_pow2(B)), 16 // SP)  # noqa: E731 (>= 16 columns)
    BI_B = bi(max(16, BWD_ELEMS // shrink // (BJ * KP) // max(1, KP // 16)))
    BI_F = max(bi(FWD_COLS // shrink // max(1, KP // 16)), BI_B)
    BD = max(16, _next_pow2(D)) if wide16 and D <= WHOLE_D else min(64, max(16, _next_pow2(D)))
    return _Cfg(KP, SP, -(-D // BD) * BD, BJ, BI_F, BI_B, BD, -(-B // BJ) * BJ, -(-B // BI_F) * BI_F)


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
    """Programs per ECG block: about four per multiprocessor in all (one is resident at a time: a short last
    wave costs less), each walking several report blocks with its E tile loaded once. Off CUDA (the interpreter)
    one program walks them all."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_ib, (4 * sms + n_jb - 1) // n_jb))


def _device_guard(device):
    import contextlib

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _meta(cfg, bwd, f32dot, prec, gprec):
    return dict(KP=cfg.KP, SP=cfg.SP, DP=cfg.DP, BJ=cfg.BJ, BI=cfg.BI_B if bwd else cfg.BI_F, BD=cfg.BD,
                BACKWARD=bwd, F32DOT=f32dot, PREC=prec, GPREC=gprec)


class _LocalSimFused(torch.autograd.Function):
    """S [Bj, Bi] (padded) from the padded E [Bj, KP, DP], S [Bi, SP, DP] (input dtype) and the fp32 side inputs
    G = E E^T [Bj, KP, KP], ||s|| [Bi, SP]; gradients wrt G and ||s|| go back to autograd (the bmm and the norm)."""

    @staticmethod
    def forward(ctx, E, Sn, G, NS, BMK, SMK, cfg, t1, t2, t3, n_split, precision):
        dots = _dot_precisions(E.dtype, precision)
        n_jb, n_ib = cfg.Bj // cfg.BJ, cfg.Bi // cfg.BI_F
        n_sp = max(1, min(n_ib, n_split or _programs_per_block(E.device, n_jb, n_ib)))
        out = torch.empty((cfg.Bj, cfg.Bi), dtype=torch.float32, device=E.device)
        with _device_guard(E.device):
            # program (jb, sp) loads its E tile once and walks the report blocks sp, sp + n_sp, ...
            _local_tiles_kernel[(n_jb, n_sp)](E, Sn, G, NS, BMK, SMK, out, out, out, out, out, n_ib, n_sp,
                                              float(t1), float(t2), float(t3), num_warps=FWD_WARPS,
                                              num_stages=NUM_STAGES, **_meta(cfg, False, *dots))
        ctx.save_for_backward(E, Sn, G, NS, BMK, SMK)
        ctx.cfg = (cfg, float(t1), float(t2), float(t3), n_split, dots)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        E, Sn, G, NS, BMK, SMK = ctx.saved_tensors
        cfg, t1, t2, t3, n_split, dots = ctx.cfg
        dev = E.device
        n_jb, n_ib = cfg.Bj // cfg.BJ, cfg.Bi // cfg.BI_B
        n_split = max(1, min(n_ib, n_split or _programs_per_block(dev, n_jb, n_ib)))
        gout = gout.to(torch.float32).contiguous()
        # 16-bit inputs: ga in bf16 (fp16's range would flush the small gradients of large batches)
        ga_dtype = torch.bfloat16 if E.dtype in (torch.bfloat16, torch.float16) else torch.float32
        ga = torch.empty((cfg.Bj * cfg.KP, cfg.Bi * cfg.SP), dtype=ga_dtype, device=dev)
        gG = torch.empty((n_split, cfg.Bj, cfg.KP, cfg.KP), dtype=torch.float32, device=dev)
        gN = torch.empty((n_jb, cfg.Bi * cfg.SP), dtype=torch.float32, device=dev)
        with _device_guard(dev):
            _local_tiles_kernel[(n_jb, n_split)](E, Sn, G, NS, BMK, SMK, gout, gout, ga, gG, gN, n_ib, n_split,
                                                 t1, t2, t3, num_warps=BWD_WARPS, num_stages=NUM_STAGES,
                                                 **_meta(cfg, True, *dots))
        # dE = ga S and dS = ga^T E: two GEMMs over the (Bj KP) x (Bi SP) matrix ga, fp32 accumulation
        Ef, Sf = E.to(ga_dtype), Sn.to(ga_dtype)
        gE = (ga @ Sf.view(cfg.Bi * cfg.SP, cfg.DP)).view(E.shape)
        gS = (ga.T @ Ef.view(cfg.Bj * cfg.KP, cfg.DP)).view(Sn.shape)
        return (gE.to(E.dtype), gS.to(Sn.dtype), gG.sum(0), gN.sum(0).view(cfg.Bi, cfg.SP), None, None, None, None,
                None, None, None, None)


def _pad_to(x, shape):
    """x zero-padded at the end of each dim to `shape`, contiguous and 16-byte aligned (differentiable)."""
    pads = []
    for have, want in zip(reversed(x.shape), reversed(shape)):
        pads += [0, want - have]
    if any(pads):
        x = F.pad(x, pads)
    x = x.contiguous()
    return x if x.data_ptr() % 16 == 0 else x.clone()


def _pad_mask(m, n, slots):
    """Bool [B, L] -> int8 [n, slots]; padded samples get slot 0 (finite values, zero gout, never used)."""
    out = torch.zeros((n, slots), dtype=torch.int8, device=m.device)
    out[: m.shape[0], : m.shape[1]] = m.to(torch.int8)
    out[m.shape[0]:, 0] = 1
    return out


def _fused_sim(beats, sents, bm, sm, t1, t2, t3, n_split=None, precision=None):
    """Same contract as _batched_sim, through the Triton kernels (float32 result)."""
    if beats.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        beats, sents = beats.float(), sents.float()
    B, K, D = beats.shape
    S = sents.shape[1]
    cfg = _tile_cfg(B, K, S, D, beats.dtype != torch.float32)
    E = _pad_to(beats, (cfg.Bj, cfg.KP, cfg.DP))
    Sn = _pad_to(sents, (cfg.Bi, cfg.SP, cfg.DP))
    Ef = E.float()
    G = torch.bmm(Ef, Ef.transpose(1, 2))
    NS = torch.linalg.vector_norm(Sn.float(), dim=-1)
    sim = _LocalSimFused.apply(E, Sn, G, NS, _pad_mask(bm, cfg.Bj, cfg.KP), _pad_mask(sm, cfg.Bi, cfg.SP), cfg,
                               t1, t2, t3, n_split, precision)
    return sim[:B, :B]


def fused_supported(K, S):
    return K <= MAX_KS and S <= MAX_KS


# ----------------------------------------------------------------------------------------------------------------
# sm_90 build specs (benchmarks/kernel_resources.py and the tests compile them with Triton's bundled ptxas)
# ----------------------------------------------------------------------------------------------------------------
# (K, S) of the shipped configs: K = S = 16, and the default max_beats 32 for the 16-bit training dtypes
SHIPPED_SHAPES = {"bf16": ((16, 16), (32, 16)), "fp16": ((16, 16), (32, 16)), "fp32": ((16, 16),)}


def sm90_specs(D: int, dtype: str, shapes=None) -> list[dict]:
    """One dict per shipped config (forward and backward per (K, S) in `shapes`) for input dtype "bf16", "fp16" or
    "fp32": name, fn (the @triton.jit function), signature, constexprs, num_warps, num_stages. Compile with
    benchmarks/common.py's compile_spec (it assumes the 16-byte aligned pointers the wrapper hands the launcher),
    TRITON_INTERPRET unset."""
    if dtype not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"sm90_specs: dtype must be bf16, fp16 or fp32, got {dtype!r}")
    f32dot = dtype == "fp32"
    prec = "tf32x3" if f32dot else "tf32"
    out = []
    for K, S in shapes or SHIPPED_SHAPES[dtype]:
        cfg = _tile_cfg(1 << 16, K, S, D, not f32dot)
        for bwd in (False, True):
            ptrs = {"E": f"*{dtype}", "Sn": f"*{dtype}", "G": "*fp32", "NS": "*fp32", "BMK": "*i8", "SMK": "*i8",
                    "GOUT": "*fp32", "OUT": "*fp32", "GA": ("*fp32" if f32dot else "*bf16") if bwd else "*fp32",
                    "DG": "*fp32",
                    "GNS": "*fp32", "n_ib": "i32", "n_split": "i32", "t1": "fp32", "t2": "fp32", "t3": "fp32"}
            cx = _meta(cfg, bwd, f32dot, prec, prec)
            sig = dict(ptrs, **{k: "constexpr" for k in cx})
            out.append(dict(name=f"local_{'bwd' if bwd else 'fwd'}_K{K}_S{S}_D{D}_{dtype}", fn=_local_tiles_kernel,
                            signature=sig, constexprs=cx,
                            num_warps=BWD_WARPS if bwd else FWD_WARPS, num_stages=NUM_STAGES))
    return out


def matmul_flops(B, K, S, D, impl, dtype=torch.bfloat16):
    """(D-wide, Gram) matmul FLOPs one fwd+bwd of `impl` executes, padding included. In units of
    u = 2 B^2 K S D: fused 4 u D-wide (a in the forward, a again in the backward, the two GEMMs ga S and ga^T E)
    plus 4 K x K Gram dots per pair (KP / D u each); batched 3 u (a and its two gradients); the reference loop and
    the naive vectorisation 6 u (they also form the D-wide contexts c = A2^T E, and their two gradients)."""
    u = 2.0 * B * B * K * S * D
    gram_e = 3 * 2.0 * B * K * K * D  # G = E E^T and its two gradients
    if impl == "fused":
        c = _tile_cfg(B, K, S, D, dtype != torch.float32)
        tile = 2.0 * c.Bj * c.KP * c.Bi * c.SP * c.DP
        return 4 * tile, 4 * 2.0 * c.Bj * c.KP * c.KP * c.Bi * c.SP + 3 * 2.0 * c.Bj * c.KP * c.KP * c.DP
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
        return _sim_dispatch(beats, sents, bm, sm, t1, t2, t3, impl, cd, **kw), has_beat, has_sent


def _sim_dispatch(beats, sents, bm, sm, t1, t2, t3, impl, cd, **kw):
    if impl == "fused":
        sim = _fused_sim(beats, sents, bm, sm, t1, t2, t3, **kw)
        if sim.dtype != cd:
            sim = sim.to(cd)
    else:
        sim = _batched_sim(beats.to(cd), sents.to(cd), bm, sm, t1, t2, t3)
    return sim


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
    impl = _resolve(impl, beats.device, K, S)
    beats, beat_mask, sents, sent_mask = _prepare(beats, beat_mask, sents, sent_mask)
    cd = _comp_dtype(beats.dtype)
    if B == 0 or K == 0 or S == 0:
        return _zero_loss(beats, sents, cd)
    if impl == "reference":
        with torch.autocast(device_type=beats.device.type, enabled=False):
            return _reference_loss(beats.to(cd), beat_mask, sents.to(cd), sent_mask, t1, t2, t3)
    kw = {"precision": precision} if impl == "fused" else {}
    sim, has_beat, has_sent = _sim_effective(beats, beat_mask, sents, sent_mask, t1, t2, t3, impl, **kw)
    return _masked_clip_loss(sim, has_beat & has_sent)


def local_similarity(beats, beat_mask, sents, sent_mask, t1=4.0, t2=5.0, t3=10.0, impl="reference",
                     precision=None):
    """The B x B matrix S[j, i] (rows ECGs j, columns reports i) of the local loss, differentiable.

    S[j, i] is NaN where ECG j has no valid beat or report i has no valid sentence."""
    B, K, S, D = _check(beats, beat_mask, sents, sent_mask)
    impl = _resolve(impl, beats.device, K, S)
    beats, beat_mask, sents, sent_mask = _prepare(beats, beat_mask, sents, sent_mask)
    cd = _comp_dtype(beats.dtype)
    if B == 0 or K == 0 or S == 0:
        return torch.full((B, B), float("nan"), dtype=cd, device=beats.device)
    if impl == "reference":
        with torch.autocast(device_type=beats.device.type, enabled=False):
            return _reference_sim(beats.to(cd), beat_mask, sents.to(cd), sent_mask, t1, t2, t3)
    kw = {"precision": precision} if impl == "fused" else {}
    sim, has_beat, has_sent = _sim_effective(beats, beat_mask, sents, sent_mask, t1, t2, t3, impl, **kw)
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
