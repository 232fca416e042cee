"""Benchmark of the global InfoNCE loss: fwd+bwd time and peak extra memory of fused, chunked, reference and
OpenCLIP's ClipLoss(local_loss=True, gather_with_grad=True), one process, in one run, as a markdown table.

    python benchmarks/infonce.py                       # CUDA if present: B = 1k..64k, D = 256, bf16
    python benchmarks/infonce.py --device cpu          # CPU: B = 1k..8k, fp32, + memory check at 16k and 32k
    python benchmarks/infonce.py --device cpu --out benchmarks/results/infonce_cpu.md
    python benchmarks/infonce.py --device cpu --batch-sizes 1024 --impls chunked --memory-check 0   # + u' per rank

CUDA: in process; time = median of CUDA-event timings after a warm-up call (which runs the autotuner); memory =
torch.cuda.max_memory_allocated() during fwd+bwd minus what was allocated before (inputs excluded).
Matmul work: the FLOPs of one fwd+bwd in units of U = 2 B^2 D (one B x B x D matmul), counted from what each
implementation launches: the fused kernels' launches (melp_fast.testing.infonce_tools.count_matmul_flops) and
PyTorch's FlopCounterMode for the others. On CPU it is counted in a separate process at B = min(B, 128) (the fused
kernels under the Triton interpreter); the count per U does not depend on B.
CPU: every (impl, B) runs in a fresh subprocess; time = median wall time of fwd+bwd; memory = peak RSS
(ru_maxrss) during fwd+bwd minus the RSS just before it (inputs excluded). On CPU "fused" is not timed: without
the Triton interpreter it cannot run, and the interpreter is a correctness tool, not a fast path; its matmul
work is still counted.
--world W (default 2): the matmul work of one rank's local loss on W ranks, in units of u' = 2 b N D (b rows per
rank, N = W b), forward and backward, for fused, chunked and OpenCLIP's formula (counted on CPU at b = 64).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MIB = 1 << 20

from melp_fast.testing.common import load_open_clip_loss, machine  # noqa: E402
from melp_fast.testing.common import add_output, output_path  # noqa: E402


def _loss_fn(impl, chunk_size):
    from melp_kernels.infonce import infonce_loss

    if impl == "open_clip":
        mod = load_open_clip_loss()
        if mod is None:
            raise RuntimeError("open_clip_torch is not installed (pip install --no-deps open_clip_torch)")
        crit = mod.ClipLoss(local_loss=True, gather_with_grad=True)
        return lambda e, t, s: crit(e, t, s)
    return lambda e, t, s: infonce_loss(e, t, s, impl, chunk_size=chunk_size)


def _inputs(B, D, dtype, device):
    g = torch.Generator().manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1).to(device=device, dtype=dtype)
    t = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1).to(device=device, dtype=dtype)
    e.requires_grad_(True)
    t.requires_grad_(True)
    s = torch.tensor(1 / 0.07, device=device, requires_grad=True)
    return e, t, s


def _step(fn, e, t, s):
    e.grad = t.grad = s.grad = None
    loss = fn(e, t, s)
    loss.backward()
    return loss


def count_flops_u(impl, B, D, dtype, device, chunk_size):
    """Matmul FLOPs of one fwd+bwd of `impl` divided by U = 2 B^2 D."""
    fn = _loss_fn(impl, chunk_size)
    e, t, s = _inputs(B, D, dtype, device)
    if impl == "fused":
        from melp_fast.testing.infonce_tools import count_matmul_flops

        with count_matmul_flops() as work:
            _step(fn, e, t, s)
        n = work.flops
    else:
        from torch.utils.flop_counter import FlopCounterMode

        def addmm_inplace(self_shape, a_shape, b_shape, *args, out_shape=None, **kw):
            return 2 * a_shape[0] * a_shape[1] * b_shape[1]

        # FlopCounterMode counts addmm but not the in-place addmm_ that chunked accumulates dT with
        with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: addmm_inplace}) as fc:
            _step(fn, e, t, s)
        n = fc.get_total_flops()
    return n / (2.0 * B * B * D)


def count_rank_u(impl, b, world, D, dtype, chunk_size):
    """(forward, backward) matmul FLOPs of one rank of `world` in units of u' = 2 b N D (N = world * b): rank 1's
    local loss against the gathered embeddings (fused / chunked: the library's Function with e_all, t_all given
    and its backward's statistics exchange answered in-process; open_clip: ClipLoss(local_loss=True)'s formula,
    s E T_all^T and s T E_all^T with cross-entropy, counted by FlopCounterMode)."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from melp_kernels import infonce

    N = world * b
    g = torch.Generator().manual_seed(0)
    e_all = F.normalize(torch.randn(N, D, generator=g), dim=1).to(dtype)
    t_all = F.normalize(torch.randn(N, D, generator=g), dim=1).to(dtype)
    o = b * min(1, world - 1)
    grad_all = impl == "open_clip"  # the library's Function takes the gathered rows without autograd
    leaves = [x.clone().requires_grad_(True) for x in (e_all[o:o + b], t_all[o:o + b])]
    leaves += [x.clone().requires_grad_(grad_all) for x in (e_all, t_all)]
    s = torch.tensor(1 / 0.07, requires_grad=True)
    u = 2.0 * b * N * D

    def fwd():
        e, t, ea, ta = leaves
        if impl == "open_clip":
            lab = torch.arange(b) + o
            return 0.5 * (F.cross_entropy(s * e.float() @ ta.float().T, lab)
                          + F.cross_entropy(s * t.float() @ ea.float().T, lab))
        return infonce._InfoNCE.apply(e, t, ea, ta, s.reshape(1), "triton" if impl == "fused" else "torch",
                                      chunk_size, "ieee", o, None)

    def addmm_inplace(self_shape, a_shape, b_shape, *args, out_shape=None, **kw):
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]

    from melp_fast.testing.infonce_tools import count_matmul_flops, local_exchange

    if impl == "fused":
        with count_matmul_flops() as work:
            loss = fwd()
        nf = work.flops
        with count_matmul_flops() as work, local_exchange(world):
            loss.backward()
        nb = work.flops
    else:
        with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: addmm_inplace}) as fc:
            loss = fwd()
        nf = fc.get_total_flops()
        with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: addmm_inplace}) as fc, \
                local_exchange(world):
            loss.backward()
        nb = fc.get_total_flops()
    return nf / u, nb / u


