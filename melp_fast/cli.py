"""The `melp-fast` command: it parses and dispatches, nothing more.

    melp-fast demo                 generate the embedded corpus, zero-shot the untrained tiny model, train it,
                                   zero-shot it again, print both side by side (README command one; demo.py)
    melp-fast train ...            MELP pretraining in this process (the same flags as melp_fast/train.py)
    melp-fast pretrain-text ...    stage one: continued MLM pretraining of the text encoder (melp_fast/text_pretrain.py)
    melp-fast preprocess ...       build a store from a dataset (melp_fast/data/preprocess.py)
    melp-fast evaluate ...         zero-shot and linear probing on downstream tasks (melp_fast/eval/zero_shot.py)
    melp-fast zero-shot --model DIR --data STORE [--prompts FILE.json]   (melp_fast/eval/quick.py)
    melp-fast generate ...         report generation for one ECG file (melp_fast/inference/generate.py)
    melp-fast launch deepspeed|torchrun ...   a multi-process run whose launcher passes SIGTERM to every rank and
                                   exits 128 + signal after their checkpoints (melp_fast/training/launch.py)

`melp-fast COMMAND --help` shows a command's flags. One vocabulary across commands (melp_fast/options.py): --data
what a command reads (a store or 'synthetic'), --model an exported model folder, --out what it writes, --config /
--preset / --set the recipe, --ds-config the DeepSpeed JSON, --debug a traceback instead of one line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .options import COMMANDS, parse


def main(argv=None) -> int:
    """The console entry point: _main under the one error policy (melp_fast/errors.py: a user error is one line
    and exit 2; --debug or MELP_DEBUG=1 shows the traceback)."""
    from .errors import run_main

    return run_main(_main, argv)


def top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="melp-fast", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of a failure (also MELP_DEBUG=1); without it a mistake is one line, exit 2")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, (_, helptext, _) in COMMANDS.items():
        sub.add_parser(name, help=helptext, add_help=False)
    return p


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] not in COMMANDS:
        top_parser().parse_args(argv)  # --help, or the usage and exit 2
        return 2
    name, rest = argv[0], argv[1:]
    module, _, parser = COMMANDS[name]
    if parser is not None:
        args = parse(name, rest)  # --help and argparse's errors answered here, before anything heavy is imported
        if name in ("demo", "zero-shot"):  # their parsing is this one; the module runs the parsed arguments
            return importlib.import_module(module).run(args)
    return importlib.import_module(module).main(rest)


if __name__ == "__main__":
    sys.exit(main())
