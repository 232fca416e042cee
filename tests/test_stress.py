"""Stress: the synthetic, augmentation and beat checks on many fresh random seeds, with their failure rates printed.
Not part of CI (pyproject.toml deselects the `stress` marker by default); run it with

    python -m pytest -m stress                      # MELP_STRESS_ROUNDS=10, MELP_STRESS_CASES=25 by default

- test_stress_modules: MELP_STRESS_ROUNDS rounds, each running test_synthetic, test_augment, test_beats and
  test_beats_provoking in a fresh process under a fresh MELP_TEST_SEED (MELP_STRESS_MODULES: another list); prints
  each test's failure rate and the command that replays each failure.
- test_stress_provoking_cases: the provoking beat cases (melp_fast.testing.beat_cases.synth_case) on MELP_STRESS_CASES
  fresh records per kind and sampling rate, our detector alone (Se and +P >= 99.5 %, no detection in the T-wave
  window); prints the failure rate per kind and rate and the failing record seeds.

Each test fails when it found a failure. A failure found this way becomes a fixed-seed regression case marked
`xfail(strict=True)` that names the behaviour it waits for, and a plain regression case once fixed (e.g.
test_beats_provoking.py's test_regression_bigeminy_250hz_seed_2013483785).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
from melp_fast.testing import beat_cases as bc  # noqa: E402
from melp_fast.testing.common import match_beats  # noqa: E402

pytestmark = pytest.mark.stress

MODULES = ("tests/test_synthetic.py", "tests/test_augment.py", "tests/test_beats.py", "tests/test_beats_provoking.py")


def _int_env(name, default):
    return int(os.environ.get(name, default))


def _say(capsys, text):
    with capsys.disabled():
        print(text, flush=True)


def test_stress_modules(tmp_path, capsys):
    rounds = _int_env("MELP_STRESS_ROUNDS", 10)
    modules = os.environ.get("MELP_STRESS_MODULES", " ".join(MODULES)).split()
    runs = defaultdict(int)
    failed = defaultdict(list)  # nodeid -> base seeds
    errors = []
    for k in range(rounds):
        base = secrets.randbelow(2**31)
        xml = tmp_path / f"round{k}.xml"
        env = dict(os.environ, MELP_TEST_SEED=str(base))
        env.pop("CI", None)
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not stress",
                            f"--junitxml={xml}", *modules], cwd=ROOT, env=env, capture_output=True, text=True)
        if not xml.is_file():
            errors.append(f"MELP_TEST_SEED={base}: pytest exited {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
            continue
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            outcome = [c.tag for c in case]
            if "skipped" in outcome:
                continue
            runs[name] += 1
            if "failure" in outcome or "error" in outcome:
                failed[name].append(base)
        _say(capsys, f"stress round {k + 1}/{rounds}: MELP_TEST_SEED={base}, "
                     f"{sum(1 for v in failed.values() if base in v)} failed")
    total_rounds = rounds - len(errors)
    red = len({b for v in failed.values() for b in v})
    lines = [f"\nstress: {total_rounds} rounds of {', '.join(modules)}; rounds with a failure: {red} / {total_rounds}"
             f" ({100.0 * red / max(1, total_rounds):.1f} %)"]
    for name in sorted(runs):
        if failed[name]:
            lines.append(f"  {len(failed[name]):3d} / {runs[name]:3d} ({100.0 * len(failed[name]) / runs[name]:5.1f} %)"
                         f"  {name}")
            lines += [f"        replay: MELP_TEST_SEED={b} python -m pytest '{name}'" for b in failed[name]]
    lines.append(f"  every other test ({sum(1 for n in runs if not failed[n])}): 0 failures")
    _say(capsys, "\n".join(lines))
    assert not errors, errors
    assert not any(failed.values()), "\n".join(lines)


def _case_fails(kind, fs, seed):
    x, ref = bc.synth_case(kind, fs, seed)
    n = x.shape[1]
    from melp_fast.data.beats import detect_r_peaks

    det = detect_r_peaks(x, fs)
    m, tol = int(0.1 * fs), int(round(0.15 * fs))
    tp, fn, _, _ = match_beats(ref[(ref >= m) & (ref < n - m)], det, tol)
    inner = det[(det >= m) & (det < n - m)]
    fp = match_beats(ref, inner, tol)[2]
    t_fp = bc.t_window_fp(ref, inner, fs)
    se, ppv = tp / max(1, tp + fn), tp / max(1, tp + fp)
    return se < 0.995 or ppv < 0.995 or t_fp > 0, f"Se {100 * se:.1f} +P {100 * ppv:.1f}, {t_fp} in the T window"


def test_stress_provoking_cases(capsys):
    n = _int_env("MELP_STRESS_CASES", 25)
    rng = np.random.default_rng()
    lines, bad = [f"\nstress: provoking beat cases, {n} fresh records per kind and rate (our detector alone)"], []
    for kind in bc.KINDS:
        row = []
        for fs in bc.RATES:
            seeds = rng.integers(0, 2**31, size=n)
            fails = []
            for s in seeds:
                f, what = _case_fails(kind, fs, int(s))
                if f:
                    fails.append(f"bc.synth_case({kind!r}, {fs}, {int(s)}): {what}")
            bad += fails
            row.append(f"{fs} Hz {100.0 * len(fails) / n:5.1f} %")
        lines.append(f"  {kind:12s} " + "   ".join(row))
    lines += [f"  failed: {b}" for b in bad]
    _say(capsys, "\n".join(lines))
    assert not bad, "\n".join(lines)
