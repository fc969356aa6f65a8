"""Minimal HTTP/1.1 on loopback for the agent: a client for Envoy's admin
API and the agent's own admin server. Off the request path, so plain
asyncio streams, one request per connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["AdminHttpServer", "Reply", "parse_address", "read_chunked", "read_request", "request"]

_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
#: (status, body, content type)
Reply = tuple[int, bytes, str]


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) → (host, port); an empty host is 127.0.0.1."""
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _dechunk(body: bytes) -> bytes:
    out, i = [], 0
    while True:
        end = body.index(b"\r\n", i)
        size = int(body[i:end].split(b";", 1)[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[end + 2:end + 2 + size])
        i = end + 2 + size + 2


async def read_chunked(reader: asyncio.StreamReader, max_body: int = 1 << 20) -> bytes:
    """A chunked body from `reader`, its chunks joined (no trailers expected); ValueError over `max_body` bytes."""
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return body
        body += (await reader.readexactly(size + 2))[:-2]
        if len(body) > max_body:
            raise ValueError("body too large")


async def read_request(reader: asyncio.StreamReader, max_body: int = 1 << 20) -> tuple[str, str, str, dict[str, str], bytes]:
    """One request from `reader`: (method, target, version, headers with lower-case names, body).

    The body is read by ``content-length`` or chunked. Raises ValueError for a
    malformed request line or a body over `max_body` bytes, and
    ``asyncio.IncompleteReadError`` when the peer closes first.
    """
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3:
        raise ValueError(f"bad request line: {lines[0][:80]!r}")
    method, target, version = parts
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return method, target, version, headers, await read_chunked(reader, max_body)
    length = int(headers.get("content-length") or 0)
    if length > max_body:
        raise ValueError("request body too large")
    return method, target, version, headers, await reader.readexactly(length) if length else b""


async def request(port: int, method: str, path: str, *, timeout: float = 2.0, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """One request to ``host:port``; returns (status, body). Raises OSError or TimeoutError."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n".encode())
            data = await reader.read()
        finally:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise OSError(f"bad HTTP response from 127.0.0.1:{port}: {data[:80]!r}") from None
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = _dechunk(body)
    return status, body


def json_reply(status: int, obj: Any) -> Reply:
    return status, json.dumps(obj, indent=1, default=str).encode(), "application/json"


def text_reply(status: int, text: str) -> Reply:
    return status, text.encode(), "text/plain"


class AdminHttpServer:
    """``handler(method, path_with_query) -> Reply`` on ``127.0.0.1:port`` (0 picks one)."""

    def __init__(self, port: int, handler: Callable[[str, str], Awaitable[Reply]], host: str = "127.0.0.1") -> None:
        self.host, self.port, self.handler = host, port, handler
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                async with asyncio.timeout(30):
                    method, target, version, headers, _ = await read_request(reader)
                try:
                    status, body, ctype = await self.handler(method, target)
                except Exception as exc:  # noqa: BLE001 - the admin endpoint must answer
                    status, body, ctype = text_reply(500, f"admin error: {exc!r}\n")
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                writer.write(
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\ncontent-type: {ctype}\r\n"
                    f"content-length: {len(body)}\r\nserver: knotwork\r\n{'connection: close' + chr(13) + chr(10) if close else ''}\r\n".encode()
                    + (b"" if method == "HEAD" else body))
                await writer.drain()
                if close:
                    return
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()
