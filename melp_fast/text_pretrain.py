"""MELP stage one: adapt the text encoder to cardiology language by continued masked-language-model pretraining.

    melp-fast pretrain-text --data synthetic --init minilm --out runs/heart_minilm --steps 300
    melp-fast pretrain-text --data STORE_DIR --init bert-base-uncased --out DIR --ds-config configs/cpu_bf16.json
    melp-fast pretrain-text --data reports.txt --out DIR --resume          (continue from DIR/checkpoints)
    deepspeed melp_fast/text_pretrain.py --ds_config configs/cpu_fp32.json --data synthetic --out DIR
    melp-fast pretrain-text --data synthetic --out DIR --set train.lr=5e-5 --set vocab.min_count=10
    melp-fast pretrain-text --config DIR/pretrain_args.json --out DIR2      (a past run's recipe, run again)

Reads top to bottom: reports (the embedded synthetic corpus, a store's reports, or a text file with one report per
line) -> held-out slice -> starting model (AutoModelForMaskedLM) and tokenizer -> intrinsic check "before" ->
vocabulary growth (frequent words split into many word pieces; new rows = mean of the pieces) -> DeepSpeed engine
(melp_fast/training/engine.py: torch AdamW, warmup + cosine) -> loop (DataCollatorForLanguageModeling masking, forward,
backward, step, checkpoint) -> save the base encoder + tokenizer into --out -> intrinsic check "after".

The output directory loads as the text encoder of the main training (`--text-encoder DIR`): config.json and
model.safetensors of the BertModel (no pooler), the tokenizer, and beside them mlm_head.safetensors (the MLM head,
so `--init DIR` continues with it), new_words.json, intrinsic.json, history.jsonl and checkpoints/.
Masking, dropout and the data order are functions of (seed, data position), so `--resume` continues exactly.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script by the deepspeed launcher or torchrun
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist

from melp_fast.config import TextPretrainConfig, base_config, from_args
from melp_fast.errors import InputNotFound, UserError, run_main
from melp_fast.model.vocab import grow_vocabulary, select_new_words
from melp_fast.options import TEXT_FLAGS, parse
from melp_fast.training.engine import Trainer, check_batches, init_distributed, shutdown_distributed
from melp_fast.training.preflight import preflight_text
from melp_fast.training.run_dir import TEXT_EVIDENCE, TEXT_RUN_FILES, check_resume, prepare_run_dir

HEAD_FILE = "mlm_head.safetensors"

FLAGS = TEXT_FLAGS  # flag: (config key, help); every key also takes --set (melp_fast/options.py)


def parse_args(argv=None):
    return parse("pretrain-text", argv)


# ----------------------------------------------------------------------------------------------------------
# reports


def read_text_file(path) -> tuple[list[str], dict]:
    """One report a line, read as bytes; lines that are empty (after stripping) or not UTF-8 are skipped, counted,
    and their line numbers (1-based) kept in the stats."""
    reports, empty, bad = [], [], []
    with open(path, "rb") as f:
        if b"\0" in f.read(8192):
            raise UserError(f"--data {path} looks binary (it holds NUL bytes); give a text file with one report "
                            "a line, a store directory, or 'synthetic'")
        f.seek(0)
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(n)
                continue
            line = line.strip()
            if not line:
                empty.append(n)
                continue
            reports.append(line)
    return reports, {"lines": len(reports) + len(empty) + len(bad), "empty": len(empty), "not_utf8": len(bad),
                     "empty_lines": empty[:100], "not_utf8_lines": bad[:100]}


def read_reports(source: str, n_synthetic: int = 4000, seed: int = 0) -> tuple[list[str], dict]:
    """Reports of the embedded synthetic corpus ('synthetic'), of a store directory, or of a text file; a source
    without any report is a UserError."""
    reports, stats = _read_reports(source, n_synthetic, seed)
    if not reports:
        raise UserError(f"--data {source}: no report in it ({stats['lines']} lines: {stats['empty']} empty, "
                        f"{stats['not_utf8']} not UTF-8); give a text file with one report a line")
    return reports, stats


def _read_reports(source: str, n_synthetic: int, seed: int) -> tuple[list[str], dict]:
    if source == "synthetic":
        from melp_fast.data.synthetic import generate_split

        reports = [r.report for r in generate_split("train", n_synthetic, seed)]
        return reports, {"lines": len(reports), "empty": 0, "not_utf8": 0}
    path = Path(source)
    if path.is_dir():
        from melp_fast.data.store import Store

        texts = Store(path).reports
        reports = [t.strip() for t in texts if isinstance(t, str) and t.strip()]
        return reports, {"lines": len(texts), "empty": len(texts) - len(reports), "not_utf8": 0}
    if path.is_file():
        return read_text_file(path)
    raise InputNotFound(f"--data {source!r}: not 'synthetic', a store directory or a text file")


def split_heldout(reports: list[str], frac: float, max_n: int, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out): a seeded random slice of round(frac * n) reports (at least one when frac > 0)."""
    n = len(reports)
    k = min(max_n, max(1, round(frac * n))) if frac > 0 and n > 1 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    held = set(perm[:k])
    return [r for i, r in enumerate(reports) if i not in held], [reports[i] for i in sorted(held)]


