"""The ``access-log`` telemetry sink: one JSON line per request, and per TCP connection at its close.

Lines go to the proxy's stdout with ``"log_type": "access"``, so
``knotwork logs WORKLOAD --access`` picks them out of the proxy's log. Field
names follow Envoy's and Istio's JSON access log (see docs/observability.md).

Cost: this is on every request's path (bench/ telemetry case). Measured on
the 2-core CI machine, one line took ~12 µs to make (in a tight loop; three
to four times that in a loaded proxy) and one ``write`` system call, with
flush, per request. Now:

- A line is assembled as text. Its fixed parts — the fields a listener's
  lines share; the method, status, flags, upstream, cluster, authority and
  user agent of a kind of request; the identity fields of each peer — are
  encoded once, cached by what they depend on. Per request only the path,
  sizes, duration, request and trace ids, x-forwarded-for and client address
  are escaped (by the ``json`` module's C ``encode_basestring``) or
  formatted: ~5 µs. ``json.JSONEncoder.encode`` of those fields alone took
  ~9 µs. The timestamp's date and time are formatted once per second, the
  whole of it once per millisecond.
- Per request the sink only queues the raw values of its line in the
  process's pending list (see :mod:`.store`); the lines are made when the
  pending tuples are digested, together, with warm caches.
- Lines are written in batches, as Envoy flushes its access log files: the
  lines of an output queue and go out together through one
  ``structlog.WriteLogger`` write (one ``write`` system call) at the end of
  each flush of the pending tuples — at most :data:`FLUSH_DELAY` seconds
  after the first one queued — or as soon as :data:`FLUSH_SIZE` characters
  wait, and at exit. Lines stay whole and in order. Outside a running event
  loop (tests, tools) a line is written at once.
"""

from __future__ import annotations

import json
import sys
import time
from json.encoder import encode_basestring as _quote
from typing import IO, Any

import structlog
from knotwork.proxyconfig import PEER_HEADER, Listener

from . import peers
from . import store as _store
from .store import PENDING, PENDING_MAX, queued

__all__ = ["FLUSH_DELAY", "FLUSH_SIZE", "AccessLogSink", "flush", "rfc3339_ms"]

#: seconds a queued line may wait for others before the batch is written (the store's flush timer)
FLUSH_DELAY = _store.FLUSH_DELAY
#: characters queued that are written at once
FLUSH_SIZE = 64 * 1024

_encode = json.JSONEncoder(check_circular=False, separators=(",", ":"), ensure_ascii=False).encode
_second: list[Any] = [None, ""]
_milli: list[Any] = [None, ""]
_MAX_CACHED = 4096


def rfc3339_ms(t: float) -> str:
    """``2026-11-26T01:42:30.123Z`` for a ``time.time()`` value (UTC, milliseconds)."""
    total = int(t * 1000.0 + 0.001)  # + 1 µs: 30.123 is stored as 30.12299…
    if total == _milli[0]:
        return _milli[1]  # type: ignore[no-any-return]  # (a list of Any)
    sec, ms = divmod(total, 1000)
    if sec != _second[0]:
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _second[0] = sec
    text = f"{_second[1]}.{ms:03d}Z"
    _milli[0], _milli[1] = total, text
    return text


def _json(value: Any) -> str:
    """`value` as JSON: strings escaped as ``json`` does (``ensure_ascii=False``), None as null."""
    if value is None:
        return "null"
    if type(value) is str:
        return _quote(value)
    return _encode(value)


def _number(value: Any) -> str:
    return str(value) if type(value) is int else _encode(value)


def _nothing(*args: Any) -> None:
    return None


_ADDRESSES: dict[Any, str] = {}  # a connection's peer address (the same tuple for its requests) → JSON


def _address(addr: Any) -> str:
    found = _ADDRESSES.get(addr)
    if found is None:
        found = _quote(f"{addr[0]}:{addr[1]}") if addr else "null"
        if len(_ADDRESSES) >= _MAX_CACHED:
            _ADDRESSES.clear()
        _ADDRESSES[addr] = found
    return found


