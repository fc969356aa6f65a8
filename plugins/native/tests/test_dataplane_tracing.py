"""Tracing on the native engine: W3C and B3 context in, this hop's context out,
sampling decisions honoured, and one span per request exported over OTLP/HTTP
to an in-test receiver (a client sidecar and a server sidecar in a row)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from knotwork.proxyconfig import PEER_HEADER, Observability, Tracing
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from knotwork_native import tracing
from knotwork_native.dataplane import DataPlane
from test_dataplane_support import RawClient, Req, Upstream, http_listener, one_route, resources, respond, running, wait_for
from test_dataplane_telemetry import CLIENT, CLUSTER, SERVER, Sink, echo_headers, start, with_workload

pytestmark = pytest.mark.anyio
T = "4bf92f3577b34da6a3ce929d0e0e4736"
P = "00f067aa0ba902b7"
HEX16 = re.compile(r"[0-9a-f]{16}")
SERVER_KIND, CLIENT_KIND = 2, 3  # OTLP SpanKind


@pytest.fixture(autouse=True)
def _clear() -> None:
    Sink.seen.clear()


async def _ok(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
    await respond(writer, 200)


def spans(receiver: Upstream) -> list[dict[str, Any]]:
    """Every span the receiver got, flattened."""
    out = []
    for req in receiver.requests:
        assert req.path == "/v1/traces" and req.headers["content-type"] == "application/x-protobuf"
        message = ExportTraceServiceRequest.FromString(bytes(req.body))
        for rs in message.resource_spans:
            service = {a.key: a.value.string_value for a in rs.resource.attributes}["service.name"]
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.append({
                        "service": service, "name": s.name, "kind": s.kind, "trace": s.trace_id.hex(), "span": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(), "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                        "status": s.status.code, "attrs": {a.key: a.value.string_value for a in s.attributes},
                    })
    return out


@contextlib.asynccontextmanager
async def sidecars(app: Upstream, receiver: Upstream, sampling: float = 0.0) -> AsyncIterator[DataPlane]:
    """A server sidecar (inbound → app) and a client sidecar (outbound → the server sidecar), both tracing;
    yields the client's data plane (listener ``out``)."""
    endpoint = f"http://127.0.0.1:{receiver.port}/v1/traces"

    def observed(reporter: str, service: str) -> Observability:
        trace = Tracing(sampling, endpoint, service, custom_tags=(("team", "books"),))
        return Observability(reporter, CLIENT if reporter == "source" else SERVER, tracing=trace,
                             service="reviews.default.svc.cluster.local" if reporter == "destination" else "")

    inbound = http_listener("in", "inbound", telemetry=("sink",), observability=observed("destination", "reviews.default"))
    server = await start(resources(inbound, tables=[one_route("inbound|9080||")], clusters={"inbound|9080||": [app.addr]}))
    client = None
    try:
        out = http_listener("out", "outbound", telemetry=("sink",), observability=observed("source", "productpage.default"))
        addr = ("127.0.0.1", server.port_of("in"))
        client = await start(with_workload(resources(out, tables=[one_route(CLUSTER)], clusters={CLUSTER: [addr]}), CLUSTER, addr))
        yield client
    finally:
        if client is not None:
            await client.aclose()
        await server.aclose()


async def _get(dp: DataPlane, headers: dict[str, str], path: str = "/books?id=1") -> dict[str, str]:
    client = await RawClient.open(dp.port_of("out"))
    try:
        resp = await client.request(path=path, host="reviews:9080", headers={"user-agent": "test/1", **headers})
    finally:
        await client.aclose()
    assert resp.status == 200
    return json.loads(resp.body)


async def _exported(receiver: Upstream, count: int) -> list[dict[str, Any]]:
    await tracing.flush()
    await wait_for(lambda: len(spans(receiver)) >= count, what=f"{count} spans")
    return spans(receiver)


