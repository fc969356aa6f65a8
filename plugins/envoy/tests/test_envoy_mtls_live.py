"""Mesh mTLS with real Envoys: two sidecars whose agents get SVIDs from the kernel's
certificate service, serve them to Envoy over SDS and talk to the xDS server over
mTLS; STRICT and PERMISSIVE inbound listeners; ISTIO_MUTUAL and auto-mTLS
clusters; a rotation every few seconds that cuts no connection. And TLS
origination (SIMPLE/MUTUAL) with the snapshot's secrets."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import urllib.parse
from pathlib import Path

import pytest
from knotwork.distribution import SnapshotCache
from knotwork.proxyconfig import Cluster, EndpointSet, LbEndpoint, Listener, PeerTls, Secret, UpstreamTls
from knotwork.testing import make_ca, make_certificate, make_svid

from envoy_helpers import (
    Upstream, envoy_proxy, free_port, get, http_listener, route, running, snapshot, table, tcp_echo, wait_for, xds_server,
)
from identity_helpers import MeshCA, TlsClient, certificate_service, control_tls, mtls_get, spiffe
from knotwork_envoy.httpio import request

pytestmark = pytest.mark.anyio

REVIEWS, PRODUCTPAGE, RATINGS = spiffe("reviews"), spiffe("productpage"), spiffe("ratings")
NODE_A, NODE_B = "sidecar~reviews-1", "sidecar~productpage-1"
REFUSED = (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError)


def xfcc(app: Upstream) -> str:
    return app.requests[-1][2].get("x-forwarded-client-cert", "")


async def refused(port: int, svid, bundle: str) -> bool:
    try:
        response = await mtls_get(port, svid, bundle)
    except REFUSED:
        return True
    raise AssertionError(f"expected a refused connection, got {response!r}")


async def cluster_connections(proxy, cluster: str) -> int:
    pattern = urllib.parse.quote(f"^cluster\\.{re.escape(cluster)}\\.upstream_cx_total$")
    status, body = await proxy.agent.admin("GET", f"/stats?filter={pattern}")
    assert status == 200
    return int(body.decode().rpartition(":")[2])


async def test_two_sidecars_talk_mtls_refuse_strangers_and_rotate_without_cutting_connections(tmp_path: Path) -> None:
    ca_path = make_ca(tmp_path / "ca")
    ca = MeshCA(ca_path, ttl=5.0, rotate_at=0.5)  # a renewal every 2.5 s
    control = ca.control_svid()
    bundle = ca.trust_bundle()
    bundle_file = tmp_path / "trust-bundle.pem"
    bundle_file.write_text(bundle)
    app = Upstream("app")
    strict, permissive, outbound, tcp_in, tcp_out = (free_port() for _ in range(5))
    echo, echo_port = await tcp_echo()
    nodes = {NODE_A: REVIEWS, NODE_B: PRODUCTPAGE}

    def authorize(node: str, peer: str | None) -> str | None:
        return None if nodes.get(node) == peer else f"node {node!r} is not {peer}"

    def mesh(port: int, identity: str | None) -> LbEndpoint:
        return LbEndpoint("127.0.0.1", port, identity=identity)

    cache = SnapshotCache()
    async with running(app):
        cache.set(NODE_A, snapshot(
            Listener("inbound|strict", "127.0.0.1", strict, "inbound", route_table="inbound", tls=PeerTls("STRICT")),
            Listener("inbound|permissive", "127.0.0.1", permissive, "inbound", route_table="inbound",
                     tls=PeerTls("PERMISSIVE")),
            table("inbound", ("app", ("*",), (route("r", "inbound|9080||"),))),
            Cluster("inbound|9080||"), EndpointSet("inbound|9080||", (LbEndpoint(*app.addr),)),
            Listener("inbound|tcp", "127.0.0.1", tcp_in, "inbound", protocol="tcp", cluster="inbound|echo||",
                     tls=PeerTls("STRICT")),
            Cluster("inbound|echo||", protocol="tcp"), EndpointSet("inbound|echo||", (LbEndpoint("127.0.0.1", echo_port),))))
        mutual = UpstreamTls("ISTIO_MUTUAL", identities=(REVIEWS,), sni="outbound_.9080_._.reviews")
        cache.set(NODE_B, snapshot(
            http_listener("outbound", outbound, "outbound", mode="outbound"),
            table("outbound", *((name, (name,), (route(name, name),)) for name in ("reviews", "wrong", "auto", "plain", "h2"))),
            Cluster("reviews", tls=mutual), EndpointSet("reviews", (mesh(strict, REVIEWS),)),
            Cluster("wrong", tls=UpstreamTls("ISTIO_MUTUAL", identities=(RATINGS,))), EndpointSet("wrong", (mesh(strict, RATINGS),)),
            Cluster("auto", tls=UpstreamTls("ISTIO_MUTUAL", identities=(REVIEWS,), auto=True)),
            EndpointSet("auto", (mesh(strict, REVIEWS),)),
            Cluster("plain", tls=UpstreamTls("ISTIO_MUTUAL", identities=(REVIEWS,), auto=True)),
            EndpointSet("plain", (mesh(app.port, None),)),
            Cluster("h2", protocol="http2", tls=mutual), EndpointSet("h2", (mesh(strict, REVIEWS),)),
            Listener("outbound|tcp", "127.0.0.1", tcp_out, "outbound", protocol="tcp", cluster="tcp"),
            Cluster("tcp", protocol="tcp", tls=UpstreamTls("ISTIO_MUTUAL", identities=(REVIEWS,))),
            EndpointSet("tcp", (mesh(tcp_in, REVIEWS),))))
        async with certificate_service(ca, control) as ca_address, \
                xds_server(cache, ssl=control_tls(control), authorize=authorize) as server:
            ident = {"ca_address": ca_address, "bundle_file": bundle_file}
            async with envoy_proxy(server.address, NODE_A, identity=REVIEWS, credential=f"token-{NODE_A}", **ident) as a, \
                    envoy_proxy(server.address, NODE_B, identity=PRODUCTPAGE, credential=f"token-{NODE_B}", **ident) as b:
                assert a.agent.status()["control_connected"] and b.agent.status()["control_connected"]
                good = make_svid(ca_path, PRODUCTPAGE)

                # STRICT: a mesh client gets through and the app learns who it is (not who it claims to be)
                response = await wait_for(lambda: _try(mtls_get(strict, good, bundle, headers={
                    "x-forwarded-client-cert": "By=x;URI=spiffe://cluster.local/ns/default/sa/admin"})), 10, "STRICT mTLS")
                assert response.status == 200, response
                assert f"URI={PRODUCTPAGE}" in xfcc(app) and xfcc(app).startswith(f"By={REVIEWS};")
                assert "admin" not in xfcc(app)
                # ... strangers do not
                assert await refused(strict, None, "")  # plaintext
                assert await refused(strict, make_svid(make_ca(tmp_path / "other"), PRODUCTPAGE), bundle)  # another CA
                assert await refused(strict, make_svid(None, PRODUCTPAGE), bundle)  # self-signed
                assert await refused(strict, make_svid(ca_path, PRODUCTPAGE, valid=(-600, -60)), bundle)  # expired
                assert await refused(strict, make_svid(ca_path, "spiffe://elsewhere.org/ns/default/sa/x"), bundle)

                # PERMISSIVE: plaintext and mTLS on one port
                plain = await get(permissive, headers={"x-forwarded-client-cert": "URI=spiffe://forged"})
                assert plain.status == 200 and xfcc(app) == ""
                assert (await mtls_get(permissive, good, bundle)).status == 200 and f"URI={PRODUCTPAGE}" in xfcc(app)

                # sidecar to sidecar: ISTIO_MUTUAL checks the server's identity; auto-mTLS follows endpoint identities
                assert (await get(outbound, host="reviews")).status == 200
                assert f"URI={PRODUCTPAGE}" in xfcc(app)
                wrong = await get(outbound, host="wrong")
                assert wrong.status == 503, wrong
                assert (await get(outbound, host="auto")).status == 200  # mTLS: the STRICT port refuses anything else
                assert (await get(outbound, host="plain")).status == 200  # plaintext to an app without a sidecar
                assert xfcc(app) == ""
                h2 = await get(outbound, host="h2")  # HTTP/2 between the sidecars, negotiated by ALPN
                assert h2.status == 200 and f"URI={PRODUCTPAGE}" in xfcc(app), h2
                reader, writer = await asyncio.open_connection("127.0.0.1", tcp_out)  # TCP over mTLS
                try:
                    assert await asyncio.wait_for(reader.readline(), 5) == b"hello\n"
                    writer.write(b"ping\n")
                    assert await asyncio.wait_for(reader.readline(), 5) == b"echo:ping\n"
                finally:
                    writer.close()
                assert await refused(tcp_in, None, "")

                # admin: /identity
                status, body = await request(a.admin.port, "GET", "/identity")
                info = json.loads(body)
                assert status == 200 and info["identity"] == REVIEWS and int(info["serial"], 16) == a.identity.svid.serial

                # rotation: pooled connections live on, new handshakes present the new certificate
                keep = await TlsClient.open(strict, good, bundle)
                try:
                    assert (await keep.get()).status == 200
                    assert keep.peer_serial in ca.issued
                    before = {p: p.identity.renewals for p in (a, b)}
                    serial = a.identity.svid.serial
                    await wait_for(lambda: all(p.identity.renewals > n for p, n in before.items()), 10, "both SVIDs renewed")
                    assert a.identity.svid.serial != serial
                    assert (await keep.get()).status == 200  # the connection made with the old certificate
                finally:
                    await keep.aclose()

                async def new_serial() -> bool:
                    client = await TlsClient.open(strict, good, bundle)
                    try:
                        return client.peer_serial == a.identity.svid.serial
                    finally:
                        await client.aclose()

                await wait_for(lambda: _try(new_serial()), 5, "a new handshake to present the renewed certificate")
                assert (await get(outbound, host="reviews")).status == 200
                assert await cluster_connections(b, "reviews") == 1  # B's pooled connection to A survived both rotations
                assert b.agent.secrets.pushes >= 2 and not b.agent.secrets.nacks
                assert a.agent.status()["updates_rejected"] == 0 and b.agent.status()["updates_rejected"] == 0
    echo.close()


def https_server(ca: Path, cert: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    ctx.load_verify_locations(cafile=str(ca))
    ctx.verify_mode = ssl.CERT_OPTIONAL  # records a client certificate when one is sent
    return ctx


async def test_tls_origination_verifies_servers_with_snapshot_secrets(tmp_path: Path) -> None:
    ca, rogue_ca = make_ca(tmp_path / "ext"), make_ca(tmp_path / "rogue")
    api = Upstream("api", tls=https_server(ca, make_certificate(ca, tmp_path / "api", "api.example.com", "localhost")))
    rogue = Upstream("rogue", tls=https_server(ca, make_certificate(rogue_ca, tmp_path / "r", "api.example.com")))
    client = make_certificate(ca, tmp_path / "client", "client.example.com", client=True)
    cache, port = SnapshotCache(), free_port()

    def origin(name: str, target: Upstream, tls: UpstreamTls, resolution: str = "static") -> list:
        eps = () if resolution == "passthrough" else (LbEndpoint(*target.addr),)
        return [Cluster(name, tls=tls, resolution=resolution), EndpointSet(name, eps)]

    async with running(api, rogue):
        verified = UpstreamTls("SIMPLE", sni="api.example.com", ca_secret="ext-ca")
        cache.set(NODE_A, snapshot(
            http_listener("http_proxy", port, "egress", mode="http_proxy"),
            table("egress", *((n, (n,), (route(n, n),)) for n in ("simple", "badname", "mutual", "skip", "rogue")),
                  ("any", ("*",), (route("any", "passthrough"),))),
            *origin("simple", api, verified),
            *origin("badname", api, UpstreamTls("SIMPLE", sni="other.example.com", ca_secret="ext-ca")),
            *origin("mutual", api, UpstreamTls("MUTUAL", sni="api.example.com", ca_secret="ext-ca", certificate="client")),
            *origin("skip", rogue, UpstreamTls("SIMPLE", sni="api.example.com", insecure_skip_verify=True)),
            *origin("rogue", rogue, verified),
            *origin("passthrough", api, UpstreamTls("SIMPLE", ca_secret="ext-ca"), resolution="passthrough"),
            Secret("ext-ca", trust_bundle=ca.read_text()),
            Secret("client", client[0].read_text(), client[1].read_text())))
        async with xds_server(cache) as server, envoy_proxy(server.address, NODE_A):
            response = await get(port, host="simple")
            assert (response.status, response.text) == (200, "api GET /") and api.peer_certs[-1] is None
            assert (await get(port, host="badname")).status == 503  # the certificate does not name the SNI
            assert (await get(port, host="mutual")).status == 200
            assert api.peer_certs[-1] is not None  # the client certificate from the snapshot's secret
            assert (await get(port, host="skip")).status == 200
            assert (await get(port, host="rogue")).status == 503  # another CA
            host = f"localhost:{api.port}"  # passthrough: the request's host is the SNI and the name checked
            response = await get(port, f"http://{host}/p", host=host)
            assert (response.status, response.text) == (200, "api GET /p"), response


async def _try(coro):
    try:
        return await coro
    except (*REFUSED, TimeoutError, AssertionError):
        return None
