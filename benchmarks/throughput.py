"""End-to-end training throughput: reference vs fused losses, with a per-stage breakdown.

    python benchmarks/throughput.py                       # CPU: tiny preset, batch 32
    python benchmarks/throughput.py --preset paper --batch-size 64 --text-encoder random:base --dtype bf16   # GPU

Each implementation runs in a fresh process (so peak memory is its own) on the same synthetic batches. A step is
timed whole (samples/s) and split into stages (data, ECG encoder, text encoder, decoder, each loss, backward,
optimiser) with a device synchronisation around each. FLOPs per step are counted once with
torch.utils.flop_counter (forward + backward); on CUDA, model FLOPs utilisation = FLOPs / step time / peak.
Writes a markdown table and JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("data", "ecg_encoder", "text_encoder", "decoder", "loss_global", "loss_local", "loss_caption", "backward",
          "optimizer")


def worker(args) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from melp_fast.config import get_preset
    from melp_fast.data.dataset import Collate, ECGTextDataset
    from melp_fast.data.store import build_synthetic_store
    from melp_fast.losses import caption_loss
    from melp_fast.model.melp import MELP
    from melp_kernels.infonce import infonce_loss
    from melp_kernels.local_loss import local_alignment_loss

    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cfg = get_preset(args.preset)
    cfg.model.text_encoder = args.text_encoder or cfg.model.text_encoder
    cfg.model.dropout = 0.0
    n = args.batch_size * 4
    store = build_synthetic_store(Path(args.cache) / f"synthetic-bench-{n}", "train", n, 0, cfg.data.highpass_hz,
                                  cfg.model.max_beats)
    model = MELP(cfg.model).to(device)
    loader = DataLoader(ECGTextDataset(store, lead_mask_p=0.5), batch_size=args.batch_size, shuffle=True,
                        drop_last=True, collate_fn=Collate(model.tokenizer), num_workers=args.workers,
                        persistent_workers=args.workers > 0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=cuda or None)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    impl = "reference" if args.impl == "reference" else "auto"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def batches():
        while True:
            yield from loader

    it = batches()
    times = {s: 0.0 for s in STAGES}

    def step(record: bool):
        t = time.perf_counter()
        marks = {}

        def mark(name):
            nonlocal t
            sync()
            now = time.perf_counter()
            marks[name] = now - t
            t = now

        batch = next(it)
        batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        mark("data")
        with amp:
            e = model.encode_ecg(batch["ecg"], batch["beat_spans"], batch["beat_mask"])
            mark("ecg_encoder")
            tx = model.encode_text(batch["input_ids"], batch["attention_mask"], batch["sent_ids"], batch["eos_pos"])
            mark("text_encoder")
            h = model.decoder(tx["states"], model.caption_pool(e["tokens"]), batch["attention_mask"], project=False)
            keep = batch["caption_labels"] != -100
            logits = model.decoder.head(h[keep])
            mark("decoder")
        g = infonce_loss(e["rhythm"].float(), tx["text"].float(), model.scale(), impl=impl)
        mark("loss_global")
        loc = local_alignment_loss(e["beats"].float(), e["beat_mask"], tx["sents"].float(), tx["sent_mask"], impl=impl)
        mark("loss_local")
        cap = caption_loss(logits, batch["caption_labels"][keep])
        loss = cfg.loss.global_weight * g + cfg.loss.caption_weight * cap + cfg.loss.local_weight * loc
        mark("loss_caption")
        loss.backward()
        mark("backward")
        opt.step()
        opt.zero_grad(set_to_none=True)
        mark("optimizer")
        if record:
            for k, v in marks.items():
                times[k] += v

    for _ in range(args.warmup):
        step(False)
    flops = None
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            step(False)
        flops = fc.get_total_flops()
    except Exception as exc:  # pragma: no cover - counting is informative only
        print(f"flop counting failed: {exc}", file=sys.stderr)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(True)
    sync()
    elapsed = time.perf_counter() - t0
    step_s = elapsed / args.steps
    res = {
        "impl": args.impl, "samples_per_s": args.batch_size / step_s, "step_ms": 1000 * step_s,
        "stages_ms": {k: 1000 * v / args.steps for k, v in times.items()},
        "flops_per_step": flops,
        "peak_mem_mb": (torch.cuda.max_memory_allocated() if cuda else
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20,
    }
    if cuda and flops:
        res["mfu"] = flops / step_s / (args.peak_tflops * 1e12)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--preset", default=None, help="tiny (CPU default) or paper (CUDA default)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--text-encoder", default=None, help="default: the preset's (minilm); random:base needs no weights")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="bf16 autocast (CUDA default) or fp32")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--impls", default="reference,fused")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100 SXM: 989)")
    p.add_argument("--cache", default=str(ROOT / "runs" / "data"))
    p.add_argument("--out", default=None, help="markdown path (JSON written beside it)")
    p.add_argument("--_worker", dest="impl", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device.startswith("cuda")
    args.preset = args.preset or ("paper" if gpu else "tiny")
    args.batch_size = args.batch_size or (64 if gpu else 32)
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    args.steps = args.steps or (20 if gpu else 5)
    if args.impl:
        print(json.dumps(worker(args)))
        return

    rows = []
    for impl in args.impls.split(","):
        cmd = [sys.executable, __file__, "--_worker", impl] + [a for a in (argv or sys.argv[1:])]
        cmd += ["--device", args.device, "--preset", args.preset, "--batch-size", str(args.batch_size),
                "--dtype", args.dtype, "--steps", str(args.steps)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        if r.returncode != 0:
            sys.exit(f"{impl} failed:\n{r.stderr[-3000:]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    base = rows[0]["samples_per_s"]
    head = (f"Training throughput, preset {args.preset}, batch {args.batch_size}, {args.dtype}, device {args.device}, "
            f"{args.steps} timed steps; {date.today()}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")
    lines = [head, "| impl | samples/s | vs reference | step ms | peak MB | GFLOP/step | MFU |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        fl = f"{r['flops_per_step'] / 1e9:.1f}" if r["flops_per_step"] else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        lines.append(f"| {r['impl']} | {r['samples_per_s']:.1f} | {r['samples_per_s'] / base:.2f}x | "
                     f"{r['step_ms']:.0f} | {r['peak_mem_mb']:.0f} | {fl} | {mfu} |")
    lines += ["", "Per-stage ms per step:", "", "| stage | " + " | ".join(r["impl"] for r in rows) + " |",
              "|---|" + "---:|" * len(rows)]
    for s in STAGES:
        lines.append(f"| {s} | " + " | ".join(f"{r['stages_ms'][s]:.1f}" for r in rows) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
