"""The package map holds: the import graph of melp_fast/ and kernels/ (every import, those inside functions too,
read with ast) has no cycle and no edge against the layering

    errors, config, options < data < model < checks, losses, plots, testing < the wings (inference < eval < training)
        < the scripts (train, text_pretrain) < demo < cli

- data/ imports neither model/ nor a wing; model/ imports no wing;
- the wings: inference < eval < training (eval loads exported models; training validates on eval's tasks), never
  the other way, and none imports the scripts, demo or cli;
- kernels/ (melp_kernels) imports nothing from melp_fast;
- the library never imports melp_fast.testing (the tests' and benchmarks' support).

Each rule is also run on a planted violation, so that a rule that cannot fail is noticed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WINGS = ("inference", "eval", "training")  # a wing imports only the wings before it
SCRIPTS = ("train", "text_pretrain", "demo", "cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "kernels":
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def read_sources() -> dict[str, tuple[Path, str]]:
    """{module: (path, source)} of every module under melp_fast/ and kernels/melp_kernels/."""
    files = sorted((ROOT / "melp_fast").rglob("*.py")) + sorted((ROOT / "kernels" / "melp_kernels").rglob("*.py"))
    return {module_name(p): (p, p.read_text(encoding="utf-8")) for p in files}


def import_graph(sources: dict[str, tuple[Path, str]]) -> dict[str, set[str]]:
    """{module: the project modules it imports}. ``from pkg import name`` counts as pkg.name when that is a
    module; a package's own __init__ is not implied by importing one of its modules (it is not an edge)."""
    graph = {}
    for mod, (path, src) in sources.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(src, str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in sources else origin for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in sources:  # `import melp_fast.data.store` and `from x.y import z` (z a name)
                    t = t.rpartition(".")[0]
                if t and t != mod and t.split(".")[0] in ("melp_fast", "melp_kernels"):
                    edges.add(t)
        graph[mod] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path a -> ... -> a), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


# below data/: they import nothing else of the project (options: every command's parser, built from config alone, so
# that data/preprocess.py and the wings parse with it and `--help` imports nothing heavy)
BASE = ("melp_fast.errors", "melp_fast.config", "melp_fast.options")


def _part(mod: str) -> str:
    """The layer a module belongs to: base (errors, config, options), data, model, core (the shared modules above model:
    checks, losses, plots, testing), a wing, a script, kernels, or root."""
    parts = mod.split(".")
    if parts[0] == "melp_kernels":
        return "kernels"
    if len(parts) == 1:
        return "root"  # melp_fast/__init__.py: the public entry, above everything
    if mod in BASE:
        return "base"
    if parts[1] in ("data", "model", *WINGS, *SCRIPTS):
        return parts[1]
    return "core"


def violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, targets in sorted(graph.items()):
        src = _part(mod)
        for t in sorted(targets):
            dst = _part(t)
            if t.startswith("melp_fast.testing") and not mod.startswith("melp_fast.testing"):
                bad.append(f"{mod} -> {t}: the library never imports melp_fast.testing (test support)")
            elif src == "base" and dst != "base":
                bad.append(f"{mod} -> {t}: errors, config and options import nothing else of the project")
            elif src in ("data", "model") and dst == "core":
                bad.append(f"{mod} -> {t}: data/ and model/ import only errors and config of the shared modules")
            elif src == "kernels" and not t.startswith("melp_kernels"):
                bad.append(f"{mod} -> {t}: kernels import nothing from melp_fast")
            elif src == "data" and dst in ("model", *WINGS, *SCRIPTS):
                bad.append(f"{mod} -> {t}: data/ never imports model/, a wing or a script")
            elif src == "model" and dst in (*WINGS, *SCRIPTS):
                bad.append(f"{mod} -> {t}: model/ never imports a wing or a script")
            elif src == "core" and dst in (*WINGS, *SCRIPTS):
                bad.append(f"{mod} -> {t}: the shared modules (config, errors, checks, losses, plots) import no "
                           f"wing or script")
            elif src in WINGS and dst in SCRIPTS:
                bad.append(f"{mod} -> {t}: a wing never imports the scripts, demo or cli")
            elif src in WINGS and dst in WINGS and WINGS.index(dst) > WINGS.index(src):
                bad.append(f"{mod} -> {t}: the wings go {' < '.join(WINGS)}; {src} cannot import {dst}")
            elif src in SCRIPTS and dst in SCRIPTS and SCRIPTS.index(dst) > SCRIPTS.index(src) and \
                    not (src, dst) == ("train", "text_pretrain"):
                bad.append(f"{mod} -> {t}: the scripts go train / text_pretrain < demo < cli")
    return bad


def test_no_import_cycle():
    graph = import_graph(read_sources())
    assert len(graph) > 40 and graph["melp_fast.train"], "the import graph was not read"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layering():
    graph = import_graph(read_sources())
    assert violations(graph) == []


