"""Benchmark of the MELP local (beat-sentence) loss: fwd+bwd time, peak memory and matmul FLOPs, side by side.

    python benchmarks/local_loss.py                      # CUDA when present, else CPU
    python benchmarks/local_loss.py --device cpu --out benchmarks/results/local_loss_cpu.md
    python benchmarks/local_loss.py --device cuda --shapes 256,16,16,256 --dtype bfloat16 --repeat 20
    python benchmarks/local_loss.py --sass           # warp-instructions per element of a, from sm_90 SASS (no GPU)

Implementations:
  reference  the literal per-sample loop of docs/SPEC.md (kernels/melp_kernels/local_loss.py, impl="reference")
  naive      a vectorisation that forms the B x B x S x D beat contexts c_ik (defined here, the memory peer)
  batched    vectorised PyTorch on the Gram algebra: B x B x K x S intermediates, no D-wide contexts
  fused      Triton tiles of BJ ECGs x BI reports on tensor cores: forward, the masked CLIP loss in one small
             kernel, and two recomputing backward passes (dE over ECG blocks, dS over report blocks) that keep no
             dL/da (CUDA only; on the CPU it would only run interpreted, so its CPU row shows the FLOPs and the
             dispatched ops, counted under the interpreter, and no time)

Matmul FLOPs per fwd+bwd in units of u = 2 B^2 K S D (melp_kernels.local_loss.matmul_flops): "D-wide + Gram",
padding included; the reference loop and naive 6 u, batched 3 u, fused 5 u at K = 16, D = 256 bf16 (a three
times, two accumulations; more where the backward splits D over programs) + the K x K Gram dots.
--dtype: the input dtype(s) of every implementation (the loop, naive and batched compute in fp32 regardless).

Shapes: CPU B = 64 and 128 with K = 16, S = 12, D = 256; CUDA adds B = 256, K = 16, S = 16, D = 256.
Time: median of --repeat fwd+bwd runs after one warm-up, all in this process (the loop is run fewer times).
Peak memory: CPU, each implementation in a fresh subprocess, peak RSS (VmHWM, reset through
/proc/self/clear_refs; ru_maxrss where that is not possible) minus the RSS just before the fwd+bwd, inputs
already built. CUDA: torch.cuda.max_memory_allocated minus the allocation before the run.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time

import torch

from melp_fast.testing.common import machine  # noqa: E402
from melp_kernels import local_loss as ll  # noqa: E402
from melp_fast.testing.common import add_output, output_path  # noqa: E402

CPU_SHAPES = [(64, 16, 12, 256), (128, 16, 12, 256)]
CUDA_SHAPES = [(64, 16, 12, 256), (128, 16, 12, 256), (256, 16, 16, 256)]


def naive_loss(beats, beat_mask, sents, sent_mask, t1=4.0, t2=5.0, t3=10.0):
    """Straight vectorisation of the loop: forms the contexts c [B_j, B_i, S, D] and their cosines."""
    beats, beat_mask, sents, sent_mask = ll._prepare(beats, beat_mask, sents, sent_mask)
    bm, sm, has_beat, has_sent = ll._effective_masks(beat_mask, sent_mask)
    cd = ll._comp_dtype(beats.dtype)
    beats, sents = beats.to(cd), sents.to(cd)
    neg_inf = float("-inf")
    a = torch.einsum("jqd,ikd->jiqk", beats, sents)
    A1 = torch.softmax(a.masked_fill(~sm[None, :, None, :], neg_inf), dim=3)
    A2 = torch.softmax((t1 * A1).masked_fill(~bm[:, None, :, None], neg_inf), dim=2)
    c = torch.einsum("jiqk,jqd->jikd", A2, beats)  # [B, B, S, D]
    s = sents[None]  # broadcast over j
    w12 = (s * c).sum(-1)
    cos = w12 / (torch.linalg.vector_norm(s, dim=-1) * torch.linalg.vector_norm(c, dim=-1)).clamp(min=1e-8)
    sim = t3 * torch.logsumexp((t2 * cos).masked_fill(~sm[None], neg_inf), dim=2)
    return ll._masked_clip_loss(sim, has_beat & has_sent)


def loss_fn(impl):
    if impl == "naive":
        return naive_loss
    return lambda *a: ll.local_alignment_loss(*a, impl=impl)


def make_inputs(B, K, S, D, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(B, K, D, generator=g)
    s = torch.randn(B, S, D, generator=g)
    # variable beat and sentence counts: 60-100 % of the slots valid, first slot always valid
    nb = torch.randint(int(0.6 * K) + 1, K + 1, (B,), generator=g)
    ns = torch.randint(int(0.6 * S) + 1, S + 1, (B,), generator=g)
    bm = torch.arange(K)[None] < nb[:, None]
    sm = torch.arange(S)[None] < ns[:, None]
    return (e.to(device, dtype).requires_grad_(True), bm.to(device),
            s.to(device, dtype).requires_grad_(True), sm.to(device))


def fwd_bwd(fn, e, bm, s, sm):
    e.grad = None
    s.grad = None
    loss = fn(e, bm, s, sm)
    loss.backward()
    return loss


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loop_shape(impl, shape, loop_batch):
    """(shape the implementation runs at, factor its time is scaled by): the per-pair reference loop runs at
    B' = min(B, loop_batch) and its time is scaled by (B / B')^2, the ratio of pair counts (its cost is one set of
    small launches per (ECG, report) pair; the two B x B cross-entropies beside them are negligible). On an H200 the
    loop at B = 256 (65,536 pairs) did not finish inside the GPU gate's 50 s."""
    if impl != "reference" or not loop_batch or shape[0] <= loop_batch:
        return shape, 1.0
    return (loop_batch, *shape[1:]), (shape[0] / loop_batch) ** 2


