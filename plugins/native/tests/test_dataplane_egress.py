"""Egress on the native data plane: passthrough clusters (the request names its destination,
Istio's PassthroughCluster and ServiceEntry resolution NONE) and dns clusters (endpoint names
resolved when connecting), over plain HTTP and CONNECT."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from knotwork.proxyconfig import Cluster, EndpointSet, LbEndpoint

from knotwork_native.passthrough import split_authority
from test_dataplane_support import (
    Upstream, dataplane, echo_server, http_listener, resources, route, running, table,
)

pytestmark = pytest.mark.anyio

#: A name that fails without asking any DNS server (longer than DNS allows: the resolver
#: refuses it before sending a query), so the test stays on loopback.
UNRESOLVABLE = ".".join(["a" * 60] * 5) + ".invalid"


def with_cluster(res: dict, cluster: Cluster, *endpoints: LbEndpoint) -> dict:
    res["clusters"][cluster.name] = cluster
    res["endpoints"][cluster.name] = EndpointSet(cluster.name, endpoints)
    return res


def proxy_with_passthrough(*vhosts: tuple) -> dict:
    res = resources(http_listener("proxy", mode="http_proxy"), tables=[table(
        "rt", *vhosts, ("allow_any", ("*",), (route("pass", "PassthroughCluster"),)))])
    return with_cluster(res, Cluster("PassthroughCluster", resolution="passthrough"))


def test_split_authority() -> None:
    assert split_authority("example.org") == ("example.org", 80)
    assert split_authority("example.org:8080") == ("example.org", 8080)
    assert split_authority("[::1]:9000") == ("::1", 9000)
    assert split_authority("[::1]") == ("::1", 80)
    for bad in ("", ":80", "host:x", "host:0", "host:70000", "[::1", "a:b:c"):
        assert split_authority(bad) is None, bad


async def test_passthrough_sends_each_request_where_its_authority_points() -> None:
    one, two = Upstream("one"), Upstream("two")
    async with running(one, two), dataplane(proxy_with_passthrough()) as dp:
        proxy = f"http://127.0.0.1:{dp.port_of('proxy')}"
        async with httpx.AsyncClient(proxy=proxy) as client:
            for up in (one, two, one):
                host, port = up.addr
                resp = await client.get(f"http://{host}:{port}/p?q=1")
                assert (resp.status_code, resp.text) == (200, "one GET /p?q=1" if up is one else "two GET /p?q=1")
            resp = await client.get(f"http://localhost:{two.addr[1]}/named")  # names are resolved
            assert resp.text == "two GET /named"
            assert two.requests[-1].headers["host"] == f"localhost:{two.addr[1]}"  # host kept as the app sent it
            free = await _closed_port()
            resp = await client.get(f"http://127.0.0.1:{free}/")
            assert resp.status_code == 503 and resp.headers["x-knotwork-response-flags"] in ("UF", "URX,UF")
            assert f"127.0.0.1:{free}" in resp.text
            resp = await client.get(f"http://{UNRESOLVABLE}/")
            # as Envoy's dynamic forward proxy: a name that does not resolve is DF
            assert (resp.status_code, resp.headers["x-knotwork-response-flags"]) in ((503, "DF"), (503, "URX,DF"))
            assert f"{UNRESOLVABLE}:80: name resolution failed" in resp.text


async def test_known_hosts_keep_their_route_next_to_passthrough() -> None:
    known, other = Upstream("known"), Upstream("other")
    async with running(known, other):
        res = with_cluster(proxy_with_passthrough(("known", ("known.example:80", "known.example"),
                                                   (route("k", "c-known"),))),
                           Cluster("c-known"), LbEndpoint(*known.addr))
        async with dataplane(res) as dp, httpx.AsyncClient(proxy=f"http://127.0.0.1:{dp.port_of('proxy')}") as client:
            assert (await client.get("http://known.example/a")).text == "known GET /a"
            host, port = other.addr
            assert (await client.get(f"http://{host}:{port}/b")).text == "other GET /b"


async def test_connect_through_passthrough_and_registry_only() -> None:
    server, port = await echo_server()
    async with dataplane(proxy_with_passthrough()) as dp:
        reader, writer = await asyncio.open_connection("127.0.0.1", dp.port_of("proxy"))
        writer.write(b"CONNECT localhost:%d HTTP/1.1\r\nhost: localhost:%d\r\n\r\nhi;" % (port, port))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"hi;<eof>"
        writer.close()
    registry_only = resources(http_listener("proxy", mode="http_proxy"), tables=[table("rt", ("x", ("x",), (route("r", "c"),)))],
                              clusters={"c": []})
    async with dataplane(registry_only) as dp:
        reader, writer = await asyncio.open_connection("127.0.0.1", dp.port_of("proxy"))
        writer.write(b"CONNECT localhost:%d HTTP/1.1\r\nhost: localhost:%d\r\n\r\n" % (port, port))
        reply = await asyncio.wait_for(reader.read(), 5)
        assert reply.startswith(b"HTTP/1.1 502") and b"x-knotwork-response-flags: NR" in reply
        writer.close()
    server.close()


async def test_dns_cluster_resolves_endpoint_names() -> None:
    app = Upstream("app")
    async with running(app):
        res = resources(http_listener("proxy", mode="http_proxy"),
                        tables=[table("rt", ("ext", ("api.example.com",), (route("r", "c-dns"),)))])
        with_cluster(res, Cluster("c-dns", resolution="dns"), LbEndpoint("localhost", app.addr[1]))
        async with dataplane(res) as dp, httpx.AsyncClient(proxy=f"http://127.0.0.1:{dp.port_of('proxy')}") as client:
            resp = await client.get("http://api.example.com/x")
            assert (resp.status_code, resp.text) == (200, "app GET /x")
            assert app.requests[-1].headers["host"] == "api.example.com"


async def test_unknown_resolution_is_refused() -> None:
    res = with_cluster(resources(), Cluster("odd", resolution="magic"))
    with pytest.raises(ValueError, match="cluster 'odd': resolution 'magic' is not one of"):
        async with dataplane(res):
            pass


async def _closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port