def test_wings_are_folders():
    for wing in ("data", "model", *WINGS):
        assert (ROOT / "melp_fast" / wing / "__init__.py").is_file(), wing


PLANTED = [  # (module, the line planted into it, what must be reported)
    ("melp_fast.data.store", "from ..model.melp import MELP\n", "data/ never imports model/"),
    ("melp_fast.model.text", "from ..training import engine\n", "model/ never imports a wing"),
    ("melp_kernels.infonce", "import melp_fast.config\n", "kernels import nothing from melp_fast"),
    ("melp_fast.inference.export", "def f():\n    from ..eval.zero_shot import zero_shot\n", "the wings go"),
    ("melp_fast.eval.metrics", "from .. import cli\n", "a wing never imports the scripts"),
    ("melp_fast.checks", "from .training.engine import Trainer\n", "the shared modules"),
    ("melp_fast.train", "from melp_fast.testing import common\n", "never imports melp_fast.testing"),
    ("melp_fast.config", "from .data import constants\n", "errors, config and options import nothing else"),
    ("melp_fast.options", "from .checks import check_device\n", "errors, config and options import nothing else"),
    ("melp_fast.data.signal", "from ..checks import check_device\n", "data/ and model/ import only errors"),
]


@pytest.mark.parametrize("mod,line,message", PLANTED, ids=[p[0] for p in PLANTED])
def test_planted_violation_is_reported(mod, line, message):
    sources = read_sources()
    path, src = sources[mod]
    sources[mod] = (path, src + "\n" + line)
    found = violations(import_graph(sources))
    assert any(message in v and v.startswith(mod + " ->") for v in found), found


def test_planted_cycle_is_found():
    sources = read_sources()
    path, src = sources["melp_fast.data.constants"]
    sources["melp_fast.data.constants"] = (path, src + "\ndef f():\n    from . import store\n")  # store -> constants
    cycle = find_cycle(import_graph(sources))
    assert cycle is not None and "melp_fast.data.constants" in cycle and "melp_fast.data.store" in cycle, cycle


# ------------------------------------------------------------------------------------------------ repository hygiene
def _path_edits(src: str, where: str) -> list[str]:
    """Calls that change sys.path (sys.path.insert / append / extend, and sys.path[...] = ...)."""
    found = []
    for node in ast.walk(ast.parse(src, where)):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t.value for t in targets if isinstance(t, ast.Subscript)), None)
        if isinstance(target, ast.Attribute) and target.attr == "path" and \
                isinstance(target.value, ast.Name) and target.value.id == "sys":
            found.append(f"{where}:{node.lineno}")
    return found


def test_no_test_or_benchmark_edits_sys_path():
    """Tests import the installed package (and melp_fast.testing); benchmarks run as scripts beside each other."""
    files = sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    assert len(files) > 20
    found = [hit for f in files for hit in _path_edits(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert found == []
    planted = "import sys\nsys.path.insert(0, 'x')\nsys.path[:0] = ['y']\n"
    assert len(_path_edits(planted, "planted.py")) == 2


def test_no_citation_of_a_file_outside_the_repository():
    """The method specification the code cites is docs/SPEC.md, inside the repository."""
    assert (ROOT / "docs" / "SPEC.md").is_file()
    files = [*(ROOT / "melp_fast").rglob("*.py"), *(ROOT / "kernels").rglob("*.py"), *(ROOT / "tests").glob("*.py"),
             *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md"]
    spec = "MELP_" + "SPEC"  # spelled apart, so that this file does not cite it either
    assert [str(f.relative_to(ROOT)) for f in files if spec in f.read_text(encoding="utf-8")] == []


ISSUE_NUMBER = re.compile(r"\b[Ii]ssues? #?\d+")
UPSTREAM = re.compile(r"\b(?:[Tt]riton|DeepSpeed|PyTorch|torch) issue #?\d+")  # public upstream bugs stay named


def issue_numbers(text: str) -> list[str]:
    """The project-issue numbers a text cites (a reader of a clone cannot follow them); upstream bugs are allowed."""
    return [m.group(0) for m in ISSUE_NUMBER.finditer(UPSTREAM.sub("", text))]


def test_no_issue_numbers():
    """Code, tests, docs and results name the behaviour, not the tracker entry that asked for it."""
    files = [*(ROOT / "melp_fast").rglob("*.py"), *(ROOT / "kernels").rglob("*.py"), *(ROOT / "tests").glob("*.py"),
             *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "benchmarks" / "results").rglob("*.md"),
             *(ROOT / "docs").glob("*.md"), ROOT / "README.md"]
    found = {str(f.relative_to(ROOT)): issue_numbers(f.read_text(encoding="utf-8")) for f in files}
    assert {k: v for k, v in found.items() if v} == {}
    a, b = "issue" + " 24", "issues" + " 3"  # spelled apart, so that this file does not cite them
    assert issue_numbers(f"as {a} asked; see {b}") == [a, b]
    assert issue_numbers("triton issue 11584 and DeepSpeed issue 5443") == []
