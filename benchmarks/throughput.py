"""End-to-end training throughput of the real step: reference vs PyTorch-block vs fused losses, side by side.

    python benchmarks/throughput.py                          # CPU: paper preset, batch 64, reference vs auto
    python benchmarks/throughput.py --device cuda            # CUDA: paper preset, batch 64, bf16 autocast,
                                                             #       reference vs blocks vs fused
    python benchmarks/throughput.py --preset tiny --batch-size 32 --impls reference,auto --out r.md
    python benchmarks/throughput.py --preset tiny --batch-size 32 --accum 4   # big batch vs cache vs plain

The timed step is the training step itself: the model's own forward (MELP.forward), MELPLoss, backward and the
optimiser step (the DeepSpeed engine, ZeRO-0, AdamW with gradient clipping 1.0, where deepspeed is installed; a
plain torch.optim.AdamW with clip_grad_norm_ otherwise: the output says which), then the logit-scale clamp.
Parameter groups come from melp_fast.training.engine.param_groups, as in training.
bf16 autocast on CUDA (--dtype). Batches are prepared before timing (synthetic corpus, on the device, two of
them used in turn), so data loading is not in the step. No synchronisation inside timed steps: the device is
synchronised once before and once after them.

Loss implementations (loss.impl of MELPLoss; the caption head follows the same switch):
- reference: literal PyTorch losses, materialised caption logits;
- blocks: the PyTorch-block paths (chunked InfoNCE, batched local loss, chunked caption head), i.e. what "auto"
  runs without Triton: the worker hides Triton from melp_kernels (HAS_TRITON = False) and asks for "auto";
- fused: the Triton kernels (loss.impl "fused") and the chunked caption head;
- auto: loss.impl "auto" (Triton on CUDA, the PyTorch blocks elsewhere); with a switch that has no "auto" yet,
  "fused", which MELPLoss maps to the same thing.
Defaults: reference, blocks, fused on CUDA; reference, auto on CPU (Triton runs there only interpreted).

Each configuration runs in a fresh process. Peak memory: CUDA max_memory_allocated over the timed steps (model,
optimiser state and activations); CPU the peak RSS of the process from after start-up (model, optimiser, batches
built) to the end of the timed steps, minus the RSS at that point (/proc/self/clear_refs resets the high-water
mark). FLOPs of one step from torch.utils.flop_counter (CUDA; --flops on CPU); MFU = FLOPs of the reference step
/ step time / --peak-tflops (989: dense bf16 of H100 / H200 SXM), with the measured bf16 matmul rate beside it.
A separate pass under torch.profiler gives the per-stage breakdown (record_function ranges; not timed steps).

--reports typical: the synthetic corpus's machine reports; full: reports that fill all 128 text tokens.

Eager and compiled (--modes): "compiled" runs the model's forward and backward through torch.compile (inductor;
losses eager, as train.compile does), "cuda_graph" (CUDA only) also captures them as CUDA graphs (train.cuda_graph).
The first steps (compilation) are the warm-up, reported as warmup_s. Compiled rows pad every batch to fixed
shapes (the store's beat slots, max_text_len tokens), as train.compile does; eager rows keep the data's shapes (the
longest beat list and report of each batch), as training without it, unless --shapes static (train.static_shapes).
Default --modes eager; e.g. --modes eager,compiled --shapes static compares the two on the same batches.

Launches: one extra forward + MELPLoss + backward (no optimiser step) under a TorchDispatchMode counts the PyTorch
ops dispatched, leaving out the ops that launch nothing (views, reshapes, transposes, expand, detach, empty
allocations, size queries: ops whose schema is a view, and aten.empty* / sym_* / _unsafe_view / lift_fresh).
Compiled rows take the count from a profiled pass instead (Dynamo runs eagerly under a dispatch mode): the
outermost aten ops with the same exclusions (profiler_ops in the JSON, for eager rows too). Triton kernels (the
fused losses, inductor's generated kernels) are not dispatched ops: on CUDA the profiled pass counts every device
kernel (the launches themselves); on CPU a compiled model's generated C++ kernels are counted apart (inductor's
cpp.enable_kernel_profile).

--accum N (train.accum_steps): one batch of --batch-size per step ("big") against N micro-batches of batch / N in
accum_mode "cache" (every contrastive loss over the whole batch: a no-grad pass, then a second forward per
micro-batch) and "plain" (DeepSpeed's accumulation, negatives per micro-batch), on the same records, each step
through melp_fast.training.engine.Trainer; peak memory of each in its own process, step times of the three interleaved
step by step in one process (so that a change of machine load hits them alike), and the cache's second-forward
overhead (cache / plain step time - 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from datetime import date  # noqa: E402

from melp_fast.testing.common import add_output, command, output_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

STAGES = ("ecg_encoder", "text_encoder", "decoder", "loss_global", "loss_local", "loss_caption", "loss", "backward",
          "optimizer")


# ----------------------------------------------------------------------------------------------------------------
# helpers of the worker
# ----------------------------------------------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


NO_LAUNCH = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "sym_size", "sym_stride",
             "sym_numel", "sym_storage_offset", "_unsafe_view", "lift_fresh", "resolve_conj", "resolve_neg",
             "is_same_size", "_local_scalar_dense"}


def op_counter():
    """A TorchDispatchMode counting the ops that launch work (see the module docstring)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._schema.name.split("::")[-1]
            if not (getattr(func, "is_view", False) or name in NO_LAUNCH):
                self.ops[name] += 1
            return func(*args, **(kwargs or {}))

    return OpCounter()


