"""Route policies on the native data plane, on loopback: fault injection (delay,
abort, percentages), request mirroring, request/response header operations
and CORS."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from knotwork.proxyconfig import (
    CorsPolicy,
    DirectResponse,
    FaultPolicy,
    MirrorPolicy,
    Route,
    RouteAction,
    RouteMatch,
    StringMatch,
    WeightedCluster,
)

from knotwork_native.http1_forward import shadow_head
from knotwork_native.runtime import RoutePlan
from test_dataplane_support import (
    RawClient,
    Req,
    Upstream,
    closed_port,
    dataplane,
    http_listener,
    resources,
    respond,
    running,
    table,
    wait_for,
)

pytestmark = pytest.mark.anyio


def policy_route(name: str = "r", cluster: str = "c", **kw: Any) -> Route:
    return Route(name, RouteMatch(prefix="/"), action=RouteAction((WeightedCluster(cluster),)), **kw)


def res_for(*routes: Route, clusters: dict[str, list[tuple[str, int]]]) -> dict[str, dict[str, Any]]:
    return resources(http_listener(), tables=[table("rt", ("vh", ("*",), routes))], clusters=clusters)


async def echo_headers(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
    await respond(writer, 200, json.dumps(req.headers).encode(), {"x-up": "1", "x-drop": "gone", "x-keep": "k"})


# ── fault ───────────────────────────────────────────────────────────────────


async def test_fault_abort_answers_directly_with_flag_fi() -> None:
    app = Upstream("app")
    async with running(app), dataplane(res_for(policy_route(fault=FaultPolicy(abort_status=503)),
                                               clusters={"c": [app.addr]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        resp = await client.request()
        assert resp.status == 503
        assert resp.text == "fault filter abort\n"
        assert resp.headers["x-knotwork-response-flags"] == "FI"
        resp = await client.request(method="POST", body=b"x" * 1000)  # the body is read and dropped
        assert resp.status == 503
        await client.aclose()
        assert app.requests == []
        assert dp.status()["response_flags"]["FI"] == 2


async def test_fault_delay_then_forward_and_delay_plus_abort() -> None:
    app = Upstream("app")
    delayed = policy_route("d", fault=FaultPolicy(delay=0.2))
    both = Route("b", RouteMatch(prefix="/both"), action=RouteAction((WeightedCluster("c"),)),
                 fault=FaultPolicy(delay=0.1, abort_status=429))
    async with running(app), dataplane(res_for(both, delayed, clusters={"c": [app.addr]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        t0 = time.monotonic()
        resp = await client.request(path="/x")
        assert resp.status == 200 and resp.text == "app GET /x"
        assert time.monotonic() - t0 >= 0.19
        assert "x-knotwork-response-flags" not in resp.headers  # DI is for logs only
        t0 = time.monotonic()
        resp = await client.request(path="/both")
        assert (resp.status, resp.headers["x-knotwork-response-flags"]) == (429, "DI,FI")  # as Envoy: both faults
        assert time.monotonic() - t0 >= 0.09
        await client.aclose()
        assert [r.path for r in app.requests] == ["/x"]
        assert dp.status()["response_flags"] == {"DI": 2, "FI": 1}


async def test_fault_percentages_are_sampled_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    draws = iter([0.25, 0.75, 0.49, 0.5])
    monkeypatch.setattr(random, "random", lambda: next(draws))
    app = Upstream("app")
    route = policy_route(fault=FaultPolicy(abort_status=500, abort_percent=50.0))
    async with running(app), dataplane(res_for(route, clusters={"c": [app.addr]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        statuses = [(await client.request()).status for _ in range(4)]
        await client.aclose()
    assert statuses == [500, 200, 500, 200]


async def _until(condition, timeout: float = 5.0) -> None:
    """Poll `condition` until true, failing after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_client_gone_during_a_delay_cancels_it() -> None:
    app = Upstream("app")
    async with running(app), dataplane(res_for(policy_route(fault=FaultPolicy(delay=0.3)),
                                               clusters={"c": [app.addr]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        client.send()
        await _until(lambda: dp.status()["in_flight"] == 1)  # the request is inside its delay
        await client.aclose()
        await _until(lambda: dp.status()["response_flags"].get("DC") == 1)
        assert dp.status()["in_flight"] == 0
        assert app.requests == []


# ── mirror ──────────────────────────────────────────────────────────────────


async def test_mirror_is_fire_and_forget_with_shadow_host_and_body() -> None:
    seen = asyncio.Event()

    async def slow_shadow(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> bool:
        seen.set()
        await asyncio.sleep(1.0)  # never slows the client down
        await respond(writer, 500, b"shadow says no")
        return True

    app, shadow = Upstream("app"), Upstream("shadow", slow_shadow)
    route = policy_route(mirror=(MirrorPolicy("shadow"), MirrorPolicy("gone")))
    gone = [("127.0.0.1", closed_port())]
    async with running(app, shadow), dataplane(res_for(route, clusters={
        "c": [app.addr], "shadow": [shadow.addr], "gone": gone})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        t0 = time.monotonic()
        resp = await client.request(method="POST", path="/p", host="svc:9080", body=b"hello")
        assert (resp.status, resp.text) == (200, "app POST /p")
        assert time.monotonic() - t0 < 0.5
        await asyncio.wait_for(seen.wait(), 2)
        (copy,) = shadow.requests
        assert (copy.method, copy.path, bytes(copy.body)) == ("POST", "/p", b"hello")
        assert copy.headers["host"] == "svc-shadow:9080"
        assert app.requests[0].headers["host"] == "svc:9080"
        # chunked request bodies are mirrored too
        client.writer.write(b"PUT /c HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        assert (await client.response()).status == 200
        await wait_for(lambda: len(shadow.requests) == 2, 3, "the second mirror")
        assert bytes(shadow.requests[1].body) == b"abc" and shadow.requests[1].headers["host"] == "svc-shadow"
        await client.aclose()
        await wait_for(lambda: dp.stats["mirror_rq_failed"] == 2, 3, "mirror failures to count")


async def test_mirror_percentage_zero_sends_nothing_and_large_bodies_are_not_mirrored() -> None:
    app, shadow = Upstream("app"), Upstream("shadow")
    never = Route("never", RouteMatch(prefix="/never"), action=RouteAction((WeightedCluster("c"),)),
                  mirror=(MirrorPolicy("shadow", 0.0),))
    always = policy_route(mirror=(MirrorPolicy("shadow"),))
    async with running(app, shadow), dataplane(res_for(never, always, clusters={"c": [app.addr], "shadow": [shadow.addr]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        assert (await client.request(path="/never")).status == 200
        assert (await client.request(method="POST", body=b"x" * (200 * 1024))).status == 200
        await client.aclose()
        await _until(lambda: dp.stats["mirror_rq_skipped"] == 1)
        assert shadow.requests == []


def test_shadow_host() -> None:
    head = b"GET / HTTP/1.1\r\nhost: a.b:80\r\nx: y\r\n\r\n"
    assert shadow_head(head) == b"GET / HTTP/1.1\r\nhost: a.b-shadow:80\r\nx: y\r\nconnection: close\r\n\r\n"
    assert b"host: a-shadow\r\n" in shadow_head(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")


# ── headers ─────────────────────────────────────────────────────────────────


async def test_request_and_response_header_operations() -> None:
    app = Upstream("app", echo_headers)
    route = policy_route(
        request_headers_set={"x-set": "new"}, request_headers_add={"x-added": "a"}, request_headers_remove=("x-secret",),
        response_headers_set={"x-up": "replaced"}, response_headers_add={"x-more": "m"}, response_headers_remove=("x-drop",),
    )
    direct = Route("d", RouteMatch(path="/direct"), direct=DirectResponse(200, "hi"), response_headers_set={"x-d": "1"})
    async with running(app), dataplane(res_for(direct, route, clusters={"c": [app.addr]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        for _ in range(2):  # twice on the same keep-alive connections
            resp = await client.request(headers={"x-set": "old", "x-secret": "s", "x-other": "o"})
            seen = json.loads(resp.body)
            assert (seen["x-set"], seen["x-added"], seen["x-other"]) == ("new", "a", "o")
            assert "x-secret" not in seen
            assert (resp.headers["x-up"], resp.headers["x-more"], resp.headers["x-keep"]) == ("replaced", "m", "k")
            assert "x-drop" not in resp.headers
        resp = await client.request(path="/direct")
        assert (resp.text, resp.headers["x-d"]) == ("hi", "1")
        await client.aclose()
        assert app.connections == 1


def test_fast_path_plans_have_no_policies() -> None:
    plain = RoutePlan(policy_route(request_headers_set={"a": "b"}), {"c": None}, "r")  # type: ignore[dict-item]
    assert not plain.policies and not plain.rebuild
    headers_only = RoutePlan(policy_route(response_headers_add={"a": "b"}), {"c": None}, "r")  # type: ignore[dict-item]
    assert not headers_only.policies and headers_only.rebuild
    with pytest.raises(ValueError, match="fault percentage 101"):
        RoutePlan(policy_route(fault=FaultPolicy(delay=1, delay_percent=101)), {"c": None}, "r")  # type: ignore[dict-item]


# ── CORS ────────────────────────────────────────────────────────────────────


CORS = CorsPolicy(
    allow_origins=(StringMatch(exact="https://a.example"), StringMatch(prefix="https://pre."),
                   StringMatch(regex=r"https://[a-z]+\.re\.example")),
    allow_methods=("GET", "POST"), allow_headers=("x-h", "content-type"), expose_headers=("x-e",), max_age=600,
    allow_credentials=True,
)


async def test_cors_preflight_answered_by_the_proxy_and_actual_responses_get_allow_origin() -> None:
    app = Upstream("app")
    async with running(app), dataplane(res_for(policy_route(cors=CORS), clusters={"c": [app.addr]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        preflight = {"origin": "https://pre.x", "access-control-request-method": "POST"}
        resp = await client.request(method="OPTIONS", headers=preflight)
        assert resp.status == 200 and resp.body == b""
        assert resp.headers["access-control-allow-origin"] == "https://pre.x"
        assert resp.headers["access-control-allow-methods"] == "GET,POST"
        assert resp.headers["access-control-allow-headers"] == "x-h,content-type"
        assert resp.headers["access-control-max-age"] == "600"
        assert resp.headers["access-control-allow-credentials"] == "true"
        assert app.requests == []
        # a preflight from an origin not allowed goes to the app
        resp = await client.request(method="OPTIONS", headers={**preflight, "origin": "https://evil"})
        assert resp.status == 200 and "access-control-allow-origin" not in resp.headers
        assert [r.method for r in app.requests] == ["OPTIONS"]
        resp = await client.request(headers={"origin": "https://abc.re.example"})
        assert resp.headers["access-control-allow-origin"] == "https://abc.re.example"
        assert resp.headers["access-control-expose-headers"] == "x-e"
        assert resp.headers["access-control-allow-credentials"] == "true"
        assert "access-control-allow-methods" not in resp.headers
        resp = await client.request(headers={"origin": "https://A.example"})  # exact is case-sensitive
        assert "access-control-allow-origin" not in resp.headers
        resp = await client.request()
        assert resp.status == 200 and "access-control-allow-origin" not in resp.headers
        await client.aclose()


async def test_local_replies_get_route_response_headers_and_cors_as_on_envoy() -> None:
    """Checked against Envoy 1.40: a fault abort and an upstream error of a route with
    an action carry the route's response headers and CORS headers; a direct
    response carries the response headers but no CORS (the cors filter skips it)."""
    cors = CorsPolicy(allow_origins=(StringMatch(exact="https://a"),), expose_headers=("x-e",))
    abort = Route("abort", RouteMatch(prefix="/abort"), action=RouteAction((WeightedCluster("c"),)),
                  fault=FaultPolicy(abort_status=503), cors=cors, response_headers_set={"x-r": "1"})
    dead = Route("dead", RouteMatch(prefix="/dead"), action=RouteAction((WeightedCluster("dead"),)),
                 cors=cors, response_headers_set={"x-r": "1"})
    direct = Route("direct", RouteMatch(prefix="/direct"), direct=DirectResponse(200, "x"), cors=cors,
                   response_headers_set={"x-r": "1"})
    app = Upstream("app")
    async with running(app), dataplane(res_for(abort, dead, direct, clusters={
            "c": [app.addr], "dead": [("127.0.0.1", closed_port())]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        for path, status in (("/abort", 503), ("/dead", 503)):
            resp = await client.request(path=path, headers={"origin": "https://a"})
            assert resp.status == status
            assert (resp.headers["x-r"], resp.headers["access-control-allow-origin"]) == ("1", "https://a"), path
        resp = await client.request(path="/direct", headers={"origin": "https://a"})
        assert resp.headers["x-r"] == "1" and "access-control-allow-origin" not in resp.headers
        resp = await client.request(method="OPTIONS", path="/direct",
                                    headers={"origin": "https://a", "access-control-request-method": "GET"})
        assert resp.text == "x"  # no preflight answer on a direct response route
        await client.aclose()
