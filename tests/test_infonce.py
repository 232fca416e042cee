"""Parity of the global InfoNCE loss: fused (Triton; interpreter on CPU, compiled on CUDA) and chunked against the
reference and OpenCLIP's ClipLoss(local_loss=True, gather_with_grad=True), values and gradients (embeddings and
logit_scale), odd shapes, logit scale 1 and 100, half inputs at per-dtype tolerances, fp32 precisions on CUDA,
strided inputs, the FLOP count of the fused path, and a 2-process gloo run against the 1-process global batch.

Every fused case runs on each device in DEVICES: CPU tensors under the Triton interpreter (conftest.py switches it
on where there is no CUDA) and CUDA tensors through the compiled kernels where CUDA exists."""

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from melp_kernels import infonce
from melp_kernels.infonce import infonce_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from melp_fast.testing.common import load_open_clip_loss  # noqa: E402
from melp_fast.testing.infonce_tools import count_matmul_flops  # noqa: E402
from helpers import spawn  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
INTERPRETED = infonce.KERNELS_INTERPRETED
FUSED_ON_CPU = INTERPRETED  # without the interpreter, impl "fused" refuses CPU tensors (tested below)

OPEN_CLIP = load_open_clip_loss()
needs_open_clip = pytest.mark.skipif(OPEN_CLIP is None, reason="open_clip_torch not installed")

# Tolerances (relative, loss / gradients) for half inputs against the fp32 reference on the same half inputs: the
# fused path rounds P to the input dtype for its P T and P^T E dots (measured under the interpreter: bf16 grads
# ~5e-3, fp16 ~2.5e-4), the chunked path only its outputs.
HALF_TOL = {torch.bfloat16: (1e-3, 1.5e-2), torch.float16: (1e-3, 2e-3)}
# fp32 inputs on CUDA by precision: "ieee" and "tf32x3" hold the CPU parity; "tf32" rounds the operands to 10 bits.
PRECISION_TOL = {"ieee": (1e-5, 1e-4), "tf32x3": (1e-5, 1e-4), "tf32": (2e-3, 2e-2)}


def _skip_fused_cpu(impl, device):
    if impl == "fused" and device == "cpu" and not FUSED_ON_CPU:
        pytest.skip("fused on CPU tensors needs the Triton interpreter (covered on CUDA tensors here)")


def _inputs(B, D, seed, device="cpu", dtype=torch.float32, normalise=True):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(B, D, generator=g)
    t = torch.randn(B, D, generator=g)
    if normalise:
        e, t = F.normalize(e, dim=1), F.normalize(t, dim=1)
    return e.to(device=device, dtype=dtype), t.to(device=device, dtype=dtype)


def _run(fn, e, t, scale):
    """loss and grads (dE, dT, ds) of fn(e, t, s) on fresh leaf copies."""
    e = e.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    s = torch.tensor(float(scale), device=e.device, requires_grad=True)
    loss = fn(e, t, s)
    loss.backward()
    return [loss.detach().float(), e.grad.float(), t.grad.float(), s.grad.float()]


def _impl(name, **kw):
    if name == "open_clip":
        crit = OPEN_CLIP.ClipLoss(local_loss=True, gather_with_grad=True)
        return lambda e, t, s: crit(e, t, s)
    return lambda e, t, s: infonce_loss(e, t, s, name, **kw)


def _rel(a, b, floor):
    return float((a - b).norm() / max(float(b.norm()), floor))


def _assert_close(got, ref, loss_tol, grad_tol, scale):
    # Relative errors; the floors only matter where the true value is ~0 (B = 1: loss 0 and zero gradients,
    # whose rounding grows with the logit scale).
    names = ["loss", "dE", "dT", "dlogit_scale"]
    floors = [1e-2, 1e-2 * max(1.0, scale), 1e-2 * max(1.0, scale), 1e-2]
    for name, a, b, fl in zip(names, got, ref, floors):
        tol = loss_tol if name == "loss" else grad_tol
        err = _rel(a, b, fl)
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol} (got {a.flatten()[:4]}, ref {b.flatten()[:4]})"


SHAPES = [(1, 3), (7, 17), (33, 64), (130, 130), (64, 3), (20, 100)]


def _ieee(impl, device):
    """Keyword arguments for an fp32 parity run: fused on CUDA gets IEEE dots (its default there is tf32)."""
    return {"precision": "ieee"} if impl == "fused" and device == "cuda" else {}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("B,D", SHAPES)
@pytest.mark.parametrize("impl", ["chunked", "fused"])
def test_parity_fp32_vs_reference(impl, B, D, scale, device):
    _skip_fused_cpu(impl, device)
    e, t = _inputs(B, D, seed=B * 1000 + D, device=device)
    ref = _run(_impl("reference"), e, t, scale)
    got = _run(_impl(impl, chunk_size=16, **_ieee(impl, device)), e, t, scale)  # small chunk: several row blocks
    _assert_close(got, ref, 1e-5, 1e-4, scale)


