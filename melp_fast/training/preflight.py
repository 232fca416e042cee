"""The training scripts' preflight: everything train.py and text_pretrain.py can check before they start.

The option and file checks themselves are checks.py; here they are put together with the run folder's checks
(run_dir.py: --resume / --overwrite, a folder that already holds a run) and, for train.py, the downstream stores
validated on during training (eval/validation.py).
"""

from __future__ import annotations

from pathlib import Path

from ..checks import check_config, check_ds_config, check_store_dir, check_text_config, check_text_encoder, \
    check_writable, read_ds_json, text_encoder_config
from ..errors import UserError
from .run_dir import TEXT_EVIDENCE, check_resume, check_run_dir


def preflight_train(cfg, args, flags=None) -> None:
    """Everything train.py can check before it starts (every rank runs it: it only reads, and a probe file)."""
    check_config(cfg, flags)
    check_ds_config(getattr(args, "ds_config", None))
    if getattr(args, "ds_config", None):  # the JSON's accumulation must be train.accum_steps (engine.load_ds_config)
        given = read_ds_json(args.ds_config).get("gradient_accumulation_steps", cfg.train.accum_steps)
        if given != cfg.train.accum_steps:
            raise UserError(f"--ds_config {args.ds_config}: gradient_accumulation_steps is {given}, but "
                            f"train.accum_steps is {cfg.train.accum_steps}; set the accumulation with --set "
                            f"train.accum_steps=N and remove gradient_accumulation_steps from the file")
    check_text_encoder(cfg, flags)
    if cfg.data.source != "synthetic":
        check_store_dir(cfg.data.source, "--data")
    check_writable(cfg.train.out_dir, "--out")
    _check_run_dir(cfg.train.out_dir, args)
    if cfg.train.downstream:  # a store that cannot be validated on fails now, not at the first evaluation step
        from ..eval.tasks import EvalError
        from ..eval.validation import check_downstream

        try:
            check_downstream(cfg.train.downstream)
        except (EvalError, OSError, ValueError) as e:
            raise UserError(str(e)) from None


def _check_run_dir(out, args, **kw) -> None:
    resume, overwrite = bool(getattr(args, "resume", False)), bool(getattr(args, "overwrite", False))
    if resume:  # the pointer alone (the engine validates the checkpoint it names when it loads it)
        if overwrite:
            raise UserError("--resume and --overwrite contradict each other: choose one")
        check_resume(Path(out) / "checkpoints", True)
        return
    check_run_dir(out, resume=False, overwrite=overwrite, **kw)


def preflight_text(cfg, args, flags=None) -> None:
    """Everything text_pretrain.py can check before it starts."""
    check_text_config(cfg, flags)
    check_ds_config(getattr(args, "ds_config", None))
    init, out = cfg.model.init, Path(cfg.train.out_dir)
    same = out.exists() and Path(init).exists() and Path(init).resolve() == out.resolve()
    if not same:  # --init DIR == --out DIR continues an earlier run's encoder, which --overwrite would remove
        text_encoder_config(init, "--init")
    check_writable(out, "--out")
    _check_run_dir(out, args, evidence=TEXT_EVIDENCE)
