"""Zero-shot prompts: the text of each class, read from JSON, and its normalised text embedding.

Accepted files: a flat JSON {class name: prompt or [prompts]} (the MELP reference's ``CKEPE_prompt.json`` is one:
its keys are the reference's class names, matched to ours through ``tasks.reference_name``: ``ISC_`` takes the
text of ``ISC``, CPSC2018's ``AF`` that of ``AFIB``); a JSON {task: {class: prompt}}; or a directory of
``<task>.json``. The shipped files (``melp_fast/eval/prompts/<task>.json``) use our class names; "_comment" keys are
documentation. ``lower=True`` lower-cases every prompt, as the reference does before tokenising.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data import tasks as tasklib
from ..errors import UserError

PROMPT_DIR = Path(__file__).parent / "prompts"


class PromptError(UserError, ValueError):
    """A prompt file that cannot be used (malformed, or a class without a prompt)."""


def prompt_path(task: str) -> Path:
    return PROMPT_DIR / f"{task}.json"


def prompt_tasks() -> list[str]:
    """Tasks with a shipped prompt file."""
    return sorted(p.stem for p in PROMPT_DIR.glob("*.json"))


def _read_json(f: Path) -> dict:
    try:
        d = json.loads(Path(f).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PromptError(f"prompt file {f} is not readable JSON ({e})") from None
    if not isinstance(d, dict):
        raise PromptError(f"prompt file {f} must hold a JSON object {{class name: prompt}}, not {type(d).__name__}")
    return {k: v for k, v in d.items() if not str(k).startswith("_comment")}  # "_comment" keys are documentation


def _check(d: dict, f) -> dict:
    for k, v in d.items():
        ok = isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v))
        if not ok:
            raise PromptError(f"prompt file {f}: the prompt of {k!r} must be a string or a list of strings")
    return d


def load_prompts(task: str, override: str | Path | None = None) -> dict[str, str | list[str]]:
    """{class: prompt or [prompts]} of a task as written in its file: the shipped ``prompts/<task>.json``, or
    ``override`` (a directory holding ``<task>.json``, a JSON file {class: prompt}, or {task: {class: prompt}})."""
    if override is not None:
        o = Path(override)
        if o.is_dir():
            f = o / f"{task}.json"
            if f.is_file():
                return _check(_read_json(f), f)
        elif o.is_file():
            d = _read_json(o)
            if isinstance(d.get(task), dict):
                return _check(d[task], o)
            if all(isinstance(v, (str, list)) for v in d.values()):
                return _check(d, o)
            raise PromptError(f"prompt file {o} has no prompts for task {task!r} (neither {{class: prompt}} nor "
                              f"{{task: {{class: prompt}}}})")
        else:
            raise PromptError(f"prompt file or directory {o} does not exist")
    f = prompt_path(task)
    if not f.is_file():
        raise PromptError(f"no prompt file for task {task!r} ({f}); pass --prompts FILE.json")
    return _check(_read_json(f), f)


def task_prompts(task: str, classes: list[str], override=None, lower: bool = False) -> dict[str, str | list[str]]:
    """{our class: prompt(s)} for every class of ``task``: each class takes the prompt of its reference name
    (``tasks.reference_name``) when the file has one, else of its own name. A class with neither is an error that
    names it (and the file)."""
    d = load_prompts(task, override)
    out, missing = {}, []
    for c in classes:
        key = next((k for k in (tasklib.reference_name(task, c), c) if d.get(k)), None)
        if key is None:
            missing.append(c)
            continue
        p = d[key]
        out[c] = ([x.lower() for x in p] if isinstance(p, list) else p.lower()) if lower else p
    if missing:
        where = override if override is not None else prompt_path(task)
        raise PromptError(f"prompt file {where} has no prompt for class(es) {', '.join(missing)} of task {task}")
    return out


PROMPT_MAX_SENTENCES = 64


@torch.no_grad()
def encode_untruncated(model, texts: list[str], names: list[str] | None = None) -> torch.Tensor:
    """Text embeddings [N, d] of prompts, none of them truncated: the model's report tokenizer with its token limit
    raised to the longest prompt (``model.cfg.max_text_len`` caps reports, e.g. 64 tokens in the tiny preset, which
    would cut seven CKEPE prompts; the reference tokenises prompts up to 128) and up to
    ``PROMPT_MAX_SENTENCES`` sentences. Only where a prompt exceeds the text encoder's position limit is it cut,
    with a one-line warning naming its class (``names``). Models without a report text encoder use their own
    ``encode_prompts``."""
    import warnings

    text = getattr(model, "text", None)
    tok = getattr(text, "tokenizer", None)
    if tok is None or not hasattr(model, "encode_text"):
        return model.encode_prompts(texts)
    from ..data.reports import split_sentences
    from ..data.tokenize import ReportTokenizer

    base = ReportTokenizer(tok, 4, PROMPT_MAX_SENTENCES)
    sentences = [base.sentences(t) for t in texts]
    pieces = base.pieces([x for sents in sentences for x in sents])
    need, i = [], 0
    for sents in sentences:
        need.append(3 + sum(len(p) for p in pieces[i:i + len(sents)]))
        i += len(sents)
    limit = int(getattr(getattr(getattr(text, "backbone", None), "config", None), "max_position_embeddings", 512))
    max_len = min(max([int(model.cfg.max_text_len), *need]), limit)
    names = names or [str(t)[:30] for t in texts]
    for n, nm, t in zip(need, names, texts):
        if n > max_len:
            warnings.warn(f"the prompt of class {nm} has {n} tokens; the text encoder takes {limit}: truncated",
                          stacklevel=2)
    for nm, t in zip(names, texts):
        if len(split_sentences(t)) > PROMPT_MAX_SENTENCES:
            warnings.warn(f"the prompt of class {nm} has more than {PROMPT_MAX_SENTENCES} sentences: truncated",
                          stacklevel=2)
    device = model.logit_scale.device
    batch = ReportTokenizer(tok, max_len, PROMPT_MAX_SENTENCES)(texts)
    return model.encode_text(**{k: v.to(device) for k, v in batch.items()})["text"]


@torch.no_grad()
def prompt_embeddings(model, prompts: dict, classes: list[str]) -> np.ndarray:
    """[C, d] normalised text embedding of each class (the mean of its prompts' embeddings, renormalised)."""
    missing = [c for c in classes if c not in prompts or not prompts[c]]
    if missing:
        raise PromptError(f"no prompt for classes {missing}")
    texts, owner = [], []
    for k, c in enumerate(classes):
        ps = prompts[c] if isinstance(prompts[c], list) else [prompts[c]]
        texts += [str(p) for p in ps]
        owner += [k] * len(ps)
    emb = encode_untruncated(model, texts, [classes[k] for k in owner]).float().cpu()
    out = torch.zeros(len(classes), emb.shape[1])
    out.index_add_(0, torch.tensor(owner), emb)
    return torch.nn.functional.normalize(out, dim=-1).numpy()