def _launches(profiler_name: str) -> bool:
    """Whether a profiler event "aten::NAME" is an op that launches work (the exclusions of op_counter)."""
    import torch

    name = profiler_name.split("::", 1)[1]
    if name in NO_LAUNCH:
        return False
    packet = getattr(torch.ops.aten, name, None)
    try:
        return not getattr(packet, packet.overloads()[0]).is_view
    except Exception:
        return True


def count_launches(fwd, criterion, backward, batch, amp, cuda, mark_step=None, compiled=False, zero=None) -> dict:
    """Ops of one forward + MELPLoss + backward (see the module docstring). Eager: counted by a TorchDispatchMode.
    Compiled: Dynamo runs a module eagerly while a dispatch mode is active (and keeps doing so afterwards), so the
    count comes from the profiler instead: the outermost aten ops (the same exclusions), i.e. what the compiled
    graphs still dispatch (matmuls, convolutions, attention) and the eager losses, with inductor's generated
    kernels counted apart. On CUDA the profiler also counts every device kernel."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    def fb():
        if zero is not None:  # every pass as the first backward after an optimiser step (no gradient to add to)
            zero()
        if mark_step is not None:
            mark_step()
        with amp:
            out = fwd(batch)
            losses = criterion(out, batch)
        backward(losses["loss"])

    res = {}
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:  # first: a dispatch-mode pass would leave a compiled module eager
        fb()
        if cuda:
            torch.cuda.synchronize()
    events = list(prof.events())
    top = [e for e in events if e.name.startswith("aten::") and e.device_type != torch.autograd.DeviceType.CUDA
           and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))]
    res["profiler_ops"] = sum(1 for e in top if _launches(e.name))
    if cuda:
        res["device_kernels"] = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    else:
        res["generated"] = sum(1 for e in events if "cpp_fused" in e.name)
    if compiled:
        return res
    counter = op_counter()
    with counter:
        fb()
    res["ops"] = sum(counter.ops.values())
    res["top_ops"] = dict(counter.ops.most_common(8))
    return res


def loss_switch() -> tuple[str, ...]:
    """The values of the run-wide switch loss.impl."""
    from melp_fast.config import LOSS_IMPLS

    return tuple(LOSS_IMPLS)


def loss_impl_for(variant: str, switch: tuple[str, ...]) -> str:
    if variant == "reference":
        return "reference"
    if variant in ("auto", "blocks"):
        return "auto" if "auto" in switch else "fused"
    if variant == "fused":
        return "fused"
    raise ValueError(f"unknown loss variant {variant!r}; choose reference, blocks, fused or auto")


def hide_triton():
    """Make every melp_kernels module believe Triton is absent, so "auto" takes the PyTorch-block paths."""
    import importlib

    import melp_kernels

    names = ["melp_kernels._dispatch", "melp_kernels.infonce", "melp_kernels.local_loss", "melp_kernels.caption_head"]
    patched = []
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "HAS_TRITON"):
            mod.HAS_TRITON = False
            patched.append(name)
    return patched or [melp_kernels.__name__ + " (no HAS_TRITON flag found)"]


def long_reports(reports: list[str], n: int, seed: int) -> list[str]:
    """n reports of 8 long sentences of corpus words: more than the 125 report tokens of max_text_len 128."""
    import random

    words = [w.strip(".,;") for r in reports for w in r.split() if w.strip(".,;")]
    rng = random.Random(seed)
    return [". ".join(" ".join(rng.choice(words) for _ in range(24)) for _ in range(8)) + "." for _ in range(n)]


def make_batches(cfg, model, args, device, n_batches=2):
    import torch

    from melp_fast.data.dataset import Collate, ECGTextDataset
    from melp_fast.data.store import build_synthetic_store

    n = max(args.batch_size * n_batches, 64)
    store = build_synthetic_store(Path(args.cache) / f"synthetic-bench-{n}", "train", n, 0, cfg.data.highpass_hz,
                                  cfg.model.max_beats)
    ds = ECGTextDataset(store, lead_mask_p=cfg.data.lead_mask_p, stride=cfg.model.token_stride)
    collate = Collate(model.tokenizer)
    batches = []
    for k in range(n_batches):
        raw = ds.batch(list(range(k * args.batch_size, (k + 1) * args.batch_size)))
        if args.reports == "full":
            raw["reports"] = long_reports(store.reports_of(list(range(len(store)))), args.batch_size, seed=k)
        b = collate(raw)
        if args.shapes == "static" or args.mode != "eager":  # train.static_shapes (implied by train.compile)
            from melp_fast.train import pad_static

            b = pad_static(b, ds.max_beats, collate.tokenizer.max_len, collate.tokenizer.pad)
        batches.append({key: (v.to(device) if torch.is_tensor(v) else v) for key, v in b.items()})
    return batches


def build_model(cfg, device):
    """MELP of the preset; the text encoder is built from its config with random weights (timing does not depend
    on the values, and a GPU machine then needs only the tokenizer files)."""
    from melp_fast.model.melp import MELP
    from melp_fast.model.text import load_backbone, load_tokenizer, minilm_path

    name = cfg.model.text_encoder
    if name.startswith("random:"):
        backbone = load_backbone(name)
    else:
        backbone = load_backbone(minilm_path() if name == "minilm" else name, weights=False)
    return MELP(cfg.model, text_backbone=backbone, tokenizer=load_tokenizer(name)).to(device)


def make_optimizer(model, cfg, args, batch_size, cuda):
    """(forward, backward(loss), optimiser step, description): the DeepSpeed engine where installed and wanted, a
    plain AdamW with gradient clipping otherwise."""
    import torch

    from melp_fast.training.engine import param_groups

    groups, gdesc = param_groups(model, cfg.train.weight_decay), "melp_fast.training.engine.param_groups"
    opt = torch.optim.AdamW(groups, lr=cfg.train.lr, betas=tuple(cfg.train.betas), weight_decay=cfg.train.weight_decay,
                            **({"fused": True} if cuda else {}))
    use_ds = args.optimizer in ("auto", "deepspeed")
    if use_ds:
        try:
            import deepspeed
        except ImportError:
            if args.optimizer == "deepspeed":
                raise
            use_ds = False
    if use_ds:
        from melp_fast.training.engine import init_distributed

        init_distributed()
        ds_cfg = {"train_micro_batch_size_per_gpu": batch_size, "gradient_accumulation_steps": 1,
                  "gradient_clipping": 1.0, "zero_optimization": {"stage": 0}, "zero_force_ds_cpu_optimizer": False,
                  "steps_per_print": 10 ** 9}
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds_cfg)
        return engine, engine.backward, engine.step, (f"DeepSpeed {deepspeed.__version__} engine (ZeRO-0, fp32 "
                                                      f"weights, torch AdamW, clipping 1.0), {gdesc}")

    params = [p for p in model.parameters() if p.requires_grad]

    def opt_step():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, torch.Tensor.backward, opt_step, (f"plain torch.optim.AdamW{' (fused)' if cuda else ''} + clip_grad_norm_ 1.0 "
                                  f"(deepspeed {'not installed' if args.optimizer == 'auto' else 'not asked for'}), "
                                  f"{gdesc}")


def matmul_tflops(device) -> float:
    """Measured dense bf16 matmul rate (8192^3 on random data, CUDA events)."""
    import torch

    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(10):
        a @ b
    e.record()
    torch.cuda.synchronize()
    rate = 2 * n ** 3 * 10 / (s.elapsed_time(e) / 1e3) / 1e12
    del a, b
    torch.cuda.empty_cache()  # the workers run beside this process
    return rate


def profile_stages(model, criterion, fwd, backward, opt_step, batch, amp, cuda) -> dict:
    """One profiled step, split by record_function ranges on the model's sub-modules and the three loss terms."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    import melp_fast.losses as L

    ranges = {}
    hooks = []
    for name, mod in (("ecg_encoder", model.ecg), ("ecg_encoder", model.beat_pool), ("text_encoder", model.text),
                      ("decoder", model.caption_pool), ("decoder", model.decoder)):
        def pre(m, a, name=name):
            ranges[id(m)] = record_function(name)
            ranges[id(m)].__enter__()

        def post(m, a, o):
            ranges.pop(id(m)).__exit__(None, None, None)

        hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    saved = {}
    for fn, name in (("infonce_loss", "loss_global"), ("local_alignment_loss", "loss_local"),
                     ("caption_term", "loss_caption")):
        if hasattr(L, fn):
            orig = saved[fn] = getattr(L, fn)

            def wrapped(*a, _orig=orig, _name=name, **k):
                with record_function(_name):
                    return _orig(*a, **k)

            setattr(L, fn, wrapped)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    try:
        with profile(activities=acts) as prof:
            with amp:
                out = fwd(batch)
                with record_function("loss"):
                    losses = criterion(out, batch)
            with record_function("backward"):
                backward(losses["loss"])
            with record_function("optimizer"):
                opt_step()
            if cuda:
                torch.cuda.synchronize()
    finally:
        for h in hooks:
            h.remove()
        for fn, orig in saved.items():
            setattr(L, fn, orig)
    res = {}
    for ev in prof.key_averages():
        if ev.key in STAGES:
            dev_us = getattr(ev, "device_time_total", None)
            if dev_us is None:
                dev_us = getattr(ev, "cuda_time_total", 0)
            res[ev.key] = {"cpu_ms": ev.cpu_time_total / 1e3, "device_ms": (dev_us or 0) / 1e3}
    return res


