"""Upstream HTTP/1.1 connections and their per-endpoint pools.

An :class:`UpstreamConnection` parses responses with httptools and hands
them, callback by callback, to the exchange it currently serves (an object
with ``up_head``/``up_body``/``up_done``/``up_lost``). Idle connections wait in
their :class:`EndpointPool`, newest first (LIFO), and still read, so a close by
the upstream is seen and the connection dropped from the pool.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools

__all__ = ["EndpointPool", "Pools", "UpstreamConnection"]

#: Idle connections kept per endpoint; older ones beyond it are closed.
MAX_IDLE = 128
_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
    b"proxy-authenticate",
})
_CONN_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade", b""})


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an endpoint; serves one exchange at a time."""

    __slots__ = (
        "chunked", "closed", "delimited", "drop", "ex", "got_bytes", "keep_alive", "length", "parser", "parts",
        "pool", "reused", "transport",
    )

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Any = None
        self.parts: list[bytes] = []  # response header lines to forward, hop-by-hop ones removed
        self.drop: list[bytes] | None = None
        self.closed = False
        self.reused = False
        self.got_bytes = False  # any byte of the current response received
        self.keep_alive = True
        self.chunked = False
        self.length = False
        self.delimited = False  # the current response's body ends at connection close

    # ── asyncio.Protocol ─────────────────────────────────────────────────
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.stats["upstream_cx_total"] += 1
        self.pool.stats["upstream_cx_active"] += 1

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:  # an idle connection must not talk: drop it
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.keep_alive = False
            ex = self.ex
            self.ex = None
            self.close()
            if ex is not None:
                ex.up_lost(self, exc, protocol_error=True)
            return
        ex = self.ex
        if ex is not None and ex.out:
            ex.flush()

    def eof_received(self) -> bool:
        ex = self.ex
        if ex is not None and self.delimited:
            self.delimited = False
            self.keep_alive = False
            self.ex = None
            ex.up_done(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.pool.stats["upstream_cx_active"] -= 1
        self.pool.forget(self)
        ex = self.ex
        if ex is not None:
            self.ex = None
            ex.up_lost(self, exc, protocol_error=False)

    def pause_writing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.up_pause_writing()

    def resume_writing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.up_resume_writing()

    # ── httptools callbacks ──────────────────────────────────────────────
    def on_message_begin(self) -> None:
        self.parts = []
        self.chunked = self.length = False
        self.drop = None

    def on_header(self, name: bytes, value: bytes) -> None:
        n = name.lower()
        if n in _HOP:
            if n == b"transfer-encoding":
                self.chunked = True
            elif n == b"connection":
                extra = [t for t in (t.strip() for t in value.lower().split(b",")) if t not in _CONN_TOKENS]
                if extra:
                    self.drop = (self.drop or []) + extra
            return
        if n == b"content-length":
            self.length = True
        self.parts += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200 and status != 101:
            return  # interim response (100 Continue): swallowed, the final one follows
        self.keep_alive = keep = parser.should_keep_alive()
        if self.drop:
            drop = set(self.drop)
            parts = self.parts
            self.parts = [b for i in range(0, len(parts), 4) if parts[i].lower() not in drop for b in parts[i:i + 4]]
        ex = self.ex
        if ex is not None:
            ex.up_head(self, status, keep)

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is not None:
            ex.up_body(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return
        ex = self.ex
        if ex is not None:
            self.ex = None
            self.delimited = False
            ex.up_done(self)

    # ── used by the pool and exchanges ───────────────────────────────────
    def close(self) -> None:
        """Close now (pending writes are flushed); never returns to the pool."""
        if not self.closed:
            self.closed = True
            self.pool.stats["upstream_cx_active"] -= 1
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Reset the connection (an exchange gave up on it mid-way)."""
        self.ex = None
        self.close()
        if self.transport is not None:
            self.transport.abort()


class EndpointPool:
    """Keep-alive connections to one endpoint (address, port)."""

    __slots__ = ("address", "connecting", "idle", "label", "loop", "port", "retired", "stats")

    def __init__(self, address: str, port: int, stats: dict[str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.address = address
        self.port = port
        self.label = f"{address}:{port}"
        self.idle: list[UpstreamConnection] = []
        self.stats = stats
        self.loop = loop
        self.retired = False
        self.connecting = 0

    def pop_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        """Return a connection after an exchange (or close it)."""
        conn.ex = None
        if reusable and not self.retired and not conn.closed and conn.keep_alive:
            conn.got_bytes = False
            transport = conn.transport
            if transport is not None and not transport.is_reading():
                transport.resume_reading()
            self.idle.append(conn)
            if len(self.idle) > MAX_IDLE:
                self.idle.pop(0).close()
        else:
            conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    async def connect(self, timeout: float) -> UpstreamConnection:
        """Open a new connection (raises OSError or TimeoutError)."""
        self.connecting += 1
        try:
            async with asyncio.timeout(timeout):
                _, conn = await self.loop.create_connection(lambda: UpstreamConnection(self), self.address, self.port)
        finally:
            self.connecting -= 1
        return conn

    def close(self) -> None:
        """Retire the pool: close idle connections; busy ones close when done."""
        self.retired = True
        while self.idle:
            self.idle.pop().close()


class Pools(dict[tuple[str, int], EndpointPool]):
    """All endpoint pools of a data plane, keyed by (address, port)."""

    def __init__(self, stats: dict[str, int], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.stats = stats
        self.loop = loop

    def __missing__(self, key: tuple[str, int]) -> EndpointPool:
        pool = self[key] = EndpointPool(key[0], key[1], self.stats, self.loop)
        return pool

    def keep_only(self, keys: set[tuple[str, int]]) -> None:
        """Retire pools of endpoints no cluster uses any more."""
        for key in [k for k in self if k not in keys]:
            self.pop(key).close()

    def close(self) -> None:
        for pool in self.values():
            pool.close()
        self.clear()

    def idle_count(self) -> int:
        return sum(len(p.idle) for p in self.values())
