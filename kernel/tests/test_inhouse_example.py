"""The in-house plugin example, installed as a user would: seen and checked by the real CLI."""

from __future__ import annotations

import subprocess
import sys


def knotwork(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "knotwork", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_knotwork_plugins_lists_it(inhouse_plugin, tmp_path):
    result = knotwork("plugins", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line for line in result.stdout.splitlines()[1:] if line[:1].isdigit()}
    assert "tenant" in rows, result.stdout
    assert rows["tenant"].split()[2:4] == ["acme-knotwork-tenant", "0.1.0"]
    assert "authorizers:tenant" in rows["tenant"] and "compilers:tenant-authz" in rows["tenant"]


def test_knotwork_plugins_marks_it_selected(inhouse_plugin):
    result = knotwork("plugins", "--mesh", str(inhouse_plugin))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line.split() for line in result.stdout.splitlines()[1:] if line[:1].isdigit()}
    assert rows["tenant"][4] == "yes"


def test_knotwork_check_passes(inhouse_plugin):
    result = knotwork("check", str(inhouse_plugin))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{inhouse_plugin / 'knotwork.yaml'}: ok (platform local, engine native)"