def worker(args) -> dict:
    import torch

    from melp_fast.config import apply_overrides, get_preset
    from melp_fast.losses import MELPLoss

    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    notes = []
    if args.variant == "blocks":
        notes.append("Triton hidden from " + ", ".join(hide_triton()))
    switch = loss_switch()
    cfg = apply_overrides(get_preset(args.preset), args.overrides)
    if args.text_encoder:
        cfg.model.text_encoder = args.text_encoder
    cfg.loss.impl = loss_impl_for(args.variant, switch)
    model = build_model(cfg, device)
    model.train()
    batches = make_batches(cfg, model, args, device)
    mark_step = None
    if args.mode == "cuda_graph" and not cuda:
        raise SystemExit("--modes cuda_graph needs CUDA")
    if args.mode != "eager":  # as engine.compile_model: in place, before the optimiser / DeepSpeed see the model
        if not cuda:
            import torch._inductor.config as inductor_config

            inductor_config.cpp.enable_kernel_profile = True  # the generated kernels show in the profiler
        model.compile(mode="reduce-overhead" if args.mode == "cuda_graph" else None)
        if args.mode == "cuda_graph":
            mark_step = torch.compiler.cudagraph_mark_step_begin
    n_targets = [int((b["caption_labels"] != -100).sum()) for b in batches]
    criterion = MELPLoss(cfg.loss)
    fwd, backward, opt_step, opt_desc = make_optimizer(model, cfg, args, args.batch_size, cuda)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step(batch):
        if mark_step is not None:
            mark_step()
        with amp:
            out = fwd(batch)
            losses = criterion(out, batch)
        backward(losses["loss"])
        opt_step()
        model.clamp_logit_scale()
        return losses["loss"]

    sync()
    startup_rss = rss_bytes()
    rss_reset = reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    losses = []
    for i in range(args.warmup):
        losses.append(step(batches[i % len(batches)]))
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.steps):
        losses.append(step(batches[i % len(batches)]))
    sync()
    elapsed = time.perf_counter() - t0
    step_s = elapsed / args.steps
    peak = (torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes() - (startup_rss if rss_reset else 0))
    loss_vals = [float(x.detach()) for x in losses]

    flops = None
    if cuda or args.flops:
        try:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as fc:
                step(batches[0])
            flops = fc.get_total_flops()
        except Exception as exc:  # pragma: no cover - counting is informative only
            notes.append(f"flop counting failed: {exc}")
    launches = {}
    try:
        launches = count_launches(fwd, criterion, backward, batches[0], amp, cuda, mark_step, args.mode != "eager",
                                  zero=lambda: model.zero_grad(set_to_none=True))
    except Exception as exc:  # pragma: no cover - counting is informative only
        notes.append(f"launch counting failed: {type(exc).__name__}: {exc}")
    stages = {}
    if args.profile and args.mode != "eager":
        notes.append("no per-stage profile of compiled modes (the range hooks would break the graph)")
    elif args.profile:
        try:
            stages = profile_stages(model, criterion, fwd, backward, opt_step, batches[0], amp, cuda)
        except Exception as exc:  # pragma: no cover - the breakdown is informative only
            notes.append(f"profiler pass failed: {type(exc).__name__}: {exc}")
    res = {
        "variant": args.variant, "mode": args.mode, "shapes": "static" if args.mode != "eager" else args.shapes,
        "launches": launches, "loss_impl": cfg.loss.impl, "switch": list(switch), "preset": args.preset,
        "batch_size": args.batch_size, "reports": args.reports, "dtype": args.dtype, "device": args.device,
        "text_encoder": cfg.model.text_encoder, "caption_targets_per_batch": n_targets,
        "samples_per_s": args.batch_size / step_s, "step_ms": 1000 * step_s, "timed_steps": args.steps,
        "warmup_steps": args.warmup, "warmup_s": warm_s, "losses": loss_vals,
        "peak_mem_mb": peak / 2 ** 20,
        "peak_mem_kind": ("cuda max_memory_allocated" if cuda else
                          "peak RSS above start-up" if rss_reset else "peak RSS (ru_maxrss; could not reset)"),
        "startup_rss_mb": startup_rss / 2 ** 20, "flops_per_step": flops, "optimizer": opt_desc,
        "stages_ms": stages, "notes": notes,
    }
    if cuda:
        res["gpu"] = torch.cuda.get_device_name()
    return res


