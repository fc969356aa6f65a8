"""The import boundaries (import-linter, root pyproject.toml) and plugin packaging conventions."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())


def importlinter() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def package_of(plugin_dir: Path) -> str:
    (package,) = [p.name for p in (plugin_dir / "src").iterdir() if (p / "__init__.py").exists()]
    return package


def test_lint_imports_passes():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_there_are_plugins():
    assert {p.name for p in PLUGINS} >= {"local", "native", "routing", "balancers"}


@pytest.mark.parametrize("plugin_dir", PLUGINS, ids=lambda p: p.name)
def test_every_plugin_is_in_the_contract(plugin_dir):
    """A new plugins/<name>/ must be added to every contract, or it could import anything."""
    config = importlinter()
    package = package_of(plugin_dir)
    assert package in config["root_packages"], f"add {package!r} to [tool.importlinter] root_packages"
    contracts = {c["name"]: c for c in config["contracts"]}
    assert package in contracts["The kernel imports no plugin"]["forbidden_modules"]
    assert package in contracts["No plugin imports another"]["modules"]


@pytest.mark.parametrize("plugin_dir", PLUGINS, ids=lambda p: p.name)
def test_plugin_naming(plugin_dir):
    """plugins/<name>: distribution knotwork-<name>, package knotwork_<name>, entry point <name>."""
    name = plugin_dir.name
    project = tomllib.loads((plugin_dir / "pyproject.toml").read_text())["project"]
    assert project["name"] == f"knotwork-{name}"
    assert package_of(plugin_dir) == f"knotwork_{name}"
    assert project["entry-points"]["knotwork"] == {name: f"knotwork_{name}._hooks"}


def test_the_contract_lists_no_missing_plugin():
    config = importlinter()
    packages = {package_of(p) for p in PLUGINS} | {"knotwork"}
    assert set(config["root_packages"]) == packages
