"""Parity tests of the MELP local (beat-sentence) loss: reference loop, batched PyTorch and fused Triton.

On a CPU-only machine "fused" runs under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1);
every fused test also runs the compiled kernel on CUDA tensors when CUDA is present (fp32 parity there with
precision="ieee", the default tf32x3 checked on its own), plus bf16 and larger shapes on CUDA only.
Ground truth is the literal loop computed in float64.
"""
import math
import os
import subprocess
import sys

import pytest
import torch

from melp_kernels import local_loss as ll
from melp_kernels.local_loss import local_alignment_loss, local_attention, local_similarity

HAS_CUDA = torch.cuda.is_available()
# "fused" on CPU tensors runs only under the interpreter (else it raises); on a CUDA machine the kernels are
# compiled, so CPU-tensor fused cases are skipped there and run on CUDA tensors instead
FUSED_ON_CPU = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
IMPLS = ["reference", "batched", "fused"]
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fused_device(device):
    """Device on which "fused" really runs the Triton kernel (CPU only under the interpreter)."""
    if device == "cpu" and not FUSED_ON_CPU:
        pytest.skip("fused on CPU needs TRITON_INTERPRET=1")
    return device


def make(B, K, S, D, seed=0, p_drop=0.3, scale=1.0, device="cpu", dtype=torch.float32, empty=True):
    """Random beats / sentences with random masks; every sample keeps >= 1 beat and sentence unless `empty`
    is a set of indices whose ECG (beats) or report (sentences) is emptied."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(B, K, D, generator=g) * scale
    s = torch.randn(B, S, D, generator=g) * scale
    bm = torch.rand(B, K, generator=g) > p_drop
    sm = torch.rand(B, S, generator=g) > p_drop
    bm[torch.arange(B), torch.randint(0, K, (B,), generator=g)] = True
    sm[torch.arange(B), torch.randint(0, S, (B,), generator=g)] = True
    return e.to(device, dtype), bm.to(device), s.to(device, dtype), sm.to(device)


def run(impl, e, bm, s, sm, **kw):
    """loss, dE, dS; fused fp32 parity runs use exact fp32 dots (precision="ieee") unless told otherwise."""
    e = e.detach().clone().requires_grad_(True)
    s = s.detach().clone().requires_grad_(True)
    if impl == "fused" and e.dtype in (torch.float32, torch.float64):
        kw.setdefault("precision", "ieee")
    loss = local_alignment_loss(e, bm, s, sm, impl=impl, **kw)
    loss.backward()
    return loss.detach(), e.grad, s.grad


def truth(e, bm, s, sm, **kw):
    """float64 literal loop on the CPU."""
    return run("reference", e.double().cpu(), bm.cpu(), s.double().cpu(), sm.cpu(), **kw)


def rel(x, ref):
    x, ref = x.double().cpu(), ref.double().cpu()
    return ((x - ref).norm() / ref.norm().clamp(min=1e-30)).item()


def assert_close(got, want, tol_loss=1e-5, tol_grad=1e-4):
    (l, ge, gs), (lr, ger, gsr) = got, want
    assert torch.isfinite(l) and torch.isfinite(ge).all() and torch.isfinite(gs).all()
    assert rel(l, lr) <= tol_loss, (l.item(), lr.item())
    assert rel(ge, ger) <= tol_grad, rel(ge, ger)
    assert rel(gs, gsr) <= tol_grad, rel(gs, gsr)


# ----------------------------------------------------------------------------------------------------------------
# hand-worked case
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
def test_hand_worked(impl, device):
    # B=2, K=1, S=1, D=2: one beat and one sentence, so A1 = A2 = 1, c_i = e_j and
    # S[j, i] = t3 * log exp(t2 * cos(e_j, s_i)) = t3 * t2 * cos(e_j, s_i) = 50 cos.
    # e_0 = (1, 0), e_1 = (0, 1); s_0 = (1, 0), s_1 = (1, 1):
    #   S = [[50 * 1, 50 / sqrt 2], [50 * 0, 50 / sqrt 2]] = [[50, 35.355], [0, 35.355]]
    # rows (ECG -> report, targets 0, 1): log(1 + e^(35.355 - 50)), log(1 + e^(0 - 35.355))
    # cols (report -> ECG, targets 0, 1): log(1 + e^(0 - 50)),      log(1 + e^0) = log 2
    # loss = 0.5 * (mean rows + mean cols) ~= 0.25 * (log 2 + 4.4e-7) ~= 0.17329
    e = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], device=device)
    s = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]], device=device)
    m = torch.ones(2, 1, dtype=torch.bool, device=device)
    c = 50 / math.sqrt(2)
    sim_want = torch.tensor([[50.0, c], [0.0, c]], device=device)
    rows = math.log1p(math.exp(c - 50)) + math.log1p(math.exp(-c))
    cols = math.log1p(math.exp(-50)) + math.log(2)
    want = 0.5 * (rows / 2 + cols / 2)
    kw = {}
    if impl == "fused":
        _fused_device(device)
        kw["precision"] = "ieee"
    sim = local_similarity(e, m, s, m, impl=impl, **kw)
    torch.testing.assert_close(sim, sim_want, rtol=1e-6, atol=1e-5)
    loss = local_alignment_loss(e, m, s, m, impl=impl, **kw)
    assert abs(loss.item() - want) <= 1e-6
    assert abs(want - 0.25 * math.log(2)) < 1e-6


# ----------------------------------------------------------------------------------------------------------------
# parity against the float64 loop
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed,scale", [(0, 1.0), (1, 0.3), (2, 3.0)])
def test_parity_random(device, impl, seed, scale):
    if impl == "fused":
        _fused_device(device)
    e, bm, s, sm = make(5, 4, 3, 24, seed=seed, scale=scale, device=device)
    got = run(impl, e, bm, s, sm)
    assert_close(got, truth(e, bm, s, sm))
    # and against the float32 loop
    assert_close(got, run("reference", e, bm, s, sm))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("t", [(4.0, 5.0, 10.0), (1.0, 1.0, 1.0), (10.0, 20.0, 0.5)])
def test_temperatures(impl, t, device):
    if impl == "fused":
        _fused_device(device)
    e, bm, s, sm = make(4, 4, 3, 9, seed=3, device=device)
    kw = dict(t1=t[0], t2=t[1], t3=t[2])
    assert_close(run(impl, e, bm, s, sm, **kw), truth(e, bm, s, sm, **kw))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B", [1, 3, 5])
@pytest.mark.parametrize("K,S,D", [(1, 1, 3), (3, 2, 17), (7, 5, 33), (1, 5, 17), (7, 1, 3)])
def test_odd_shapes(device, B, K, S, D):
    e, bm, s, sm = make(B, K, S, D, seed=B * 100 + K * 10 + S, device=device)
    want = truth(e, bm, s, sm)
    assert_close(run("batched", e, bm, s, sm), want)
    if device != "cpu" or FUSED_ON_CPU:
        assert_close(run("fused", e, bm, s, sm), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1e-5, 30.0])
def test_extreme_scales(scale, device):
    # 1e-5: ||s|| ||c|| < 1e-8, so the cosine eps is active (its gradient path is cut); 30: saturated softmaxes
    e, bm, s, sm = make(4, 5, 3, 8, seed=7, scale=scale, device=device)
    want = truth(e, bm, s, sm)
    for impl in ["reference", "batched"] + (["fused"] if device != "cpu" or FUSED_ON_CPU else []):
        assert_close(run(impl, e, bm, s, sm), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("out_d", [None, 64])
def test_fused_chunks_and_splits(device, out_d, monkeypatch):
    """Several ECG and report blocks (forward and both backward passes), D over several chunks (fp32: 64-wide),
    padding of B, K, S and D, the report blocks split over 1, 3 and 4 forward programs per ECG block, and (out_d
    = 64: more of them, with one forward split) the backward's output columns over several programs, as at D > 256."""
    _fused_device(device)
    if out_d:
        monkeypatch.setattr(ll, "OUT_D", out_d)
    e, bm, s, sm = make(20, 3, 6, 150, seed=11, device=device)
    cfg = ll._tile_cfg(20, 3, 6, 150, wide16=False)
    assert -(-20 // cfg.BJ) > 1 and -(-20 // cfg.BI_F) >= 3 and cfg.DP // cfg.BD > 1 and (20 % cfg.BJ or 20 % cfg.BI_F)
    assert -(-20 // cfg.BJ_B) > 1 and -(-20 // cfg.BI_B) > 1 and cfg.DP // cfg.BDO_E > (3 if out_d else 1)
    bm_eff, sm_eff, _, _ = ll._effective_masks(bm, sm)
    e, s = ll._prepare(e, bm, s, sm)[0::2]
    w = torch.randn(20, 20, generator=torch.Generator().manual_seed(0)).to(device)
    grads = []
    fns = [lambda a, b: ll._batched_sim(a.double(), b.double(), bm_eff, sm_eff, 4.0, 5.0, 10.0)]
    splits = (1,) if out_d else (1, 3, 4)  # the forward's splits once (the interpreter takes minutes per run)
    fns += [lambda a, b, n=n: ll._fused_sim(a, b, bm_eff, sm_eff, 4.0, 5.0, 10.0, n_split=n, precision="ieee")
            for n in splits]
    for fn in fns:
        a, b = e.clone().requires_grad_(), s.clone().requires_grad_()
        sim = fn(a, b)
        assert sim.device == e.device
        (sim * w.to(sim.dtype)).sum().backward()
        grads.append((sim.detach(), a.grad, b.grad))
    for got in grads[1:]:
        assert rel(got[0], grads[0][0]) <= 1e-6
        assert rel(got[1], grads[0][1]) <= 1e-5
        assert rel(got[2], grads[0][2]) <= 1e-5
    if len(grads) > 2:
        assert torch.equal(grads[1][1], grads[2][1]) or rel(grads[1][1], grads[2][1]) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_dispatches_at_most_12_ops(dtype):
    """Dispatched PyTorch ops of one fused fwd+bwd (OpCounter: views, reshapes, transposes, expand, detach, empty
    allocations and size queries left out; under the interpreter its own host copies around a launch too): the
    kernels read the masks as they are and never load masked slots, compute G and ||s|| from their tiles, the CLIP
    loss is one small kernel and the backward two recomputing launches, so what remains is autograd's seed of
    loss.backward() (was 98 for fp32 at this shape). Counting is deterministic; a CUDA run counts the same ops."""
    _fused_device("cpu")
    seed = 31
    print(f"seed {seed}")
    e, bm, s, sm = make(6, 5, 4, 24, seed=seed, dtype=dtype)
    bm[2] = False  # an empty ECG
    e.requires_grad_(True)
    s.requires_grad_(True)
    with ll.OpCounter() as c:
        local_alignment_loss(e, bm, s, sm, impl="fused").backward()
    assert c.count <= 12, c.ops
    assert c.count == 1, c.ops  # aten.ones_like: the seed of backward()
    assert torch.isfinite(e.grad).all() and (e.grad[2] == 0).all()


def test_fused_workspace_below_64_mb_at_training_scale():
    """Extra memory of a fused fwd+bwd beyond inputs and gradients at B = 1024, K = 32, S = 16, D = 256: the B x B
    similarities and their gradient, G, ||s||, flags (no B^2 K S tensor: 1 GB of dL/da before)."""
    got = ll.fused_workspace_bytes(1024, 32, 16, 256, torch.bfloat16)
    assert got < 64 * 2 ** 20, got / 2 ** 20
    assert got < 16 * 2 ** 20


def test_gradcheck_batched_float64():
    e, bm, s, sm = make(3, 3, 2, 4, seed=5, dtype=torch.float64)
    bm[1] = torch.tensor([True, False, True])
    sm[2] = torch.tensor([False, True])
    e.requires_grad_(True)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: local_alignment_loss(a, bm, b, sm, t1=2.0, t2=3.0, t3=2.0, impl="batched"), (e, s))
    assert torch.autograd.gradcheck(
        lambda a, b: local_similarity(a, bm, b, sm, t1=2.0, t2=3.0, t3=2.0, impl="batched"), (e, s))


# ----------------------------------------------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
def test_empty_rows_drop_out(impl, device):
    """A report with no sentence and an ECG with no beat leave the loss and gradients of the others unchanged."""
    if impl == "fused":
        _fused_device(device)
    e, bm, s, sm = make(6, 4, 3, 10, seed=21, device=device)
    sm[1] = False  # report 1 has no sentence
    bm[4] = False  # ECG 4 has no beat
    keep = torch.tensor([0, 2, 3, 5], device=device)
    full = run(impl, e, bm, s, sm)
    sub = run(impl, e[keep], bm[keep], s[keep], sm[keep])
    assert rel(full[0], sub[0]) <= 1e-6
    assert rel(full[1][keep], sub[1]) <= 1e-6 and rel(full[2][keep], sub[2]) <= 1e-6
    drop = torch.tensor([1, 4], device=device)
    assert (full[1][drop] == 0).all() and (full[2][drop] == 0).all()
    assert_close(full, truth(e, bm, s, sm))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
def test_no_valid_sample(impl, device):
    if impl == "fused":
        _fused_device(device)
    e, bm, s, sm = make(3, 2, 2, 5, seed=2, device=device)
    bm[0] = False
    sm[1:] = False
    e[0] = float("nan")  # garbage in masked slots must not reach the zero
    loss, ge, gs = run(impl, e, bm, s, sm)
    assert loss.item() == 0.0
    assert (ge == 0).all() and (gs == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("garbage", [float("nan"), 1e4, float("inf")])
def test_masked_garbage_does_not_leak(impl, garbage, device):
    if impl == "fused":
        _fused_device(device)
    e, bm, s, sm = make(4, 5, 4, 7, seed=9, p_drop=0.4, device=device)
    clean = run(impl, e, bm, s, sm)
    e2 = torch.where(bm[..., None], e, torch.full_like(e, garbage))
    s2 = torch.where(sm[..., None], s, torch.full_like(s, garbage))
    dirty = run(impl, e2, bm, s2, sm)
    assert torch.equal(clean[0], dirty[0])
    assert torch.equal(clean[1], dirty[1]) and torch.equal(clean[2], dirty[2])
    assert (dirty[1][~bm] == 0).all() and (dirty[2][~sm] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
def test_similarity_matrix(impl, device):
    kw = {}
    if impl == "fused":
        _fused_device(device)
        kw["precision"] = "ieee"
    e, bm, s, sm = make(4, 3, 3, 6, seed=4, device=device)
    bm[2] = False
    sm[0] = False
    sim = local_similarity(e, bm, s, sm, impl=impl, **kw)
    assert sim.device == e.device
    ref = local_similarity(e.double(), bm, s.double(), sm, impl="reference")
    undefined = (~bm.any(1))[:, None] | (~sm.any(1))[None, :]
    assert torch.isnan(sim[undefined]).all() and torch.isnan(ref[undefined]).all()
    torch.testing.assert_close(sim[~undefined].double().cpu(), ref[~undefined].cpu(), rtol=1e-5, atol=1e-5)
    # the similarity is differentiable on every path
    e2 = e.clone().requires_grad_(True)
    sim2 = local_similarity(e2, bm, s, sm, impl=impl, **kw)
    sim2[~undefined].sum().backward()
    assert torch.isfinite(e2.grad).all() and (e2.grad[~bm] == 0).all() and e2.grad.abs().sum() > 0


def test_attention_map():
    e, bm, s, sm = make(2, 6, 4, 8, seed=6, p_drop=0.4)
    A2 = local_attention(e[0], bm[0], s[1], sm[1])
    assert A2.shape == (6, 4)
    assert (A2[~bm[0]] == 0).all() and (A2[:, ~sm[1]] == 0).all()
    torch.testing.assert_close(A2[:, sm[1]].sum(0), torch.ones(int(sm[1].sum())))
    # A2 is the attention behind S[0, 1]: rebuilding the context from it reproduces the similarity
    c = A2.T @ e[0]
    cos = torch.nn.functional.cosine_similarity(s[1], c, dim=-1, eps=1e-8)[sm[1]]
    want = 10.0 * torch.logsumexp(5.0 * cos, 0)
    torch.testing.assert_close(local_similarity(e, bm, s, sm)[0, 1], want, rtol=1e-5, atol=1e-5)
    assert (local_attention(e[0], torch.zeros(6, dtype=torch.bool), s[1], sm[1]) == 0).all()


# ----------------------------------------------------------------------------------------------------------------
# dispatch and errors
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
def test_autocast_keeps_fp32(impl, device):
    """Inside a bf16 autocast region (mixed-precision training) the loss still accumulates in fp32."""
    kw = {}
    if impl == "fused":
        _fused_device(device)
        kw["precision"] = "ieee"
    e, bm, s, sm = make(3, 4, 3, 16, seed=8, device=device)
    want = run(impl, e, bm, s, sm)
    e2, s2 = e.clone().requires_grad_(True), s.clone().requires_grad_(True)
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = local_alignment_loss(e2, bm, s2, sm, impl=impl, **kw)
    loss.backward()  # outside the region, as autocast asks
    got = (loss.detach(), e2.grad, s2.grad)
    assert got[0].dtype == torch.float32
    assert_close(got, want, tol_loss=1e-6, tol_grad=1e-5)


def test_bad_inputs():
    e, bm, s, sm = make(2, 3, 2, 4)
    with pytest.raises(ValueError, match="reference.*batched.*fused.*auto"):
        local_alignment_loss(e, bm, s, sm, impl="loop")
    with pytest.raises(ValueError, match="batch"):
        local_alignment_loss(e, bm, s[:1], sm[:1])
    with pytest.raises(ValueError, match="width"):
        local_alignment_loss(e, bm, s[..., :3], sm)
    with pytest.raises(ValueError, match="beat_mask"):
        local_alignment_loss(e, bm[:, :2], s, sm)
    with pytest.raises(ValueError, match="sent_mask"):
        local_alignment_loss(e, bm, s, sm[:, :1])
    with pytest.raises(ValueError, match=r"\[B, K, D\]"):
        local_alignment_loss(e[0], bm, s, sm)


def test_fused_on_cpu_without_interpreter_raises_auto_runs_batched(monkeypatch):
    """"fused" runs the kernels or says why not; "auto" takes the batched path off CUDA (same values)."""
    e, bm, s, sm = make(3, 3, 2, 5)
    monkeypatch.setenv("TRITON_INTERPRET", "0")

    def boom(*a, **k):
        raise AssertionError("kernel must not run on a CPU tensor outside the interpreter")

    monkeypatch.setattr(ll, "_fused_sim", boom)
    want = local_alignment_loss(e, bm, s, sm, impl="batched")
    with pytest.raises(RuntimeError, match="interpreter"):
        local_alignment_loss(e, bm, s, sm, impl="fused")
    with pytest.raises(RuntimeError, match="interpreter"):
        local_similarity(e, bm, s, sm, impl="fused")
    assert torch.equal(local_alignment_loss(e, bm, s, sm, impl="auto"), want)


def test_fused_beyond_tile_limit():
    """K or S above MAX_KS: "fused" says so, "auto" runs the batched path."""
    e, bm, s, sm = make(2, ll.MAX_KS + 1, 2, 3, seed=3)
    want = local_alignment_loss(e, bm, s, sm, impl="batched")
    dev = torch.device("cuda" if HAS_CUDA else "cpu")
    e, bm, s, sm = e.to(dev), bm.to(dev), s.to(dev), sm.to(dev)
    if HAS_CUDA or FUSED_ON_CPU:
        with pytest.raises(RuntimeError, match="at most"):
            local_alignment_loss(e, bm, s, sm, impl="fused")
    assert rel(local_alignment_loss(e, bm, s, sm, impl="auto"), want) <= 1e-6


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", ["batched", "fused"])
def test_16bit_inputs(impl, dtype, device):
    """bf16 / fp16 inputs, fp32 accumulation, 16-bit gradients. Under the interpreter the kernel's dots run on fp32
    operands (triton issue 11584), so on the CPU this checks dtype handling; on CUDA the tensor-core path."""
    if impl == "fused":
        _fused_device(device)
    e, bm, s, sm = make(4, 5, 3, 17, seed=1, dtype=dtype, device=device)
    got = run(impl, e, bm, s, sm)
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype and got[2].dtype == dtype
    assert_close(got, run("batched", e.double(), bm, s.double(), sm), tol_loss=2e-2, tol_grad=2e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
def test_mixed_dtypes_promote(impl, device):
    """bf16 beats with fp32 sentences (autocast can hand the two encoders' outputs so): computed as fp32."""
    if impl == "fused":
        _fused_device(device)
    e, bm, s, sm = make(3, 4, 3, 9, seed=13, device=device)
    e16 = e.bfloat16()
    want = run(impl, e16.float(), bm, s, sm)
    got = run(impl, e16, bm, s, sm)
    assert got[1].dtype == torch.bfloat16 and got[2].dtype == torch.float32
    assert rel(got[0], want[0]) <= 1e-6 and rel(got[2], want[2]) <= 1e-5
    assert rel(got[1].float(), want[1]) <= 1e-2


@pytest.mark.parametrize("device", DEVICES)
def test_fused_float64_inputs_compute_in_fp32(device):
    _fused_device(device)
    e, bm, s, sm = make(3, 4, 3, 9, seed=12, dtype=torch.float64, device=device)
    got = run("fused", e, bm, s, sm)
    assert got[0].dtype == torch.float64 and got[1].dtype == torch.float64
    assert_close(got, truth(e, bm, s, sm))


def test_flop_counts():
    """fused: 5 u of D-wide dots at K = S = 16 (u = 2 B^2 K S D: a in the forward and in both backward passes,
    the dE and dS accumulations), the Gram dots (block-diagonal, about N / D u each for N beat columns of a
    tile: 0.59 u here) a smaller extra."""
    B, K, S, D = 256, 16, 16, 256
    u = 2.0 * B * B * K * S * D
    wide, gram = ll.matmul_flops(B, K, S, D, "fused")
    assert wide == 5 * u and gram <= 0.6 * u
    assert ll.matmul_flops(B, K, S, D, "batched")[0] == 3 * u
    # padding counts: K = 9 runs in 16 slots
    assert ll.matmul_flops(B, 9, S, D, "fused")[0] > 5 * 2.0 * B * B * 9 * S * D


def test_benchmark_script_runs(tmp_path):
    out = tmp_path / "bench.md"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "local_loss.py"), "--device", "cpu", "--shapes",
           "3,4,2,8", "--repeat", "1", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=170)
    assert res.returncode == 0, res.stderr[-3000:]
    text = out.read_text()
    for name in ("reference", "naive", "batched", "speed-up vs loop", "peak MB", "matmul FLOPs / u"):
        assert name in text


_COMPILE = """
import json, os, sys
os.environ.pop("TRITON_INTERPRET", None)
from melp_fast.testing.common import compile_spec, hot_figures, resources, resource_problems
from melp_kernels import local_loss as ll
rows = []
for dt in ("bf16", "fp16", "fp32"):
    for sp in ll.sm90_specs(256, dt):
        k = compile_spec(sp)
        r = resources(k)
        hot = hot_figures(sp, k, dt) if dt == "bf16" else dict()
        rows.append(dict(name=sp["name"], problems=resource_problems(r), hot=hot.get("warp_instr_per_logit"), **r))
print(json.dumps(rows))
"""


@pytest.mark.skipif(HAS_CUDA, reason="CUDA present: the kernels are compiled and run by the tests above")
def test_shipped_configs_compile_for_h100_without_gpu():
    """Every shipped config builds for sm_90 (Triton's bundled ptxas) with no spill, no stack, <= 227 KB shared
    memory and wgmma dots; the build assumes the 16-byte aligned pointers the launcher specialises on."""
    from melp_fast.testing.common import ptxas_available

    if not ptxas_available():
        pytest.skip("triton ships no ptxas here")
    specs = ll.sm90_specs(256, "bf16")
    assert {"name", "fn", "signature", "constexprs", "num_warps", "num_stages"} <= set(specs[0])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(rows) == 18  # (fwd, dE, dS) x (bf16, fp16: K = 16, 32; fp32: K = 16) + the CLIP kernel x 3
    for r in rows:
        assert r["problems"] == [] and r["spills"] == 0 and r["stack"] == 0, r
        assert r["shared"] <= 227 * 1024, r
        if "clip" in r["name"]:
            continue
        # tensor cores everywhere; the dE pass at K = 32 and both backward passes in fp32 run 32-row tiles (the
        # larger ones build with a stack frame), below wgmma's 64-row minimum: mma.sync there
        small_tile = "bwd" in r["name"] and ("K32" in r["name"] or "fp32" in r["name"])
        assert (r["wgmma"] or r["mma"]) if small_tile else r["wgmma"], r
        # the SASS hot-loop count (benchmarks/kernel_resources.py) finds each bf16 kernel's tile loop
        assert "bf16" not in r["name"] or r["hot"] > 0, r


# ----------------------------------------------------------------------------------------------------------------
# CUDA only: bf16 and training-size shapes
# ----------------------------------------------------------------------------------------------------------------
@cuda_only
@pytest.mark.parametrize("B,K,S,D", [(64, 16, 12, 256), (37, 9, 7, 130)])
def test_cuda_fp32_large(B, K, S, D):
    e, bm, s, sm = make(B, K, S, D, seed=B, device="cuda")
    want = run("batched", e.double(), bm, s.double(), sm)  # float64 batched == float64 loop (tests above)
    assert_close(run("fused", e, bm, s, sm), want)  # exact fp32 dots
    assert_close(run("fused", e, bm, s, sm, precision="tf32x3"), want, tol_loss=2e-5, tol_grad=2e-4)  # default
    assert_close(run("batched", e, bm, s, sm), want)


@cuda_only
@pytest.mark.parametrize("B,K,S,D", [(64, 16, 12, 256), (5, 7, 5, 33), (3, 1, 1, 3), (40, 32, 16, 256)])
def test_cuda_bf16(B, K, S, D):
    e, bm, s, sm = make(B, K, S, D, seed=B + 1, device="cuda", dtype=torch.bfloat16)
    want = run("batched", e.double(), bm, s.double(), sm)  # float64 of the same bf16 values
    got = run("fused", e, bm, s, sm)
    assert got[1].dtype == torch.bfloat16
    assert_close(got, want, tol_loss=2e-2, tol_grad=2e-2)


@pytest.mark.parametrize("dtype,K,D", [(torch.bfloat16, 16, 512), (torch.float16, 32, 256)])
def test_fused_triton39_tiles(dtype, K, D, monkeypatch):
    """The backward tiles taken under Triton >= 3.9 (_triton39_tiles: halved dS / dE tiles and the dS a loop in
    256-wide D chunks at bf16 D = 512; the fp16 dE a loop in 128-wide chunks at K = 32, D = 256) match the
    reference, whichever Triton runs the test."""
    _fused_device("cpu")
    monkeypatch.setattr(ll, "_TRITON39", True)
    cfg = ll._tile_cfg(3, K, 3, D, True, dtype == torch.bfloat16)
    if dtype == torch.bfloat16:
        assert cfg.BD_S == 256 and cfg.BD_E == cfg.BD == 64 and cfg.BI_E == cfg.BI_B == cfg.BI_F // 2
    else:
        assert cfg.BD_E == 128 and cfg.BD_S == cfg.BD == cfg.DP == 256
    e, bm, s, sm = make(3, K, 3, D, seed=K + D, dtype=dtype)
    got = run("fused", e, bm, s, sm)
    assert got[1].dtype == dtype and got[2].dtype == dtype
    assert_close(got, run("batched", e.double(), bm, s.double(), sm), tol_loss=2e-2, tol_grad=2e-2)
