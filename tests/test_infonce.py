"""Parity of the global InfoNCE loss: fused (Triton; interpreter on CPU) and chunked against the reference and
OpenCLIP's ClipLoss(local_loss=True, gather_with_grad=True), values and gradients (embeddings and logit_scale),
odd shapes, logit scale 1 and 100, bf16 on CUDA, and a 2-process gloo run against the 1-process global batch."""

import math
import os
import time

import pytest
import torch
import torch.nn.functional as F

from melp_kernels import infonce
from melp_kernels.infonce import infonce_loss

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" and infonce.KERNELS_INTERPRETED


OPEN_CLIP = infonce.load_open_clip_loss()
needs_open_clip = pytest.mark.skipif(OPEN_CLIP is None, reason="open_clip_torch not installed")


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


SHAPES = [(1, 3), (7, 17), (33, 64), (130, 130), (64, 3)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("B,D", SHAPES)
@pytest.mark.parametrize("impl", ["chunked", "fused"])
def test_parity_fp32_vs_reference(impl, B, D, scale, device):
    e, t = _inputs(B, D, seed=B * 1000 + D, device=device)
    ref = _run(_impl("reference"), e, t, scale)
    got = _run(_impl(impl, chunk_size=16), e, t, scale)  # small chunk: several row blocks
    _assert_close(got, ref, 1e-5, 1e-4, scale)


@needs_open_clip
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("B,D", [(1, 3), (33, 17), (130, 64)])
@pytest.mark.parametrize("impl", ["reference", "chunked", "fused"])
def test_parity_fp32_vs_open_clip(impl, B, D, scale, device):
    e, t = _inputs(B, D, seed=7 + B + D, device=device)
    ref = _run(_impl("open_clip"), e, t, scale)
    got = _run(_impl(impl, chunk_size=32), e, t, scale)
    _assert_close(got, ref, 1e-5, 1e-4, scale)


@pytest.mark.parametrize("impl", ["reference", "chunked", "fused"])
def test_unnormalised_inputs(impl):
    # the model normalises, but the loss must not assume it: logits of several hundred at scale 100
    e, t = _inputs(40, 20, seed=3, normalise=False)
    ref = _run(_impl("reference"), e, t, 100.0)
    got = _run(_impl(impl, chunk_size=16), e, t, 100.0)
    if impl == "reference":
        oc = _run(_impl("open_clip"), e, t, 100.0) if OPEN_CLIP is not None else ref
        _assert_close(oc, ref, 1e-5, 1e-4, 100.0)
    _assert_close(got, ref, 1e-5, 1e-4, 100.0)


@pytest.mark.parametrize("impl", ["reference", "chunked", "fused", "auto"])
def test_hand_worked_case(impl):
    # E = [[1, 0], [0, 1]], T = [[0.6, 0.8], [0, 1]], s = 2.
    # s E T^T = [[1.2, 0], [1.6, 2]] (rows: ECG i against texts j); s T E^T = its transpose [[1.2, 1.6], [0, 2]].
    # CE by rows, label i:
    #   ECG 0:  log(e^1.2 + e^0)   - 1.2 = log(4.3201169) - 1.2 = 0.2632825
    #   ECG 1:  log(e^1.6 + e^2)   - 2   = log(12.342088) - 2   = 0.5130153
    #   text 0: log(e^1.2 + e^1.6) - 1.2 = log(8.2731493) - 1.2 = 0.9130153
    #   text 1: log(e^0 + e^2)     - 2   = log(8.3890561) - 2   = 0.1269280
    # loss = 0.5 * ((0.2632825 + 0.5130153) / 2 + (0.9130153 + 0.1269280) / 2) = 0.4540602
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    loss = infonce_loss(e, t, torch.tensor(2.0), impl)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert abs(float(loss) - 0.4540602) < 1e-6
    # d loss / ds = 0.5/b * (sum P1 * Z + sum P2 * Z - 2 sum_i E_i.T_i), by the same numbers
    z = e @ t.T
    p1, p2 = torch.softmax(2 * z, 1), torch.softmax(2 * z.T, 1)
    ds_paper = 0.25 * (float((p1 * z).sum() + (p2 * z.T).sum()) - 2 * (0.6 + 1.0))
    s = torch.tensor(2.0, requires_grad=True)
    infonce_loss(e, t, s, impl).backward()
    assert abs(float(s.grad) - ds_paper) < 1e-6


@pytest.mark.parametrize("impl", ["chunked", "fused"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_cpu(impl, dtype):
    # On CPU the interpreter runs the kernels with fp32 dots (triton issue 11584); this checks the plumbing of
    # half inputs (fp32 loss, gradients in the input dtype) against the reference on the same half inputs.
    e, t = _inputs(37, 24, seed=11, dtype=dtype)
    e_, t_ = e.clone().requires_grad_(True), t.clone().requires_grad_(True)
    loss = infonce_loss(e_, t_, torch.tensor(50.0), impl, chunk_size=16)
    loss.backward()
    assert loss.dtype == torch.float32 and e_.grad.dtype == dtype and t_.grad.dtype == dtype
    ref = _run(_impl("reference"), e, t, 50.0)
    got = _run(_impl(impl, chunk_size=16), e, t, 50.0)
    _assert_close(got, ref, 1e-2, 1e-2, 50.0)


@pytest.mark.parametrize("impl", ["chunked", "fused"])
def test_partial_requires_grad(impl):
    e, t = _inputs(20, 9, seed=5)
    s = torch.tensor(10.0)  # a constant scale
    e1 = e.clone().requires_grad_(True)
    infonce_loss(e1, t, s, impl).backward()
    e2 = e.clone().requires_grad_(True)
    infonce_loss(e2, t, s, "reference").backward()
    assert _rel(e1.grad, e2.grad, 1e-2) < 1e-4
    s1 = torch.tensor(10.0, requires_grad=True)
    infonce_loss(e, t, s1, impl).backward()
    s2 = torch.tensor(10.0, requires_grad=True)
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


def test_fused_on_cpu_without_interpreter_falls_back(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert infonce._resolve_impl("fused", torch.device("cpu")) == "chunked"
    assert infonce._resolve_impl("auto", torch.device("cpu")) == "chunked"
    e, t = _inputs(10, 6, seed=4)
    a = infonce_loss(e, t, torch.tensor(5.0), "fused")
    b = infonce_loss(e, t, torch.tensor(5.0), "reference")
    assert abs(float(a) - float(b)) <= 1e-5 * abs(float(b))


@pytest.mark.skipif(not INTERPRETED, reason="the Triton interpreter is not active")
def test_fused_runs_the_interpreted_kernel():
    assert infonce._resolve_impl("fused", torch.device("cpu")) == "fused"


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


# ---------------------------------------------------------------------------------------------------------------
# CUDA (compiled Triton)
# ---------------------------------------------------------------------------------------------------------------
@cuda_only
@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("B,D", [(1000, 256), (4097, 128), (300, 520), (2048, 512)])
def test_cuda_fp32_large(B, D, scale):
    e, t = _inputs(B, D, seed=B + D, device="cuda")
    ref = _run(_impl("reference"), e, t, scale)
    for impl in ("fused", "chunked"):
        got = _run(_impl(impl), e, t, scale)
        _assert_close(got, ref, 1e-5, 1e-4, scale)
    if OPEN_CLIP is not None:
        _assert_close(_run(_impl("open_clip"), e, t, scale), ref, 1e-5, 1e-4, scale)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("B,D", [(1, 3), (33, 17), (130, 130), (1000, 256), (3000, 520)])
def test_cuda_half(B, D, scale, dtype):
    e, t = _inputs(B, D, seed=B * 3 + D, device="cuda", dtype=dtype)
    ref = _run(_impl("reference"), e, t, scale)  # fp32 math on the same half inputs
    for impl in ("fused", "chunked"):
        got = _run(_impl(impl), e, t, scale)
        _assert_close(got, ref, 1e-2, 1e-2, scale)


# ---------------------------------------------------------------------------------------------------------------
# Two processes (gloo) against one process on the same global batch
# ---------------------------------------------------------------------------------------------------------------
DIST_B_LOCAL, DIST_D, DIST_SCALES = 5, 17, (1.0, 100.0)
DIST_IMPLS = ["reference", "chunked", "fused"] + (["open_clip"] if OPEN_CLIP is not None else [])


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
    import torch.multiprocessing as mp

    world = 2
    ctx = mp.start_processes(_dist_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.time() + 150
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("2-process gloo run timed out")
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


@pytest.mark.parametrize("impl", ["reference", "chunked", "fused"])
def test_autocast_does_not_lower_precision(impl):
    # under a bf16 autocast the loss still computes its logits in fp32 from the given (fp32) embeddings
    e, t = _inputs(24, 16, seed=8)
    ref = _run(_impl("reference"), e, t, 100.0)

    def fn(a, b, s):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return infonce_loss(a, b, s, impl, chunk_size=8)

    _assert_close(_run(fn, e, t, 100.0), ref, 1e-5, 1e-4, 100.0)


@pytest.mark.parametrize("impl", ["chunked", "fused"])
def test_strided_inputs_and_scale_shapes(impl):
    # row-strided views go to the kernels as they are; a transposed (column-strided) view is made contiguous
    g = torch.Generator().manual_seed(21)
    big = torch.randn(19, 40, generator=g)
    e = big[:, 3:20]  # stride (40, 1)
    t = torch.randn(17, 19, generator=g).T  # stride (1, 19)
    for scale_shape in [(), (1,)]:
        for sv in (0.0, 30.0):
            def fn(a, b, s, impl=impl):
                return infonce_loss(a, b, s.reshape(scale_shape), impl, chunk_size=8)

            ref = _run(lambda a, b, s: infonce_loss(a, b, s.reshape(scale_shape), "reference"), e, t, sv)
            _assert_close(_run(fn, e, t, sv), ref, 1e-5, 1e-4, sv)
    if OPEN_CLIP is not None:
        _assert_close(_run(_impl(impl), e, t, 30.0), _run(_impl("open_clip"), e, t, 30.0), 1e-5, 1e-4, 30.0)
