"""The README's examples run from a user's clone: no path outside the repository, the launcher form users are
told to use, and the example ECG that pydicom ships."""

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_points_only_inside_the_clone():
    assert "../shared" not in README and "/work/" not in README
    for path in re.findall(r"\((docs/[\w./-]+)\)", README) + re.findall(r"(configs/\w+\.json)", README):
        assert (ROOT / path).is_file(), path


def test_readme_shows_the_launch_forms():
    assert "deepspeed melp_fast/train.py --ds_config configs/" in README
    assert "--hostfile hostfile" in README
    assert re.search(r"torchrun --nnodes N --node_rank R .*--rdzv_backend c10d", README)


def test_generate_example_is_pydicoms_real_ecg():
    from melp_fast.data.sources.single import read_record
    from melp_fast.inference.generate import example_ecg

    path = example_ecg()
    assert path.name == "waveform_ecg.dcm" and path.is_file()
    signal, meta = read_record(path, raw=True)
    assert signal.shape == (12, 5000) and np.isfinite(signal).all() and np.ptp(signal) > 0.5
    assert not meta.get("missing_leads")
