"""The native data plane, end to end on loopback: routing, keep-alive,
streaming and flow control, HTTP proxy (absolute form and CONNECT), TCP,
config swaps, drain and the admin endpoint."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from types import SimpleNamespace

import attrs
import httpx
import pytest
from knotwork.proxyconfig import Listener, Route, WeightedCluster

from knotwork_native.admin import AdminServer
from knotwork_native.dataplane import DataPlane
from test_dataplane_support import (
    RawClient,
    Req,
    RoundRobin,
    Upstream,
    dataplane,
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
MB = 1 << 20


async def test_routes_by_host_over_one_keepalive_connection() -> None:
    reviews, ratings = Upstream("reviews"), Upstream("ratings")
    async with running(reviews, ratings):
        res = resources(
            http_listener(),
            tables=[table(
                "rt",
                ("reviews", ("reviews", "reviews:9080"), (route("r", "c-reviews"),)),
                ("ratings", ("ratings:9080",), (route("r", "c-ratings"),)),
            )],
            clusters={"c-reviews": [reviews.addr], "c-ratings": [ratings.addr]},
        )
        async with dataplane(res) as dp:
            client = await RawClient.open(dp.port_of("in"))
            for i in range(10):
                host = "reviews:9080" if i % 2 else "ratings:9080"
                resp = await client.request(host=host, path=f"/x/{i}?q=1")
                assert resp.status == 200
                assert resp.text == f"{host.split(':')[0]} GET /x/{i}?q=1"
            await client.aclose()
            assert (reviews.connections, ratings.connections) == (1, 1)  # upstream keep-alive, pooled
            assert dp.status()["requests"] == 10


async def test_request_and_response_headers() -> None:
    async def handler(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
        body = json.dumps(req.headers).encode()
        await respond(writer, 200, body, {"Connection": "keep-alive", "Keep-Alive": "timeout=5", "X-App": "yes"})

    app = Upstream("app", handler)
    async with running(app), dataplane(resources(http_listener(), tables=[one_route()], clusters={"c": [app.addr]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        resp = await client.request(host="svc", headers={
            "Connection": "keep-alive, X-Secret", "X-Secret": "s", "Keep-Alive": "timeout=1", "Proxy-Authorization": "Basic x",
            "TE": "trailers", "X-Forwarded-For": "10.0.0.1", "User-Agent": "test",
        })
        seen = json.loads(resp.body)
        assert seen["host"] == "svc"
        assert seen["user-agent"] == "test"
        assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", seen["x-request-id"])
        for hop in ("connection", "keep-alive", "x-secret", "proxy-authorization", "te"):
            assert hop not in seen
        assert resp.headers["x-app"] == "yes"
        assert "keep-alive" not in resp.headers and "connection" not in resp.headers
        second = json.loads((await client.request(headers={"X-Request-Id": "given"})).body)
        assert second["x-request-id"] == "given"
        await client.aclose()
        assert app.connections == 1


async def test_httpx_client_with_bodies() -> None:
    async def echo(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
        await respond(writer, 201, bytes(req.body[::-1]), {"x-method": req.method})

    app = Upstream("app", echo)
    async with running(app), dataplane(resources(http_listener(), tables=[one_route()], clusters={"c": [app.addr]})) as dp:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port_of('in')}") as client:
            for i in range(5):
                resp = await client.post("/echo", content=b"abc%d" % i)
                assert (resp.status_code, resp.content, resp.headers["x-method"]) == (201, b"%dcba" % i, "POST")

            async def chunks():  # chunked request body
                for part in (b"one-", b"two-", b"three"):
                    yield part

            resp = await client.put("/echo", content=chunks())
            assert resp.content == b"eerht-owt-eno"
            assert app.requests[-1].headers["transfer-encoding"] == "chunked"
            resp = await client.head("/echo")
            assert resp.status_code == 201
        assert app.connections <= 2  # HEAD closes its upstream connection


async def test_streams_a_large_response_with_flow_control() -> None:
    total, chunk = 20 * MB, 256 * 1024
    first_bytes = asyncio.Event()
    progress = {"sent": 0}

    async def big(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        block = bytes(range(256)) * (chunk // 256)
        while progress["sent"] < total:
            writer.write(block)
            progress["sent"] += chunk
            await writer.drain()
            if progress["sent"] == 2 * MB:
                async with asyncio.timeout(5):  # the client must see bytes before we send the rest
                    await first_bytes.wait()

    app = Upstream("app", big)
    async with running(app), dataplane(resources(http_listener(), tables=[one_route()], clusters={"c": [app.addr]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        got = hashlib.sha256()
        size = 0

        def on_body(data: bytes) -> None:
            nonlocal size
            size += len(data)
            got.update(data)
            first_bytes.set()

        client.on_body_hook = on_body
        client.send()
        response = asyncio.ensure_future(client.response(timeout=20))
        await wait_for(first_bytes.is_set, what="first response bytes")
        assert progress["sent"] < total  # streamed, not buffered whole
        # Stop reading: the proxy must stop reading the upstream rather than buffer.
        client.writer.transport.pause_reading()
        (proto,) = dp.slots["in"].connections
        await wait_for(lambda: proto.ex is None or (proto.ex.up is not None and not proto.ex.up.transport.is_reading()),
                       what="the proxy to pause the upstream")
        assert proto.transport.get_write_buffer_size() < 2 * MB
        client.writer.transport.resume_reading()
        resp = await response
        assert resp.status == 200 and size == total
        expected = hashlib.sha256()
        block = bytes(range(256)) * (chunk // 256)
        for _ in range(total // chunk):
            expected.update(block)
        assert got.hexdigest() == expected.hexdigest()
        await client.aclose()


async def test_streams_a_large_upload() -> None:
    total = 20 * MB

    async def digest(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
        await respond(writer, 200, b"%d %s" % (len(req.body), hashlib.sha256(req.body).hexdigest().encode()))

    app = Upstream("app", digest)
    app.body_threshold = MB
    async with running(app), dataplane(resources(http_listener(), tables=[one_route()], clusters={"c": [app.addr]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        payload = bytes(range(251)) * (total // 251 + 1)
        payload = payload[:total]
        client.writer.write(b"POST /up HTTP/1.1\r\nhost: svc\r\ncontent-length: %d\r\n\r\n" % total)
        client.writer.write(payload[:2 * MB])
        async with asyncio.timeout(5):  # the upstream sees the body before the client sent it all
            await app.body_event.wait()
        client.writer.write(payload[2 * MB:])
        resp = await client.response(timeout=20)
        assert resp.text == f"{total} {hashlib.sha256(payload).hexdigest()}"
        await client.aclose()


async def test_upload_flow_control_pauses_the_client() -> None:
    upstream_reading = asyncio.Event()
    done = asyncio.Event()

    async def lazy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await upstream_reading.wait()
        received = 0
        while received < 8 * MB:
            received += len(await reader.read(MB))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await done.wait()
        writer.close()

    server = await asyncio.start_server(lazy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with dataplane(resources(http_listener(), tables=[one_route()], clusters={"c": [("127.0.0.1", port)]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        client.writer.write(b"POST /up HTTP/1.1\r\nhost: svc\r\ncontent-length: %d\r\n\r\n" % (8 * MB))
        sender = asyncio.ensure_future(_send_all(client.writer, b"x" * (8 * MB)))
        (proto,) = dp.slots["in"].connections
        await wait_for(lambda: proto.blocks & 1 != 0, what="the proxy to stop reading the client (upstream full)")
        assert proto.ex is not None and proto.ex.up is not None
        assert proto.ex.up.transport.get_write_buffer_size() < 2 * MB
        upstream_reading.set()
        resp = await client.response(timeout=20)
        assert resp.text == "ok"
        await sender
        done.set()
        await client.aclose()
    server.close()


async def _send_all(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def test_http_proxy_absolute_form() -> None:
    reviews = Upstream("reviews")
    async with running(reviews):
        res = resources(
            http_listener("proxy", mode="http_proxy"),
            tables=[table("rt", ("reviews", ("reviews:9080", "reviews.default.svc.cluster.local:9080"), (route("r", "c"),)))],
            clusters={"c": [reviews.addr]},
        )
        async with dataplane(res) as dp, httpx.AsyncClient(proxy=f"http://127.0.0.1:{dp.port_of('proxy')}") as client:
            resp = await client.get("http://reviews:9080/reviews/0?x=1")
            assert (resp.status_code, resp.text) == (200, "reviews GET /reviews/0?x=1")
            assert reviews.requests[-1].headers["host"] == "reviews:9080"
            assert reviews.requests[-1].path == "/reviews/0?x=1"  # origin-form upstream
            resp = await client.get("http://unknown:9080/")
            assert resp.status_code == 502
            assert resp.headers["x-knotwork-response-flags"] == "NR"
            assert "unknown:9080" in resp.text


async def test_connect_tunnel() -> None:
    server, port = await echo_server()
    res = resources(
        http_listener("proxy", mode="http_proxy"),
        tables=[table("rt", ("echo", ("echo:7000",), (route("r", "c-echo"),)))],
        clusters={"c-echo": [("127.0.0.1", port)]},
    )
    async with dataplane(res) as dp:
        reader, writer = await asyncio.open_connection("127.0.0.1", dp.port_of("proxy"))
        writer.write(b"CONNECT echo:7000 HTTP/1.1\r\nhost: echo:7000\r\n\r\nearly;")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        writer.write(b"late")
        writer.write_eof()  # half-close: the echo server answers <eof> and closes
        rest = await asyncio.wait_for(reader.read(), 5)
        assert rest == b"early;late<eof>"
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", dp.port_of("proxy"))
        writer.write(b"CONNECT nowhere:1 HTTP/1.1\r\nhost: nowhere:1\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 5)
        assert reply.startswith(b"HTTP/1.1 502") and b"x-knotwork-response-flags: NR" in reply
        writer.close()
        await wait_for(lambda: not dp.slots["proxy"].connections, what="tunnels to close")
    server.close()


async def test_tcp_passthrough_with_half_close() -> None:
    server, port = await echo_server()
    res = resources(Listener("db", "127.0.0.1", 0, "outbound", protocol="tcp", cluster="c-db"), clusters={"c-db": [("127.0.0.1", port)]})
    async with dataplane(res) as dp:
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", dp.port_of("db"))
            writer.write(b"ping " * 1000)
            writer.write_eof()
            data = await asyncio.wait_for(reader.read(), 5)
            assert data == b"ping " * 1000 + b"<eof>"
            writer.close()
        await wait_for(lambda: not dp.slots["db"].connections, what="relays to close")
    server.close()


async def test_config_swap_keeps_listener_connections_and_balancer() -> None:
    app = Upstream("app")
    async with running(app):
        base = resources(http_listener(), tables=[one_route()], clusters={"c": [app.addr]})
        async with dataplane(base) as dp:
            port = dp.port_of("in")
            balancer = dp.runtime.clusters["c"].balancer
            client = await RawClient.open(port)
            assert (await client.request()).status == 200

            changed = resources(http_listener(), tables=[table("rt", ("vh", ("*",), (_with_header(route("r", "c")),)))],
                                clusters={"c": [app.addr]})
            await dp.apply(dp.build(changed))
            assert dp.port_of("in") == port
            assert dp.runtime.clusters["c"].balancer is balancer  # unchanged cluster: same balancer
            resp = await client.request()  # same downstream connection
            assert resp.status == 200
            assert app.requests[-1].headers["x-version"] == "v2"
            assert app.connections == 1  # the pooled upstream connection survived the swap

            in2 = Listener("in2", "127.0.0.1", 0, "inbound", route_table="rt")
            moved = resources(in2, tables=[one_route()], clusters={"c": [app.addr]})
            await dp.apply(dp.build(moved))
            assert "in" not in dp.slots
            with pytest.raises(ConnectionError):
                await client.request()  # the removed listener closed its idle connection
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
            fresh = await RawClient.open(dp.port_of("in2"))
            assert (await fresh.request()).status == 200
            await fresh.aclose()
            await client.aclose()
            assert dp.status()["min_clusters_since_ready"] == 1


def _with_header(r: Route) -> Route:
    return attrs.evolve(r, request_headers_set={"x-version": "v2"})


async def test_drain_finishes_in_flight_requests() -> None:
    release = asyncio.Event()

    async def slow(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
        await release.wait()
        await respond(writer, 200, b"slow done")

    app = Upstream("app", slow)
    async with running(app), dataplane(resources(http_listener(), tables=[one_route()], clusters={"c": [app.addr]})) as dp:
        port = dp.port_of("in")
        client = await RawClient.open(port)
        client.send()
        await wait_for(lambda: len(app.requests) == 1, what="the request to reach the app")
        drain = asyncio.ensure_future(dp.drain(5.0))

        async def refused() -> bool:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return True
            w.close()
            return False

        for _ in range(500):
            if await refused():
                break
            await asyncio.sleep(0.002)
        assert await refused()
        assert not drain.done()
        release.set()
        resp = await client.response()
        assert (resp.status, resp.text, resp.headers.get("connection")) == (200, "slow done", "close")
        async with asyncio.timeout(2):
            await drain
        await client.aclose()


async def test_admin_endpoints() -> None:
    app = Upstream("app")
    async with running(app):
        dp = DataPlane(make_ctx(), node_id="n1")
        async with AdminServer(0, dp, extra=lambda: {"control_plane": "connected"}) as admin:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin.port}") as client:
                assert (await client.get("/ready")).status_code == 503
                await dp.apply(dp.build(resources(http_listener(), tables=[one_route()], clusters={"c": [app.addr]})))
                ready = await client.get("/ready")
                assert (ready.status_code, ready.text.strip()) == (200, "LIVE")
                status = (await client.get("/status")).json()
                assert status["ready"] is True and status["clusters"] == 1 and status["min_clusters_since_ready"] == 1
                assert status["control_plane"] == "connected"
                assert status["listeners"][0]["port"] == dp.port_of("in") != 0
                assert status["endpoints"]["c"] == {"total": 1, "healthy": 1, "requests": 0}
                dump = (await client.get("/config_dump")).json()
                assert dump["listeners"]["in"]["mode"] == "inbound"
                assert dump["routes"]["rt"]["virtual_hosts"][0]["domains"] == ["*"]
                proxy = await RawClient.open(dp.port_of("in"))
                await proxy.request()
                await proxy.aclose()
                stats = (await client.get("/stats")).text
                assert "downstream_rq_total 1" in stats and "downstream_rq_2xx 1" in stats
                assert (await client.get("/nope")).status_code == 404
        await dp.aclose()


async def test_pipelined_requests_answer_in_order() -> None:
    app = Upstream("app")
    async with running(app), dataplane(resources(http_listener(), tables=[one_route()], clusters={"c": [app.addr]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        client.writer.write(b"".join(b"GET /p%d HTTP/1.1\r\nhost: svc\r\n\r\n" % i for i in range(3)))
        for i in range(3):
            resp = await client.response()
            assert resp.text == f"app GET /p{i}"
        await client.aclose()


async def test_round_robin_state_survives_endpoint_updates() -> None:
    a, b = Upstream("a"), Upstream("b")
    async with running(a, b):
        res = resources(http_listener(), tables=[one_route()], clusters={"c": [a.addr]})
        async with dataplane(res) as dp:
            client = await RawClient.open(dp.port_of("in"))
            assert (await client.request()).text.startswith("a ")
            balancer = dp.runtime.clusters["c"].balancer
            both = resources(http_listener(), tables=[one_route()], clusters={"c": [a.addr, b.addr]})
            await dp.apply(dp.build(both))
            assert dp.runtime.clusters["c"].balancer is balancer
            assert isinstance(balancer, RoundRobin) and len(balancer.endpoints) == 2
            names = {(await client.request()).text.split()[0] for _ in range(4)}
            assert names == {"a", "b"}
            await client.aclose()


async def test_pipelined_body_then_request() -> None:
    async def echo(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
        await respond(writer, 200, b"%s %s %s" % (req.method.encode(), req.url, bytes(req.body)))

    app = Upstream("app", echo)
    async with running(app), dataplane(resources(http_listener(), tables=[one_route()], clusters={"c": [app.addr]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        client.writer.write(
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            b"GET /b HTTP/1.1\r\nhost: svc\r\n\r\n"
        )
        assert (await client.response()).text == "POST /a abc"
        assert (await client.response()).text == "GET /b "
        await client.aclose()


async def test_idle_keepalive_connections_are_closed() -> None:
    app = Upstream("app")
    async with running(app):
        dp = DataPlane(attrs.evolve(make_ctx(), settings=SimpleNamespace(idle_timeout=0.2)), node_id="n")
        await dp.apply(dp.build(resources(http_listener(), tables=[one_route()], clusters={"c": [app.addr]})))
        client = await RawClient.open(dp.port_of("in"))
        assert (await client.request()).status == 200
        assert dp.status()["upstream_cx_idle"] == 1
        assert await client.closed(timeout=3)  # the proxy closed the idle downstream connection
        await wait_for(lambda: dp.status()["upstream_cx_idle"] == 0, what="the pooled connection to close")
        await client.aclose()
        await dp.aclose()


async def test_removed_listener_finishes_its_in_flight_request() -> None:
    release = asyncio.Event()

    async def slow(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
        await release.wait()
        await respond(writer, 200, b"finished")

    app = Upstream("app", slow)
    async with running(app), dataplane(resources(http_listener(), tables=[one_route()], clusters={"c": [app.addr]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        client.send()
        await wait_for(lambda: len(app.requests) == 1, what="the request to reach the app")
        gone = resources(http_listener("other"), tables=[one_route()], clusters={"c": [app.addr]})
        await dp.apply(dp.build(gone))
        assert "in" not in dp.slots
        release.set()
        resp = await client.response()
        assert (resp.status, resp.text, resp.headers["connection"]) == (200, "finished", "close")
        assert await client.closed()
        await client.aclose()


async def test_response_framing_chunked_and_close_delimited() -> None:
    async def framed(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> bool:
        if req.path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
            await writer.drain()
            return False
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil-close")  # ends when the app closes
        await writer.drain()
        return True

    app = Upstream("app", framed)
    async with running(app), dataplane(resources(http_listener(), tables=[one_route()], clusters={"c": [app.addr]})) as dp:
        client = await RawClient.open(dp.port_of("in"))
        resp = await client.request(path="/chunked")
        assert (resp.text, resp.headers["transfer-encoding"]) == ("abcdefg", "chunked")
        resp = await client.request(path="/delimited")
        assert (resp.text, resp.headers["transfer-encoding"]) == ("until-close", "chunked")  # re-framed for keep-alive
        assert (await client.request(path="/chunked")).text == "abcdefg"  # the client connection lives on
        await client.aclose()

        reader, writer = await asyncio.open_connection("127.0.0.1", dp.port_of("in"))
        writer.write(b"GET /chunked HTTP/1.0\r\nhost: svc\r\n\r\n")  # an HTTP/1.0 client cannot take chunks
        raw = await asyncio.wait_for(reader.read(), 5)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert body == b"abcdefg" and b"transfer-encoding" not in head.lower() and b"connection: close" in head.lower()
        writer.close()


async def test_expect_100_continue_is_answered_by_the_proxy() -> None:
    async def echo(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
        await respond(writer, 200, b"%s expect=%s" % (bytes(req.body), req.headers.get("expect", "-").encode()))

    app = Upstream("app", echo)
    async with running(app), dataplane(resources(http_listener(), tables=[one_route()], clusters={"c": [app.addr]})) as dp:
        reader, writer = await asyncio.open_connection("127.0.0.1", dp.port_of("in"))
        writer.write(b"PUT /x HTTP/1.1\r\nhost: svc\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"data")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.readexactly(13), 5) == b"data expect=-"
        writer.close()


async def test_tcp_listener_splits_connections_by_weight() -> None:
    async def named(name: bytes) -> tuple[asyncio.AbstractServer, int]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(name)
            writer.write_eof()
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()[1]

    (a, port_a), (b, port_b) = await named(b"a"), await named(b"b")
    lis = Listener("db", "127.0.0.1", 0, "outbound", protocol="tcp",
                   weighted_clusters=(WeightedCluster("c-a", 80), WeightedCluster("c-b", 20)))
    res = resources(lis, clusters={"c-a": [("127.0.0.1", port_a)], "c-b": [("127.0.0.1", port_b)]})
    counts = {b"a": 0, b"b": 0}
    async with dataplane(res) as dp:
        for _ in range(400):
            reader, writer = await asyncio.open_connection("127.0.0.1", dp.port_of("db"))
            counts[await asyncio.wait_for(reader.read(), 5)] += 1
            writer.close()
    a.close()
    b.close()
    assert 0.72 <= counts[b"a"] / 400 <= 0.88, counts  # 80 % ± 8 points: > 4 standard deviations