def _count_rank_subprocess(impl, b, world, D, dtype_name, chunk_size, timeout=900):
    env = dict(os.environ)
    if impl == "fused":
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, os.path.abspath(__file__), "--_rank_flops", impl, str(b), str(world), str(D), dtype_name,
           str(chunk_size)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        return json.loads([ln for ln in p.stdout.splitlines() if ln.strip()][-1])
    except Exception:
        return None


def _count_cpu_subprocess(impl, B, D, dtype_name, chunk_size, timeout=900):
    env = dict(os.environ)
    if impl == "fused":
        env["TRITON_INTERPRET"] = "1"  # the only way the kernels run on a CPU
    else:
        env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, os.path.abspath(__file__), "--_flops", impl, str(B), str(D), dtype_name, str(chunk_size)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        return float([ln for ln in p.stdout.splitlines() if ln.strip()][-1])
    except Exception:
        return None


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure_cpu(impl, B, D, dtype, reps, chunk_size):
    """Runs in a fresh process (see --_worker): one measurement, returned as a dict."""
    torch.manual_seed(0)
    fn = _loss_fn(impl, chunk_size)
    _step(fn, *_inputs(8, D, dtype, "cpu"))  # lazy initialisation (threads, autograd) on a tiny batch
    e, t, s = _inputs(B, D, dtype, "cpu")
    # the memory sample is the first full-size call, so nothing of a previous call is still resident
    base = _rss_bytes()
    t0 = time.perf_counter()
    loss = _step(fn, e, t, s)
    first = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    times = [first] if reps <= 1 else []
    for _ in range(reps - 1 if reps > 1 else 0):
        t0 = time.perf_counter()
        _step(fn, e, t, s)
        times.append(time.perf_counter() - t0)
    return {"impl": impl, "B": B, "D": D, "dtype": _DTYPE_NAMES[dtype], "device": "cpu",
            "ms": 1e3 * statistics.median(times), "peak_extra_mib": max(0, peak - base) / MIB,
            "loss": float(loss.detach()), "reps": reps}


