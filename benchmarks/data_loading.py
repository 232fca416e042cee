"""Data pipeline throughput: preprocessing records/s per process, and DataLoader samples/s from a store.

    python benchmarks/data_loading.py [--records 512] [--batch-size 64] [--seconds 8] [--out FILE.md]

1. A MIMIC-IV-ECG-layout tree of --records 12-lead, 500 Hz, 10 s WFDB records is written (the real 12-lead DICOM
   ECG (pydicom's test file), shifted, scaled and with a little noise per record; machine-style reports from the
   synthetic corpus), then ``melp_fast.data.preprocess.build_store`` runs on it with 1 and 2 worker processes:
   records/s overall and per process (read + resample + beats + high-pass + min-max + write).
2. The DataLoader over that store, random order (shuffle), batch --batch-size, lead masking p = 0.5 and report
   tokenisation by Collate (the MiniLM tokenizer of the default text encoder, max_len 128), in several ways:
   per-item reads (``dataset[i]``, the classic path) vs batched reads (``__getitems__``), tokenisation cache on /
   off, 0 or 2 worker processes. samples/s after one warm-up pass.
Pages of the store are in the page cache (the store is small); torch and numba use one thread per process.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datetime import date  # noqa: E402

from melp_fast.testing.common import add_output, machine, output_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

MIMIC_ORDER = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]


def make_tree(root: Path, n: int):
    import wfdb

    from melp_fast.testing.beat_cases import dicom_ecg
    from melp_fast.data import synthetic
    from melp_fast.data.sources.common import LEADS, canonical_lead, resample
    from melp_fast.data.sources.single import read_dicom

    sig, fs, names, _ = read_dicom(dicom_ecg())  # pydicom's 12-lead test ECG
    order = [[canonical_lead(x) for x in names].index(lead) for lead in MIMIC_ORDER]
    base = resample(sig[order], fs, 500)[:, :5000]
    rng = np.random.default_rng(0)
    rows, mm = [], []
    for k in range(n):
        study = f"{40000000 + k}"
        subject = f"{10000000 + k // 4}"
        rel = f"files/p{subject[:4]}/p{subject}/s{study}/{study}"
        x = np.roll(base, int(rng.integers(0, 5000)), axis=1) * rng.uniform(0.5, 1.5)
        x = x + rng.normal(0, 0.01, x.shape)
        d = root / Path(rel).parent
        d.mkdir(parents=True, exist_ok=True)
        wfdb.wrsamp(study, fs=500, units=["mV"] * 12, sig_name=MIMIC_ORDER, p_signal=x.T, fmt=["16"] * 12,
                    adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(d))
        rows.append(f"{subject},{study},{study},2180-01-01 00:00:00,{rel}")
        rep = synthetic.generate_record(k, 1).report.rstrip(".").split(". ")
        rep = rep + [""] * (18 - len(rep))
        mm.append(",".join([subject, study, "1", "2180-01-01 00:00:00", *[f'"{r}"' if r else "" for r in rep]]))
    (root / "record_list.csv").write_text("subject_id,study_id,file_name,ecg_time,path\n" + "\n".join(rows) + "\n")
    head = ["subject_id", "study_id", "cart_id", "ecg_time", *[f"report_{i}" for i in range(18)]]
    (root / "machine_measurements.csv").write_text(",".join(head) + "\n" + "\n".join(mm) + "\n")
    del LEADS


def _cpu_with_children() -> float:
    import resource

    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def _run_cli(args) -> tuple[float, float]:
    """Wall and CPU seconds (this process's reaped children, i.e. the command and its workers) of one command."""
    import subprocess

    c = _cpu_with_children()
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "melp_fast.cli", "preprocess", *args], cwd=ROOT, check=True,
                   capture_output=True)
    return time.perf_counter() - t, _cpu_with_children() - c


