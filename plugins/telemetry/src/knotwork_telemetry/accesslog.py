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
- Lines are written in batches, as Envoy flushes its access log files: the
  lines of an output queue and go out together through one
  ``structlog.WriteLogger`` write (one ``write`` system call), at most
  :data:`FLUSH_DELAY` seconds after the first one queued, or as soon as
  :data:`FLUSH_SIZE` characters wait, and at exit. Lines stay whole and in
  order. Outside a running event loop (tests, tools) a line is written at
  once.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import sys
import time
from json.encoder import encode_basestring as _quote
from typing import IO, Any

import structlog
from knotwork.proxyconfig import PEER_HEADER, Listener

from . import peers

__all__ = ["FLUSH_DELAY", "FLUSH_SIZE", "AccessLogSink", "flush", "rfc3339_ms"]

#: seconds a queued line may wait for others before the batch is written
FLUSH_DELAY = 0.1
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
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the timer is on

    def write(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_SIZE:
            self.flush()
        elif self._timer is None or self._loop.is_closed():  # type: ignore[union-attr]  # (set with the timer)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop here: nothing would come back to flush
                self.flush()
                return
            self._timer, self._loop = loop.call_later(FLUSH_DELAY, self.flush), loop

    def flush(self) -> None:
        """Write the queued lines (one write)."""
        timer = self._timer
        if timer is not None:
            self._timer = None
            if not self._loop.is_closed():  # type: ignore[union-attr]  # (set with the timer)
                timer.cancel()
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


@atexit.register
def flush() -> None:
    """Write every queued line now (at exit too)."""
    for _, output in list(_OUTPUTS.values()):
        output.flush()


class AccessLogSink:
    """Writes one listener's access log lines; nothing when the listener's access log is off."""

    def __init__(self, listener: Listener, settings: Any = None, *, file: IO[str] | None = None) -> None:
        obs = listener.observability
        if obs is None or not obs.access_log:
            self.request_started = self.request_finished = self.tcp_opened = self.tcp_closed = _nothing
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

    def request_started(self, request: Any) -> None:
        return None

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
        identity = request.connection.peer_identity
        upstream = response.upstream_peer
        # What the line's fixed parts depend on (the upstream peer by identity: its attrs hash is slow).
        key = (request.method, request.protocol, response.status, response.grpc_status, response.flags,
               response.upstream, response.cluster, request.authority, header("user-agent"), identity, id(upstream),
               None if self._source_reporter else header(PEER_HEADER))
        found = self._lines.get(key)
        if found is None or found[3] is not upstream:
            found = self._segments(key, upstream)
        self._write(
            f'{self._head}"start_time":"{rfc3339_ms(request.start_time)}",{found[0]}"path":{_json(request.path)},'
            f'{found[1]}"bytes_received":{_number(response.bytes_received)},'
            f'"bytes_sent":{_number(response.bytes_sent)},"duration":{int(response.duration * 1000)},'
            f'{found[2]}"x_request_id":{_json(header("x-request-id"))},"trace_id":{_json(request.trace_id)},'
            f'{found[4]}"x_forwarded_for":{_json(header("x-forwarded-for"))},'
            f'"downstream_remote_address":{_address(request.connection.peer_address)},{found[5]}}}')

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
        identities = self._identities(None, connection.peer_identity, info.cluster, info.upstream_peer, None)
        self._write(
            f'{self._head}"start_time":"{rfc3339_ms(info.start_time)}","protocol":"tcp",'
            f'"response_flags":{_json(info.flags)},"bytes_received":{_number(info.bytes_received)},'
            f'"bytes_sent":{_number(info.bytes_sent)},"duration":{int(info.duration * 1000)},'
            f'"upstream_host":{_json(info.upstream)},"upstream_cluster":{_json(info.cluster)},'
            f'"downstream_remote_address":{_address(connection.peer_address)},{identities}}}')