@needs_open_clip
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("B,D", [(1, 3), (33, 17), (130, 64)])
@pytest.mark.parametrize("impl", ["reference", "chunked", "fused"])
def test_parity_fp32_vs_open_clip(impl, B, D, scale, device):
    _skip_fused_cpu(impl, device)
    e, t = _inputs(B, D, seed=7 + B + D, device=device)
    ref = _run(_impl("open_clip"), e, t, scale)
    got = _run(_impl(impl, chunk_size=32, **_ieee(impl, device)), e, t, scale)
    _assert_close(got, ref, 1e-5, 1e-4, scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["reference", "chunked", "fused"])
def test_unnormalised_inputs(impl, device):
    # the model normalises, but the loss must not assume it: logits of several hundred at scale 100
    _skip_fused_cpu(impl, device)
    e, t = _inputs(40, 20, seed=3, normalise=False, device=device)
    ref = _run(_impl("reference"), e, t, 100.0)
    got = _run(_impl(impl, chunk_size=16, **_ieee(impl, device)), e, t, 100.0)
    if impl == "reference":
        oc = _run(_impl("open_clip"), e, t, 100.0) if OPEN_CLIP is not None else ref
        _assert_close(oc, ref, 1e-5, 1e-4, 100.0)
    _assert_close(got, ref, 1e-5, 1e-4, 100.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["reference", "chunked", "fused", "auto"])
