"""Distributed tracing of a listener's requests: W3C and B3 context, sampling, spans over OTLP/HTTP.

A listener whose ``observability.tracing`` is set gets a :class:`ListenerTracer`
(built with its runtime). Per request, :meth:`ListenerTracer.begin` reads the
caller's context — W3C ``traceparent`` first, then B3 single (``b3``), then
B3 multi (``x-b3-*``) — honours its sampled flag (a request without a
decision is sampled at ``tracing.sampling`` percent), picks this hop's span
id and rewrites the request's headers in place, so the app (inbound) or the
next hop (outbound) sees this span as its parent: ``traceparent`` always,
the B3 style(s) the caller used, ``tracestate`` passed on untouched. An
unsampled decision is propagated the same way (flags ``00``,
``x-b3-sampled: 0``) and records nothing. Listeners without tracing never
call into this module.

Sampled requests end as one span each (:meth:`ListenerTracer.end`): SERVER
on inbound listeners, CLIENT on outbound, http_proxy and gateway ones (as
Envoy's ingress/egress), named ``<host>:<port>/*`` like Istio's default
decorator, with Istio's tags. Spans are opentelemetry-sdk ``ReadableSpan``
objects carrying exactly the ids that were propagated, handed to a
``BatchSpanProcessor`` with an OTLP/HTTP exporter: one per endpoint and
service per process, created on first use; :func:`shutdown` flushes and
stops them (the data plane calls it when it closes).
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Mapping
from typing import Any

from knotwork.proxyconfig import Listener, Tracing

__all__ = ["ListenerTracer", "flush", "parse_traceparent", "shutdown", "span_name"]

_TRACEPARENT = b"traceparent"
_B3 = b"b3"
_B3_TRACE, _B3_SPAN, _B3_PARENT, _B3_SAMPLED, _B3_FLAGS = (
    b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags")
_NAMES = frozenset((_TRACEPARENT, _B3, _B3_TRACE, _B3_SPAN, _B3_PARENT, _B3_SAMPLED, _B3_FLAGS))
_HEX = frozenset(b"0123456789abcdef")
_ZERO_TRACE, _ONE_TRACE, _ZERO_SPAN, _ONE_SPAN = "0" * 32, "0" * 31 + "1", "0" * 16, "0" * 15 + "1"
_HEX_DASH = b"0123456789abcdef-"
_ODD = frozenset(b"13579bdf")  # a last hex digit with the low bit (sampled) set
_CLIENT_MODES = frozenset({"outbound", "http_proxy", "gateway"})
_getrandbits = random.getrandbits
_ID_FORMAT = "%048x"  # 192 random bits: a 32-digit trace id, then a 16-digit span id
_SPAN_FORMAT = "%016x"
_TRACEPARENT_ONLY = frozenset((_TRACEPARENT,))
_COLON, _CRLF = b": ", b"\r\n"
_random = random.random


def _hex_id(value: bytes, sizes: tuple[int, ...]) -> str | None:
    """`value` as a lower-case hex id of one of `sizes` digits (not all zeros), else None."""
    v = value.strip().lower()
    if len(v) not in sizes or not _HEX.issuperset(v) or not v.strip(b"0"):
        return None
    return v.decode()


def parse_traceparent(value: bytes) -> tuple[str, str, bool] | None:
    """A W3C ``traceparent`` as (trace id, parent span id, sampled), or None when invalid."""
    if (len(value) == 55 and value[:3] == b"00-" and value[35] == 45 and value[52] == 45  # 45: "-"
            and value.count(b"-") == 3 and not value.translate(None, _HEX_DASH)):  # as proxies and SDKs send it
        text = value.decode()
        trace, span = text[3:35], text[36:52]
        if trace != _ZERO_TRACE and span != _ZERO_SPAN:
            return trace, span, value[54] in _ODD
    parts = value.strip().split(b"-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0].lower() == b"ff" or not _HEX.issuperset(parts[0].lower()):
        return None
    if parts[0] == b"00" and len(parts) != 4:
        return None
    trace = _hex_id(parts[1], (32,))
    span = _hex_id(parts[2], (16,))
    flags = parts[3].lower()
    if trace is None or span is None or len(flags) != 2 or not _HEX.issuperset(flags):
        return None
    return trace, span, bool(int(flags, 16) & 1)


def _b3_sampled(value: bytes) -> bool | None:
    v = value.strip().lower()
    if v in (b"1", b"true", b"d"):
        return True
    if v in (b"0", b"false"):
        return False
    return None


def span_name(cluster: str | None, authority: str, fallback_host: str = "") -> str:
    """Istio's default decorator: ``<service host>:<port>/*``.

    From a cluster named ``direction|port|subset|host``: its host, or
    `fallback_host` (an inbound listener's service) for ``inbound|port||``,
    and its port; else from the request's authority (its port, or 80 when it
    has none), with `fallback_host` replacing the authority's host.
    """
    fields = cluster.split("|") if cluster else ()
    port = fields[1] if len(fields) == 4 and fields[1].isdigit() else ""
    if port and (fields[3] or fallback_host):
        return f"{fields[3] or fallback_host}:{port}/*"
    host, colon, given = authority.rpartition(":")
    if not colon or not given.isdigit():
        host, given = authority, port or "80"
    return f"{fallback_host or host}:{given}/*"


class ListenerTracer:
    """One listener's tracing settings, digested once; called per request by the exchange."""

    __slots__ = ("constants", "custom", "endpoint", "kind_client", "max_url", "names", "rate", "service", "served")

    def __init__(self, listener: Listener, tracing: Tracing, node_id: str) -> None:
        obs = listener.observability
        assert obs is not None
        self.rate = max(0.0, min(100.0, float(tracing.sampling)))
        self.endpoint = tracing.endpoint
        self.service = tracing.service
        self.kind_client = listener.mode in _CLIENT_MODES
        self.served = obs.service if listener.mode == "inbound" else ""
        self.max_url = max(1, tracing.max_path_tag_length)
        workload = obs.workload
        canonical = workload.app if workload.app != "unknown" else workload.workload
        self.constants: dict[str, str] = {
            "component": "proxy", "node_id": node_id, "http.protocol": "HTTP/1.1",
            "istio.canonical_service": canonical, "istio.namespace": workload.namespace,
            "istio.canonical_revision": workload.version if workload.version != "unknown" else "latest",
        }
        self.custom = dict(tracing.custom_tags)
        self.names: dict[tuple[str | None, str], str] = {}  # (cluster, authority) → span name, bounded

    # ── per request ──────────────────────────────────────────────────────
    def begin(self, ex: Any) -> None:
        """Extract the caller's context, decide, and rewrite the request's trace headers for this hop."""
        parts = ex.parts
        names = parts[::4]
        if _NAMES.isdisjoint(names):  # a first hop: no context came, nothing to parse or replace
            ids = _ID_FORMAT % _getrandbits(192)  # a trace id and this hop's span id, one draw
            trace = ids[:32]
            span = ids[32:]
            if trace == _ZERO_TRACE or span == _ZERO_SPAN:
                trace, span = trace if trace != _ZERO_TRACE else _ONE_TRACE, span if span != _ZERO_SPAN else _ONE_SPAN
            ex.trace_id = trace
            if self.rate and _random() * 100 < self.rate:
                ex.trace = (trace, span, None)
                parts += (_TRACEPARENT, _COLON, f"00-{trace}-{span}-01".encode(), _CRLF)
            else:
                parts += (_TRACEPARENT, _COLON, f"00-{trace}-{span}-00".encode(), _CRLF)
            return
        present = _NAMES.intersection(names)
        if present == _TRACEPARENT_ONLY:  # a next hop: the previous one's traceparent, nothing else
            at = 4 * names.index(_TRACEPARENT) + 2
            ctx = parse_traceparent(parts[at])
            if ctx is not None:
                trace, parent, sampled = ctx
                span = _SPAN_FORMAT % _getrandbits(64)
                if span == _ZERO_SPAN:
                    span = _ONE_SPAN
                ex.trace_id = trace
                if sampled:
                    ex.trace = (trace, span, parent)
                    parts[at] = f"00-{trace}-{span}-01".encode()
                else:
                    parts[at] = f"00-{trace}-{span}-00".encode()
                return
        # where the first of each trace header is (searched in C)
        found: dict[bytes, int] = {}
        for n in present:
            found[n] = 4 * names.index(n)
        trace = parent = None
        sampled: bool | None = None
        b3_single = b3_multi = False
        b3_trace = ""
        if found:
            at = found.get(_TRACEPARENT)
            if at is not None:
                ctx = parse_traceparent(parts[at + 2])
                if ctx is not None:
                    trace, parent, sampled = ctx
            at = found.get(_B3)
            if at is not None:
                b3_single = True
                fields = parts[at + 2].strip().split(b"-")
                if len(fields) == 1:
                    if trace is None:
                        sampled = _b3_sampled(fields[0])
                else:
                    t = _hex_id(fields[0], (16, 32))
                    s = _hex_id(fields[1], (16,))
                    if t is not None and s is not None:
                        if trace is None:
                            trace, parent = t.rjust(32, "0"), s
                            sampled = _b3_sampled(fields[2]) if len(fields) > 2 else None
                        if t.rjust(32, "0") == trace:
                            b3_trace = t  # B3 keeps the caller's trace id length (64 or 128 bits)
            if _B3_TRACE in found or _B3_SAMPLED in found or _B3_FLAGS in found:
                b3_multi = True
                at = found.get(_B3_TRACE)
                t = _hex_id(parts[at + 2], (16, 32)) if at is not None else None
                if trace is None:
                    at = found.get(_B3_SPAN)
                    s = _hex_id(parts[at + 2], (16,)) if at is not None else None
                    if t is not None and s is not None:
                        trace, parent = t.rjust(32, "0"), s
                    at = found.get(_B3_FLAGS)
                    if at is not None and parts[at + 2].strip() == b"1":
                        sampled = True
                    else:
                        at = found.get(_B3_SAMPLED)
                        if at is not None:
                            sampled = _b3_sampled(parts[at + 2])
                if t is not None and t.rjust(32, "0") == trace:
                    b3_trace = t
        if sampled is None:
            sampled = _random() * 100 < self.rate
        ids = _getrandbits(192).to_bytes(24, "little").hex()  # this hop's span id, a trace id if none came (one draw)
        span = ids[32:]
        if span == _ZERO_SPAN:
            span = _ONE_SPAN
        if trace is None:
            trace = ids[:32]
            if trace == _ZERO_TRACE:
                trace = _ONE_TRACE
        ex.trace_id = trace
        if sampled:
            ex.trace = (trace, span, parent)
        # the caller's headers now name this hop's span as the parent
        flag = b"1" if sampled else b"0"
        tp = f"00-{trace}-{span}-{'01' if sampled else '00'}".encode()
        _set(parts, found, _TRACEPARENT, tp)
        if b3_single or b3_multi:
            bt = (b3_trace or trace).encode()
            if b3_single:
                single = b"%s-%s-%s" % (bt, span.encode(), flag)
                if parent is not None:
                    single += b"-" + parent.encode()
                _set(parts, found, _B3, single)
            if b3_multi:
                _set(parts, found, _B3_TRACE, bt)
                _set(parts, found, _B3_SPAN, span.encode())
                if parent is not None:
                    _set(parts, found, _B3_PARENT, parent.encode())
                _set(parts, found, _B3_SAMPLED, flag)

    def end(self, ex: Any) -> None:
        """Record the finished, sampled request as a span."""
        trace, span, parent = ex.trace
        cluster = ex.cluster
        key = (cluster, ex.authority)
        names = self.names
        name = names.get(key)
        if name is None:
            name = span_name(cluster, ex.authority, self.served)
            if len(names) >= 1024:
                names.clear()
            names[key] = name
        status = ex.status
        scheme = "https" if ex.proto.tls else "http"
        url = f"{scheme}://{ex.authority}{ex.path}"
        attrs = {
            **self.constants,
            "http.method": ex.method, "http.url": url[:self.max_url], "http.status_code": str(status),
            "upstream_cluster": cluster or "-", "upstream_address": ex.upstream or "-",
            "response_flags": ex.flags, "guid:x-request-id": ex.header("x-request-id") or "",
            "peer.address": ex.proto.peer_address[0], "request_size": str(ex.bytes_received),
            "response_size": str(ex.bytes_sent), "user_agent": ex.header("user-agent") or "-",
            "downstream_cluster": "-",
        }
        if self.custom:
            attrs.update(self.custom)
        error = status >= 500 or status == 0
        if error:
            attrs["error"] = "true"
        start = int(ex.start_time * 1e9)
        _exporter(self.endpoint, self.service).record(
            name, trace, span, parent, self.kind_client, attrs, start, start + int(ex.duration * 1e9), error)


