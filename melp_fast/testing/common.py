"""Helpers shared by the benchmarks and the tests (melp_fast.testing: installed, never imported by the library).

- machine(device): one line describing the machine and the versions, for every results table;
- load_open_clip_loss(): OpenCLIP's open_clip/loss.py loaded on its own (the InfoNCE peer);
- compile_spec(spec) / resources(...): build a Triton kernel config for Hopper with Triton's bundled ptxas (no GPU needed)
  and read its registers, spill bytes, stack, shared memory and whether its dots lower to wgmma;
- match_beats(ref, det, tol): EC57-style one-to-one beat matching (Se, +P and timing errors of a beat detector);
- store_digest(path): sha256 over every file of a store, to compare two builds.

Import it the same way from a test or a benchmark script: `from melp_fast.testing.common import ...`.
The compile helpers need TRITON_INTERPRET unset when the kernels are defined: call them in a fresh process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import re
import subprocess
from datetime import date
from pathlib import Path


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> str:
    """Device, CPU, OS and versions in one line (date included)."""
    import torch

    parts = []
    if device == "cuda" and torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    parts += [f"CPU {cpu_name()} ({os.cpu_count()} logical cores)", f"{platform.system()} {platform.release()}",
              f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except Exception:
        parts.append("no triton")
    if device == "cuda" and torch.version.cuda:
        parts.append(f"CUDA {torch.version.cuda}")
    parts.append(str(date.today()))
    return "; ".join(parts)


def load_open_clip_loss():
    """OpenCLIP's open_clip/loss.py loaded on its own (None if open_clip_torch is not installed).

    The package __init__ imports torchvision, which would pull a CUDA build of torch on CPU machines."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "loss.py")
    if not os.path.exists(path):
        return None
    mspec = importlib.util.spec_from_file_location("_open_clip_loss_only", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------------------------------------------
# sm_90 compile without a GPU
# ----------------------------------------------------------------------------------------------------------------
SHARED_LIMIT = 227 * 1024  # bytes of shared memory per block on H100 / H200
MAX_REGISTERS = 255


def ptxas_available() -> bool:
    import triton

    return os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"))


def compile_spec(spec: dict, arch: int = 90):
    """triton.compile for sm_`arch` of one shipped config, as a kernel module's sm90_specs(D, dtype) gives it (fn,
    signature, constexprs, num_warps, num_stages; optional `divisible`: integer arguments that are multiples of 16).
    Pointers are taken as 16-byte aligned and the `divisible` ints as multiples of 16, as a real launch at these
    shapes specialises them (without that, Triton emits scalar, unpipelined loads that no real launch runs)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = spec["fn"]
    names = fn.arg_names
    div = [n for n, t in spec["signature"].items() if t.startswith("*")] + list(spec.get("divisible", []))
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in div if n in spec["signature"]}
    src = ASTSource(fn, spec["signature"], constexprs=dict(spec["constexprs"]), attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]})


def resources(kernel) -> dict:
    """Registers, spill bytes, stack bytes, shared memory bytes and wgmma use of a compiled kernel."""
    import tempfile

    import triton

    ptx = kernel.asm.get("ptx", "")
    out = {"shared": int(kernel.metadata.shared), "wgmma": "wgmma" in ptx, "mma": "mma.sync" in ptx}
    out["registers"] = getattr(kernel, "n_regs", None)
    out["spills"] = getattr(kernel, "n_spills", None)
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        res = subprocess.run([os.path.join(bindir, "cuobjdump"), "-res-usage", f.name], capture_output=True, text=True)
    text = res.stdout
    m = re.search(r"REG:(\d+)", text)
    if m:
        out["registers"] = int(m.group(1))
    m = re.search(r"STACK:(\d+)", text)
    out["stack"] = int(m.group(1)) if m else None
    m = re.search(r"LOCAL:(\d+)", text)
    out["local"] = int(m.group(1)) if m else None
    if out["spills"] is None:
        out["spills"] = out["local"]
    return out


# ----------------------------------------------------------------------------------------------------------------
# SASS: the hot loop of a tile kernel, counted (no GPU: cuobjdump -sass on the cubin)
# ----------------------------------------------------------------------------------------------------------------
ISSUE_IPC = 4  # warp-instructions per clock per SM (4 schedulers)
TC_FLOP_PER_CLK = {"bf16": 4096, "fp16": 4096, "tf32": 2048}  # dense tensor-core FLOP per clock per SM (H100)
MUFU_PER_CLK = 16  # MUFU lane-operations per clock per SM (ex2, rcp, ...)

_SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Za-z0-9_.]*)(.*?);")


def sass_text(kernel) -> str:
    """The SASS of a compiled kernel (Triton's bundled cuobjdump -sass)."""
    import tempfile

    import triton

    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        res = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", f.name], capture_output=True, text=True)
    return res.stdout


def parse_sass(text: str) -> list[tuple[int, str, str]]:
    """[(address, opcode, operands)] of every instruction (predicate dropped)."""
    out = []
    for ln in text.splitlines():
        m = _SASS_LINE.match(ln)
        if m:
            out.append((int(m.group(1), 16), m.group(3), m.group(4).strip()))
    return out


def sass_loops(ins) -> list[tuple[int, int]]:
    """Loops as (first address, address of the backward branch), from every BRA to an earlier address."""
    loops = []
    for a, op, rest in ins:
        if op.startswith("BRA"):
            m = re.match(r"`?\(?(0x[0-9a-f]+)", rest)
            if m and int(m.group(1), 16) <= a:
                loops.append((int(m.group(1), 16), a))
    return sorted(set(loops))


def hot_loop(kernel, logits_per_tile: int, num_warps: int, k_trips: int = 1, dtype: str = "bf16") -> dict:
    """Per tile of the kernel's main loop (the loop around the innermost loop that holds the tensor-core
    instructions, or that loop itself when nothing encloses it): warp-instructions and MUFU operations per logit,
    the wgmma shapes, and the predicted clocks per logit (issue at ISSUE_IPC, tensor cores at TC_FLOP_PER_CLK,
    MUFU at MUFU_PER_CLK). An inner K loop is counted k_trips times. Static counts: a rarely taken branch inside
    the loop counts as if taken (compile a variant without it for the steady state)."""
    ins = parse_sass(sass_text(kernel))
    mma = [a for a, op, _ in ins if op.startswith("HGMMA") or op.startswith("HMMA")]
    loops = sass_loops(ins)
    out = {"wgmma_shapes": sorted({op.split(".")[1] for a, op, _ in ins if op.startswith("HGMMA")})}
    if not mma or not loops:
        return out
    inner = [lp for lp in loops if any(lp[0] <= a <= lp[1] for a in mma)]
    if not inner:
        return out
    k_loop = min(inner, key=lambda lp: lp[1] - lp[0])
    outer = [lp for lp in loops if lp[0] <= k_loop[0] and k_loop[1] <= lp[1] and lp != k_loop]
    tile = min(outer, key=lambda lp: lp[1] - lp[0]) if outer else k_loop
    trips = k_trips if tile != k_loop else 1

    def weight(a):
        return trips if (tile != k_loop and k_loop[0] <= a <= k_loop[1]) else 1

    body = [(a, op) for a, op, _ in ins if tile[0] <= a <= tile[1]]
    n = sum(weight(a) for a, _ in body)
    mufu = sum(weight(a) for a, op in body if op.startswith("MUFU"))
    shfl = sum(weight(a) for a, op in body if op.startswith("SHFL"))
    flop = 0
    for a, op in body:
        if op.startswith("HGMMA"):  # HGMMA.64xNx16: one per warpgroup
            mm, nn, kk = (int(v) for v in op.split(".")[1].split("x"))
            flop += weight(a) * 2 * mm * nn * kk * max(1, num_warps // 4)
        elif op.startswith("HMMA"):  # HMMA.16816 / HMMA.1688: one per warp
            shp = op.split(".")[1]
            mm, nn, kk = int(shp[:2]), int(shp[2]), int(shp[3:])
            flop += weight(a) * 2 * mm * nn * kk * num_warps
    per = num_warps / logits_per_tile
    out.update(tile_loop_instructions=n, static_loop_instructions=len(body),
               warp_instr_per_logit=n * per, mufu_per_logit=mufu * per * 32, shfl_per_logit=shfl * per,
               mma_flop_per_logit=flop / logits_per_tile)
    out["issue_clk_per_logit"] = out["warp_instr_per_logit"] / ISSUE_IPC
    out["mufu_clk_per_logit"] = out["mufu_per_logit"] / MUFU_PER_CLK
    out["tc_clk_per_logit"] = (flop / logits_per_tile) / TC_FLOP_PER_CLK.get(dtype, 4096) if flop else None
    cands = {"issue": out["issue_clk_per_logit"], "mufu": out["mufu_clk_per_logit"]}
    if out["tc_clk_per_logit"]:
        cands["tensor"] = out["tc_clk_per_logit"]
    out["bound"] = max(cands, key=cands.get)
    out["clk_per_logit"] = cands[out["bound"]]
    return out


def hot_figures(spec, kern, dt):
    """The SASS hot-loop figures of a spec (its steady-state variant when it names one)."""
    prec = spec["constexprs"].get("PRECISION", "ieee")
    tc = dt if dt != "fp32" else ("tf32" if str(prec).startswith("tf32") else "fp32")
    out = {"wgmma_shapes": hot_loop(kern, 1, spec["num_warps"]).get("wgmma_shapes", [])}
    if "hot_tile" not in spec:
        return out
    logits, trips = spec["hot_tile"]
    if spec.get("hot_constexprs"):
        hs = dict(spec)
        hs["constexprs"] = dict(spec["constexprs"], **spec["hot_constexprs"])
        kern = compile_spec(hs)
    h = hot_loop(kern, logits, spec["num_warps"], trips, tc)
    keep = ("warp_instr_per_logit", "mufu_per_logit", "issue_clk_per_logit", "tc_clk_per_logit",
            "mufu_clk_per_logit", "bound", "clk_per_logit", "tile_loop_instructions")
    out.update({k: (round(h[k], 4) if isinstance(h.get(k), float) else h.get(k)) for k in keep})
    return out


def resource_problems(r: dict) -> list[str]:
    """What makes a compiled kernel unfit for the hot path (empty when it is fine)."""
    bad = []
    if r.get("spills"):
        bad.append(f"{r['spills']} B spilled")
    if r.get("stack"):
        bad.append(f"{r['stack']} B stack")
    if r["shared"] > SHARED_LIMIT:
        bad.append(f"{r['shared'] // 1024} KB shared > 227 KB")
    return bad


# ----------------------------------------------------------------------------------------------------------------
# beat detection scoring
# ----------------------------------------------------------------------------------------------------------------
def match_beats(ref, det, tol: int):
    """Score detections against reference beats (ANSI/AAMI EC57 style): greedy one-to-one matching within tol
    samples -> (tp, fn, fp, signed errors det - ref in samples). Se = tp / (tp + fn), +P = tp / (tp + fp)."""
    import numpy as np

    ref = np.sort(np.asarray(ref))
    det = np.sort(np.asarray(det))
    used = np.zeros(len(det), bool)
    errs = []
    j = 0
    for r in ref:
        while j < len(det) and det[j] < r - tol:
            j += 1
        best, bd = -1, tol + 1
        for k in range(j, len(det)):
            if det[k] > r + tol:
                break
            if not used[k] and abs(det[k] - r) < bd:
                best, bd = k, abs(det[k] - r)
        if best >= 0:
            used[best] = True
            errs.append(det[best] - r)
    tp = len(errs)
    return tp, len(ref) - tp, len(det) - tp, np.asarray(errs, float)


# ------------------------------------------------------------------------------------------- where tables are written
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # the committed results


def add_output(parser) -> None:
    """--out and --write, the same in every benchmark script: a table is only printed unless one of them is given."""
    parser.add_argument("--out", default=None,
                        help="write the table here (the JSON beside it, where the script writes one); a path under "
                             "benchmarks/results/ needs --write")
    parser.add_argument("--write", action="store_true",
                        help="write the table into benchmarks/results/ (the committed results) under its usual name")


def command() -> str:
    """The command line of this run as a user would type it: the script's path from the repository root."""
    import shlex
    import sys

    script = Path(sys.argv[0]).resolve()
    root = RESULTS.parents[1]
    shown = script.relative_to(root).as_posix() if root in script.parents else script.name
    return " ".join(["python", shown, *map(shlex.quote, sys.argv[1:])])


def output_path(args, name: str) -> str | None:
    """Where a script writes its table: --out, else benchmarks/results/NAME with --write, else nowhere. The committed
    results are replaced only with --write."""
    if args.out is None:
        return str(RESULTS / name) if args.write else None
    if not args.write and RESULTS in Path(args.out).resolve().parents:
        raise SystemExit(f"--out {args.out} is under benchmarks/results/ (the committed results): add --write")
    return args.out


# ----------------------------------------------------------------------------------------------------------------
# stores
# ----------------------------------------------------------------------------------------------------------------
def store_digest(path) -> str:
    """sha256 over every file of a store (relative path and bytes), to compare two builds."""
    path = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
