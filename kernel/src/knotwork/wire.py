"""gRPC with JSON payloads: the codec and a tiny service helper.

Knotwork's own gRPC services (native config distribution, the control
plane's admin socket) carry plain JSON documents through grpclib, so the
attrs resources travel unstructured without a protobuf schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from grpclib.const import Cardinality, Handler
from grpclib.encoding.base import CodecBase

__all__ = ["JSONCodec", "JsonService", "unary"]


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
