"""Telemetry sinks on Envoy: the agent turns Envoy's access-log lines into sink calls.

Envoy writes one JSON line per request (per TCP connection: one when the
upstream connects, one at close) to its stdout, which the agent reads
(:func:`pump`); the line's fields are listed in
:mod:`knotwork_envoy.translate.observe`. For each line the agent builds
plain view objects that satisfy :class:`~knotwork.protocols.RequestView`,
:class:`~knotwork.protocols.ResponseInfo` and :class:`~knotwork.protocols.TcpInfo`
and calls the listener's sinks — the same ``metrics`` and ``access-log``
strategies the native engine runs, so labels and log lines are identical.

The chain of a line is built once per distinct ``knotwork`` constant
(listener, mode, protocol, sink chain, observability): each installed
telemetry :class:`~knotwork.records.Strategy` that supports engine
``envoy`` is made with ``factory(listener, settings)``, the listener being a
:class:`~knotwork.proxyconfig.Listener` carrying the observability. An HTTP
request's sinks see ``request_started`` and ``request_finished`` one after
the other, when the request is done (Envoy logs once). Lines that are not
access-log lines (Envoy's own output) go to the agent's stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import structlog
from knotwork.proxyconfig import Listener, Observability, PeerInfo, wire
from knotwork.records import Strategy

__all__ = ["AccessLogSinks", "ConnectionInfo", "RequestInfo", "ResponseData", "TcpData", "pump"]

log = structlog.get_logger("knotwork.envoy.telemetry").bind(plugin="envoy")

#: Chains kept (a config change makes new ones; old ones go when there are too many).
MAX_CHAINS = 256
_NO_LABELS: dict[str, str] = {}


def _address(text: str | None) -> tuple[str, int]:
    """``ip:port`` / ``[v6]:port`` → (ip, port); ("", 0) when unknown."""
    if not text:
        return ("", 0)
    host, _, port = text.rpartition(":")
    try:
        return (host.strip("[]"), int(port))
    except ValueError:
        return (text, 0)


def _identity(san: str | None) -> str | None:
    if not san:
        return None
    for name in san.split(","):
        if name.startswith("spiffe://"):
            return name
    return san.split(",")[0] or None


class ConnectionInfo:
    """A downstream connection (:class:`~knotwork.protocols.ConnectionView`)."""

    __slots__ = ("local_address", "peer_address", "peer_identity", "tls")

    def __init__(self, line: dict[str, Any]) -> None:
        self.peer_address = _address(line.get("remote"))
        self.local_address = _address(line.get("local"))
        self.peer_identity = _identity(line.get("san"))
        self.tls = bool(line.get("tls"))


class RequestInfo:
    """One request (:class:`~knotwork.protocols.RequestView`) as Envoy logged it."""

    __slots__ = ("_headers", "authority", "connection", "method", "path", "principal", "protocol",
                 "source_labels", "start_time", "trace_id")

    def __init__(self, line: dict[str, Any], connection: ConnectionInfo) -> None:
        self.method = line.get("method") or ""
        self.path = line.get("path") or ""
        self.authority = (line.get("authority") or "").lower()
        self.connection = connection
        self.principal: str | None = None
        self.source_labels = _NO_LABELS
        self.protocol = line.get("protocol") or ""
        self.start_time = float(line.get("start") or 0.0)
        trace = line.get("trace")
        self.trace_id = trace.rjust(32, "0") if trace else None  # a 64-bit B3 id, widened as OTLP does
        self._headers: dict[str, str | None] = line.get("headers") or {}

    def header(self, name: str) -> str | None:
        if name in ("host", ":authority"):
            return self.authority or None
        return self._headers.get(name)


class ResponseData:
    """How a request ended (:class:`~knotwork.protocols.ResponseInfo`)."""

    __slots__ = ("bytes_received", "bytes_sent", "cluster", "duration", "flags", "grpc_status", "status",
                 "upstream", "upstream_peer")

    def __init__(self, line: dict[str, Any], upstream_peer: PeerInfo | None) -> None:
        self.status = int(line.get("status") or 0)
        self.flags = line.get("flags") or "-"
        self.upstream = line.get("upstream")
        self.cluster = line.get("cluster")
        self.bytes_received = int(line.get("rx") or 0)
        self.bytes_sent = int(line.get("tx") or 0)
        us = line.get("us")
        self.duration = int(us) / 1e6 if us is not None else int(line.get("ms") or 0) / 1e3
        self.upstream_peer = upstream_peer
        self.grpc_status = str(line.get("grpc") or line.get("grpc_h") or "")


class TcpData:
    """One TCP connection (:class:`~knotwork.protocols.TcpInfo`)."""

    __slots__ = ("bytes_received", "bytes_sent", "cluster", "connection", "duration", "flags", "start_time",
                 "upstream", "upstream_peer")

    def __init__(self, line: dict[str, Any], connection: ConnectionInfo, upstream_peer: PeerInfo | None) -> None:
        self.connection = connection
        self.start_time = float(line.get("start") or 0.0)
        self.cluster = line.get("cluster")
        self.upstream = line.get("upstream")
        self.upstream_peer = upstream_peer
        self.flags = line.get("flags") or "-"
        self.bytes_received = int(line.get("rx") or 0)
        self.bytes_sent = int(line.get("tx") or 0)
        self.duration = int(line.get("ms") or 0) / 1e3


class _Chain:
    """The sinks of one listener config, with their methods looked up once."""

    __slots__ = ("client_side", "finished", "started", "tcp_closed", "tcp_opened")

    def __init__(self, sinks: list[Any], mode: str) -> None:
        def methods(name: str) -> tuple[Callable[..., Any], ...]:
            return tuple(m for m in (getattr(s, name, None) for s in sinks) if callable(m))

        self.started, self.finished = methods("request_started"), methods("request_finished")
        self.tcp_opened, self.tcp_closed = methods("tcp_opened"), methods("tcp_closed")
        self.client_side = mode != "inbound"  # the upstream peer is the destination workload


class AccessLogSinks:
    """Runs the telemetry sinks of Envoy's access-log lines (see the module docstring)."""

    def __init__(self, strategies: Mapping[str, Strategy], settings: Mapping[str, Any]) -> None:
        self.strategies, self.settings = strategies, settings
        self._chains: dict[str, _Chain] = {}
        self._peers: dict[tuple[str, ...], PeerInfo] = {}
        self._warned: set[str] = set()
        #: lines handled, and sink calls that raised
        self.lines = 0
        self.errors = 0

    def _warn_once(self, key: str, event: str, **kw: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(event, **kw)

    def chain(self, key: str) -> _Chain:
        """The chain of a line's ``knotwork`` constant (built on first sight)."""
        found = self._chains.get(key)
        if found is not None:
            return found
        data = json.loads(key)
        obs = wire.structure(data["observability"], Observability)
        listener = Listener(name=data["listener"], address="", port=0, mode=data["mode"],
                            protocol=data.get("protocol", "http"), telemetry=tuple(data["sinks"]), observability=obs)
        sinks = []
        for name in listener.telemetry:
            record = self.strategies.get(name)
            if record is None:
                self._warn_once(f"missing:{name}", "telemetry strategy not installed in this proxy; skipped", sink=name)
                continue
            if "envoy" not in record.engines:
                self._warn_once(f"engine:{name}", "telemetry strategy does not support the envoy engine; skipped",
                                sink=name, engines=sorted(record.engines))
                continue
            try:
                sinks.append(record.factory(listener, self.settings.get(name)))
            except Exception as exc:  # noqa: BLE001 - one sink that refuses its config must not stop the others
                self._warn_once(f"factory:{name}:{key}", "telemetry strategy refused the listener's config; skipped",
                                sink=name, listener=listener.name, error=repr(exc))
        if len(self._chains) >= MAX_CHAINS:
            self._chains.clear()
        made = self._chains[key] = _Chain(sinks, listener.mode)
        log.debug("telemetry chain built", listener=listener.name, sinks=[type(s).__name__ for s in sinks])
        return made

    def _peer(self, chain: _Chain, line: dict[str, Any]) -> PeerInfo | None:
        if not chain.client_side or not line.get("upstream"):
            return None
        meta = line.get("peer")
        if not isinstance(meta, dict):
            return self._peers.setdefault((), PeerInfo())
        key = tuple(str(meta.get(f, "unknown")) for f in ("workload", "namespace", "app", "version", "principal"))
        peer = self._peers.get(key)
        if peer is None:
            if len(self._peers) >= 4096:
                self._peers.clear()
            peer = self._peers[key] = PeerInfo(*key)
        return peer

    def handle(self, line: dict[str, Any]) -> None:
        """Run the sinks of one parsed access-log line."""
        chain = self.chain(line["knotwork"])
        self.lines += 1
        connection = ConnectionInfo(line)
        kind = line.get("type")
        if kind is None:
            request = RequestInfo(line, connection)
            response = ResponseData(line, self._peer(chain, line))
            for started in chain.started:
                self._call(started, request)
            for finished in chain.finished:
                self._call(finished, request, response)
        elif kind == "TcpUpstreamConnected":
            info = TcpData(line, connection, self._peer(chain, line))
            for opened in chain.tcp_opened:
                self._call(opened, info)
        elif kind == "TcpConnectionEnd":
            info = TcpData(line, connection, self._peer(chain, line))
            for closed in chain.tcp_closed:
                self._call(closed, info)

    def _call(self, method: Callable[..., Any], *args: Any) -> None:
        try:
            method(*args)
        except Exception as exc:  # noqa: BLE001 - a failing sink must not stop the others or the log stream
            self.errors += 1
            self._warn_once(f"sink:{getattr(method, '__qualname__', method)}", "telemetry sink failed", error=repr(exc))

    def feed(self, raw: bytes) -> bool:
        """Handle one line of Envoy's stdout; False when it is not an access-log line."""
        if not raw.startswith(b"{"):
            return False
        try:
            line = json.loads(raw)
        except ValueError:
            return False
        if not isinstance(line, dict) or not isinstance(line.get("knotwork"), str):
            return False
        try:
            self.handle(line)
        except (ValueError, TypeError, KeyError) as exc:
            self._warn_once(f"line:{type(exc).__name__}", "access-log line not understood", error=repr(exc))
        return True


async def pump(stream: asyncio.StreamReader, sinks: AccessLogSinks, passthrough: BinaryIO | None = None) -> None:
    """Feed Envoy's stdout to `sinks` until it ends; other output goes to `passthrough` (stderr)."""
    out = passthrough if passthrough is not None else sys.stderr.buffer
    while True:
        try:
            raw = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as end:
            if end.partial:
                out.write(end.partial)
                out.flush()
            return
        except asyncio.LimitOverrunError as over:  # a line longer than the buffer: not ours
            out.write(await stream.readexactly(over.consumed))
            continue
        if not sinks.feed(raw):
            out.write(raw)
            out.flush()
