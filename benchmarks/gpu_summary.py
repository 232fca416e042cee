"""OUTDIR/summary.md of benchmarks/gpu_check.sh: every step's status, and every figure against its goal.

    python benchmarks/gpu_summary.py OUTDIR

Reads OUTDIR/<step>.step.json (written by gpu_check.sh: status, seconds, command) and the steps' own outputs
(throughput_paper.json, throughput_tiny.json, caption_head.json, infonce.json, local_loss.md,
kernel_resources.md / .json, tests.log). Outputs of scripts owned elsewhere are read defensively: a figure that
cannot be found is listed as "not found" rather than failing the summary.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

STEPS = ("env", "throughput_paper", "caption_head", "infonce", "local_loss", "tests", "throughput_tiny",
         "kernel_resources")


def load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def md_tables(text: str) -> list[list[dict]]:
    """Every markdown table of text as a list of {header: cell} rows."""
    tables, cur, head = [], None, None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            if cur:
                tables.append(cur)
            cur, head = None, None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if head is None:
            head, cur = cells, []
        elif all(re.fullmatch(r":?-+:?", c) for c in cells if c):
            continue
        else:
            cur.append(dict(zip(head, cells)))
    if cur:
        tables.append(cur)
    return tables


def num(s):
    m = re.search(r"-?\d+(\.\d+)?(e-?\d+)?", str(s))
    return float(m.group(0)) if m else None


def col(row: dict, *keys):
    for k in row:
        if all(x in k.lower() for x in keys):
            return row[k]
    return None


def verdict(ok):
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def throughput_figures(d, label) -> list[tuple]:
    rows = []
    if not d:
        return [(label, "throughput", "not found", "-", "n/a")]
    ok = [r for r in d.get("rows", []) if "error" not in r]
    for r in d.get("rows", []):
        if "error" in r:
            rows.append((label, f"{r.get('variant')} {r.get('mode', 'eager')} ({r.get('reports')})", "failed", "-",
                         "NOT met"))
    by = {(r["variant"], r["reports"], r.get("mode", "eager")): r for r in ok}
    peak = d.get("args", {}).get("peak_tflops", 989.0)
    for (variant, reports, mode), r in sorted(by.items()):
        # the peer: the literal reference where it ran, else the PyTorch blocks (the gate's paper step leaves the
        # per-pair loop out: at B = 64 it does not finish its steps inside the step's limit)
        peer = "reference" if ("reference", reports, mode) in by else "blocks"
        ref = by.get((peer, reports, mode))
        if mode != "eager":
            reports = f"{reports}, {mode}"
        ref_flops = (ref or {}).get("flops_per_step") or r.get("flops_per_step")
        rows.append((label, f"{variant} samples/s ({reports} reports)", f"{r['samples_per_s']:.1f}", "-", "n/a"))
        if ref and variant != peer:
            x = r["samples_per_s"] / ref["samples_per_s"]
            goal = f">= 1.8x {peer}" if variant == "fused" and label == "paper b64" else "reported"
            rows.append((label, f"{variant} / {peer} samples/s ({reports})", f"{x:.2f}x", goal,
                         verdict(x >= 1.8) if goal.startswith(">=") else "n/a"))
            rows.append((label, f"{variant} peak memory vs {peer} ({reports})",
                         f"{r['peak_mem_mb']:.0f} / {ref['peak_mem_mb']:.0f} MB", f"< {peer}",
                         verdict(r["peak_mem_mb"] < ref["peak_mem_mb"])))
        if ref_flops and r.get("device", "").startswith("cuda"):
            mfu = ref_flops / (r["step_ms"] / 1e3) / (peak * 1e12)
            goal = ">= 35%" if variant == "fused" and label == "paper b64" else "reported"
            rows.append((label, f"{variant} MFU ({reports})", f"{100 * mfu:.1f}%", goal,
                         verdict(mfu >= 0.35) if goal.startswith(">=") else "n/a"))
    if d.get("matmul_tflops"):
        rows.append((label, "measured bf16 matmul (8192^3)", f"{d['matmul_tflops']:.0f} TFLOP/s",
                     f"peak {peak:g}", "n/a"))
    return rows


def caption_figures(d) -> list[tuple]:
    if not d:
        return [("caption head", "fwd+bwd", "not found", "-", "n/a")]
    rows = []
    ok = [r for r in d.get("rows", []) if "error" not in r]
    for r in ok:
        if r["impl"] == "reference":
            continue
        ref = next((x for x in ok if x["impl"] == "reference" and x["N"] == r["N"]), None)
        if not ref:
            continue
        q = ref["peak_extra_mb"] / max(r["peak_extra_mb"], 1e-9)
        rows.append(("caption head", f"extra memory drop, N = {r['N']}", f"{q:.1f}x", ">= 4x", verdict(q >= 4)))
        rows.append(("caption head", f"time chunked / plain, N = {r['N']}", f"{r['ms']:.2f} / {ref['ms']:.2f} ms",
                     "reported", "n/a"))
        err = max(r["rel_err"].values())
        rows.append(("caption head", f"max rel. error vs plain, N = {r['N']}", f"{err:.1e}",
                     "< 1e-2 (bf16) / 1e-4 (fp32)", verdict(err < (1e-2 if r["dtype"] == "bf16" else 1e-4))))
    return rows or [("caption head", "rows", "not found", "-", "n/a")]


def infonce_figures(d) -> list[tuple]:
    if not d:
        return [("InfoNCE", "benchmark", "not found", "-", "n/a")]
    rows = []
    res = [r for r in d.get("rows", []) if "error" not in r and "ms" in r]
    for r in res:
        if r.get("impl") == "open_clip":
            continue
        oc = next((x for x in res if x.get("impl") == "open_clip" and x.get("B") == r.get("B")), None)
        if oc:
            rows.append(("InfoNCE", f"{r['impl']} B = {r['B']} time vs OpenCLIP",
                         f"{r['ms']:.2f} / {oc['ms']:.2f} ms", "faster than OpenCLIP", verdict(r["ms"] < oc["ms"])))
            if "peak_extra_mib" in r and "peak_extra_mib" in oc:
                rows.append(("InfoNCE", f"{r['impl']} B = {r['B']} peak extra vs OpenCLIP",
                             f"{r['peak_extra_mib']:.0f} / {oc['peak_extra_mib']:.0f} MiB", "less than OpenCLIP",
                             verdict(r["peak_extra_mib"] < oc["peak_extra_mib"])))
        else:
            rows.append(("InfoNCE", f"{r['impl']} B = {r['B']}", f"{r['ms']:.2f} ms", "reported", "n/a"))
    for r in d.get("rows", []):
        if "error" in r:
            rows.append(("InfoNCE", f"{r.get('impl')} B = {r.get('B')}", str(r["error"])[:60], "-", "n/a"))
    return rows or [("InfoNCE", "rows", "not found", "-", "n/a")]


def local_figures(text) -> list[tuple]:
    if not text:
        return [("local loss", "benchmark", "not found", "-", "n/a")]
    rows = []
    for table in md_tables(text):
        for r in table:
            impl, ms = col(r, "impl"), col(r, "ms")
            if impl is None or ms is None or num(ms) is None:
                continue
            shape = col(r, "b,") or col(r, "shape") or ""
            dtype = col(r, "dtype") or ""
            rows.append(("local loss", f"{impl} {dtype} [{shape}] fwd+bwd", f"{num(ms):.2f} ms", "reported", "n/a"))
    if rows:
        best = {}
        for _, name, val, _, _ in rows:
            best[name.split(" ")[0]] = min(best.get(name.split(" ")[0], 1e30), num(val))
        if "fused" in best and "batched" in best:
            rows.append(("local loss", "fastest fused vs fastest batched", f"{best['fused']:.2f} / "
                         f"{best['batched']:.2f} ms", "fused faster", verdict(best["fused"] < best["batched"])))
    return rows or [("local loss", "rows", "not found", "-", "n/a")]


def resource_figures(out: Path) -> list[tuple]:
    d = load_json(out / "kernel_resources.json")
    text = (out / "kernel_resources.md").read_text() if (out / "kernel_resources.md").is_file() else ""
    rows = []
    for table in md_tables(text):
        for r in table:
            spills = col(r, "spill")
            regs = col(r, "reg")
            name = col(r, "kernel") or next(iter(r.values()), "?")
            if spills is None and regs is None:
                continue
            rows.append(("resources", f"{name}", f"{regs} regs, {spills} B spilled", "0 spills",
                         verdict(num(spills) == 0) if num(spills) is not None else "n/a"))
    if not rows and d:
        rows.append(("resources", "kernel_resources.json", "present", "-", "n/a"))
    return rows or [("resources", "register / spill table", "not found", "-", "n/a")]


def tests_figures(out: Path) -> list[tuple]:
    log = out / "tests.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    m = re.findall(r"=+ (.*(?:passed|failed|error|skipped|deselected).*?) in [\d.]+s", text)
    if not m:
        m = re.findall(r"^(\d+ (?:passed|failed).*?) in [\d.]+s", text, re.M)
    return [("tests", "pytest", "; ".join(m) if m else "no pytest summary", "no failure",
             verdict(bool(m) and not any("failed" in x or "error" in x for x in m)) if m else "NOT met")]


def build(out: Path) -> str:
    steps = [(s, load_json(out / f"{s}.step.json")) for s in STEPS]
    env = (out / "env.log").read_text(errors="replace") if (out / "env.log").is_file() else ""
    dry = any(st and st.get("dry_run") for _, st in steps)
    lines = ["# GPU gate summary" + (" (DRY RUN: toy sizes on CPU, figures meaningless)" if dry else ""), ""]
    machine = next((ln for ln in env.splitlines() if ln.startswith("machine:")), None)
    if machine:
        lines += [f"- {machine}"]
    total = sum((st or {}).get("seconds", 0) for _, st in steps)
    lines += [f"- wall time of all steps: {total:.0f} s (goal <= 570 s: {verdict(total <= 570) if not dry else 'n/a'})",
              "", "## Steps", "", "| step | status | seconds | limit s | output |", "|---|---|---:|---:|---|"]
    for s, st in steps:
        if st is None:
            lines.append(f"| {s} | not run | - | - | - |")
        else:
            lines.append(f"| {s} | {st['status']} | {st['seconds']:.0f} | {st['timeout']} | {st.get('output', '')} |")
    figs = []
    figs += throughput_figures(load_json(out / "throughput_paper.json"), "paper b64")
    figs += throughput_figures(load_json(out / "throughput_tiny.json"), "tiny")
    figs += caption_figures(load_json(out / "caption_head.json"))
    figs += infonce_figures(load_json(out / "infonce.json"))
    lt = out / "local_loss.md"
    figs += local_figures(lt.read_text() if lt.is_file() else "")
    figs += tests_figures(out)
    figs += resource_figures(out)
    lines += ["", "## Figures against goals", "", "| area | figure | value | goal | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {g} | {v} |" for a, b, c, g, v in figs]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python benchmarks/gpu_summary.py OUTDIR")
    out = Path(argv[0])
    text = build(out)
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
