"""The `melp-fast` command.

    melp-fast demo                 generate the embedded corpus, zero-shot the untrained tiny model, train it,
                                   zero-shot it again, print both side by side (README command one; demo.py)
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
from pathlib import Path

from .config import LOSS_IMPLS


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
    "generate": ("melp_fast.inference.generate",
                 "a report for one ECG file from the captioning decoder, with pictures"),
    "launch": ("melp_fast.training.launch",
               "deepspeed / torchrun under a wrapper that passes SIGTERM / SIGINT to every rank"),
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
    z.add_argument("--prompts", default=None,
                   help="JSON file {class: prompt} (default: melp_fast/eval/prompts/synthetic.json)")
    z.add_argument("--out", default=None)
    if argv and argv[0] in MODULE_COMMANDS:
        import importlib

        from .errors import run_main

        return run_main(importlib.import_module(MODULE_COMMANDS[argv[0]][0]).main, argv[1:])  # UserError: exit 2
    args = p.parse_args(argv)
    if args.cmd == "demo":
        from .demo import run

        return run(args)
    return _zero_shot(args)


if __name__ == "__main__":
    sys.exit(main())
