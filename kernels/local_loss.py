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
(B x B x K x S in "batched", one K x S tile in registers per pair in "fused") and G (B x K x K) exist.

Masks: `beat_mask` [B, K] and `sent_mask` [B, S], bool, True = valid. Masked beats and sentences take no part
(their values are replaced with where(), so NaN or huge garbage there never leaks, and their gradients are 0).
Sample j is *valid* when ECG j has >= 1 valid beat AND report j has >= 1 valid sentence. Invalid samples are
removed from both rows and columns: the loss is 0.5 * (CE + CE) over the valid x valid submatrix of S, averaged
over the valid rows, so it equals the loss of the batch without those samples and the gradients of the others
are unchanged; invalid samples get zero gradient. With no valid sample the loss is a zero that still carries a
graph (all gradients zero).

Fused design: torch computes G = E E^T [B, K, K] and ||s_ik|| [B, S] (fp32, differentiable); one Triton program per
pair (j, i) builds a = E_j S_i^T by D-chunks (tl.dot) and does the K x S algebra in registers, writing S[j, i]
only. The backward recomputes per pair: a pass with one program per (ECG j, D-chunk, split) sums over reports
i the a-path gradient ga_ji S_i and dL/dG_j; a pass per (report i, D-chunk, split) sums ga_ji^T E_j and
dL/d||s_i||. Partial sums per split are added by torch (deterministic, no atomics); autograd carries dL/dG and
dL/d||s|| through the bmm and the norm. Nothing of size B x B x K x S or B x B x S x D is stored. fp32 inputs
use IEEE fp32 dots; bf16 / fp16 inputs use tensor-core dots with fp32 accumulation for a (backward D-wide dots
in tf32 on fp32-converted operands); the small K x K Gram dots are IEEE fp32 always. Under TRITON_INTERPRET=1 every dot operand is cast to fp32 (triton issue 11584).

Precision: float32 and bfloat16 (and float16) inputs are computed with float32 accumulation and give a float32
loss; float64 inputs are computed in float64 by "reference" and "batched", in float32 by "fused".
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

try:  # triton is optional: without it "fused" falls back to "batched"
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = [
    "IMPLS",
    "local_alignment_loss",
    "local_similarity",
    "local_attention",
]

IMPLS = ("reference", "batched", "fused", "auto")
COS_EPS = 1e-8  # eps on the norm product of the cosine
NC2_FLOOR = 1e-30  # ||c||^2 from the Gram form is clamped here before sqrt (a zero context has cos 0 anyway)


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
    if beats.dtype != sents.dtype:
        raise ValueError(f"local loss: beats ({beats.dtype}) and sents ({sents.dtype}) must share a dtype")
    devs = {beats.device, sents.device, beat_mask.device, sent_mask.device}
    if len(devs) != 1:
        raise ValueError(f"local loss: all inputs must be on one device, got {sorted(map(str, devs))}")
    return B, K, S, D


def _shape(x):
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _comp_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _prepare(beats, beat_mask, sents, sent_mask):
    """Bool masks, garbage in masked slots replaced by 0 (where(), so NaN cannot leak)."""
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


