"""gRPC with JSON payloads: the codec and a tiny service helper.

Knotwork's own gRPC services (native config distribution, the control
plane's admin socket) carry plain JSON documents through grpclib, so the
attrs resources travel unstructured without a protobuf schema.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio

from grpclib.const import Cardinality, Handler
from grpclib.encoding.base import CodecBase

__all__ = ["JSONCodec", "JsonService", "parse_address", "serving", "unary"]


class JSONCodec(CodecBase):
    """`application/grpc+json`: each message is one JSON document."""

    __content_subtype__ = "json"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return json.dumps(message, separators=(",", ":")).encode()

    def decode(self, data: bytes, message_type: Any) -> Any:
        return json.loads(data)


class JsonService:
    """A grpclib servable made of named JSON handlers.

    `handlers` maps a full method path (``/knotwork.v1.Admin/Call``) to
    ``(async handler(stream), Cardinality)``.
    """

    def __init__(self, handlers: dict[str, tuple[Callable[..., Any], Cardinality]]) -> None:
        self._handlers = handlers

    def __mapping__(self) -> dict[str, Handler]:
        return {path: Handler(fn, card, dict, dict) for path, (fn, card) in self._handlers.items()}


def unary(fn: Callable[[dict], Any]) -> tuple[Callable[..., Any], Cardinality]:
    """Wrap ``async fn(request) -> reply`` as a unary-unary JSON handler."""

    async def handle(stream: Any) -> None:
        request = await stream.recv_message()
        await stream.send_message(await fn(request or {}))

    return handle, Cardinality.UNARY_UNARY


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; an empty host is 127.0.0.1) as a tuple."""
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


@contextlib.asynccontextmanager
async def serving(server: Any, *, listen: tuple[str, int] | None = None, path: Path | None = None,
                  ssl: Any = None) -> AsyncIterator[Any]:
    """Run the grpclib `server` for the block: on `listen` (host, port; yields the bound
    address, so port 0 works) or on a unix socket at `path` that only this user may
    use (mode 0600, an old socket file replaced; yields `path`). On the way out the
    server is closed, calls in flight get up to a second, and the socket file goes.
    `ssl`: an ``ssl.SSLContext`` to serve TLS with (TCP only).
    """
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            await server.start(path=str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        bound: Any = path
    else:
        host, port = listen or ("127.0.0.1", 0)
        await server.start(host, port, reuse_address=True, ssl=ssl)
        bound = server._server.sockets[0].getsockname()[:2]  # noqa: SLF001 - grpclib exposes no bound address
    try:
        yield bound
    finally:
        server.close()
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await server.wait_closed()
        if path is not None:
            path.unlink(missing_ok=True)