def time_impl(impl, shape, device, dtype, repeat, loop_batch=None):
    shape, factor = loop_shape(impl, shape, loop_batch)
    e, bm, s, sm = make_inputs(*shape, device, dtype)
    fn = loss_fn(impl)
    n = 1 if impl == "reference" else repeat
    if impl == "reference":  # warm on a small batch: the loop at full size costs seconds
        fwd_bwd(fn, *make_inputs(4, *shape[1:], device, dtype))
    else:
        fwd_bwd(fn, e, bm, s, sm)
    times = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        loss = fwd_bwd(fn, e, bm, s, sm)
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3 * factor, float(loss.detach().float().cpu())


def cuda_peak_mb(impl, shape, device, dtype, loop_batch=None):
    shape, _ = loop_shape(impl, shape, loop_batch)  # the loop's memory at its own B' (a lower bound at B)
    e, bm, s, sm = make_inputs(*shape, device, dtype)
    fn = loss_fn(impl)
    if impl == "reference":
        fwd_bwd(fn, *make_inputs(4, *shape[1:], device, dtype))
    else:
        fwd_bwd(fn, e, bm, s, sm)
    e.grad = s.grad = None
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fwd_bwd(fn, e, bm, s, sm)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


# ---------------------------------------------------------------------------------------------------------------
# CPU peak memory in a fresh process
# ---------------------------------------------------------------------------------------------------------------
def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _worker(impl, shape, dtype):
    device = torch.device("cpu")
    fn = loss_fn(impl)
    fwd_bwd(fn, *make_inputs(4, *shape[1:], device, dtype))  # lazy initialisation, small
    e, bm, s, sm = make_inputs(*shape, device, dtype)
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        base = _status_kb("VmRSS")
        fwd_bwd(fn, e, bm, s, sm)
        peak = _status_kb("VmHWM")
        how = "VmHWM"
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fwd_bwd(fn, e, bm, s, sm)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        how = "ru_maxrss"
    print(json.dumps({"peak_mb": (peak - base) / 1024, "how": how}))


def count_ops(impl, shape, device, dtype):
    """PyTorch ops one fwd+bwd dispatches (melp_kernels.local_loss.OpCounter: ops that launch nothing left out;
    Triton launches are not counted). fused off CUDA: counted in a subprocess under the Triton interpreter at
    B = 4 (the fused count does not depend on the shape)."""
    if impl == "fused" and device.type != "cuda":
        B, K, S, D = shape
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "ops:fused", "--shape", "4", str(K), str(S),
               str(min(D, 32)), "--dtype", str(dtype).replace("torch.", "")]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ, TRITON_INTERPRET="1"))
        return json.loads(out.stdout.strip().splitlines()[-1])["ops"]
    small = impl == "reference" and shape[0] > 8  # the loop's count grows as B^2: counted at B = 8
    e, bm, s, sm = make_inputs(*((8,) + tuple(shape[1:]) if small else shape), device, dtype)
    fn = loss_fn(impl)
    fwd_bwd(fn, *make_inputs(4, *shape[1:], device, dtype))  # lazy initialisation outside the count
    with ll.OpCounter() as c:
        fwd_bwd(fn, e, bm, s, sm)
    return f"{c.count} at B = 8 (~B^2)" if small else c.count


def cpu_peak_mb(impl, shape, dtype):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--shape", *map(str, shape),
           "--dtype", str(dtype).replace("torch.", "")]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ, TRITON_INTERPRET="0"))
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


