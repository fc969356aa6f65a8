"""One proxied HTTP request: the request view strategies see, and its response.

An :class:`Exchange` is created when a request's headers are parsed. It is at
once the :class:`knotwork.protocols.RequestView` given to routers, balancers,
authenticators and authorizers, and the :class:`knotwork.protocols.ResponseInfo`
given to telemetry sinks. The forwarding logic (route, attempts, retries,
timeouts) is in :class:`~knotwork_native.http1_forward.Forwarding`; this module
holds the request body path, the response path and the bookkeeping.

Output is batched: request bytes queue in ``buf`` and are written once per
downstream read; a response is either forwarded byte for byte as it is read
(see :class:`~knotwork_native.upstream.UpstreamConnection`) or rebuilt into
``out`` and written once per upstream read. A small request and response
cost one ``write`` each. ``bytes_sent`` counts response bytes written
downstream (head and body), ``bytes_received`` request body bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import flags as F
from .http1_forward import Forwarding
from .runtime import CORS_RESPONSE_NAMES, REPLAY_LIMIT
from .upstream import HOP_BY_HOP, REBUILD, VERBATIM

if TYPE_CHECKING:
    from knotwork.proxyconfig import PeerInfo

    from .http1 import DownstreamProtocol
    from .upstream import UpstreamConnection

__all__ = ["Exchange"]

_NOBODY, _RAW, _CHUNKED, _CLOSE = 0, 1, 2, 3  # how the response body is framed downstream
_CHUNK_END = b"0\r\n\r\n"
_TE_CHUNKED = b"transfer-encoding: chunked\r\n"
_CONN_CLOSE = b"connection: close\r\n"
_CONN_KEEP = b"connection: keep-alive\r\n"
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")}
_BLOCK_UPSTREAM, _BLOCK_BUFFER = 1, 2
_AUTHORITIES: dict[bytes, str] = {}  # raw Host bytes → the authority strategies see (decoded, lower-case)


_HEADER_NAMES: dict[str, bytes] = {}  # header names strategies ask for → the lower-case bytes the parser stores


def _header_name(name: str) -> bytes:
    n = name.lower().encode("latin-1")
    if len(_HEADER_NAMES) >= 256:  # bounded: names come from code and configs, but a strategy could vary them
        _HEADER_NAMES.clear()
    _HEADER_NAMES[name] = n
    return n


def _authority(host: bytes) -> str:
    authority = host.decode("latin-1").lower()
    if len(host) <= 255:  # bounded: at most 1024 short names
        if len(_AUTHORITIES) >= 1024:
            _AUTHORITIES.clear()
        _AUTHORITIES[host] = authority
    return authority


class Exchange(Forwarding):
    """One request and its response on a downstream connection."""

    __slots__ = (
        # RequestView / ResponseInfo
        "authority", "bytes_received", "bytes_sent", "cluster", "connection", "duration", "flags", "grpc_status", "method",
        "path", "principal", "protocol", "source_labels", "start_time", "status", "trace_id", "upstream", "upstream_peer",
        # request
        "buf", "buf_size", "chunked", "discard", "dp", "head", "host_b", "http11", "keep_alive",
        "live", "lr", "method_b", "parts", "path_b", "proto", "replay", "replay_size", "req_done", "sent_any", "xff", "xfp",
        # forwarding
        "crt", "deadline", "endpoint", "fresh", "mirror", "picked", "plan", "resp_extra", "retries", "task", "timer", "tried", "up",
        # response
        "close", "finished", "mode", "out", "resp_parts", "started", "t0",
        # tracing: (trace id, span id, parent span id) of a sampled request, else None
        "trace",
    )

    def __init__(self, proto: DownstreamProtocol, method_b: bytes, path_b: bytes, host: bytes, keep_alive: bool, http11: bool) -> None:
        self.proto = self.connection = proto
        self.dp = proto.dp
        slot = proto.slot
        self.lr = slot.rt
        self.source_labels = slot.source_labels
        self.method = _METHODS.get(method_b) or method_b.decode("latin-1")
        self.method_b = method_b
        self.path_b = path_b
        self.path = path_b.decode("latin-1")
        self.host_b = host
        authority = _AUTHORITIES.get(host)
        if authority is None:
            authority = _authority(host)
        self.authority = authority
        self.parts = proto.parts
        self.xff = proto.xff
        self.xfp = proto.xfp
        self.chunked = proto.chunked
        self.keep_alive = keep_alive
        self.http11 = http11
        self.protocol = "HTTP/1.1" if http11 else "HTTP/1.0"
        self.upstream_peer: PeerInfo | None = None
        self.grpc_status = ""
        self.buf: list[bytes] = []
        self.replay: list[bytes] | None = []
        self.head = b""
        self.buf_size = self.replay_size = self.retries = self.status = self.bytes_received = self.bytes_sent = 0
        self.req_done = self.discard = self.sent_any = self.live = self.fresh = self.started = self.finished = self.close = False
        self.principal: str | None = None
        self.up: UpstreamConnection | None = None
        self.plan = self.crt = self.endpoint = self.picked = self.timer = self.deadline = self.task = self.mirror = None
        self.trace_id = self.trace = self.resp_parts = None
        self.cluster: str | None = None
        self.upstream: str | None = None
        self.tried: list[Any] | None = None
        self.flags = "-"
        self.mode = _NOBODY
        self.out: list[bytes] = []
        self.t0 = self.duration = self.start_time = 0.0

    # ── RequestView ──────────────────────────────────────────────────────
    def header(self, name: str) -> str | None:
        """The first value of a request header (name lower-case), or None."""
        n = _HEADER_NAMES.get(name)
        if n is None:
            n = _header_name(name)
        if n == b"host" or n == b":authority":
            return self.authority
        parts = self.parts
        names = parts[::4]  # telemetry asks for several headers per request: searched in C, not a loop here
        if n in names:
            value = parts[names.index(n) * 4 + 2]
            return value.decode() if value.isascii() else value.decode("latin-1")  # ASCII: the fast codec
        if n == b"x-forwarded-for" and self.xff is not None:
            return self.xff.decode("latin-1")
        if n == b"x-forwarded-proto" and self.xfp is not None:
            return self.xfp.decode("latin-1")
        return None

    # ``protocol`` (RequestView): ``HTTP/1.1`` or ``HTTP/1.0``, as Envoy's ``%PROTOCOL%``, set when created.
    # ``upstream_peer`` and ``grpc_status`` (ResponseInfo) are worked out once when the request finishes, before
    # the sinks run (see :meth:`finish`): plain attributes, since every sink reads them (no call per read).

    def _response_info(self) -> None:
        """Set ``upstream_peer`` (the chosen endpoint's workload, client-side listeners) and ``grpc_status``
        (the response's ``grpc-status``, header or trailer; ``""`` when none)."""
        ep = self.endpoint
        if ep is not None and self.lr.reports_peer and self.crt is not None:
            self.upstream_peer = self.crt.peer_of(ep)
        parts = self.resp_parts
        if parts:
            for i in range(0, len(parts), 2):
                n = parts[i]
                if len(n) == 11 and n.lower() == b"grpc-status":
                    self.grpc_status = parts[i + 1].decode("latin-1").strip()
                    return

    def __repr__(self) -> str:
        return f"<Exchange {self.method} {self.authority}{self.path} status={self.status} flags={self.flags}>"

    # ── request body (called by the downstream protocol) ─────────────────
    def req_body(self, chunk: bytes) -> None:
        n = len(chunk)
        self.bytes_received += n
        if self.discard:
            return
        data = b"%x\r\n%s\r\n" % (n, chunk) if self.chunked else chunk
        replay = self.replay
        if replay is not None:
            self.replay_size += len(data)
            if self.replay_size > REPLAY_LIMIT:
                self.replay = None
            else:
                replay.append(data)
        self.buf.append(data)
        if self.up is None:
            self.buf_size += len(data)
            if self.buf_size > REPLAY_LIMIT:
                self.proto.block(_BLOCK_BUFFER)

    def req_end(self) -> None:
        self.req_done = True
        if self.chunked and not self.discard:
            if self.replay is not None:
                self.replay.append(_CHUNK_END)
            self.buf.append(_CHUNK_END)
            if self.up is not None and not self.proto.feeding:
                self.flush_up()
        if self.mirror is not None:
            self.fire_mirrors()

    def flush_up(self) -> None:
        """Write the queued request bytes to the upstream connection."""
        buf = self.buf
        up = self.up
        if not buf or up is None or up.transport is None:
            return
        self.buf = []
        self.sent_any = True
        if len(buf) == 1:
            up.transport.write(buf[0])
        else:
            up.transport.writelines(buf)

    def up_pause_writing(self) -> None:
        self.proto.block(_BLOCK_UPSTREAM)

    def up_resume_writing(self) -> None:
        self.proto.unblock(_BLOCK_UPSTREAM)

    # ── response (called by the upstream connection) ─────────────────────
    def up_head(self, conn: UpstreamConnection, status: int) -> None:
        """Response headers arrived: retry, or forward them downstream."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        plan = self.plan
        retry = plan.retry
        if status in retry.statuses:
            if self.retries < retry.attempts and self.can_replay():
                self.drop_attempt()
                self.attempt_failed("", f"upstream {self.upstream} answered {status}", True, status)
                return
            if self.retries:
                self.flags = F.combine(self.flags, F.URX)  # the last attempt's response goes out as it is
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.status = status
        self.started = True
        self.resp_parts = conn.parts  # kept for grpc_status (the connection starts a new list per response)
        proto = self.proto
        if (conn.keep_alive and self.keep_alive and self.http11 and not conn.hop and self.method_b != b"HEAD"
                and not proto.slot.draining and not plan.rebuild):
            conn.mode = VERBATIM
        else:
            conn.mode = REBUILD
            conn.held = b""
            self._rebuild(conn, status)
            if self.method_b == b"HEAD":
                # No body follows, but the parser would wait for one: finish here, drop the connection.
                conn.ex = None
                conn.keep_alive = False
                self.up = None
                self.flush()
                conn.close()
                self.finish()
                return
        if proto.write_paused and conn.transport is not None:
            conn.transport.pause_reading()

    def _rebuild(self, conn: UpstreamConnection, status: int) -> None:
        """Queue a rebuilt response head: hop-by-hop headers out, framing for this client."""
        parts = conn.parts
        names = [parts[i].lower() for i in range(0, len(parts), 2)]
        drop = set(HOP_BY_HOP)
        if b"connection" in names:
            for i, n in enumerate(names):
                if n == b"connection":
                    drop.update(t.strip() for t in parts[2 * i + 1].lower().split(b","))
        plan = self.plan
        extra = b""
        if plan.rebuild:  # route response header operations and CORS
            drop.update(plan.resp_drop)
            extra = plan.resp_lines
            if plan.cors is not None and self.resp_extra:
                drop.update(CORS_RESPONSE_NAMES)
                extra += self.resp_extra
        head = [F.status_line(status)]
        for i, n in enumerate(names):
            if n not in drop:
                head += (parts[2 * i], b": ", parts[2 * i + 1], b"\r\n")
        if extra:
            head.append(extra)
        chunked = b"transfer-encoding" in names
        if self.method_b == b"HEAD" or status == 204 or status == 304:
            mode = _NOBODY
        elif b"content-length" in names and not chunked:
            mode = _RAW
        else:
            mode = _CHUNKED if self.http11 else _CLOSE
            if not chunked:
                conn.delimited = True  # the upstream's body ends when it closes
        self.mode = mode
        close = self.close = not self.keep_alive or mode == _CLOSE or self.proto.slot.draining
        if mode == _CHUNKED:
            head.append(_TE_CHUNKED)
        if close:
            head.append(_CONN_CLOSE)
        elif not self.http11:
            head.append(_CONN_KEEP)
        head.append(b"\r\n")
        data = b"".join(head)
        self.bytes_sent += len(data)
        self.out.append(data)

    def up_body(self, chunk: bytes) -> None:
        self.bytes_sent += len(chunk)
        if self.mode == _CHUNKED:
            self.out += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
        else:
            self.out.append(chunk)

    def up_done(self, conn: UpstreamConnection) -> None:
        """The response is complete: flush it, pool the connection, finish."""
        self.up = None
        if self.mode == _CHUNKED:
            self.out.append(_CHUNK_END)
        if self.out:
            self.flush()
        conn.pool.release(conn, self.req_done and not self.buf)
        picked = self.picked
        if picked is not None:
            self.picked = None
            release = self.crt.release
            if release is not None:
                release(picked)
        self.finish()

    def flush(self) -> None:
        """Write the queued response bytes downstream."""
        out = self.out
        if out:
            self.out = []
            proto = self.proto
            if not proto.closed and proto.transport is not None:
                if len(out) == 1:
                    proto.transport.write(out[0])
                else:
                    proto.transport.writelines(out)

    # ── ending ───────────────────────────────────────────────────────────
    def reply(self, status: int, flag: str, body: str, headers: bytes = b"", exact: bytes | None = None) -> None:
        """Answer with a proxy-generated response (or cut the connection if one had started)."""
        if self.finished:
            return
        self.abandon()
        if self.started:
            self.flags = F.combine(self.flags, flag)
            self.close = True
            self.finish()
            return
        self.status = status
        self.flags = F.combine(self.flags, flag)  # a delay (DI) stays on the request's flags
        self.started = True
        close = self.close = not self.keep_alive or self.proto.slot.draining
        plan = self.plan
        if plan is not None and plan.rebuild:  # as Envoy: the route's response headers and CORS on local replies too
            headers += plan.resp_lines
            if plan.cors is not None:
                headers += self.resp_extra
        if exact is not None:
            data = F.local_reply(status, self.flags, "", close=close, headers=headers, head_only=self.method_b == b"HEAD", exact=exact)
        else:
            data = F.local_reply(status, self.flags, body, close=close, headers=headers, head_only=self.method_b == b"HEAD")
        self.bytes_sent = len(data)
        proto = self.proto
        if not proto.closed and proto.transport is not None:
            proto.transport.write(data)
        self.finish()

    def finish(self) -> None:
        """Account the request, tell telemetry, hand the connection back."""
        if self.finished:
            return
        self.finished = True
        if self.timer is not None or self.deadline is not None:
            self.abandon(keep_up=True)
        elif self.picked is not None:
            self.release_pick()
        if self.live:
            dp = self.dp
            dp.inflight -= 1
            status = self.status
            if 0 < status < 600:
                dp.codes[status // 100] += 1
            if self.flags != "-":
                dp.count_flags(self.flags)
            if dp.idle is not None and dp.inflight <= 0:
                dp.idle.set()
            lr = self.lr
            sinks = lr.telemetry
            if sinks or self.trace is not None:
                self.duration = dp.loop.time() - self.t0
                if sinks:
                    self._response_info()
                if self.trace is not None:
                    try:
                        lr.tracer.end(self)
                    except Exception:  # noqa: BLE001 - tracing must never break the data path
                        dp.stats["tracing_errors"] += 1
                for sink in sinks:
                    try:
                        sink.request_finished(self, self)
                    except Exception:  # noqa: BLE001 - a sink must never break the data path
                        dp.stats["telemetry_errors"] += 1
        proto = self.proto
        if not self.req_done:
            self.discard = True
            self.buf = []
            proto.unblock(_BLOCK_BUFFER | _BLOCK_UPSTREAM)
        proto.ex_done(self, self.close)

    def down_lost(self) -> None:
        """The downstream connection closed before the response was complete."""
        if self.finished:
            return
        self.flags = F.combine(self.flags, F.DC)
        self.abandon()
        self.close = True
        self.finish()