def measure_cuda(impl, B, D, dtype, reps, chunk_size):
    fn = _loss_fn(impl, chunk_size)
    e, t, s = _inputs(B, D, dtype, "cuda")
    _step(fn, e, t, s)  # warm-up: compiles and autotunes
    torch.cuda.synchronize()
    flops_u = count_flops_u(impl, B, D, dtype, "cuda", chunk_size)
    torch.cuda.synchronize()
    e.grad = t.grad = s.grad = None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = _step(fn, e, t, s)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        _step(fn, e, t, s)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return {"impl": impl, "B": B, "D": D, "dtype": _DTYPE_NAMES[dtype], "device": "cuda",
            "ms": statistics.median(times), "peak_extra_mib": peak / MIB, "loss": float(loss.detach()),
            "reps": reps, "flops_u": flops_u}


def _run_cpu_subprocess(impl, B, D, dtype_name, reps, chunk_size, mem_cap_bytes=None, timeout=1800):
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", impl, str(B), str(D), dtype_name, str(reps),
           str(chunk_size), str(mem_cap_bytes or 0)]
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # fused on CPU = chunked; never time the interpreter
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "B": B, "D": D, "dtype": dtype_name, "device": "cpu", "error": "timeout"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        err = (p.stderr.strip().splitlines() or ["failed"])[-1][:160]
        return {"impl": impl, "B": B, "D": D, "dtype": dtype_name, "device": "cpu", "error": err}
    return json.loads(lines[-1])


def _flops_main(argv):
    impl, B, D, dtype_name, chunk = argv
    if impl == "fused":  # the interpreter with the block shapes a GPU launch takes (see kernels/melp_kernels/infonce.py)
        from melp_kernels import infonce

        infonce.INTERP_ACC_WIDTH = infonce.ACC_WIDTH
    print(count_flops_u(impl, int(B), int(D), DTYPES[dtype_name], "cpu", int(chunk)), flush=True)


def _rank_flops_main(argv):
    impl, b, world, D, dtype_name, chunk = argv
    if impl == "fused":  # the interpreter with the accumulator width a GPU launch takes
        from melp_kernels import infonce

        infonce.INTERP_ACC_WIDTH = infonce.ACC_WIDTH
    print(json.dumps(count_rank_u(impl, int(b), int(world), int(D), DTYPES[dtype_name], int(chunk))), flush=True)


def rank_table(world, D, dtype_name, chunk_size, b=64, impls=("fused", "chunked", "open_clip"), log=None):
    """Markdown rows: matmul work per rank in u' = 2 b N D for `world` ranks (counted on CPU at b = 64)."""
    out = [f"## Work per rank on {world} ranks (u' = 2 b N D, N = {world} b; counted at b = {b}, D = {D}, "
           f"{dtype_name})", "",
           "| impl | forward u' | backward u' | fwd+bwd u' per rank |", "|---|---:|---:|---:|"]
    res = {}
    for impl in impls:
        r = _count_rank_subprocess(impl, b, world, D, dtype_name, chunk_size)
        res[impl] = r
        if log:
            log(json.dumps({"impl": impl, "world": world, "u_per_rank": r}))
        if r is None:
            out.append(f"| {impl} | count failed | | |")
        else:
            out.append(f"| {impl} | {r[0]:.2f} | {r[1]:.2f} | {r[0] + r[1]:.2f} |")
    return out, res


def _worker_main(argv):
    impl, B, D, dtype_name, reps, chunk, cap = argv
    cap = int(cap)
    if cap:  # an address-space cap, so an oversized reference fails to allocate instead of meeting the OOM killer
        import gc

        gc.collect()
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (vm + cap, vm + cap))
    try:
        r = measure_cpu(impl, int(B), int(D), DTYPES[dtype_name], int(reps), int(chunk))
    except (RuntimeError, MemoryError) as ex:
        msg = re.sub(r"\[enforce fail at [^\]]*\] err == 0\. ", "", str(ex).splitlines()[0])
        r = {"impl": impl, "B": int(B), "D": int(D), "dtype": dtype_name, "device": "cpu",
             "error": f"{type(ex).__name__}: {msg[:200]}", "mem_cap_mib": cap / MIB}
    print(json.dumps(r), flush=True)