def test_hand_worked_case(impl, device):
    # E = [[1, 0], [0, 1]], T = [[0.6, 0.8], [0, 1]], s = 2.
    # s E T^T = [[1.2, 0], [1.6, 2]] (rows: ECG i against texts j); s T E^T = its transpose [[1.2, 1.6], [0, 2]].
    # CE by rows, label i:
    #   ECG 0:  log(e^1.2 + e^0)   - 1.2 = log(4.3201169) - 1.2 = 0.2632825
    #   ECG 1:  log(e^1.6 + e^2)   - 2   = log(12.342088) - 2   = 0.5130153
    #   text 0: log(e^1.2 + e^1.6) - 1.2 = log(8.2731493) - 1.2 = 0.9130153
    #   text 1: log(e^0 + e^2)     - 2   = log(8.3890561) - 2   = 0.1269280
    # loss = 0.5 * ((0.2632825 + 0.5130153) / 2 + (0.9130153 + 0.1269280) / 2) = 0.4540602
    _skip_fused_cpu(impl, device)
    kw = _ieee(impl if impl != "auto" else "fused", device)
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]], device=device)
    t = torch.tensor([[0.6, 0.8], [0.0, 1.0]], device=device)
    loss = infonce_loss(e, t, torch.tensor(2.0, device=device), impl, **kw)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert abs(float(loss) - 0.4540602) < 1e-6
    # d loss / ds = 0.5/b * (sum P1 * Z + sum P2 * Z - 2 sum_i E_i.T_i), by the same numbers
    z = (e @ t.T).cpu()
    p1, p2 = torch.softmax(2 * z, 1), torch.softmax(2 * z.T, 1)
    ds_paper = 0.25 * (float((p1 * z).sum() + (p2 * z.T).sum()) - 2 * (0.6 + 1.0))
    s = torch.tensor(2.0, requires_grad=True, device=device)
    infonce_loss(e, t, s, impl, **kw).backward()
    assert abs(float(s.grad) - ds_paper) < 1e-6


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,D", [(37, 24), (70, 130)])
@pytest.mark.parametrize("impl", ["chunked", "fused"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(impl, dtype, B, D, device):
    # fp32 loss, gradients in the input dtype, values against the fp32 reference on the same half inputs at the
    # stated per-dtype tolerance (CPU: the interpreter computes the dots in fp32, triton issue 11584, but rounds P
    # to the input dtype as the GPU does; D = 130 takes the several-accumulator path there)
    _skip_fused_cpu(impl, device)
    e, t = _inputs(B, D, seed=11 + D, dtype=dtype, device=device)
    e_, t_ = e.clone().requires_grad_(True), t.clone().requires_grad_(True)
    loss = infonce_loss(e_, t_, torch.tensor(50.0, device=device), impl, chunk_size=16)
    loss.backward()
    assert loss.dtype == torch.float32 and e_.grad.dtype == dtype and t_.grad.dtype == dtype
    ref = _run(_impl("reference"), e.float(), t.float(), 50.0)
    got = _run(_impl(impl, chunk_size=16), e, t, 50.0)
    lt, gt = HALF_TOL[dtype]
    _assert_close(got, ref, lt, gt, 50.0)


# ---------------------------------------------------------------------------------------------------------------
# Confident pairs: the regime training converges to
# ---------------------------------------------------------------------------------------------------------------
CONFIDENT_SCALE, CONFIDENT_LOSS = 100.0, 3e-5


def _confident_inputs(B, D, seed, dtype, device):
    """bf16 / fp16 pairs t_i = normalise(e_i + sigma n_i) at the sigma (found by bisection, in float64 on the rounded
    inputs) where the loss at s = 100 is about 3e-5: the gradient is the small 1 - P_ii of a few rows."""
    g = torch.Generator().manual_seed(seed)
    e = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    n = torch.randn(B, D, generator=g, dtype=torch.float64) / D ** 0.5

    def make(sig):
        return e.to(dtype), F.normalize(e + sig * n, dim=1).to(dtype)

    lo, hi = 0.0, 4.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        a, b = make(mid)
        if float(_f64_loss(a.double(), b.double(), a.double(), b.double(), 0)) < CONFIDENT_LOSS:
            lo = mid
        else:
            hi = mid
    a, b = make(lo)
    return a.to(device), b.to(device)


def _f64_loss(e, t, e_all, t_all, offset, scale=CONFIDENT_SCALE):
    lab = torch.arange(e.shape[0], device=e.device) + offset
    return 0.5 * (F.cross_entropy(scale * e @ t_all.T, lab) + F.cross_entropy(scale * t @ e_all.T, lab))


def _local_loss_run(backend, e, t):
    """Square case (one process): loss and grads (dE, dT, ds) of the Function, or float64 autograd, on fresh
    leaves."""
    leaves = [x.detach().clone().requires_grad_(True) for x in (e, t)]
    s = torch.tensor(CONFIDENT_SCALE, device=e.device, requires_grad=True)
    if backend == "float64":
        loss = _f64_loss(leaves[0], leaves[1], leaves[0], leaves[1], 0, s.double())
    else:
        loss = infonce._InfoNCE.apply(*leaves, None, None, s.reshape(1), backend, 16, "ieee", 0, None)
    loss.backward()
    return [loss.detach().double()] + [x.grad.double() for x in leaves] + [s.grad.double()]


def _world_run(backend, e_all, t_all, world, rank, gains, scale=CONFIDENT_SCALE):
    """Rank `rank` of a world of `world` ranks emulated in one process (no process group): every rank's forward
    runs on its rows against the gathered e_all / t_all, then rank `rank` backpropagates gains[rank] * its loss
    with the backward's one collective (_exchange) answered from the ranks' saved statistics and c_r =
    gains[r] * 0.5 / b, as the all_gather would. Returns [loss, dE, dT, ds] of that rank (float64)."""
    b = e_all.shape[0] // world
    s = torch.tensor(float(scale), device=e_all.device, requires_grad=True)
    mine = [x[rank * b:(rank + 1) * b].detach().clone().requires_grad_(True) for x in (e_all, t_all)]
    losses, stats = [], []
    for r in range(world):
        er, tr = mine if r == rank else (e_all[r * b:(r + 1) * b], t_all[r * b:(r + 1) * b])
        loss = infonce._InfoNCE.apply(er, tr, e_all.detach(), t_all.detach(), s.reshape(1), backend, 16, "ieee",
                                      r * b, None)
        losses.append(loss)
        stats.append(loss.grad_fn.saved_tensors[5:7])  # (lse1, lse2): see _InfoNCE.forward

    def exchange(lse1, lse2, c, group):
        assert torch.equal(lse1, stats[rank][0]) and torch.equal(lse2, stats[rank][1])
        assert abs(float(c) - gains[rank] * 0.5 / b) <= 1e-6 * abs(gains[rank] * 0.5 / b)
        rows = [torch.cat([l1.reshape(-1).float(), l2.reshape(-1).float(),
                           torch.tensor([gains[r] * 0.5 / b], device=l1.device)]) for r, (l1, l2) in enumerate(stats)]
        return infonce._unpack(torch.stack(rows), lse1.shape)

    real = infonce._exchange
    infonce._exchange = exchange
    try:
        (gains[rank] * losses[rank]).backward()
    finally:
        infonce._exchange = real
    return [losses[rank].detach().double(), mine[0].grad.double(), mine[1].grad.double(), s.grad.double()]


def _f64_world(e_all, t_all, world, rank, gains, scale=CONFIDENT_SCALE):
    """What OpenCLIP's gather-with-gradient semantics hand rank `rank`, in float64 autograd: its loss, the gradient
    of sum_r gains[r] loss_r with respect to its rows (the all_gather backward's sum over ranks), and the gradient
    of gains[rank] * its own loss with respect to the (replicated) scale."""
    b = e_all.shape[0] // world
    ea, ta = (x.detach().double().clone().requires_grad_(True) for x in (e_all, t_all))
    s = torch.tensor(float(scale), dtype=torch.float64, requires_grad=True)
    losses = [_f64_loss(ea[r * b:(r + 1) * b], ta[r * b:(r + 1) * b], ea, ta, r * b, s) for r in range(world)]
    sum(g * loss for g, loss in zip(gains, losses)).backward(inputs=[ea, ta], retain_graph=True)
    (ds,) = torch.autograd.grad(gains[rank] * losses[rank], s)
    sl = slice(rank * b, (rank + 1) * b)
    return [losses[rank].detach(), ea.grad[sl], ta.grad[sl], ds]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gathered", [False, True])
@pytest.mark.parametrize("D", [48, 130, 256, 768])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_confident_pairs_half_gradients(dtype, D, gathered, device):
    # s = 100, well-aligned half pairs (loss ~3e-5, every P_ii > 0.98): the gradients are the small differences
    # P - I, so P_ii must not be rounded to bf16 before the positive is subtracted. Judged against float64 on the
    # same rounded inputs, relative to the chunked PyTorch path's own error there (<= 5x it and <= 3e-2). D covers
    # every accumulator width: one accumulator (48 interpreted, 256 on a GPU) and several (130, 768).
    if device == "cpu" and D > 130:
        pytest.skip("interpreter: 48 and 130 already take the one- and several-accumulator paths")
    if device == "cuda" and D == 130:
        pytest.skip("a GPU takes one accumulator up to 256")
    if not FUSED_ON_CPU and device == "cpu":
        pytest.skip("fused on CPU tensors needs the Triton interpreter")
    B, seed = (64, 1000 + D) if device == "cpu" else (512, 2000 + D)
    print(f"confident regime: seed {seed}, B {B}, D {D}, {dtype}, gathered {gathered}")
    if gathered:  # rank 1 of an emulated world of 2 (its rows are the second half of the global batch)
        e_all, t_all = _confident_inputs(2 * B, D, seed, dtype, device)
        e, t, z = e_all[B:], t_all[B:], CONFIDENT_SCALE * e_all[B:].double() @ t_all.double().T
        lab = torch.arange(B, device=device) + B
        ref = _f64_world(e_all, t_all, 2, 1, [1.0, 1.0])
        got = {b: _world_run(b, e_all, t_all, 2, 1, [1.0, 1.0]) for b in ("torch", "triton")}
    else:
        e, t = _confident_inputs(B, D, seed, dtype, device)
        z, lab = CONFIDENT_SCALE * e.double() @ t.double().T, torch.arange(B, device=device)
        ref = _local_loss_run("float64", e.double(), t.double())
        got = {b: _local_loss_run(b, e, t) for b in ("torch", "triton")}
    p_ii = torch.softmax(z, 1)[torch.arange(B), lab]
    assert float(ref[0]) < 1e-4 and float(p_ii.min()) > 0.98, (float(ref[0]), float(p_ii.min()))
    for i, name in enumerate(["loss", "dE", "dT", "dlogit_scale"]):
        err = {b: _rel(got[b][i], ref[i].to(got[b][i].device), 1e-30) for b in got}
        print(f"  {name}: fused {err['triton']:.3g}, chunked {err['torch']:.3g}")
        if name == "loss":  # fused keeps the loss as the small log2-sum (chunked: a difference of two ~100s)
            assert err["triton"] <= 1e-2, (name, err)
        else:
            assert err["triton"] <= min(3e-2, max(5 * err["torch"], 1e-3)), (name, err)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("world,gains,D", [(2, [0.5, 2.0], 20), (3, [1.0, 0.0, 1.0], 20),
                                           (3, [0.0, 1.0, -0.5], 20), (2, [1.0, 3.0], 100)])
def test_gathered_backward_per_rank_gains(backend, world, gains, D, device):
    # each rank's backward computes its rows' gradient of sum_r g_r loss_r from every rank's statistics and g_r
    # (one small all_gather): unequal, zero and negative upstream gradients, worlds of 2 and 3, every rank; fp32
    # against float64 autograd through the gathered embeddings (OpenCLIP's semantics). D = 100 takes the wide-D
    # kernel path under the interpreter (several accumulator parts, the row-part DS launch of its own).
    if backend == "triton" and device == "cpu" and not FUSED_ON_CPU:
        pytest.skip("fused on CPU tensors needs the Triton interpreter")
    b, seed = 6, 77 + world + D
    print(f"seed {seed}, world {world}, b {b}, D {D}, gains {gains}")
    e_all, t_all = _inputs(world * b, D, seed=seed, device=device)
    for rank in range(world):
        got = _world_run(backend, e_all, t_all, world, rank, gains, scale=20.0)
        ref = _f64_world(e_all, t_all, world, rank, gains, scale=20.0)
        for name, a, r in zip(["loss", "dE", "dT", "dlogit_scale"], got, ref):
            r = r.to(a.device)
            err = float((a - r).norm() / max(float(r.norm()), 1e-6))
            assert err <= 1e-5, (rank, name, err)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["chunked", "fused"])
def test_partial_requires_grad(impl, device):
    _skip_fused_cpu(impl, device)
    kw = _ieee(impl, device)
    e, t = _inputs(20, 9, seed=5, device=device)
    s = torch.tensor(10.0, device=device)  # a constant scale
    e1 = e.clone().requires_grad_(True)
    infonce_loss(e1, t, s, impl, **kw).backward()
    e2 = e.clone().requires_grad_(True)
    infonce_loss(e2, t, s, "reference").backward()
    assert _rel(e1.grad, e2.grad, 1e-2) < 1e-4
    s1 = torch.tensor(10.0, requires_grad=True, device=device)
    infonce_loss(e, t, s1, impl, **kw).backward()
    s2 = torch.tensor(10.0, requires_grad=True, device=device)
    infonce_loss(e, t, s2, "reference").backward()
    assert abs(float(s1.grad - s2.grad)) <= 1e-4 * abs(float(s2.grad)) + 1e-7


def test_logit_scale_from_parameter_and_float():
    e, t = _inputs(9, 8, seed=2)
    p = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    a = infonce_loss(e, t, p.exp(), "chunked")
    a.backward()
    assert p.grad is not None and p.grad.shape == ()
    b = infonce_loss(e, t, 1 / 0.07, "reference")
    assert abs(float(a.detach()) - float(b)) < 1e-5


def test_bad_input():
    e, t = _inputs(4, 8, seed=1)
    s = torch.tensor(1.0)
    with pytest.raises(ValueError, match="reference.*chunked.*fused"):
        infonce_loss(e, t, s, "flash")
    with pytest.raises(ValueError, match="same shape"):
        infonce_loss(e, t[:3], s)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        infonce_loss(e[0], t[0], s)
    with pytest.raises(ValueError, match="dtype mismatch"):
        infonce_loss(e, t.double(), s)
    with pytest.raises(ValueError, match="not supported"):
        infonce_loss(e.double(), t.double(), s)
    with pytest.raises(ValueError, match="one element"):
        infonce_loss(e, t, torch.ones(2))
    with pytest.raises(ValueError, match="tf32.*tf32x3.*ieee"):
        infonce_loss(e, t, s, "chunked", precision="fp64")


def test_fused_on_cpu_without_interpreter_is_an_error_and_auto_falls_back(monkeypatch):
    # "fused" means the kernels or a clear error; "auto" takes the chunked PyTorch path off CUDA, same values
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    e, t = _inputs(10, 6, seed=4)
    with pytest.raises(RuntimeError, match="interpreter"):
        infonce_loss(e, t, torch.tensor(5.0), "fused")
    a = infonce_loss(e, t, torch.tensor(5.0), "auto")
    b = infonce_loss(e, t, torch.tensor(5.0), "reference")
    assert abs(float(a) - float(b)) <= 1e-5 * abs(float(b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,D,dtype", [(50, 40, torch.float32), (30, 130, torch.bfloat16), (30, 130, torch.float32)])
def test_fused_runs_the_kernels_with_5U_of_matmul(B, D, dtype, device):
    # the fused path really launches the kernels (interpreted on CPU, compiled on CUDA): the launch counter sees
    # 1 U forward (rows + columns in one pass) and 4 U backward (each tile once for dE, once for dT), U = 2 B^2 D,
    # while D fits one accumulator (64 interpreted, 256 on a GPU); wider D splits the gradient's output columns
    # in `split` parts that each recompute Z: 1 + 2 (split + 1) U (D = 130 interpreted: 3 parts, 9 U)
    _skip_fused_cpu("fused", device)
    split = infonce._grad_shape(D, device == "cpu", torch.empty((), dtype=dtype).element_size())[3]
    units = 1 + 2 * (split + 1)
    assert units == (5 if device == "cuda" else {40: 5, 130: 9}[D])
    e, t = _inputs(B, D, seed=6, device=device, dtype=dtype)
    with count_matmul_flops() as work:
        got = _run(_impl("fused", **_ieee("fused", device)), e, t, 20.0)
    assert work.flops == units * 2 * B * B * D
    tol = (1e-5, 1e-4) if dtype == torch.float32 else HALF_TOL[dtype]
    _assert_close(got, _run(_impl("reference"), e.float(), t.float(), 20.0), *tol, 20.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["ieee", "tf32", "tf32x3"])
def test_fp32_precisions(precision, device):
    # every precision runs; the interpreter computes each exactly, a GPU at the stated PRECISION_TOL
    _skip_fused_cpu("fused", device)
    e, t = _inputs(40, 70, seed=13, device=device)
    lt, gt = PRECISION_TOL[precision] if device == "cuda" else (1e-5, 1e-4)
    _assert_close(_run(_impl("fused", precision=precision), e, t, 30.0), _run(_impl("reference"), e, t, 30.0),
                  lt, gt, 30.0)


@pytest.mark.skipif(not INTERPRETED, reason="calls the forward kernel on CPU tensors under the interpreter")
def test_forward_column_underflow_guard():
    # the forward's one-exp column sums are relative to the tile max; a column more than 90 (log2 units) below it
    # in every row of the tile takes the exact path (SAFE_COLS). Unnormalised inputs at s = 100 have such columns:
    # without the guard their column LSE is lost (inf), with it the column LSE matches torch.
    e, t = _inputs(40, 20, seed=3, normalise=False)
    s = torch.tensor([100.0])
    ref = torch.logsumexp(100 * e @ t.T, 0)
    errs = {}
    for safe in (True, False):
        rm, rl, pos = torch.empty(1, 40), torch.empty(1, 40), torch.empty(40)
        cm, cl = torch.empty(2, 40), torch.empty(2, 40)
        infonce._infonce_fwd_kernel[(2, 1)](e, t, s, rm, rl, cm, cl, pos, 40, 40, 20, 20, 20, 0, 64, 64,
                                            BLOCK_M=32, BLOCK_N=32, BLOCK_D=64, WITH_COLS=True, WITH_POS=True,
                                            UPCAST=True, PRECISION="ieee", EVEN_D=False, SAFE_COLS=safe)
        st = infonce._merge(cm, cl)
        errs[safe] = float(((st[0] + st[1]) * infonce._LN2 - ref).abs().max())
    assert errs[True] < 1e-3 and not errs[False] < 1e-3, errs


def test_chunked_memory_scaling_hint():
    # chunked never holds a [B, B] buffer: with chunk 8 on B = 64 every intermediate is at most [8, 64].
    # (The B = 32768 peak-memory figures live in benchmarks/results/infonce_cpu.md.)
    e, t = _inputs(64, 16, seed=9)
    seen = []
    orig = torch.Tensor.exp_

    def spy(self):
        seen.append(tuple(self.shape))
        return orig(self)

    torch.Tensor.exp_ = spy
    try:
        _run(_impl("chunked", chunk_size=8), e, t, 3.0)
    finally:
        torch.Tensor.exp_ = orig
    assert seen and all(s[0] <= 8 for s in seen)


def test_autotune_switch_and_bucketed_keys(monkeypatch):
    # MELP_AUTOTUNE=off keeps the first config that fits; the autotune keys are power-of-two buckets of B
    if not infonce.HAS_TRITON:
        pytest.skip("triton not installed")
    x = torch.empty(8, 256, dtype=torch.bfloat16)
    for kernel, tuned in (("fwd", infonce._TUNED[("fwd", 2)]), ("grad", infonce._TUNED[("grad", 2, False)])):
        prune = infonce._make_prune(kernel)
        monkeypatch.setenv("MELP_AUTOTUNE", "on")
        full = prune(tuned.configs, {"X": x, "D": 256})
        assert len(full) == len(infonce.shipped_configs(kernel, 256, 2)) > 1
        monkeypatch.setenv("MELP_AUTOTUNE", "off")
        assert prune(tuned.configs, {"X": x, "D": 256}) == full[:1]
        assert "M_BUCKET" in tuned.keys and "M" not in tuned.keys
    assert [infonce._bucket(n) for n in (1, 1000, 1024, 1025, 16384)] == [1, 1024, 1024, 2048, 16384]


def test_autotune_choice_cached_on_disk_and_off_switch(tmp_path, monkeypatch):
    # the first pick of a key times (tune) once and writes the choice; a fresh process (memory cleared) reads it
    # back without timing; MELP_AUTOTUNE=off takes the first config and never times or writes
    from melp_kernels import autotune

    monkeypatch.setenv("MELP_AUTOTUNE_CACHE", str(tmp_path / "at.json"))
    monkeypatch.delenv("MELP_AUTOTUNE", raising=False)
    autotune.clear_memory()
    calls = []

    def tune():
        calls.append(1)
        return (128, 64, 64, 8, 2)

    first = (128, 128, 64, 8, 3)
    assert autotune.pick("k", (1024, 1024, 256), tune, first) == (128, 64, 64, 8, 2) and len(calls) == 1
    assert autotune.pick("k", (1024, 1024, 256), tune, first) == (128, 64, 64, 8, 2) and len(calls) == 1
    autotune.clear_memory()
    assert autotune.pick("k", (1024, 1024, 256), tune, first) == (128, 64, 64, 8, 2) and len(calls) == 1
    import json
    stored = json.load(open(tmp_path / "at.json"))
    (k, v), = stored.items()
    assert v == [128, 64, 64, 8, 2] and "triton" in k and "torch" in k and k.endswith("k | 1024,1024,256")
    autotune.clear_memory()
    monkeypatch.setenv("MELP_AUTOTUNE", "off")
    assert autotune.pick("k", (1024, 1024, 256), tune, first) == first and len(calls) == 1
    assert autotune.pick("k2", (1, 2), tune, first) == first and len(calls) == 1
    assert list(json.load(open(tmp_path / "at.json"))) == [k]
    autotune.clear_memory()


def _autotune_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from melp_kernels import autotune

    os.environ["MELP_AUTOTUNE_CACHE"] = os.path.join(out_dir, f"cache{rank}.json")  # as on two machines
    os.environ.pop("MELP_AUTOTUNE", None)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        calls = []

        def tune():  # each rank would time its own winner (load, noise): rank 0's must win everywhere
            calls.append(rank)
            return (128, 64 if rank == 0 else 32, 64, 8, 2)

        got = autotune.pick("k", (4096, 4096, 256), tune, (128, 128, 64, 8, 3))
        torch.save({"cfg": got, "calls": calls}, os.path.join(out_dir, f"at{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_autotune_rank0_choice_broadcast(tmp_path):
    spawn(_autotune_worker, (2, str(tmp_path / "init"), str(tmp_path)), 2, 120, "2-process autotune run")
    r0, r1 = (torch.load(tmp_path / f"at{r}.pt") for r in range(2))
    assert r0["cfg"] == r1["cfg"] == (128, 64, 64, 8, 2)
    assert r0["calls"] == [0] and r1["calls"] == []  # only rank 0 timed anything
    assert (tmp_path / "cache0.json").exists() and not (tmp_path / "cache1.json").exists()


def test_fp32_wide_configs_prune_on_shared_memory():
    # configs that cannot fit in 227 KB of shared memory are dropped before anything compiles
    for D in (128, 256, 512, 768):
        for es in (2, 4):
            for kernel in ("fwd", "grad"):
                kept = infonce.shipped_configs(kernel, D, es)
                assert kept
                est = infonce._fwd_shared if kernel == "fwd" else (lambda c, e, D=D: infonce._grad_shared(c, e, D))
                assert all(est(c, es) <= 227 * 1024 for c in kept)
    assert len(infonce.shipped_configs("fwd", 256, 4, shared_limit=100 * 1024)) < len(infonce._FWD_CONFIGS[4])


# ---------------------------------------------------------------------------------------------------------------
# CUDA (compiled Triton)
# ---------------------------------------------------------------------------------------------------------------
@cuda_only
@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("B,D", [(1000, 256), (4097, 128), (300, 520), (2048, 768)])
@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32"])
def test_cuda_fp32_large(B, D, scale, precision):
    e, t = _inputs(B, D, seed=B + D, device="cuda")
    ref = _run(_impl("reference"), e, t, scale)
    lt, gt = PRECISION_TOL[precision]
    _assert_close(_run(_impl("fused", precision=precision), e, t, scale), ref, lt, gt, scale)
    _assert_close(_run(_impl("chunked"), e, t, scale), ref, 1e-5, 1e-4, scale)
    if OPEN_CLIP is not None:
        _assert_close(_run(_impl("open_clip"), e, t, scale), ref, 1e-5, 1e-4, scale)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("B,D", [(1, 3), (33, 17), (130, 130), (1000, 256), (3000, 520), (2048, 768)])
def test_cuda_half(B, D, scale, dtype):
    e, t = _inputs(B, D, seed=B * 3 + D, device="cuda", dtype=dtype)
    ref = _run(_impl("reference"), e.float(), t.float(), scale)  # fp32 math on the same half inputs
    lt, gt = HALF_TOL[dtype]
    for impl in ("fused", "chunked"):
        _assert_close(_run(_impl(impl), e, t, scale), ref, lt, gt, scale)


@pytest.mark.skipif(not HAS_CUDA or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_launches_on_the_inputs_device():
    e, t = _inputs(300, 64, seed=12, device="cuda:1")
    ref = _run(_impl("reference"), e, t, 30.0)
    with torch.cuda.device(0):
        got = _run(_impl("fused", precision="ieee"), e, t, 30.0)
    _assert_close(got, ref, 1e-5, 1e-4, 30.0)


# ---------------------------------------------------------------------------------------------------------------
# Two processes (gloo) against one process on the same global batch
# ---------------------------------------------------------------------------------------------------------------
DIST_B_LOCAL, DIST_D, DIST_SCALES = 5, 17, (1.0, 100.0)
# fused on CPU tensors needs the interpreter (spawned workers inherit TRITON_INTERPRET from conftest.py)
DIST_IMPLS = (["reference", "chunked"] + (["fused"] if FUSED_ON_CPU else [])
              + (["open_clip"] if OPEN_CLIP is not None else []))


def _dist_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        e_all, t_all = _inputs(DIST_B_LOCAL * world, DIST_D, seed=123)
        sl = slice(rank * DIST_B_LOCAL, (rank + 1) * DIST_B_LOCAL)
        results = {}
        for scale in DIST_SCALES:
            for impl in DIST_IMPLS:
                if impl == "open_clip":
                    crit = OPEN_CLIP.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
                    fn = lambda e, t, s: crit(e, t, s)  # noqa: E731
                else:
                    fn = _impl(impl, chunk_size=4)
                results[(impl, scale)] = _run(fn, e_all[sl], t_all[sl], scale)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_equals_one_process(tmp_path):
    world = 2
    spawn(_dist_worker, (world, str(tmp_path / "init"), str(tmp_path)), 2, 150, "2-process gloo run")
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    e_all, t_all = _inputs(DIST_B_LOCAL * world, DIST_D, seed=123)
    for scale in DIST_SCALES:
        glob = _run(_impl("reference"), e_all, t_all, scale)  # the 1-process loss on the global batch
        for impl in DIST_IMPLS:
            rs = [per_rank[r][(impl, scale)] for r in range(world)]
            loss = sum(x[0] for x in rs) / world
            # embedding gradients: rank r holds W * dL/dE[its rows]; DDP's average over ranks divides by W
            de = torch.cat([x[1] for x in rs]) / world
            dt = torch.cat([x[2] for x in rs]) / world
            ds = sum(x[3] for x in rs) / world  # the replicated scale: DDP averages its per-rank gradients
            _assert_close([loss, de, dt, ds], glob, 1e-5, 1e-4, scale)
            if "open_clip" in DIST_IMPLS:  # and rank by rank: the same loss and gradients as OpenCLIP's ClipLoss
                for r in range(world):
                    _assert_close(per_rank[r][(impl, scale)], per_rank[r][("open_clip", scale)], 1e-5, 1e-4, scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["reference", "chunked", "fused"])
def test_autocast_does_not_lower_precision(impl, device):
    # under a bf16 autocast the loss still computes its logits in fp32 from the given (fp32) embeddings
    _skip_fused_cpu(impl, device)
    e, t = _inputs(24, 16, seed=8, device=device)
    ref = _run(_impl("reference"), e, t, 100.0)

    def fn(a, b, s):
        with torch.autocast(device, dtype=torch.bfloat16):
            return infonce_loss(a, b, s, impl, chunk_size=8, **_ieee(impl, device))

    _assert_close(_run(fn, e, t, 100.0), ref, 1e-5, 1e-4, 100.0)


def _run_views(fn, base_e, base_t, scale):
    """loss and grads of fn on views that stay strided: e = base_e[:, 3:20] (row stride 40), t = base_t.T."""
    be = base_e.detach().clone().requires_grad_(True)
    bt = base_t.detach().clone().requires_grad_(True)
    s = torch.tensor(float(scale), device=be.device, requires_grad=True)
    loss = fn(be[:, 3:20], bt.T, s)
    loss.backward()
    return [loss.detach().float(), be.grad[:, 3:20].float(), bt.grad.T.float(), s.grad.float()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["chunked", "fused"])
def test_strided_inputs_and_scale_shapes(impl, device, monkeypatch):
    # row-strided views go to the kernels as they are (checked on what the kernels receive); a transposed
    # (column-strided) view is made contiguous
    _skip_fused_cpu(impl, device)
    g = torch.Generator().manual_seed(21)
    base_e = torch.randn(19, 40, generator=g).to(device)
    base_t = torch.randn(17, 19, generator=g).to(device)
    assert base_e[:, 3:20].stride() == (40, 1) and base_t.T.stride() == (1, 19)
    seen = []
    fwd = infonce._tri_fwd

    def spy(x, y, *a, **k):
        seen.append((x.stride(), y.stride()))
        return fwd(x, y, *a, **k)

    monkeypatch.setattr(infonce, "_tri_fwd", spy)
    kw = _ieee(impl, device)
    for scale_shape in [(), (1,)]:
        for sv in (0.0, 30.0):
            def fn(a, b, s, impl=impl):
                return infonce_loss(a, b, s.reshape(scale_shape), impl, chunk_size=8, **kw)

            ref = _run_views(lambda a, b, s: infonce_loss(a, b, s.reshape(scale_shape), "reference"), base_e, base_t,
                             sv)
            _assert_close(_run_views(fn, base_e, base_t, sv), ref, 1e-5, 1e-4, sv)
    if impl == "fused":
        assert seen and all(x == (40, 1) and y == (17, 1) for x, y in seen)  # e reached the kernels strided
    if OPEN_CLIP is not None:
        _assert_close(_run_views(_impl(impl, **kw), base_e, base_t, 30.0),
                      _run_views(_impl("open_clip"), base_e, base_t, 30.0), 1e-5, 1e-4, 30.0)


def test_kernel_resources_small_grid():
    # the same sm_90 compile and rule as benchmarks/kernel_resources.py (no spill, no stack, shared <= 227 KB,
    # wgmma shapes in the bf16 kernels' SASS), on one config per kernel at D = 128, in a fresh process without the
    # interpreter
    pytest.importorskip("triton")
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [env.get("PYTHONPATH", ""), ROOT] if p)
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "kernel_resources.py"), "--quick", "--dims", "128",
           "--dtypes", "bf16", "--only", "infonce"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith("| infonce")]
    assert len(rows) >= 4 and all(ln.rstrip().endswith("| ok |") and "| 64x" in ln for ln in rows), p.stdout
    # the SASS hot-loop figures are there (warp-instructions per logit, a bound)
    assert all(("| issue |" in ln) or ("| tensor |" in ln) or ("| mufu |" in ln) for ln in rows), p.stdout
