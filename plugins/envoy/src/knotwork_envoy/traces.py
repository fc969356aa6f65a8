"""The agent's trace collector: Envoy's Zipkin spans → OTLP/HTTP.

Connection managers with tracing run Envoy's Zipkin tracer (see
:mod:`knotwork_envoy.translate.observe`), whose collector is this server:
HTTP/1.1 on a unix socket in a private directory (the bootstrap's
``knotwork_traces`` cluster). Envoy posts Zipkin v2 JSON spans to
``/api/v2/spans?endpoint=<OTLP traces URL>&service=<name>[&host=<served FQDN>][&kind=CLIENT]``;
each span becomes an OpenTelemetry span with the same trace, span and parent
ids, kind (`kind` overrides Envoy's: a gateway's spans), start and end, its tags as attributes, ``service.name`` =
`service`, named as Istio's route decorators name them (:func:`span_name`),
and is exported with opentelemetry-sdk's batching processor and OTLP/HTTP
exporter — one per endpoint, flushed when the collector stops. The SDK is
imported on the first span.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import structlog

from .httpio import read_request

__all__ = ["SPANS_PATH", "TraceCollector", "otel_span", "span_name"]

log = structlog.get_logger("knotwork.envoy.traces").bind(plugin="envoy")

SPANS_PATH = "/api/v2/spans"
#: How often the batching processor exports (the SDK's default is 5 s; the native engine's too, 1 s:
#: each export is an HTTP request through ``requests``, a few ms of the agent's CPU).
EXPORT_DELAY_MS = 1000
MAX_BODY = 16 << 20
#: How long a stopping agent waits for the last spans to be exported.
SHUTDOWN_S = 2.0


def _ids(hex_id: str, width: int) -> int:
    return int(hex_id.rjust(width, "0")[-width:], 16)


def span_name(span: dict[str, Any], host: str = "") -> str:
    """``<host>:<port>/*``: the destination service of an ``outbound|port|subset|host`` cluster,
    `host` (the served service) for an ``inbound|port`` one; else Envoy's name (the authority) + ``/*``."""
    cluster = str((span.get("tags") or {}).get("upstream_cluster") or "")
    parts = cluster.split("|")
    if parts[0] == "outbound" and len(parts) == 4 and parts[3]:
        return f"{parts[3]}:{parts[1]}/*"
    if parts[0] == "inbound" and len(parts) >= 2 and host:
        return f"{host}:{parts[1]}/*"
    name = span.get("name") or ""
    return name if name.endswith("/*") else f"{name}/*"


def otel_span(span: dict[str, Any], resource: Any, host: str = "", kind: str = "") -> Any:
    """One Zipkin v2 span (JSON) as an OpenTelemetry ``ReadableSpan``."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    trace_id = _ids(span["traceId"], 32)
    context = SpanContext(trace_id, _ids(span["id"], 16), is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    parent = None
    if span.get("parentId"):
        parent = SpanContext(trace_id, _ids(span["parentId"], 16), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    kind = {"CLIENT": SpanKind.CLIENT, "SERVER": SpanKind.SERVER}.get(kind or span.get("kind", ""), SpanKind.INTERNAL)
    tags = {str(k): str(v) for k, v in (span.get("tags") or {}).items()}
    start = int(span.get("timestamp") or 0) * 1000
    status = Status(StatusCode.ERROR) if tags.get("error") == "true" else Status(StatusCode.UNSET)
    return ReadableSpan(
        name=span_name(span, host), context=context, parent=parent, resource=resource, attributes=tags,
        kind=kind, status=status, start_time=start, end_time=start + int(span.get("duration") or 0) * 1000,
        instrumentation_scope=InstrumentationScope("knotwork-envoy"),
    )


class TraceCollector:
    """Receives Envoy's spans on a unix socket and exports them over OTLP/HTTP."""

    def __init__(self) -> None:
        self._processors: dict[str, Any] = {}
        self._resources: dict[str, Any] = {}
        self.spans = 0
        self.dropped = 0

    @contextlib.asynccontextmanager
    async def serving(self, path: Path) -> AsyncIterator[Path]:
        server = await asyncio.start_unix_server(self._serve, str(path))
        try:
            yield path
        finally:
            server.close()
            await self.aclose()

    async def aclose(self) -> None:
        """Export what is buffered and stop the exporters (:data:`SHUTDOWN_S` at most, then abandoned)."""
        processors, self._processors = list(self._processors.values()), {}
        with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_S):
            for processor in processors:
                await anyio.to_thread.run_sync(processor.shutdown, abandon_on_cancel=True)

    def _processor(self, endpoint: str) -> Any:
        processor = self._processors.get(endpoint)
        if processor is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            processor = self._processors[endpoint] = BatchSpanProcessor(
                OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=EXPORT_DELAY_MS)
            log.info("exporting Envoy's spans", endpoint=endpoint)
        return processor

    def _resource(self, service: str) -> Any:
        resource = self._resources.get(service)
        if resource is None:
            from opentelemetry.sdk.resources import Resource

            resource = self._resources[service] = Resource.create({"service.name": service})
        return resource

    def collect(self, target: str, body: bytes) -> None:
        """Export the spans of one post (`target`: path and query)."""
        path, _, query = target.partition("?")
        params = urllib.parse.parse_qs(query)
        endpoint = (params.get("endpoint") or [""])[0]
        if path != SPANS_PATH or not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"not a span post: {target!r}")
        spans = json.loads(body)
        processor = self._processor(endpoint)
        resource = self._resource((params.get("service") or ["unknown"])[0])
        host, kind = (params.get("host") or [""])[0], (params.get("kind") or [""])[0]
        for span in spans:
            try:
                processor.on_end(otel_span(span, resource, host, kind))
                self.spans += 1
            except (KeyError, ValueError, TypeError):
                self.dropped += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                method, target, _, _, body = await read_request(reader, MAX_BODY)
                status = "202 Accepted"
                if method != "POST":
                    status = "405 Method Not Allowed"
                else:
                    try:
                        self.collect(target, body)
                    except (ValueError, TypeError) as exc:
                        log.warning("spans not understood", error=repr(exc))
                        status = "400 Bad Request"
                writer.write(f"HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            writer.close()
