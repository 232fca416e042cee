"""Autotune choices that are the same on every rank and every run: cached on disk, decided by rank 0.

Triton's `@triton.autotune` times every config on the first launch of each key, in every process: 10-40 s per
process start, and two ranks (or two runs) can pick different configs, hence different summation orders and
results that differ in the last bits. `pick` wraps that choice:

    cfg = pick(name, key, tune, first, device)

* in memory: the choice made earlier in this process for (name, key);
* MELP_AUTOTUNE=off: `first` (the first shipped config that fits), no timing, no file: the bitwise-reproducible
  setting (the same config on every rank and every run, whatever the machine's load);
* otherwise rank 0 (or the only process) reads the disk cache, and on a miss calls `tune()` (Triton's autotuner,
  which times the configs) and writes the answer; with torch.distributed initialised and more than one rank, rank
  0's choice is broadcast to every rank (broadcast_object_list on the default group), so all ranks launch the same
  config. Every rank must reach `pick` for the same key at the same point (true for a loss that every rank calls
  with the same shapes).

The cache file is JSON, one entry per "device | capability | triton | torch | name | key", at
$MELP_AUTOTUNE_CACHE (default ~/.cache/melp_fast/autotune.json); writes are atomic (temp file + rename). Delete it
to re-tune (after a driver or hardware change, for instance).
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

_MEM: dict[str, tuple] = {}
STATS = {"tuned": 0, "disk_hits": 0, "broadcasts": 0}


def autotune_off() -> bool:
    """MELP_AUTOTUNE=off (or 0 / false / no): the first shipped config that fits, never timed."""
    return os.environ.get("MELP_AUTOTUNE", "").strip().lower() in ("off", "0", "false", "no")


def cache_path() -> str:
    return os.environ.get("MELP_AUTOTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "melp_fast",
                                                                 "autotune.json")


def _device_tag(device) -> str:
    if device is not None and getattr(device, "type", None) == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} | sm{props.major}{props.minor}"
    return f"{getattr(device, 'type', 'cpu')} | -"


def full_key(name: str, key, device=None) -> str:
    try:
        import triton

        tv = triton.__version__
    except Exception:  # pragma: no cover
        tv = "none"
    return " | ".join([_device_tag(device), f"triton {tv}", f"torch {torch.__version__}", name,
                       ",".join(str(k) for k in key)])


def _read() -> dict:
    try:
        with open(cache_path()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write(k: str, cfg) -> None:
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        data = _read()
        data[k] = list(cfg)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".autotune.")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:  # a read-only home: the choice still holds for this process
        pass


def _distributed():
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def pick(name: str, key, tune, first, device=None) -> tuple:
    """The config (a tuple) to launch `name` with for `key`; see the module docstring."""
    k = full_key(name, key, device)
    if k in _MEM:
        return _MEM[k]
    if autotune_off():
        _MEM[k] = tuple(first)
        return _MEM[k]
    cfg = None
    dist_on = _distributed()
    if not dist_on or torch.distributed.get_rank() == 0:
        got = _read().get(k)
        if got is not None:
            cfg = tuple(got)
            STATS["disk_hits"] += 1
        else:
            cfg = tuple(tune())
            STATS["tuned"] += 1
            _write(k, cfg)
    if dist_on:
        obj = [cfg]
        torch.distributed.broadcast_object_list(obj, src=0)
        cfg = tuple(obj[0])
        STATS["broadcasts"] += 1
    _MEM[k] = cfg
    return cfg


def clear_memory() -> None:
    """Forget this process's choices (tests)."""
    _MEM.clear()
