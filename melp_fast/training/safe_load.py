"""Loading a checkpoint never runs code.

A pickle can call any function while it is read, so a checkpoint folder copied from elsewhere must never reach
``pickle.load``. Here:

- our own training state (data position, RNG states) is written as safetensors (tensors) with a JSON header
  (``save_train_state`` / ``load_train_state``): no pickle at all;
- DeepSpeed's files (``mp_rank_*_model_states.pt``, ``*optim_states.pt``) are pickles, read inside
  ``deepspeed_weights_only()``: every ``torch.load`` in the block runs with ``weights_only=True`` and allows
  exactly the classes these files really hold (``CHECKPOINT_GLOBALS``: DeepSpeed's ZeRO stage enum, loss scalers
  and fragment addresses; tensors, dicts, lists, tuples, numbers and strings are always allowed);
- ``safe_torch_load(path)`` is the same for one file of ours (a train state from an older version of this code).

A tampered file (one that names any other global, e.g. ``os.system``) is refused with a ``UserError`` that names
the file and what it tried to load; nothing in it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError


def _deepspeed_globals() -> list:
    """The non-tensor classes DeepSpeed's checkpoints hold (measured on ZeRO 0-3, fp32 / bf16 / fp16)."""
    out = []
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        out += [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler]
    except ImportError:  # pragma: no cover - deepspeed is a dependency
        pass
    return out


def _numpy_globals() -> list:
    """What a pickled numpy RNG state holds (the train_state_rank*.pt files of older versions)."""
    from numpy.core.multiarray import _reconstruct  # noqa: F401 - numpy 2 forwards to numpy._core

    try:
        from numpy._core.multiarray import _reconstruct as rec2
    except ImportError:  # numpy 1
        rec2 = _reconstruct
    kinds = [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "uint8")]
    return [rec2, _reconstruct, np.ndarray, np.dtype, *kinds]


def checkpoint_globals() -> list:
    return _deepspeed_globals() + _numpy_globals()


def _refusal(path, err: Exception) -> UserError:
    detail = " ".join(str(err).split())
    bad = ""
    try:
        bad = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - not a zip checkpoint, or unreadable: the message below still names it
        pass
    what = f"it asks to load {bad}" if bad else detail[:300]
    return UserError(f"refused to load {path}: it is not a checkpoint this program wrote ({what}); nothing in it "
                     f"was run. Remove the file or resume from a checkpoint you trust.")


def safe_torch_load(path, map_location="cpu", allowed=None):
    """torch.load(path, weights_only=True) allowing only ``allowed`` (default: checkpoint_globals()) besides
    plain data; a file that needs anything else raises UserError naming it."""
    allowed = checkpoint_globals() if allowed is None else list(allowed)
    try:
        with torch.serialization.safe_globals(allowed):
            return _ORIG_LOAD(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError, EOFError) as e:
        raise _refusal(path, e) from None


_ORIG_LOAD = torch.load


@contextlib.contextmanager
def deepspeed_weights_only(allowed=None, expect=None):
    """Within the block every torch.load (DeepSpeed's checkpoint engines call ``torch.load`` with
    ``weights_only=False``) is a ``safe_torch_load``: weights_only=True with only ``allowed`` classes, of a regular
    file only (a FIFO would block). ``expect`` ({name: (dtype, shape)}, checks.expected_tensors): the model states
    a file holds ("module") must have these dtypes and shapes (a tampered dtype is refused, not loaded)."""
    def load(f, map_location=None, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)):
            raise UserError("refused to unpickle a checkpoint from a stream (weights-only loading needs a file)")
        import stat

        if not stat.S_ISREG(os.lstat(f).st_mode):
            raise UserError(f"refused to load {f}: not a regular file")
        out = safe_torch_load(f, map_location=map_location, allowed=allowed)
        if expect is not None and isinstance(out, dict) and isinstance(out.get("module"), dict):
            from ..checks import check_tensors

            check_tensors(out["module"], expect, f)
        return out

    torch.load = load
    try:
        yield
    finally:
        torch.load = _ORIG_LOAD


# ------------------------------------------------------------------------------------------ our train state
def train_state_path(folder, rank: int) -> Path:
    return Path(folder) / f"train_state_rank{rank}.safetensors"


