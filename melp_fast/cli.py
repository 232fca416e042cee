"""The `melp-fast` command.

    melp-fast demo                 generate the embedded corpus, zero-shot the untrained tiny model, train it,
                                   zero-shot it again, print both side by side (README command one)
    melp-fast zero-shot --model DIR --store DIR [--prompts FILE.json]
    melp-fast train ...            the training script in this process (same flags as melp_fast/train.py)
    melp-fast preprocess ...       build a store from a dataset (melp_fast/data/preprocess.py)
    melp-fast pretrain-text ...    stage one: continued MLM pretraining of the text encoder (melp_fast/text_pretrain.py)
    melp-fast evaluate ...         zero-shot and linear probing on downstream tasks (melp_fast/eval/zero_shot.py)
    melp-fast generate ...         report generation for one ECG file (melp_fast/inference/generate.py)
    melp-fast launch deepspeed|torchrun ...   a multi-process run whose launcher passes SIGTERM to every rank and
                                   exits 128 + signal after their checkpoints (melp_fast/training/launch.py)
Subcommands that own their flags live in their modules as main(argv); `melp-fast SUBCOMMAND --help` shows them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .config import LOSS_IMPLS


def _demo(args) -> int:
    from . import train as train_mod
    from .config import get_preset
    from .data import synthetic
    from .data.store import build_synthetic_store
    from .eval.zero_shot import comparison_table, save_json, zero_shot
    from .inference.export import load_model, untrained_model

    from .checks import check_demo_args

    check_demo_args(args)  # --steps, --n-test, --loss-impl, --ds_config, a writable --out: before any work
    t0 = time.perf_counter()
    cfg = get_preset("tiny")
    out = Path(args.out)
    steps = args.steps or cfg.train.steps
    test = build_synthetic_store(out.parent / "data" / f"synthetic-test-{args.n_test}-seed{cfg.data.seed}", "test",
                                 args.n_test, cfg.data.seed, cfg.data.highpass_hz, cfg.model.max_beats)
    before = zero_shot(untrained_model(cfg, cfg.train.seed), test, synthetic.PROMPTS)
    train_argv = ["--preset", "tiny", "--out", str(out), "--steps", str(steps), "--loss-impl", args.loss_impl]
    train_argv += _demo_folder(out)  # issue 14 hook: the demo replaces only its own folder, and says so
    if args.ds_config:
        train_argv += ["--ds_config", args.ds_config]
    result = train_mod.main(train_argv)
    after = zero_shot(load_model(result["export"]), test, synthetic.PROMPTS)
    results = {"untrained": before, "trained": after}
    table = comparison_table(results, synthetic.CLASS_NAMES)
    save_json({**results, "steps": steps, "n_test": args.n_test, "minutes": (time.perf_counter() - t0) / 60},
              out / "zero_shot.json")
    (out / "zero_shot.md").write_text(table + "\n")
    print(f"\nZero-shot AUROC on {args.n_test} held-out synthetic ECGs (tiny preset, {steps} steps):\n")
    print(table)
    _real_ecg(result["export"], out)
    print(f"\nwritten: {out / 'zero_shot.json'}, model: {result['export']}  ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


def _demo_folder(out: Path) -> list[str]:
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


def _real_ecg(model_dir, out: Path) -> dict | None:
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


def _zero_shot(args) -> int:
    from .data.store import Store
    from .eval.zero_shot import comparison_table, load_prompts, save_json, zero_shot
    from .inference.export import load_model

    from .errors import UserError

    from .checks import check_writable

    if args.out:
        check_writable(Path(args.out).parent, "--out")
    model = load_model(args.model)
    try:
        store = Store(args.store)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--store: {e}") from None
    if store.labels is None or not store.classes:
        raise UserError(f"--store {args.store} has no labels (no default task): zero-shot AUROC needs labelled "
                        f"records; build the store from a labelled source or give --task to melp-fast evaluate")
    res = zero_shot(model, store, load_prompts("synthetic", args.prompts))
    print(comparison_table({"model": res}))
    if args.out:
        save_json(res, args.out)
    return 0


# subcommand -> module whose main(argv) takes the remaining arguments
MODULE_COMMANDS = {
    "train": ("melp_fast.train", "the training script in this process (same flags as melp_fast/train.py)"),
    "preprocess": ("melp_fast.data.preprocess", "build a preprocessed store from a dataset"),
    "pretrain-text": ("melp_fast.text_pretrain", "continued MLM pretraining of the text encoder (MELP stage one)"),
    "evaluate": ("melp_fast.eval.zero_shot", "zero-shot and linear-probe AUROC on downstream tasks"),
    "generate": ("melp_fast.inference.generate", "a report for one ECG file from the captioning decoder, with pictures"),
    "launch": ("melp_fast.training.launch", "deepspeed / torchrun under a wrapper that passes SIGTERM / SIGINT to every rank"),
}


def main(argv=None) -> int:
    """The console entry point: _main under the one error policy (melp_fast/errors.py: a user error is one line
    and exit 2; --debug or MELP_DEBUG=1 shows the traceback)."""
    from .errors import run_main

    return run_main(_main, argv)


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    p = argparse.ArgumentParser(prog="melp-fast", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="train the tiny preset on the embedded corpus and compare zero-shot AUROC")
    d.add_argument("--out", default="runs/tiny")
    d.add_argument("--steps", type=int, default=None, help="training steps (default: the tiny preset's)")
    d.add_argument("--n-test", type=int, default=600)
    d.add_argument("--loss-impl", choices=LOSS_IMPLS, default="auto",
                   help="auto: the Triton kernels on CUDA, PyTorch blocks elsewhere; fused: the kernels or an error")
    d.add_argument("--ds_config", default=None)
    for name, (_, helptext) in MODULE_COMMANDS.items():
        sub.add_parser(name, help=helptext, add_help=False)
    z = sub.add_parser("zero-shot", help="zero-shot AUROC of an exported model on a store")
    z.add_argument("--model", required=True)
    z.add_argument("--store", required=True)
    z.add_argument("--prompts", default=None, help="JSON file {class: prompt} (default: melp_fast/eval/prompts/synthetic.json)")
    z.add_argument("--out", default=None)
    if argv and argv[0] in MODULE_COMMANDS:
        import importlib

        from .errors import run_main

        return run_main(importlib.import_module(MODULE_COMMANDS[argv[0]][0]).main, argv[1:])  # UserError: exit 2
    args = p.parse_args(argv)
    return {"demo": _demo, "zero-shot": _zero_shot}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