# ----------------------------------------------------------------------------------------------------------------
# --accum N: one big batch vs "cache" vs "plain" accumulation (train.accum_steps / accum_mode)
# ----------------------------------------------------------------------------------------------------------------
ACCUM_VARIANTS = ("big", "cache", "plain")


def accum_setup(args, variant: str):
    """(step(i) -> loss, micro, n) of one --accum variant: "big" (one batch of --batch-size per step) or "cache" /
    "plain" (--accum micro-batches of batch / accum; the same records), each step through
    melp_fast.training.engine.Trainer (DeepSpeed ZeRO-0, one process; bf16 weights with --dtype bf16) as train.py runs it."""
    import tempfile
    from argparse import Namespace

    import torch

    from melp_fast.training.accum import EmbeddingCache
    from melp_fast.config import apply_overrides, get_preset
    from melp_fast.training.engine import Trainer, init_distributed
    from melp_fast.losses import MELPLoss

    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = apply_overrides(get_preset(args.preset), args.overrides)
    if args.text_encoder:
        cfg.model.text_encoder = args.text_encoder
    n = 1 if variant == "big" else args.accum
    micro = args.batch_size // n
    cfg.train.batch_size, cfg.train.accum_steps = micro, n
    cfg.train.accum_mode = "plain" if variant == "plain" else "cache"
    model = build_model(cfg, device).train()
    flat = make_batches(cfg, model, Namespace(**{**vars(args), "batch_size": micro}), device, n_batches=2 * n)
    groups = [flat[:n], flat[n:]]  # records 0 .. 2 x batch - 1 in every variant
    init_distributed()
    tmp = Path(tempfile.mkdtemp(prefix="melp-accum-bench-"))
    ds = None
    if args.dtype == "bf16":
        ds = tmp / "ds.json"
        ds.write_text(json.dumps({"bf16": {"enabled": True}}))
    trainer = Trainer(model, cfg.train, tmp, ds, 0, 1, quiet=True)
    criterion = MELPLoss(cfg.loss)
    cache = EmbeddingCache(criterion) if variant == "cache" else None

    def compute(batch):
        return criterion(trainer.engine(batch), batch)

    def step(i: int) -> float:
        group = groups[i % 2]
        losses = trainer.train_step(group[0], compute) if n == 1 else trainer.accum_step(group, compute, cache)
        model.clamp_logit_scale()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(losses["loss"])

    return step, micro, n