async def test_w3c_caller_gets_a_client_and_a_server_span_and_the_app_sees_the_server_span() -> None:
    app, receiver = Upstream("app", echo_headers), Upstream("otlp", _ok)
    async with running(app, receiver), sidecars(app, receiver) as dp:
        seen = await _get(dp, {"traceparent": f"00-{T}-{P}-01", "tracestate": "vendor=1", PEER_HEADER: "workload=forged"})
        exported = await _exported(receiver, 2)
        assert len(exported) == 2
        await wait_for(lambda: len(Sink.seen) == 2)
    client_span = next(s for s in exported if s["kind"] == CLIENT_KIND)
    server_span = next(s for s in exported if s["kind"] == SERVER_KIND)
    # one trace: caller → client sidecar's span → server sidecar's span → app
    assert client_span["trace"] == server_span["trace"] == T
    assert client_span["parent"] == P and server_span["parent"] == client_span["span"]
    assert seen["traceparent"] == f"00-{T}-{server_span['span']}-01"
    assert seen["tracestate"] == "vendor=1"  # passed on untouched
    assert seen[PEER_HEADER] == CLIENT.header()  # the app's own value was replaced by the client sidecar
    assert [s["trace_id"] for s in Sink.seen] == [T, T]  # access logs can join them
    # Istio's span names and tags
    assert client_span["service"] == "productpage.default" and server_span["service"] == "reviews.default"
    assert client_span["name"] == "reviews.default.svc.cluster.local:9080/*"
    assert server_span["name"] == "reviews.default.svc.cluster.local:9080/*"
    tags = client_span["attrs"]
    assert tags["http.method"] == "GET" and tags["http.url"] == "http://reviews:9080/books?id=1"
    assert tags["http.status_code"] == "200" and tags["http.protocol"] == "HTTP/1.1"
    assert tags["upstream_cluster"] == CLUSTER and tags["upstream_address"].startswith("127.0.0.1:")
    assert tags["response_flags"] == "-" and tags["node_id"] == "test-node" and tags["component"] == "proxy"
    assert tags["guid:x-request-id"] == seen["x-request-id"]
    assert tags["istio.canonical_service"] == "productpage" and tags["istio.namespace"] == "default"
    assert tags["peer.address"] == "127.0.0.1" and tags["user_agent"] == "test/1" and tags["team"] == "books"
    assert tags["request_size"] == "0" and int(tags["response_size"]) > 0
    assert server_span["attrs"]["istio.canonical_service"] == "reviews"
    assert server_span["attrs"]["upstream_cluster"] == "inbound|9080||"
    assert server_span["attrs"]["upstream_address"] == f"127.0.0.1:{app.port}"
    assert client_span["start"] <= server_span["start"] <= server_span["end"] <= client_span["end"]


async def test_an_unsampled_caller_is_propagated_and_records_nothing() -> None:
    app, receiver = Upstream("app", echo_headers), Upstream("otlp", _ok)
    async with running(app, receiver), sidecars(app, receiver, sampling=100.0) as dp:
        seen = await _get(dp, {"traceparent": f"00-{T}-{P}-00"})
        trace, span, flags = seen["traceparent"].split("-")[1:]
        assert (trace, flags) == (T, "00") and HEX16.fullmatch(span) and span != P
        seen = await _get(dp, {"b3": f"{T}-{P}-0"})
        assert seen["b3"].startswith(f"{T}-") and seen["b3"].split("-")[2] == "0"
        assert seen["traceparent"].startswith(f"00-{T}-") and seen["traceparent"].endswith("-00")
        seen = await _get(dp, {"x-b3-sampled": "0"})  # a decision without a context: a new, unsampled trace
        assert seen["x-b3-sampled"] == "0" and seen["traceparent"].endswith("-00")
        await tracing.flush()
        await wait_for(lambda: len(Sink.seen) == 6)
        assert spans(receiver) == []
    assert all(s["trace_id"] is not None and len(s["trace_id"]) == 32 for s in Sink.seen)


async def test_b3_multi_and_single_callers_keep_their_trace_and_get_b3_back() -> None:
    app, receiver = Upstream("app", echo_headers), Upstream("otlp", _ok)
    short = T[16:]
    async with running(app, receiver), sidecars(app, receiver) as dp:
        seen = await _get(dp, {"x-b3-traceid": short, "x-b3-spanid": P, "x-b3-sampled": "1"})
        exported = await _exported(receiver, 2)
        client_span = next(s for s in exported if s["kind"] == CLIENT_KIND)
        server_span = next(s for s in exported if s["kind"] == SERVER_KIND)
        assert client_span["trace"] == server_span["trace"] == short.rjust(32, "0")
        assert client_span["parent"] == P and server_span["parent"] == client_span["span"]
        assert seen["x-b3-traceid"] == short and seen["x-b3-spanid"] == server_span["span"]
        assert seen["x-b3-parentspanid"] == client_span["span"] and seen["x-b3-sampled"] == "1"
        assert seen["traceparent"] == f"00-{short.rjust(32, '0')}-{server_span['span']}-01"
        assert "b3" not in seen  # the caller's style only
        seen = await _get(dp, {"b3": f"{T}-{P}-1"})
        exported = await _exported(receiver, 4)
        mine = [s for s in exported if s["trace"] == T]
        client_span = next(s for s in mine if s["kind"] == CLIENT_KIND)
        server_span = next(s for s in mine if s["kind"] == SERVER_KIND)
        assert client_span["parent"] == P and server_span["parent"] == client_span["span"]
        assert seen["b3"] == f"{T}-{server_span['span']}-1-{client_span['span']}"
        assert "x-b3-traceid" not in seen


