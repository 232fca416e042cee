"""MELP stage one: adapt the text encoder to cardiology language by continued masked-language-model pretraining.

    melp-fast pretrain-text --reports synthetic --init minilm --out runs/heart_minilm --steps 300
    melp-fast pretrain-text --reports STORE_DIR --init bert-base-uncased --out DIR --ds_config configs/cpu_bf16.json
    melp-fast pretrain-text --reports reports.txt --out DIR --resume          (continue from DIR/checkpoints)
    deepspeed --num_gpus 2 melp_fast/text_pretrain.py --reports synthetic --out DIR

Reads top to bottom: reports (the embedded synthetic corpus, a store's reports, or a text file with one report per
line) -> held-out slice -> starting model (AutoModelForMaskedLM) and tokenizer -> intrinsic check "before" ->
vocabulary growth (frequent words split into many word pieces; new rows = mean of the pieces) -> DeepSpeed engine
(torch AdamW, warmup + cosine) -> loop (DataCollatorForLanguageModeling masking, forward, backward, step,
checkpoint) -> save the base encoder + tokenizer into --out -> intrinsic check "after".

The output directory loads as the text encoder of the main training (`--text-encoder DIR`): config.json and
model.safetensors of the BertModel (no pooler), the tokenizer, and beside them mlm_head.safetensors (the MLM head,
so `--init DIR` continues with it), new_words.json, intrinsic.json, history.jsonl and checkpoints/.
Masking, dropout and the data order are functions of (seed, step), so `--resume` continues exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a script by the deepspeed launcher
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist

from melp_fast.model.vocab import grow_vocabulary, select_new_words

HEAD_FILE = "mlm_head.safetensors"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="melp-fast pretrain-text", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reports", default="synthetic",
                   help="'synthetic' (the embedded corpus), a store directory, or a text file with one report a line")
    p.add_argument("--n-synthetic", type=int, default=4000, help="reports of the synthetic train split")
    p.add_argument("--init", default="minilm", help="minilm | Hugging Face name or path | random:<size>")
    p.add_argument("--out", required=True, help="output directory (the adapted encoder, checkpoints, logs)")
    p.add_argument("--ds_config", default=None, help="DeepSpeed JSON config (default: ZeRO-0, fp32)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 6%% of --steps")
    p.add_argument("--max-len", type=int, default=128, help="tokens per report (longer ones are truncated)")
    p.add_argument("--mlm-probability", type=float, default=0.15)
    p.add_argument("--min-count", type=int, default=20, help="vocabulary growth: minimum word frequency")
    p.add_argument("--min-pieces", type=int, default=3, help="vocabulary growth: minimum word pieces of a word")
    p.add_argument("--max-new-tokens", type=int, default=200, help="vocabulary growth: at most this many (0: none)")
    p.add_argument("--heldout", type=float, default=0.1, help="fraction of reports held out for the intrinsic check")
    p.add_argument("--max-heldout", type=int, default=1000, help="at most this many held-out reports")
    p.add_argument("--probe-steps", type=int, default=0,
                   help="a baseline for the intrinsic check: fit the MLM head alone (encoder frozen) on the starting "
                        "model for N steps (useful when the checkpoint has no MLM head, as MiniLM); 0: no baseline")
    p.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="most recent checkpoints kept (0: all)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)), help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------
# reports


def read_text_file(path) -> tuple[list[str], dict]:
    """One report a line, read as bytes; lines that are empty (after stripping) or not UTF-8 are skipped, counted,
    and their line numbers (1-based) kept in the stats."""
    reports, empty, bad = [], [], []
    with open(path, "rb") as f:
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
    """Reports of the embedded synthetic corpus ('synthetic'), of a store directory, or of a text file."""
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
    raise FileNotFoundError(f"--reports {source!r}: not 'synthetic', a store directory or a text file")


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


def _full_state_dict(engine) -> dict | None:
    if getattr(engine, "zero_optimization_partition_weights", lambda: False)():
        return engine._zero3_consolidated_16bit_state_dict()  # collective; the dict on rank 0 only
    return engine.module.state_dict()


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


def _prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    tags = sorted((d for d in ckpt_dir.glob("step*") if d.is_dir() and d.name[4:].isdigit()), key=lambda d: int(d.name[4:]))
    for d in tags[:-keep]:
        shutil.rmtree(d, ignore_errors=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    ckpt_dir = out / "checkpoints"
    if args.resume and not (ckpt_dir / "latest").is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir} (no 'latest' file)")
    if not args.resume and (ckpt_dir / "latest").is_file():
        raise FileExistsError(f"{out} holds checkpoints of an earlier run: pass --resume, or choose another --out")
    import deepspeed
    from tqdm import tqdm

    from melp_fast.train import init_distributed, load_ds_config, param_groups, warmup_cosine

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rank, world = init_distributed()
    say = print if rank == 0 else (lambda *a, **k: None)

    # reports
    reports, stats = read_reports(args.reports, args.n_synthetic, args.seed)
    train_reports, heldout = split_heldout(reports, args.heldout, args.max_heldout, args.seed)
    say(f"reports: {len(reports)} from {args.reports} (skipped {stats['empty']} empty, {stats['not_utf8']} not UTF-8); "
        f"{len(train_reports)} to train on, {len(heldout)} held out")
    if stats.get("not_utf8_lines"):
        say(f"  lines not UTF-8: {stats['not_utf8_lines'][:20]}")

    # starting model, intrinsic check before, vocabulary growth
    torch.manual_seed(args.seed)
    model, tokenizer, new_weights = load_mlm(args.init)
    if new_weights:
        say(f"initialised afresh (absent from {args.init!r}): {', '.join(new_weights)}; the 'before' figures are "
            "those of the model as loaded")
    intrinsic_file, words_file = out / "intrinsic.json", out / "new_words.json"
    results: dict = {}
    if args.resume and intrinsic_file.is_file():
        results = {k: v for k, v in json.loads(intrinsic_file.read_text()).items() if k != "after"}
    if rank == 0 and heldout and "start" not in results:
        results["start"] = intrinsic(model, tokenizer, heldout, max_len=args.max_len, seed=args.seed + 1234,
                                     mlm_probability=args.mlm_probability)
    if args.resume and words_file.is_file():
        words = [w["word"] for w in json.loads(words_file.read_text())]
    else:
        words = select_new_words(train_reports, tokenizer, args.min_count, args.min_pieces, args.max_new_tokens)
    added = grow_vocabulary(model, tokenizer, words)
    if added:
        say(f"vocabulary +{len(added)} words ({len(tokenizer)} tokens): "
            + ", ".join(f"{w} ({len(p)} pieces)" for w, _, p in added))
        if rank == 0 and heldout and "start+vocab" not in results:
            results["start+vocab"] = intrinsic(model, tokenizer, heldout, max_len=args.max_len,
                                               seed=args.seed + 1234, mlm_probability=args.mlm_probability)
    else:
        say("vocabulary: no word qualifies (frequency >= %d, >= %d pieces)" % (args.min_count, args.min_pieces))
    examples = encode(train_reports, tokenizer, args.max_len)
    collate = make_collator(tokenizer, args.mlm_probability)
    if rank == 0 and heldout and args.probe_steps > 0 and "head_fitted" not in results:
        t = time.perf_counter()
        probe = fit_head(model, examples, collate, args.probe_steps, args.batch_size, seed=args.seed + 99)
        results["head_fitted"] = {**intrinsic(probe, tokenizer, heldout, max_len=args.max_len, seed=args.seed + 1234,
                                              mlm_probability=args.mlm_probability), "probe_steps": args.probe_steps}
        del probe
        say(f"baseline: the MLM head alone fitted for {args.probe_steps} steps ({time.perf_counter() - t:.0f} s)")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        words_file.write_text(json.dumps([{"word": w, "id": i, "pieces": p} for w, i, p in added], indent=1))
        intrinsic_file.write_text(json.dumps(results, indent=1))
        (out / "pretrain_args.json").write_text(json.dumps({**vars(args), "reports_stats": stats}, indent=1))

    # data, optimiser, schedule, engine
    if len(examples) // world < args.batch_size:
        raise ValueError(f"{len(examples)} training reports cannot fill one batch of {args.batch_size} "
                         f"on {world} processes")
    model.train()
    wrapper = MaskedLMLoss(model)
    optimizer = torch.optim.AdamW(param_groups(wrapper, args.weight_decay), lr=args.lr, betas=(0.9, 0.999))
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, round(0.06 * args.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, args.steps))
    ds_config = load_ds_config(args.ds_config, SimpleNamespace(train=SimpleNamespace(batch_size=args.batch_size)), world)
    engine, optimizer, _, schedule = deepspeed.initialize(model=wrapper, optimizer=optimizer, lr_scheduler=schedule,
                                                          config=ds_config)
    device = engine.device
    step = 0
    if args.resume:
        path, client = engine.load_checkpoint(str(ckpt_dir))
        if path is None:
            raise RuntimeError(f"--resume: could not load a checkpoint from {ckpt_dir}")
        step = int(client["step"])
        if client.get("vocab") != len(tokenizer):
            raise ValueError(f"checkpoint vocabulary {client.get('vocab')} != {len(tokenizer)} (other reports or "
                             "vocabulary options than the run that wrote it?)")
        say(f"resumed from {path} at step {step}")

    # loop
    history_file = out / "history.jsonl"
    if rank == 0:  # a resumed run keeps the records up to its checkpoint
        kept = history_file.read_text().splitlines() if args.resume and history_file.is_file() else []
        kept = [line for line in kept if line.strip() and json.loads(line)["step"] <= step]
        history_file.write_text("".join(line + "\n" for line in kept))
    per_epoch = len(epoch_batches(len(examples), args.batch_size, world, rank, args.seed, 0))
    bar = tqdm(total=args.steps, initial=min(step, args.steps), desc="pretrain-text",
               disable=rank != 0 or args.quiet, mininterval=1.0)
    t0, start_step, history, skipped = time.perf_counter(), step, [], 0
    while step < args.steps:
        epoch, pos = divmod(step, per_epoch)
        batches = epoch_batches(len(examples), args.batch_size, world, rank, args.seed, epoch)
        for idx in batches[pos:]:
            torch.manual_seed(_step_seed(args.seed, step, rank))  # masking and dropout: a function of the step
            batch = collate([examples[i] for i in idx])
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = engine(**batch)
            finite = torch.tensor([float(torch.isfinite(loss.detach()).item())])
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item() < 1:  # every rank skips together
                skipped += 1
                engine.zero_grad()
                step += 1
                continue
            engine.backward(loss)
            engine.step()
            step += 1
            rec = {"step": step, "loss": float(loss.detach()), "lr": schedule.get_last_lr()[0],
                   "reports_per_s": (step - start_step) * args.batch_size * world / (time.perf_counter() - t0)}
            history.append(rec)
            if rank == 0:
                with open(history_file, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2e}", rps=f"{rec['reports_per_s']:.1f}")
            bar.update(1)
            if args.save_every and step % args.save_every == 0 and step < args.steps:
                engine.save_checkpoint(str(ckpt_dir), tag=f"step{step}", client_state={"step": step, "vocab": len(tokenizer)})
                if rank == 0:
                    _prune_checkpoints(ckpt_dir, args.keep_checkpoints)
            if step >= args.steps:
                break
    bar.close()
    if step > start_step:  # the same decision on every rank (saving is collective)
        engine.save_checkpoint(str(ckpt_dir), tag=f"step{step}", client_state={"step": step, "vocab": len(tokenizer)})
        if rank == 0:
            _prune_checkpoints(ckpt_dir, args.keep_checkpoints)

    # export and intrinsic check after
    state = _full_state_dict(engine)
    if rank == 0:
        from transformers import AutoModelForMaskedLM

        final = AutoModelForMaskedLM.from_config(model.config)
        state = {k[len("mlm."):]: v.float().cpu() for k, v in state.items() if k.startswith("mlm.")}
        missing, unexpected = final.load_state_dict(state, strict=False)
        missing = [k for k in missing if "decoder" not in k]  # the tied output layer
        if missing or unexpected:
            raise RuntimeError(f"trained weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        final.tie_weights()
        final.eval()
        save_encoder(final, tokenizer, out)
        if heldout:
            results["after"] = intrinsic(final, tokenizer, heldout, max_len=args.max_len, seed=args.seed + 1234,
                                         mlm_probability=args.mlm_probability)
        intrinsic_file.write_text(json.dumps(results, indent=1))
        if results:
            print(f"\nIntrinsic check on {len(heldout)} held-out reports ({args.steps} steps from {args.init!r}):\n")
            print(intrinsic_table(results))
        print(f"\nwritten: {out} (loads with --text-encoder {out})")
    dist.barrier()
    return {"out": str(out), "intrinsic": results, "history": history, "new_words": [w for w, _, _ in added],
            "step": step, "skipped": skipped, "reports_stats": stats}


if __name__ == "__main__":
    main()
