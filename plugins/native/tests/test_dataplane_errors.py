"""Failures are never opaque: response flags and bodies, retries, timeouts,
local routes, access control, and config validation (the NACK path)."""

from __future__ import annotations

import asyncio

import attrs
import pytest
from knotwork.proxyconfig import (
    ConsistencyError,
    DirectResponse,
    Extension,
    Listener,
    PeerTls,
    Redirect,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
    UpstreamTls,
    WeightedCluster,
)

from knotwork_native.dataplane import DataPlane
from test_dataplane_support import (
    RawClient,
    RecordingSink,
    Req,
    Upstream,
    closed_port,
    dataplane,
    http_listener,
    make_ctx,
    one_route,
    resources,
    respond,
    running,
    table,
    wait_for,
)

pytestmark = pytest.mark.anyio
CLUSTER = "outbound|9080||reviews.default.svc.cluster.local"


@pytest.fixture(autouse=True)
def _clear_records() -> None:
    RecordingSink.records.clear()


def _recorded() -> Listener:
    return http_listener(telemetry=("recorder",))


async def _get(port: int, path: str = "/", host: str = "reviews", **kw: object) -> tuple[int, dict[str, str], str]:
    client = await RawClient.open(port)
    try:
        resp = await client.request(path=path, host=host, **kw)  # type: ignore[arg-type]
    finally:
        await client.aclose()
    return resp.status, resp.headers, resp.text


async def test_no_route_is_404_nr() -> None:
    res = resources(http_listener(), tables=[one_route(CLUSTER, ("reviews",))], clusters={CLUSTER: [("127.0.0.1", 1)]})
    async with dataplane(res) as dp:
        status, headers, body = await _get(dp.port_of("in"), "/x", host="ratings")
        assert status == 404
        assert headers["x-knotwork-response-flags"] == "NR" and headers["server"] == "knotwork"
        assert "no route for ratings/x" in body and "route table rt" in body


async def test_no_healthy_upstream_is_503_uh() -> None:
    res = resources(http_listener(), tables=[one_route(CLUSTER)], clusters={CLUSTER: [("127.0.0.1", 1)]}, unhealthy=[CLUSTER])
    async with dataplane(res) as dp:
        status, headers, body = await _get(dp.port_of("in"))
        assert (status, headers["x-knotwork-response-flags"]) == (503, "UH")
        assert f"no healthy upstream for cluster {CLUSTER}" in body


async def test_connection_failure_names_cluster_and_endpoint() -> None:
    port = closed_port()
    res = resources(http_listener(), tables=[one_route(CLUSTER)], clusters={CLUSTER: [("127.0.0.1", port)]})
    async with dataplane(res) as dp:
        status, headers, body = await _get(dp.port_of("in"))
        assert status == 503
        assert headers["x-knotwork-response-flags"] == "URX,UF"  # the default policy retried twice
        assert body.strip() == f"upstream connect error to cluster {CLUSTER} endpoint 127.0.0.1:{port}: connection refused"
    no_retry = resources(http_listener(), tables=[one_route(CLUSTER, retry=RetryPolicy(0))], clusters={CLUSTER: [("127.0.0.1", port)]})
    async with dataplane(no_retry) as dp:
        status, headers, _ = await _get(dp.port_of("in"))
        assert (status, headers["x-knotwork-response-flags"]) == (503, "UF")


async def test_default_retry_hides_a_refused_endpoint() -> None:
    app = Upstream("app")
    async with running(app):
        res = resources(http_listener(), tables=[one_route(CLUSTER)], clusters={CLUSTER: [("127.0.0.1", closed_port()), app.addr]})
        async with dataplane(res) as dp:
            client = await RawClient.open(dp.port_of("in"))
            for _ in range(6):
                assert (await client.request()).status == 200
            await client.aclose()