def accum_worker(args) -> dict:
    """Peak memory of one --accum variant (its own process): over args.steps steps after the warm-up."""
    import torch

    cuda = args.device.startswith("cuda")
    step, micro, n = accum_setup(args, args.accum_variant)
    for i in range(args.warmup):
        step(i)
    startup_rss = rss_bytes()
    rss_reset = reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses = [step(i) for i in range(args.steps)]
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes() - (startup_rss if rss_reset else 0)
    return {"variant": args.accum_variant, "micro": micro, "accum": n, "batch": micro * n, "losses": losses,
            "peak_mem_mb": peak / 2 ** 20,
            "peak_mem_kind": "cuda max_memory_allocated" if cuda else "peak RSS above the warm-up's"}


def accum_timing(args) -> dict:
    """Step times of the three variants in one process, interleaved step by step (a change of machine load hits
    all three alike): the median of args.steps steps each after the warm-up."""
    import statistics

    steps = {v: accum_setup(args, v)[0] for v in ACCUM_VARIANTS}
    for i in range(args.warmup):
        for v in ACCUM_VARIANTS:
            steps[v](i)
    times = {v: [] for v in ACCUM_VARIANTS}
    cpu = {v: [] for v in ACCUM_VARIANTS}
    for i in range(args.steps):
        for v in ACCUM_VARIANTS:
            t0, c0 = time.perf_counter(), time.process_time()
            steps[v](i)
            times[v].append(time.perf_counter() - t0)
            cpu[v].append(time.process_time() - c0)
    return {v: {"step_ms": 1000 * statistics.median(t), "all_ms": [1000 * x for x in t],
                "cpu_ms": 1000 * statistics.median(cpu[v]), "all_cpu_ms": [1000 * x for x in cpu[v]]}
            for v, t in times.items()}