# ---------------------------------------------------------------------------------------------------------------
def _load():
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def flops_u(impl, shape, dtype):
    B, K, S, D = shape
    u = 2.0 * B * B * K * S * D
    wide, gram = ll.matmul_flops(B, K, S, D, impl, dtype)
    return wide / u, gram / u


TC_FLOPS = 790e12  # H100 SXM dense bf16 tensor-core rate (datasheet; fp32 inputs run 3-pass tf32, 3x the time)
HBM_BYTES = 4e12  # H100 HBM bandwidth, rounded (H200: 4.8e12)


def fused_floors(shape, dtype):
    """(us of tensor-core work at TC_FLOPS, HBM bytes, us at HBM_BYTES) of one fused fwd+bwd."""
    B, K, S, D = shape
    es = torch.empty((), dtype=dtype).element_size()
    inputs = B * (K + S) * D * es
    # E and S read by the forward and by each backward pass (held tiles once, partner tiles mostly from L2), the
    # gradients written once, S written, read by the CLIP kernel, dL/dS written and read by both passes
    byts = 3 * inputs + inputs + 4 * B * B * 4 + 4 * B * B
    wide, gram = ll.matmul_flops(B, K, S, D, "fused", dtype)
    rate = TC_FLOPS / (3 if dtype == torch.float32 else 1)
    return (wide + gram) / rate * 1e6, byts, byts / HBM_BYTES * 1e6


SMS, CLOCK_HZ = 132, 1.75e9  # H100 SXM / H200: multiprocessors and a sustained boost clock (predicted times)
SASS_SHAPES = ((256, 16, 16, 256), (1024, 32, 16, 256))  # the headline shape and the training shape (B, K, S, D)


def sass_per_element(dtype="bf16", D=256, shapes=((16, 16), (32, 16))):
    """Per local-loss kernel (forward, dE pass, dS pass) at each (K, S), from its sm_90 SASS (Triton's bundled
    ptxas, no GPU), through the hot-loop count kernel_resources.py uses (melp_fast.testing.common.hot_figures): the
    hot loop's warp-instructions and MUFU operations per element of a, and the predicted clocks per element per SM
    (the largest of issue, tensor cores, MUFU). A backward pass's figures count each of its output-column
    programs' recompute of the tile. Rows: dicts (kernel_resources row keys plus K, S, tile)."""
    os.environ.pop("TRITON_INTERPRET", None)
    from melp_fast.testing.common import compile_spec, hot_figures, resources

    rows = []
    for (K, S), sp in zip([ks for ks in shapes for _ in range(3)],
                          [x for x in ll.sm90_specs(D, dtype, shapes=shapes) if "clip" not in x["name"]]):
        kern = compile_spec(sp)
        r = resources(kern)
        row = dict(kernel=sp["name"], K=K, S=S, tile="x".join(map(str, sp["config"][:2])), warps=sp["num_warps"],
                   registers=r["registers"], stack=r["stack"], shared=r["shared"])
        row.update(hot_figures(sp, kern, dtype))
        rows.append(row)
    return rows


