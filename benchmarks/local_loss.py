"""Benchmark of the MELP local (beat-sentence) loss: fwd+bwd time and peak memory, side by side.

    python benchmarks/local_loss.py                      # CUDA when present, else CPU
    python benchmarks/local_loss.py --device cpu --out benchmarks/results/local_loss_cpu.md

Implementations:
  reference  the literal per-sample loop of MELP_SPEC.md (kernels/local_loss.py, impl="reference")
  naive      a vectorisation that forms the B x B x S x D beat contexts c_ik (defined here, the memory peer)
  batched    vectorised PyTorch on the Gram algebra: B x B x K x S intermediates, no D-wide contexts
  fused      Triton forward + recomputing backward (CUDA only; on the CPU it would only run interpreted)

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
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from melp_kernels import local_loss as ll

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


def time_impl(impl, shape, device, dtype, repeat):
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
    return statistics.median(times) * 1e3, float(loss.detach().float().cpu())


def cuda_peak_mb(impl, shape, device, dtype):
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


def machine(device):
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        desc = f"{p.name}, {p.total_memory / 2**30:.0f} GiB"
    else:
        model = platform.processor() or "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        model = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        desc = f"{model}, {os.cpu_count()} logical cores visible, torch threads {torch.get_num_threads()}"
    return (f"{desc}; {platform.system()} {platform.release()}; Python {platform.python_version()}, "
            f"torch {torch.__version__}" + (f", triton {ll.triton.__version__}" if ll.HAS_TRITON else ""))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="write the markdown table here")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per implementation (the loop: 1)")
    p.add_argument("--shapes", default=None, help="override, e.g. 64,16,12,256;128,16,12,256")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--shape", type=int, nargs=4, default=None, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args.worker, tuple(args.shape), getattr(torch, args.dtype))

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_cuda = device.type == "cuda"
    if args.shapes:
        shapes = [tuple(int(x) for x in sh.split(",")) for sh in args.shapes.split(";")]
    else:
        shapes = CUDA_SHAPES if on_cuda else CPU_SHAPES
    runs = [("reference", torch.float32), ("naive", torch.float32), ("batched", torch.float32)]
    if on_cuda:
        runs += [("fused", torch.float32), ("batched", torch.bfloat16), ("fused", torch.bfloat16)]

    lines = [
        f"# Local (beat-sentence) loss: fwd+bwd time and peak memory ({device.type})",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine(device)}",
        f"- command: `python benchmarks/local_loss.py --device {device.type}"
        + (f" --out {args.out}" if args.out else "") + "`",
        f"- time: median of {args.repeat} fwd+bwd after a warm-up (reference loop: 1 run); "
        + ("peak memory: max_memory_allocated above the inputs" if on_cuda else
           "peak memory: peak RSS above the RSS before the fwd+bwd, one fresh process per implementation"),
        "- inputs: 60-100 % of beat and sentence slots valid per sample; t1, t2, t3 = 4, 5, 10",
        f"- 1-minute load average at start: {_load()} (other jobs on the machine inflate times; ratios are "
        "taken within one run)",
        "",
        "| B, K, S, D | impl | dtype | fwd+bwd ms | speed-up vs loop | peak MB | memory vs naive | loss |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for shape in shapes:
        res = {}
        for impl, dtype in runs:
            ms, loss = time_impl(impl, shape, device, dtype, args.repeat)
            if args.no_memory:
                mb = float("nan")
            elif on_cuda:
                mb = cuda_peak_mb(impl, shape, device, dtype)
            else:
                mb = cpu_peak_mb(impl, shape, dtype)
            res[(impl, dtype)] = (ms, mb, loss)
            print(f"  {shape} {impl} {dtype}: {ms:.1f} ms, {mb:.1f} MB", file=sys.stderr, flush=True)
            gc.collect()
            if on_cuda:
                torch.cuda.empty_cache()
        ref_ms = res[("reference", torch.float32)][0]
        naive_mb = res[("naive", torch.float32)][1]
        for (impl, dtype), (ms, mb, loss) in res.items():
            mem_ratio = f"{mb / naive_mb:.3f}" if naive_mb > 0 else "n/a"  # nan > 0 is False too
            row = (f"| {', '.join(map(str, shape))} | {impl} | {str(dtype).replace('torch.', '')} | {ms:.1f} | "
                   f"{ref_ms / ms:.1f}x | {mb:.1f} | {mem_ratio} | {loss:.5f} |")
            lines.append(row)
            print(row, flush=True)
    lines += ["", f"1-minute load average at end: {_load()}"]
    print(lines[-1])
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
