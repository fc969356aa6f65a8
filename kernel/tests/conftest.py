"""Shared fixtures of the kernel's tests (the plugin-testing fixtures come from knotwork.testing)."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "inhouse-plugin"


@pytest.fixture(scope="session")
def inhouse_plugin() -> Path:
    """The in-house example, installed into this environment (``make venv`` does it;
    otherwise it is installed editable once, here). Returns its directory."""
    try:
        importlib.metadata.distribution("acme-knotwork-tenant")
    except importlib.metadata.PackageNotFoundError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "-e", str(EXAMPLE)],
                       check=True, timeout=300)
        importlib.invalidate_caches()
    return EXAMPLE
