"""Every command's options, in one vocabulary, built without importing torch (`--help` answers at once).

The same name means the same thing in every subcommand:

    --data       what a command reads: a preprocessed store, or 'synthetic' (the embedded corpus);
                 pretrain-text also takes a text file of reports (old names: --store, --reports)
    --model      an exported model folder (DIR/model of a training run; old name: --ckpt)
    --out        the folder a command writes
    --config     a recipe file (JSON or YAML; a run folder's config.json re-runs it), --preset NAME the recipe file
                 configs/presets/NAME.json, --set SECTION.FIELD=VALUE any field on top
    --ds-config  the DeepSpeed JSON (--ds_config, the DeepSpeed launcher's spelling, is the same flag)
    --debug      a failure shows its traceback (also MELP_DEBUG=1); without it a mistake is one line and exit 2

The scripts (train.py, text_pretrain.py), the wings' entry points and cli.py all parse with these parsers; a
parser's description is its module's docstring, read from the source file (the module is not imported).
"""

from __future__ import annotations

import argparse
import ast
import os
from pathlib import Path

from .config import LOSS_IMPLS, PRESETS

HERE = Path(__file__).resolve().parent

# choices named here so that no heavy module is imported to build a parser (tests/test_cli.py: equal to the modules')
SOURCES = ("mimic-iv-ecg", "ptbxl", "cpsc2018", "csn", "wfdb-dir")  # data/sources SOURCES
PREPROCESS_PROTOCOLS = ("default", "melp")  # data/preprocess.py PROTOCOL_WINDOWS
SHARD_SIZE = 4096  # data/store.py SHARD_SIZE
EVAL_PROTOCOLS = ("default", "melp")  # eval/tasks.py PROTOCOLS
SCORINGS = ("reference", "per-class")  # eval/metrics.py SCORINGS

# flag: (config key, help); every key also takes --set, and a flag wins over --set of the same key
TRAIN_FLAGS = {
    "--data": ("data.source", "a preprocessed store, or 'synthetic' (the embedded corpus, the default)"),
    "--out": ("train.out_dir", "the run folder (default: the recipe's)"),
    "--steps": ("train.steps", "optimiser steps"),
    "--batch-size": ("train.batch_size", "per process"),
    "--loss-impl": ("loss.impl", "auto (the Triton kernels on CUDA, PyTorch blocks elsewhere) | fused (the kernels or "
                                 "an error) | reference (the literal formulas)"),
    "--text-encoder": ("model.text_encoder", "minilm | Hugging Face name or path | random:<size>"),
}
TEXT_FLAGS = {
    "--data": ("data.reports", "'synthetic' (the embedded corpus), a store directory, or a text file with one "
                               "report a line"),
    "--n-synthetic": ("data.n_synthetic", "reports of the synthetic train split"),
    "--init": ("model.init", "minilm | Hugging Face name or path | random:<size>"),
    "--out": ("train.out_dir", "output directory (the adapted encoder, checkpoints, logs)"),
    "--steps": ("train.steps", "optimiser steps"),
    "--batch-size": ("train.batch_size", "per process"),
    "--lr": ("train.lr", "peak learning rate"),
    "--weight-decay": ("train.weight_decay", "AdamW weight decay"),
    "--warmup-steps": ("train.warmup_steps", "default: 6%% of the steps"),
    "--max-len": ("data.max_len", "tokens per report (longer ones are truncated)"),
    "--mlm-probability": ("data.mlm_probability", "share of tokens masked"),
    "--min-count": ("vocab.min_count", "vocabulary growth: minimum word frequency"),
    "--min-pieces": ("vocab.min_pieces", "vocabulary growth: minimum word pieces of a word"),
    "--max-new-tokens": ("vocab.max_new_tokens", "vocabulary growth: at most this many (0: none)"),
    "--heldout": ("data.heldout", "fraction of reports held out for the intrinsic check"),
    "--max-heldout": ("data.max_heldout", "at most this many held-out reports"),
    "--probe-steps": ("train.probe_steps", "baseline: fit the MLM head alone (encoder frozen) for N steps; 0: none"),
    "--save-every": ("train.save_every", "checkpoint every N steps (0: only at the end)"),
    "--keep-checkpoints": ("train.keep_checkpoints", "most recent checkpoints kept (0: all)"),
    "--seed": ("train.seed", "seed of the held-out slice, data order, masking and dropout"),
}
OLD_NAMES = {"--data": ("--store", "--reports"), "--model": ("--ckpt",), "--ds-config": ("--ds_config",)}


def module_doc(relpath: str) -> str:
    """The docstring of a module of this package, read from its source without importing it."""
    return ast.get_docstring(ast.parse((HERE / relpath).read_text(encoding="utf-8"))) or ""