def predicted_ms(rows, B, K, S, D, dtype=torch.bfloat16):
    """{kernel kind: ms} of the fused kernels at one shape: padded elements of a x predicted clocks per element /
    (SMS x CLOCK_HZ); full occupancy, no memory or tail effects (the CLIP kernel, B x B, is left out)."""
    c = ll._tile_cfg(B, K, S, D, dtype != torch.float32, dtype == torch.bfloat16)
    pad = lambda n, b: -(-n // b) * b  # noqa: E731
    elems = {"fwd": pad(B, c.BJ) * c.KP * pad(B, c.BI_F) * c.SP,
             "dE": pad(B, c.BJ_B) * c.KP * pad(B, c.BI_E) * c.SP,
             "dS": pad(B, c.BJ_S) * c.KP * pad(B, c.BI_B) * c.SP}
    out = {}
    for r in rows:
        if (r["K"], r["S"]) != (K, S) or not r.get("clk_per_logit"):
            continue
        kind = "fwd" if "_fwd_" in r["kernel"] else ("dE" if "_dE_" in r["kernel"] else "dS")
        out[kind] = elems[kind] * r["clk_per_logit"] / (SMS * CLOCK_HZ) * 1e3
    return out


def sass_report(dtype="bf16", D=256):
    rows = sass_per_element(dtype, D)
    lines = ["| kernel | tile | warps | registers | stack B | shared KB | wgmma | warp-instr / element of a | "
             "MUFU / element | clk / element (bound) |", "|---|---|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['tile']} | {r['warps']} | {r['registers']} | {r['stack']} | "
                     f"{r['shared'] / 1024:.1f} | {', '.join(r.get('wgmma_shapes') or [])} | "
                     f"{r.get('warp_instr_per_logit', 0):.2f} | {r.get('mufu_per_logit', 0):.2f} | "
                     f"{r.get('clk_per_logit', 0):.3f} ({r.get('bound')}) |")
    lines.append("")
    for B, K, S, Dp in SASS_SHAPES:
        if Dp != D:
            continue
        ms = predicted_ms(rows, B, K, S, D)
        if ms:
            parts = ", ".join(f"{k} {v:.3f}" for k, v in ms.items())
            lines.append(f"- predicted at B = {B}, K = {K}, S = {S}, D = {D} {dtype} on {SMS} SMs at "
                         f"{CLOCK_HZ / 1e9:.2f} GHz: {sum(ms.values()):.3f} ms ({parts})")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_output(p)
    p.add_argument("--repeat", type=int, default=5, help="timed runs per implementation (the loop: 1)")
    p.add_argument("--shapes", default=None, help="override, e.g. 64,16,12,256;128,16,12,256")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--loop-batch", type=int, default=64,
                   help="run the per-pair reference loop at B = min(B, this) and scale its time by the pair count "
                        "(0: at full B; the loop at B = 256 takes minutes on a GPU)")
    p.add_argument("--impls", default="reference,naive,batched,fused",
                   help="subset to run (the loop at B >= 512 takes minutes; naive runs out of memory at B = 1024)")
    p.add_argument("--sass", action="store_true",
                   help="per bf16 kernel at D = 256: warp-instructions and MUFU per element of a (sm_90 SASS, no "
                        "GPU) and "
                        "the predicted times at the headline and training shapes")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--shape", type=int, nargs=4, default=None, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default=None,
                   help="input dtype(s), comma-separated: float32, bfloat16, float16 (default: float32 on CPU, "
                        "float32,bfloat16 on CUDA)")
    args = p.parse_args(argv)
    args.out = output_path(args, f"local_loss_{args.device or ('cuda' if torch.cuda.is_available() else 'cpu')}.md")
    if args.sass:
        print(sass_report())
        return 0
    if args.worker and args.worker.startswith("ops:"):
        n = count_ops(args.worker[4:], tuple(args.shape), torch.device("cuda" if torch.cuda.is_available() else "cpu"),
                      getattr(torch, args.dtype or "float32")) if torch.cuda.is_available() else None
        if n is None:  # CPU: under the interpreter (this process was started with TRITON_INTERPRET=1)
            e, bm, s, sm = make_inputs(*args.shape, torch.device("cpu"), getattr(torch, args.dtype or "float32"))
            with ll.OpCounter() as c:
                fwd_bwd(loss_fn(args.worker[4:]), e, bm, s, sm)
            n = c.count
        print(json.dumps({"ops": n}))
        return 0
    if args.worker:
        return _worker(args.worker, tuple(args.shape), getattr(torch, args.dtype or "float32"))

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_cuda = device.type == "cuda"
    if args.shapes:
        shapes = [tuple(int(x) for x in sh.split(",")) for sh in args.shapes.split(";")]
    else:
        shapes = CUDA_SHAPES if on_cuda else CPU_SHAPES
    dtype_names = args.dtype or ("float32,bfloat16" if on_cuda else "float32")
    dtypes = [getattr(torch, d.strip()) for d in dtype_names.split(",")]
    impls = [i.strip() for i in args.impls.split(",")]
    runs = [(impl, dt) for dt in dtypes for impl in ("reference", "naive", "batched", "fused") if impl in impls]

    lines = [
        f"# Local (beat-sentence) loss: fwd+bwd time and peak memory ({device.type})",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine(device.type)}",
        "- command: `python benchmarks/local_loss.py " + shlex.join(argv if argv is not None else sys.argv[1:]) + "`",
        f"- time: median of {args.repeat} fwd+bwd after a warm-up (reference loop: 1 run); "
        + ("peak memory: max_memory_allocated above the inputs" if on_cuda else
           "peak memory: peak RSS above the RSS before the fwd+bwd, one fresh process per implementation"),
        "- inputs: 60-100 % of beat and sentence slots valid per sample; t1, t2, t3 = 4, 5, 10",
        f"- 1-minute load average at start: {_load()} (other jobs on the machine inflate times; ratios are "
        "taken within one run)",
        "",
        "- matmul FLOPs / u: D-wide + K x K Gram dots per fwd+bwd, padding included, u = 2 B^2 K S D",
        "- ops: PyTorch ops dispatched per fwd+bwd (melp_kernels.local_loss.OpCounter: views, reshapes, transposes, "
        "expand, detach, empty allocations, size queries left out; Triton launches not counted: fused has 4, "
        "forward, CLIP, dE, dS); fused off CUDA counted under the interpreter at B = 4",
        "",
        "| B, K, S, D | impl | dtype | fwd+bwd ms | ops | speed-up vs loop | speed-up vs batched | peak MB | "
        "memory vs naive | memory vs batched | matmul FLOPs / u | loss |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    notes = []
    for shape in shapes:
        res, ops = {}, {}
        for impl, dtype in runs:
            ops[(impl, dtype)] = count_ops(impl, shape, device, dtype)
            if impl == "fused" and not on_cuda:
                res[(impl, dtype)] = None  # interpreted on the CPU: FLOPs and ops only
                continue
            try:
                ms, loss = time_impl(impl, shape, device, dtype, args.repeat, args.loop_batch)
                run_shape, factor = loop_shape(impl, shape, args.loop_batch)
                if factor != 1.0:
                    notes.append(f"- reference loop at {shape}: timed at B = {run_shape[0]} and scaled by "
                                 f"(B / {run_shape[0]})^2 = {factor:g} (pairs); its loss and peak memory are at "
                                 f"B = {run_shape[0]}")
                if args.no_memory:
                    mb = float("nan")
                elif on_cuda:
                    mb = cuda_peak_mb(impl, shape, device, dtype, args.loop_batch)
                else:
                    mb = cpu_peak_mb(impl, run_shape, dtype)
            except torch.cuda.OutOfMemoryError:
                res[(impl, dtype)] = "out of memory"
                gc.collect()
                torch.cuda.empty_cache()
                continue
            res[(impl, dtype)] = (ms, mb, loss)
            print(f"  {shape} {impl} {dtype}: {ms:.1f} ms, {mb:.1f} MB", file=sys.stderr, flush=True)
            gc.collect()
            if on_cuda:
                torch.cuda.empty_cache()
        for (impl, dtype), r in res.items():
            wide, gram = flops_u(impl, shape, dtype)
            fl = f"{wide:.2f} + {gram:.2f}"
            dname = str(dtype).replace("torch.", "")
            if not isinstance(r, tuple):
                row = (f"| {', '.join(map(str, shape))} | {impl} | {dname} | {r or '(CUDA only)'} | "
                       f"{ops.get((impl, dtype), '')} | | | | | | {fl} | |")
            else:
                ms, mb, loss = r
                peer = {k: res.get((k, dtype)) for k in ("reference", "naive", "batched")}
                peer = {k: v if isinstance(v, tuple) else (float("nan"),) * 3 for k, v in peer.items()}
                # nan > 0 is False: a missing peer gives n/a
                ratio = lambda a, b, f: f.format(a / b) if b > 0 else "n/a"  # noqa: E731
                row = (f"| {', '.join(map(str, shape))} | {impl} | {dname} | {ms:.2f} | {ops[(impl, dtype)]} | "
                       f"{ratio(peer['reference'][0], ms, '{:.1f}x')} | {ratio(peer['batched'][0], ms, '{:.1f}x')} | "
                       f"{mb:.1f} | {ratio(mb, peer['naive'][1], '{:.3f}')} | "
                       f"{ratio(mb, peer['batched'][1], '{:.3f}')} | {fl} | {loss:.5f} |")
            lines.append(row)
            print(row, flush=True)
        for dtype in dtypes:
            us, byts, us_hbm = fused_floors(shape, dtype)
            notes.append(f"- fused floors at {shape}, {str(dtype).replace('torch.', '')}: matmul {us:.1f} us at "
                         f"{TC_FLOPS / 1e12:.0f} TFLOP/s{' (3-pass tf32)' if dtype == torch.float32 else ''}, "
                         f"HBM {byts / 1e6:.1f} MB = {us_hbm:.1f} us at {HBM_BYTES / 1e12:.0f} TB/s (H100)")
            B, K, S, _ = shape
            notes.append(f"- fused extra memory at {shape}, {str(dtype).replace('torch.', '')} (beyond inputs and "
                         f"gradients, from the buffers it allocates: S and dL/dS [B, B] fp32, G, ||s||, flags): "
                         f"{ll.fused_workspace_bytes(*shape, dtype) / 2**20:.2f} MB (a stored dL/da would be "
                         f"{B * B * K * S * 2 / 2**20:.0f} MB)")
    lines += [""] + notes
    print("\n".join(notes))
    lines += ["", f"1-minute load average at end: {_load()}"]
    print(lines[-1])
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
