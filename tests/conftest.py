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


# ----------------------------------------------------------------------------------- real recordings (../shared/data)
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MIT = DATA / "mitbih" / "100"  # MIT-BIH record 100 (path without extension)
DCM = DATA / "dicom" / "waveform_ecg.dcm"  # pydicom's annotated 12-lead test ECG


@pytest.fixture(scope="session")
def mit():
    """MIT-BIH record 100: (signal [2, n] in mV, fs, annotated beats); skipped when wfdb or the data is missing."""
    pytest.importorskip("wfdb")
    if not (MIT.parent / "100.dat").exists():
        pytest.skip("shared/data/mitbih not present")
    sys.path.insert(0, str(ROOT))
    from benchmarks import beat_cases as bc

    return bc.load_mitbih(MIT)


@pytest.fixture(scope="session")
def dcm():
    """The annotated DICOM 12-lead record: (signal [12, 10000] in microvolts, 1000 Hz, annotated beats)."""
    pytest.importorskip("pydicom")
    if not DCM.exists():
        pytest.skip("shared/data/dicom not present")
    sys.path.insert(0, str(ROOT))
    from benchmarks import beat_cases as bc

    return bc.load_dicom_annotated(DCM)