async def test_route_timeout_is_504_ut() -> None:
    release = asyncio.Event()

    async def slow(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
        await release.wait()

    app = Upstream("app", slow)
    async with running(app):
        res = resources(http_listener(), tables=[one_route(CLUSTER, timeout=0.2)], clusters={CLUSTER: [app.addr]})
        async with dataplane(res) as dp:
            status, headers, body = await _get(dp.port_of("in"))
            assert (status, headers["x-knotwork-response-flags"]) == (504, "UT")
            assert f"upstream request timeout (0.2s) waiting for cluster {CLUSTER} endpoint {app.addr[0]}:{app.addr[1]}" in body
        release.set()


async def test_per_try_timeout_retries_on_another_endpoint() -> None:
    release = asyncio.Event()

    async def slow(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
        await release.wait()

    stuck, good = Upstream("stuck", slow), Upstream("good")
    async with running(stuck, good):
        retry = RetryPolicy(attempts=1, per_try_timeout=0.2, retry_on=("gateway-error",))
        res = resources(_recorded(), tables=[one_route(CLUSTER, retry=retry)], clusters={CLUSTER: [stuck.addr, good.addr]})
        async with dataplane(res) as dp:
            client = await RawClient.open(dp.port_of("in"))
            for _ in range(2):  # round robin starts on `stuck` once
                resp = await client.request()
                assert (resp.status, resp.text) == (200, "good GET /")
            await client.aclose()
        release.set()


async def test_retries_exhausted_forward_the_last_response_with_urx() -> None:
    async def unavailable(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
        await respond(writer, 503, b"app says no")

    app = Upstream("app", unavailable)
    async with running(app):
        retry = RetryPolicy(attempts=2, retry_on=("5xx",))
        res = resources(_recorded(), tables=[one_route(CLUSTER, retry=retry)], clusters={CLUSTER: [app.addr]})
        async with dataplane(res) as dp:
            status, _, body = await _get(dp.port_of("in"))
            assert (status, body) == (503, "app says no")
            assert len(app.requests) == 3
            await wait_for(lambda: len(RecordingSink.records) == 1)
            assert RecordingSink.records[0]["flags"] == "URX"


async def test_retry_hides_a_failure_and_replays_the_body() -> None:
    async def flaky(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
        if len(up.requests) == 1:
            await respond(writer, 503, b"first fails")
        else:
            await respond(writer, 200, bytes(req.body))

    app = Upstream("app", flaky)
    async with running(app):
        retry = RetryPolicy(attempts=1, retry_on=("retriable-status-codes",), retriable_status_codes=(503,))
        res = resources(http_listener(), tables=[one_route(CLUSTER, retry=retry)], clusters={CLUSTER: [app.addr]})
        async with dataplane(res) as dp:
            status, _, body = await _get(dp.port_of("in"), method="POST", body=b"payload" * 100)
            assert (status, body) == (200, "payload" * 100)
            assert [bytes(r.body) for r in app.requests] == [b"payload" * 100] * 2


async def test_a_large_streamed_body_is_not_retried() -> None:
    async def unavailable(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
        await respond(writer, 503, b"no")

    app = Upstream("app", unavailable)
    async with running(app):
        policy = RetryPolicy(2, retry_on=("5xx",))
        res = resources(http_listener(), tables=[one_route(CLUSTER, retry=policy)], clusters={CLUSTER: [app.addr]})
        async with dataplane(res) as dp:
            status, _, _ = await _get(dp.port_of("in"), method="POST", body=b"x" * (100 * 1024))
            assert status == 503
            assert len(app.requests) == 1


async def test_upstream_reset_before_response_is_503_uc() -> None:
    async def hang_up(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> bool:
        return True  # close without answering

    app = Upstream("app", hang_up)
    async with running(app):
        res = resources(http_listener(), tables=[one_route(CLUSTER)], clusters={CLUSTER: [app.addr]})
        async with dataplane(res) as dp:
            status, headers, body = await _get(dp.port_of("in"))
            assert (status, headers["x-knotwork-response-flags"]) == (503, "UC")
            assert f"upstream connection to cluster {CLUSTER} endpoint {app.addr[0]}:{app.addr[1]} closed before response headers" in body
        reset_policy = RetryPolicy(1, retry_on=("reset",))
        reset = resources(http_listener(), tables=[one_route(CLUSTER, retry=reset_policy)], clusters={CLUSTER: [app.addr]})
        async with dataplane(reset) as dp:
            status, headers, _ = await _get(dp.port_of("in"))
            assert (status, headers["x-knotwork-response-flags"]) == (503, "URX,UC")


async def test_stale_pooled_connection_is_retried_transparently() -> None:
    async def second_request_closes(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> bool:
        if nth == 2:
            return True  # as if the app's idle timeout fired just as the request arrived
        await respond(writer, 200, b"ok %d" % nth)
        return False

    app = Upstream("app", second_request_closes)
    async with running(app):
        res = resources(http_listener(), tables=[one_route(CLUSTER, retry=RetryPolicy(0))], clusters={CLUSTER: [app.addr]})
        async with dataplane(res) as dp:
            client = await RawClient.open(dp.port_of("in"))
            assert (await client.request()).text == "ok 1"
            resp = await client.request()
            assert (resp.status, resp.text) == (200, "ok 1")  # answered on a fresh connection
            assert app.connections == 2
            await client.aclose()


async def test_reset_mid_response_is_ur() -> None:
    async def truncated(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        return True

    app = Upstream("app", truncated)
    async with running(app):
        res = resources(_recorded(), tables=[one_route(CLUSTER)], clusters={CLUSTER: [app.addr]})
        async with dataplane(res) as dp:
            client = await RawClient.open(dp.port_of("in"))
            client.send()
            with pytest.raises(ConnectionError):
                await client.response()
            await client.aclose()
            await wait_for(lambda: len(RecordingSink.records) == 1)
            assert RecordingSink.records[0]["flags"] == "UR"
            assert dp.status()["response_flags"] == {"UR": 1}


async def test_weighted_clusters_and_local_routes() -> None:
    a, b = Upstream("a"), Upstream("b")
    async with running(a, b):
        routes = (
            Route("direct", RouteMatch(prefix="/direct"), direct=DirectResponse(418, "short and stout")),
            Route("moved", RouteMatch(prefix="/old"), redirect=Redirect(path="/new", host="example.com")),
            Route("rewrite", RouteMatch(prefix="/api/"),
                  action=RouteAction((WeightedCluster("ca"),), prefix_rewrite="/v2/", host_rewrite="backend")),
            Route("split", RouteMatch(prefix="/"),
                  action=RouteAction((WeightedCluster("ca", 1), WeightedCluster("cb", 1), WeightedCluster("cz", 0)))),
        )
        clusters = {"ca": [a.addr], "cb": [b.addr], "cz": [("127.0.0.1", 1)]}
        res = resources(http_listener(), tables=[table("rt", ("vh", ("*",), routes))], clusters=clusters)
        async with dataplane(res) as dp:
            client = await RawClient.open(dp.port_of("in"))
            resp = await client.request(path="/direct")
            assert (resp.status, resp.text) == (418, "short and stout")
            resp = await client.request(path="/old/x")
            assert (resp.status, resp.headers["location"]) == (301, "http://example.com/new")
            resp = await client.request(path="/api/items?id=3")
            assert resp.text == "a GET /v2/items?id=3"
            assert a.requests[-1].headers["host"] == "backend"
            names = [(await client.request()).text.split()[0] for _ in range(60)]
            assert names.count("a") > 10 and names.count("b") > 10 and len(names) == names.count("a") + names.count("b")
            await client.aclose()


async def test_authentication_and_authorization() -> None:
    app = Upstream("app")
    async with running(app):
        lis = http_listener(authn=("token",), authz=("header",), telemetry=("recorder",))
        async with dataplane(resources(lis, tables=[one_route()], clusters={"c": [app.addr]})) as dp:
            port = dp.port_of("in")
            assert (await _get(port, headers={"authorization": "Bearer alice"}))[0] == 200
            status, _, body = await _get(port, headers={"authorization": "Bearer bad"})
            assert status == 401 and "token rejected" in body
            status, _, body = await _get(port, headers={"authorization": "Bearer mallory"})
            assert status == 403 and "RBAC: access denied" in body
            assert (await _get(port, headers={"x-deny": "1"}))[0] == 403
            await wait_for(lambda: len(RecordingSink.records) == 4)
            assert [r["principal"] for r in RecordingSink.records] == ["user:alice", None, "user:mallory", None]
            assert [r["status"] for r in RecordingSink.records] == [200, 401, 403, 403]
            assert len(app.requests) == 1


# ── validation: what the client NACKs ────────────────────────────────────────


def _build(res: dict) -> None:  # type: ignore[type-arg]
    DataPlane(make_ctx(), node_id="n").build(res)


def test_missing_references_are_consistency_errors() -> None:
    with pytest.raises(ConsistencyError, match="missing cluster 'nope'"):
        _build(resources(http_listener(), tables=[one_route("nope")]))
    with pytest.raises(ConsistencyError, match="missing route table 'rt'"):
        _build(resources(http_listener()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["clusters"].update(c=attrs.evolve(r["clusters"]["c"], lb="maglev")), "unknown load_balancers strategy 'maglev'"),
        (lambda r: r["listeners"].update(i=attrs.evolve(r["listeners"]["in"], authz=("opa",))), "unknown authorizers strategy 'opa'"),
        (lambda r: r["listeners"].update(i=attrs.evolve(r["listeners"]["in"], mode="sideways")), "mode 'sideways'"),
        (lambda r: r["listeners"].update(i=attrs.evolve(r["listeners"]["in"], route_table=None)), "needs a route_table"),
        (lambda r: r["clusters"].update(c=attrs.evolve(r["clusters"]["c"], extensions=(Extension("wasm", "x"),))), "extension 'wasm'"),
        (lambda r: r["routes"].update(rt=one_route(retry=RetryPolicy(1, retry_on=("sometimes",)))), "unknown retry_on condition"),
        (lambda r: r["routes"].update(rt=one_route(timeout=-1)), "timeout must be > 0"),
        (lambda r: r["listeners"].update(
            dup=attrs.evolve(r["listeners"]["in"], name="dup", port=15001),
            in2=attrs.evolve(r["listeners"]["in"], name="in2", port=15001),
        ), "also used by listener"),
    ],
)
def test_invalid_configs_are_value_errors(change, message) -> None:  # type: ignore[no-untyped-def]
    res = resources(http_listener(), tables=[one_route()], clusters={"c": [("127.0.0.1", 1)]})
    change(res)
    with pytest.raises(ValueError, match=message) as info:
        _build(res)
    assert not isinstance(info.value, ConsistencyError)


async def test_a_listener_that_cannot_bind_leaves_the_old_config() -> None:
    app = Upstream("app")
    async with running(app):
        async with dataplane(resources(http_listener(), tables=[one_route()], clusters={"c": [app.addr]})) as dp:
            taken = dp.port_of("in")
            old = dp.runtime
            clash = resources(http_listener(), Listener("other", "127.0.0.1", taken, "gateway", route_table="rt"),
                              tables=[one_route()], clusters={"c": [app.addr]})
            with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{taken}"):
                await dp.apply(dp.build(clash))
            assert dp.runtime is old
            assert (await _get(taken))[0] == 200


def test_mesh_tls_without_a_workload_identity_is_refused_rather_than_ignored() -> None:
    res = resources(http_listener(), tables=[one_route()], clusters={"c": [("127.0.0.1", 1)]})
    res["clusters"]["c"] = attrs.evolve(res["clusters"]["c"], tls=UpstreamTls("ISTIO_MUTUAL", identities=("spiffe://td/ns/a/sa/b",)))
    with pytest.raises(ValueError, match="cluster 'c': tls mode ISTIO_MUTUAL needs the proxy's workload identity"):
        _build(res)
    res["clusters"]["c"] = attrs.evolve(res["clusters"]["c"], tls=None)
    res["listeners"]["in"] = attrs.evolve(res["listeners"]["in"], tls=PeerTls("STRICT"))
    with pytest.raises(ValueError, match="listener 'in': tls mode STRICT needs the proxy's workload identity"):
        _build(res)
    for mode in ("PERMISSIVE", "DISABLE"):  # both accept plaintext, all a proxy without an SVID can do
        res["listeners"]["in"] = attrs.evolve(res["listeners"]["in"], tls=PeerTls(mode))
        _build(res)


async def test_client_going_away_is_dc_and_frees_the_upstream() -> None:
    release = asyncio.Event()

    async def slow(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
        await release.wait()

    app = Upstream("app", slow)
    async with running(app):
        async with dataplane(resources(_recorded(), tables=[one_route()], clusters={"c": [app.addr]})) as dp:
            client = await RawClient.open(dp.port_of("in"))
            client.send()
            await wait_for(lambda: len(app.requests) == 1, what="the request to reach the app")
            await client.aclose()
            await wait_for(lambda: len(RecordingSink.records) == 1, what="the request to end")
            assert (RecordingSink.records[0]["flags"], RecordingSink.records[0]["status"]) == ("DC", 0)
            await wait_for(lambda: dp.stats["upstream_cx_active"] == 0, what="the upstream connection to be reset")
            assert dp.status()["in_flight"] == 0
        release.set()


def test_flags_and_local_replies() -> None:
    from knotwork_native import flags

    assert flags.combine(flags.URX, flags.UF) == "URX,UF"
    assert flags.combine("-", "") == "-"
    assert set(flags.MEANINGS) >= {"NR", "UH", "UF", "UT", "URX", "UC", "UR", "DC", "LR", "DI", "FI"}
    reply = flags.local_reply(503, "URX,UF", "upstream connect error", close=True)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    for line in (b"server: knotwork", b"x-knotwork-response-flags: URX,UF", b"connection: close", b"content-length: 23"):
        assert line in head
    assert body == b"upstream connect error\n"
