"""The envoy engine end to end on loopback: the xDS server with a handcrafted
snapshot, the agent running a real Envoy, real upstreams and real traffic."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import time

import pytest
from knotwork.distribution import SnapshotCache
from knotwork.proxyconfig import Cluster, EndpointSet, LbEndpoint, Listener, RetryPolicy, RouteMatch

from envoy_helpers import (
    NODE,
    KeepAlive,
    ServerHandle,
    Upstream,
    clusters,
    envoy_proxy,
    free_port,
    get,
    http_listener,
    read_response,
    route,
    running,
    snapshot,
    table,
    tcp_echo,
    wait_for,
    xds_server,
)
from knotwork_envoy.httpio import request

pytestmark = pytest.mark.anyio


def publish(cache: SnapshotCache, *resources, node: str = NODE) -> None:
    cache.set(node, snapshot(*resources))
    cache.notify()


async def test_routes_by_host_and_round_robin_is_exact() -> None:
    ups = [Upstream(f"reviews-v{i}") for i in (1, 2, 3)]
    ratings = Upstream("ratings")
    cache, port = SnapshotCache(), free_port()
    async with running(*ups, ratings):
        publish(cache, http_listener("in", port, "rt"),
                table("rt", ("reviews", ("reviews", "reviews:9080"), (route("r", "c-reviews"),)),
                            ("ratings", ("ratings:9080",), (route("r", "c-ratings"),))),
                *clusters({"c-reviews": [u.addr for u in ups], "c-ratings": [ratings.addr]}))
        async with xds_server(cache) as server, envoy_proxy(server.address):
            client = await KeepAlive.open(port)
            seen = []
            for i in range(30):
                resp = await client.get(f"/r/{i}?q=1", host="reviews:9080")
                assert resp.status == 200
                seen.append(resp.text.split()[0])
            assert {name: seen.count(name) for name in set(seen)} == {"reviews-v1": 10, "reviews-v2": 10, "reviews-v3": 10}
            assert len(set(zip(seen, seen[1:], seen[2:]))) == 3  # a strict rotation
            resp = await client.get("/x", host="ratings:9080")
            assert resp.text == "ratings GET /x"
            assert resp.headers["server"] == "knotwork"
            assert ratings.requests[0][2]["x-forwarded-for"]  # the host's address: Envoy never writes loopback
            await client.aclose()
            assert sum(u.connections for u in ups) == 3  # upstream keep-alive


async def test_tcp_passthrough() -> None:
    echo, echo_port = await tcp_echo()
    cache, port = SnapshotCache(), free_port()
    publish(cache, Listener(name="outbound|tcp|db|5432", address="127.0.0.1", port=port, mode="outbound", protocol="tcp",
                            cluster="db"), *clusters({"db": [("127.0.0.1", echo_port)]}))
    async with xds_server(cache) as server, envoy_proxy(server.address):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.readline(), 5) == b"hello\n"
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(9), 5) == b"echo:ping"
        writer.close()
    echo.close()


async def test_http_proxy_absolute_form_and_connect() -> None:
    reviews = Upstream("reviews")
    cache, port, inbound = SnapshotCache(), free_port(), free_port()
    async with running(reviews):
        publish(cache, http_listener("http_proxy", port, "outbound", mode="http_proxy"),
                table("outbound", ("reviews:9080", ("reviews", "reviews:9080"), (route("default", "c"),))),
                http_listener("inbound|9080", inbound, "inbound|9080"),
                table("inbound|9080", ("inbound|9080", ("*",), (route("default", "c"),))),
                *clusters({"c": [reviews.addr]}))
        async with xds_server(cache) as server, envoy_proxy(server.address):
            resp = await get(port, "http://reviews:9080/reviews/0?x=1", host="reviews:9080")
            assert (resp.status, resp.text) == (200, "reviews GET /reviews/0?x=1")
            assert reviews.requests[-1][2]["host"] == "reviews:9080"

            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"CONNECT reviews:9080 HTTP/1.1\r\nhost: reviews:9080\r\n\r\n")
            established = await asyncio.wait_for(read_response(reader, head_only=True), 5)
            assert established.status == 200
            writer.write(b"GET /in-tunnel HTTP/1.1\r\nhost: reviews\r\n\r\n")
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert (resp.status, resp.text) == (200, "reviews GET /in-tunnel")
            assert "x-forwarded-for" not in reviews.requests[-1][2]  # bytes through the tunnel, untouched
            writer.close()

            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"CONNECT nowhere:80 HTTP/1.1\r\nhost: nowhere:80\r\n\r\n")
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert (resp.status, resp.headers["x-knotwork-response-flags"]) == (502, "NR")
            assert resp.text == "no route to host nowhere:80 (listener http_proxy, route table outbound)\n"
            writer.close()

            reader, writer = await asyncio.open_connection("127.0.0.1", inbound)
            writer.write(b"CONNECT reviews:9080 HTTP/1.1\r\nhost: reviews:9080\r\n\r\n")
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert (resp.status, resp.text) == (405, "CONNECT is served only by http_proxy listeners, not by listener inbound|9080\n")
            assert "x-knotwork-response-flags" not in resp.headers
            writer.close()


async def test_proxy_generated_errors_match_the_native_engine() -> None:
    async def hang(up, method, path, headers, writer) -> None:
        await asyncio.sleep(30)

    slow = Upstream("slow", hang)
    dead = free_port()  # nothing listens there
    cache, port, pport = SnapshotCache(), free_port(), free_port()
    async with running(slow):
        rt = table("rt",
                   ("dead", ("dead",), (route("d", "dead"),)),
                   ("once", ("once",), (route("o", "dead", retry=RetryPolicy(attempts=0)),)),
                   ("sick", ("sick",), (route("s", "sick"),)),
                   ("slow", ("slow",), (route("t", "slow", timeout=0.2),)),
                   ("api", ("api",), (route("a", "slow", match=RouteMatch(prefix="/api")),)))
        publish(cache, http_listener("in", port, "rt"), http_listener("http_proxy", pport, "rt", mode="http_proxy"), rt,
                *clusters({"dead": [("127.0.0.1", dead)], "sick": [LbEndpoint("127.0.0.1", dead, healthy=False)],
                           "slow": [slow.addr]}))
        async with xds_server(cache) as server, envoy_proxy(server.address):
            cases = {
                ("api", "/other?x=1", port): (404, "NR", "no route for api/other?x=1 (listener in, route table rt)"),
                ("nowhere", "http://nowhere/", pport): (502, "NR", "no route to host nowhere (listener http_proxy, route table rt)"),
                ("sick", "/", port): (503, "UH", "no healthy upstream for cluster sick"),
                ("once", "/", port): (503, "UF", f"upstream connect error to cluster dead endpoint 127.0.0.1:{dead}: "),
                ("dead", "/", port): (503, "URX,UF", f"upstream connect error to cluster dead endpoint 127.0.0.1:{dead}: "),
                ("slow", "/", port): (504, "UT", f"upstream request timeout (0.2s) waiting for cluster slow endpoint 127.0.0.1:{slow.port}"),
            }
            for (host, path, listener_port), (status, flags, body) in cases.items():
                resp = await get(listener_port, path, host=host)
                assert (resp.status, resp.headers.get("x-knotwork-response-flags")) == (status, flags), (host, resp)
                assert resp.text.startswith(body), (host, resp.text)
                assert resp.text.endswith("\n") and resp.headers["content-type"] == "text/plain"
                assert resp.headers["server"] == "knotwork"
                if flags.endswith("UF"):
                    assert "connection_refused" in resp.text.lower(), resp.text  # Envoy's wording of the reason


async def test_endpoint_change_is_served_within_milliseconds() -> None:
    a, b = Upstream("a"), Upstream("b")
    cache, port = SnapshotCache(), free_port()
    async with running(a, b):
        base = [http_listener("in", port, "rt"), table("rt", ("any", ("*",), (route("r", "c"),))), Cluster(name="c")]
        publish(cache, *base, EndpointSet(name="c", endpoints=(LbEndpoint(*a.addr),)))
        async with xds_server(cache) as server, envoy_proxy(server.address):
            client = await KeepAlive.open(port)
            assert (await client.get()).text.startswith("a ")
            times = []
            for i in range(12):
                target = b if i % 2 == 0 else a
                started = time.perf_counter()
                publish(cache, *base, EndpointSet(name="c", endpoints=(LbEndpoint(*target.addr),)))
                while not (await client.get()).text.startswith(f"{target.name} "):
                    assert time.perf_counter() - started < 2, "endpoint change not served within 2 s"
                times.append(time.perf_counter() - started)
            await client.aclose()
    median = statistics.median(times)
    print(f"\nendpoint push -> first response from the new endpoint: median {median * 1000:.1f} ms, "
          f"min {min(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms (n={len(times)})")
    assert median < 0.25


async def test_changed_cluster_does_not_warm_for_15_seconds() -> None:
    """Envoy re-requests the endpoints of a re-sent cluster with its last ACKed version and
    nonce; a server that takes that for an ACK leaves the cluster warming for 15 s."""
    a, b = Upstream("a"), Upstream("b")
    cache, port = SnapshotCache(), free_port()
    async with running(a, b):
        base = [http_listener("in", port, "rt"), table("rt", ("any", ("*",), (route("r", "c"),)))]
        publish(cache, *base, Cluster(name="c", connect_timeout=1), EndpointSet(name="c", endpoints=(LbEndpoint(*a.addr),)))
        async with xds_server(cache) as server, envoy_proxy(server.address) as proxy:
            for timeout, up in ((2.0, a), (3.0, b), (4.0, b)):  # cluster only; cluster and endpoints; cluster only
                started = time.perf_counter()
                publish(cache, *base, Cluster(name="c", connect_timeout=timeout), EndpointSet(name="c", endpoints=(LbEndpoint(*up.addr),)))

                async def warmed(timeout: float = timeout) -> bool:
                    status, body = await proxy.agent.admin("GET", "/config_dump?resource=dynamic_active_clusters")
                    active = [c["cluster"] for c in json.loads(body)["configs"]]
                    stats = await proxy.agent.sample()
                    return any(c["connect_timeout"] == f"{timeout:g}s" for c in active) and stats["cluster_manager.warming_clusters"] == 0

                await wait_for(warmed, 3, f"the cluster with connect_timeout {timeout}s to be active")
                assert time.perf_counter() - started < 3
                assert (await get(port)).text.startswith(f"{up.name} ")
            # a changed cluster and a new one at once: Envoy asks for the new endpoints with a stale
            # nonce (ignored), then names them again in its ACK of the re-sent endpoints
            publish(cache, http_listener("in", port, "rt"), table("rt", ("any", ("*",), (route("r", "c2"),))),
                    Cluster(name="c", connect_timeout=5), EndpointSet(name="c", endpoints=(LbEndpoint(*b.addr),)),
                    *clusters({"c2": [a.addr]}))

            async def served_by_c2() -> bool:
                return (await get(port)).text.startswith("a ")

            await wait_for(served_by_c2, 3, "the new cluster to serve", interval=0.02)
            status = cache.status[NODE]
            assert status.acked == status.sent and not status.nacked


async def test_nack_keeps_the_last_good_config() -> None:
    app = Upstream("app")
    cache, port = SnapshotCache(), free_port()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    async with running(app):
        good = [http_listener("in", port, "rt"), table("rt", ("any", ("*",), (route("r", "c"),))), *clusters({"c": [app.addr]})]
        publish(cache, *good)
        async with xds_server(cache) as server, envoy_proxy(server.address):
            status = cache.status[NODE]
            good_listeners = status.acked["listeners"]
            # a listener on a port in use
            publish(cache, *good, http_listener("extra", busy_port, "rt"))
            await wait_for(lambda: status.nacked.get("listeners"), 5, "a NACK of the listeners")
            assert "extra" in status.nacked["listeners"] and str(busy_port) in status.nacked["listeners"]
            assert status.acked["listeners"] == good_listeners != status.sent["listeners"]
            assert (await get(port)).text == "app GET /"
            # a regular expression RE2 refuses (Python's `re` takes it)
            bad = table("rt", ("any", ("*",), (route("look", "c", match=RouteMatch(prefix=None, regex="/(?=x).*")),
                                               route("r", "c"))))
            good_routes = status.acked["routes"]
            publish(cache, *good[:1], bad, *good[2:])
            await wait_for(lambda: status.nacked.get("routes"), 5, "a NACK of the routes")
            assert "(?=" in status.nacked["routes"]  # RE2: "invalid perl operator: (?="
            assert status.acked["routes"] == good_routes
            assert (await get(port, "/x")).text == "app GET /x"
            # a good config again: accepted, the NACKs are gone
            publish(cache, *good, Listener(name="more", address="127.0.0.1", port=free_port(), mode="inbound", route_table="rt"))
            await wait_for(lambda: not status.nacked and status.acked == status.sent, 5, "the fixed config to be ACKed")
    busy.close()


async def test_envoy_restarted_after_a_crash_gets_the_whole_config() -> None:
    app = Upstream("app")
    cache, port = SnapshotCache(), free_port()
    async with running(app):
        publish(cache, http_listener("in", port, "rt"), table("rt", ("any", ("*",), (route("r", "c"),))), *clusters({"c": [app.addr]}))
        async with xds_server(cache) as server, envoy_proxy(server.address) as proxy:
            first = proxy.agent.proc.pid
            os.kill(first, signal.SIGKILL)
            await wait_for(lambda: proxy.agent.starts == 2 and proxy.agent.ready, 10, "a restarted, ready Envoy")
            assert proxy.agent.proc.pid != first
            assert (await get(port)).text == "app GET /"
            status = proxy.status()
            assert status["envoy"]["restarts"] == 1 and status["clusters"] == 1
            await wait_for(lambda: cache.connected[NODE] == 1, 5, "one stream from the node")


async def test_envoy_keeps_serving_while_the_control_plane_is_away() -> None:
    a, b = Upstream("a"), Upstream("b")
    cache, port = SnapshotCache(), free_port()
    async with running(a, b):
        base = [http_listener("in", port, "rt"), table("rt", ("any", ("*",), (route("r", "c"),))), Cluster(name="c")]
        publish(cache, *base, EndpointSet(name="c", endpoints=(LbEndpoint(*a.addr),)))
        handle = ServerHandle(cache)
        server = await handle.start()
        async with envoy_proxy(server.address) as proxy:
            await handle.stop()

            async def disconnected() -> bool:
                await proxy.agent.sample()
                return not proxy.status()["control_connected"]

            await wait_for(disconnected, 5, "envoy to notice the control plane is gone")
            for _ in range(5):
                assert (await get(port)).text == "a GET /"
            assert proxy.agent.ready
            # the control plane comes back on the same address with a newer config
            publish(cache, *base, EndpointSet(name="c", endpoints=(LbEndpoint(*b.addr),)))
            await handle.start()

            async def served_by_b() -> bool:
                return (await get(port)).text == "b GET /"

            await wait_for(served_by_b, 10, "the reconnected Envoy to serve the new endpoint", interval=0.05)
            await proxy.agent.sample()
            assert proxy.status()["control_connected"] and proxy.status()["min_clusters_since_ready"] == 1
            await handle.stop()


async def test_admin_endpoint() -> None:
    app = Upstream("app")
    cache, port = SnapshotCache(), free_port()
    async with running(app):
        publish(cache, http_listener("in", port, "rt"), table("rt", ("any", ("*",), (route("r", "c"),))), *clusters({"c": [app.addr]}))
        async with xds_server(cache) as server, envoy_proxy(server.address, ready=False) as proxy:
            admin = proxy.admin.port
            await wait_for(lambda: proxy.agent.ready, 15, "envoy ready")
            assert await request(admin, "GET", "/ready") == (200, b"LIVE\n")
            status, body = await request(admin, "GET", "/status")
            info = json.loads(body)
            assert status == 200
            assert {k: info[k] for k in ("ready", "clusters", "min_clusters_since_ready", "node", "control_connected", "listeners")} == {
                "ready": True, "clusters": 1, "min_clusters_since_ready": 1, "node": NODE, "control_connected": True, "listeners": 1}
            status, body = await request(admin, "GET", "/config_dump")
            dump = json.loads(body)
            listeners = next(c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump"))
            assert listeners["dynamic_listeners"][0]["name"] == "in"
            status, body = await request(admin, "GET", "/stats?filter=^cluster_manager.active_clusters$")
            assert (status, body) == (200, b"cluster_manager.active_clusters: 3\n")  # + knotwork_xds, knotwork_traces
            assert (await request(admin, "GET", "/nope"))[0] == 404
            assert (await request(admin, "GET", "/drain"))[0] == 405
            assert await request(admin, "POST", "/drain") == (202, b"draining\n")
            await wait_for(lambda: proxy.agent.draining, 2, "the drain to start")
            assert json.loads((await request(admin, "GET", "/status"))[1])["draining"] is True


async def test_stop_drains_in_flight_requests() -> None:
    release = asyncio.Event()

    async def slow(up, method, path, headers, writer) -> None:
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")

    app = Upstream("app", slow)
    cache, port = SnapshotCache(), free_port()
    async with running(app):
        publish(cache, http_listener("in", port, "rt"), table("rt", ("any", ("*",), (route("r", "c"),))), *clusters({"c": [app.addr]}))
        async with xds_server(cache) as server:
            async with envoy_proxy(server.address, drain_timeout=3) as proxy:
                pending = asyncio.ensure_future(get(port, timeout=10))
                await wait_for(lambda: app.requests, 5, "the request to reach the app")
                envoy = proxy.agent.proc
                asyncio.get_running_loop().call_later(0.4, release.set)
                stopping = time.perf_counter()
            waited = time.perf_counter() - stopping
            resp = await pending
            assert (resp.status, resp.text, resp.headers.get("connection")) == (200, "done", "close")
            assert 0.3 < waited < 3, waited
            assert envoy.returncode is not None


async def test_knotwork_proxy_command_runs_envoy_that_dies_with_it() -> None:
    import sys

    app = Upstream("app")
    cache, port = SnapshotCache(), free_port()
    async with running(app):
        publish(cache, http_listener("in", port, "rt"), table("rt", ("any", ("*",), (route("r", "c"),))), *clusters({"c": [app.addr]}))
        async with xds_server(cache) as server:
            for stop in (signal.SIGTERM, signal.SIGKILL):
                admin = free_port()
                agent = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "knotwork", "proxy", "--engine", "envoy", "--node", NODE,
                    "--control", f"127.0.0.1:{server.address[1]}", "--admin-port", str(admin), "--drain-timeout", "1",
                    stderr=asyncio.subprocess.DEVNULL, start_new_session=True)

                async def ready() -> bool:
                    try:
                        return (await request(admin, "GET", "/ready", timeout=1))[0] == 200
                    except OSError:
                        return False

                await wait_for(ready, 20, "the agent's /ready", interval=0.05)
                assert (await get(port)).text == "app GET /"
                envoy_pid = json.loads((await request(admin, "GET", "/status"))[1])["envoy"]["pid"]
                agent.send_signal(stop)
                async with asyncio.timeout(5):
                    code = await agent.wait()
                assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL)

                def gone() -> bool:
                    try:
                        os.kill(envoy_pid, 0)
                    except ProcessLookupError:
                        return True
                    with open(f"/proc/{envoy_pid}/stat") as f:  # a zombie not yet reaped by init is gone too
                        return f.read().split(") ", 1)[1].startswith("Z")

                await wait_for(gone, 3, f"envoy to die with its agent ({stop.name})")


async def test_fault_headers_mirror_and_cors_behave_as_on_the_native_engine() -> None:
    import attrs
    from knotwork.proxyconfig import CorsPolicy, FaultPolicy, MirrorPolicy, StringMatch

    app, shadow = Upstream("app"), Upstream("shadow")
    cache, port = SnapshotCache(), free_port()
    async with running(app, shadow):
        abort = attrs.evolve(route("abort", "app", match=RouteMatch(prefix="/abort")), fault=FaultPolicy(abort_status=503))
        delay = attrs.evolve(route("delay", "app", match=RouteMatch(prefix="/delay")), fault=FaultPolicy(delay=0.3),
                             request_headers_set={"x-set": "new"}, request_headers_remove=("x-secret",),
                             response_headers_set={"x-resp": "yes"}, response_headers_remove=("x-drop",))
        rest = attrs.evolve(route("rest", "app"), mirror=(MirrorPolicy("shadow"),),
                            cors=CorsPolicy(allow_origins=(StringMatch(exact="https://a.example"),), allow_methods=("GET", "POST"),
                                            max_age=60, expose_headers=("x-e",)))
        publish(cache, http_listener("in", port, "rt"), table("rt", ("svc", ("svc",), (abort, delay, rest))),
                *clusters({"app": [app.addr], "shadow": [shadow.addr]}))
        async with xds_server(cache) as server, envoy_proxy(server.address):
            resp = await get(port, "/abort", host="svc")
            assert (resp.status, resp.headers.get("x-knotwork-response-flags"), resp.text) == (503, "FI", "fault filter abort\n")
            assert app.requests == []
            t0 = time.monotonic()
            resp = await get(port, "/delay", host="svc", headers={"x-set": "old", "x-secret": "s"})
            assert resp.status == 200 and time.monotonic() - t0 >= 0.29
            assert resp.headers["x-resp"] == "yes" and "x-knotwork-response-flags" not in resp.headers
            (_, _, seen), = app.requests
            assert seen["x-set"] == "new" and "x-secret" not in seen
            resp = await get(port, "/m", host="svc:80", headers={"origin": "https://a.example"})
            assert resp.status == 200 and resp.headers["access-control-allow-origin"] == "https://a.example"
            assert resp.headers["access-control-expose-headers"] == "x-e"
            await wait_for(lambda: shadow.requests, 5, "the mirrored request")
            assert shadow.requests[0][2]["host"] == "svc-shadow:80"
            resp = await get(port, "/m", host="svc", method="OPTIONS",
                             headers={"origin": "https://a.example", "access-control-request-method": "POST"})
            assert resp.status == 200 and resp.headers["access-control-allow-methods"] == "GET,POST"
            assert resp.headers["access-control-max-age"] == "60"
            assert [r[1] for r in app.requests] == ["/delay", "/m"]  # the preflight was answered by Envoy
