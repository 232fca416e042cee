"""Shared test helpers (importable from the test files: pytest puts tests/ on sys.path)."""


def tiny_cfg(**model):
    """The tiny preset shrunk further, with a random 2-layer BERT: models that build and run in a second."""
    from melp_fast.config import get_preset

    cfg = get_preset("tiny")
    cfg.model.text_encoder = "random:tiny"
    cfg.model.text_freeze_layers = 1
    cfg.model.width, cfg.model.ffn, cfg.model.conv_channels = 64, 128, 32
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return cfg


def free_port() -> int:
    """A TCP port free on loopback now (launchers of concurrent test runs must not collide on a fixed one)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- CI: no silent skips
def in_ci() -> bool:
    """True where the environment variable CI is true (CI=true, as GitHub Actions and most CI services set it)."""
    import os

    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(reason: str):
    """Skip the calling test with ``reason``; under CI=true fail it instead, so that a test that cannot run (a missing
    launcher, missing fixture data) is never silently passed over there. Not for tests that need CUDA: those skip on
    CPU machines everywhere."""
    import pytest

    if in_ci():
        pytest.fail(f"cannot run under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


# ------------------------------------------------------------------------------------------- real recordings
from pathlib import Path as _Path  # noqa: E402

FIXTURES = _Path(__file__).resolve().parent / "data"
MIT = FIXTURES / "mitbih" / "100"  # 5 min of MIT-BIH record 100 (WFDB, path without extension), tests/data/README.md
MIT_FILES = tuple(MIT.with_suffix(e) for e in (".hea", ".dat", ".atr"))


def pydicom_ecg():
    """pydicom's 12-lead test ECG (waveform_ecg.dcm) from the installed pydicom, or None when it is not there."""
    try:
        import pydicom.data
    except ImportError:
        return None
    p = _Path(pydicom.data.__file__).resolve().parent / "test_files" / "waveform_ecg.dcm"
    if p.is_file():
        return p
    try:  # pydicom may keep its test files elsewhere (never downloads here)
        found = pydicom.data.get_testdata_file("waveform_ecg.dcm", download=False)
    except Exception:  # noqa: BLE001  (TypeError on versions without `download`, lookup errors)
        return None
    return _Path(found) if found and _Path(found).is_file() else None


DCM = pydicom_ecg() or FIXTURES / "waveform_ecg.dcm"  # a copy put here serves where pydicom lacks the file


def need_fixture(*paths):
    """skip_or_fail unless every path exists (the fixture files are committed: tests/test_fixtures.py fails on a
    missing one in any environment)."""
    missing = [str(p) for p in paths if not _Path(p).is_file()]
    if missing:
        skip_or_fail(f"fixture data missing: {', '.join(missing)}")


# ------------------------------------------------------------------------------------------- random seeds
# Every test that draws random inputs takes them from rng_for(<its name>, ...): fixed by default, so CI is repeatable;
# the base seed is printed in pytest's header and in every failure's report, with the command that replays it.
# MELP_TEST_SEED=<int>: another fixed set; MELP_TEST_SEED=random: a fresh base seed for the session (printed too).
SEED_ENV = "MELP_TEST_SEED"
DEFAULT_SEED = 2026
_base_seed = None
SEEDS_USED: list = []  # keys drawn during the current test (conftest clears it and reports it)
SEEDED_FILES: set = set()  # the test files that drew (their failures name the base seed and the replay command)


def base_seed() -> int:
    """The session's base seed: MELP_TEST_SEED (an integer, or "random": drawn once per process), else 2026."""
    global _base_seed
    if _base_seed is None:
        import os

        v = os.environ.get(SEED_ENV, "").strip()
        if v == "random":
            import secrets

            _base_seed = secrets.randbelow(2**31)
        elif v:
            try:
                _base_seed = int(v)
            except ValueError:
                raise ValueError(f"{SEED_ENV}={v!r}: expected an integer or 'random'") from None
        else:
            _base_seed = DEFAULT_SEED
    return _base_seed


