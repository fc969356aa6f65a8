"""Where `up`'s state goes: ``state.json`` and the platform socket.

Both follow a :class:`Source` (the supervisor): its current document, a
generation number bumped on every change, and a way to wait for a change.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog
from anyio.abc import TaskStatus

from . import state

__all__ = ["Source", "serve_platform", "write_state_loop"]

log = structlog.get_logger("knotwork.local", plugin="local")

WRITE_DEBOUNCE = 0.05  # seconds between two writes of state.json


class Source(Protocol):
    generation: int

    def document(self) -> dict[str, Any]: ...

    async def until(self, condition: Callable[[], bool]) -> None: ...


async def serve_platform(source: Source, path: Path, *,
                         task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve the state on a 0600 unix socket: the whole document on connect, then on every change."""
    path.unlink(missing_ok=True)
    old = os.umask(0o177)
    try:
        listener = await anyio.create_unix_listener(path)
    finally:
        os.umask(old)
    task_status.started()

    async def client(stream: Any) -> None:
        async with stream:
            try:
                while True:
                    generation = source.generation
                    await stream.send(state.json_line(source.document()))
                    await source.until(lambda: source.generation != generation)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return

    async with listener:
        await listener.serve(client)


async def write_state_loop(source: Source, state_dir: Path) -> None:
    """Rewrite state.json (atomically) after every change, at most every WRITE_DEBOUNCE seconds."""
    written = -1
    while True:
        await source.until(lambda: source.generation != written)
        written = source.generation
        try:
            state.write_state(state_dir, source.document())
        except OSError as exc:
            log.error("cannot write state.json", error=str(exc))
        await anyio.sleep(WRITE_DEBOUNCE)
