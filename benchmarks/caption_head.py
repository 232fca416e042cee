"""Caption head alone: vocabulary projection + cross-entropy, plain (reference) vs chunked, fwd+bwd.

    python benchmarks/caption_head.py                                   # CPU, paper shapes, fp32
    python benchmarks/caption_head.py --device cuda --dtype bf16 --out benchmarks/results/caption_head_cuda.md

Shapes: N target tokens x D states -> V = 30522 words (MiniLM's vocabulary). The paper preset at batch 64 has
N = 64 x 126 = 8064 when the reports fill the 128 tokens (--tokens), fewer with typical reports; D = 384 (MiniLM,
the paper preset's text encoder; the decoder works at its width). Peak extra memory = peak during one fwd+bwd above
the memory before it (inputs excluded, their gradients included): CUDA max_memory_allocated; CPU the peak RSS of a
fresh process per (impl, N) (/proc/self/clear_refs resets the high-water mark). The error columns compare loss
and gradients with the reference in the same dtype and, for the reference itself, with float64.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from datetime import date  # noqa: E402

from melp_fast.testing.common import add_output, command, output_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def _inputs(n, d, v, dtype, device, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g)).to(device=device, dtype=dtype)
    w = (torch.randn(v, d, generator=g) * 0.02).to(device=device, dtype=dtype)
    t = torch.randint(0, v, (n,), generator=g)
    t[torch.rand(n, generator=g) < 0.02] = -100  # a few ignored targets
    return x, w, t.to(device)


def _fwd_bwd(impl, x, w, t):
    from melp_kernels.caption_head import caption_head_loss

    xx, ww = x.detach().requires_grad_(), w.detach().requires_grad_()
    loss = caption_head_loss(xx, ww, t, impl=impl)
    loss.backward()
    return loss.detach(), xx.grad, ww.grad


def measure(impl, n, d, v, dtype_name, device_name, reps) -> dict:
    import torch

    from throughput import peak_rss_bytes, reset_peak_rss, rss_bytes  # the script beside this one

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    dtype = getattr(torch, DTYPES[dtype_name])
    x, w, t = _inputs(n, d, v, dtype, device)
    # memory: one fwd+bwd from a clean state
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_bytes()
        reset_peak_rss()
    loss, gx, gw = _fwd_bwd(impl, x, w, t)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = peak_rss_bytes() - before
    ref = _fwd_bwd("reference", x, w, t) if impl != "reference" else \
        _fwd_bwd("reference", x.double(), w.double(), t)

    def rel(a, b):
        return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))

    errs = {"loss": rel(loss, ref[0]), "dx": rel(gx, ref[1]), "dW": rel(gw, ref[2])}
    del gx, gw, ref
    times = []
    for _ in range(reps):
        if cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            _fwd_bwd(impl, x, w, t)
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            _fwd_bwd(impl, x, w, t)
            times.append(1000 * (time.perf_counter() - t0))
    flops = 3 * 2 * n * d * v  # logits, dx, dW
    ms = statistics.median(times)
    return {"impl": impl, "N": n, "D": d, "V": v, "dtype": dtype_name, "device": device.type, "ms": ms,
            "tflops": flops / (ms / 1e3) / 1e12, "peak_extra_mb": peak / 2 ** 20, "loss": float(loss),
            "rel_err": errs, "err_vs": "float64 reference" if impl == "reference" else f"{dtype_name} reference"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--tokens", type=int, nargs="+", default=[8064, 1270],
                   help="N target tokens (default: 8064 = reports filling 128 tokens at batch 64, 1270 = typical synthetic reports at batch 64)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--reps", type=int, default=None, help="timed fwd+bwd (default 20 CUDA, 3 CPU)")
    add_output(p)
    p.add_argument("--_worker", dest="worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out = output_path(args, f"caption_head_{args.device}.md")
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.reps = args.reps or (20 if cuda else 3)
    if args.worker:
        impl, n = args.worker.split(":")
        print(json.dumps(measure(impl, int(n), args.dim, args.vocab, args.dtype, args.device, args.reps)))
        return 0

    from melp_fast.testing.common import machine

    rows = []
    for n in args.tokens:
        for impl in ("reference", "chunked"):
            if cuda:  # one process: CUDA peak counters are exact
                import torch

                r = measure(impl, n, args.dim, args.vocab, args.dtype, args.device, args.reps)
                torch.cuda.empty_cache()
            else:
                cmd = [sys.executable, __file__, "--_worker", f"{impl}:{n}", "--device", args.device, "--dim",
                       str(args.dim), "--vocab", str(args.vocab), "--dtype", args.dtype, "--reps", str(args.reps)]
                env = dict(os.environ)
                env["PYTHONPATH"] = os.pathsep.join(x for x in (env.get("PYTHONPATH"), str(ROOT)) if x)
                pr = subprocess.run(cmd, capture_output=True, text=True, env=env)
                r = json.loads(pr.stdout.strip().splitlines()[-1]) if pr.returncode == 0 else \
                    {"impl": impl, "N": n, "error": pr.stderr[-1500:]}
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    lines = [f"# Caption head alone: projection + cross-entropy, fwd+bwd ({args.device})", "",
             f"- machine: {machine('cuda' if cuda else 'cpu')}",
             f"- command: `python benchmarks/caption_head.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
             f"- D = {args.dim}, V = {args.vocab}, {args.dtype}, median of {args.reps}; peak extra = "
             + ("max_memory_allocated above the inputs" if cuda else
                "peak RSS above the RSS before the fwd+bwd, one fresh process per row"), "",
             "| N tokens | impl | fwd+bwd ms | TFLOP/s | peak extra MB | memory vs reference | rel. err loss / dx / dW |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['N']} | {r['impl']} | failed: {r['error'].strip().splitlines()[-1][:120]} |||||")
            continue
        ref = next((x for x in rows if x.get("impl") == "reference" and x["N"] == r["N"] and "error" not in x), None)
        ratio = "-"
        if ref and r is not ref:
            q = ref["peak_extra_mb"] / max(r["peak_extra_mb"], 1e-9)
            ratio = f"{q:.1f}x less" if q >= 1 else f"{1 / q:.1f}x more"
        e = r["rel_err"]
        lines.append(f"| {r['N']} | {r['impl']} | {r['ms']:.1f} | {r['tflops']:.2f} | {r['peak_extra_mb']:.0f} | "
                     f"{ratio} | {e['loss']:.1e} / {e['dx']:.1e} / {e['dW']:.1e} (vs {r['err_vs']}) |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"args": {k: v for k, v in vars(args).items() if k not in ("out", "cache", "write")}, "command": command(), "date": str(date.today()), "machine": machine('cuda' if cuda else 'cpu'), "rows": rows}, indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
