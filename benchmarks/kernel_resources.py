"""Compile every Triton kernel of kernels/ for sm_90 (Hopper) with Triton's bundled ptxas, no GPU needed, and print
one row per kernel and shipped config: registers, spill bytes, stack frame, shared memory, the wgmma shapes, and
from the SASS (cuobjdump -sass) the hot loop's warp-instructions and MUFU operations per logit with the predicted
bound (clocks per logit: issue at 4 warp-instructions per clock per SM, tensor cores at 4,096 bf16 / 2,048 tf32
FLOP per clock per SM, MUFU at 16 per clock per SM; the largest is the bound).

    python benchmarks/kernel_resources.py                          # D = 256 and 768, bf16 and fp32, every config
    python benchmarks/kernel_resources.py --dims 128 256 512 768 1024 \
        --out benchmarks/results/kernel_resources_triton3.7.1.md   # the committed tables (+ JSON beside)
    python benchmarks/kernel_resources.py --quick                  # the first config of each kernel only

Exit status 1 if any compiled kernel spills, has a stack frame or needs more than 227 KB of shared memory.

Discovery: every module kernels/melp_kernels/<name>.py with a `sm90_specs(D: int, dtype: str) -> list[dict]`,
defined in the module or, kept out of the kernel file, in melp_fast.testing.<name>_tools (optionally SM90_DTYPES
in the module, the input dtypes it ships, compiled when --dtypes is not given; spec keys name, fn, signature,
constexprs, num_warps, num_stages; optional config, a label; divisible, the integer arguments that are multiples of
16 at such shapes; hot_tile = (logits per tile-loop iteration, trips of an inner K loop) and hot_constexprs,
constexpr overrides that compile the steady-state loop for the SASS count, e.g. without a branch taken on one tile
in N / 128). Without hot_tile the per-logit figures are left empty. Pointer arguments are compiled as 16-byte
aligned, as Triton specialises them for tensors from the PyTorch allocator; that alignment decides vector widths and
asynchronous copies, so the counts here are those of a launch at the headline shapes.
Run with TRITON_INTERPRET unset (this script unsets it for itself before importing the kernels).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)  # the kernels must be defined as compilable functions
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from melp_fast.testing.common import (SHARED_LIMIT, compile_spec, hot_figures, machine,  # noqa: E402
                                      resource_problems, resources)
from melp_fast.testing.common import add_output, output_path  # noqa: E402


DTYPES = ("bf16", "fp32")  # the input dtypes compiled by default (a module's SM90_DTYPES replaces them)


def _kernel_package():
    try:
        import melp_kernels as pkg
    except ImportError:  # a source checkout without the package installed: kernels/melp_kernels/
        import importlib.util

        spec = importlib.util.spec_from_file_location("melp_kernels", os.path.join(ROOT, "kernels", "melp_kernels", "__init__.py"),
                                                      submodule_search_locations=[os.path.join(ROOT, "kernels", "melp_kernels")])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules["melp_kernels"] = pkg
        spec.loader.exec_module(pkg)
    return pkg


def _tool_specs(name):
    """sm90_specs of kernel module `name` from its benchmark tooling module melp_fast.testing.<name>_tools, if any."""
    try:
        return importlib.import_module(f"melp_fast.testing.{name}_tools").sm90_specs
    except (ImportError, AttributeError):
        return None


def discover(only=None):
    """[(module name, its sm90_specs, its SM90_DTYPES or None)] of kernel modules with compile specs; notes for those
    without."""
    pkg = _kernel_package()
    found, notes = [], []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or (only and info.name not in only):
            continue
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        specs = getattr(mod, "sm90_specs", None) or _tool_specs(info.name)
        if specs is not None:
            found.append((info.name, specs, getattr(mod, "SM90_DTYPES", None)))
        elif any(hasattr(getattr(mod, a), "fn") or type(getattr(mod, a)).__name__ == "JITFunction"
                 for a in dir(mod)):
            notes.append(f"note: kernels/{info.name}.py has Triton kernels but no sm90_specs(D, dtype); skipped")
    return found, notes


def _label(spec):
    c = spec.get("config")
    if c is not None:
        return "x".join(map(str, c[:3])) + f" w{spec['num_warps']} s{spec['num_stages']}"
    cx = spec["constexprs"]
    blocks = "x".join(str(v) for k, v in cx.items() if k.startswith("B") and isinstance(v, int))
    return f"{blocks} w{spec['num_warps']} s{spec['num_stages']}"


def run(dims, dtypes, quick=False, only=None, log=print):
    """dtypes None: per module its SM90_DTYPES (the input dtypes it ships) when it names them, else DTYPES."""
    import triton

    found, notes = discover(only)
    for n in notes:
        log(n)
    rows = []
    for mod_name, sm90_specs, shipped in found:
        for D in dims:
            for dt in dtypes or shipped or DTYPES:
                specs = sm90_specs(D, dt)
                if quick:
                    first = {}
                    for s in specs:
                        first.setdefault(s["name"], s)
                    specs = list(first.values())
                for spec in specs:
                    row = {"module": mod_name, "kernel": spec["name"], "D": D, "dtype": dt, "config": _label(spec),
                           "triton": triton.__version__}
                    t0 = time.time()
                    try:
                        kern = compile_spec(spec)
                        r = resources(kern)
                        row.update({k: r.get(k) for k in ("registers", "spills", "stack", "shared", "wgmma")})
                        row["problems"] = resource_problems(r)
                        row.update(hot_figures(spec, kern, dt))
                    except Exception as ex:  # a config that does not compile is a failure too
                        row["problems"] = [f"compile error: {type(ex).__name__}: {str(ex).splitlines()[0][:160]}"]
                    row["compile_s"] = round(time.time() - t0, 1)
                    rows.append(row)
                    log(json.dumps(row), file=sys.stderr)
    return rows, notes


def _f(v, fmt="{:.3f}"):
    return "" if v is None else fmt.format(v)


def table(rows):
    out = ["| kernel | D | dtype | config (BMxBNxBD warps stages) | registers | spill B | stack B | shared KB | "
           "wgmma shapes | warp-instr / logit | MUFU / logit | issue clk / logit | tensor clk / logit | bound | "
           "compile s | verdict |", "|---|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        if "registers" not in r:
            out.append(f"| {r['module']}.{r['kernel']} | {r['D']} | {r['dtype']} | {r['config']} | | | | | | | | | | | "
                       f"{r['compile_s']} | {'; '.join(r['problems'])} |")
            continue
        shapes = ", ".join(r.get("wgmma_shapes") or []) or ("mma" if r.get("wgmma") is False else "")
        out.append(f"| {r['module']}.{r['kernel']} | {r['D']} | {r['dtype']} | {r['config']} | {r['registers']} | "
                   f"{r['spills']} | {r['stack']} | {r['shared'] / 1024:.1f} | {shapes} | "
                   f"{_f(r.get('warp_instr_per_logit'))} | {_f(r.get('mufu_per_logit'), '{:.2f}')} | "
                   f"{_f(r.get('issue_clk_per_logit'))} | {_f(r.get('tc_clk_per_logit'))} | {r.get('bound') or ''} | "
                   f"{r['compile_s']} | {'; '.join(r['problems']) or 'ok'} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 768],
                    help="feature widths (default 256 768, what gpu_check.sh has time for; the committed tables "
                         "use --dims 128 256 512 768 1024)")
    ap.add_argument("--dtypes", nargs="+", default=None, choices=["bf16", "fp16", "fp32"],
                    help="input dtypes (default: a module's SM90_DTYPES, else bf16 fp32)")
    ap.add_argument("--quick", action="store_true", help="only the first config of each kernel")
    ap.add_argument("--only", nargs="+", default=None, help="kernel modules to compile (default: all)")
    add_output(ap)
    ap.add_argument("--keep", default=None,
                    help="a JSON this script wrote (same Triton): its rows of the modules not compiled now are kept "
                         "(with --only: refresh one module's rows of a committed table)")
    args = ap.parse_args(argv)
    args.out = output_path(args, f"kernel_resources_triton{importlib.import_module('triton').__version__}.md")

    def log(*a, file=None):
        print(*a, file=file or sys.stdout, flush=True)

    t0 = time.time()
    rows, notes = run(args.dims, args.dtypes, args.quick, args.only, log)
    if args.keep:
        import triton

        with open(args.keep) as f:
            old = json.load(f)["rows"]
        fresh = {r["module"] for r in rows}
        kept = [r for r in old if r["module"] not in fresh]
        if any(r.get("triton") != triton.__version__ for r in kept):
            raise SystemExit(f"kernel_resources: {args.keep} holds rows of another Triton than {triton.__version__}")
        rows = sorted(kept + rows, key=lambda r: r["module"])  # stable: each module's rows keep their order
    bad = [r for r in rows if r["problems"]]
    cmd = "python benchmarks/kernel_resources.py " + " ".join(sys.argv[1:] if argv is None else argv)
    md = ["# sm_90 resources of the Triton kernels (compiled with Triton's bundled ptxas, no GPU)", "",
          f"- Machine: {machine('cpu')}", f"- Command: `{cmd.strip()}`",
          f"- Limits: no spill, no stack frame, shared memory <= {SHARED_LIMIT // 1024} KB per block; "
          "wgmma shapes: the Hopper warpgroup tensor-core instructions in the SASS (empty: none)",
          "- Hot loop (from the SASS): the kernel's tile loop, an inner K loop counted once per trip, per logit of "
          "the tile: warp-instructions (x num_warps / logits), MUFU lane-operations; clocks per logit per SM: issue "
          "= warp-instr / 4, tensor = wgmma FLOP / 4096 (bf16, fp16) or / 2048 (tf32), MUFU = MUFU / 16; bound = "
          "the largest. Static counts of the steady-state variant (hot_constexprs) where the kernel names one.",
          "- local_loss rows: a logit is an element of a (the B x B x K x S beat-sentence dot products); a backward "
          "pass's figures count the tile's recompute by each of its DP / BDO output-column programs (config: tile "
          "rows x columns x BDO).", ""]
    md += [f"- {n}" for n in notes] + ([""] if notes else [])
    md += [table(rows), "",
           f"{len(rows)} kernels compiled in {time.time() - t0:.0f} s; {len(bad)} with a problem."]
    text = "\n".join(md)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump({"machine": machine("cpu"), "command": cmd.strip(), "notes": notes, "rows": rows}, f, indent=1)
    return 1 if bad or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
