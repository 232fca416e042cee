"""Up-front validation: every option, `--set` value and input file is checked before any work starts.

Each check raises ``UserError`` with one line that names the option (or file) and says what it takes; the entry
points (train, pretrain-text, evaluate, generate, demo, zero-shot) call the checks right after parsing, so a
mistake costs nothing and never leaves a half-written output. What lives here:

- ``check_config`` / ``check_text_config``: ranges and divisibility of every configuration field;
- ``check_ds_config``: the DeepSpeed JSON (its types and ranges: accumulation steps, ZeRO stage, precision,
  clipping);
- ``check_writable``: an output folder that can be written (checked by creating and removing a probe file in it,
  or in its nearest existing parent);
- ``check_device``, ``check_loss_impl``: the device and the fused kernels are available here;
- ``check_text_encoder``: a text encoder that exists (random size, local folder, or the Hugging Face cache: nothing
  is downloaded) and whose config.json is within ``TEXT_BOUNDS`` (before any model is built);
- ``check_store_dir``: a folder that is a finished store;
- checkpoints: ``checkpoint_folder`` (the pointer's target is a plain name inside this run's checkpoints folder,
  every file in it a regular file), ``check_tensors`` (dtypes and shapes of loaded tensors against the
  model's).

The training scripts' own preflight (which also checks the run folder and the downstream stores) is
training/preflight.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path

from .errors import InputNotFound, UserError

# text encoder config.json: what a sane BERT-like encoder can have (a bigger one is a typo or a memory bomb)
TEXT_BOUNDS = {"num_hidden_layers": (1, 96), "hidden_size": (8, 16384), "num_attention_heads": (1, 256),
               "intermediate_size": (8, 65536), "vocab_size": (8, 1_000_000), "max_position_embeddings": (8, 65536),
               "type_vocab_size": (0, 64)}
MAX_TEXT_PARAMS = 3_000_000_000  # ~12 GB of fp32 weights
MAX_GENERATE_LEN = 1024
MAX_COUNT = 2 ** 40  # steps, epochs, batches: anything above is not a real position


# ------------------------------------------------------------------------------------------------ numbers
def _num(value, name: str, lo=None, hi=None, *, lo_open=False, hi_open=False, integer=False):
    """value within [lo, hi] (open ends where asked), finite; else a UserError naming ``name``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer:
        ok = isinstance(value, int)
    if ok:
        ok = math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        lo_s = "" if lo is None else ("> " if lo_open else ">= ") + str(lo)
        hi_s = "" if hi is None else ("< " if hi_open else "<= ") + str(hi)
        rng = " and ".join(x for x in (lo_s, hi_s) if x)
        kind = "an integer" if integer else "a finite number"
        raise UserError(f"{name} is {value!r}: it must be {kind}{' ' + rng if rng else ''}")
    return value


def positive_int(value, name: str, hi=None):
    return _num(value, name, 1, hi, integer=True)


def _flag(key: str, flags: dict | None) -> str:
    """How the user named a config key: its flag when it has one, else --set key."""
    for flag, (k, _) in (flags or {}).items():
        if k == key:
            return f"{flag} ({key})"
    return key


