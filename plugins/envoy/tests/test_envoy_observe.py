"""Observability on the envoy engine without Envoy: the translation of a listener's
observability, the agent's access-log lines → sink calls, Zipkin spans → OpenTelemetry."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from typing import Any

import pytest
from knotwork.proxyconfig import (
    PEER_HEADER,
    EndpointSet,
    LbEndpoint,
    Listener,
    Observability,
    PeerInfo,
    TagOverride,
    Tracing,
)
from knotwork.records import Strategy

from knotwork_envoy.bootstrap import TRACES_CLUSTER, bootstrap
from knotwork_envoy.telemetry import AccessLogSinks, pump
from knotwork_envoy.traces import otel_span, span_name
from knotwork_envoy.translate import pack, to_message, translate
from knotwork_envoy.translate.fastwire import encode_cluster_load_assignment
from knotwork_envoy.translate.observe import TRACES_CLUSTER as OBSERVE_TRACES_CLUSTER, constants, digest

ME = PeerInfo("productpage-v1", "default", "productpage", "v1", "spiffe://td/ns/default/sa/productpage")
TRACING = Tracing(sampling=25.0, endpoint="http://127.0.0.1:4318/v1/traces", service="productpage.default",
                  custom_tags=(("env", "100%"),))
OBS = Observability(reporter="source", workload=ME, naming="istio",
                    tag_overrides=(TagOverride("REQUEST_COUNT", "user", value="request.headers['X-User']"),), tracing=TRACING)


def listener(mode: str = "outbound", protocol: str = "http", **kw: Any) -> Listener:
    kw.setdefault("telemetry", ("metrics", "access-log"))
    kw.setdefault("observability", OBS)
    if protocol == "http":
        kw.setdefault("route_table", "rt")
    else:
        kw.setdefault("cluster", "db")
    return Listener(name=f"{mode}|9080", address="127.0.0.1", port=9080, mode=mode, protocol=protocol, **kw)


def hcm(lis: Listener) -> dict[str, Any]:
    out = translate("listeners", lis)
    to_message("listeners", out)  # Envoy's API takes it
    return out["filter_chains"][0]["filters"][0]["typed_config"]


def test_http_access_log_carries_the_fields_and_constants() -> None:
    config = hcm(listener())
    (log,) = config["access_log"]
    typed = log["typed_config"]
    assert typed["@type"].endswith("StdoutAccessLog")
    form = typed["log_format"]["json_format"]
    assert typed["log_format"]["omit_empty_values"] is True and list(form) == ["_id", "_knotwork", "line"]
    fields = form["line"]
    assert fields["peer"] == "%UPSTREAM_METADATA(knotwork:peer)%" and fields["san"] == "%DOWNSTREAM_PEER_URI_SAN%"
    assert fields["trace"] == "%TRACE_ID%" and fields["grpc"] == "%TRAILER(grpc-status)%"
    assert fields["headers"] == {"user-agent": "%REQ(user-agent)%", "x-request-id": "%REQ(x-request-id)%",
                                 "x-forwarded-for": "%REQ(x-forwarded-for)%", "content-type": "%REQ(content-type)%",
                                 PEER_HEADER: f"%REQ({PEER_HEADER})%", "x-user": "%REQ(x-user)%"}
    const = json.loads(form["_knotwork"].replace("%%", "%"))
    assert form["_id"] == hashlib.sha256(form["_knotwork"].replace("%%", "%").encode()).hexdigest()[:16]
    assert (const["listener"], const["mode"], const["protocol"], const["sinks"]) == ("outbound|9080", "outbound", "http",
                                                                                    ["metrics", "access-log"])
    assert const["observability"]["tracing"]["custom_tags"] == [["env", "100%"]]
    assert "%%" in form["_knotwork"]  # a literal % in a format string is doubled


def test_no_access_log_without_sinks_or_observability() -> None:
    assert "access_log" not in hcm(listener(telemetry=()))
    assert "access_log" not in hcm(listener(observability=None))
    assert "tracing" not in hcm(listener(observability=None))


def test_tcp_proxy_logs_on_connect_and_close() -> None:
    out = translate("listeners", listener(protocol="tcp"))
    to_message("listeners", out)
    proxy = out["filter_chains"][0]["filters"][0]["typed_config"]
    assert proxy["access_log_options"] == {"flush_access_log_on_connected": True}
    fields = proxy["access_log"][0]["typed_config"]["log_format"]["json_format"]["line"]
    assert fields["type"] == "%ACCESS_LOG_TYPE%" and "method" not in fields
    assert "access_log" not in translate("listeners", listener(protocol="tcp", telemetry=()))["filter_chains"][0]["filters"][0]["typed_config"]


@pytest.mark.parametrize(("mode", "sets"), [("outbound", True), ("http_proxy", True), ("gateway", True), ("inbound", False)])
def test_client_side_listeners_set_the_peer_header(mode: str, sets: bool) -> None:
    filters = hcm(listener(mode))["http_filters"]
    first = filters[0]
    if not sets:
        assert all(f["name"] != "envoy.filters.http.header_mutation" for f in filters)
        return
    assert first["name"] == "envoy.filters.http.header_mutation"
    (mutation,) = first["typed_config"]["mutations"]["request_mutations"]
    assert mutation["append"] == {"header": {"key": PEER_HEADER, "value": ME.header()},
                                  "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def test_tracing_is_zipkin_to_the_agent() -> None:
    tracing = hcm(listener("inbound", observability=Observability(
        reporter="destination", workload=ME, service="productpage.default.svc.cluster.local", tracing=TRACING)))["tracing"]
    assert tracing["random_sampling"] == {"value": 25.0}
    assert {"tag": "istio.namespace", "literal": {"value": "default"}} in tracing["custom_tags"]
    assert {"tag": "env", "literal": {"value": "100%"}} in tracing["custom_tags"]
    zipkin = tracing["provider"]["typed_config"]
    assert zipkin["collector_cluster"] == TRACES_CLUSTER == OBSERVE_TRACES_CLUSTER
    assert zipkin["collector_endpoint"] == ("/api/v2/spans?endpoint=http%3A%2F%2F127.0.0.1%3A4318%2Fv1%2Ftraces"
                                            "&service=productpage.default&host=productpage.default.svc.cluster.local")
    assert (zipkin["trace_context_option"], zipkin["shared_span_context"]) == ("USE_B3_WITH_W3C_PROPAGATION", False)
    # a gateway's spans are CLIENT spans, as on the native engine (Envoy: SERVER, its listener being INBOUND)
    gateway = hcm(listener("gateway"))["tracing"]["provider"]["typed_config"]["collector_endpoint"]
    assert gateway.endswith("&kind=CLIENT") and "kind=" not in zipkin["collector_endpoint"]
    from envoy_data_plane.envoy.config.trace.v3 import ZipkinConfig
    from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import HttpConnectionManager

    packed = pack("listeners", listener())
    from envoy_data_plane.envoy.config.listener.v3 import Listener as EnvoyListener

    manager = HttpConnectionManager.parse(EnvoyListener.parse(packed.value).filter_chains[0].filters[0].typed_config.value)
    assert ZipkinConfig.parse(manager.tracing.provider.typed_config.value).trace_id_128bit is True


def test_endpoints_carry_their_workload() -> None:
    eps = EndpointSet("c", (LbEndpoint("10.0.0.1", 80, workload="reviews-v1", namespace="default",
                                       labels={"app": "reviews", "version": "v1"}), LbEndpoint("10.0.0.2", 80)))
    config = translate("endpoints", eps)
    first, second = config["endpoints"][0]["lb_endpoints"]
    assert first["metadata"]["filter_metadata"]["knotwork"] == {
        "workload": "reviews-v1", "namespace": "default", "app": "reviews", "version": "v1", "principal": "unknown",
        "peer": '["reviews-v1","default","reviews","v1","unknown"]'}
    assert "metadata" not in second  # nothing known: the agent reports "unknown" everywhere
    assert encode_cluster_load_assignment(config) == bytes(to_message("endpoints", config))


def test_bootstrap_has_the_trace_collector() -> None:
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

    out = bootstrap("n", "127.0.0.1:1", traces_path="/tmp/x/traces.sock")
    (traces,) = [c for c in out["static_resources"]["clusters"] if c["name"] == TRACES_CLUSTER]
    assert traces["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {"pipe": {"path": "/tmp/x/traces.sock"}}
    assert out["layered_runtime"]["layers"][0]["static_layer"] == {"tracing.zipkin.flush_interval_ms": 200}
    Bootstrap.from_dict(out)
    assert "layered_runtime" not in bootstrap("n", "127.0.0.1:1")


# ── the agent: lines → sinks ─────────────────────────────────────────────────


class Sink:
    def __init__(self, calls: list[Any], fail: bool = False) -> None:
        self.calls, self.fail = calls, fail

    def request_started(self, request: Any) -> None:
        self.calls.append(("started", request))

    def request_finished(self, request: Any, response: Any) -> None:
        if self.fail:
            raise RuntimeError("boom")
        self.calls.append(("finished", request, response))


def line(lis: Listener, **fields: Any) -> bytes:
    """A line as Envoy writes it: keys sorted, empty values left out."""
    base = {"start": "1700000000.250000", "remote": "127.0.0.1:50000", "local": "127.0.0.1:9080",
            "san": None, "tls": None, "upstream": "10.0.0.1:80", "cluster": "outbound|80||r.default.svc.cluster.local",
            "peer": '["r-v1","default","r","v1","unknown"]',
            "flags": "-", "rx": 3, "tx": 10, "ms": 2, "method": "POST", "path": "/p?q", "authority": "R:80",
            "protocol": "HTTP/2", "status": 200, "us": 1500, "trace": "e457b5a2e4d86bd1", "grpc": None, "grpc_h": "14",
            "headers": {"x-user": "bob", "user-agent": None}}
    per_request = {k: v for k, v in {**base, **fields}.items() if v is not None}
    per_request["headers"] = {k: v for k, v in per_request["headers"].items() if v is not None}
    const = constants(lis)
    out = {"_id": digest(const), "_knotwork": const, "line": per_request}
    return json.dumps(out, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def test_lines_become_views_for_the_sinks_that_run_on_envoy() -> None:
    calls: list[Any] = []
    made: list[Listener] = []

    def factory(lis: Listener, settings: Any) -> Sink:
        made.append(lis)
        assert settings == {"x": 1}
        return Sink(calls)

    sinks = AccessLogSinks({
        "metrics": Strategy("metrics", factory),
        "access-log": Strategy("access-log", lambda lis, s: Sink(calls), engines=frozenset({"native"})),
    }, {"metrics": {"x": 1}})
    lis = listener()
    assert sinks.feed(line(lis)) and sinks.feed(line(lis))
    assert len(made) == 1 and made[0].observability == OBS and made[0].telemetry == ("metrics", "access-log")
    (_, req), (_, req2, resp), *_ = calls
    assert req is req2 and len(calls) == 4  # started + finished per line, the native-only sink skipped
    assert (req.method, req.path, req.authority, req.protocol, req.start_time) == ("POST", "/p?q", "r:80", "HTTP/2", 1700000000.25)
    assert req.trace_id == "0000000000000000e457b5a2e4d86bd1" and req.header("x-user") == "bob" and req.header("user-agent") is None
    assert req.connection.peer_address == ("127.0.0.1", 50000) and req.connection.tls is False
    assert (resp.status, resp.duration, resp.grpc_status, resp.bytes_received, resp.bytes_sent) == (200, 0.0015, "14", 3, 10)
    assert resp.upstream_peer == PeerInfo("r-v1", "default", "r", "v1")
    assert not sinks.feed(b"[2026-01-01 00:00:00][info] envoy says hello\n")
    assert not sinks.feed(b'{"not": "ours"}\n')


def test_inbound_lines_have_no_upstream_peer_and_a_failing_sink_does_not_stop_the_others() -> None:
    calls: list[Any] = []
    sinks = AccessLogSinks({"bad": Strategy("bad", lambda lis, s: Sink(calls, fail=True)),
                            "refuses": Strategy("refuses", lambda lis, s: (_ for _ in ()).throw(ValueError("no"))),
                            "good": Strategy("good", lambda lis, s: Sink(calls))}, {})
    lis = listener("inbound", telemetry=("bad", "refuses", "good"),
                   observability=Observability(reporter="destination", workload=ME, service="pp.default.svc.cluster.local"))
    sinks.feed(line(lis, san="spiffe://td/ns/default/sa/ratings", tls="TLSv1.3", us=None, trace=None))
    finished = [c for c in calls if c[0] == "finished"]
    assert len(finished) == 1 and sinks.errors == 1
    _, req, resp = finished[0]
    assert resp.upstream_peer is None and resp.duration == 0.002 and req.trace_id is None
    assert req.connection.peer_identity == "spiffe://td/ns/default/sa/ratings" and req.connection.tls is True


def test_tcp_lines_open_and_close() -> None:
    calls: list[Any] = []

    class TcpSink:
        def tcp_opened(self, info: Any) -> None:
            calls.append(("opened", info))

        def tcp_closed(self, info: Any) -> None:
            calls.append(("closed", info))

    sinks = AccessLogSinks({"metrics": Strategy("metrics", lambda lis, s: TcpSink())}, {})
    lis = listener(protocol="tcp", telemetry=("metrics",))
    sinks.feed(line(lis, type="TcpUpstreamConnected", rx=0, tx=0))
    sinks.feed(line(lis, type="TcpConnectionEnd", ms=1250, peer=None))
    sinks.feed(line(lis, type="TcpConnectionEnd", peer='["r-v1"]'))  # not five fields: unknown
    sinks.feed(line(lis, type="TcpConnectionEnd", peer='["r-v1","default","","v1","unknown"]'))  # an empty app label
    (_, opened), (_, closed), (_, odd), (_, empty) = calls
    assert opened.upstream_peer.workload == "r-v1" and closed.upstream_peer == PeerInfo() == odd.upstream_peer
    assert empty.upstream_peer == PeerInfo("r-v1", "default", "", "v1")
    assert (closed.bytes_received, closed.bytes_sent, closed.duration) == (3, 10, 1.25)


def test_the_pump_cuts_chunks_into_lines_and_passes_other_output_through() -> None:
    calls: list[Any] = []
    sinks = AccessLogSinks({"metrics": Strategy("metrics", lambda lis, s: Sink(calls))}, {})
    lis = listener()
    long_line = b"y" * 5000 + b"\n"
    data = b"envoy says hello\n" + line(lis, path="/1") + long_line + line(lis, path="/2") + b"tail"
    out = io.BytesIO()

    async def run() -> None:
        stream = asyncio.StreamReader()
        reader = asyncio.ensure_future(pump(stream, sinks, out, limit=2000))
        for i in range(0, len(data), 333):  # chunks that cut lines anywhere
            stream.feed_data(data[i:i + 333])
            await asyncio.sleep(0)
        stream.feed_eof()
        await reader

    asyncio.run(run())
    assert [c[1].path for c in calls if c[0] == "finished"] == ["/1", "/2"] and sinks.lines == 2
    assert out.getvalue() == b"envoy says hello\n" + long_line + b"tail"


def test_a_line_of_a_known_constant_takes_the_fast_path_and_a_changed_one_does_not() -> None:
    calls: list[Any] = []
    sinks = AccessLogSinks({"metrics": Strategy("metrics", lambda lis, s: Sink(calls))}, {})
    lis = listener()
    first = line(lis, path="/1")
    assert sinks.feed(first) and len(sinks._known) == 1
    # same digest, other constant (not as Envoy writes it): the slow path, not a wrong parse
    forged = first.replace(b'\\"listener\\":\\"outbound|9080', b'\\"listener\\":\\"outbound|9081', 1)
    assert forged != first and sinks.feed(forged) and sinks.feed(line(lis, path="/2"))
    assert [c[1].path for c in calls if c[0] == "finished"] == ["/1", "/1", "/2"] and len(sinks._chains) == 2
    assert sinks.feed(b'{"_id":"0123456789abcdef","_knotwork":"{}","line":{}}') and sinks.lines == 3  # not understood
    assert sinks.feed(line(lis, status="503", rx="7")) and sinks.lines == 4  # strings where Envoy writes numbers
    assert (calls[-1][2].status, calls[-1][2].bytes_received) == (503, 7)


# ── the agent: Zipkin → OpenTelemetry ────────────────────────────────────────


def test_zipkin_spans_become_otel_spans() -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.trace import SpanKind

    zipkin = {"traceId": "e457b5a2e4d86bd1", "id": "00c5164924710aba", "parentId": "b7ad6b7169203331", "name": "r:80",
              "kind": "CLIENT", "timestamp": 1700000000000001, "duration": 1500,
              "tags": {"upstream_cluster": "outbound|80|v1|r.default.svc.cluster.local", "error": "true"}}
    span = otel_span(zipkin, Resource.create({"service.name": "pp"}))
    assert span.context.trace_id == 0xe457b5a2e4d86bd1 and span.context.span_id == 0x00c5164924710aba
    assert span.parent.span_id == 0xb7ad6b7169203331 and span.kind == SpanKind.CLIENT
    assert (span.start_time, span.end_time) == (1700000000000001000, 1700000000001501000)
    assert span.name == "r.default.svc.cluster.local:80/*" and span.attributes["error"] == "true"
    assert otel_span({**zipkin, "kind": "SERVER"}, span.resource, kind="CLIENT").kind == SpanKind.CLIENT
    assert span_name({"name": "pp:9080", "tags": {"upstream_cluster": "inbound|9080"}}, "pp.default.svc.cluster.local") == \
        "pp.default.svc.cluster.local:9080/*"
    assert span_name({"name": "example.com", "tags": {}}) == "example.com/*"


def test_the_server_warns_only_about_sinks_that_do_not_run_on_envoy() -> None:
    from knotwork.records import ComponentContext
    from structlog.testing import capture_logs

    from knotwork_envoy.server import EnvoyServer

    strategies = {"metrics": Strategy("metrics", Sink), "tenant-log": Strategy("tenant-log", Sink, engines=frozenset({"native"}))}
    ctx = ComponentContext(mesh=None, settings=None, mesh_dir=None, state_dir=None,  # type: ignore[arg-type]
                           options={"telemetry_strategies": strategies})
    server = EnvoyServer(ctx, cache=None)  # type: ignore[arg-type]
    with capture_logs() as logs:
        assert server._encode("listeners", "l", listener(telemetry=("metrics", "unknown"))) is not None
        server._encode("listeners", "l", listener(telemetry=("metrics", "tenant-log")))
    assert [entry["telemetry"] for entry in logs if entry["log_level"] == "warning"] == [["tenant-log"]]