def bench_preprocess(root: Path, tmp: Path, n: int) -> list[dict]:
    """`melp-fast preprocess` as a user runs it, 1 and 2 worker processes; net of start-up and listing (a run on
    8 records with the same worker count is subtracted)."""
    res = []
    base = ["--source", "mimic-iv-ecg", "--root", str(root), "--no-progress"]
    _run_cli([*base, "--out", str(tmp / "warm"), "--workers", "1", "--limit", "8"])  # numba cache, page cache
    for workers in (1, 2):
        shard = max(8, n // (4 * workers))
        w0, c0 = _run_cli([*base, "--out", str(tmp / f"small-w{workers}"), "--workers", str(workers), "--limit", "8",
                           "--shard-size", "4"])
        w1, c1 = _run_cli([*base, "--out", str(tmp / f"store-w{workers}"), "--workers", str(workers),
                           "--shard-size", str(shard)])
        net, cpu = max(w1 - w0, 1e-9), max(c1 - c0, 1e-9)
        res.append({"workers": workers, "records": n, "seconds": w1, "startup_s": w0, "rps": (n - 8) / net,
                    "rps_per_process": (n - 8) / net / workers, "cpu_s": cpu, "rps_per_cpu_s": (n - 8) / cpu})
    return res


def _cpu(pids) -> float:
    """CPU seconds used so far by this process and the given worker processes (user + system)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tick
        except OSError:
            pass
    return total


def bench_loader(store_path: Path, batch_size: int, seconds: float, rounds: int = 3) -> list[dict]:
    from torch.utils.data import DataLoader

    from melp_fast.data.dataset import Collate, ECGTextDataset
    from melp_fast.data.store import Store
    from melp_fast.model.text import ReportTokenizer, load_tokenizer

    tok = ReportTokenizer(load_tokenizer("minilm"), max_len=128)
    store = Store(store_path)
    res = []

    class PerItem(ECGTextDataset):  # the classic path: one read and one item dict per sample
        __getitems__ = None

    class FirstEpochCollate(Collate):  # every report new (a first epoch), statements reused via the sentence cache
        def tokenize(self, reports):
            self._cache.clear()
            return super().tokenize(reports)

    configs = [("per-item reads, no token cache", PerItem, 0, 0, torch.float32),
               ("batched reads, no token cache", ECGTextDataset, 0, 0, torch.float32),
               ("batched reads, every report new (sentence cache only)", ECGTextDataset, -1, 0, torch.float32),
               ("batched reads, token cache", ECGTextDataset, 200_000, 0, torch.float32),
               ("batched reads, token cache, float16 ECG", ECGTextDataset, 200_000, 0, torch.float16),
               ("batched reads, token cache, 2 workers", ECGTextDataset, 200_000, 2, torch.float32)]
    setups = []
    for name, cls, cache, workers, dtype in configs:
        ds = cls(store, lead_mask_p=0.5, seed=0, ecg_dtype=dtype)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                            collate_fn=FirstEpochCollate(tok) if cache < 0 else Collate(tok, cache_size=cache),
                            persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
        setups.append((name, workers, ds, loader))
    best: dict[str, dict] = {}
    for _round in range(rounds):  # interleaved rounds; the best of each is kept (the machine is shared)
        for name, workers, ds, loader in setups:
            it = iter(loader)
            for _ in it:  # warm-up pass (fills the token cache, starts workers)
                pass
            pids = [w.pid for w in getattr(it, "_workers", [])]
            n, t0, c0, epoch = 0, time.perf_counter(), _cpu(pids), 1
            while time.perf_counter() - t0 < seconds / rounds:
                ds.set_epoch(epoch)
                for b in loader:
                    n += b["ecg"].shape[0]
                epoch += 1
            dt, cpu = time.perf_counter() - t0, _cpu(pids) - c0
            r = {"config": name, "workers": workers, "samples": n, "seconds": dt, "sps": n / dt, "cpu_s": cpu,
                 "sps_per_cpu_s": n / cpu}
            old = best.get(name)
            best[name] = r if old is None else {**r, "sps": max(r["sps"], old["sps"]),
                                                "sps_per_cpu_s": max(r["sps_per_cpu_s"], old["sps_per_cpu_s"])}
    res = [best[name] for name, *_ in setups]
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=12.0, help="per loader configuration (3 rounds)")
    add_output(p)
    args = p.parse_args(argv)
    args.out = output_path(args, "data_loading_cpu.md")
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="melp-bench-"))
    try:
        root = tmp / "mimic"
        t = time.perf_counter()
        make_tree(root, args.records)
        print(f"tree of {args.records} records written in {time.perf_counter() - t:.1f} s", flush=True)
        pre = bench_preprocess(root, tmp, args.records)
        for r in pre:
            print(f"preprocess workers={r['workers']}: {r['rps']:.1f} records/s ({r['rps_per_process']:.1f} per process, "
                  f"{r['rps_per_cpu_s']:.1f} per CPU-second)", flush=True)
        load = bench_loader(tmp / "store-w1", args.batch_size, args.seconds)
        for r in load:
            print(f"loader {r['config']}: {r['sps']:.0f} samples/s wall, {r['sps_per_cpu_s']:.0f} per CPU-second",
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [f"# Data loading on CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__})", "",
             f"- date: {date.today()}", f"- machine: {machine('cpu')}",
             f"- command: `python benchmarks/data_loading.py --records {args.records} --batch-size {args.batch_size} "
             f"--seconds {args.seconds:g}`", "",
             "## Preprocessing (MIMIC-IV-ECG layout, 12-lead 500 Hz 10 s WFDB records)", "",
             "`melp-fast preprocess` in a subprocess; rates net of start-up (the same command on 8 records is "
             "subtracted).", "",
             "| processes | records | seconds (start-up) | records/s | records/s per process | records per CPU-second |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in pre:
        lines.append(f"| {r['workers']} | {r['records']} | {r['seconds']:.1f} ({r['startup_s']:.1f}) | {r['rps']:.1f} | "
                     f"{r['rps_per_process']:.1f} | {r['rps_per_cpu_s']:.1f} |")
    lines += ["", f"## DataLoader from the store (batch {args.batch_size}, shuffled, lead mask p = 0.5, "
                  "MiniLM report tokenisation)", "",
              "| configuration | DataLoader workers | samples/s (wall) | samples per CPU-second |",
              "|---|---:|---:|---:|"]
    for r in load:
        lines.append(f"| {r['config']} | {r['workers']} | {r['sps']:.0f} | {r['sps_per_cpu_s']:.0f} |")
    lines += ["", "Each loader row: best of 3 interleaved rounds of --seconds / 3 each, after a warm-up pass."]
    lines += ["", f"Load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other jobs share "
              "the machine, so wall rates understate; samples per CPU-second is what one dedicated core delivers)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