# ------------------------------------------------------------------------------------------------ configs
def check_train_section(t, flags=None) -> None:
    f = lambda k: _flag("train." + k, flags)  # noqa: E731
    positive_int(t.steps, f("steps"), MAX_COUNT)
    positive_int(t.batch_size, f("batch_size"), 1 << 20)
    positive_int(getattr(t, "accum_steps", 1), "train.accum_steps", 1 << 16)
    if getattr(t, "accum_mode", "cache") not in ("cache", "plain"):
        raise UserError(f"train.accum_mode is {t.accum_mode!r}: it must be 'cache' or 'plain'")
    _num(t.lr, f("lr"), 0, 10, lo_open=True)
    _num(t.weight_decay, f("weight_decay"), 0, 10)
    if len(t.betas) != 2:
        raise UserError(f"train.betas is {list(t.betas)!r}: it must be two numbers in [0, 1)")
    for b in t.betas:
        _num(b, "train.betas", 0, 1, hi_open=True)
    if t.warmup_steps is not None:
        _num(t.warmup_steps, f("warmup_steps"), 0, MAX_COUNT, integer=True)
    _num(t.min_lr_ratio, "train.min_lr_ratio", 0, 1)
    _num(t.seed, f("seed"), 0, 2 ** 63 - 1, integer=True)
    positive_int(t.log_every, "train.log_every")
    _num(t.save_every, f("save_every"), 0, MAX_COUNT, integer=True)
    _num(t.save_minutes, "train.save_minutes", 0, 10 ** 7)
    _num(t.stop_grace_s, "train.stop_grace_s", 0, 10 ** 6, lo_open=True)
    _num(t.keep_checkpoints, f("keep_checkpoints"), 0, MAX_COUNT, integer=True)
    positive_int(t.max_nonfinite, "train.max_nonfinite")
    if hasattr(t, "eval_every"):
        _num(t.eval_every, "train.eval_every", 0, MAX_COUNT, integer=True)
    if hasattr(t, "probe_steps"):
        _num(t.probe_steps, f("probe_steps"), 0, MAX_COUNT, integer=True)
    if not str(t.out_dir).strip():
        raise UserError("--out is empty: name an output folder")


def check_config(cfg, flags=None) -> None:
    """Every field of a training Config (train.py) within its range; widths divisible by their heads."""
    m, d, lo = cfg.model, cfg.data, cfg.loss
    f = lambda k: _flag(k, flags)  # noqa: E731
    check_train_section(cfg.train, flags)
    for k in ("n_leads", "conv_channels", "width", "layers", "heads", "ffn", "embed_dim", "max_beats",
              "beat_queries", "caption_queries", "caption_pool_heads", "decoder_layers", "decoder_heads",
              "pos_conv_kernel", "pos_conv_groups"):
        positive_int(getattr(m, k), f"model.{k}", 1 << 20)
    _num(m.conv_layers, "model.conv_layers", 1, 12, integer=True)
    if m.n_leads != 12:
        raise UserError(f"model.n_leads is {m.n_leads}: the stores hold 12 leads")
    if m.width % m.heads:
        raise UserError(f"model.heads={m.heads} does not divide model.width={m.width}: choose heads that divide "
                        f"the width")
    if m.width % m.pos_conv_groups:
        raise UserError(f"model.pos_conv_groups={m.pos_conv_groups} does not divide model.width={m.width}")
    _num(m.dropout, "model.dropout", 0, 1, hi_open=True)
    _num(m.conv_grad_scale, "model.conv_grad_scale", 0, 1e6)
    _num(m.max_text_len, "model.max_text_len", 4, 4096, integer=True)
    _num(m.text_freeze_layers, "model.text_freeze_layers", 0, 1000, integer=True)
    _num(m.logit_scale_init, "model.logit_scale_init", -20, 20)
    _num(m.logit_scale_max, "model.logit_scale_max", m.logit_scale_init, 20)
    _num(d.lead_mask_p, "data.lead_mask_p", 0, 1)
    _num(d.val_fraction, "data.val_fraction", 0, 1, hi_open=True)
    positive_int(d.n_train, "data.n_train", 10 ** 8)
    positive_int(d.n_test, "data.n_test", 10 ** 8)
    _num(d.seed, "data.seed", 0, 2 ** 32 - 1, integer=True)
    _num(d.highpass_hz, "data.highpass_hz", 0, 100)
    _num(d.num_workers, "data.num_workers", 0, 1024, integer=True)
    for k in ("augment_gain", "augment_warp", "augment_noise", "augment_hum"):
        _num(getattr(d, k), f"data.{k}", 0, 10)
    _num(d.augment_lead_reversal_p, "data.augment_lead_reversal_p", 0, 1)
    for k in ("global_weight", "caption_weight", "local_weight"):
        _num(getattr(lo, k), f"loss.{k}", 0, 1e6)
    for k in ("t1", "t2", "t3"):
        _num(getattr(lo, k), f"loss.{k}", 0, 1e6, lo_open=True)
    check_loss_impl(lo.impl)


