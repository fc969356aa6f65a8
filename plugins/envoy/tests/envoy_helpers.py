"""Helpers for the envoy engine's tests (no tests here): snapshot builders,
loopback upstreams, a running xDS server and agent, a raw HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import anyio
from knotwork.distribution import SnapshotCache
from knotwork.proxyconfig import (
    Cluster,
    EndpointSet,
    LbEndpoint,
    Listener,
    ProxySnapshot,
    Route,
    RouteAction,
    RouteMatch,
    RouteTable,
    VirtualHost,
    WeightedCluster,
)
from knotwork.records import ComponentContext, ProxyContext

from knotwork_envoy.httpio import read_chunked, read_request
from knotwork_envoy.proxy import EnvoyProxy
from knotwork_envoy.server import EnvoyServer
from knotwork_envoy.settings import EnvoySettings

NODE = "sidecar~test-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition", interval: float = 0.005) -> Any:
    """Poll `predicate` (sync or async) until truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


# ── snapshots ────────────────────────────────────────────────────────────────


def route(name: str, cluster: str | Iterable[tuple[str, int]], **kw: Any) -> Route:
    match = kw.pop("match", RouteMatch())
    clusters = (WeightedCluster(cluster),) if isinstance(cluster, str) else tuple(WeightedCluster(c, w) for c, w in cluster)
    return Route(name=name, match=match, action=RouteAction(clusters=clusters, **kw))


def table(name: str, *vhosts: tuple[str, tuple[str, ...], tuple[Route, ...]]) -> RouteTable:
    return RouteTable(name=name, virtual_hosts=tuple(VirtualHost(n, d, r) for n, d, r in vhosts))


def clusters(spec: dict[str, list[tuple[str, int]] | list[LbEndpoint]], **kw: Any) -> list[Any]:
    out: list[Any] = []
    for name, eps in spec.items():
        out.append(Cluster(name=name, **kw))
        out.append(EndpointSet(name=name, endpoints=tuple(e if isinstance(e, LbEndpoint) else LbEndpoint(*e) for e in eps)))
    return out


def snapshot(*resources: Any) -> ProxySnapshot:
    snap = ProxySnapshot.build(resources)
    snap.check()
    return snap


def http_listener(name: str, port: int, table_name: str, mode: str = "inbound") -> Listener:
    return Listener(name=name, address="127.0.0.1", port=port, mode=mode, route_table=table_name)


# ── upstreams ────────────────────────────────────────────────────────────────


class Upstream:
    """A loopback HTTP/1.1 server answering ``<name> <METHOD> <path>`` (or a custom handler)."""

    def __init__(self, name: str, handler: Callable[..., Awaitable[None]] | None = None, *, tls: Any = None) -> None:
        self.name, self.handler, self.tls = name, handler, tls  # tls: an ssl.SSLContext to serve HTTPS
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.peer_certs: list[Any] = []  # the client certificate of each TLS connection (None: none)
        self.connections = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, reuse_address=True, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.tls is not None:
            self.peer_certs.append(writer.get_extra_info("peercert"))
        try:
            while True:
                method, path, _, headers, _ = await read_request(reader)
                self.requests.append((method, path, headers))
                if self.handler is not None:
                    await self.handler(self, method, path, headers, writer)
                else:
                    body = f"{self.name} {method} {path}".encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def running(*ups: Upstream) -> AsyncIterator[None]:
    for up in ups:
        await up.start()
    try:
        yield
    finally:
        for up in ups:
            await up.stop()


async def tcp_echo() -> tuple[asyncio.AbstractServer, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        try:
            while data := await reader.read(65536):
                writer.write(b"echo:" + data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


# ── the control plane side and the proxy ────────────────────────────────────


@contextlib.asynccontextmanager
async def xds_server(cache: SnapshotCache, settings: EnvoySettings | None = None, port: int = 0,
                     **options: Any) -> AsyncIterator[EnvoyServer]:
    """The xDS server on loopback; `options` (``ssl``, ``authorize``) as the control plane passes them."""
    ctx = ComponentContext(mesh=None, settings=settings, mesh_dir=None, state_dir=None,  # type: ignore[arg-type]
                           options={"listen": f"127.0.0.1:{port}", **options})
    server = EnvoyServer(ctx, cache)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def envoy_proxy(control: tuple[str, int], node: str = NODE, *, ready: bool = True, drain_timeout: float = 1.0,
                      settings: EnvoySettings | None = None, **identity: Any) -> AsyncIterator[EnvoyProxy]:
    """A running proxy agent; `identity`: ProxyContext's ``ca_address``, ``identity``, ``credential``, ``bundle_file``."""
    ctx = ProxyContext(node_id=node, control_address=f"{control[0]}:{control[1]}", admin_port=0,
                       settings=settings or EnvoySettings(), strategies={}, drain_timeout=drain_timeout, **identity)
    proxy = EnvoyProxy(ctx)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.run)
        try:
            if ready:
                await wait_for(lambda: proxy.agent.ready, 15, "envoy to be ready")
            yield proxy
        finally:
            tg.cancel_scope.cancel()


# ── a raw HTTP/1.1 client ────────────────────────────────────────────────────


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("latin-1")

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:200]!r}>"


async def read_response(reader: asyncio.StreamReader, head_only: bool = False) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
    if head_only or status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, b"")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return Response(status, headers, await read_chunked(reader, max_body=1 << 30))
    if "content-length" in headers:
        return Response(status, headers, await reader.readexactly(int(headers["content-length"])))
    return Response(status, headers, await reader.read())


async def get(port: int, path: str = "/", host: str = "svc", headers: dict[str, str] | None = None,
              method: str = "GET", timeout: float = 5.0) -> Response:
    """One request on a fresh connection."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            writer.write(f"{method} {path} HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n".encode())
            return await read_response(reader, head_only=method == "HEAD")
        finally:
            writer.close()


class ServerHandle:
    """An xDS server run in its own task, so a test can stop and restart it around a running Envoy."""

    def __init__(self, cache: SnapshotCache, port: int = 0) -> None:
        self.cache, self.port = cache, port
        self.server: EnvoyServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> EnvoyServer:
        ctx = ComponentContext(mesh=None, settings=None, mesh_dir=None, state_dir=None,  # type: ignore[arg-type]
                               options={"listen": f"127.0.0.1:{self.port}"})
        self.server = server = EnvoyServer(ctx, self.cache)
        self._task = asyncio.ensure_future(server.run())
        await wait_for(lambda: server.address is not None or self._task.done(), 10, "the xDS server to listen")
        assert server.address is not None
        self.port = server.address[1]
        return server

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class KeepAlive:
    """One keep-alive HTTP/1.1 connection for many requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> KeepAlive:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def get(self, path: str = "/", host: str = "svc", timeout: float = 5.0) -> Response:
        async with asyncio.timeout(timeout):
            self.writer.write(f"GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
            return await read_response(self.reader)

    async def aclose(self) -> None:
        self.writer.close()
