"""The proxy's admin endpoint: readiness, status, config dump, counters.

A tiny HTTP/1.1 server on loopback, off the request path:

- ``GET /ready`` → 200 ``LIVE`` once the first config is applied, else 503;
- ``GET /status`` → JSON: the data plane's status and the caller's extras;
- ``GET /config_dump`` → JSON of the applied resources, by type and name;
- ``GET /stats`` → plain-text counters, one ``name value`` per line;
- ``GET /stats/prometheus`` → the Prometheus text format: the process's
  ``prometheus_client`` registry (what telemetry sinks collect) and the
  engine's counters as ``knotwork_proxy_*``;
- ``GET /identity`` → JSON: the workload identity's status (SPIFFE ID, serial,
  validity, chain, renewals, last error; ``knotwork certs`` reads it), 404
  ``{"identity": null}`` when the proxy has none;
- ``POST /drain`` → starts draining (``ctx.drain_timeout``), answers 202.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httptools
from knotwork.proxyconfig import wire

from . import prometheus

__all__ = ["AdminServer"]


def _response(status: int, body: bytes, content_type: str = "text/plain") -> bytes:
    reason = {200: b"OK", 202: b"Accepted", 404: b"Not Found", 405: b"Method Not Allowed", 500: b"Internal Server Error",
              503: b"Service Unavailable"}
    return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nserver: knotwork\r\n\r\n%s" % (
        status, reason.get(status, b"Unknown"), content_type.encode(), len(body), body,
    )


class _AdminProtocol(asyncio.Protocol):
    def __init__(self, admin: AdminServer) -> None:
        self.admin = admin
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.admin.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.admin.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        path = self.url.decode("latin-1").split("?", 1)[0]
        try:
            data = self.admin.handle(method, path)
        except Exception as exc:  # noqa: BLE001 - the admin endpoint must answer
            data = _response(500, f"admin error: {exc!r}\n".encode())
        if self.transport is not None:
            self.transport.write(data)
            if not self.parser.should_keep_alive():
                self.transport.close()


class AdminServer:
    """The admin endpoint of one proxy, on ``127.0.0.1:port`` (0 picks a free port)."""

    def __init__(self, port: int, dataplane: Any, extra: Callable[[], dict[str, Any]] = dict, *, host: str = "127.0.0.1",
                 identity: Any = None) -> None:
        self.host = host
        self.identity = identity  # a WorkloadIdentity (GET /identity), or None
        self.port = port
        self.dataplane = dataplane
        self.extra = extra
        self.connections: set[_AdminProtocol] = set()
        self._server: asyncio.AbstractServer | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind and serve; `port` becomes the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _AdminProtocol(self), self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)

    async def __aenter__(self) -> AdminServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def handle(self, method: str, path: str) -> bytes:
        """The full response to one admin request."""
        dp = self.dataplane
        if path == "/drain":
            if method != "POST":
                return _response(405, b"use POST\n")
            if self._drain is None:
                timeout = getattr(getattr(dp, "ctx", None), "drain_timeout", 3.0)
                self._drain = asyncio.get_running_loop().create_task(dp.drain(timeout))
            return _response(202, b"draining\n")
        if method not in ("GET", "HEAD"):
            return _response(405, b"use GET\n")
        if path == "/ready":
            return _response(200, b"LIVE\n") if dp.ready else _response(503, b"PRE_INITIALIZING\n")
        if path == "/status":
            body = {**dp.status(), **self.extra()}
            return _response(200, json.dumps(body, indent=1, default=str).encode(), "application/json")
        if path == "/config_dump":
            rt = dp.runtime
            resources = rt.resources if rt is not None else {}
            dump = {t: {name: wire.unstructure(res) for name, res in by_name.items()} for t, by_name in resources.items()}
            return _response(200, json.dumps(dump, indent=1, default=str).encode(), "application/json")
        if path == "/stats":
            return _response(200, dp.stats_text().encode())
        if path == "/stats/prometheus":
            return _response(200, prometheus.render(dp), prometheus.CONTENT_TYPE)
        if path == "/identity":
            if self.identity is None:
                return _response(404, b'{"identity": null}\n', "application/json")
            return _response(200, json.dumps(self.identity.status(), indent=1, default=str).encode(), "application/json")
        return _response(404, b"admin endpoints: /ready /status /config_dump /stats /stats/prometheus /identity /drain\n")