def _set(parts: list[bytes], found: Mapping[bytes, int], name: bytes, value: bytes) -> None:
    at = found.get(name)
    if at is None:
        parts += (name, b": ", value, b"\r\n")
    else:
        parts[at + 2] = value


# ── export: one span processor per (endpoint, service) per process ─────────

class _Exporter:
    """Spans of one (endpoint, service): opentelemetry-sdk's BatchSpanProcessor with its OTLP/HTTP exporter.

    Spans are made as finished ``ReadableSpan`` objects with the ids this hop
    propagated and handed to the processor (what a ``Tracer`` does at
    ``span.end()``): exactly the propagated ids, no contextvars, no per-span
    locks or attribute validation (the tags are strings built here). The
    processor batches them and exports on its own thread.
    """

    def __init__(self, endpoint: str, service: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        # each export attempt bounded (5 s), so a collector that is away cannot hold a stopping proxy long
        self.processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=5), schedule_delay_millis=1000)
        self._span = ReadableSpan
        self._context = SpanContext
        self._flags = TraceFlags(TraceFlags.SAMPLED)
        self._resource = Resource.create({"service.name": service})
        self._scope = InstrumentationScope("knotwork-native")
        self._kinds = (SpanKind.SERVER, SpanKind.CLIENT)
        self._status = (Status(StatusCode.UNSET), Status(StatusCode.ERROR))

    def record(self, name: str, trace: str, span: str, parent: str | None, client: bool, attrs: dict[str, str],
               start: int, end: int, error: bool) -> None:
        trace_id = int(trace, 16)
        flags = self._flags
        context = self._context(trace_id, int(span, 16), False, flags)
        parent_context = self._context(trace_id, int(parent, 16), True, flags) if parent is not None else None
        self.processor.on_end(self._span(
            name, context, parent_context, self._resource, attrs, kind=self._kinds[client], status=self._status[error],
            start_time=start, end_time=end, instrumentation_scope=self._scope))

    def flush(self, timeout: float) -> None:
        self.processor.force_flush(int(timeout * 1000))

    def shutdown(self, timeout: float) -> None:
        self.processor.force_flush(int(timeout * 1000))
        self.processor.shutdown()


