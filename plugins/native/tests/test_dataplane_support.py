"""Helpers for the data plane tests (no tests here): in-test strategies,
resource builders, loopback upstream servers and a raw HTTP/1.1 client."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import httptools
import pytest
from knotwork.protocols import Decision
from knotwork.proxyconfig import (
    Cluster,
    EndpointSet,
    LbEndpoint,
    Listener,
    Route,
    RouteAction,
    RouteMatch,
    RouteTable,
    VirtualHost,
    WeightedCluster,
)
from knotwork.records import ProxyContext, Strategy

from knotwork_native.dataplane import DataPlane

# ── in-test strategies ───────────────────────────────────────────────────────


class HostRouter:
    """Virtual host by authority (exact, without port, `*.suffix`, `*`), then first matching route."""

    def __init__(self, table: RouteTable, settings: Any = None) -> None:
        self.vhosts = table.virtual_hosts

    def match(self, request: Any) -> Route | None:
        host = request.authority
        bare = host.rsplit(":", 1)[0]
        for vh in self.vhosts:
            if any(d == "*" or d in (host, bare) or (d.startswith("*.") and bare.endswith(d[1:])) for d in vh.domains):
                for route in vh.routes:
                    m = route.match
                    path = request.path.split("?", 1)[0]
                    if m.path is not None and path != m.path:
                        continue
                    if m.prefix is not None and not path.startswith(m.prefix):
                        continue
                    if all(request.header(h.name) == h.exact for h in m.headers if h.exact is not None):
                        return route
                return None
        return None


class RoundRobin:
    """Healthy endpoints in turn; skips `exclude` when it can; counts releases."""

    instances: list[RoundRobin] = []

    def __init__(self, cluster: Cluster, settings: Any = None) -> None:
        self.endpoints: list[LbEndpoint] = []
        self.next = 0
        self.released = 0
        RoundRobin.instances.append(self)

    def update(self, endpoints: Iterable[LbEndpoint]) -> None:
        self.endpoints = [e for e in endpoints if e.healthy]

    def pick(self, request: Any, exclude: Any = ()) -> LbEndpoint | None:
        n = len(self.endpoints)
        for k in range(n):
            ep = self.endpoints[(self.next + k) % n]
            if ep not in exclude:
                self.next = (self.next + k + 1) % n
                return ep
        return None

    def release(self, endpoint: LbEndpoint) -> None:
        self.released += 1


class RecordingSink:
    """Telemetry sink keeping (status, flags, cluster, upstream) of finished requests."""

    records: list[dict[str, Any]] = []

    def __init__(self, listener: Listener, settings: Any = None) -> None:
        self.listener = listener

    def request_started(self, request: Any) -> None:
        request.header("x-request-id")

    def request_finished(self, request: Any, info: Any) -> None:
        RecordingSink.records.append({
            "listener": self.listener.name, "path": request.path, "status": info.status, "flags": info.flags,
            "cluster": info.cluster, "upstream": info.upstream, "principal": request.principal,
            "duration": info.duration, "bytes_sent": info.bytes_sent,
        })


class TokenAuthenticator:
    """Async: `authorization: Bearer <user>` → principal `user:<user>`; `Bearer bad` → 401."""

    def __init__(self, listener: Listener, settings: Any = None) -> None:
        pass

    async def authenticate(self, request: Any) -> str | None:
        await asyncio.sleep(0)
        token = request.header("authorization")
        if token is None:
            return None
        if token == "Bearer bad":
            raise PermissionError("token rejected")
        return "user:" + token.removeprefix("Bearer ")


class HeaderAuthorizer:
    """DENY when `x-deny` is present or the principal is `user:mallory`; else ABSTAIN."""

    def __init__(self, listener: Listener, settings: Any = None) -> None:
        pass

    def authorize(self, request: Any) -> Decision:
        if request.header("x-deny") is not None or request.principal == "user:mallory":
            return Decision.DENY
        return Decision.ABSTAIN


def make_ctx() -> ProxyContext:
    def rec(name: str, factory: Callable[..., Any]) -> dict[str, Strategy]:
        return {name: Strategy(name=name, factory=factory)}

    return ProxyContext(
        node_id="test-node", control_address="", admin_port=0, settings=None,
        strategies={
            "routers": rec("host", HostRouter), "load_balancers": rec("round_robin", RoundRobin),
            "authenticators": rec("token", TokenAuthenticator), "authorizers": rec("header", HeaderAuthorizer),
            "telemetry": rec("recorder", RecordingSink),
        },
        drain_timeout=2.0,
    )


# ── resources ────────────────────────────────────────────────────────────────


def route(name: str, *clusters: str, prefix: str = "/", **action: Any) -> Route:
    weighted = tuple(WeightedCluster(c) for c in clusters)
    return Route(name, RouteMatch(prefix=prefix), action=RouteAction(weighted, **action))


def resources(
    *listeners: Listener, tables: Iterable[RouteTable] = (), clusters: dict[str, list[tuple[str, int]]] | None = None,
    unhealthy: Iterable[str] = (), **cluster_opts: Any,
) -> dict[str, dict[str, Any]]:
    """Resources keyed by type then name; `clusters` maps a name to endpoint addresses."""
    out: dict[str, dict[str, Any]] = {t: {} for t in ("secrets", "clusters", "endpoints", "listeners", "routes")}
    for lis in listeners:
        out["listeners"][lis.name] = lis
    for table in tables:
        out["routes"][table.name] = table
    for name, addrs in (clusters or {}).items():
        out["clusters"][name] = Cluster(name, connect_timeout=cluster_opts.get("connect_timeout", 1.0))
        healthy = name not in set(unhealthy)
        out["endpoints"][name] = EndpointSet(name, tuple(LbEndpoint(a, p, healthy=healthy) for a, p in addrs))
    return out


def table(name: str, *vhosts: tuple[str, tuple[str, ...], tuple[Route, ...]]) -> RouteTable:
    return RouteTable(name, tuple(VirtualHost(n, d, r) for n, d, r in vhosts))


async def start_dataplane(res: dict[str, dict[str, Any]], **kw: Any) -> DataPlane:
    dp = DataPlane(make_ctx(), node_id="test-node", **kw)
    await dp.apply(dp.build(res))
    return dp


# ── upstream servers ─────────────────────────────────────────────────────────


class Req:
    """A request as an upstream saw it."""

    def __init__(self) -> None:
        self.method = ""
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.done = False

    @property
    def path(self) -> str:
        return self.url.decode()


class _ReqParser:
    def __init__(self, on_body: Callable[[int], None] | None = None) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.current = Req()
        self.ready: collections.deque[Req] = collections.deque()
        self.body_hook = on_body

    def on_url(self, url: bytes) -> None:
        self.current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.setdefault(name.decode().lower(), value.decode())

    def on_headers_complete(self) -> None:
        self.current.method = self.parser.get_method().decode()

    def on_body(self, body: bytes) -> None:
        self.current.body += body
        if self.body_hook is not None:
            self.body_hook(len(body))

    def on_message_complete(self) -> None:
        self.current.done = True
        self.ready.append(self.current)
        self.current = Req()


Handler = Callable[["Upstream", Req, asyncio.StreamWriter, int], Awaitable[bool | None]]


async def default_handler(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
    await respond(writer, 200, f"{up.name} {req.method} {req.path}".encode())


async def respond(writer: asyncio.StreamWriter, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
    lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()


class Upstream:
    """A loopback HTTP/1.1 server; `handler` answers (returns True to close the connection)."""

    def __init__(self, name: str = "up", handler: Handler = default_handler) -> None:
        self.name = name
        self.handler = handler
        self.connections = 0
        self.requests: list[Req] = []
        self.body_bytes = 0
        self.body_event = asyncio.Event()
        self.body_threshold = 1 << 62
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def start(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def _on_body(self, n: int) -> None:
        self.body_bytes += n
        if self.body_bytes >= self.body_threshold:
            self.body_event.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        parser = _ReqParser(self._on_body)
        nth = 0
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                parser.parser.feed_data(data)
                while parser.ready:
                    req = parser.ready.popleft()
                    self.requests.append(req)
                    nth += 1
                    if await self.handler(self, req, writer, nth):
                        return
        except (ConnectionError, httptools.HttpParserError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self.writers):
            w.close()
        await asyncio.sleep(0)


async def echo_server() -> tuple[asyncio.AbstractServer, int]:
    """A TCP echo server that half-closes after the client does."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write(b"<eof>")
        writer.write_eof()
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def closed_port() -> int:
    """A loopback port nobody listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ── raw client ───────────────────────────────────────────────────────────────


class Resp:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.done = False

    @property
    def text(self) -> str:
        return self.body.decode()


class RawClient:
    """A keep-alive HTTP/1.1 client on one connection, parsing with httptools."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = httptools.HttpResponseParser(self)
        self.current = Resp()
        self.ready: collections.deque[Resp] = collections.deque()
        self.on_body_hook: Callable[[bytes], None] | None = None

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.on_body_hook is not None:
            self.on_body_hook(body)
        else:
            self.current.body += body

    def on_message_complete(self) -> None:
        self.current.done = True
        self.ready.append(self.current)
        self.current = Resp()

    async def request(
        self, method: str = "GET", path: str = "/", host: str = "svc", headers: dict[str, str] | None = None, body: bytes = b"",
    ) -> Resp:
        self.send(method, path, host, headers, body)
        return await self.response()

    def send(
        self, method: str = "GET", path: str = "/", host: str = "svc", headers: dict[str, str] | None = None, body: bytes = b"",
    ) -> None:
        hs = {"host": host, **(headers or {})}
        if body or method in ("POST", "PUT"):
            hs.setdefault("content-length", str(len(body)))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs.items()) + "\r\n"
        self.writer.write(head.encode() + body)

    async def response(self, timeout: float = 5.0) -> Resp:
        async with asyncio.timeout(timeout):
            while not self.ready:
                data = await self.reader.read(1 << 20)
                if not data:
                    raise ConnectionError("connection closed before a response")
                self.parser.feed_data(data)
        return self.ready.popleft()

    async def closed(self, timeout: float = 5.0) -> bool:
        """Wait for the server to close the connection."""
        async with asyncio.timeout(timeout):
            while await self.reader.read(65536):
                pass
        return True

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Wait until `predicate()` holds, checking each loop turn, with a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def running(*upstreams: Upstream) -> AsyncIterator[None]:
    for up in upstreams:
        await up.start()
    try:
        yield
    finally:
        for up in upstreams:
            await up.close()


@contextlib.asynccontextmanager
async def dataplane(res: dict[str, dict[str, Any]], **kw: Any) -> AsyncIterator[DataPlane]:
    """A data plane with `res` applied; closed on exit."""
    dp = await start_dataplane(res, **kw)
    try:
        yield dp
    finally:
        await dp.aclose()


def http_listener(name: str = "in", mode: str = "inbound", table_name: str = "rt", **kw: Any) -> Listener:
    return Listener(name, "127.0.0.1", 0, mode, route_table=table_name, **kw)


def one_route(cluster: str = "c", domains: tuple[str, ...] = ("*",), name: str = "rt", **action: Any) -> RouteTable:
    """A route table sending everything for `domains` to `cluster`."""
    return table(name, ("vh", domains, (route("r", cluster, **action),)))


@pytest.fixture(name="anyio_backend", params=["asyncio", "uvloop"])
def both_event_loops(request: pytest.FixtureRequest) -> Any:
    """`anyio_backend` for modules that import it: each test on asyncio's loop and on uvloop (the production
    loop), which accept and wrap TLS their own way."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
        return ("asyncio", {"use_uvloop": True})
    return "asyncio"
