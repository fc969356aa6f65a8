"""The downstream side of HTTP/1.1 listeners: one protocol object per connection.

:class:`DownstreamProtocol` parses requests with httptools, strips hop-by-hop
headers while parsing (one pass, names lower-cased), and hands each request
to an :class:`~knotwork_native.http1_exchange.Exchange`. It is also the
:class:`knotwork.protocols.ConnectionView` strategies see. Keep-alive,
pipelining (one response at a time, reading paused while requests queue),
``Expect: 100-continue`` (answered here, as Envoy does) and flow control
(reading paused while the upstream cannot take more) live here.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from typing import Any

import httptools

from . import flags
from .downstream_tls import TlsPlan
from .http1_exchange import Exchange
from .tcp import start_tunnel

__all__ = ["DownstreamProtocol", "new_request_id"]

_PREFIX = os.urandom(10).hex()
_RID_PREFIX = f"{_PREFIX[:8]}-{_PREFIX[8:12]}-4{_PREFIX[13:16]}-a{_PREFIX[17:20]}-".encode()
_RID_LOW = tuple(b"%03x" % i for i in range(4096))  # the counter's last 3 hex digits, formatted once


def _request_ids() -> Any:
    """Request ids: the per-process prefix, then a 48-bit counter (9 hex digits per block of 4096 ids, then 3)."""
    block = 0
    while True:
        head = b"%s%09x" % (_RID_PREFIX, block & 0xFFFFFFFFF)
        for low in _RID_LOW:
            yield head + low
        block += 1


#: A unique, uuid4-shaped request id (bytes): a random per-process prefix and a counter.
new_request_id: Any = _request_ids().__next__


# header name (lower-case) → handling code while parsing
_HOST, _CONN, _DROP, _TE, _XFF, _XFP, _RID, _EXPECT, _PEER = range(9)
_SPECIAL = {
    b"host": _HOST, b"connection": _CONN, b"keep-alive": _DROP, b"proxy-connection": _DROP, b"te": _DROP,
    b"trailer": _DROP, b"upgrade": _DROP, b"proxy-authorization": _DROP, b"transfer-encoding": _TE,
    b"x-forwarded-for": _XFF, b"x-forwarded-proto": _XFP, b"x-request-id": _RID, b"expect": _EXPECT,
    # never taken from a client (Envoy's SANITIZE / Istio's SANITIZE_SET): an mTLS inbound connection sets its own
    b"x-forwarded-client-cert": _DROP,
    # a client sidecar says who is calling (its listener's peer line): an app's own value never passes
    b"x-knotwork-peer": _PEER,
}
_CONN_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade", b""})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

#: reasons to pause reading the downstream connection (bit mask)
BLOCK_UPSTREAM = 1  # the upstream's write buffer is full
BLOCK_BUFFER = 2  # the request body is waiting for an upstream connection
BLOCK_QUEUE = 4  # a pipelined request waits for the previous response
BLOCK_TUNNEL = 8  # a CONNECT tunnel is being set up


class DownstreamProtocol(asyncio.Protocol):
    """One downstream HTTP/1.1 connection on an http listener."""

    __slots__ = (
        "blocks", "chunked", "closed", "connect", "drop", "dp", "ex", "expect", "feeding", "fwd_lines", "host", "local_address",
        "maybe10", "parser", "parts", "peer_address", "peer_identity", "queue", "reading", "rid", "slot", "tick", "tls", "transport",
        "url", "write_paused", "xfcc", "xff", "xff_peer", "xfp", "xfp_line",
    )

    def __init__(self, slot: Any, dp: Any) -> None:
        self.slot = slot  # the listener slot: .rt (ListenerRuntime), .draining, .connections
        self.dp = dp  # the Shared state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.ex: Exchange | None = None  # the exchange whose response is being produced
        self.reading: Exchange | None = None  # the exchange whose request body is being read
        self.queue: collections.deque[Exchange] | None = None
        self.blocks = 0
        self.write_paused = False
        self.feeding = False
        self.closed = False
        self.tick = dp.tick
        self.connect: Exchange | None = None  # a parsed CONNECT, waiting for the parser's upgrade signal
        self.peer_address: tuple[str, int] = ("", 0)
        self.local_address: tuple[str, int] = ("", 0)
        self.peer_identity: str | None = None
        self.tls = False
        self.xfcc = b""  # the x-forwarded-client-cert line of an mTLS connection (see .mesh_tls)
        self.xff_peer = b""
        self.xfp_line = b"x-forwarded-proto: http\r\n"
        self.fwd_lines = b"x-forwarded-for: \r\n" + self.xfp_line  # both x-forwarded-* lines when the client sent neither
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.parts: list[bytes] = []
        self.host = b""
        self.xff: bytes | None = None
        self.xfp: bytes | None = None
        self.rid = False
        self.chunked = False
        self.expect = False
        self.maybe10 = False
        self.drop: list[bytes] | None = None

    # ── asyncio.Protocol ─────────────────────────────────────────────────
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        peer = transport.get_extra_info("peername")
        if ssl_object is not None:  # a listener terminating TLS: the handshake is done
            self.tls = True
            self.xfp_line = b"x-forwarded-proto: https\r\n"
            mtls = self.slot.rt.mtls
            if mtls is not None:  # mesh mTLS: the client's SPIFFE ID must be in the trust domain
                self.peer_identity = mtls.admit(ssl_object, peer)
                refused = self.peer_identity is None
                if not refused:
                    self.xfcc = mtls.xfcc(self.peer_identity)
            else:
                refused = TlsPlan.refusal(ssl_object) is not None
            if refused:
                self.closed = True
                self.dp.stats["downstream_cx_tls_refused"] += 1
                transport.close()
                return
        local = transport.get_extra_info("sockname")
        if peer:
            self.peer_address = (peer[0], peer[1])
            self.xff_peer = peer[0].encode()
        # the x-forwarded-* (and x-forwarded-client-cert) lines of a request that came with none
        self.fwd_lines = b"x-forwarded-for: " + self.xff_peer + b"\r\n" + self.xfp_line + self.xfcc
        if local:
            self.local_address = (local[0], local[1])
        self.slot.connections.add(self)
        stats = self.dp.stats
        stats["downstream_cx_total"] += 1
        stats["downstream_cx_active"] += 1

    def data_received(self, data: bytes) -> None:
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[exc.args[0]:])
        except httptools.HttpParserError as exc:
            self._bad_request(exc)
        finally:
            self.feeding = False
        ex = self.ex  # only the active exchange has an upstream (queued ones wait)
        if ex is not None and ex.buf and ex.up is not None:
            ex.flush_up()

    def eof_received(self) -> bool:
        # As Envoy does: a client that closes its side has gone away (DC); in-flight
        # requests are reset rather than served to a socket nobody may read.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and self not in self.slot.connections:  # refused in connection_made
            return
        self.closed = True
        self.slot.connections.discard(self)
        self.dp.stats["downstream_cx_active"] -= 1
        ex, self.ex = self.ex, None
        if ex is not None:
            ex.down_lost()
        reading, self.reading = self.reading, None
        if reading is not None and reading is not ex:
            reading.down_lost()
        if self.queue:
            for queued in self.queue:
                if queued is not ex and queued is not reading:
                    queued.down_lost()
            self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.ex
        if ex is not None and ex.up is not None and ex.up.transport is not None:
            ex.up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.ex
        if ex is not None and ex.up is not None and ex.up.transport is not None:
            ex.up.transport.resume_reading()

    # ── httptools callbacks ──────────────────────────────────────────────
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        n = name.lower()
        code = _SPECIAL.get(n)
        if code is None:
            self.parts += (n, b": ", value, b"\r\n")
        elif code == _HOST:
            self.host = value
        elif code == _RID:
            self.rid = True
            self.parts += (n, b": ", value, b"\r\n")
        elif code == _XFF:
            self.xff = value
        elif code == _XFP:
            self.xfp = value
        elif code == _TE:
            self.chunked = True
        elif code == _CONN:
            tokens = [t.strip() for t in value.lower().split(b",")]
            if b"keep-alive" in tokens:
                self.maybe10 = True  # HTTP/1.0 keep-alive, or a redundant 1.1 header
            extra = [t for t in tokens if t not in _CONN_TOKENS]
            if extra:
                self.drop = (self.drop or []) + extra
        elif code == _EXPECT:
            if value.lower() == b"100-continue":
                self.expect = True
            else:
                self.parts += (n, b": ", value, b"\r\n")
        elif code == _PEER:
            if not self.slot.rt.peer_line:
                self.parts += (n, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        parser = self.parser
        method_b = parser.get_method()
        url = self.url
        host = self.host
        if url[:1] == b"/":
            path_b = url
        elif method_b == b"CONNECT":
            host, path_b = url, b"/"
        elif url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
            rest = url[url.index(b"//") + 2:]
            slash = rest.find(b"/")
            if slash < 0:
                query = rest.find(b"?")
                authority, path_b = (rest, b"/") if query < 0 else (rest[:query], b"/" + rest[query:])
            else:
                authority, path_b = rest[:slash], rest[slash:]
            host = authority.rpartition(b"@")[2] or host
        else:
            path_b = url
        if self.drop:
            self._drop_listed()
        if not self.rid:
            self.parts += (b"x-request-id", b": ", new_request_id(), b"\r\n")
        keep = parser.should_keep_alive()
        # Without a keep-alive token, keep-alive implies HTTP/1.1; ask the (slow) version only otherwise.
        http11 = parser.get_http_version() == "1.1" if self.maybe10 or not keep else True
        ex = Exchange(self, method_b, path_b, host, keep, http11)
        self.tick = ex.dp.tick
        expect = self.expect
        self.url = self.host = b""
        self.parts = []
        if self.rid or self.chunked or self.expect or self.maybe10 or self.xff is not None or self.xfp is not None or self.drop:
            self._reset()
        if method_b == b"CONNECT":
            self.connect = ex  # the tunnel starts when the parser reports the upgrade
            return
        self.reading = ex
        if self.ex is None:
            if expect and not self.slot.draining:  # (a queued request's client sends its body after a while anyway)
                self.transport.write(_CONTINUE)  # type: ignore[union-attr]
            self.ex = ex
            ex.start()
        else:
            if self.queue is None:
                self.queue = collections.deque()
            self.queue.append(ex)
            self.block(BLOCK_QUEUE)

    def on_body(self, body: bytes) -> None:
        ex = self.reading
        if ex is not None:
            ex.req_body(body)

    def on_message_complete(self) -> None:
        ex, self.reading = self.reading, None
        if ex is not None:
            ex.req_end()

    # ── used by exchanges ────────────────────────────────────────────────
    def block(self, reason: int) -> None:
        if not self.blocks and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.blocks |= reason

    def unblock(self, reason: int) -> None:
        if self.blocks & reason:
            self.blocks &= ~reason
            if not self.blocks and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def ex_done(self, ex: Exchange, close: bool) -> None:
        """An exchange's response is complete: close, or serve the next request."""
        if close or self.closed:
            self.ex = None
            if self.transport is not None:
                self.transport.close()
            return
        if self.ex is ex:
            self.ex = None
        queue = self.queue
        if queue:
            nxt = queue.popleft()
            if not queue:
                self.unblock(BLOCK_QUEUE)
            self.ex = nxt
            nxt.start()

    def close_idle(self, before: int | None = None) -> bool:
        """Close the connection if no request is in progress (and, given `before`,
        none started since that tick); return whether it was."""
        if before is not None and self.tick >= before:
            return False
        if self.ex is None and self.reading is None and self.transport is not None:
            self.transport.close()
            return True
        return False

    def _drop_listed(self) -> None:
        drop = set(self.drop or ())
        parts = self.parts
        kept: list[bytes] = []
        for i in range(0, len(parts), 4):
            if parts[i] not in drop:
                kept += parts[i:i + 4]
        self.parts = kept

    def _upgrade(self, rest: bytes) -> None:
        ex, self.connect = self.connect, None
        if ex is None:
            # An Upgrade request was parsed whole; we removed the Upgrade header, so keep parsing HTTP.
            if rest:
                self.data_received(rest)
            return
        self.block(BLOCK_TUNNEL)
        if self.ex is not None or self.reading is not None:  # CONNECT pipelined behind a request
            if self.transport is not None:
                self.transport.close()
            return
        start_tunnel(self, ex, rest)

    def _bad_request(self, exc: Exception) -> None:
        internal = isinstance(exc, httptools.HttpParserCallbackError)
        if internal:  # a bug of ours or of a strategy: keep the cause for /status
            cause = exc.__context__ or exc
            self.dp.last_error = f"{type(cause).__name__}: {cause}"
            self.dp.stats["downstream_rq_internal_error"] += 1
            status, flag, why = 500, "-", f"internal error: {type(cause).__name__}: {cause}"
        else:
            self.dp.stats["downstream_rq_protocol_error"] += 1
            status, flag, why = 400, flags.DPE, f"bad request: {exc}"
        ex = self.ex
        if ex is not None and not ex.finished:
            ex.keep_alive = False
            ex.reply(status, flag, why)
        elif self.transport is not None and not self.closed:
            # A request that never parsed is still a request, as in Envoy: counted, seen by sinks, answered.
            try:
                try:
                    method_b = self.parser.get_method() or b"-"
                except httptools.HttpParserError:
                    method_b = b"-"
                ex = Exchange(self, method_b, self.url if self.url[:1] == b"/" else b"/", self.host, False, True)
            except Exception:  # noqa: BLE001 - the internal error may be in there: answer without an exchange
                self.transport.write(flags.local_reply(status, flag, why, close=True))
                self.transport.close()
                return
            ex.live = True
            dp = self.dp
            dp.inflight += 1
            dp.requests += 1
            lr = ex.lr
            if lr.telemetry:
                ex.t0 = dp.loop.time()
                ex.start_time = time.time()
                for started in lr.started:
                    try:
                        started(ex)
                    except Exception:  # noqa: BLE001 - a sink must never break the data path
                        dp.stats["telemetry_errors"] += 1
            self.ex = ex
            ex.reply(status, flag, why)
        if self.transport is not None:
            self.transport.close()
