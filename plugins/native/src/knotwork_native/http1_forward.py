"""Forwarding one HTTP request: access control, route, attempts, retries, timeouts.

Written as callbacks on the exchange rather than a coroutine per request: the
common path (route, pick, pooled connection, write) runs synchronously inside
the downstream read, and a task is created only to open a connection or to
await an async authenticator or authorizer.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

import httptools

from knotwork.protocols import Decision

from . import flags as F
from .runtime import RoutePlan
from .upstream_tls import connect as tls_connect

__all__ = ["Forwarding", "connect_flag"]

_NOVALUE: Any = object()
_SYNC_TYPES = (str, type(None), Decision)
_wall = time.time


#: How long a mirrored request may take when its route sets no timeout.
MIRROR_TIMEOUT = 15.0
_MIRROR_TASKS: set[asyncio.Task[None]] = set()


def shadow_head(head: bytes) -> bytes:
    """A request head for a mirror: ``-shadow`` appended to the host (before a port), as Envoy does,
    and ``connection: close``."""
    start = head.index(b"\r\nhost: ") + 8
    end = head.index(b"\r\n", start)
    host = head[start:end]
    name, colon, port = host.rpartition(b":")
    if colon and port.isdigit():
        shadow = name + b"-shadow:" + port
    else:
        shadow = host + b"-shadow"
    return head[:start] + shadow + head[end:-2] + b"connection: close\r\n\r\n"


class _ResponseEnd:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def on_message_complete(self) -> None:
        self.done = True


async def send_mirror(ep: Any, data: list[bytes], timeout: float, stats: Any, release: Any, tls: Any = None) -> None:
    """One mirrored request on its own connection (TLS with the cluster's plan `tls`); its response is read and dropped."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            if tls is None:
                reader, writer = await asyncio.open_connection(ep.address, ep.port)
            else:
                loop = asyncio.get_running_loop()
                reader = asyncio.StreamReader(loop=loop)
                transport, proto = await tls_connect(loop, lambda: asyncio.StreamReaderProtocol(reader), ep.address,
                                                     ep.port, tls, stats)
                writer = asyncio.StreamWriter(transport, proto, reader, loop)  # type: ignore[arg-type]
            writer.writelines(data)
            await writer.drain()
            end = _ResponseEnd()
            parser = httptools.HttpResponseParser(end)
            while not end.done:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                parser.feed_data(chunk)
        stats["mirror_rq_total" if end.done else "mirror_rq_failed"] += 1
    except (OSError, TimeoutError, httptools.HttpParserError):
        stats["mirror_rq_failed"] += 1
    finally:
        if writer is not None:
            writer.close()
        if release is not None:
            release(ep)


def _why(exc: BaseException) -> str:
    """A short, lower-case reason for a connection error."""
    if isinstance(exc, TimeoutError):
        return "connection timeout"
    if isinstance(exc, ssl.SSLError):  # its errno is OpenSSL's, not the system's
        detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        return f"TLS handshake failed: {str(detail).lower()}"
    if isinstance(exc, socket.gaierror):  # a name that does not resolve (dns and passthrough clusters)
        return f"name resolution failed: {str(exc.strerror).lower()}"
    errno = getattr(exc, "errno", None)
    if errno:
        return os.strerror(errno).lower()
    return str(exc) or type(exc).__name__


def connect_flag(exc: BaseException) -> str:
    """The flag of a failed upstream connect: DF when the name did not resolve (as Envoy's
    dynamic forward proxy), else UF."""
    return F.DF if isinstance(exc, socket.gaierror) else F.UF


class Forwarding:
    """The forwarding half of :class:`~knotwork_native.http1_exchange.Exchange` (a mixin)."""

    if not TYPE_CHECKING:
        __slots__ = ()
    else:  # the state and methods of Exchange this half uses (the slots live on Exchange)
        proto: Any
        dp: Any
        lr: Any
        plan: Any
        crt: Any
        up: Any
        task: Any
        timer: Any
        deadline: Any
        picked: Any
        endpoint: Any
        tried: list[Any] | None
        live: bool
        started: bool
        finished: bool
        fresh: bool
        close: bool
        sent_any: bool
        retries: int
        t0: float
        start_time: float
        flags: str
        head: bytes
        buf: list[bytes]
        replay: list[bytes] | None
        principal: str | None
        authority: str
        path: str
        path_b: bytes
        method_b: bytes
        host_b: bytes
        parts: list[bytes]
        xff: bytes | None
        xfp: bytes | None
        chunked: bool
        cluster: str | None
        upstream: str | None
        mirror: list[Any] | None
        resp_extra: bytes
        req_done: bool
        discard: bool
        replay_size: int

        def reply(self, status: int, flag: str, body: str, headers: bytes = b"", exact: bytes | None = None) -> None: ...
        def finish(self) -> None: ...
        def flush(self) -> None: ...
        def flush_up(self) -> None: ...

    def start(self) -> None:
        """Begin serving the request (headers complete and the connection is ours)."""
        self.live = True
        dp = self.dp
        dp.inflight += 1
        dp.requests += 1
        lr = self.lr
        if lr.tracer is not None or lr.telemetry:
            self.t0 = dp.loop.time()
            self.start_time = _wall()
        if lr.tracer is not None:
            try:
                lr.tracer.begin(self)
            except Exception:  # noqa: BLE001 - tracing must never break the data path
                dp.stats["tracing_errors"] += 1
        if lr.started:
            for started in lr.started:
                try:
                    started(self)
                except Exception:  # noqa: BLE001 - a sink must never break the data path
                    dp.stats["telemetry_errors"] += 1
        if lr.authn or lr.authz:
            self.access(0, 0, _NOVALUE)
        else:
            self.route()

    # ── authentication and authorization ─────────────────────────────────
    def access(self, stage: int, index: int, value: Any) -> None:
        """Run the authenticators, then the authorizers (any DENY wins), then route.

        Runs synchronously until a strategy returns an awaitable; the rest of
        the chain then continues in a task.
        """
        lr = self.lr
        chains = (lr.authn, lr.authz)
        while stage < 2:
            chain = chains[stage]
            while index < len(chain):
                if value is _NOVALUE:
                    try:
                        value = chain[index].authenticate(self) if stage == 0 else chain[index].authorize(self)
                    except PermissionError as exc:
                        if stage == 0:
                            return self.reply(401, "-", f"unauthenticated: {exc}")
                        return self.reply(403, "-", f"RBAC: access denied: {exc}")
                    except Exception as exc:  # noqa: BLE001
                        kind = "authenticator" if stage == 0 else "authorizer"
                        return self.reply(500, "-", f"{kind} {type(chain[index]).__name__} failed: {exc!r}")
                    if not isinstance(value, _SYNC_TYPES):
                        self.task = self.dp.loop.create_task(self._await_access(stage, index, value))
                        return None
                if stage == 0:
                    if value is not None and self.principal is None:
                        self.principal = value
                elif value is Decision.DENY:
                    return self.reply(403, "-", f"RBAC: access denied by {type(chain[index]).__name__} on listener {lr.name}")
                value = _NOVALUE
                index += 1
            stage += 1
            index = 0
        self.route()
        return None

    async def _await_access(self, stage: int, index: int, awaitable: Any) -> None:
        try:
            value = await awaitable
        except PermissionError as exc:
            self.task = None
            self.reply(401 if stage == 0 else 403, "-", f"{'unauthenticated' if stage == 0 else 'RBAC: access denied'}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001
            self.task = None
            self.reply(500, "-", f"access check failed: {exc!r}")
            return
        self.task = None
        if not self.finished:
            self.access(stage, index, value)

    # ── routing ──────────────────────────────────────────────────────────
    def route(self) -> None:
        """Match a route and act on it: direct response, redirect, or forward."""
        lr = self.lr
        try:
            route = lr.router.match(self)
        except Exception as exc:  # noqa: BLE001
            return self.reply(500, "-", f"router of listener {lr.name} failed: {exc!r}")
        if route is None:
            table = lr.listener.route_table
            if lr.listener.mode == "http_proxy":
                return self.reply(502, F.NR, f"no route to host {self.authority} (listener {lr.name}, route table {table})")
            return self.reply(404, F.NR, f"no route for {self.authority}{self.path} (listener {lr.name}, route table {table})")
        plan = lr.plans.get(id(route))
        if plan is None or plan.route is not route:
            try:
                plan = lr.plan(route)
            except KeyError as exc:  # as Envoy: a route naming a cluster it does not know is 503 NC
                return self.reply(503, F.NC, f"route {route.name} names cluster {exc} that is not configured")
            except ValueError as exc:
                return self.reply(500, "-", f"route {route.name} cannot be served: {exc}")
        self.plan = plan
        if plan.policies:
            return self._policies(plan)
        if plan.kind:
            return self._local_route(plan)
        crt = self.crt = plan.choose()
        self.cluster = crt.name
        crt.rq_total += 1
        self.head = self.build_head(plan)
        if plan.timeout is not None:
            self.deadline = self.dp.loop.call_later(plan.timeout, self.on_deadline)
        self.attempt()
        return None

    def _local_route(self, plan: RoutePlan) -> None:
        if plan.kind == RoutePlan.DIRECT:
            assert plan.direct is not None
            status, body = plan.direct
            return self.reply(status, "-", "", exact=body)
        redirect = plan.redirect
        assert redirect is not None
        scheme = redirect.scheme or ("https" if self.proto.tls else "http")
        authority = redirect.host or self.authority
        if redirect.port is not None:  # 0: no port in the location (the scheme's default)
            name, colon, port = authority.rpartition(":")
            host = name if colon and port.isdigit() else authority
            authority = host if redirect.port == 0 else f"{host}:{redirect.port}"
        location = f"{scheme}://{authority}{redirect.path or self.path}"
        return self.reply(redirect.status, "-", "", headers=b"location: %s\r\n" % location.encode("latin-1"), exact=b"")

    # ── route policies: CORS, fault injection, mirroring (routes that have them only) ──
    def _policies(self, plan: RoutePlan) -> None:
        """CORS (a preflight is answered here), then the fault (delay, abort), then forward and mirror."""
        self.resp_extra = b""
        cors = plan.cors
        if cors is not None:
            origin = self.header("origin")
            if origin is not None and cors.allows(origin):
                if self.method_b == b"OPTIONS" and self.header("access-control-request-method") is not None:
                    return self.reply(200, "-", "", headers=cors.preflight(origin), exact=b"")
                self.resp_extra = cors.actual(origin)
        fault = plan.fault
        if fault is not None:
            if not plan.kind:  # as Envoy: the cluster is chosen with the route, so a fault's reply names it
                self.crt = plan.choose()
                self.cluster = self.crt.name
            delay, delay_percent = fault[0], fault[1]
            if delay is not None and random.random() * 100 < delay_percent:
                self.flags = F.DI
                self.timer = self.dp.loop.call_later(delay, self._delayed)
                return None
            if self._abort(fault):
                return None
        return self._forward(plan)

    def _delayed(self) -> None:
        self.timer = None
        if self.finished:
            return
        plan = self.plan
        if not self._abort(plan.fault):
            self._forward(plan)

    def _abort(self, fault: Any) -> bool:
        status, percent = fault[2], fault[3]
        if status is not None and random.random() * 100 < percent:
            self.reply(status, F.FI, "fault filter abort")
            return True
        return False

    def _forward(self, plan: RoutePlan) -> None:
        if plan.kind:
            return self._local_route(plan)
        crt = self.crt
        if crt is None:
            crt = self.crt = plan.choose()
        self.cluster = crt.name
        crt.rq_total += 1
        self.head = self.build_head(plan)
        if plan.mirrors:
            chosen = [m for m, percent in plan.mirrors if random.random() * 100 < percent]
            if chosen:
                self.mirror = chosen
                if self.req_done:
                    self.fire_mirrors()
        if plan.timeout is not None:
            self.deadline = self.dp.loop.call_later(plan.timeout, self.on_deadline)
        self.attempt()
        return None

    def fire_mirrors(self) -> None:
        """Send the chosen mirrors a copy of the (complete, buffered) request; never waits for them."""
        chosen, self.mirror = self.mirror, None
        stats = self.dp.stats
        if chosen is None or self.discard:
            return
        body = self.replay
        if body is None:  # larger than REPLAY_LIMIT: not kept, so not mirrored
            stats["mirror_rq_skipped"] += len(chosen)
            return
        head = shadow_head(self.head)
        timeout = self.plan.timeout or MIRROR_TIMEOUT
        for crt in chosen:
            try:
                ep = crt.pick(self)
            except Exception:  # noqa: BLE001 - a mirror never affects the request
                ep = None
            if ep is None:
                stats["mirror_rq_failed"] += 1
                continue
            tls = crt.tls.for_endpoint(ep) if crt.tls is not None else None
            task = self.dp.loop.create_task(send_mirror(ep, [head, *body], timeout, stats, crt.release, tls))
            _MIRROR_TASKS.add(task)
            task.add_done_callback(_MIRROR_TASKS.discard)

    def build_head(self, plan: RoutePlan) -> bytes:
        """The request head sent upstream: rewritten, hop-by-hop headers gone, x-forwarded-* added."""
        proto = self.proto
        path_b = self.path_b if plan.prefix_rewrite is None else plan.rewrite_path(self.path).encode("latin-1")
        head = [self.method_b, b" ", path_b, b" HTTP/1.1\r\nhost: ", plan.host_rewrite or self.host_b, b"\r\n"]
        parts = self.parts
        names = plan.set_names
        if names:
            for i in range(0, len(parts), 4):
                if parts[i] not in names:
                    head += parts[i:i + 4]
        else:
            head += parts
        xff = self.xff
        xfp = self.xfp
        if xff is None and xfp is None:
            head.append(proto.fwd_lines)
        else:
            head += (b"x-forwarded-for: ", proto.xff_peer if xff is None else xff + b", " + proto.xff_peer, b"\r\n")
            head.append(proto.xfp_line if xfp is None or proto.slot.overwrite_xfp else b"x-forwarded-proto: " + xfp + b"\r\n")
            head.append(proto.xfcc)
        head.append(plan.set_headers)
        peer = self.lr.peer_line
        if peer:
            head.append(peer)
        head.append(b"transfer-encoding: chunked\r\n\r\n" if self.chunked else b"\r\n")
        return b"".join(head)

    # ── attempts ─────────────────────────────────────────────────────────
    def attempt(self) -> None:
        """Pick an endpoint (another one on retries, when possible) and send."""
        crt = self.crt
        tried = self.tried
        try:
            ep = crt.pick(self, tried) if tried else crt.pick(self)
            if ep is None and tried:
                ep = crt.pick(self)
        except Exception as exc:  # noqa: BLE001
            return self.reply(503, F.UH, f"load balancer of cluster {crt.name} failed: {exc!r}")
        if ep is None:
            return self.attempt_failed(F.UH, f"no healthy upstream for cluster {crt.name}", False, 503)
        self.endpoint = self.picked = ep
        tls = crt.tls
        pool = self.dp.pools[(ep.address, ep.port) if tls is None else tls.key(ep)]
        self.upstream = pool.label
        per_try = self.plan.retry.per_try_timeout
        if per_try is not None:
            self.timer = self.dp.loop.call_later(per_try, self.on_try_timeout)
        idle = pool.idle  # pool.pop_idle(), inline
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                self.send(conn)
                return None
        self.task = self.dp.loop.create_task(self.dial(pool))
        return None

    def send(self, conn: Any) -> None:
        """Start the request on a connection: head and the body read so far."""
        self.up = conn
        conn.ex = self
        conn.got_bytes = False
        self.buf.insert(0, self.head)
        self.buf_size = 0
        proto = self.proto
        if proto.blocks & 2:
            proto.unblock(2)
        if not proto.feeding:
            self.flush_up()

    async def dial(self, pool: Any) -> None:
        """Open a connection for this attempt, then send on it."""
        try:
            conn = await pool.connect(self.crt.connect_timeout)
        except (OSError, TimeoutError) as exc:
            self.task = None
            if self.finished:
                return
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.release_pick()
            why = f"upstream connect error to cluster {self.crt.name} endpoint {pool.label}: {_why(exc)}"
            self.attempt_failed(connect_flag(exc), why, self.plan.retry.on_connect, 503)
            return
        self.task = None
        if self.finished:
            pool.release(conn, True)
        else:
            self.send(conn)

    def can_replay(self) -> bool:
        """Whether the request can be sent again (nothing sent yet, or all of it kept)."""
        return self.replay is not None or not self.sent_any

    def attempt_failed(self, flag: str, why: str, retriable: bool, status: int) -> None:
        """An attempt failed before a response was forwarded: retry, or answer."""
        retry = self.plan.retry
        if retriable and self.retries < retry.attempts and self.can_replay():
            self.retries += 1
            self.dp.stats["upstream_rq_retry"] += 1
            if self.endpoint is not None:
                if self.tried is None:
                    self.tried = []
                self.tried.append(self.endpoint)
            if self.sent_any:
                self.buf = list(self.replay)  # type: ignore[arg-type]
                self.sent_any = False
            self.attempt()
            return
        if retriable and self.retries:
            flag = F.combine(F.URX, flag)
        self.reply(status, flag, why)

    def drop_attempt(self) -> None:
        """Give up the current attempt's connection or connect task."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        conn = self.up
        if conn is not None:
            self.up = None
            conn.abort()
        self.release_pick()
        self.proto.unblock(1)

    def release_pick(self) -> None:
        picked = self.picked
        if picked is not None:
            self.picked = None
            release = self.crt.release
            if release is not None:
                release(picked)

    def abandon(self, keep_up: bool = False) -> None:
        """Stop timers, tasks and (unless `keep_up`) the upstream attempt."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if keep_up:
            self.release_pick()
        else:
            self.drop_attempt()

    def on_try_timeout(self) -> None:
        self.timer = None
        if self.started or self.finished:
            return
        self.drop_attempt()
        timeout = self.plan.retry.per_try_timeout
        why = f"upstream per-try timeout ({timeout:g}s) waiting for cluster {self.crt.name} endpoint {self.upstream}"
        self.attempt_failed(F.UT, why, self.plan.retry.on_timeout, 504)

    def on_deadline(self) -> None:
        self.deadline = None
        if self.started or self.finished:
            return
        why = f"upstream request timeout ({self.plan.timeout:g}s) waiting for cluster {self.crt.name} endpoint {self.upstream}"
        self.reply(504, F.UT, why)

    def up_lost(self, conn: Any, exc: BaseException | None, protocol_error: bool) -> None:
        """The upstream connection closed or failed while serving this exchange."""
        self.up = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.release_pick()
        self.proto.unblock(1)
        if self.finished:
            return
        if self.started:  # mid-response: nothing to retry, cut the downstream connection
            self.flags = F.combine(self.flags, F.UPE if protocol_error else F.UR)
            self.flush()
            self.close = True
            self.finish()
            return
        if protocol_error:
            why = f"upstream protocol error from cluster {self.crt.name} endpoint {self.upstream}: {exc}"
            return self.attempt_failed(F.UPE, why, self.plan.retry.on_reset, 502)
        if conn.reused and not conn.got_bytes and not self.fresh and self.can_replay():
            # A pooled connection the upstream had closed: once, transparently, on a fresh one.
            self.fresh = True
            self.picked = self.endpoint
            if self.sent_any:
                self.buf = list(self.replay)  # type: ignore[arg-type]
                self.sent_any = False
            self.task = self.dp.loop.create_task(self.dial(self.dp.pools[conn.pool.key]))
            return None
        why = f"upstream connection to cluster {self.crt.name} endpoint {self.upstream} closed before response headers"
        if exc is not None:
            why += f": {_why(exc)}"
        return self.attempt_failed(F.UC, why, self.plan.retry.on_reset, 503)
