"""What telemetry sinks see on the native engine: the request view and response
info attributes, TCP connections, the x-knotwork-peer header, response flags
for each failure kind, and the admin's Prometheus endpoint."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import attrs
import httpx
import pytest
from knotwork.proxyconfig import (
    PEER_HEADER,
    EndpointSet,
    FaultPolicy,
    LbEndpoint,
    Listener,
    Observability,
    PeerInfo,
    Route,
    RouteAction,
    RouteMatch,
    WeightedCluster,
)
from knotwork.records import ProxyContext, Strategy
from prometheus_client.parser import text_string_to_metric_families

from knotwork_native.admin import AdminServer
from knotwork_native.dataplane import DataPlane
from knotwork_native.runtime import ListenerRuntime
from knotwork_native.runtime_build import _observe
from test_dataplane_support import (
    RawClient,
    Req,
    Upstream,
    closed_port,
    echo_server,
    http_listener,
    make_ctx,
    one_route,
    resources,
    respond,
    route,
    running,
    table,
    wait_for,
)

pytestmark = pytest.mark.anyio
CLUSTER = "outbound|9080||reviews.default.svc.cluster.local"
CLIENT = PeerInfo("productpage-v1", "default", "productpage", "v1", "spiffe://cluster.local/ns/default/sa/productpage")
SERVER = PeerInfo("reviews-v2", "default", "reviews", "v2", "spiffe://cluster.local/ns/default/sa/reviews")


# ── an in-test sink and router ───────────────────────────────────────────────


class Sink:
    """Records what a telemetry sink is given, as plain dicts."""

    seen: list[dict[str, Any]] = []
    started: list[str] = []

    def __init__(self, listener: Listener, settings: Any = None) -> None:
        self.listener = listener

    def request_started(self, request: Any) -> None:
        Sink.started.append(request.path)

    def request_finished(self, request: Any, info: Any) -> None:
        Sink.seen.append({
            "kind": "http", "listener": self.listener.name, "protocol": request.protocol, "start_time": request.start_time,
            "trace_id": request.trace_id, "peer_header": request.header(PEER_HEADER), "status": info.status,
            "flags": info.flags, "cluster": info.cluster, "upstream": info.upstream, "upstream_peer": info.upstream_peer,
            "grpc_status": info.grpc_status, "duration": info.duration,
        })

    def _tcp(self, kind: str, info: Any) -> None:
        Sink.seen.append({
            "kind": kind, "listener": self.listener.name, "start_time": info.start_time, "cluster": info.cluster,
            "upstream": info.upstream, "upstream_peer": info.upstream_peer, "flags": info.flags,
            "bytes_received": info.bytes_received, "bytes_sent": info.bytes_sent, "duration": info.duration,
            "peer_address": info.connection.peer_address, "tls": info.connection.tls,
        })

    def tcp_opened(self, info: Any) -> None:
        self._tcp("tcp_opened", info)

    def tcp_closed(self, info: Any) -> None:
        self._tcp("tcp_closed", info)


class RogueRouter:
    """Answers every request with a route of its own naming a cluster nobody configured."""

    def __init__(self, table: Any, settings: Any = None) -> None:
        pass

    def match(self, request: Any) -> Route:
        return Route("rogue", RouteMatch(prefix="/"), action=RouteAction((WeightedCluster("nowhere"),)))


def telemetry_ctx() -> ProxyContext:
    ctx = make_ctx()
    strategies = {**ctx.strategies}
    strategies["telemetry"] = {**strategies["telemetry"], "sink": Strategy(name="sink", factory=Sink)}
    strategies["routers"] = {**strategies["routers"], "rogue": Strategy(name="rogue", factory=RogueRouter)}
    return attrs.evolve(ctx, strategies=strategies)


@pytest.fixture(autouse=True)
def _clear() -> None:
    Sink.seen.clear()
    Sink.started.clear()


async def start(res: dict[str, dict[str, Any]]) -> DataPlane:
    dp = DataPlane(telemetry_ctx(), node_id="test-node")
    await dp.apply(dp.build(res))
    return dp


def observed(reporter: str, **kw: Any) -> Observability:
    return Observability(reporter, CLIENT if reporter == "source" else SERVER, **kw)


def with_workload(res: dict[str, dict[str, Any]], cluster: str, *addrs: tuple[str, int]) -> dict[str, dict[str, Any]]:
    """Give `cluster`'s endpoints the SERVER workload's metadata."""
    res["endpoints"][cluster] = EndpointSet(cluster, tuple(
        LbEndpoint(a, p, labels={"app": SERVER.app, "version": SERVER.version}, identity=SERVER.principal,
                   workload=SERVER.workload, namespace=SERVER.namespace) for a, p in addrs))
    return res


async def echo_headers(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
    extra = {"grpc-status": "14", "content-type": "application/grpc"} if req.path == "/grpc" else {}
    await respond(writer, 200, json.dumps(req.headers).encode(), extra)


# ── request view and response info ───────────────────────────────────────────


async def test_sinks_see_protocol_start_time_upstream_peer_and_grpc_status() -> None:
    app = Upstream("app", echo_headers)
    async with running(app):
        out = http_listener("out", "outbound", telemetry=("sink",), observability=observed("source"))
        inbound = http_listener("in", "inbound", telemetry=("sink",), observability=observed("destination"))
        res = with_workload(resources(out, inbound, tables=[one_route(CLUSTER)], clusters={CLUSTER: [app.addr]}),
                            CLUSTER, app.addr)
        dp = await start(res)
        try:
            before = time.time()
            for listener in ("out", "in"):
                client = await RawClient.open(dp.port_of(listener))
                assert (await client.request(path="/grpc", host="reviews:9080")).status == 200
                assert (await client.request(path="/plain", host="reviews:9080")).status == 200
                await client.aclose()
            after = time.time()
            await wait_for(lambda: len(Sink.seen) == 4, what="four finished requests")
        finally:
            await dp.aclose()
    for seen in Sink.seen:
        assert seen["protocol"] == "HTTP/1.1" and before <= seen["start_time"] <= after
        assert seen["trace_id"] is None  # no tracing on these listeners
        assert seen["cluster"] == CLUSTER and seen["upstream"] == f"127.0.0.1:{app.port}" and seen["flags"] == "-"
    assert [s["grpc_status"] for s in Sink.seen] == ["14", "", "14", ""]
    assert Sink.started == ["/grpc", "/plain", "/grpc", "/plain"]  # request_started too, once per request
    out_seen = [s for s in Sink.seen if s["listener"] == "out"]
    in_seen = [s for s in Sink.seen if s["listener"] == "in"]
    assert all(s["upstream_peer"] == SERVER for s in out_seen)  # the chosen endpoint, on the client side
    assert all(s["upstream_peer"] is None for s in in_seen)  # inbound: the local app is no peer


async def test_no_endpoint_chosen_means_no_upstream_peer() -> None:
    out = http_listener("out", "outbound", telemetry=("sink",), observability=observed("source"))
    res = resources(out, tables=[one_route(CLUSTER)], clusters={CLUSTER: [("127.0.0.1", 1)]}, unhealthy=[CLUSTER])
    dp = await start(res)
    try:
        client = await RawClient.open(dp.port_of("out"))
        assert (await client.request(host="reviews")).status == 503
        await client.aclose()
        await wait_for(lambda: len(Sink.seen) == 1)
    finally:
        await dp.aclose()
    assert (Sink.seen[0]["flags"], Sink.seen[0]["upstream_peer"], Sink.seen[0]["grpc_status"]) == ("UH", None, "")


# ── x-knotwork-peer ──────────────────────────────────────────────────────────


@pytest.mark.parametrize("mode", ["outbound", "http_proxy", "gateway"])
async def test_client_side_listeners_set_the_peer_header_replacing_the_apps(mode: str) -> None:
    app = Upstream("app", echo_headers)
    async with running(app):
        lis = http_listener("out", mode, observability=observed("source"))
        dp = await start(resources(lis, tables=[one_route(CLUSTER)], clusters={CLUSTER: [app.addr]}))
        try:
            client = await RawClient.open(dp.port_of("out"))
            resp = await client.request(host="reviews", headers={"X-Knotwork-Peer": "workload=forged;namespace=x"})
            assert json.loads(resp.body)[PEER_HEADER] == CLIENT.header()
            resp = await client.request(host="reviews")
            assert json.loads(resp.body)[PEER_HEADER] == CLIENT.header()
            await client.aclose()
        finally:
            await dp.aclose()
    assert all(r.headers[PEER_HEADER] == CLIENT.header() for r in app.requests)
    assert PeerInfo.parse(app.requests[0].headers[PEER_HEADER]) == CLIENT


async def test_inbound_and_unobserved_listeners_leave_the_peer_header() -> None:
    app = Upstream("app", echo_headers)
    async with running(app):
        inbound = http_listener("in", "inbound", telemetry=("sink",), observability=observed("destination"))
        plain = http_listener("out", "outbound")
        dp = await start(resources(inbound, plain, tables=[one_route(CLUSTER)], clusters={CLUSTER: [app.addr]}))
        try:
            for name in ("in", "out"):
                client = await RawClient.open(dp.port_of(name))
                resp = await client.request(host="reviews", headers={PEER_HEADER: CLIENT.header()})
                assert json.loads(resp.body)[PEER_HEADER] == CLIENT.header()
                resp = await client.request(host="reviews")
                assert PEER_HEADER not in json.loads(resp.body)
                await client.aclose()
            await wait_for(lambda: len(Sink.seen) == 2)
        finally:
            await dp.aclose()
    assert [s["peer_header"] for s in Sink.seen] == [CLIENT.header(), None]  # the server side reads the caller's


# ── tcp listeners ────────────────────────────────────────────────────────────


async def test_tcp_sinks_hear_of_opened_and_closed_connections() -> None:
    server, port = await echo_server()
    lis = Listener("db", "127.0.0.1", 0, "outbound", protocol="tcp", cluster=CLUSTER, telemetry=("sink",),
                   observability=observed("source"))
    dp = await start(with_workload(resources(lis, clusters={CLUSTER: [("127.0.0.1", port)]}), CLUSTER, ("127.0.0.1", port)))
    try:
        before = time.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", dp.port_of("db"))
        await wait_for(lambda: len(Sink.seen) == 1, what="tcp_opened")
        writer.write(b"hello")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"hello<eof>"
        writer.close()
        await wait_for(lambda: len(Sink.seen) == 2, what="tcp_closed")
    finally:
        await dp.aclose()
        server.close()
    opened, closed = Sink.seen
    assert opened["kind"] == "tcp_opened" and closed["kind"] == "tcp_closed"
    for info in (opened, closed):
        assert info["cluster"] == CLUSTER and info["upstream"] == f"127.0.0.1:{port}" and info["upstream_peer"] == SERVER
        assert info["flags"] == "-" and info["start_time"] >= before and info["peer_address"][0] == "127.0.0.1"
        assert info["tls"] is False
    assert (opened["bytes_received"], opened["bytes_sent"], opened["duration"]) == (0, 0, 0.0)
    assert (closed["bytes_received"], closed["bytes_sent"]) == (5, 10) and closed["duration"] > 0


async def test_a_tcp_connection_that_cannot_connect_is_closed_with_its_flag() -> None:
    lis = Listener("db", "127.0.0.1", 0, "outbound", protocol="tcp", cluster=CLUSTER, telemetry=("sink",))
    dp = await start(resources(lis, clusters={CLUSTER: [("127.0.0.1", closed_port())]}))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", dp.port_of("db"))
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await wait_for(lambda: len(Sink.seen) == 1, what="tcp_closed")
    finally:
        await dp.aclose()
    (closed,) = Sink.seen
    assert closed["kind"] == "tcp_closed" and closed["flags"] in ("UF", "URX,UF") and closed["upstream"] is None
    assert closed["upstream_peer"] is None and closed["cluster"] == CLUSTER


# ── response flags: one per failure kind, as Envoy sets them ─────────────────


async def _flags_of(res: dict[str, dict[str, Any]], raw: bytes | None = None, **request: Any) -> tuple[int, str, list[str]]:
    """(status, the response's flags header, the flags sinks saw) of one request."""
    dp = await start(res)
    try:
        client = await RawClient.open(dp.port_of("in"))
        if raw is not None:
            client.writer.write(raw)
            resp = await client.response()
        else:
            resp = await client.request(**request)
        await client.aclose()
        await wait_for(lambda: len(Sink.seen) == 1, what="the request to finish")
    finally:
        await dp.aclose()
    return resp.status, resp.headers.get("x-knotwork-response-flags", "-"), [s["flags"] for s in Sink.seen]


def _res(cluster_addr: tuple[str, int], **route_opts: Any) -> dict[str, dict[str, Any]]:
    lis = http_listener(telemetry=("sink",))
    return resources(lis, tables=[one_route(CLUSTER, **route_opts)], clusters={CLUSTER: [cluster_addr]})


async def test_flag_nc_for_a_route_naming_an_unknown_cluster() -> None:
    res = _res(("127.0.0.1", 1))
    res["routes"]["rt"] = attrs.evolve(res["routes"]["rt"], router="rogue")
    assert await _flags_of(res) == (503, "NC", ["NC"])


async def test_flag_nr_uh_uf() -> None:
    res = _res(("127.0.0.1", 1))
    res["routes"]["rt"] = table("rt", ("vh", ("reviews",), (route("r", CLUSTER),)))
    assert await _flags_of(res, host="ratings") == (404, "NR", ["NR"])
    Sink.seen.clear()
    assert await _flags_of(resources(http_listener(telemetry=("sink",)), tables=[one_route(CLUSTER)],
                                     clusters={CLUSTER: [("127.0.0.1", 1)]}, unhealthy=[CLUSTER])) == (503, "UH", ["UH"])
    Sink.seen.clear()
    assert await _flags_of(_res(("127.0.0.1", closed_port()))) == (503, "URX,UF", ["URX,UF"])  # Istio's default retries


async def test_flag_upe_for_an_upstream_that_does_not_speak_http() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    try:
        assert await _flags_of(_res(server.sockets[0].getsockname())) == (502, "UPE", ["UPE"])
    finally:
        server.close()


async def test_flag_dpe_for_a_request_that_does_not_parse() -> None:
    raw = b"GET /x HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n"
    assert await _flags_of(_res(("127.0.0.1", 1)), raw=raw) == (400, "DPE", ["DPE"])  # sinks see it, as Envoy logs it


async def test_flag_nr_for_connect_outside_an_http_proxy() -> None:
    raw = b"CONNECT reviews:9080 HTTP/1.1\r\nhost: reviews:9080\r\n\r\n"
    assert await _flags_of(_res(("127.0.0.1", 1)), raw=raw) == (404, "NR", ["NR"])  # Envoy: no CONNECT route


async def test_flag_delay_stays_on_a_failed_request() -> None:
    res = _res(("127.0.0.1", closed_port()))
    table_ = res["routes"]["rt"]
    vh = table_.virtual_hosts[0]
    faulty = attrs.evolve(vh.routes[0], fault=FaultPolicy(delay=0.01, delay_percent=100))
    res["routes"]["rt"] = attrs.evolve(table_, virtual_hosts=(attrs.evolve(vh, routes=(faulty,)),))
    assert await _flags_of(res) == (503, "DI,URX,UF", ["DI,URX,UF"])


# ── admin: /stats/prometheus ─────────────────────────────────────────────────


async def test_admin_serves_prometheus_text() -> None:
    app = Upstream("app")
    async with running(app):
        dp = await start(_res(app.addr))
        async with AdminServer(0, dp) as admin:
            client = await RawClient.open(dp.port_of("in"))
            await client.request()
            await client.aclose()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin.port}") as http:
                resp = await http.get("/stats/prometheus")
        await dp.aclose()
    assert resp.status_code == 200 and resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    lines = resp.text.splitlines()
    assert any(line.startswith("python_info{") for line in lines)  # prometheus_client's registry comes first
    assert "# TYPE knotwork_proxy_downstream_rq_total counter" in lines
    assert "knotwork_proxy_downstream_rq_total 1" in lines
    assert 'knotwork_proxy_responses_total{response_code_class="2xx"} 1' in lines
    assert f'knotwork_proxy_cluster_upstream_rq_total{{cluster="{CLUSTER}"}} 1' in lines
    assert "# TYPE knotwork_proxy_downstream_cx_active gauge" in lines
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}  # as Prometheus reads it
    assert families["knotwork_proxy_cluster_upstream_rq"].type == "counter"
    assert {s.name for f in families.values() if f.name.startswith("knotwork_proxy_") for s in f.samples} <= \
        {line.split("{")[0].split(" ")[0] for line in lines if line.startswith("knotwork_proxy_")}


def test_only_sinks_with_a_request_started_are_called_when_a_request_starts() -> None:
    """request_started is optional (knotwork.protocols): the listener's chain holds the sinks' that exist."""

    class Finisher:
        def request_finished(self, request: Any, response: Any) -> None:
            pass

    class Starter(Finisher):
        def request_started(self, request: Any) -> None:
            pass

    starter = Starter()
    lrt = ListenerRuntime(Listener("l", "127.0.0.1", 0, "inbound", route_table="r"), None)
    lrt.telemetry = (Finisher(), starter)
    _observe(lrt, "node", "listener 'l'")
    assert lrt.started == (starter.request_started,)
