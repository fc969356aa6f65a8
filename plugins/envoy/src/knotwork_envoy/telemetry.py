"""Telemetry sinks on Envoy: the agent turns Envoy's access-log lines into sink calls.

Envoy writes one JSON line per request (per TCP connection: one when the
upstream connects, one at close) to its stdout, which the agent reads
(:func:`pump`); the line's layout is described in
:mod:`knotwork_envoy.translate.observe`. For each line the agent builds one
plain view object that satisfies :class:`~knotwork.protocols.RequestView`,
:class:`~knotwork.protocols.ResponseInfo`, :class:`~knotwork.protocols.ConnectionView`
and :class:`~knotwork.protocols.TcpInfo` (their attribute names do not
clash) and calls the listener's sinks — the same ``metrics`` and
``access-log`` strategies the native engine runs, so labels and log lines
are identical.

The chain of a line is built once per distinct ``_knotwork`` constant
(listener, mode, protocol, sink chain, observability): each installed
telemetry :class:`~knotwork.records.Strategy` that supports engine
``envoy`` is made with ``factory(listener, settings)``, the listener being a
:class:`~knotwork.proxyconfig.Listener` carrying the observability. An HTTP
request's sinks see ``request_started`` and ``request_finished`` one after
the other, when the request is done (Envoy logs once). Lines that are not
access-log lines (Envoy's own output) go to the agent's stderr.

Cost: this runs once per request, in the agent's one thread, so it is kept
small: about 4 µs a line before the sinks on the 2-core CI machine (it was
about 16 µs with ``json.loads`` of every line and three view objects).
Envoy's stdout is read in large chunks and split here. A line starts with
the digest of its constant and the constant (Envoy sorts a JSON line's
keys): once a constant has been seen, a line that starts with the same bytes
is known by a dict lookup on the digest and a prefix compare, and only the
per-request object after it (``line``) is decoded, by msgspec, straight into
a :class:`LineView`. Envoy leaves empty values out. The first line of a
constant (or a line that does not match, or has a value of an unexpected
type) takes the slow path: ``json.loads`` of the whole line, then a lenient
conversion.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, BinaryIO, ClassVar

import msgspec
import structlog
from knotwork.proxyconfig import Listener, Observability, PeerInfo, wire
from knotwork.records import Strategy

__all__ = ["AccessLogSinks", "LineView", "pump"]

log = structlog.get_logger("knotwork.envoy.telemetry").bind(plugin="envoy")

#: Chains kept (a config change makes new ones; old ones go when there are too many).
MAX_CHAINS = 256
#: How a line starts: the digest of its constant comes first (see :mod:`knotwork_envoy.translate.observe`).
LINE_START = b'{"_id":"'
DIGEST_LEN = 16
_DIGEST_END = len(LINE_START) + DIGEST_LEN
#: Where the per-request object starts, after the constant.
_LINE_KEY = b',"line":'
#: Envoy's stdout is read this much at a time (at most).
CHUNK = 1 << 18
_NO_LABELS: dict[str, str] = {}
_NO_HEADERS: dict[str, str] = {}


def _address(text: str | None) -> tuple[str, int]:
    """``ip:port`` / ``[v6]:port`` → (ip, port); ("", 0) when unknown."""
    if not text:
        return ("", 0)
    host, _, port = text.rpartition(":")
    try:
        return (host.strip("[]"), int(port))
    except ValueError:
        return (text, 0)


def _identity(san: str) -> str | None:
    for name in san.split(","):
        if name.startswith("spiffe://"):
            return name
    return san.split(",")[0] or None


class LineView(msgspec.Struct, gc=False):
    """One access-log line as the sinks see it: the request (:class:`~knotwork.protocols.RequestView`),
    its connection (:class:`~knotwork.protocols.ConnectionView`: ``connection`` is the view itself),
    the response (:class:`~knotwork.protocols.ResponseInfo`) or the TCP connection
    (:class:`~knotwork.protocols.TcpInfo`).

    msgspec decodes the line's per-request object straight into it (a field's ``name`` is its key
    in the line); :meth:`AccessLogSinks.handle` then fills the fields derived from others.
    ``header(name)`` is the logged request headers' ``dict.get`` (``host`` / ``:authority`` too).
    Not tracked by the garbage collector: it holds no cycle.
    """

    # as logged
    method: str = ""
    path: str = ""
    authority: str = ""
    protocol: str = ""
    status: int = 0
    flags: str = "-"
    upstream: str | None = None
    cluster: str | None = None
    bytes_received: int = msgspec.field(default=0, name="rx")
    bytes_sent: int = msgspec.field(default=0, name="tx")
    trace_id: str | None = msgspec.field(default=None, name="trace")
    kind: str | None = msgspec.field(default=None, name="type")
    start: str = ""
    remote: str | None = None
    local: str | None = None
    san: str | None = None
    tls_version: str | None = msgspec.field(default=None, name="tls")
    peer: str | None = None
    headers: dict[str, str] | None = None
    us: int | None = None
    ms: int = 0
    grpc: str | None = None
    grpc_h: str | None = None
    # derived (never in a line)
    start_time: float = msgspec.field(default=0.0, name="-start_time")
    duration: float = msgspec.field(default=0.0, name="-duration")
    grpc_status: str = msgspec.field(default="", name="-grpc_status")
    peer_identity: str | None = msgspec.field(default=None, name="-peer_identity")
    upstream_peer: PeerInfo | None = msgspec.field(default=None, name="-upstream_peer")
    header: Any = msgspec.field(default=None, name="-header")

    principal: ClassVar[str | None] = None
    source_labels: ClassVar[dict[str, str]] = _NO_LABELS

    @property
    def connection(self) -> LineView:
        return self

    @property
    def tls(self) -> bool:
        return bool(self.tls_version)

    @property
    def peer_address(self) -> tuple[str, int]:
        return _address(self.remote)

    @property
    def local_address(self) -> tuple[str, int]:
        return _address(self.local)


_decode = msgspec.json.Decoder(LineView).decode


class _Chain:
    """The sinks of one listener config, with their methods looked up once."""

    __slots__ = ("client_side", "finished", "started", "tcp_closed", "tcp_opened")

    def __init__(self, sinks: list[Any], mode: str) -> None:
        def methods(name: str) -> tuple[Callable[..., Any], ...]:
            return tuple(m for m in (getattr(s, name, None) for s in sinks) if callable(m))

        self.started, self.finished = methods("request_started"), methods("request_finished")
        self.tcp_opened, self.tcp_closed = methods("tcp_opened"), methods("tcp_closed")
        self.client_side = mode != "inbound"  # the upstream peer is the destination workload


class _Known:
    """A constant seen before: the bytes its lines start with, up to the per-request object."""

    __slots__ = ("chain", "prefix", "size")

    def __init__(self, chain: _Chain, prefix: bytes) -> None:
        self.chain, self.prefix, self.size = chain, prefix, len(prefix)


class AccessLogSinks:
    """Runs the telemetry sinks of Envoy's access-log lines (see the module docstring)."""

    def __init__(self, strategies: Mapping[str, Strategy], settings: Mapping[str, Any]) -> None:
        self.strategies, self.settings = strategies, settings
        self._chains: dict[str, _Chain] = {}
        self._known: dict[bytes, _Known] = {}
        self._peers: dict[str | None, PeerInfo] = {}
        self._identities: dict[str, str | None] = {}
        self._warned: set[str] = set()
        #: lines handled, and sink calls that raised
        self.lines = 0
        self.errors = 0

    def _warn_once(self, key: str, event: str, **kw: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(event, **kw)

    def chain(self, key: str) -> _Chain:
        """The chain of a line's constant (built on first sight)."""
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
            self._known.clear()
        made = self._chains[key] = _Chain(sinks, listener.mode)
        log.debug("telemetry chain built", listener=listener.name, sinks=[type(s).__name__ for s in sinks])
        return made

    def _peer(self, text: str | None) -> PeerInfo:
        """The upstream endpoint's workload from its metadata's ``peer``, a JSON array of the five
        :class:`PeerInfo` fields (all unknown without, or when it is not one)."""
        peer = self._peers.get(text)
        if peer is None:
            try:
                fields = json.loads(text) if type(text) is str else None
            except ValueError:
                fields = None
            ok = type(fields) is list and len(fields) == 5 and all(type(f) is str for f in fields)
            peer = PeerInfo(*fields) if ok else PeerInfo()  # type: ignore[misc]
            if len(self._peers) >= 4096:
                self._peers.clear()
            self._peers[text if type(text) is str else None] = peer
        return peer

    def _identity(self, san: str) -> str | None:
        found = self._identities.get(san, self)
        if found is self:
            if len(self._identities) >= 4096:
                self._identities.clear()
            found = self._identities[san] = _identity(san)
        return found  # type: ignore[return-value]

    def handle(self, chain: _Chain, view: LineView) -> None:
        """Fill the derived fields of one decoded line and run its sinks."""
        self.lines += 1
        view.start_time = float(view.start or 0.0)
        san = view.san
        if san:
            view.peer_identity = self._identity(san)
        if view.upstream and chain.client_side:
            view.upstream_peer = self._peer(view.peer)
        kind = view.kind
        if kind is None:
            authority = view.authority = view.authority.lower()
            trace = view.trace_id
            if trace and len(trace) != 32:
                view.trace_id = trace.rjust(32, "0")  # a 64-bit B3 id, widened as OTLP does
            headers = view.headers
            if headers is None:
                headers = view.headers = {}
            if authority:
                headers["host"] = headers[":authority"] = authority
            view.header = headers.get
            us = view.us
            view.duration = us / 1e6 if us is not None else view.ms / 1e3
            grpc = view.grpc or view.grpc_h
            if grpc:
                view.grpc_status = grpc
            for started in chain.started:
                try:
                    started(view)
                except Exception as exc:  # noqa: BLE001 - a failing sink must not stop the others or the stream
                    self._failed(started, exc)
            for finished in chain.finished:
                try:
                    finished(view, view)
                except Exception as exc:  # noqa: BLE001
                    self._failed(finished, exc)
            return
        view.duration = view.ms / 1e3
        view.header = _NO_HEADERS.get
        if kind == "TcpUpstreamConnected":
            methods = chain.tcp_opened
        elif kind == "TcpConnectionEnd":
            methods = chain.tcp_closed
        else:
            return
        for method in methods:
            try:
                method(view)
            except Exception as exc:  # noqa: BLE001
                self._failed(method, exc)

    def _failed(self, method: Callable[..., Any], exc: Exception) -> None:
        self.errors += 1
        self._warn_once(f"sink:{getattr(method, '__qualname__', method)}", "telemetry sink failed", error=repr(exc))

    def feed(self, raw: bytes) -> bool:
        """Handle one line of Envoy's stdout; False when it is not an access-log line."""
        if not raw.startswith(LINE_START):
            return False
        known = self._known.get(raw[len(LINE_START):_DIGEST_END])
        try:
            if known is not None and raw.startswith(known.prefix):
                try:
                    view = _decode(raw.rstrip()[known.size:-1])
                    chain = known.chain
                except msgspec.ValidationError:  # a value of another type than Envoy writes: converted
                    chain, view = self._first(raw)
            else:
                chain, view = self._first(raw)
            self.handle(chain, view)
        except (ValueError, TypeError, KeyError, msgspec.MsgspecError) as exc:
            self._warn_once(f"line:{type(exc).__name__}", "access-log line not understood", error=repr(exc))
        return True

    def _first(self, raw: bytes) -> tuple[_Chain, LineView]:
        """The slow path: a line whose constant is new (or that is not as expected) parsed whole."""
        data = json.loads(raw)
        constant, line = data["_knotwork"], data["line"]
        if type(constant) is not str or type(line) is not dict:
            raise TypeError("_knotwork: expected a string, line: an object")
        chain = self.chain(constant)
        end = raw.find(_LINE_KEY)
        if end > 0:
            if len(self._known) >= MAX_CHAINS:
                self._known.clear()
            self._known[raw[len(LINE_START):_DIGEST_END]] = _Known(chain, raw[:end + len(_LINE_KEY)])
        return chain, msgspec.convert(line, LineView, strict=False)  # lenient about types, unlike the fast path

    def feed_lines(self, lines: Iterable[bytes]) -> list[bytes]:
        """Handle lines of Envoy's stdout; the ones that are not access-log lines are returned."""
        feed = self.feed
        return [raw for raw in lines if not feed(raw)]


async def pump(stream: asyncio.StreamReader, sinks: AccessLogSinks, passthrough: BinaryIO | None = None,
               limit: int = 1 << 20) -> None:
    """Feed Envoy's stdout to `sinks` until it ends; other output goes to `passthrough` (stderr).

    The stream is read in chunks of up to :data:`CHUNK` bytes and split into lines here; a line
    longer than `limit` is not an access-log line: it is written through as it comes."""
    out = passthrough if passthrough is not None else sys.stderr.buffer
    pending = b""
    through = False  # in a line too long to be ours: written through up to its end
    while True:
        data = await stream.read(CHUNK)
        if not data:
            if pending:
                out.write(pending)
                out.flush()
            return
        lines = data.split(b"\n")
        pending = pending + lines[0] if pending else lines[0]
        if len(lines) == 1:  # no line ends in this chunk
            if through or len(pending) > limit:
                out.write(pending)
                out.flush()
                pending, through = b"", True
            continue
        lines[0] = pending
        pending = lines.pop()
        other = sinks.feed_lines(lines[1:] if through else lines)
        if through:
            other.insert(0, lines[0])
            through = False
        if other:
            out.write(b"\n".join(other) + b"\n")
            out.flush()
        if len(pending) > limit:
            out.write(pending)
            out.flush()
            pending, through = b"", True
