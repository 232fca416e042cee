import os

# The Triton interpreter must be switched on before any @triton.jit function is defined, so before the kernel
# modules are imported. On a machine with CUDA the kernels run compiled.
try:
    import torch

    _has_cuda = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# ------------------------------------------------------------------------------- real recordings (tests/data)

import pytest  # noqa: E402

import helpers  # noqa: E402  (tests/ is on sys.path, as for conftest itself)
from helpers import DCM, MIT, MIT_FILES, need_fixture  # noqa: E402,F401  (test files import the paths from here)


@pytest.fixture(scope="session")
def mit():
    """5 min of MIT-BIH record 100 (tests/data): (signal [2, n] in mV, fs, annotated beats)."""
    need_fixture(*MIT_FILES)
    from melp_fast.testing import beat_cases as bc

    return bc.load_mitbih(MIT)


@pytest.fixture(scope="session")
def dcm():
    """pydicom's annotated 12-lead test ECG: (signal [12, 10000] in microvolts, 1000 Hz, annotated beats)."""
    need_fixture(DCM)
    from melp_fast.testing import beat_cases as bc

    return bc.load_dicom_annotated(DCM)


@pytest.fixture
def recordings():
    """For modules that read the recordings' files themselves (pytestmark = pytest.mark.usefixtures("recordings")):
    skips where they are missing, fails under CI=true."""
    need_fixture(DCM, *MIT_FILES)


@pytest.fixture
def deepspeed_launcher():
    """The `deepspeed` launcher on PATH (pytest.mark.usefixtures("deepspeed_launcher")): skips where it is missing,
    fails under CI=true."""
    import shutil

    if shutil.which("deepspeed") is None:
        helpers.skip_or_fail("deepspeed launcher not on PATH")


# ------------------------------------------------------------------------------- random seeds (tests/helpers.py)
def pytest_report_header(config):
    how = f"from {helpers.SEED_ENV}" if os.environ.get(helpers.SEED_ENV) else "the fixed default"
    return (f"random seeds: {helpers.SEED_ENV}={helpers.base_seed()} ({how}; {helpers.SEED_ENV}=<int> for another "
            f"fixed set, {helpers.SEED_ENV}=random for a fresh one)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    helpers.SEEDS_USED.clear()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and (helpers.SEEDS_USED or str(item.path) in helpers.SEEDED_FILES):
        drawn = f" (drawn in this test: {', '.join(dict.fromkeys(helpers.SEEDS_USED))})" if helpers.SEEDS_USED else ""
        rep.sections.append(("random seeds", f"base seed {helpers.base_seed()}{drawn}; replay: "
                             f"{helpers.replay_hint(item.nodeid)}"))
