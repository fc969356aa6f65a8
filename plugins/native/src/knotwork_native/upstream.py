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

from .upstream_tls import connect as tls_connect

__all__ = ["HOP_BY_HOP", "REBUILD", "VERBATIM", "EndpointPool", "Pools", "UpstreamConnection"]

#: Idle connections kept per endpoint; older ones beyond it are closed.
MAX_IDLE = 128
#: Response headers never forwarded as they are (RFC 9110 §7.6.1, and what Envoy removes).
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
    b"proxy-authenticate",
})
_HOP_LENGTHS = frozenset(len(n) for n in HOP_BY_HOP)  # most header names are ruled out by their length alone
HEAD_PENDING, VERBATIM, REBUILD = 0, 1, 2


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an endpoint; serves one exchange at a time.

    A response the downstream can take as it is (keep-alive on both sides, no
    hop-by-hop header, HTTP/1.1 client) is forwarded byte for byte, head and
    body, one write per read (`mode` VERBATIM); otherwise its head is rebuilt
    and its body re-framed (`mode` REBUILD). Bytes read before the head is
    complete are held until the exchange decides (forward or retry).
    """

    __slots__ = (
        "closed", "delimited", "done", "ex", "extra", "got_bytes", "held", "hop", "interim", "keep_alive", "mode",
        "parser", "parts", "pool", "reused", "tick", "transport",
    )

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Any = None
        self.parts: list[bytes] = []  # name, value, name, value… of the current response head
        self.mode = HEAD_PENDING
        self.held = b""
        self.hop = False  # the current head has a hop-by-hop header
        self.done = False  # the current response is complete
        self.interim = False
        self.extra = False  # bytes followed the response: a broken upstream
        self.closed = False
        self.reused = False
        self.got_bytes = False  # any byte of the current response received
        self.keep_alive = True
        self.delimited = False  # the current response's body ends at connection close
        self.tick = 0  # when it went idle (Shared.tick)

    # ── asyncio.Protocol ─────────────────────────────────────────────────
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        stats = self.pool.stats
        stats["upstream_cx_total"] += 1
        stats["upstream_cx_active"] += 1
        if self.pool.tls is not None:  # open TLS connections on their own (made: upstream_cx_tls_total, per handshake)
            stats["upstream_cx_tls_active"] += 1

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:  # an idle connection must not talk: drop it
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if not self.done:
                self.keep_alive = False
                ex = self.ex
                self.ex = None
                self.close()
                if ex is not None:
                    ex.up_lost(self, exc, protocol_error=True)
                return
            self.extra = True
        ex = self.ex
        if ex is None:  # the exchange let go during the parse (retry, HEAD)
            return
        mode = self.mode
        if mode == VERBATIM:
            held = self.held
            if held:
                data = held + data
                self.held = b""
            ex.bytes_sent += len(data)
            proto = ex.proto
            if not proto.closed:
                proto.transport.write(data)
        elif mode == REBUILD:
            if ex.out:
                ex.flush()
        else:
            self.held = self.held + data if self.held else data
            return
        if self.done:
            self.ex = None
            self.mode = HEAD_PENDING
            self.done = self.hop = False
            self.parts = []
            if self.extra:
                self.keep_alive = False
                ex.close = True
            ex.up_done(self)

    def eof_received(self) -> bool:
        ex = self.ex
        if ex is not None and self.delimited:
            self.delimited = False
            self.keep_alive = False
            self.ex = None
            ex.up_done(self)
        return False

    def _count_closed(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.stats["upstream_cx_active"] -= 1
            if self.pool.tls is not None:
                self.pool.stats["upstream_cx_tls_active"] -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._count_closed()
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
    def on_header(self, name: bytes, value: bytes) -> None:
        self.parts += (name, value)
        if len(name) in _HOP_LENGTHS:
            n = name.lower()
            if n in HOP_BY_HOP and (n != b"transfer-encoding" or value.lower() != b"chunked"):
                self.hop = True  # plain chunked framing may pass through as it is; anything else is rebuilt

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200 and status != 101:  # interim response (100 Continue): the final one follows
            self.interim = True
            self.parts = []
            self.hop = False
            return
        ex = self.ex
        if ex is None or self.done:
            self.extra = True
            return
        self.keep_alive = parser.should_keep_alive()
        ex.up_head(self, status)

    def on_body(self, body: bytes) -> None:
        if self.mode == REBUILD:
            ex = self.ex
            if ex is not None:
                ex.up_body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
        else:
            self.done = True

    # ── used by the pool and exchanges ───────────────────────────────────
    def close(self) -> None:
        """Close now (pending writes are flushed); never returns to the pool."""
        self._count_closed()
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
    """Keep-alive connections to one endpoint (address, port), plaintext or with one TLS plan.

    `tls` (an :class:`~knotwork_native.upstream_tls.UpstreamTlsPlan`) makes each new
    connection with the plan's current context and checks the server before it is
    used; pooled connections are never flushed when the proxy's SVID rotates.
    """

    __slots__ = ("address", "connecting", "idle", "key", "label", "loop", "max_idle", "port", "retired", "shared", "stats",
                 "tls")

    def __init__(
        self, address: str, port: int, stats: dict[str, int], loop: asyncio.AbstractEventLoop,
        max_idle: int = MAX_IDLE, shared: Any = None, tls: Any = None,
    ) -> None:
        self.address = address
        self.port = port
        self.tls = tls
        self.key = (address, port) if tls is None else (address, port, tls)
        self.label = f"{address}:{port}"
        self.idle: list[UpstreamConnection] = []
        self.stats = stats
        self.loop = loop
        self.retired = False
        self.connecting = 0
        self.max_idle = max_idle
        self.shared = shared  # for the idle clock

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
            conn.mode = HEAD_PENDING
            conn.held = b""
            transport = conn.transport
            if transport is not None and not transport.is_reading():
                transport.resume_reading()
            if self.shared is not None:
                conn.tick = self.shared.tick
            self.idle.append(conn)
            if len(self.idle) > self.max_idle:
                self.idle.pop(0).close()
        else:
            conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    async def connect(self, timeout: float) -> UpstreamConnection:
        """Open a new connection (raises OSError — ssl.SSLError and PeerRefused too — or TimeoutError)."""
        self.connecting += 1
        try:
            async with asyncio.timeout(timeout):
                if self.tls is None:
                    _, conn = await self.loop.create_connection(lambda: UpstreamConnection(self), self.address, self.port)
                else:
                    _, conn = await tls_connect(self.loop, lambda: UpstreamConnection(self), self.address, self.port,
                                                self.tls, self.stats)
        finally:
            self.connecting -= 1
        return conn

    def close_idle(self, before: int) -> None:
        """Close idle connections that went idle before tick `before` (oldest first)."""
        while self.idle and self.idle[0].tick < before:
            self.idle.pop(0).close()

    def close(self) -> None:
        """Retire the pool: close idle connections; busy ones close when done."""
        self.retired = True
        while self.idle:
            self.idle.pop().close()


class Pools(dict[tuple[Any, ...], EndpointPool]):
    """All endpoint pools of a data plane, keyed by (address, port), or (address, port, TLS plan)."""

    def __init__(self, stats: dict[str, int], loop: asyncio.AbstractEventLoop, max_idle: int = MAX_IDLE, shared: Any = None) -> None:
        super().__init__()
        self.stats = stats
        self.loop = loop
        self.max_idle = max_idle
        self.shared = shared

    def __missing__(self, key: tuple[Any, ...]) -> EndpointPool:
        tls = key[2] if len(key) > 2 else None
        pool = self[key] = EndpointPool(key[0], key[1], self.stats, self.loop, self.max_idle, self.shared, tls)
        return pool

    def keep_only(self, keys: set[tuple[Any, ...]]) -> None:
        """Retire pools of endpoints no cluster uses any more."""
        for key in [k for k in self if k not in keys]:
            self.pop(key).close()

    def close(self) -> None:
        for pool in self.values():
            pool.close()
        self.clear()

    def idle_count(self) -> int:
        return sum(len(p.idle) for p in self.values())