def check_text_config(cfg, flags=None) -> None:
    """Every field of a TextPretrainConfig (text_pretrain.py) within its range."""
    d, v = cfg.data, cfg.vocab
    f = lambda k: _flag(k, flags)  # noqa: E731
    check_train_section(cfg.train, flags)
    positive_int(d.n_synthetic, f("data.n_synthetic"), 10 ** 8)
    _num(d.max_len, f("data.max_len"), 4, 4096, integer=True)
    _num(d.mlm_probability, f("data.mlm_probability"), 0, 1, lo_open=True, hi_open=True)
    _num(d.heldout, f("data.heldout"), 0, 1, hi_open=True)
    _num(d.max_heldout, f("data.max_heldout"), 0, 10 ** 8, integer=True)
    positive_int(v.min_count, f("vocab.min_count"))
    positive_int(v.min_pieces, f("vocab.min_pieces"))
    _num(v.max_new_tokens, f("vocab.max_new_tokens"), 0, 100_000, integer=True)


def check_loss_impl(impl: str) -> None:
    if impl == "fused":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--loss-impl fused needs a CUDA GPU (the Triton kernels); none is available here: use "
                            "--loss-impl auto (the PyTorch path off CUDA) or reference")


def check_device(device: str, flag: str = "--device") -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"{flag} {device!r} is not a device name (cpu, cuda, cuda:0, ...): {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{flag} {device}: CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"{flag} {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        if dev.type == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return
        raise UserError(f"{flag} {device}: not available here; use --device cpu")


# ------------------------------------------------------------------------------------------------ files
def check_writable(path, flag: str = "--out") -> None:
    """``path`` (a folder, maybe not yet there) can be written: a probe file is created and removed in it, or in
    its nearest existing parent (nothing is left behind)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {p} exists and is not a folder")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{flag} {p}: {probe} is a file, so the folder cannot be made")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".melp_write_probe"):
            pass
    except OSError as e:
        raise UserError(f"{flag} {p} is not writable ({probe}: {e.strerror or e}); choose a writable folder") from None


def check_store_dir(path, flag: str = "--data"):
    """A finished store at ``path`` (opened, so its meta.json is read and checked); returns it."""
    from .data.store import Store

    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{flag} {path}: no such store directory")
    try:
        return Store(p)
    except (FileNotFoundError, ValueError, KeyError, TypeError, json.JSONDecodeError, OSError) as e:
        raise UserError(f"{flag} {path} is not a usable store: {' '.join(str(e).split())[:300]}") from None


def read_ds_json(path) -> dict:
    """A DeepSpeed JSON file as a dict, or a UserError that names the file and what is wrong with it."""
    p = Path(path)
    if not p.is_file():
        raise InputNotFound(f"--ds_config {path}: no such file")
    try:
        value = json.loads(p.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" (line {e.lineno}, column {e.colno}: {e.msg})" if isinstance(e, json.JSONDecodeError) else ""
        raise UserError(f"--ds_config {path} is not a JSON file{where}") from None
    if not isinstance(value, dict):
        raise UserError(f"--ds_config {path}: expected a JSON object {{...}}, found {type(value).__name__}")
    return value


def check_ds_config(path) -> None:
    """The DeepSpeed JSON: readable, an object, and the values this engine reads typed and in range."""
    if path is None:
        return
    ds = read_ds_json(path)
    where = f"--ds_config {path}"

    def need_int(key, value, lo, hi):
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise UserError(f"{where}: {key} is {value!r}; it must be an integer from {lo} to {hi}")

    if "gradient_accumulation_steps" in ds:
        need_int("gradient_accumulation_steps", ds["gradient_accumulation_steps"], 1, 1 << 16)
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size"):
        if key in ds:
            need_int(key, ds[key], 1, 1 << 30)
    if "gradient_clipping" in ds:
        v = ds["gradient_clipping"]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise UserError(f"{where}: gradient_clipping is {v!r}; it must be a number >= 0 (0: no clipping)")
    zero = ds.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise UserError(f"{where}: zero_optimization must be an object like {{\"stage\": 2}}, not {zero!r}")
    if "stage" in zero:
        need_int("zero_optimization.stage", zero["stage"], 0, 3)
    for prec in ("bf16", "fp16"):
        sec = ds.get(prec)
        if sec is None:
            continue
        if not isinstance(sec, dict):
            raise UserError(f"{where}: {prec} must be an object like {{\"enabled\": true}}, not {sec!r}")
        if "enabled" in sec and not isinstance(sec["enabled"], bool) and sec["enabled"] != "auto":
            raise UserError(f"{where}: {prec}.enabled is {sec['enabled']!r}; it must be true or false")
    import torch

    fp16 = ds.get("fp16")
    if isinstance(fp16, dict) and fp16.get("enabled") is True and not torch.cuda.is_available():
        raise UserError(f"{where}: fp16 needs a CUDA GPU (DeepSpeed refuses it on CPU); use bf16 or fp32")
    if "optimizer" in ds and not isinstance(ds["optimizer"], dict):
        raise UserError(f"{where}: optimizer must be an object, not {ds['optimizer']!r}")


# ------------------------------------------------------------------------------------------------ text encoder
def text_encoder_config(name: str, flag: str = "--text-encoder") -> dict | None:
    """The config.json of a text encoder given as a local folder or a cached Hugging Face name (None for the
    built-in random sizes and minilm); a UserError when it is neither, or when its sizes are out of bounds."""
    if name.startswith("random:"):
        from .model.text import RANDOM_BERT_SIZES

        size = name.split(":", 1)[1]
        if size not in RANDOM_BERT_SIZES:
            raise UserError(f"{flag} {name}: unknown random size {size!r}; choose one of "
                            f"{', '.join('random:' + s for s in RANDOM_BERT_SIZES)}")
        layers, hidden, heads, ffn = RANDOM_BERT_SIZES[size]
        return {"num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
                "intermediate_size": ffn}
    if name == "minilm":
        try:
            from .model.text import minilm_path

            path = Path(minilm_path())
        except ImportError as e:
            raise UserError(f"{flag} minilm: {e}") from None
    else:
        path = Path(name)
        if not path.exists():
            looks_like_path = name.startswith((".", "/", "~")) or os.sep in name.strip("/") and name.count("/") > 1
            if looks_like_path:
                raise UserError(f"{flag} {name}: no such folder")
            cached = _hub_cache_config(name)
            if cached is None:
                raise UserError(f"{flag} {name}: not a local folder, and not in the Hugging Face cache (nothing is "
                                f"downloaded at run time); download it first, give its folder, or use minilm / "
                                f"random:<size>")
            path = cached.parent
    if not path.is_dir():
        raise UserError(f"{flag} {name}: {path} is not a folder holding a model (config.json and its weights)")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{flag} {name}: {cfg_file} is missing; a text encoder folder holds config.json and its "
                        f"weights")
    if cfg_file.stat().st_size > 1 << 20:
        raise UserError(f"{flag} {name}: {cfg_file} is {cfg_file.stat().st_size} bytes, far too big for a model "
                        f"config")
    try:
        conf = json.loads(cfg_file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{flag} {name}: {cfg_file} is not JSON: {e}") from None
    if not isinstance(conf, dict):
        raise UserError(f"{flag} {name}: {cfg_file} must hold a JSON object")
    check_text_bounds(conf, f"{flag} {name}: {cfg_file}")
    return conf


def _hub_cache_config(name: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - a name the hub library rejects is not in the cache either
        return None
    return Path(found) if isinstance(found, str) else None


def check_text_bounds(conf: dict, where: str) -> None:
    """A text encoder's config.json within TEXT_BOUNDS (and its parameter count within MAX_TEXT_PARAMS)."""
    for key, (lo, hi) in TEXT_BOUNDS.items():
        if key in conf:
            v = conf[key]
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise UserError(f"{where}: {key} is {v!r}; a text encoder here has {lo} to {hi}")
    h, heads = conf.get("hidden_size"), conf.get("num_attention_heads")
    if isinstance(h, int) and isinstance(heads, int) and h % heads:
        raise UserError(f"{where}: num_attention_heads={heads} does not divide hidden_size={h}")
    if isinstance(h, int):
        layers = conf.get("num_hidden_layers", 12)
        ffn = conf.get("intermediate_size", 4 * h)
        params = layers * (4 * h * h + 2 * h * ffn) + (conf.get("vocab_size", 30522)
                                                       + conf.get("max_position_embeddings", 512)) * h
        if params > MAX_TEXT_PARAMS:
            raise UserError(f"{where}: these sizes make a {params / 1e9:.1f} billion parameter encoder (more than "
                            f"{MAX_TEXT_PARAMS / 1e9:.0f} billion); check num_hidden_layers / hidden_size")


def text_dir_bounds(folder) -> None:
    """An exported model's text_encoder/config.json within TEXT_BOUNDS before anything is built from it (a damaged
    or unreadable file is left to the loader's own message)."""
    f = Path(folder) / "config.json"
    try:
        if not f.is_file() or f.stat().st_size > 1 << 20:
            return
        conf = json.loads(f.read_bytes())
    except (OSError, ValueError):
        return
    if isinstance(conf, dict):
        check_text_bounds(conf, str(f))


def check_text_encoder(cfg, flags=None) -> None:
    """model.text_encoder exists and is sane, and the caption heads divide its width."""
    flag = "--text-encoder" if flags and "--text-encoder" in flags else "model.text_encoder"
    conf = text_encoder_config(cfg.model.text_encoder, flag)
    h = (conf or {}).get("hidden_size")
    if isinstance(h, int):
        for k in ("caption_pool_heads", "decoder_heads"):
            v = getattr(cfg.model, k)
            if h % v:
                raise UserError(f"model.{k}={v} does not divide the text encoder's width {h} "
                                f"({cfg.model.text_encoder})")
    layers = (conf or {}).get("num_hidden_layers")
    if isinstance(layers, int) and cfg.model.text_freeze_layers > layers:
        raise UserError(f"model.text_freeze_layers={cfg.model.text_freeze_layers}: the text encoder "
                        f"{cfg.model.text_encoder} has only {layers} layers")


# ------------------------------------------------------------------------------------------------ the entry points
def check_evaluate_args(args) -> None:
    """melp-fast evaluate's numbers, device and output folder."""
    _num(args.n_boot, "--n-boot", 0, 10 ** 6, integer=True)
    positive_int(args.epochs, "--epochs", 10 ** 6)
    positive_int(args.batch_size, "--batch-size", 1 << 20)
    positive_int(args.n_test, "--n-test", 10 ** 8)
    positive_int(args.n_train, "--n-train", 10 ** 8)
    if args.threads is not None:
        positive_int(args.threads, "--threads", 4096)
    check_device(args.device)
    check_writable(args.out, "--out")


def check_generate_args(args) -> None:
    positive_int(args.beam_width, "--beam-width", 64)
    if args.max_len is not None:
        positive_int(args.max_len, "--max-len", MAX_GENERATE_LEN)
    _num(args.length_penalty, "--length-penalty", -100, 100)
    if args.threads is not None:
        positive_int(args.threads, "--threads", 4096)
    check_device(args.device)
    if args.out:
        check_writable(args.out, "--out")


def check_generate_len(max_len, model) -> None:
    """--max-len within what the model's text side can hold (its position table)."""
    if max_len is None:
        return
    limits = [getattr(getattr(model, "cfg", None), "max_text_len", None)]
    conf = getattr(getattr(getattr(model, "text", None), "backbone", None), "config", None)
    limits.append(getattr(conf, "max_position_embeddings", None))
    limits = [x for x in limits if isinstance(x, int)]
    if limits and max_len > min(limits) - 2:
        raise UserError(f"--max-len {max_len}: this model generates at most {min(limits) - 2} tokens (its text "
                        f"length limit, model.max_text_len, less the start and end tokens)")


def check_demo_args(args) -> None:
    if args.steps is not None:
        positive_int(args.steps, "--steps", MAX_COUNT)
    positive_int(args.n_test, "--n-test", 10 ** 7)
    check_loss_impl(args.loss_impl)
    check_ds_config(args.ds_config)
    check_writable(args.out, "--out")


# ------------------------------------------------------------------------------------------------ checkpoints
TAG = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def checkpoint_folder(ckpt_dir, pointer: str) -> Path:
    """The folder the pointer names, after checking that the pointer is a small regular file naming a plain folder
    inside ``ckpt_dir`` (no path, no link) whose entries are all regular files (no FIFO, device or link)."""
    ckpt_dir = Path(ckpt_dir)
    ptr = ckpt_dir / pointer
    st = os.lstat(ptr)
    if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:
        raise UserError(f"--resume: {ptr} is not a regular file of a few bytes; remove it, or start again "
                        f"with --overwrite")
    tag = ptr.read_text(errors="replace").strip()
    if not TAG.match(tag) or tag in (".", ".."):
        raise UserError(f"--resume: {ptr} names {tag[:80]!r}, not a checkpoint folder of this run (a plain name "
                        f"inside {ckpt_dir}); remove it, or start again with --overwrite")
    folder = ckpt_dir / tag
    if folder.is_symlink() or not folder.is_dir():
        raise UserError(f"--resume: {folder}, named by {ptr}, is not a folder inside {ckpt_dir} (missing or a "
                        f"link); remove {ptr}, or start again with --overwrite")
    if folder.resolve().parent != ckpt_dir.resolve():
        raise UserError(f"--resume: {folder} lies outside {ckpt_dir}")
    for entry in folder.rglob("*"):
        mode = os.lstat(entry).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            kind = "a link" if stat.S_ISLNK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
            raise UserError(f"--resume: {entry} is {kind}; a checkpoint holds regular files only (remove it, or "
                            f"start again with --overwrite)")
    return folder


def expected_tensors(module, shapes: dict | None = None) -> dict:
    """{name: (dtype, shape)} of a module's state dict; ``shapes`` (parameter shapes taken before ZeRO-3
    partitioned them) win over the module's own."""
    out = {}
    for name, t in module.state_dict().items():
        shape = list((shapes or {}).get(name, t.shape))
        out[name] = (t.dtype, shape)
    return out


def check_tensors(found: dict, expected: dict, where) -> None:
    """Loaded tensors against the model's dtypes and shapes (a same-size dtype swapped in a file header, e.g.
    F32 -> I32, would otherwise load as garbage); empty tensors (ZeRO-3 placeholders) are not shape-checked."""
    import torch

    for name, t in found.items():
        if not torch.is_tensor(t) or name not in expected:
            continue
        dtype, shape = expected[name]
        if t.dtype != dtype and not (t.dtype.is_floating_point and dtype.is_floating_point):
            raise UserError(f"{where}: tensor {name} is {str(t.dtype).replace('torch.', '')}, the model's is "
                            f"{str(dtype).replace('torch.', '')} (a damaged or tampered file); nothing was loaded")
        if t.numel() and list(t.shape) != list(shape):
            raise UserError(f"{where}: tensor {name} has shape {list(t.shape)}, the model's is {list(shape)}; "
                            f"nothing was loaded")