def machine_description(device):
    load = " (load average %.1f / %.1f / %.1f)" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    return machine(device) + f"; torch threads {torch.get_num_threads()}" + load


def _fmt_u(r):
    return f"{r['flops_u']:.2f}" if r.get("flops_u") is not None else ""


def _fmt_table(rows):
    by = {(r["impl"], r["B"], r["D"], r["dtype"]): r for r in rows}
    out = ["| impl | B | D | dtype | fwd+bwd ms | peak extra MiB | matmul FLOPs (U = 2 B^2 D) | time vs open_clip | "
           "memory vs open_clip |", "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['impl']} | {r['B']} | {r['D']} | {r['dtype']} | {r['error']} | | {_fmt_u(r)} | | |")
            continue
        if r.get("untimed"):
            out.append(f"| {r['impl']} | {r['B']} | {r['D']} | {r['dtype']} | not timed ({r['untimed']}) | | "
                       f"{_fmt_u(r)} | | |")
            continue
        oc = by.get(("open_clip", r["B"], r["D"], r["dtype"]))
        tr = mr = ""
        if oc and "error" not in oc and r["impl"] != "open_clip":
            tr = f"{oc['ms'] / r['ms']:.2f}x faster" if r["ms"] <= oc["ms"] else f"{r['ms'] / oc['ms']:.2f}x slower"
            mr = f"{oc['peak_extra_mib'] / max(r['peak_extra_mib'], 1e-9):.1f}x less" \
                if r["peak_extra_mib"] <= oc["peak_extra_mib"] else \
                f"{r['peak_extra_mib'] / max(oc['peak_extra_mib'], 1e-9):.1f}x more"
        out.append(f"| {r['impl']} | {r['B']} | {r['D']} | {r['dtype']} | {r['ms']:.1f} | "
                   f"{r['peak_extra_mib']:.0f} | {_fmt_u(r)} | {tr} | {mr} |")
    return "\n".join(out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_worker":
        return _worker_main(argv[1:])
    if argv and argv[0] == "--_flops":
        return _flops_main(argv[1:])
    if argv and argv[0] == "--_rank_flops":
        return _rank_flops_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="default: 1024..65536 on CUDA, 1024..8192 on CPU")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--impls", nargs="+", default=None,
                    help="default: fused chunked reference open_clip (both; on CPU fused is counted, not timed)")
    ap.add_argument("--reps", type=int, default=None,
                    help="timed repetitions (default 10 CUDA, 3 CPU; on CPU the first full-size call is the memory "
                         "sample and is timed only when reps = 1)")
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--memory-check", type=int, nargs="+", default=None, metavar="B",
                    help="CPU: also run chunked and reference once at these B (default 16384 32768 on CPU; 0 = skip)")
    ap.add_argument("--memory-impls", nargs="+", default=["chunked", "reference"],
                    help="CPU memory check: the implementations to run at the --memory-check sizes")
    ap.add_argument("--world", type=int, default=2,
                    help="also count the matmul work per rank on this many ranks (u' = 2 b N D; 0 = skip)")
    add_output(ap)
    args = ap.parse_args(argv)
    args.out = output_path(args, f"infonce_{args.device}.md")

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    sizes = args.batch_sizes or ([1 << k for k in range(10, 17)] if cuda else [1024, 2048, 4096, 8192])
    dtype_name = args.dtype or ("bf16" if cuda else "fp32")
    impls = args.impls or ["fused", "chunked", "reference", "open_clip"]
    reps = args.reps or (10 if cuda else 3)
    mem_bs = [b for b in (args.memory_check if args.memory_check is not None else ([] if cuda else [16384, 32768]))
              if b > 0]

    rows = []
    flops_cache = {}
    for B in sizes:
        for impl in impls:
            if cuda:
                try:
                    r = measure_cuda(impl, B, args.dim, DTYPES[dtype_name], reps, args.chunk_size)
                except torch.OutOfMemoryError:
                    r = {"impl": impl, "B": B, "D": args.dim, "dtype": dtype_name, "device": "cuda", "error": "OOM"}
                torch.cuda.empty_cache()
            elif impl == "fused":
                r = {"impl": impl, "B": B, "D": args.dim, "dtype": dtype_name, "device": "cpu",
                     "untimed": "interpreter only on CPU"}
            else:
                r = _run_cpu_subprocess(impl, B, args.dim, dtype_name, reps, args.chunk_size)
            if not cuda:
                if impl not in flops_cache:
                    flops_cache[impl] = _count_cpu_subprocess(impl, min(B, 128), args.dim, dtype_name, 32)
                r["flops_u"] = flops_cache[impl]
                r["flops_counted_at_B"] = min(B, 128)
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)

    mem_rows = []
    caps = {}
    for mem_b in ([] if cuda else mem_bs):
        for impl in args.memory_impls:
            avail = _mem_available() or 0
            caps[(impl, mem_b)] = cap = int(0.8 * avail)  # never push the machine into the OOM killer
            r = _run_cpu_subprocess(impl, mem_b, args.dim, dtype_name, 1, args.chunk_size, mem_cap_bytes=cap)
            mem_rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine_line = machine_description(args.device)
    cmd = "python benchmarks/infonce.py " + " ".join(argv)
    md = [f"# Global InfoNCE loss: fwd+bwd time and peak extra memory ({args.device})", "",
          f"- Date: {when}", f"- Machine: {machine_line}", f"- Command: `{cmd.strip()}`",
          f"- D = {args.dim}, dtype {dtype_name}, chunk_size {args.chunk_size}, median of {reps} fwd+bwd "
          f"({'CUDA events, after a warm-up/autotune call' if cuda else 'wall time, each (impl, B) in a fresh process'}); "
          f"peak extra memory = {'max_memory_allocated - allocated before' if cuda else 'ru_maxrss - RSS before'}, "
          "inputs excluded.", ""]
    if not cuda:
        md += ["On CPU `fused` is not timed (its kernels run there only under the Triton interpreter); its matmul "
               "work is counted under the interpreter at B = min(B, 128), the others' with FlopCounterMode.", ""]
    md += [_fmt_table(rows), ""]
    rank_res = None
    if args.world > 1:
        rt, rank_res = rank_table(args.world, args.dim, dtype_name, args.chunk_size,
                                  log=lambda m: print(m, file=sys.stderr, flush=True))
        md += rt + ["", "Per rank: rank 1's local loss against the gathered embeddings (OpenCLIP `local_loss=True`, "
                    "`gather_with_grad=True` semantics), forward and backward counted separately.", ""]
    if mem_rows:
        md += [f"## Memory check: B = {', '.join(map(str, mem_bs))}, D = {args.dim}, {dtype_name}, one fwd+bwd each "
               "in a fresh process under an address-space cap of 80% of MemAvailable", "", _fmt_table(mem_rows), ""]
        for r in mem_rows:
            cap = caps[(r["impl"], r["B"])]
            if "peak_extra_mib" in r:
                md.append(f"- {r['impl']}, B = {r['B']}: {r['peak_extra_mib']:.0f} MiB extra peak "
                          f"({'<' if r['peak_extra_mib'] < 1024 else '>='} 1 GiB, "
                          f"{'>' if r['peak_extra_mib'] > 4096 else '<='} 4 GiB)")
            else:
                md.append(f"- {r['impl']}, B = {r['B']}: could not run within the cap of {cap / MIB:.0f} MiB, "
                          f"i.e. it needs more than that ({r.get('error')})")
                done = [x for x in mem_rows if x["impl"] == r["impl"] and "peak_extra_mib" in x and x["B"] < r["B"]]
                if done:  # the materialised logits grow as B^2
                    x = max(done, key=lambda x: x["B"])
                    md.append(f"  (B^2 scaling from B = {x['B']}: about "
                              f"{x['peak_extra_mib'] * (r['B'] / x['B']) ** 2 / 1024:.1f} GiB expected)")
        md.append("")
    text = "\n".join(md)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump({"date": when, "machine": machine_line, "command": cmd.strip(),
                       "rows": rows, "memory_check": mem_rows, "u_per_rank": rank_res, "world": args.world,
                       "memory_caps_mib": {f"{k[0]}@{k[1]}": v / MIB for k, v in caps.items()}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