def _resolve_impl(impl, device):
    if impl not in IMPLS:
        raise ValueError(f"local loss: unknown impl {impl!r}; choose one of {', '.join(map(repr, IMPLS))}")
    if impl == "auto":
        return "fused" if (device.type == "cuda" and HAS_TRITON) else "batched"
    if impl == "fused":
        if not HAS_TRITON:
            return "batched"
        if device.type == "cuda":
            return "fused"
        # on a CPU tensor the kernel runs only under the Triton interpreter; otherwise the batched fallback
        return "fused" if os.environ.get("TRITON_INTERPRET") == "1" else "batched"
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
# fused: Triton, one program per (j, i) pair forward; backward recomputes per pair
# ----------------------------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _mm(a, b, IEEE: tl.constexpr):
        if IEEE:
            r = tl.dot(a, b, input_precision="ieee")
        else:
            r = tl.dot(a, b)
        return r

    @triton.jit
    def _pair_forward(E, Sn, G, NS, BM, SM, j, i, K, S, D, s_eb, s_ek, s_sb, s_sk, t1, t2,
                      BK: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
                      F32DOT: tl.constexpr, IEEE: tl.constexpr):
        offs_k = tl.arange(0, BK)
        offs_s = tl.arange(0, BS)
        offs_d = tl.arange(0, BD)
        kin = offs_k < K
        sin = offs_s < S
        e_base = E + j * s_eb
        s_base = Sn + i * s_sb
        a = tl.zeros([BK, BS], dtype=tl.float32)
        for d0 in range(0, D, BD):
            din = (d0 + offs_d) < D
            e = tl.load(e_base + offs_k[:, None] * s_ek + (d0 + offs_d)[None, :],
                        mask=kin[:, None] & din[None, :], other=0.0)
            s = tl.load(s_base + offs_s[:, None] * s_sk + (d0 + offs_d)[None, :],
                        mask=sin[:, None] & din[None, :], other=0.0)
            if F32DOT:
                e = e.to(tl.float32)
                s = s.to(tl.float32)
            a += _mm(e, tl.trans(s), IEEE)
        bm = tl.load(BM + j * K + offs_k, mask=kin, other=0) != 0
        sm = tl.load(SM + i * S + offs_s, mask=sin, other=0) != 0
        # A1: softmax over sentences (each row has >= 1 valid sentence: effective masks)
        x1 = tl.where(sm[None, :], a, float("-inf"))
        p1 = tl.exp(x1 - tl.max(x1, axis=1)[:, None])
        A1 = p1 / tl.sum(p1, axis=1)[:, None]
        # A2: softmax over beats of t1 * A1
        x2 = tl.where(bm[:, None], t1 * A1, float("-inf"))
        p2 = tl.exp(x2 - tl.max(x2, axis=0)[None, :])
        A2 = p2 / tl.sum(p2, axis=0)[None, :]
        num = tl.sum(A2 * a, axis=0)  # s_k . c_k
        g = tl.load(G + j * K * K + offs_k[:, None] * K + offs_k[None, :],
                    mask=kin[:, None] & kin[None, :], other=0.0)
        GA = _mm(g, A2, True)  # G_j A2, [BK, BS]; K x K x S, always IEEE fp32 (||c||^2 is sensitive)
        nc2 = tl.sum(A2 * GA, axis=0)  # ||c_k||^2
        nc = tl.sqrt(tl.maximum(nc2, 1e-30))
        ns = tl.load(NS + i * S + offs_s, mask=sin, other=0.0)
        prod = ns * nc
        den = tl.maximum(prod, 1e-8)
        num_over = num / den
        x = tl.where(sm, t2 * num_over, float("-inf"))
        mx = tl.max(x, axis=0)
        lse = mx + tl.log(tl.sum(tl.exp(x - mx), axis=0))
        return a, A1, A2, GA, num, nc2, nc, ns, prod, den, x, lse

    @triton.jit
    def _pair_backward(gs, a, A1, A2, GA, num, nc2, nc, ns, prod, den, x, lse, t1, t2, t3):
        """Gradient of t3 * lse wrt a (K x S), the Gram coefficient g_nc2 (per k) and ||s_k|| (per k)."""
        w = tl.exp(x - lse)  # softmax over valid k of t2 * cos; 0 on masked / padded k
        gcos = gs * t3 * t2 * w
        gnum = gcos / den
        gden = -gcos * num / (den * den)
        gprod = tl.where(prod >= 1e-8, gden, 0.0)
        gns = gprod * nc
        gnc = gprod * ns
        gnc2 = tl.where(nc2 >= 1e-30, gnc * 0.5 / nc, 0.0)
        gA2 = gnum[None, :] * a + 2.0 * gnc2[None, :] * GA
        gZ = A2 * (gA2 - tl.sum(A2 * gA2, axis=0)[None, :])
        gA1 = t1 * gZ
        ga = gnum[None, :] * A2 + A1 * (gA1 - tl.sum(A1 * gA1, axis=1)[:, None])
        return ga, gnc2, gns

    @triton.jit
    def _local_fwd_kernel(E, Sn, G, NS, BM, SM, OUT, B, K, S, D, s_eb, s_ek, s_sb, s_sk, t1, t2, t3,
                          BK: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
                          F32DOT: tl.constexpr, IEEE: tl.constexpr):
        j = tl.program_id(0).to(tl.int64)
        i = tl.program_id(1).to(tl.int64)
        a, A1, A2, GA, num, nc2, nc, ns, prod, den, x, lse = _pair_forward(
            E, Sn, G, NS, BM, SM, j, i, K, S, D, s_eb, s_ek, s_sb, s_sk, t1, t2, BK, BS, BD, F32DOT, IEEE)
        tl.store(OUT + j * B + i, t3 * lse)

    @triton.jit
    def _local_bwd_kernel(E, Sn, G, NS, BM, SM, GOUT, GX_part, GAUX_part,
                          B, K, S, D, s_eb, s_ek, s_sb, s_sk, t1, t2, t3, n_split,
                          FOR_E: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
                          BDO: tl.constexpr, F32DOT: tl.constexpr, IEEE: tl.constexpr):
        """FOR_E: program (j, d-chunk, split) sums over reports i of its split: dL/dE_j[:, chunk] (a-path) and
        dL/dG_j. Else program (i, d-chunk, split) sums over ECGs j: dL/dS_i[:, chunk] (a-path) and dL/d||s_ik||.
        Partials per split are written to GX_part [n_split, B, K|S, D] and GAUX_part; torch sums them."""
        me = tl.program_id(0).to(tl.int64)
        dc = tl.program_id(1)
        sp = tl.program_id(2)
        offs_k = tl.arange(0, BK)
        offs_s = tl.arange(0, BS)
        offs_do = dc * BDO + tl.arange(0, BDO)
        dout = offs_do < D
        kin = offs_k < K
        sin = offs_s < S
        if FOR_E:
            acc = tl.zeros([BK, BDO], dtype=tl.float32)
            acc_aux = tl.zeros([BK, BK], dtype=tl.float32)
        else:
            acc = tl.zeros([BS, BDO], dtype=tl.float32)
            acc_aux = tl.zeros([BS], dtype=tl.float32)
        for other in range(sp, B, n_split):
            if FOR_E:
                j = me
                i = me * 0 + other  # int64 (a plain int under the interpreter, where .to() fails)
            else:
                j = me * 0 + other
                i = me
            gs = tl.load(GOUT + j * B + i)
            a, A1, A2, GA, num, nc2, nc, ns, prod, den, x, lse = _pair_forward(
                E, Sn, G, NS, BM, SM, j, i, K, S, D, s_eb, s_ek, s_sb, s_sk, t1, t2, BK, BS, BD, F32DOT, IEEE)
            ga, gnc2, gns = _pair_backward(gs, a, A1, A2, GA, num, nc2, nc, ns, prod, den, x, lse, t1, t2, t3)
            if FOR_E:
                s_out = tl.load(Sn + i * s_sb + offs_s[:, None] * s_sk + offs_do[None, :],
                                mask=sin[:, None] & dout[None, :], other=0.0).to(tl.float32)
                acc += _mm(ga, s_out, IEEE)
                acc_aux += _mm(A2 * gnc2[None, :], tl.trans(A2), True)
            else:
                e_out = tl.load(E + j * s_eb + offs_k[:, None] * s_ek + offs_do[None, :],
                                mask=kin[:, None] & dout[None, :], other=0.0).to(tl.float32)
                acc += _mm(tl.trans(ga), e_out, IEEE)
                acc_aux += gns
        if FOR_E:
            rows = offs_k
            rin = kin
            R = K
        else:
            rows = offs_s
            rin = sin
            R = S
        base = (sp.to(tl.int64) * B + me) * R * D
        tl.store(GX_part + base + rows[:, None] * D + offs_do[None, :], acc, mask=rin[:, None] & dout[None, :])
        first = dc == 0
        if FOR_E:
            gbase = (sp.to(tl.int64) * B + me) * K * K
            tl.store(GAUX_part + gbase + offs_k[:, None] * K + offs_k[None, :], acc_aux,
                     mask=kin[:, None] & kin[None, :] & first)
        else:
            nbase = (sp.to(tl.int64) * B + me) * S
            tl.store(GAUX_part + nbase + offs_s, acc_aux, mask=sin & first)