def new_parser(command: str, doc_of: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"melp-fast {command}", description=module_doc(doc_of) if doc_of else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of a failure (also MELP_DEBUG=1); without it a mistake is one line, exit 2")
    return p


def _names(flag: str, old: tuple[str, ...] = ()) -> list[str]:
    return [flag, *(o for o in OLD_NAMES.get(flag, ()) if o in old)]


def _old(flag: str, old: tuple[str, ...]) -> str:
    shown = [o for o in OLD_NAMES.get(flag, ()) if o in old]
    return f" (also {', '.join(shown)}, the old name)" if shown else ""


def add_config_flags(p, flags: dict[str, tuple[str, str]], old: tuple[str, ...] = ()) -> None:
    """Flags that stand for config keys: dest is the key ("train.steps"), default None (the recipe's value)."""
    for flag, (key, helptext) in flags.items():
        p.add_argument(*_names(flag, old), dest=key, default=None, metavar=key.split(".")[1].upper(),
                       help=f"{helptext} ({key}){_old(flag, old)}")


def add_recipe(p, presets: bool) -> None:
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a recipe: JSON or YAML of sections and fields (a run folder's config.json runs it again; "
                        "fields it leaves out take their defaults)")
    if presets:
        p.add_argument("--preset", default=None, metavar="NAME",
                       help=f"a named recipe file, configs/presets/NAME.json: {' | '.join(PRESETS)} (default: tiny "
                            f"when no --config is given)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field on top of the recipe, e.g. --set train.steps=100 (repeatable)")


def add_ds_config(p) -> None:
    p.add_argument("--ds-config", "--ds_config", dest="ds_config", default=None, metavar="FILE",
                   help="DeepSpeed JSON config: precision and ZeRO stage (default: ZeRO-0, fp32; --ds_config is the "
                        "same flag)")


def add_run_flags(p, what: str) -> None:
    add_ds_config(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in --out")
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace the {what} already in --out (its checkpoints, history and weights are removed first)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    # the DeepSpeed launcher passes --local_rank=N; the rank comes from the environment
    p.add_argument("--local_rank", "--local-rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)),
                   help=argparse.SUPPRESS)


def add_model(p, repeat: bool = False) -> None:
    p.add_argument("--model", "--ckpt", dest="model", required=True, metavar="DIR", action="append" if repeat else None,
                   help="an exported model folder (a training run's DIR/model)"
                        + (" (repeatable: one row per model)" if repeat else "") + "; --ckpt is the old name")


def add_device(p) -> None:
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


# ------------------------------------------------------------------------------------------------- the commands
def train_parser() -> argparse.ArgumentParser:
    p = new_parser("train", "train.py")
    add_recipe(p, presets=True)
    add_config_flags(p, TRAIN_FLAGS)
    add_run_flags(p, "run")
    return p


def pretrain_text_parser() -> argparse.ArgumentParser:
    p = new_parser("pretrain-text", "text_pretrain.py")
    add_recipe(p, presets=False)
    add_config_flags(p, TEXT_FLAGS, old=("--reports",))
    add_run_flags(p, "encoder")
    return p


def preprocess_parser() -> argparse.ArgumentParser:
    p = new_parser("preprocess", "data/preprocess.py")
    p.add_argument("--source", required=True, choices=SOURCES, help="the dataset's layout")
    p.add_argument("--root", required=True, help="the dataset's top directory")
    p.add_argument("--out", required=True, help="the store directory to create (or resume)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="reader processes (default: the CPUs less one)")
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="listing entries per shard")
    p.add_argument("--limit", type=int, default=0, help="only the first N listing entries (0: all)")
    p.add_argument("--task", default=None, help="default label task (default: the source's)")
    p.add_argument("--nan", choices=["drop", "repair"], default="drop",
                   help="records holding NaN/Inf: drop (spec) or repair by linear interpolation per lead")
    p.add_argument("--max-beats", type=int, default=32, help="beat slots kept per record")
    p.add_argument("--highpass-hz", type=float, default=None, help="default 4 (0 under --protocol melp)")
    p.add_argument("--protocol", choices=PREPROCESS_PROTOCOLS, default="default",
                   help="melp: no high-pass, CPSC2018 first 5 s zero-padded (the MELP reference's downstream reading)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def evaluate_parser() -> argparse.ArgumentParser:
    p = new_parser("evaluate", "eval/zero_shot.py")
    add_model(p, repeat=True)
    p.add_argument("--data", "--store", dest="data", action="append", required=True, metavar="PATH",
                   help="a preprocessed store, or 'synthetic' for the embedded corpus (repeatable; each task runs on "
                        "the store whose source holds it); --store is the old name")
    p.add_argument("--task", action="append", default=None,
                   help="task to evaluate (repeatable; 'all' = every task of every store; default: each store's own)")
    p.add_argument("--protocol", choices=EVAL_PROTOCOLS, default="default",
                   help="melp: the MELP reference's splits, labels, preprocessing, prompts and probe (see above)")
    p.add_argument("--splits", "--split-dir", dest="splits", default=None, metavar="DIR",
                   help="split files: a copy of the MELP reference's data_split, or <task>_train.csv / _test.csv")
    p.add_argument("--untrained", action="store_true",
                   help="also evaluate the untrained model (the first --model's config, its training seed)")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="prompt JSON ({class: text}, e.g. the reference's CKEPE_prompt.json; or {task: {class: "
                        "text}}) or directory of <task>.json (default: shipped; required under --protocol melp)")
    p.add_argument("--scoring", choices=(*SCORINGS, "both"), default=None,
                   help="linear-probe AUROC: reference = the MELP reference's softmax-then-torchmetrics macro AUROC "
                        "(--protocol melp only), per-class = ours, both (default under --protocol melp; the "
                        "default protocol scores per class)")
    p.add_argument("--fractions", default="0.01,0.1,1.0", help="linear-probe training fractions")
    p.add_argument("--epochs", type=int, default=100, help="linear-probe epochs (melp: the most epochs)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    p.add_argument("--seed", type=int, default=42, help="seed of the bootstrap, the probe subsets and the untrained model")
    p.add_argument("--n-test", type=int, default=600, help="synthetic: held-out test records")
    p.add_argument("--n-train", type=int, default=3000, help="synthetic: training records for probing")
    p.add_argument("--data-dir", default="runs/data", help="synthetic: where its stores are built / reused")
    p.add_argument("--batch-size", type=int, default=64, help="records per forward pass")
    add_device(p)
    p.add_argument("--out", default="runs/eval", help="output directory (results.json, results.md, roc_*.png)")
    p.add_argument("--no-plots", action="store_true", help="no ROC pictures")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="name every listed record missing from a store")
    return p


def generate_parser() -> argparse.ArgumentParser:
    p = new_parser("generate", "inference/generate.py")
    add_model(p)
    p.add_argument("--ecg", required=True,
                   help="a WFDB header (.hea), a DICOM ECG (.dcm) or a GE MUSE / Philips XML ECG (.xml); "
                        "'example': pydicom's real 12-lead ECG")
    p.add_argument("--beam-width", type=int, default=4, help="beam width of beam search (1: greedy only)")
    p.add_argument("--max-len", type=int, default=None, help="maximum generated tokens (default: the model's)")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam search ranks by summed log-probability / length ** this")
    p.add_argument("--report", default=None,
                   help="draw the attention of this report's sentences (default: the beam-search report)")
    p.add_argument("--attention", choices=["local", "similarity"], default="local",
                   help="local: A2 of the local loss (default); similarity: softmax over beats of t1 * cosine")
    p.add_argument("--out", default=None, help="output directory (default: runs/generate/<record>)")
    p.add_argument("--raw", action="store_true",
                   help="also print the model's raw text (the report printed has its stated rate set to the rate "
                        "measured from the detected beats; report.json holds both)")
    add_device(p)
    return p


def zero_shot_parser() -> argparse.ArgumentParser:
    p = new_parser("zero-shot", "eval/quick.py")
    add_model(p)
    p.add_argument("--data", "--store", dest="data", required=True, metavar="STORE",
                   help="a labelled store (e.g. the demo's synthetic test store); --store is the old name")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="JSON file {class: prompt} (default: melp_fast/eval/prompts/synthetic.json)")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the scores to this JSON file")
    return p


def demo_parser() -> argparse.ArgumentParser:
    p = new_parser("demo", "demo.py")
    p.add_argument("--out", default="runs/tiny", help="the run folder (a previous demo's run there is replaced)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the tiny preset's)")
    p.add_argument("--n-test", type=int, default=600, help="held-out synthetic records scored zero-shot")
    p.add_argument("--seed", type=int, default=None,
                   help="train.seed of the run: model initialisation and data order (default: the tiny preset's)")
    p.add_argument("--loss-impl", choices=LOSS_IMPLS, default="auto",
                   help="auto: the Triton kernels on CUDA, PyTorch blocks elsewhere; fused: the kernels or an error")
    add_ds_config(p)
    return p


# subcommand -> (module whose main(argv) runs it, one line of help, its parser); `launch` passes its arguments on
# to the launcher unparsed (melp_fast/training/launch.py answers --help itself, before importing anything heavy)
COMMANDS = {
    "demo": ("melp_fast.demo", "train the tiny preset on the embedded corpus and compare zero-shot AUROC", demo_parser),
    "train": ("melp_fast.train", "MELP pretraining in this process (the same flags as melp_fast/train.py)",
              train_parser),
    "pretrain-text": ("melp_fast.text_pretrain", "continued MLM pretraining of the text encoder (MELP stage one)",
                      pretrain_text_parser),
    "preprocess": ("melp_fast.data.preprocess", "build a preprocessed store from a dataset", preprocess_parser),
    "evaluate": ("melp_fast.eval.zero_shot", "zero-shot and linear-probe AUROC on downstream tasks", evaluate_parser),
    "zero-shot": ("melp_fast.eval.quick", "zero-shot AUROC of an exported model on one store", zero_shot_parser),
    "generate": ("melp_fast.inference.generate", "a report for one ECG file from the captioning decoder, with pictures",
                 generate_parser),
    "launch": ("melp_fast.training.launch",
               "deepspeed / torchrun under a wrapper that passes SIGTERM / SIGINT to every rank", None),
}


def parse(command: str, argv=None) -> argparse.Namespace:
    """argv parsed by `command`'s parser (a --debug left in argv is accepted; run_main has acted on it)."""
    return COMMANDS[command][2]().parse_args(argv)
