"""Telemetry on the envoy engine, end to end: a real Envoy's access log feeds sinks run by
the agent, the peer header, upstream workload metadata, /stats/prometheus, and Zipkin
spans re-exported over OTLP/HTTP. One Envoy serves the whole module."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from knotwork.distribution import SnapshotCache
from knotwork.proxyconfig import (
    PEER_HEADER,
    Cluster,
    EndpointSet,
    LbEndpoint,
    Listener,
    Observability,
    PeerInfo,
    TagOverride,
    Tracing,
)
from knotwork.records import ProxyContext, Strategy
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import REGISTRY, Counter

from envoy_helpers import (
    KeepAlive,
    Upstream,
    free_port,
    get,
    http_listener,
    route,
    snapshot,
    table,
    tcp_echo,
    wait_for,
    xds_server,
)
from knotwork_envoy.httpio import request
from knotwork_envoy.proxy import EnvoyProxy
from knotwork_envoy.settings import EnvoySettings

pytestmark = pytest.mark.anyio

NODE = "sidecar~productpage-v1-1.default"
ME = PeerInfo("productpage-v1", "default", "productpage", "v1", "spiffe://cluster.local/ns/default/sa/productpage")
REVIEWS = LbEndpoint("127.0.0.1", 0, workload="reviews-v1", namespace="default", labels={"app": "reviews", "version": "v1"},
                     identity="spiffe://cluster.local/ns/default/sa/reviews")
OUT_CLUSTER = "outbound|9080||reviews.default.svc.cluster.local"
TEST_COUNTER = Counter("knotwork_envoy_test_finished", "requests the test sink saw", registry=None)  # in REGISTRY
# while this module's mesh runs (other modules scrape the process's REGISTRY and must not see it)


class Recorder:
    """A telemetry sink that keeps every call (the test strategy ``recorder``)."""

    def __init__(self, listener: Listener, settings: Any, calls: list[tuple[Any, ...]]) -> None:
        self.listener, self.calls = listener, calls

    def request_started(self, request: Any) -> None:
        self.calls.append(("started", self.listener, request))

    def request_finished(self, request: Any, response: Any) -> None:
        TEST_COUNTER.inc()
        self.calls.append(("finished", self.listener, request, response))

    def tcp_opened(self, info: Any) -> None:
        self.calls.append(("tcp_opened", self.listener, info))

    def tcp_closed(self, info: Any) -> None:
        self.calls.append(("tcp_closed", self.listener, info))


class OtlpReceiver:
    """OTLP/HTTP traces on loopback: every span as (trace id, span id, parent id, name, kind, attributes)."""

    def __init__(self) -> None:
        self.spans: list[SimpleNamespace] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                message = ExportTraceServiceRequest()
                message.ParseFromString(self.rfile.read(int(self.headers.get("content-length") or 0)))
                for rs in message.resource_spans:
                    resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        receiver.spans.extend(SimpleNamespace(
                            trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), parent_id=s.parent_span_id.hex(),
                            name=s.name, kind=s.kind, service=resource.get("service.name"),
                            attributes={a.key: a.value.string_value for a in s.attributes},
                            start=s.start_time_unix_nano, end=s.end_time_unix_nano) for s in ss.spans)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str) -> list[SimpleNamespace]:
        return [s for s in list(self.spans) if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def mesh() -> Any:
    calls: list[tuple[Any, ...]] = []
    strategies = {
        "recorder": Strategy("recorder", lambda lis, settings: Recorder(lis, settings, calls), engines=frozenset({"native", "envoy"})),
        "native-only": Strategy("native-only", lambda lis, settings: Recorder(lis, settings, calls), engines=frozenset({"native"})),
    }
    otlp = OtlpReceiver()
    app = Upstream("reviews")
    registered = False
    await app.start()
    echo, echo_port = await tcp_echo()
    out_port, in_port, tcp_port = free_port(), free_port(), free_port()
    source = Observability(
        reporter="source", workload=ME,
        tag_overrides=(TagOverride("REQUEST_COUNT", "user", value="request.headers['x-user']"),),
        tracing=Tracing(sampling=100.0, endpoint=otlp.endpoint, service="productpage.default"))
    destination = Observability(reporter="destination", workload=ME, service="productpage.default.svc.cluster.local",
                                tracing=Tracing(sampling=0.0, endpoint=otlp.endpoint, service="productpage.default"))
    reviews = LbEndpoint(app.addr[0], app.port, workload=REVIEWS.workload, namespace=REVIEWS.namespace,
                         labels=REVIEWS.labels, identity=REVIEWS.identity)
    snap = snapshot(
        Listener(name="outbound|9080", address="127.0.0.1", port=out_port, mode="outbound", route_table="9080",
                 telemetry=("recorder", "native-only"), observability=source),
        table("9080", ("reviews", ("reviews:9080",), (route("default", OUT_CLUSTER),))),
        Listener(name="inbound|9080", address="127.0.0.1", port=in_port, mode="inbound", route_table="inbound|9080",
                 telemetry=("recorder",), observability=destination),
        table("inbound|9080", ("inbound", ("*",), (route("default", "inbound|9080"),))),
        Listener(name="outbound|5432||db", address="127.0.0.1", port=tcp_port, mode="outbound", protocol="tcp",
                 cluster="db", telemetry=("recorder",), observability=source),
        Cluster(OUT_CLUSTER), EndpointSet(OUT_CLUSTER, (reviews,)),
        Cluster("inbound|9080"), EndpointSet("inbound|9080", (LbEndpoint(*app.addr),)),
        Cluster("db"), EndpointSet("db", (LbEndpoint("127.0.0.1", echo_port),)),
    )
    cache = SnapshotCache()
    cache.set(NODE, snap)
    cache.notify()
    async with xds_server(cache) as server:
        ctx = ProxyContext(node_id=NODE, control_address=f"127.0.0.1:{server.address[1]}", admin_port=0,
                           settings=EnvoySettings(), strategies={"telemetry": strategies}, drain_timeout=0.5)
        proxy = EnvoyProxy(ctx)
        task = asyncio.ensure_future(proxy.run())
        try:
            await wait_for(lambda: proxy.agent.ready or task.done(), 15, "envoy to be ready")
            assert proxy.agent.ready
            REGISTRY.register(TEST_COUNTER)
            registered = True
            yield SimpleNamespace(proxy=proxy, calls=calls, app=app, otlp=otlp, out=out_port, inbound=in_port,
                                  tcp=tcp_port)
        finally:
            if registered:
                REGISTRY.unregister(TEST_COUNTER)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await app.stop()
            echo.close()
            otlp.server.shutdown()


def finished(calls: list[tuple[Any, ...]], path: str, listener: str) -> Any:
    for call in calls:
        if call[0] == "finished" and call[2].path == path and call[1].name == listener:
            return call
    return None


async def test_access_log_lines_reach_the_sinks_with_every_field(mesh: Any) -> None:
    before = time.time()
    resp = await get(mesh.out, "/reviews/1?x=%25", host="reviews:9080",
                     headers={PEER_HEADER: "workload=evil;namespace=x;app=a;version=v;principal=p",
                              "x-user": "alice", "user-agent": "test-agent", "x-request-id": "rid-1"})
    assert resp.status == 200
    # the app's own peer header is replaced by this proxy's workload
    assert mesh.app.requests[-1][2][PEER_HEADER] == ME.header()
    call = await wait_for(lambda: finished(mesh.calls, "/reviews/1?x=%25", "outbound|9080"), 3, "the access-log line")
    _, listener, req, resp_info = call
    started = [c for c in mesh.calls if c[0] == "started" and c[2] is req]
    assert started, "request_started comes with the same view"
    assert listener.mode == "outbound" and listener.observability.workload == ME
    assert listener.observability.tag_overrides[0].tag == "user" and listener.telemetry == ("recorder", "native-only")
    assert (req.method, req.path, req.authority, req.protocol) == ("GET", "/reviews/1?x=%25", "reviews:9080", "HTTP/1.1")
    assert before - 1 <= req.start_time <= time.time()
    assert req.header("x-user") == "alice" and req.header("user-agent") == "test-agent"
    assert req.header("x-request-id") == "rid-1" and req.header("host") == "reviews:9080"
    assert req.header("x-forwarded-for") and req.header("content-type") is None
    assert req.header(PEER_HEADER) == ME.header()  # what was forwarded
    assert req.connection.peer_address[0] == "127.0.0.1" and req.connection.local_address == ("127.0.0.1", mesh.out)
    assert req.connection.peer_identity is None and req.connection.tls is False
    assert req.trace_id is not None and len(req.trace_id) == 32  # traced at 100 %
    assert req.principal is None and req.source_labels == {}
    assert (resp_info.status, resp_info.flags, resp_info.cluster) == (200, "-", OUT_CLUSTER)
    assert resp_info.upstream == f"127.0.0.1:{mesh.app.port}"
    assert resp_info.upstream_peer == PeerInfo("reviews-v1", "default", "reviews", "v1", REVIEWS.identity)
    assert resp_info.bytes_sent == len(b"reviews GET /reviews/1?x=%25") and resp_info.bytes_received == 0
    assert 0 < resp_info.duration < 5 and resp_info.grpc_status == ""
    # the native-only strategy is not run by the agent
    assert sum(1 for c in mesh.calls if c[0] == "finished" and c[2] is req) == 1


async def test_inbound_keeps_the_callers_peer_header_and_reports_no_upstream_peer(mesh: Any) -> None:
    caller = PeerInfo("ratings-v1", "default", "ratings", "v1")
    resp = await get(mesh.inbound, "/in", host="productpage:9080", headers={PEER_HEADER: caller.header()})
    assert resp.status == 200 and mesh.app.requests[-1][2][PEER_HEADER] == caller.header()
    _, listener, req, info = await wait_for(lambda: finished(mesh.calls, "/in", "inbound|9080"), 3, "the inbound line")
    assert listener.observability.reporter == "destination"
    assert PeerInfo.parse(req.header(PEER_HEADER)) == caller
    assert info.upstream_peer is None and info.cluster == "inbound|9080"
    assert req.trace_id is not None  # traced (sampling 0: not sampled, still a trace id)


async def test_local_replies_carry_envoy_flags(mesh: Any) -> None:
    resp = await get(mesh.out, "/nowhere", host="unknown-host")
    assert resp.status == 404
    _, _, req, info = await wait_for(lambda: finished(mesh.calls, "/nowhere", "outbound|9080"), 3, "the NR line")
    assert (info.status, info.flags, info.cluster, info.upstream, info.upstream_peer) == (404, "NR", None, None, None)


async def test_tcp_connections_open_and_close(mesh: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.tcp)
    assert await asyncio.wait_for(reader.readline(), 5) == b"hello\n"
    opened = await wait_for(lambda: [c for c in mesh.calls if c[0] == "tcp_opened"], 3, "tcp_opened")
    info = opened[0][2]
    assert info.cluster == "db" and info.upstream_peer == PeerInfo() and info.flags == "-"
    assert info.connection.peer_address[0] == "127.0.0.1"
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(9), 5) == b"echo:ping"
    writer.close()
    closed = await wait_for(lambda: [c for c in mesh.calls if c[0] == "tcp_closed"], 3, "tcp_closed")
    info = closed[0][2]
    assert (info.bytes_received, info.bytes_sent) == (4, len(b"hello\necho:ping")) and info.duration >= 0


async def test_prometheus_has_the_agents_registry_and_envoys_stats(mesh: Any) -> None:
    await get(mesh.out, "/count", host="reviews:9080")
    await wait_for(lambda: finished(mesh.calls, "/count", "outbound|9080"), 3, "the line")
    status, body = await request(mesh.proxy.admin.port, "GET", "/stats/prometheus")
    text = body.decode()
    assert status == 200
    assert "knotwork_envoy_test_finished_total" in text  # the sinks' registry
    assert "envoy_cluster_upstream_rq_total" in text or "envoy_cluster_upstream_rq" in text  # Envoy's own


# ── tracing ──────────────────────────────────────────────────────────────────

TID, PARENT = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


async def test_w3c_and_b3_callers_keep_their_trace_and_unsampled_ones_make_no_spans(mesh: Any) -> None:
    client = await KeepAlive.open(mesh.out)  # one connection: one Envoy worker, spans flushed in order
    try:
        cases = {
            "unsampled": {"x-b3-traceid": "463ac35c9f6413ad48485a3953bb6124", "x-b3-spanid": "a2fb4a1d1a96d312",
                          "x-b3-sampled": "0"},
            "w3c": {"traceparent": f"00-{TID}-{PARENT}-01", "tracestate": "k=v"},
            "b3": {"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"},
            "multi": {"x-b3-traceid": "5af7651916cd43dd8448eb211c80319c", "x-b3-spanid": "c7ad6b7169203331",
                      "x-b3-sampled": "1"},
        }
        upstream = {}
        for name, headers in cases.items():
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            client.writer.write(f"GET /trace/{name} HTTP/1.1\r\nhost: reviews:9080\r\n{extra}\r\n".encode())
            from envoy_helpers import read_response

            assert (await asyncio.wait_for(read_response(client.reader), 5)).status == 200
            upstream[name] = mesh.app.requests[-1][2]
    finally:
        await client.aclose()
    # propagated upstream: the caller's trace id, W3C and B3 both
    assert upstream["w3c"]["traceparent"].split("-")[1] == TID and upstream["w3c"]["x-b3-traceid"] == TID
    assert upstream["w3c"]["tracestate"] == "k=v"
    assert upstream["b3"]["traceparent"].split("-")[1] == "80f198ee56343ba864fe8b2a57d3eff7"
    assert upstream["unsampled"]["x-b3-sampled"] == "0" and upstream["unsampled"]["traceparent"].endswith("-00")

    spans = await wait_for(lambda: mesh.otlp.trace("5af7651916cd43dd8448eb211c80319c"), 10, "the last span")
    (w3c,) = await wait_for(lambda: mesh.otlp.trace(TID), 5, "the W3C caller's span")
    assert w3c.parent_id == PARENT and w3c.kind == 3  # SPAN_KIND_CLIENT
    assert w3c.span_id == upstream["w3c"]["traceparent"].split("-")[2]  # the span the upstream sees as parent
    assert w3c.service == "productpage.default" and w3c.end > w3c.start > 0
    assert w3c.name == "reviews.default.svc.cluster.local:9080/*"
    assert w3c.attributes["http.method"] == "GET" and w3c.attributes["upstream_cluster"] == OUT_CLUSTER
    assert mesh.otlp.trace("80f198ee56343ba864fe8b2a57d3eff7")[0].parent_id == "e457b5a2e4d86bd1"
    assert spans[0].parent_id == "c7ad6b7169203331"
    assert mesh.otlp.trace("463ac35c9f6413ad48485a3953bb6124") == []  # the caller said: not sampled
    line = finished(mesh.calls, "/trace/w3c", "outbound|9080")
    assert line is not None and line[2].trace_id == TID


async def test_inbound_spans_are_server_spans_and_sampling_zero_traces_only_callers_decisions(mesh: Any) -> None:
    client = await KeepAlive.open(mesh.inbound)
    try:
        from envoy_helpers import read_response

        for path, extra in (("/no-decision", ""), ("/sampled", f"traceparent: 00-{'1' * 32}-{'2' * 16}-01\r\n")):
            client.writer.write(f"GET {path} HTTP/1.1\r\nhost: productpage:9080\r\n{extra}\r\n".encode())
            assert (await asyncio.wait_for(read_response(client.reader), 5)).status == 200
    finally:
        await client.aclose()
    (span,) = await wait_for(lambda: mesh.otlp.trace("1" * 32), 10, "the inbound span")
    assert span.kind == 2 and span.parent_id == "2" * 16  # SPAN_KIND_SERVER
    assert span.name == "productpage.default.svc.cluster.local:9080/*"  # the served service, as Istio names it
    assert span.attributes["istio.namespace"] == "default" and span.attributes["istio.canonical_service"] == "productpage"
    line = await wait_for(lambda: finished(mesh.calls, "/no-decision", "inbound|9080"), 3, "the line")
    assert line[2].trace_id is not None and mesh.otlp.trace(line[2].trace_id) == []
