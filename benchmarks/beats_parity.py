"""Beat detector speed work: are the beats unchanged, and how fast is it against another revision and NeuroKit2?

    python benchmarks/beats_parity.py save FILE [--rev REV]    # the beats of the working tree (or of git REV)
    python benchmarks/beats_parity.py compare FILE             # the working tree's beats against a saved FILE
    python benchmarks/beats_parity.py speed [--rev REV] [--records 1000] [--passes 9] [--nk-records 100]

``save`` / ``compare``: the beats on every provoking case (beat_cases.KINDS and HARD_KINDS, 12 draws per case and
rate, seeds as ``segmentation.py --seeds``), 12 generator records per label and rate, 1,000 benchmark records (500
Hz, 12 leads), altered copies of a quarter of them (NaN / inf / zero runs, cut lengths, 333 Hz), float32 copies,
and 64 records through ``segment_batch``; ``compare`` lists the records whose beats differ (a speed change must
leave them all identical, or be justified as a fix).

``speed``: us per record on the benchmark records (500 Hz, 12 leads, one Numba thread), the working tree and git
REV (default ``main``; its ``melp_fast/data/beats`` copied to a temporary package) and NeuroKit2 on lead II of the
first --nk-records records, in alternating passes in one process; the median of the passes and the ratio to
NeuroKit2's median.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pickle
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PKG = "melp_fast/data/beats"


def detector_at(rev, tmp):
    """(detect_r_peaks, segment_batch) of the beat package at git revision rev, imported from a copy in tmp."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=10", rev], capture_output=True, text=True,
                         check=True).stdout.strip()
    name = f"beats_at_{sha}"
    dst = Path(tmp) / name
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("__init__.py", "_detector.py"):
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{sha}:{PKG}/{f}"], capture_output=True, text=True,
                              check=True).stdout
        (dst / f).write_text(text)
    spec = importlib.util.spec_from_file_location(name, dst / "__init__.py", submodule_search_locations=[str(dst)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod.detect_r_peaks, mod.segment_batch


def worktree_detector():
    from melp_fast.data.beats import detect_r_peaks, segment_batch

    return detect_r_peaks, segment_batch


def bench_records(n):
    from benchmarks.segmentation import load_dicom, load_mit, make_records

    return make_records(n, load_mit(), load_dicom())[0]


def beats_of(detect, batch):
    """{record key: beats} over the check records (see the module docstring)."""
    from benchmarks.segmentation import case_seeds
    from melp_fast.testing import beat_cases as bc

    out = {}
    for kind in list(bc.KINDS) + list(bc.HARD_KINDS):
        build = bc.hard_case if kind in bc.HARD_KINDS else bc.synth_case
        for fs in bc.RATES:
            for s in case_seeds(0, kind, fs, 12):
                x, _ = build(kind, float(fs), int(s))
                out[(kind, fs, int(s))] = detect(x, float(fs))
                if zlib.crc32(repr((kind, fs, int(s))).encode()) % 4 == 0:
                    out[("f32", kind, fs, int(s))] = detect(x.astype(np.float32), float(fs))
    for kind in bc.GENERATOR_KINDS:
        for fs in bc.RATES:
            for i in range(12):
                x, _ = bc.generator_case(kind, fs, i)
                out[("gen", kind, fs, i)] = detect(x, float(fs))
    recs = bench_records(1000)
    rng = np.random.default_rng(5)
    for i in range(recs.shape[0]):
        out[("bench", i)] = detect(recs[i], 500.0)
        if i % 5 == 0:
            out[("bench32", i)] = detect(recs[i].astype(np.float32), 500.0)
        if i % 4 == 1:  # altered copies: NaN / inf / zero runs, a lead all NaN, a cut length, another rate
            y = recs[i].copy()
            for _ in range(int(rng.integers(1, 6))):
                lead, a = int(rng.integers(0, 12)), int(rng.integers(0, 4990))
                y[lead, a : a + int(rng.choice([1, 3, 7, 15, 40, 300]))] = rng.choice([np.nan, np.inf, 0.0])
            if i % 8 == 1:
                y[int(rng.integers(0, 12))] = np.nan
            cut = int(rng.integers(3000, 5001))
            out[("alt", i)] = detect(y[:, :cut], 500.0)
            if i % 3 == 0:
                out[("alt32", i)] = detect(y[:, :cut].astype(np.float32), 500.0)
            if i % 16 == 1:
                out[("alt_fs", i)] = detect(y, 333.0)
    peaks, counts = batch(recs[:64], 500.0, 64)
    for i in range(64):
        out[("batch", i)] = peaks[i, : counts[i]]
    return out


def speed(args):
    import numba

    from benchmarks.segmentation import FS
    from melp_fast.testing.beat_cases import nk_peaks

    numba.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        dets = {args.rev: detector_at(args.rev, tmp)[0], "working tree": worktree_detector()[0]}
        recs = bench_records(args.records)
        lead_ii = np.ascontiguousarray(recs[: args.nk_records, 1, :])
        runs = {name: (lambda f=f: [f(r, FS) for r in recs], recs.shape[0]) for name, f in dets.items()}
        runs["NeuroKit2 (lead II)"] = (lambda: [nk_peaks(v, FS) for v in lead_ii], lead_ii.shape[0])
        for fn, _ in runs.values():  # warm-up (compile or cache load)
            fn()
        times = {name: [] for name in runs}
        for _ in range(args.passes):
            for name, (fn, n) in runs.items():
                t = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t) / n * 1e6)
    nk = np.median(times["NeuroKit2 (lead II)"])
    for name, v in times.items():
        print(f"{name}: {np.median(v):.1f} us per record (median of {args.passes} passes, best {np.min(v):.1f}); "
              f"{nk / np.median(v):.1f}x NeuroKit2")
    print(f"records: {args.records} (500 Hz, 12 leads); NeuroKit2 on lead II of the first {args.nk_records}; "
          f"load average {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("save", "compare", "speed"))
    ap.add_argument("file", nargs="?", help="save / compare: the beats file (pickle)")
    ap.add_argument("--rev", default=None, help="save: a git revision instead of the working tree; speed: the "
                    "revision to time against (default main)")
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=9)
    ap.add_argument("--nk-records", type=int, default=100)
    args = ap.parse_args()
    if args.mode == "speed":
        args.rev = args.rev or "main"
        speed(args)
        return
    if not args.file:
        ap.error(f"{args.mode} needs a FILE")
    t = time.perf_counter()
    if args.mode == "save":
        with tempfile.TemporaryDirectory() as tmp:
            detect, batch = detector_at(args.rev, tmp) if args.rev else worktree_detector()
            out = beats_of(detect, batch)
        Path(args.file).write_bytes(pickle.dumps(out))
        print(f"{len(out)} records' beats saved to {args.file} ({time.perf_counter() - t:.0f} s)")
        return
    ref = pickle.loads(Path(args.file).read_bytes())
    out = beats_of(*worktree_detector())
    diff = [k for k in ref if k not in out or not np.array_equal(ref[k], out[k])]
    print(f"{len(ref)} records ({time.perf_counter() - t:.0f} s): "
          + ("beats identical" if not diff else f"beats differ on {len(diff)}: {diff[:20]}"))
    sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