def accum_report(args, rows: list[dict], timing: dict, argv) -> str:
    from melp_fast.testing.common import machine

    omp = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""

    lines = [f"# Accumulation: one big batch vs cache vs plain ({args.device})", "",
             f"- machine: {machine('cuda' if args.device.startswith('cuda') else 'cpu')}",
             f"- load average at end: {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "",
             f"- command: `{omp}python benchmarks/throughput.py "
             f"{' '.join(argv if argv is not None else sys.argv[1:])}`",
             f"- preset {args.preset}, {args.dtype}, batch {args.batch_size} per step: big = one batch, cache / plain "
             f"= {args.accum} micro-batches of {args.batch_size // args.accum} (the same records); each step through "
             f"melp_fast.training.engine.Trainer (DeepSpeed ZeRO-0, one process)",
             f"- step time: the three in one process, interleaved step by step, median of {args.steps} steps after "
             f"{args.warmup} warm-up; peak memory: each in its own process "
             f"({rows[0].get('peak_mem_kind', '?') if rows else '?'})",
             "- negatives per contrastive loss: big and cache the whole batch, plain one micro-batch",
             "- CPU time: the process's (time.process_time) per step, less sensitive than wall time to other "
             "processes on a shared machine (run with OMP_NUM_THREADS=1 there)", "",
             "| variant | step ms | samples/s | step time / big | CPU ms | CPU time / big | peak memory MB |",
             "|---|---|---|---|---|---|---|"]
    nan = {"step_ms": float("nan"), "cpu_ms": float("nan")}
    big = timing.get("big", nan)
    for r in rows:
        t = timing.get(r["variant"], nan)
        mem = f"{r['peak_mem_mb']:.0f}" if "error" not in r else "error: " + r["error"].splitlines()[-1][:100]
        lines.append(f"| {r['variant']} | {t['step_ms']:.0f} | {args.batch_size * 1000 / t['step_ms']:.1f} | "
                     f"{t['step_ms'] / big['step_ms']:.2f} | {t['cpu_ms']:.0f} | {t['cpu_ms'] / big['cpu_ms']:.2f} | "
                     f"{mem} |")
    if {"cache", "plain"} <= timing.keys():
        wall = timing["cache"]["step_ms"] / timing["plain"]["step_ms"] - 1
        cpu = timing["cache"]["cpu_ms"] / timing["plain"]["cpu_ms"] - 1
        lines += ["", f"- second forward of the cache: cache / plain - 1 = {cpu:+.0%} in CPU time, {wall:+.0%} in wall "
                      f"time (the same micro-batches; the cache adds the no-grad pass, with its caption head, and "
                      f"the whole-batch contrastive losses)"]
    return "\n".join(lines)


def run_accum(args, argv) -> int:
    rows, timing = [], {}
    for variant in (*ACCUM_VARIANTS, "timing"):
        cmd = [sys.executable, __file__, "--_accum_worker", variant, "--accum", str(args.accum), "--device",
               args.device, "--preset", args.preset, "--batch-size", str(args.batch_size), "--dtype", args.dtype,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--reports", "typical", "--cache", args.cache]
        if args.text_encoder:
            cmd += ["--text-encoder", args.text_encoder]
        for o in args.overrides:
            cmd += ["--set", o]
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        env["PYTHONPATH"] = os.pathsep.join(x for x in (env.get("PYTHONPATH"), str(ROOT)) if x)
        env.pop("WORLD_SIZE", None)
        if args.mmap_threshold and not args.device.startswith("cuda"):  # as run_config: RSS follows live tensors
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        res = (json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else
               {"variant": variant, "error": (r.stderr or r.stdout)[-2000:]})
        print(json.dumps({k: v for k, v in res.items() if k != "losses"}), file=sys.stderr, flush=True)
        if variant == "timing":
            timing = res if "error" not in res else {}
        else:
            rows.append(res)
    table = accum_report(args, rows, timing, argv)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                                           if k not in ("out", "cache", "write")},
                                                                  "rows": rows, "timing": timing},
                                                                  indent=1))
    print(table)
    return 0 if timing and all("error" not in r for r in rows) else 1