class _Output:
    """The queued lines of one output (the process's stdout), written together (see the module docstring)."""

    def __init__(self, file: IO[str]) -> None:
        self._logger = structlog.WriteLogger(file)
        self._lines: list[str] = []
        self._size = 0

    def write(self, line: str) -> None:
        """Queue `line` (written at the end of the store's flush, or now when the queue is long)."""
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_SIZE:
            self.flush()

    def flush(self) -> None:
        """Write the queued lines (one write)."""
        lines = self._lines
        if not lines:
            return
        self._lines = []
        self._size = 0
        try:
            self._logger.msg("\n".join(lines))
        except (OSError, ValueError):  # the output is gone (closed pipe or file): the lines with it
            pass


_OUTPUTS: dict[int, tuple[IO[str], _Output]] = {}


def _output(file: IO[str]) -> _Output:
    """The one queue of `file`, so the lines of every listener keep their order."""
    found = _OUTPUTS.get(id(file))
    if found is None or found[0] is not file:
        if len(_OUTPUTS) >= 64:  # outputs of tests and tools come and go
            flush()
            _OUTPUTS.clear()
        found = _OUTPUTS[id(file)] = (file, _Output(file))
    return found[1]


def _write_outputs() -> None:
    for _, output in list(_OUTPUTS.values()):
        output.flush()


_store.after_flush(_write_outputs)


def flush() -> None:
    """Make and write every queued line now (the store's flush: metrics too)."""
    _store.flush()


