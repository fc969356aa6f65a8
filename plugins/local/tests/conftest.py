"""Fixtures of the local plugin's tests: a plugin manager with this plugin and
stand-ins for the roles a mesh file needs (engine, router, load balancer)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from knotwork import ProxyEngine, Strategy, hookimpl
from knotwork.kernel import Hooks, make_plugin_manager
from knotwork_local import _hooks


class _StandIns:
    """Records named like the defaults, so a mesh file validates without other plugins."""

    @hookimpl
    def knotwork_proxy_engines(self):
        return [ProxyEngine(name="native", control_server=object, proxy=object)]

    @hookimpl
    def knotwork_routers(self):
        return [Strategy(name="host", factory=object)]

    @hookimpl
    def knotwork_load_balancers(self):
        return [Strategy(name="round_robin", factory=object)]


@pytest.fixture
def hooks() -> Hooks:
    return Hooks(make_plugin_manager(entry_points=False, plugins=[("local", _hooks), ("standins", _StandIns())]))


@pytest.fixture
def mesh_file(tmp_path: Path):
    """Write a mesh file from YAML text (dedented); returns its path."""

    def write(text: str) -> Path:
        path = tmp_path / "knotwork.yaml"
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