# ----------------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------------
def run_config(args, variant: str, reports: str, mode: str = "eager") -> dict:
    cmd = [sys.executable, __file__, "--_worker", variant, "--mode", mode, "--shapes", args.shapes,
           "--device", args.device, "--preset", args.preset,
           "--batch-size", str(args.batch_size), "--dtype", args.dtype, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--reports", reports, "--optimizer", args.optimizer, "--cache", args.cache]
    if args.text_encoder:
        cmd += ["--text-encoder", args.text_encoder]
    for o in args.overrides:
        cmd += ["--set", o]
    if args.flops:
        cmd.append("--flops")
    if not args.profile:
        cmd.append("--no-profile")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if args.mmap_threshold and not args.device.startswith("cuda"):
        # glibc then maps every block from this size up on its own and unmaps it when freed: the RSS follows the
        # live tensors, and its peak is not blurred by freed memory the allocator kept
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (env.get("PYTHONPATH"), str(ROOT)) if x)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"variant": variant, "mode": mode, "reports": reports, "error": (r.stderr or r.stdout)[-2000:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def fmt_table(rows: list[dict], args, mm_tflops) -> list[str]:
    lines = []
    cuda = args.device.startswith("cuda")
    ref_flops = {r["reports"]: r["flops_per_step"] for r in rows if r.get("variant") == "reference"
                 and r.get("flops_per_step")}
    kern = "device kernels" if cuda else "generated kernels"
    lines += [f"| reports | mode | loss impl | samples/s | vs reference | vs eager | step ms | peak MB | ops/fwd+bwd | "
              f"aten calls | {kern} | caption targets | GFLOP/step | MFU | loss (first, last) |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        mode = r.get("mode", "eager")
        if "error" in r:
            lines.append(f"| {r['reports']} | {mode} | {r['variant']} | failed: "
                         f"{r['error'].strip().splitlines()[-1][:150] if r['error'].strip() else '?'} ||||||||||||")
            continue
        base = next((x for x in rows if x.get("variant") == "reference" and x["reports"] == r["reports"]
                     and x.get("mode", "eager") == mode and "error" not in x), None)
        eager = next((x for x in rows if x.get("variant") == r["variant"] and x["reports"] == r["reports"]
                      and x.get("mode", "eager") == "eager" and "error" not in x), None)
        vs = f"{r['samples_per_s'] / base['samples_per_s']:.2f}x" if base else "-"
        ve = f"{r['samples_per_s'] / eager['samples_per_s']:.2f}x" if eager and mode != "eager" else "-"
        fl = r.get("flops_per_step")
        mflops = ref_flops.get(r["reports"]) or fl
        mfu = f"{100 * mflops / (r['step_ms'] / 1e3) / (args.peak_tflops * 1e12):.1f}%" if cuda and mflops else "-"
        la = r.get("launches") or {}
        ops, calls = la.get("ops", "-"), la.get("profiler_ops", "-")
        kn = la.get("device_kernels", "-") if cuda else (la.get("generated", "-") if mode != "eager" else "-")
        name = f"{r['variant']} ({r['loss_impl']})"
        targets = sum(r["caption_targets_per_batch"]) // len(r["caption_targets_per_batch"])
        gflop = f"{fl / 1e9:.0f}" if fl else "-"
        lines.append(f"| {r['reports']} | {mode} | {name} | {r['samples_per_s']:.2f} | {vs} | {ve} | "
                     f"{r['step_ms']:.0f} | {r['peak_mem_mb']:.0f} | {ops} | {calls} | {kn} | {targets} | {gflop} | {mfu} | "
                     f"{r['losses'][0]:.3f}, {r['losses'][-1]:.3f} |")
    lines += ["", "ops/fwd+bwd: PyTorch ops dispatched by one forward + MELPLoss + backward (a TorchDispatchMode; "
                  "eager rows), views / reshapes / transposes / expand / detach / empty allocations / size queries left "
                  "out; aten calls: the outermost aten ops of a profiled pass, same exclusions (a composite such as "
                  "linear counts once; the measure compiled rows can have, since Dynamo runs eagerly under a dispatch "
                  "mode); Triton launches and inductor's generated kernels are not aten ops: " + (
                      "device kernels counts every CUDA kernel of the profiled pass" if cuda else
                      "generated kernels counts a compiled model's C++ kernels in the profiled pass") +
              "; warm-up (compilation included) in the JSON as warmup_s"]
    if cuda:
        lines += ["", f"MFU = FLOPs of the reference step (torch.utils.flop_counter; Triton kernels are not counted, "
                      f"so every impl is charged the same model FLOPs) / step time / {args.peak_tflops:g} TFLOP/s; "
                      f"measured dense bf16 matmul (8192^3, random): "
                      + (f"{mm_tflops:.0f} TFLOP/s" if mm_tflops else "not measured")]
    ok = [r for r in rows if "error" not in r and r.get("stages_ms")]
    if ok:
        key = "device_ms" if cuda else "cpu_ms"
        lines += ["", f"Per-stage ms of one profiled step (separate pass, torch.profiler ranges, "
                      f"{'device' if cuda else 'CPU wall'} time; loss = the three terms and the weighting):", "",
                  "| stage | " + " | ".join(f"{r['reports']} {r['variant']}" for r in ok) + " |",
                  "|---|" + "---:|" * len(ok)]
        for s in STAGES:
            if any(s in r["stages_ms"] for r in ok):
                lines.append(f"| {s} | " + " | ".join(
                    f"{r['stages_ms'][s][key]:.1f}" if s in r["stages_ms"] else "-" for r in ok) + " |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--preset", default="paper", help="paper (default) or tiny")
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 (paper), 32 (tiny)")
    p.add_argument("--text-encoder", default=None,
                   help="default: the preset's (built with random weights); random:SIZE for other shapes")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field of the preset (repeatable), e.g. --set model.text_freeze_layers=1")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="bf16 autocast (CUDA default) or fp32")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CUDA, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 on CUDA, 1 on CPU)")
    p.add_argument("--impls", default=None, help="comma list of reference, blocks, fused, auto "
                                                 "(default: reference,blocks,fused on CUDA; reference,auto on CPU)")
    p.add_argument("--reports", choices=["typical", "full", "both"], default="both")
    p.add_argument("--modes", default="eager", help="comma list of eager, compiled, cuda_graph (CUDA only); "
                                                    "default eager (inductor compiles a paper model for minutes)")
    p.add_argument("--shapes", choices=["static", "data"], default="data",
                   help="eager rows: data (default, as training without train.compile) keeps each batch's shapes, "
                        "static pads them (train.static_shapes); compiled rows are always static")
    p.add_argument("--mode", default="eager", help=argparse.SUPPRESS)
    p.add_argument("--optimizer", choices=["auto", "deepspeed", "torch"], default="auto",
                   help="auto: the DeepSpeed engine where deepspeed is installed, plain torch AdamW otherwise")
    p.add_argument("--mmap-threshold", type=int, default=0, metavar="BYTES",
                   help="CPU: run the workers with MALLOC_MMAP_THRESHOLD_=BYTES (e.g. 1048576) so that peak RSS "
                        "tracks live tensors; 0 (default) leaves glibc's dynamic threshold")
    p.add_argument("--flops", action="store_true", help="count FLOPs on CPU too (always on CUDA)")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the per-stage profiler pass")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100 / H200 SXM: 989)")
    p.add_argument("--cache", default=str(ROOT / "runs" / "data"))
    add_output(p)
    p.add_argument("--accum", type=int, default=0, metavar="N",
                   help="instead of the loss comparison: one big batch of --batch-size vs N micro-batches in "
                        "train.accum_mode cache and plain (step time, memory, the cache's second-forward overhead)")
    p.add_argument("--_worker", dest="variant", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_accum_worker", dest="accum_variant", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out = output_path(args, f"accum_{args.device}_{args.preset}.md" if args.accum else f"throughput_{args.device}.md")
    gpu = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (64 if args.preset == "paper" else 32)
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    args.steps = args.steps or (20 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    if args.accum_variant:
        args.mode, args.shapes = "eager", "data"
        print(json.dumps(accum_timing(args) if args.accum_variant == "timing" else accum_worker(args)))
        return 0
    if args.variant:
        print(json.dumps(worker(args)))
        return 0
    if args.accum:
        if args.accum < 2 or args.batch_size % args.accum:
            raise SystemExit(f"--accum {args.accum}: it must be >= 2 and divide --batch-size {args.batch_size}")
        return run_accum(args, argv)

    from melp_fast.testing.common import machine

    impls = (args.impls or ("reference,blocks,fused" if gpu else "reference,auto")).split(",")
    kinds = ["typical", "full"] if args.reports == "both" else [args.reports]
    mm = None
    if gpu:
        import torch

        mm = matmul_tflops(torch.device(args.device))
    def report(rows) -> str:
        ok = [r for r in rows if "error" not in r]
        head = [f"# Training throughput of the real step ({args.device})", "",
                f"- machine: {machine('cuda' if gpu else 'cpu')}",
                f"- load average at end: {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "",
                f"- command: `python benchmarks/throughput.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
                f"- preset {args.preset}, batch {args.batch_size}, {args.dtype}"
                f"{' autocast' if args.dtype == 'bf16' else ''}, text encoder "
                f"{ok[0]['text_encoder'] if ok else '?'} (random weights), {args.steps} timed steps after "
                f"{args.warmup} warm-up, each configuration in a fresh process",
                f"- optimiser: {ok[0]['optimizer'] if ok else '?'}",
                f"- loss.impl switch of this MELPLoss: {', '.join(ok[0]['switch']) if ok else '?'}; "
                "blocks = auto with Triton hidden (PyTorch-block paths); the caption head is plain for reference and "
                "the chunked fused head otherwise",
                f"- peak memory: {ok[0]['peak_mem_kind'] if ok else '?'}"
                + (f", workers run with MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}"
                   if args.mmap_threshold and not gpu else ""), ""]
        notes = sorted({n for r in ok for n in r.get("notes", [])})
        lines = head + fmt_table(rows, args, mm) + ([""] + [f"- note: {n}" for n in notes] if notes else [])
        table = "\n".join(lines)
        if args.out:  # rewritten after every configuration: a run stopped part-way keeps what it measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(table + "\n")
            Path(args.out).with_suffix(".json").write_text(json.dumps(
                {"args": {k: v for k, v in vars(args).items() if k not in ("out", "cache", "write")}, "command": command(), "date": str(date.today()), "machine": machine('cuda' if gpu else 'cpu'), "matmul_tflops": mm,
                 "rows": rows, "complete": len(rows) == len(kinds) * len(impls) * len(modes)}, indent=1))
        return table

    modes = args.modes.split(",")
    rows = []
    for kind in kinds:
        for mode in modes:
            for impl in impls:
                r = run_config(args, impl, kind, mode)
                rows.append(r)
                print(json.dumps({k: v for k, v in r.items() if k not in ("losses", "stages_ms")}), file=sys.stderr,
                      flush=True)
                report(rows)
    print(report(rows))
    ok = [r for r in rows if "error" not in r]
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
