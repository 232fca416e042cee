"""benchmarks/results/ holds results only, each naming its command, machine and date and no machine path, and the
benchmark scripts write there only with --write."""

import argparse
import re
from pathlib import Path

import pytest

from melp_fast.testing.common import RESULTS, add_output, output_path

ROOT = Path(__file__).resolve().parent.parent
# a developer's checkout or home (the GPU gate's documented output folder /tmp/gate is not one)
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|Users|root|mnt|scratch)/|(?<![\w.~-])/tmp/(?!gate\b)")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
COMMAND = re.compile(r"(?:`|^    )(?:OMP_NUM_THREADS=\d+ )?(?:python|bash) benchmarks/\w+\.(?:py|sh)", re.MULTILINE)


def header_problems(text: str) -> list[str]:
    bad = []
    if not COMMAND.search(text):
        bad.append("no command (`python benchmarks/SCRIPT ...`)")
    if not re.search(r"\b(?:CPU|GPU|[Mm]achine)\b", text):
        bad.append("no machine line")
    if not DATE.search(text):
        bad.append("no date (YYYY-MM-DD)")
    return bad


def test_results_name_command_machine_and_date():
    """Each table at the top level, and each run folder's README, says how, where and when it was measured."""
    tables = sorted(RESULTS.glob("*.md")) + sorted(RESULTS.glob("*/README.md"))
    assert len(tables) > 10
    bad = {p.relative_to(ROOT).as_posix(): header_problems(p.read_text()) for p in tables}
    assert {k: v for k, v in bad.items() if v} == {}


def test_results_hold_no_machine_path():
    files = [p for p in sorted(RESULTS.rglob("*")) if p.is_file()]
    found = {p.relative_to(ROOT).as_posix(): MACHINE_PATH.findall(p.read_text(errors="replace")) for p in files}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_checks_can_fail():
    assert MACHINE_PATH.search('"cache": "/work/wt13/runs/data"') and MACHINE_PATH.search("--out /tmp/wt13_runs/x.md")
    assert not MACHINE_PATH.search("--out /tmp/gate/infonce.md") and not MACHINE_PATH.search("runs/tiny/model")
    assert header_problems("# a diary of runs\n\nit went well") == ["no command (`python benchmarks/SCRIPT ...`)",
                                                                    "no machine line", "no date (YYYY-MM-DD)"]


def test_scripts_write_results_only_with_write():
    """Every script that writes a table has --write; the default is to print it only."""
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    writers = [p for p in scripts if "write_text(" in p.read_text() or 'open(args.out, "w")' in p.read_text()]
    assert len(writers) >= 8
    missing = [p.name for p in writers if '"--write"' not in p.read_text() and "add_output(" not in p.read_text()]
    # gpu_summary writes into the gate's OUTDIR only; beats_parity writes only the beats FILE it is named and a
    # temporary copy of a git revision's detector, never a table
    allowed = {"gpu_summary.py", "beats_parity.py"}
    assert set(missing) <= allowed, missing
    for p in writers:
        src = p.read_text()
        assert 'default=str(ROOT / "benchmarks" / "results"' not in src, f"{p.name} writes into results by default"


def test_output_path():
    p = argparse.ArgumentParser()
    add_output(p)
    assert output_path(p.parse_args([]), "x_cpu.md") is None
    assert output_path(p.parse_args(["--write"]), "x_cpu.md") == str(RESULTS / "x_cpu.md")
    assert output_path(p.parse_args(["--out", "elsewhere/x.md"]), "x_cpu.md") == "elsewhere/x.md"
    with pytest.raises(SystemExit, match="add --write"):
        output_path(p.parse_args(["--out", str(RESULTS / "x_cpu.md")]), "x_cpu.md")
    assert output_path(p.parse_args(["--out", str(RESULTS / "y.md"), "--write"]), "x_cpu.md") == str(RESULTS / "y.md")