class AccessLogSink:
    """Writes one listener's access log lines; nothing when the listener's access log is off."""

    def __init__(self, listener: Listener, settings: Any = None, *, file: IO[str] | None = None) -> None:
        obs = listener.observability
        if obs is None or not obs.access_log:
            self.request_finished = self.tcp_opened = self.tcp_closed = _nothing
            return
        if obs.reporter not in ("source", "destination"):
            raise ValueError(f"observability.reporter: expected source or destination, got {obs.reporter!r}")
        self._write = _output(file or sys.stdout).write
        self._source_reporter = obs.reporter == "source"
        self._workload = obs.workload
        self._service = obs.service
        self._cache: dict[tuple[Any, ...], str] = {}
        self._lines: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        # the fields every line of this listener shares, encoded once
        self._head = _encode({"log_type": "access", "reporter": obs.reporter, "listener": listener.name})[:-1] + ","
        self._digest, self._tcp_line = self._line, self._tcp_line  # bound once: they go into every queued tuple

    def tcp_opened(self, info: Any) -> None:
        return None

    def _identities(self, header: str | None, identity: str | None, cluster: str | None, upstream: Any,
                    authority: str | None) -> str:
        """The encoded identity fields of a request or connection, cached by what they depend on."""
        key = (header, identity, cluster, upstream, authority)
        found = self._cache.get(key)
        if found is None:
            found = self._encode_identities(header, identity, cluster, upstream, authority)
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[key] = found
        return found

    def _encode_identities(self, header: str | None, identity: str | None, cluster: str | None, upstream: Any,
                           authority: str | None) -> str:
        if self._source_reporter:
            source, destination = self._workload, upstream or peers.UNKNOWN_PEER
            service = peers.service_of(cluster, authority)[0]
        else:
            source, destination = peers.source_peer(header, identity), self._workload
            service = self._service or peers.service_of(cluster, authority)[0]
        return _encode({
            "downstream_peer": identity,
            "upstream_peer": upstream.principal if upstream is not None and upstream.principal != "unknown" else None,
            "source_workload": source.workload,
            "source_namespace": source.namespace,
            "source_principal": source.principal,
            "destination_workload": destination.workload,
            "destination_namespace": destination.namespace,
            "destination_principal": destination.principal,
            "destination_service": service,
        })[1:-1]

    def request_finished(self, request: Any, response: Any) -> None:
        header = request.header
        connection = request.connection
        PENDING.append((
            self._digest, request.method, request.protocol, response.status, response.grpc_status, response.flags,
            response.upstream, response.cluster, request.authority, header("user-agent"), connection.peer_identity,
            response.upstream_peer, None if self._source_reporter else header(PEER_HEADER),
            request.start_time, request.path, response.bytes_received, response.bytes_sent, response.duration,
            header("x-request-id"), request.trace_id, header("x-forwarded-for"), connection.peer_address))
        if len(PENDING) == 1 or len(PENDING) >= PENDING_MAX:
            queued()

    def _line(self, entry: tuple[Any, ...]) -> None:
        """Make a request's line from its queued values (see :meth:`request_finished`) and queue it for output."""
        (_, method, protocol, status, grpc_status, flags, upstream_host, cluster, authority, agent, identity,
         upstream, peer, start_time, path, received, sent, duration, request_id, trace_id, xff, address) = entry
        # What the line's fixed parts depend on (the upstream peer by identity: kept in the cached parts).
        key = (method, protocol, status, grpc_status, flags, upstream_host, cluster, authority, agent, identity,
               id(upstream), peer)
        found = self._lines.get(key)
        if found is None or found[3] is not upstream:
            found = self._segments(key, upstream)
        self._write(
            f'{self._head}"start_time":"{rfc3339_ms(start_time)}",{found[0]}"path":{_json(path)},'
            f'{found[1]}"bytes_received":{_number(received)},'
            f'"bytes_sent":{_number(sent)},"duration":{int(duration * 1000)},'
            f'{found[2]}"x_request_id":{_json(request_id)},"trace_id":{_json(trace_id)},'
            f'{found[4]}"x_forwarded_for":{_json(xff)},'
            f'"downstream_remote_address":{_address(address)},{found[5]}}}')

    def _segments(self, key: tuple[Any, ...], upstream: Any) -> tuple[Any, ...]:
        """The encoded fixed parts of the lines of `key` (see :meth:`request_finished`), cached."""
        method, protocol, status, grpc_status, flags, upstream_host, cluster, authority, agent, identity, _, peer = key
        found = (
            f'"method":{_json(method)},',
            f'"protocol":{_json(protocol)},"response_code":{_number(status)},"grpc_status":{_json(grpc_status or None)},'
            f'"response_flags":{_json(flags)},',
            f'"upstream_host":{_json(upstream_host)},"upstream_cluster":{_json(cluster)},',
            upstream,  # kept: its id is in the key
            f'"authority":{_json(authority)},"user_agent":{_json(agent)},',
            self._identities(peer, identity, cluster, upstream, authority),
        )
        if len(self._lines) >= _MAX_CACHED:
            self._lines.clear()
        self._lines[key] = found
        return found

    def tcp_closed(self, info: Any) -> None:
        connection = info.connection
        PENDING.append((self._tcp_line, connection.peer_identity, info.cluster, info.upstream_peer, info.start_time,
                        info.flags, info.bytes_received, info.bytes_sent, info.duration, info.upstream,
                        connection.peer_address))
        if len(PENDING) == 1 or len(PENDING) >= PENDING_MAX:
            queued()

    def _tcp_line(self, entry: tuple[Any, ...]) -> None:
        _, identity, cluster, upstream_peer, start_time, flags, received, sent, duration, upstream, address = entry
        identities = self._identities(None, identity, cluster, upstream_peer, None)
        self._write(
            f'{self._head}"start_time":"{rfc3339_ms(start_time)}","protocol":"tcp",'
            f'"response_flags":{_json(flags)},"bytes_received":{_number(received)},'
            f'"bytes_sent":{_number(sent)},"duration":{int(duration * 1000)},'
            f'"upstream_host":{_json(upstream)},"upstream_cluster":{_json(cluster)},'
            f'"downstream_remote_address":{_address(address)},{identities}}}')
