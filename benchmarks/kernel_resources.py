"""Compile every Triton kernel of kernels/ for sm_90 (Hopper) with Triton's bundled ptxas, no GPU needed, and print
one row per kernel and shipped config: registers, spill bytes, stack frame, shared memory, and whether the tile
dots lower to wgmma (Hopper's tensor-core instructions).

    python benchmarks/kernel_resources.py                          # D = 256 and 768, bf16 and fp32, every config
    python benchmarks/kernel_resources.py --out benchmarks/results/kernel_resources.md   # + JSON beside
    python benchmarks/kernel_resources.py --quick                  # the first config of each kernel only

Exit status 1 if any compiled kernel spills, has a stack frame or needs more than 227 KB of shared memory.

Discovery: every module kernels/<name>.py that defines `sm90_specs(D: int, dtype: str) -> list[dict]` (keys name,
fn, signature, constexprs, num_warps, num_stages; optional config, a label, and divisible, the integer arguments
that are multiples of 16 at such shapes). Pointer arguments are compiled as 16-byte aligned, as Triton specialises
them for tensors from the PyTorch allocator; that alignment decides vector widths and asynchronous copies, so the
counts here are those of a launch at the headline shapes. Run with TRITON_INTERPRET unset (this script unsets it
for itself before importing the kernels).
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
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.common import SHARED_LIMIT, compile_spec, machine, resource_problems, resources  # noqa: E402


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


def discover(only=None):
    """[(module name, module)] of kernel modules with sm90_specs; notes for those without."""
    pkg = _kernel_package()
    found, notes = [], []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or (only and info.name not in only):
            continue
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        if hasattr(mod, "sm90_specs"):
            found.append((info.name, mod))
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
    import triton

    found, notes = discover(only)
    for n in notes:
        log(n)
    rows = []
    for mod_name, mod in found:
        for D in dims:
            for dt in dtypes:
                specs = mod.sm90_specs(D, dt)
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
                        r = resources(compile_spec(spec))
                        row.update({k: r.get(k) for k in ("registers", "spills", "stack", "shared", "wgmma")})
                        row["problems"] = resource_problems(r)
                    except Exception as ex:  # a config that does not compile is a failure too
                        row["problems"] = [f"compile error: {type(ex).__name__}: {str(ex).splitlines()[0][:160]}"]
                    row["compile_s"] = round(time.time() - t0, 1)
                    rows.append(row)
                    log(json.dumps(row), file=sys.stderr)
    return rows, notes


def table(rows):
    out = ["| kernel | D | dtype | config (BMxBNxBD warps stages) | registers | spill B | stack B | shared KB | "
           "wgmma | compile s | verdict |", "|---|---:|---|---|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        if "registers" not in r:
            out.append(f"| {r['module']}.{r['kernel']} | {r['D']} | {r['dtype']} | {r['config']} | | | | | | "
                       f"{r['compile_s']} | {'; '.join(r['problems'])} |")
            continue
        out.append(f"| {r['module']}.{r['kernel']} | {r['D']} | {r['dtype']} | {r['config']} | {r['registers']} | "
                   f"{r['spills']} | {r['stack']} | {r['shared'] / 1024:.1f} | {'yes' if r['wgmma'] else 'no'} | "
                   f"{r['compile_s']} | {'; '.join(r['problems']) or 'ok'} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 768])
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--quick", action="store_true", help="only the first config of each kernel")
    ap.add_argument("--only", nargs="+", default=None, help="kernel modules to compile (default: all)")
    ap.add_argument("--out", default=None, help="write the markdown table here and the JSON beside it")
    args = ap.parse_args(argv)

    def log(*a, file=None):
        print(*a, file=file or sys.stdout, flush=True)

    t0 = time.time()
    rows, notes = run(args.dims, args.dtypes, args.quick, args.only, log)
    bad = [r for r in rows if r["problems"]]
    cmd = "python benchmarks/kernel_resources.py " + " ".join(sys.argv[1:] if argv is None else argv)
    md = ["# sm_90 resources of the Triton kernels (compiled with Triton's bundled ptxas, no GPU)", "",
          f"- Machine: {machine('cpu')}", f"- Command: `{cmd.strip()}`",
          f"- Limits: no spill, no stack frame, shared memory <= {SHARED_LIMIT // 1024} KB per block; "
          "wgmma = the tile dots use Hopper's warpgroup tensor-core instructions", ""]
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