def rng_for(*key):
    """The random generator of one test (or module, or case), named by ``key``: seeded from the base seed and the
    key's crc32, so each test draws its own inputs, whatever runs before it."""
    import zlib

    import numpy as np

    import sys

    name = "-".join(map(str, key))
    SEEDS_USED.append(name)
    f = sys._getframe(1)
    while f is not None:  # the test file that asked (directly or through a fixture or module-level draw)
        fn = _Path(f.f_code.co_filename)
        if fn.name.startswith("test_") and fn.parent == FIXTURES.parent:
            SEEDED_FILES.add(str(fn))
            break
        f = f.f_back
    return np.random.default_rng([base_seed(), zlib.crc32(name.encode())])


def seed_for(*key, high: int = 2**31) -> int:
    """An integer seed in [0, high) for ``key`` (see rng_for)."""
    return int(rng_for(*key).integers(0, high))


def replay_hint(nodeid: str = "") -> str:
    """How to replay the current draws."""
    return f"{SEED_ENV}={base_seed()} python -m pytest {nodeid!r}" if nodeid else f"{SEED_ENV}={base_seed()}"


def crafted_mat(path, n_sig: int, n_samples: int, data_bytes: int, int16: bool, level: int = 9) -> None:
    """A MATLAB v5 file whose one variable 'val' says int16 (or int8) [n_sig, n_samples] and whose zlib-compressed
    data element holds data_bytes zero bytes (about 1 KB per MB compressed): an honest record when data_bytes matches
    the shape, a decompression bomb when it does not."""
    import zlib

    import numpy as np

    def tag(mdtype, nbytes):
        return np.array([mdtype, nbytes], "<u4").tobytes()

    def pad8(b):
        return b + b"\0" * (-len(b) % 8)

    mx_class, mi_type = (10, 3) if int16 else (8, 1)  # mxINT16_CLASS / miINT16, mxINT8_CLASS / miINT8
    head = (tag(6, 8) + np.array([mx_class, 0], "<u4").tobytes()  # array flags
            + tag(5, 8) + np.array([n_sig, n_samples], "<i4").tobytes()  # dimensions
            + pad8(tag(1, 3) + b"val") + tag(mi_type, data_bytes))  # name, then the data element
    body_len = len(head) + data_bytes + (-data_bytes % 8)
    comp = zlib.compressobj(level)
    parts = [comp.compress(tag(14, body_len) + head)]
    chunk = b"\0" * (1 << 24)
    left = data_bytes + (-data_bytes % 8)
    while left:
        k = min(left, len(chunk))
        parts.append(comp.compress(chunk[:k]))
        left -= k
    parts.append(comp.flush())
    data = b"".join(parts)
    header = b"MATLAB 5.0 MAT-file, crafted".ljust(116) + b"\0" * 8 + np.array([0x0100], "<u2").tobytes() + b"IM"
    _Path(path).write_bytes(header + tag(15, len(data)) + data)


def spawn(worker, args, nprocs: int, limit_s: float, what: str) -> None:
    """Run worker(rank, *args) on `nprocs` spawned processes; fail the test (killing them) after limit_s seconds."""
    import time

    import pytest
    import torch.multiprocessing as mp

    ctx = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.time() + limit_s
    while not ctx.join(timeout=2):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{what} timed out after {limit_s:.0f} s")


def run_python(code: str, args: list[str], timeout: float = 600):
    """`python -c code args...` from the repository root with one OpenMP thread; the CompletedProcess (text)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=_Path(__file__).resolve().parent.parent, env=env,
                          capture_output=True, text=True, timeout=timeout)


def export_tiny(folder, seed: int):
    """An untrained tiny model (torch seed `seed`) exported to `folder`; the exported folder."""
    import torch

    from melp_fast.inference.export import export_model
    from melp_fast.model.melp import MELP

    torch.manual_seed(seed)
    cfg = tiny_cfg()
    return export_model(MELP(cfg.model), cfg, folder)