_FWD_WARPS = 4
# 8 warps in the backward: at 4 its sm_90 build hits 255 registers and spills (checked with cuobjdump).
# A variant stepping 2-4 pairs at once as [P, K, S] tiles spilled hundreds of bytes at sm_90, so one pair a step.
_BWD_WARPS = 8


def _next_pow2(n):
    return 1 << max(0, (int(n) - 1).bit_length())


def _launch_cfg(B, K, S, D, block_do=None, n_split=None, device=None):
    BK = max(16, _next_pow2(K))
    BS = max(16, _next_pow2(S))
    BD = min(max(16, _next_pow2(D)), 64)  # chunk of the D loop that builds a = E_j S_i^T
    BDO = block_do or min(max(16, _next_pow2(D)), 256)  # D-chunk of a gradient accumulator per program
    n_dc = triton.cdiv(D, BDO)
    if n_split is None:
        n_split = 1
        if device is not None and device.type == "cuda":
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            n_split = max(1, min(B, (2 * sms + B * n_dc - 1) // max(1, B * n_dc)))
    return BK, BS, BD, BDO, n_dc, int(n_split)


def _device_guard(device):
    import contextlib

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class _LocalSimFused(torch.autograd.Function):
    """S [B, B] from E, S (input dtype) and the fp32 side inputs G = E E^T [B, K, K], ||s|| [B, S].

    Gradients wrt G and ||s|| are returned to autograd, which carries them through the bmm and the norm."""

    @staticmethod
    def forward(ctx, E, Sn, G, NS, BM, SM, t1, t2, t3, block_do, n_split):
        B, K, D = E.shape
        S = Sn.shape[1]
        BK, BS, BD, BDO, n_dc, n_split = _launch_cfg(B, K, S, D, block_do, n_split, E.device)
        interp = os.environ.get("TRITON_INTERPRET") == "1"
        f32dot = interp or E.dtype == torch.float32
        ieee = E.dtype == torch.float32
        out = torch.empty((B, B), dtype=torch.float32, device=E.device)
        with _device_guard(E.device):
            _local_fwd_kernel[(B, B)](
                E, Sn, G, NS, BM, SM, out, B, K, S, D, E.stride(0), E.stride(1), Sn.stride(0), Sn.stride(1),
                float(t1), float(t2), float(t3), BK=BK, BS=BS, BD=BD, F32DOT=f32dot, IEEE=ieee,
                num_warps=_FWD_WARPS)
        ctx.save_for_backward(E, Sn, G, NS, BM, SM)
        ctx.cfg = (float(t1), float(t2), float(t3), BK, BS, BD, BDO, n_dc, n_split, f32dot, ieee)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        E, Sn, G, NS, BM, SM = ctx.saved_tensors
        t1, t2, t3, BK, BS, BD, BDO, n_dc, n_split, f32dot, ieee = ctx.cfg
        B, K, D = E.shape
        S = Sn.shape[1]
        gout = gout.to(torch.float32).contiguous()
        dev = E.device
        gE = torch.empty((n_split, B, K, D), dtype=torch.float32, device=dev)
        gG = torch.empty((n_split, B, K, K), dtype=torch.float32, device=dev)
        gS = torch.empty((n_split, B, S, D), dtype=torch.float32, device=dev)
        gN = torch.empty((n_split, B, S), dtype=torch.float32, device=dev)
        common = (B, K, S, D, E.stride(0), E.stride(1), Sn.stride(0), Sn.stride(1), t1, t2, t3, n_split)
        meta = dict(BK=BK, BS=BS, BD=BD, BDO=BDO, F32DOT=f32dot, IEEE=ieee, num_warps=_BWD_WARPS)
        grid = (B, n_dc, n_split)
        with _device_guard(dev):
            _local_bwd_kernel[grid](E, Sn, G, NS, BM, SM, gout, gE, gG, *common, FOR_E=True, **meta)
            _local_bwd_kernel[grid](E, Sn, G, NS, BM, SM, gout, gS, gN, *common, FOR_E=False, **meta)
        gE, gG, gS, gN = gE.sum(0), gG.sum(0), gS.sum(0), gN.sum(0)
        return gE.to(E.dtype), gS.to(Sn.dtype), gG, gN, None, None, None, None, None, None, None


def _compile_check(arch=90, dtypes=("fp32", "bf16"), K=16, S=16, D=256, fwd_warps=None, bwd_warps=None):
    """Compile the three kernels ahead of time for a CUDA target (no GPU needed: Triton's bundled ptxas).

    Returns {name: cubin resource line}. Must run with TRITON_INTERPRET unset (a fresh process)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    BK, BS, BD, BDO, _, _ = _launch_cfg(2, K, S, D)
    scal = {n: "i32" for n in ("B", "K", "S", "D", "s_eb", "s_ek", "s_sb", "s_sk")}
    scal.update(t1="fp32", t2="fp32", t3="fp32")
    out = {}
    for dt in dtypes:
        f32dot = ieee = dt == "fp32"
        ptrs = {"E": f"*{dt}", "Sn": f"*{dt}", "G": "*fp32", "NS": "*fp32", "BM": "*i8", "SM": "*i8"}
        cx = dict(BK=BK, BS=BS, BD=BD, F32DOT=f32dot, IEEE=ieee)
        sig = dict(ptrs, OUT="*fp32", **scal, **{k: "constexpr" for k in cx})
        k = triton.compile(ASTSource(_local_fwd_kernel, sig, constexprs=cx), target=target,
                           options={"num_warps": fwd_warps or _FWD_WARPS})
        out[f"fwd_{dt}"] = k
        for fe in (True, False):
            cxb = dict(cx, FOR_E=fe, BDO=BDO)
            sig = dict(ptrs, GOUT="*fp32", GX_part="*fp32", GAUX_part="*fp32", **scal, n_split="i32",
                       **{k: "constexpr" for k in cxb})
            k = triton.compile(ASTSource(_local_bwd_kernel, sig, constexprs=cxb), target=target,
                               options={"num_warps": bwd_warps or _BWD_WARPS})
            out[f"bwd_{'E' if fe else 'S'}_{dt}"] = k
    return out


def _fused_sim(beats, sents, bm, sm, t1, t2, t3, block_do=None, n_split=None):
    """Same contract as _batched_sim, through the Triton kernels (float32 result)."""
    if beats.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        beats, sents = beats.float(), sents.float()
    E = beats.contiguous()
    Sn = sents.contiguous()
    Ef = E.float()
    G = torch.bmm(Ef, Ef.transpose(1, 2)).float().contiguous()
    NS = torch.linalg.vector_norm(Sn.float(), dim=-1).contiguous()
    BM = bm.to(torch.int8).contiguous()
    SM = sm.to(torch.int8).contiguous()
    return _LocalSimFused.apply(E, Sn, G, NS, BM, SM, t1, t2, t3, block_do, n_split)


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


def local_alignment_loss(beats, beat_mask, sents, sent_mask, t1=4.0, t2=5.0, t3=10.0, impl="reference"):
    """MELP beat-sentence loss (scalar). beats [B, K, D], beat_mask [B, K] bool, sents [B, S, D], sent_mask
    [B, S] bool (True = valid). impl: "reference" (per-sample loop), "batched" (vectorised PyTorch), "fused"
    (Triton; on a CPU tensor only under TRITON_INTERPRET=1, else "batched"), "auto" (fused on CUDA, else batched).

    Samples with no valid beat or no valid sentence are dropped from rows and columns (see module docstring);
    with no valid sample the loss is 0 with zero gradients."""
    B, K, S, D = _check(beats, beat_mask, sents, sent_mask)
    impl = _resolve_impl(impl, beats.device)
    beats, beat_mask, sents, sent_mask = _prepare(beats, beat_mask, sents, sent_mask)
    cd = _comp_dtype(beats.dtype)
    if B == 0 or K == 0 or S == 0:
        return _zero_loss(beats, sents, cd)
    if impl == "reference":
        with torch.autocast(device_type=beats.device.type, enabled=False):
            return _reference_loss(beats.to(cd), beat_mask, sents.to(cd), sent_mask, t1, t2, t3)
    sim, has_beat, has_sent = _sim_effective(beats, beat_mask, sents, sent_mask, t1, t2, t3, impl)
    return _masked_clip_loss(sim, has_beat & has_sent)


def local_similarity(beats, beat_mask, sents, sent_mask, t1=4.0, t2=5.0, t3=10.0, impl="reference"):
    """The B x B matrix S[j, i] (rows ECGs j, columns reports i) of the local loss, differentiable.

    S[j, i] is NaN where ECG j has no valid beat or report i has no valid sentence."""
    B, K, S, D = _check(beats, beat_mask, sents, sent_mask)
    impl = _resolve_impl(impl, beats.device)
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
