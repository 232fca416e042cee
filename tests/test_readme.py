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


def what_is_where(readme: str) -> dict[str, list[str]]:
    """{path in the first column: the test files named in the last} of the README's "What is where" table."""
    section = readme.split("## What is where", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| `") and len(cells) >= 3:
            for path in re.findall(r"`([^`]+)`", cells[0]):
                rows[path] = re.findall(r"`(tests/[\w./-]+)`", cells[-1])
    return rows


def unlisted(readme: str) -> list[str]:
    """Modules of melp_fast/ and kernels/melp_kernels/ (empty __init__.py files aside) without a row naming an
    existing test file."""
    rows, bad = what_is_where(readme), []
    files = sorted((ROOT / "melp_fast").rglob("*.py")) + sorted((ROOT / "kernels" / "melp_kernels").rglob("*.py"))
    for f in files:
        rel = f.relative_to(ROOT).as_posix()
        if f.name == "__init__.py" and not f.read_text().strip():
            continue
        tests = rows.get(rel)
        if not tests:
            bad.append(f"{rel}: no row with its test file")
        else:
            bad += [f"{rel}: {t} does not exist" for t in tests if not (ROOT / t).exists()]
    return bad


def test_what_is_where_lists_every_module_with_its_tests():
    assert len(what_is_where(README)) > 50
    assert unlisted(README) == []


def test_a_module_missing_from_what_is_where_is_reported():
    row = "| `melp_fast/data/store.py` |"
    assert row in README
    without = "\n".join(line for line in README.splitlines() if not line.startswith(row))
    assert unlisted(without) == ["melp_fast/data/store.py: no row with its test file"]
    wrong = README.replace("`tests/test_synthetic.py`", "`tests/test_nowhere.py`")
    assert unlisted(wrong) == ["melp_fast/data/synthetic.py: tests/test_nowhere.py does not exist"]