async def test_requests_without_a_decision_are_sampled_at_the_percentage() -> None:
    app, receiver = Upstream("app", echo_headers), Upstream("otlp", _ok)
    async with running(app, receiver), sidecars(app, receiver, sampling=100.0) as dp:
        seen = await _get(dp, {})
        exported = await _exported(receiver, 2)
        client_span = next(s for s in exported if s["kind"] == CLIENT_KIND)
        server_span = next(s for s in exported if s["kind"] == SERVER_KIND)
        assert client_span["parent"] == ""  # a new trace starts at the client sidecar
        assert server_span["parent"] == client_span["span"] and server_span["trace"] == client_span["trace"]
        assert seen["traceparent"] == f"00-{client_span['trace']}-{server_span['span']}-01"
        assert "b3" not in seen and "x-b3-traceid" not in seen
    async with running(app, receiver), sidecars(app, receiver, sampling=0.0) as dp:
        seen = await _get(dp, {})
        assert seen["traceparent"].endswith("-00")
        await tracing.flush()
        assert len(spans(receiver)) == 2  # nothing new


async def test_failed_requests_are_spans_with_their_flags_and_an_error() -> None:
    receiver = Upstream("otlp", _ok)
    async with running(receiver):
        endpoint = f"http://127.0.0.1:{receiver.port}/v1/traces"
        obs = Observability("source", CLIENT, tracing=Tracing(100.0, endpoint, "productpage.default"))
        out = http_listener("out", "outbound", observability=obs)
        dp = await start(resources(out, tables=[one_route(CLUSTER)], clusters={CLUSTER: [("127.0.0.1", 1)]},
                                   unhealthy=[CLUSTER]))
        try:
            client = await RawClient.open(dp.port_of("out"))
            assert (await client.request(host="reviews:9080", headers={"traceparent": f"00-{T}-{P}-01"})).status == 503
            await client.aclose()
        finally:
            await dp.aclose()  # flushes the spans
        (span,) = spans(receiver)
    assert (span["trace"], span["parent"], span["kind"]) == (T, P, CLIENT_KIND)
    assert span["attrs"]["response_flags"] == "UH" and span["attrs"]["http.status_code"] == "503"
    assert span["attrs"]["error"] == "true" and span["status"] == 2  # STATUS_CODE_ERROR


def test_traceparent_parsing() -> None:
    assert tracing.parse_traceparent(f"00-{T}-{P}-01".encode()) == (T, P, True)
    assert tracing.parse_traceparent(f"00-{T.upper()}-{P}-00".encode()) == (T, P, False)
    assert tracing.parse_traceparent(f"01-{T}-{P}-01-future".encode()) == (T, P, True)  # a later version may add fields
    for bad in (f"00-{T}-{P}-01-x", f"ff-{T}-{P}-01", f"00-{'0' * 32}-{P}-01", f"00-{T}-{'0' * 16}-01", f"00-{T[:-1]}-{P}-01",
                f"00-{T}-{P}-1", "garbage", f"00-{T}-{P}-zz"):
        assert tracing.parse_traceparent(bad.encode()) is None, bad


def test_span_names_follow_istios_decorator() -> None:
    assert tracing.span_name(CLUSTER, "reviews:9080") == "reviews.default.svc.cluster.local:9080/*"
    assert tracing.span_name("inbound|9080||", "reviews:9080", "reviews.default.svc.cluster.local") == \
        "reviews.default.svc.cluster.local:9080/*"
    assert tracing.span_name("inbound|9080||", "reviews", "reviews.default.svc.cluster.local") == \
        "reviews.default.svc.cluster.local:9080/*"
    # a caller that named another port (an ingress's own, say): the inbound cluster's port wins
    assert tracing.span_name("inbound|9080||", "127.0.0.1:28063", "reviews.default.svc.cluster.local") == \
        "reviews.default.svc.cluster.local:9080/*"
    assert tracing.span_name("PassthroughCluster", "example.com") == "example.com:80/*"
    assert tracing.span_name(None, "example.com:8443") == "example.com:8443/*"


async def test_stopping_is_bounded_when_the_collector_is_away() -> None:
    import time

    from test_dataplane_support import closed_port

    endpoint = f"http://127.0.0.1:{closed_port()}/v1/traces"
    exporter = tracing._exporter(endpoint, "lonely")
    exporter.record("x:80/*", T, P, None, True, {"http.method": "GET"}, 1, 2, False)
    t0 = time.monotonic()
    await tracing.shutdown(timeout=0.5)
    assert time.monotonic() - t0 < 2.0
    assert tracing._exporter(endpoint, "lonely") is not exporter  # the next traced request starts a new one
    await tracing.shutdown(timeout=0.5)