def save_train_state(folder, rank: int, position: dict, info: dict | None = None) -> Path:
    """Data position (ints), this process's RNG states (torch, CUDA, numpy, python) and ``info`` (JSON-able, e.g.
    parameter shapes) as safetensors + JSON, written atomically to folder/train_state_rank{rank}.safetensors."""
    from safetensors.torch import save_file

    np_state = np.random.get_state()
    py_version, py_key, py_gauss = random.getstate()
    tensors = {"torch": torch.get_rng_state().clone(),
               "numpy_key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
               "python_key": torch.tensor(py_key, dtype=torch.int64)}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s.clone()
    meta = {"position": {k: int(v) for k, v in position.items()}, "info": info or {},
            "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_version, py_gauss]}
    path = train_state_path(folder, rank)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"melp_train_state": json.dumps(meta)})
    os.replace(tmp, path)
    return path


def read_train_state(folder, rank: int) -> dict:
    """What save_train_state wrote: {"position", "info", "rng"}; nothing is restored yet (restore_rng does).
    A checkpoint of an older version (train_state_rank{rank}.pt, a pickle) is read weights-only, allowing numpy's
    array types alone."""
    path = train_state_path(folder, rank)
    if path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads(f.metadata()["melp_train_state"])
                t = {k: f.get_tensor(k) for k in f.keys()}
            name, pos, has_gauss, gauss = meta["numpy"]
            np_state = (str(name), t["numpy_key"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss))
            py_state = (int(meta["python"][0]), tuple(int(v) for v in t["python_key"].tolist()), meta["python"][1])
            cuda = [t[k] for k in sorted(t) if k.startswith("cuda")]
            state = {"position": {k: int(v) for k, v in meta["position"].items()}, "info": meta.get("info", {}),
                     "rng": {"torch": t["torch"], "cuda": cuda, "numpy": np_state, "python": py_state}}
        except Exception as e:  # noqa: BLE001 - any damage: one line naming the file
            raise UserError(f"cannot read the training state {path}: {type(e).__name__}: {e}") from None
        return check_train_state(state, path)
    legacy = Path(folder) / f"train_state_rank{rank}.pt"
    if not legacy.is_file():
        raise UserError(f"--resume: {path} is missing (an incomplete checkpoint); remove {Path(folder)} and "
                        f"its name in {Path(folder).parent / 'complete'}, or start again with --overwrite")
    state = safe_torch_load(legacy, allowed=_numpy_globals())
    try:
        state = {"position": {k: int(v) for k, v in state["position"].items()},
                "info": {k: state[k] for k in ("shapes", "world") if k in state},
                "rng": {"torch": state["rng"]["torch"], "cuda": [], "numpy": state["rng"]["numpy"],
                        "python": state["rng"]["python"]}}
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise UserError(f"cannot read the training state {legacy}: {type(e).__name__}: {e}") from None
    return check_train_state(state, legacy)


MAX_POSITION = 2 ** 40  # steps, epochs, batches: beyond this a position is not real


def check_train_state(state: dict, path) -> dict:
    """A read training state within range: data position non-negative integers below MAX_POSITION; RNG states of
    the right kinds and sizes (MT19937 for numpy and Python, torch's own generator size). Else a UserError naming
    the file and the value; nothing is restored."""
    def bad(what):
        return UserError(f"--resume: the training state {path} is damaged or tampered ({what}); resume from "
                         f"another checkpoint or start again with --overwrite")

    pos = state["position"]
    for key in ("step", "epoch", "batch"):
        if key not in pos:
            raise bad(f"no {key}")
    for key, v in pos.items():
        if not isinstance(v, int) or not 0 <= v < MAX_POSITION:
            raise bad(f"{key} = {v}")
    rng = state["rng"]
    try:
        ref = torch.get_rng_state()
        t = rng["torch"]
        if not torch.is_tensor(t) or t.dtype != ref.dtype or t.shape != ref.shape:
            raise bad("torch RNG state of the wrong kind")
        name, key, p, has_gauss, gauss = rng["numpy"]
        key = np.asarray(key)
        if name != "MT19937" or key.shape != (624,) or not 0 <= int(p) <= 624 or int(has_gauss) not in (0, 1) \
                or not np.isfinite(float(gauss)):
            raise bad(f"numpy RNG state {str(name)[:40]!r}")
        version, pkey, pgauss = rng["python"]
        if version != 3 or len(pkey) != 625 or not all(0 <= int(k) < 2 ** 32 for k in pkey[:624]) \
                or not 0 <= int(pkey[624]) <= 624 or not (pgauss is None or isinstance(pgauss, float)):
            raise bad("Python RNG state")
        for c in rng["cuda"]:
            if not torch.is_tensor(c) or c.dtype != torch.uint8 or c.ndim != 1 or c.numel() > 1 << 16:
                raise bad("CUDA RNG state")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a state of another shape: one line
        raise bad(f"{type(e).__name__}: {e}") from None
    return state


def restore_rng(state: dict) -> None:
    """Set this process's RNG states to those read by read_train_state."""
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
