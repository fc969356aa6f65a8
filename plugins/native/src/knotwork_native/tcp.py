"""TCP passthrough: tcp listeners and CONNECT tunnels.

A :class:`Pipe` is one side of a relay; bytes read on one side are written
to the other. Half-close is carried over (EOF on one side becomes
``write_eof`` on the other; the relay closes when both sides ended), and
flow control is too (a side whose peer cannot write stops reading).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from . import flags as F
from .http1_forward import _why, connect_flag
from .upstream_tls import connect as tls_connect

__all__ = ["ConnectFailure", "Pipe", "TcpListenerProtocol", "open_upstream", "start_tunnel"]

_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class ConnectFailure(Exception):
    """No upstream connection could be opened: `flag` and a readable reason."""

    def __init__(self, flag: str, why: str) -> None:
        super().__init__(why)
        self.flag = flag
        self.why = why


class Pipe(asyncio.Protocol):
    """One side of a TCP relay."""

    __slots__ = ("closed", "dp", "eof", "nbytes", "peer", "pending", "release", "slot", "transport")

    def __init__(self, dp: Any, slot: Any = None) -> None:
        self.dp = dp
        self.slot = slot  # the listener slot, for the downstream side only
        self.peer: Pipe | None = None
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.closed = False
        self.pending: list[bytes] = []  # read before the other side was connected
        self.release: Any = None  # balancer release callback, called once when the relay ends
        self.nbytes = 0  # bytes read on this side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        peer = self.peer
        if peer is None:
            self.pending.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
        elif peer.transport is not None and not peer.closed:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None:
            return True  # forwarded once the other side is connected
        if peer.closed or peer.transport is None:
            return False
        if peer.eof:  # both directions ended
            peer.transport.close()
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
            return True
        peer.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.slot is not None:
            self.slot.connections.discard(self)
            self.dp.stats["downstream_cx_active"] -= 1
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.close()
        release, self.release = self.release, None
        if release is not None:
            release()

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.resume_reading()

    def link(self, peer: Pipe) -> None:
        """Join two sides; bytes (and an EOF) read before are passed on now."""
        self.peer, peer.peer = peer, self
        for side, other in ((self, peer), (peer, self)):
            if other.transport is None:
                continue
            if side.pending:
                other.transport.writelines(side.pending)
                side.pending = []
            if side.eof and other.transport.can_write_eof():
                other.transport.write_eof()

    def close_idle(self, before: int | None = None) -> bool:
        return False  # a relay is never idle as far as HTTP goes: it ends with its peers


async def open_upstream(dp: Any, crt: Any, request: Any, attempts: int = 3) -> tuple[asyncio.Transport, Pipe, Any]:
    """Connect to an endpoint of cluster `crt` (another one after a failure).

    Returns (transport, pipe, endpoint); raises :class:`ConnectFailure`.
    """
    tried: list[Any] = []
    why = ""
    flag = F.UF
    for _ in range(max(1, attempts)):
        ep = crt.pick(request, tried) if tried else crt.pick(request)
        if ep is None and tried:
            ep = crt.pick(request)
        if ep is None:
            if tried:
                break
            raise ConnectFailure(F.UH, f"no healthy upstream for cluster {crt.name}")
        tls = crt.tls.for_endpoint(ep) if crt.tls is not None else None
        try:
            async with asyncio.timeout(crt.connect_timeout):
                if tls is None:
                    transport, pipe = await dp.loop.create_connection(lambda: Pipe(dp), ep.address, ep.port)
                else:
                    transport, pipe = await tls_connect(dp.loop, lambda: Pipe(dp), ep.address, ep.port, tls, dp.stats)
        except (OSError, TimeoutError) as exc:
            if crt.release is not None:
                crt.release(ep)
            tried.append(ep)
            flag = connect_flag(exc)
            why = f"upstream connect error to cluster {crt.name} endpoint {ep.address}:{ep.port}: {_why(exc)}"
            continue
        dp.stats["upstream_cx_total"] += 1
        return transport, pipe, ep
    raise ConnectFailure(F.combine(F.URX, flag) if len(tried) > 1 else flag, why)


def _relay(dp: Any, down: Pipe, up: Pipe, crt: Any, ep: Any) -> None:
    down.link(up)
    if crt.release is not None:
        down.release = lambda: crt.release(ep)


class TcpListenerProtocol(Pipe):
    """The downstream side of a tcp listener: connects to the listener's cluster.

    It is also the :class:`knotwork.protocols.TcpInfo` (and ConnectionView) the
    listener's sinks get: ``tcp_opened`` once the upstream is connected,
    ``tcp_closed`` when the downstream side is gone (also after a failed
    connect, with its flags), with the byte counts of both directions.
    """

    __slots__ = ("crt", "cluster", "duration", "endpoint", "flags", "local_address", "lr", "peer_address", "peer_identity",
                 "start_time", "t0", "task", "tls", "upstream")

    def __init__(self, slot: Any, dp: Any) -> None:
        super().__init__(dp, slot)
        self.task: asyncio.Task[None] | None = None
        self.lr: Any = None  # the listener runtime whose sinks hear of this connection (None: no tcp sinks)
        self.crt: Any = None
        self.endpoint: Any = None
        self.cluster: str | None = None
        self.upstream: str | None = None
        self.flags = "-"
        self.start_time = self.t0 = self.duration = 0.0
        self.peer_address: tuple[str, int] = ("", 0)
        self.local_address: tuple[str, int] = ("", 0)
        self.peer_identity: str | None = None
        self.tls = False

    # ── TcpInfo ──────────────────────────────────────────────────────────
    @property
    def connection(self) -> TcpListenerProtocol:
        return self

    @property
    def bytes_received(self) -> int:
        return self.nbytes

    @property
    def bytes_sent(self) -> int:
        peer = self.peer
        return peer.nbytes if peer is not None else 0

    @property
    def upstream_peer(self) -> Any:
        ep = self.endpoint
        if ep is None or self.lr is None or not self.lr.reports_peer:
            return None
        return self.crt.peer_of(ep)

    def _tell(self, sinks: tuple[Any, ...]) -> None:
        for method in sinks:
            try:
                method(self)
            except Exception:  # noqa: BLE001 - a sink must never break the data path
                self.dp.stats["telemetry_errors"] += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # type: ignore[attr-defined]
        ssl_object = transport.get_extra_info("ssl_object")
        peer_identity = None
        rt = self.slot.rt
        if ssl_object is not None:  # mesh mTLS (see .inbound_tls): the client's SPIFFE ID must be in the trust domain
            mtls = rt.mtls
            peer_identity = mtls.admit(ssl_object, transport.get_extra_info("peername")) if mtls is not None else None
            if peer_identity is None:
                self.dp.stats["downstream_cx_tls_refused"] += 1
                self.slot = None  # never counted as a connection of the listener
                self.closed = True
                transport.close()
                return
        self.slot.connections.add(self)
        stats = self.dp.stats
        stats["downstream_cx_total"] += 1
        stats["downstream_cx_active"] += 1
        stats["tcp_sessions_total"] += 1
        crt = rt.tcp_cluster()
        if rt.tcp_opened or rt.tcp_closed:
            self.lr = rt
            self.t0 = self.dp.loop.time()
            self.start_time = time.time()
            self.crt = crt
            self.cluster = crt.name if crt is not None else None
            self.tls = ssl_object is not None
            self.peer_identity = peer_identity
            peer = transport.get_extra_info("peername")
            if peer:
                self.peer_address = (peer[0], peer[1])
            local = transport.get_extra_info("sockname")
            if local:
                self.local_address = (local[0], local[1])
        self.task = self.dp.loop.create_task(self._connect(crt))

    async def _connect(self, crt: Any) -> None:
        try:
            _, up, ep = await open_upstream(self.dp, crt, None)
        except ConnectFailure as exc:
            self.dp.count_flags(exc.flag)
            self.flags = exc.flag
            if self.transport is not None:
                self.transport.close()
            return
        finally:
            self.task = None
        if self.closed:
            if up.transport is not None:
                up.transport.close()
            return
        _relay(self.dp, self, up, crt, ep)
        lr = self.lr
        if lr is not None:
            self.endpoint = ep
            self.upstream = f"{ep.address}:{ep.port}"
            if lr.tcp_opened:
                self._tell(lr.tcp_opened)
        if self.transport is not None:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()
        super().connection_lost(exc)
        lr = self.lr
        if lr is not None and lr.tcp_closed:  # (connection_lost is called once)
            self.duration = self.dp.loop.time() - self.t0
            self._tell(lr.tcp_closed)


def start_tunnel(proto: Any, ex: Any, early: bytes) -> None:
    """Serve a parsed ``CONNECT host:port`` on an http_proxy listener.

    Routes by authority to a cluster, answers ``200 Connection established``
    once an endpoint is connected and relays bytes (`early`: bytes the client
    sent after the CONNECT head). Failures answer 502/503 with flags, as for
    any request, and close the connection.
    """
    ex.live = True
    dp = ex.dp
    ex.t0 = dp.loop.time()
    ex.start_time = time.time()
    dp.inflight += 1
    dp.requests += 1
    ex.keep_alive = False
    lr = ex.lr
    for started in lr.started:
        try:
            started(ex)
        except Exception:  # noqa: BLE001
            dp.stats["telemetry_errors"] += 1
    if lr.listener.mode != "http_proxy":  # as Envoy without a CONNECT route: 404 NR
        ex.reply(404, F.NR, f"CONNECT is served only by http_proxy listeners, not by listener {lr.name}")
        return
    try:
        route = lr.router.match(ex)
    except Exception as exc:  # noqa: BLE001
        ex.reply(500, "-", f"router of listener {lr.name} failed: {exc!r}")
        return
    if route is None:
        ex.reply(502, F.NR, f"no route to host {ex.authority} (listener {lr.name}, route table {lr.listener.route_table})")
        return
    plan = lr.plan(route)
    ex.plan = plan
    if plan.kind:
        ex._local_route(plan)
        return
    crt = ex.crt = plan.choose()
    ex.cluster = crt.name
    crt.rq_total += 1
    ex.task = dp.loop.create_task(_tunnel(proto, ex, crt, plan, early))


async def _tunnel(proto: Any, ex: Any, crt: Any, plan: Any, early: bytes) -> None:
    retry = plan.retry
    try:
        _, up, ep = await open_upstream(ex.dp, crt, ex, 1 + retry.attempts if retry.on_connect else 1)
    except ConnectFailure as exc:
        ex.task = None
        ex.reply(503, exc.flag, exc.why)
        return
    ex.task = None
    transport = proto.transport
    if proto.closed or transport is None:
        if up.transport is not None:
            up.transport.close()
        ex.down_lost()
        return
    ex.upstream = f"{ep.address}:{ep.port}"
    ex.endpoint = ep
    ex.status = 200
    ex.started = True
    transport.write(_ESTABLISHED)
    down = Pipe(ex.dp, proto.slot)
    down.transport = transport
    proto.slot.connections.discard(proto)
    proto.slot.connections.add(down)
    proto.closed = True  # the HTTP protocol is done with this connection
    transport.set_protocol(down)
    _relay(ex.dp, down, up, crt, ep)
    if early and up.transport is not None:
        up.transport.write(early)
    ex.finished = True
    ex.dp.request_done("-", 200)
    ex.duration = ex.dp.loop.time() - ex.t0
    for sink in ex.lr.telemetry:
        try:
            sink.request_finished(ex, ex)
        except Exception:  # noqa: BLE001
            ex.dp.stats["telemetry_errors"] += 1
    transport.resume_reading()
