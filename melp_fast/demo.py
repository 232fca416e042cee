"""`melp-fast demo`: the README's first command, end to end on one machine.

It builds a held-out synthetic test store, scores the untrained tiny model zero-shot, trains the tiny preset
(train.py, in this process), scores the trained model again and prints both side by side; then it shows the
trained model on a real 12-lead recording (pydicom's test ECG): its generated report beside the recording device's
statement, and the beat-attention picture. The argument parsing is melp_fast/options.py's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def run(args) -> int:
    from . import train as train_mod
    from .config import get_preset
    from .data import synthetic
    from .data.store import build_synthetic_store
    from .eval.zero_shot import comparison_table, save_json, zero_shot
    from .eval.real_set import demo_report
    from .inference.export import load_model, untrained_model

    from .checks import check_demo_args

    check_demo_args(args)  # --steps, --n-test, --loss-impl, --ds_config, a writable --out: before any work
    t0 = time.perf_counter()
    cfg = get_preset("tiny")
    out = Path(args.out)
    steps = args.steps or cfg.train.steps
    test = build_synthetic_store(out.parent / "data" / f"synthetic-test-{args.n_test}-seed{cfg.data.seed}", "test",
                                 args.n_test, cfg.data.seed, cfg.data.highpass_hz, cfg.model.max_beats)
    seed = cfg.train.seed if args.seed is None else args.seed
    before = zero_shot(untrained_model(cfg, seed), test, synthetic.PROMPTS)
    result = train_mod.main(train_argv(args, out, steps) + demo_folder(out))  # demo_folder: replaces only its own
    after = zero_shot(load_model(result["export"]), test, synthetic.PROMPTS)
    results = {"untrained": before, "trained": after}
    table = comparison_table(results, synthetic.CLASS_NAMES)
    save_json({**results, "steps": steps, "n_test": args.n_test, "minutes": (time.perf_counter() - t0) / 60},
              out / "zero_shot.json")
    (out / "zero_shot.md").write_text(table + "\n")
    print(f"\nZero-shot AUROC on {args.n_test} held-out synthetic ECGs (tiny preset, {steps} steps):\n")
    print(table)
    real_ecg(result["export"], out)
    demo_report(load_model(result["export"]), out)  # the real 12-lead set: recordings the model never saw
    print(f"\nwritten: {out / 'zero_shot.json'}, model: {result['export']}  ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


def train_argv(args, out: Path, steps: int) -> list[str]:
    """train.py's arguments for the demo's run: the tiny preset, its folder, steps, loss impl, seed, DeepSpeed JSON."""
    argv = ["--preset", "tiny", "--out", str(out), "--steps", str(steps), "--loss-impl", args.loss_impl]
    if args.seed is not None:
        argv += ["--set", f"train.seed={args.seed}"]
    if args.ds_config:
        argv += ["--ds_config", args.ds_config]
    return argv


def demo_folder(out: Path) -> list[str]:
    """Extra train flags for the demo's run folder: --overwrite when it holds a previous demo's run."""
    from .errors import UserError
    from .training.run_dir import demo_may_replace, holds_run, mark_demo

    if not demo_may_replace(out):
        raise UserError(f"{out} holds a training run that melp-fast demo did not make; choose another --out")
    extra = []
    if holds_run(out):
        print(f"demo: replacing the previous demo run in {out}", file=sys.stderr)
        extra = ["--overwrite"]
    mark_demo(out)
    return extra


DEVICE_STATEMENT_EN = {"ritmo sinusale": "sinus rhythm", "ecg normale": "normal ecg"}


def real_ecg(model_dir, out: Path) -> dict | None:
    """The trained model on a real ECG: pydicom's 12-lead test recording (a normal resting ECG), its report beside
    the recording device's own statement, and the beat-attention picture."""
    import json

    import numpy as np

    from .inference import generate
    from .inference.export import load_model
    from .plots import plot_attention

    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file("waveform_ecg.dcm")
    except Exception:  # noqa: BLE001  (pydicom missing or its test data not installed: nothing to show)
        path = None
    if not path:
        print("\n(pydicom's real test ECG waveform_ecg.dcm is not available here: the real-ECG example is skipped)")
        return None
    model = load_model(model_dir) if isinstance(model_dir, (str, Path)) else model_dir
    batch = generate.load_ecg(path, model)
    report = generate.generate_report(model, batch, "beam", beam_width=4)
    rp = np.asarray(batch["r_peaks"])
    rate = generate.rate_bpm(rp)
    device = batch["meta"].get("report") or ""
    english = ". ".join(DEVICE_STATEMENT_EN.get(x.strip(), x.strip()) for x in device.rstrip(".").split(".") if x.strip())
    sentences, w, kind, note = generate.attention_for_picture(model, batch, report)
    d = out / "real_ecg"
    d.mkdir(parents=True, exist_ok=True)
    png = plot_attention(batch["raw"], generate.FS, batch["spans"], rp, sentences, w, d / "attention.png",
                         title=f"{Path(path).name} (real ECG): model says \"{report}\"; device says \"{device}\"",
                         kind=kind, note=note)
    res = {"ecg": str(path), "n_beats": int(len(rp)), "rate_bpm_from_beats": round(rate, 1),
           "device_statement": device, "model_report": report, "attention": {"kind": kind, "note": note}}
    (d / "report.json").write_text(json.dumps(res, indent=2))
    print(f"\nA real ECG: pydicom's 12-lead test recording {Path(path).name} (10 s; {len(rp)} beats detected, "
          f"{rate:.0f} bpm from the detected beats)")
    print(f"  the recording device says:  {device}" + (f"  ({english}.)" if english and english != device.rstrip('.') else ""))
    print(f"  the trained model says:     {report}")
    print(f"  beat-attention picture:     {png}" + ("  (attention flat: similarity view drawn)" if note else ""))
    print("  A model trained for minutes on synthetic ECGs is a demonstration of the engine, not a clinical tool: "
          "never use what it says about a real patient.")
    return res
