"""`melp-fast zero-shot`: zero-shot AUROC of one exported model on one labelled store, with the synthetic corpus's
prompts (melp_fast/eval/prompts/synthetic.json) unless --prompts names others.

    melp-fast zero-shot --model runs/tiny/model --data runs/data/synthetic-test-600-seed0 [--out scores.json]

The table printed is the demo's: per-class and mean AUROC. `melp-fast evaluate` is the full evaluation (tasks,
protocols, linear probing, bootstrap intervals). The argument parsing is melp_fast/options.py's.
"""

from __future__ import annotations

from pathlib import Path

from ..checks import check_writable
from ..errors import UserError


def run(args) -> int:
    from ..data.store import Store
    from ..inference.export import load_model
    from .prompts import load_prompts
    from .tables import comparison_table, save_json
    from .zero_shot import zero_shot

    if args.out:
        check_writable(Path(args.out).parent, "--out")
    model = load_model(args.model)
    try:
        store = Store(args.data)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--data: {e}") from None
    if store.labels is None or not store.classes:
        raise UserError(f"--data {args.data} has no labels (no default task): zero-shot AUROC needs labelled "
                        f"records; build the store from a labelled source or give --task to melp-fast evaluate")
    res = zero_shot(model, store, load_prompts("synthetic", args.prompts))
    print(comparison_table({"model": res}))
    if args.out:
        save_json(res, args.out)
    return 0


def main(argv=None) -> int:
    from ..options import parse

    return run(parse("zero-shot", argv))
