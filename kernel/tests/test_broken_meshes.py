"""Broken mesh files, checked by the real `knotwork check` in a subprocess.

Each file in ``broken/`` says in its header comments what `check` must print:
``# lines: N`` (stderr lines) and ``# expect: :LINE: path: message`` (the
start of each line after the file name, in order). Every case must exit 2,
print no traceback, and print only lines of the one format users can rely
on: ``FILE:LINE: dotted.path: expected X, got Y``.

They run against the plugins installed here (the first-party ones and the
in-house example); ``unknown_engine.yaml`` explains how engine/strategy
combinations are covered while only the native engine exists.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BROKEN = Path(__file__).parent / "broken"
CASES = sorted(BROKEN.glob("*.yaml"))
LINE = re.compile(r"^\S+:\d+: \S+: expected .+, got .+$")


def header(path: Path) -> tuple[int, list[str]]:
    comments = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    (count,) = [int(c.split(":", 1)[1]) for c in comments if c.startswith("lines:")]
    expects = [c.split(":", 1)[1].strip() for c in comments if c.startswith("expect:")]
    return count, expects


@pytest.fixture(scope="module")
def results(inhouse_plugin) -> dict[str, subprocess.CompletedProcess]:
    """Run every case at once (they are independent processes)."""
    procs = {case.name: subprocess.Popen([sys.executable, "-m", "knotwork", "check", str(case)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for case in CASES}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        out[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return out


def test_there_are_enough_cases():
    assert len(CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_broken_mesh(case, results):
    count, expects = header(case)
    result = results[case.name]
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    for line in lines:
        assert LINE.match(line), line
    assert len(lines) == count, result.stderr
    assert expects, f"{case.name}: say what to expect"
    for line, expect in zip(lines, expects, strict=False):
        assert line.startswith(f"{case}{expect}"), f"{line!r} does not start with {case}{expect!r}"


def test_a_missing_mesh_file(tmp_path):
    result = subprocess.run([sys.executable, "-m", "knotwork", "check", str(tmp_path / "nope.yaml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert LINE.match(line) and line.startswith(f"{tmp_path / 'nope.yaml'}:0: (file): expected a readable mesh file")
