"""The repository's folders never shadow a dependency when a process starts from the repository root.

transformers 5.x imports Hugging Face's PyPI package `kernels` (transformers.activations); the project keeps a
top-level folder `kernels/`, which must therefore be a source root (no __init__.py) holding `melp_kernels`.
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib.util, os, sys
root = os.path.realpath(sys.argv[1])
import transformers.activations  # noqa: F401  (imports `kernels` on transformers versions that depend on it)
import melp_kernels
spec = importlib.util.find_spec("kernels")
where = None if spec is None else os.path.realpath(spec.origin or next(iter(spec.submodule_search_locations)))
print("kernels:", where)
print("melp_kernels:", os.path.realpath(melp_kernels.__file__))
assert where is None or not where.startswith(os.path.join(root, "kernels") + os.sep) and where != os.path.join(root, "kernels"), where
assert os.path.realpath(melp_kernels.__file__).startswith(os.path.join(root, "kernels", "melp_kernels")) or \
    "site-packages" in melp_kernels.__file__, melp_kernels.__file__
"""


def test_kernels_folder_does_not_shadow_the_pypi_package():
    # `python -c` from the root puts the root first on sys.path, as `python -m pytest`, benchmarks and
    # `python -m melp_fast.train` do
    r = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kernels:" in r.stdout


def test_no_init_in_the_kernels_source_root():
    assert not (ROOT / "kernels" / "__init__.py").exists(), "kernels/ must stay a source root, not a package"
    assert (ROOT / "kernels" / "melp_kernels" / "__init__.py").exists()


def test_every_top_level_folder_is_not_an_importable_dependency_name():
    """No folder at the root that is a regular package, except the project's own melp_fast."""
    packages = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert set(packages) <= {"melp_fast"}, packages
