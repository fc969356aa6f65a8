"""Fixtures of the config plugin's tests: a `files` source run under anyio in a tmp mesh dir."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from knotwork.model import MeshSettings, PlatformSnapshot
from knotwork.records import ComponentContext
from knotwork_config import FilesSettings, FilesSource


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def mesh_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mesh"
    (d / "config").mkdir(parents=True)
    (d / "knotwork.yaml").write_text("plugins: {platform: local}\n")
    return d


class Running:
    """A running FilesSource and the snapshots it pushed."""

    def __init__(self, source: FilesSource, receive: Any, rejections: list[tuple[str, list[str]]]) -> None:
        self.source, self.receive, self.rejections = source, receive, rejections
        self.latest: PlatformSnapshot | None = None

    async def until(self, predicate: Callable[[PlatformSnapshot], bool], timeout: float = 3.0) -> PlatformSnapshot:
        """The first snapshot (latest included) satisfying `predicate`, within `timeout` seconds."""
        with anyio.fail_after(timeout):
            while self.latest is None or not predicate(self.latest):
                self.latest = await self.receive.receive()
        return self.latest

    def names(self) -> list[str]:
        return [str(r) for r in self.latest.resources] if self.latest else []


@pytest.fixture
def run_source(mesh_dir: Path):
    """``async with run_source() as running``: the component started in a task group."""

    @asynccontextmanager
    async def run(settings: FilesSettings | None = None) -> AsyncIterator[Running]:
        rejections: list[tuple[str, list[str]]] = []  # what the control plane would count
        ctx = ComponentContext(mesh=MeshSettings(), settings=settings or FilesSettings(poll_interval=0.05),
                               mesh_dir=mesh_dir, state_dir=mesh_dir / ".knotwork",
                               rejected=lambda source, problems: rejections.append((source, problems)))
        send, receive = anyio.create_memory_object_stream[PlatformSnapshot](64)
        source = FilesSource(ctx)
        async with anyio.create_task_group() as tg, receive:
            await tg.start(source.run, send)
            yield Running(source, receive, rejections)
            tg.cancel_scope.cancel()

    return run