_EXPORTERS: dict[tuple[str, str], _Exporter] = {}
_LOCK = threading.Lock()


def _exporter(endpoint: str, service: str) -> _Exporter:
    exporter = _EXPORTERS.get((endpoint, service))
    if exporter is None:
        with _LOCK:
            exporter = _EXPORTERS.get((endpoint, service))
            if exporter is None:
                exporter = _EXPORTERS[(endpoint, service)] = _Exporter(endpoint, service)
    return exporter


async def _in_thread(fn: Any, timeout: float) -> None:
    """Run blocking `fn` on a daemon thread (never holding up the process's exit), waiting up to `timeout`."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def finished() -> None:
        if not done.done():
            done.set_result(None)

    def run() -> None:
        try:
            fn()
        finally:
            try:
                loop.call_soon_threadsafe(finished)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    threading.Thread(target=run, name="knotwork-span-export", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout)
    except TimeoutError:
        pass


async def flush(timeout: float = 5.0) -> None:
    """Export every span recorded so far (waits up to `timeout` seconds, off the event loop)."""
    exporters = list(_EXPORTERS.values())
    if exporters:
        await _in_thread(lambda: [e.flush(timeout) for e in exporters], timeout)


async def shutdown(timeout: float = 5.0) -> None:
    """Flush and stop every span exporter of the process; the next traced request starts new ones."""
    with _LOCK:
        exporters = list(_EXPORTERS.values())
        _EXPORTERS.clear()
    if exporters:
        await _in_thread(lambda: [e.shutdown(timeout) for e in exporters], timeout)