# ----------------------------------------------------------------------------------------------------------
# model


def load_mlm(init: str):
    """(BertForMaskedLM-like model, tokenizer, names of the weights newly initialised)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM
    from transformers.utils import logging as hf_logging

    from melp_fast.model.text import RANDOM_BERT_SIZES, load_tokenizer, minilm_path

    hf_logging.set_verbosity_error()
    if init.startswith("random:"):
        size = init.split(":", 1)[1]
        if size not in RANDOM_BERT_SIZES:
            raise ValueError(f"unknown random BERT size {size!r}; choose one of {sorted(RANDOM_BERT_SIZES)}")
        tokenizer = load_tokenizer(init)
        layers, hidden, heads, ffn = RANDOM_BERT_SIZES[size]
        cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=ffn)
        return BertForMaskedLM(cfg), tokenizer, ["all (random:%s)" % size]
    path = minilm_path() if init == "minilm" else init
    model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
    missing = sorted(info.get("missing_keys", []))
    head = Path(path) / HEAD_FILE
    if head.is_file():  # a directory written by this script: its MLM head sits beside the encoder
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(head)), strict=False)
        missing = [k for k in missing if not k.startswith("cls.")]
    model.config.is_decoder = False  # masked LM is bidirectional, whatever the checkpoint says
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.mask_token is None:
        raise ValueError(f"the tokenizer of {init!r} has no mask token; it cannot do masked-language modelling")
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise ValueError(f"{init!r}: tokenizer has {len(tokenizer)} tokens, the model "
                         f"{model.get_input_embeddings().weight.shape[0]} embeddings")
    return model, tokenizer, missing


def encode(reports: list[str], tokenizer, max_len: int) -> list[dict]:
    enc = tokenizer(reports, truncation=True, max_length=max_len, return_special_tokens_mask=True)
    return [{"input_ids": ids, "special_tokens_mask": sm}
            for ids, sm in zip(enc["input_ids"], enc["special_tokens_mask"])]


def make_collator(tokenizer, mlm_probability: float = 0.15):
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=True, mlm_probability=mlm_probability)


class MaskedLMLoss(torch.nn.Module):
    """The masked-LM loss with vocabulary logits at the masked positions only (a fraction of the tokens, and the
    vocabulary projection dominates a small encoder's cost); models without a separate head (`cls` or `lm_head`)
    fall back to their own full-logit loss."""

    def __init__(self, mlm):
        super().__init__()
        self.mlm = mlm
        self.head_name = next((n for n in ("cls", "lm_head") if isinstance(getattr(mlm, n, None), torch.nn.Module)), None)

    def forward(self, input_ids, attention_mask, labels, **extra):
        import torch.nn.functional as F

        if self.head_name is None:
            return self.mlm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **extra).loss
        base = getattr(self.mlm, self.mlm.base_model_prefix)
        states = base(input_ids=input_ids, attention_mask=attention_mask, **extra)[0]
        sel = labels != -100
        logits = getattr(self.mlm, self.head_name)(states[sel]).float()
        return F.cross_entropy(logits, labels[sel], reduction="sum") / sel.sum().clamp(min=1)


def fit_head(model, examples: list[dict], collate, steps: int, batch_size: int, lr: float = 1e-3, seed: int = 0):
    """A copy of `model` whose MLM head (not the tied word embeddings) is trained for `steps` steps with the
    encoder frozen: the starting encoder's best showing under the intrinsic check, without any adaptation."""
    import copy

    probe = copy.deepcopy(model).train()
    loss_fn = MaskedLMLoss(probe)
    if loss_fn.head_name is None:
        raise ValueError("--probe-steps needs a model with a separate MLM head (cls or lm_head)")
    base = getattr(probe, probe.base_model_prefix)
    for p in base.parameters():
        p.requires_grad_(False)
    params = [p for p in getattr(probe, loss_fn.head_name).parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            idx = torch.randint(len(examples), (batch_size,), generator=g).tolist()
            batch = collate([examples[i] for i in idx])
            loss = loss_fn(**batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return probe.eval()


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63 - 1)


@torch.no_grad()
def intrinsic(model, tokenizer, reports: list[str], *, max_len: int = 128, batch_size: int = 64, seed: int = 1234,
              mlm_probability: float = 0.15) -> dict:
    """Masked-token accuracy and perplexity (exp of the mean masked-token cross-entropy) on `reports`, masked with
    a fixed seed (the global RNG is left as it was)."""
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = make_collator(tokenizer, mlm_probability)
    examples = encode(reports, tokenizer, max_len)
    nll, correct, count = 0.0, 0, 0
    for b, i in enumerate(range(0, len(examples), batch_size)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + b)
            batch = collate(examples[i:i + batch_size])
        labels = batch.pop("labels").to(device)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        sel = labels != -100
        lg, lb = logits[sel].float(), labels[sel]
        nll += float(F.cross_entropy(lg, lb, reduction="sum"))
        correct += int((lg.argmax(-1) == lb).sum())
        count += int(sel.sum())
    model.train(was_training)
    loss = nll / max(count, 1)
    return {"accuracy": correct / max(count, 1), "perplexity": math.exp(min(loss, 700.0)), "loss": loss,
            "masked_tokens": count, "reports": len(reports), "vocab": len(tokenizer)}


ROW_NAMES = {"start": "start (as loaded)", "start+vocab": "start + new words",
             "head_fitted": "start + new words, MLM head fitted (encoder frozen)", "after": "after pretraining"}


def intrinsic_table(rows: dict) -> str:
    lines = ["| model | masked-token accuracy | perplexity | masked tokens | vocabulary |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {ROW_NAMES.get(name, name)} | {r['accuracy']:.4f} | {r['perplexity']:.2f} | {r['masked_tokens']} | {r['vocab']} |")
    return "\n".join(lines)


def epoch_batches(n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int) -> list[list[int]]:
    """This rank's batches of one epoch: a seeded permutation, split across ranks, incomplete batches dropped."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    per_rank = n // world
    mine = perm[: per_rank * world][rank::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine) - batch_size + 1, batch_size)]


def save_encoder(model, tokenizer, out: Path) -> None:
    """Write the base encoder (config.json + model.safetensors), the tokenizer and mlm_head.safetensors into out,
    through a temporary directory so no half-written file replaces a finished one."""
    from safetensors.torch import save_file

    tmp = out / ".export.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    base = getattr(model, model.base_model_prefix)
    base.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    head = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()
            if not k.startswith(model.base_model_prefix + ".") and "decoder.weight" not in k}
    save_file(head, str(tmp / HEAD_FILE))
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()


def reports_and_heldout(cfg, say) -> tuple[list[str], list[str], dict]:
    """(reports to train on, held-out reports, reading statistics)."""
    d = cfg.data
    reports, stats = read_reports(d.reports, d.n_synthetic, cfg.train.seed)
    train_reports, heldout = split_heldout(reports, d.heldout, d.max_heldout, cfg.train.seed)
    say(f"reports: {len(reports)} from {d.reports} (skipped {stats['empty']} empty, {stats['not_utf8']} not UTF-8); "
        f"{len(train_reports)} to train on, {len(heldout)} held out")
    if stats.get("not_utf8_lines"):
        say(f"  lines not UTF-8: {stats['not_utf8_lines'][:20]}")
    return train_reports, heldout, stats


def before_training(model, tokenizer, train_reports: list[str], heldout: list[str], cfg, resume: bool, rank: int,
                    say) -> tuple[list, dict]:
    """The intrinsic check of the starting model, vocabulary growth (new rows = mean of their pieces; a resumed run
    takes the words of new_words.json), the check again, and the head-fitted baseline (rank 0 checks; a resumed
    run keeps the figures of intrinsic.json). Returns (added words, results)."""
    out, seed = Path(cfg.train.out_dir), cfg.train.seed
    intrinsic_file, words_file = out / "intrinsic.json", out / "new_words.json"
    check = rank == 0 and bool(heldout)
    results = {}
    if resume and intrinsic_file.is_file():
        results = {k: v for k, v in json.loads(intrinsic_file.read_text()).items() if k != "after"}
    if check and "start" not in results:
        results["start"] = heldout_check(model, tokenizer, heldout, cfg)
    if resume and words_file.is_file():
        words = [w["word"] for w in json.loads(words_file.read_text())]
    else:
        v = cfg.vocab
        words = select_new_words(train_reports, tokenizer, v.min_count, v.min_pieces, v.max_new_tokens)
    added = grow_vocabulary(model, tokenizer, words)
    if added:
        say(f"vocabulary +{len(added)} words ({len(tokenizer)} tokens): "
            + ", ".join(f"{w} ({len(p)} pieces)" for w, _, p in added))
        if check and "start+vocab" not in results:
            results["start+vocab"] = heldout_check(model, tokenizer, heldout, cfg)
    else:
        say("vocabulary: no word qualifies (frequency >= %d, >= %d pieces)" % (cfg.vocab.min_count, cfg.vocab.min_pieces))
    steps = cfg.train.probe_steps
    if check and steps > 0 and "head_fitted" not in results:
        t = time.perf_counter()
        examples = encode(train_reports, tokenizer, cfg.data.max_len)
        probe = fit_head(model, examples, make_collator(tokenizer, cfg.data.mlm_probability), steps,
                         cfg.train.batch_size, seed=seed + 99)
        results["head_fitted"] = {**heldout_check(probe, tokenizer, heldout, cfg), "probe_steps": steps}
        say(f"baseline: the MLM head alone fitted for {steps} steps ({time.perf_counter() - t:.0f} s)")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        words_file.write_text(json.dumps([{"word": w, "id": i, "pieces": p} for w, i, p in added], indent=1))
        intrinsic_file.write_text(json.dumps(results, indent=1))
    return added, results


def heldout_check(model, tokenizer, heldout: list[str], cfg) -> dict:
    return intrinsic(model, tokenizer, heldout, max_len=cfg.data.max_len, seed=cfg.train.seed + 1234,
                     mlm_probability=cfg.data.mlm_probability)


def export_encoder(trainer: Trainer, config, tokenizer, out: Path):
    """The trained encoder (gathered under ZeRO-3) saved into out with its tokenizer and MLM head; rank 0 returns
    it (eval mode), other ranks None."""
    state = trainer.full_state_dict()
    if trainer.rank != 0:
        return None
    from transformers import AutoModelForMaskedLM

    final = AutoModelForMaskedLM.from_config(config)
    state = {k[len("mlm."):]: v.float().cpu() for k, v in state.items() if k.startswith("mlm.")}
    missing, unexpected = final.load_state_dict(state, strict=False)
    missing = [k for k in missing if "decoder" not in k]  # the tied output layer
    if missing or unexpected:
        raise RuntimeError(f"trained weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    final.tie_weights()
    save_encoder(final.eval(), tokenizer, out)
    return final


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = from_args(base_config(args, TextPretrainConfig), args, FLAGS)
    d, t, out = cfg.data, cfg.train, Path(cfg.train.out_dir)
    preflight_text(cfg, args, FLAGS)  # every option, the DeepSpeed JSON, --init and --out checked before any work
    if args.overwrite and Path(cfg.model.init).exists() and out.exists() and \
            Path(cfg.model.init).resolve() == out.resolve():
        raise UserError(f"--init {cfg.model.init} is the --out folder: --overwrite would remove the encoder it "
                        f"starts from; write to another --out")
    check_resume(out / "checkpoints", args.resume)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rank, world = init_distributed()
    # the same run-folder rules as train: one run at a time (a lock), a finished encoder is never replaced without
    # --resume or --overwrite
    prepare_run_dir(out, resume=args.resume, overwrite=args.overwrite, rank=rank, barrier=dist.barrier,
                    evidence=TEXT_EVIDENCE, run_files=TEXT_RUN_FILES)
    say = print if rank == 0 else (lambda *a, **k: None)

    # reports, held-out slice, starting model, vocabulary growth, intrinsic check before
    train_reports, heldout, stats = reports_and_heldout(cfg, say)
    torch.manual_seed(t.seed)
    model, tokenizer, new_weights = load_mlm(cfg.model.init)
    if new_weights:
        say(f"initialised afresh (absent from {cfg.model.init!r}): {', '.join(new_weights)}; the 'before' figures "
            "are those of the model as loaded")
    added, results = before_training(model, tokenizer, train_reports, heldout, cfg, args.resume, rank, say)
    if rank == 0:
        (out / "pretrain_args.json").write_text(json.dumps({**cfg.to_dict(), "reports_stats": stats}, indent=1))

    # data: every rank its share of each epoch's permutation; masking and dropout a function of the position
    examples, collate = encode(train_reports, tokenizer, d.max_len), make_collator(tokenizer, d.mlm_probability)
    per_epoch = len(epoch_batches(len(examples), t.batch_size, world, rank, t.seed, 0))
    check_batches(per_epoch, len(examples), t.batch_size, world, "training reports")

    def batches(epoch: int, start: int):
        for i, idx in enumerate(epoch_batches(len(examples), t.batch_size, world, rank, t.seed, epoch)[start:], start):
            torch.manual_seed(_step_seed(t.seed, epoch * per_epoch + i, rank))
            yield collate([examples[j] for j in idx])

    # engine (AdamW, warmup + cosine, DeepSpeed), resume, loop
    trainer = Trainer(MaskedLMLoss(model.train()), t, out, args.ds_config, rank, world, quiet=args.quiet,
                      desc="pretrain-text", show=("loss", "lr"))
    if args.resume:
        say(f"resumed from {trainer.load()} at step {trainer.step}")
    history = trainer.fit(batches, lambda batch: {"loss": trainer.engine(**batch)})

    # export and intrinsic check after
    final = export_encoder(trainer, model.config, tokenizer, out)
    if final is not None:
        if heldout:
            results["after"] = heldout_check(final, tokenizer, heldout, cfg)
        (out / "intrinsic.json").write_text(json.dumps(results, indent=1))
        if results:
            say(f"\nIntrinsic check on {len(heldout)} held-out reports ({t.steps} steps from {cfg.model.init!r}):\n")
            say(intrinsic_table(results))
        say(f"\nwritten: {out} (loads with --text-encoder {out})")
    dist.barrier()
    return {"out": str(out), "intrinsic": results, "history": history, "new_words": [w for w, _, _ in added],
            "step": trainer.step, "skipped": trainer.skipped, "reports_stats": stats}


if __name__ == "__main__":
    try:
        code = run_main(main)
    finally:
        shutdown_distributed()
    sys.exit(code)
