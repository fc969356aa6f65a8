"""Fixtures of the local plugin's tests: a plugin manager with this plugin and
stand-ins for the roles a mesh file needs (engine, router, load balancer)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from knotwork import ProxyEngine, Strategy, hookimpl
from knotwork.kernel import Hooks
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
def local_hooks(hooks: Hooks, register_plugin) -> Hooks:
    """The kernel's `hooks` fixture with this plugin and the stand-ins registered."""
    register_plugin(_hooks, "local")
    register_plugin(_StandIns(), "standins")
    return hooks


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
