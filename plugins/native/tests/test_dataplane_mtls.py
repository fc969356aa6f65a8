"""Mesh mTLS in the data plane: inbound STRICT / PERMISSIVE / DISABLE, x-forwarded-client-cert,
upstream ISTIO_MUTUAL (server identity checked, auto-mTLS per endpoint), TLS origination, and SVID
rotation (pooled connections survive, new handshakes present the new certificate).

Real TLS on 127.0.0.1, on asyncio's loop and on uvloop: SVIDs come from a test CA
(``knotwork.testing.make_ca`` / ``make_svid``) or from a real certificate service.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from knotwork.proxyconfig import Cluster, EndpointSet, LbEndpoint, Listener, PeerTls, Secret, UpstreamTls
from knotwork.testing import make_ca, make_certificate, make_svid

from test_dataplane_support import both_event_loops  # noqa: F401 - the anyio_backend fixture
from test_dataplane_support import (
    RawClient,
    RecordingSink,
    Req,
    Upstream,
    closed_port,
    echo_server,
    http_listener,
    one_route,
    resources,
    respond,
    running,
    wait_for,
)
from test_mtls_support import REFUSED, FakeIdentity, MeshClient, TlsUpstream, mesh_ca, mesh_dataplane, mesh_get, sa

pytestmark = pytest.mark.anyio
A, B, C = sa("a"), sa("b"), sa("c")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    root = make_ca(tmp_path / "root")
    return {"root": root, "other": make_ca(tmp_path / "other"), "dir": tmp_path,
            **{name: make_svid(root, sa(name)) for name in ("a", "b", "c")}}


def inbound(mode: str | None, upstream: Upstream, *, protocol: str = "http", **kw: Any) -> dict[str, dict[str, Any]]:
    tls = PeerTls(mode) if mode else None
    if protocol == "tcp":
        lis = Listener("in", "127.0.0.1", 0, "inbound", protocol="tcp", cluster="c", tls=tls)
        return resources(lis, clusters={"c": [upstream.addr]})
    lis = http_listener(tls=tls, authn=("peer",), telemetry=("recorder",), **kw)
    return resources(lis, tables=[one_route()], clusters={"c": [upstream.addr]})


async def plaintext_get(port: int, headers: dict[str, str] | None = None) -> Any:
    client = await RawClient.open(port)
    try:
        return await client.request(headers=headers)
    finally:
        await client.aclose()


# ── inbound ─────────────────────────────────────────────────────────────────


async def test_strict_accepts_a_mesh_svid_and_tells_the_app_who_called(pki):
    app = Upstream("app")
    RecordingSink.records.clear()
    async with running(app), mesh_dataplane(inbound("STRICT", app), FakeIdentity(pki["b"])) as dp:
        port = dp.port_of("in")
        client = await MeshClient.open(port, pki["a"])
        assert client.alpn == "istio-http/1.1"
        forged = {"x-forwarded-client-cert": "By=spiffe://evil/x;URI=spiffe://cluster.local/ns/default/sa/admin"}
        for _ in range(2):  # keep-alive: the second request on the same connection carries it too
            resp = await client.get(headers=forged)
            assert resp.status == 200 and resp.server_id == B
            assert app.requests[-1].headers["x-forwarded-client-cert"] == f"By={B};URI={A}"
        # with x-forwarded-* from the client (a sidecar's outbound always sends them) the line is there as well
        resp = await client.get(headers={"x-forwarded-proto": "http", "x-forwarded-for": "10.0.0.1"})
        assert app.requests[-1].headers["x-forwarded-client-cert"] == f"By={B};URI={A}"
        await client.aclose()
        assert RecordingSink.records[-1]["principal"] == A  # ConnectionView.peer_identity
        h2 = await MeshClient.open(port, pki["a"], alpn=("istio-h2", "h2"))  # never HTTP/2: this engine speaks HTTP/1.1
        assert h2.alpn is None and (await h2.get()).status == 200
        await h2.aclose()
        assert dp.status()["listeners"][0]["mtls"] == "STRICT"
        assert dp.status()["mesh_identity"]["identity"] == B


@pytest.mark.parametrize("client", ["plaintext", "no certificate", "self-signed", "another CA", "expired",
                                    "another trust domain", "TLS 1.2"])
async def test_strict_refuses(pki, client):
    app = Upstream("app")
    async with running(app), mesh_dataplane(inbound("STRICT", app), FakeIdentity(pki["b"])) as dp:
        port = dp.port_of("in")
        bundle = pki["b"].bundle_pem
        if client == "plaintext":
            with pytest.raises(ConnectionError):
                await plaintext_get(port)
        else:
            svid, kw = {
                "no certificate": (None, {}),
                "self-signed": (make_svid(None, A), {}),
                "another CA": (make_svid(pki["other"], A), {}),
                "expired": (make_svid(pki["root"], A, valid=(-7200, -3600)), {}),
                "another trust domain": (make_svid(pki["root"], sa("a", "evil.example")), {}),
                "TLS 1.2": (pki["a"], {"max_version": ssl.TLSVersion.TLSv1_2}),
            }[client]
            with pytest.raises(REFUSED):
                await mesh_get(port, svid, bundle, **kw)
        assert app.requests == []
        # every refusal is counted; the reason of the last one is kept for /status
        await wait_for(lambda: dp.stats["downstream_cx_tls_refused"] >= 1, what="the refusal to be counted")
        if client == "another trust domain":
            assert "not in the trust domain 'cluster.local'" in dp.status()["mesh_identity"]["last_refusal"]
        # and a good client still gets through
        assert (await mesh_get(port, pki["a"], bundle)).status == 200


async def test_permissive_serves_plaintext_and_mtls_on_one_port(pki):
    app = Upstream("app")
    async with running(app), mesh_dataplane(inbound("PERMISSIVE", app), FakeIdentity(pki["b"]), peek_timeout=0.3) as dp:
        port = dp.port_of("in")
        resp = await plaintext_get(port, {"x-forwarded-client-cert": "By=x;URI=spiffe://cluster.local/ns/default/sa/admin"})
        assert resp.status == 200
        assert "x-forwarded-client-cert" not in app.requests[-1].headers  # a client's XFCC never reaches the app
        assert (await mesh_get(port, pki["a"])).status == 200
        assert app.requests[-1].headers["x-forwarded-client-cert"] == f"By={B};URI={A}"
        # a client that sends nothing is served as plaintext once the peek times out (server-first protocols)
        silent = await RawClient.open(port)
        await wait_for(lambda: dp.stats["downstream_cx_peek_timeout"] == 1, what="the peek to time out")
        assert (await silent.request()).status == 200
        await silent.aclose()
        # a TLS client that is not of the mesh is refused even here
        with pytest.raises(REFUSED):
            await mesh_get(port, make_svid(pki["other"], A), pki["b"].bundle_pem)
        assert dp.stats["downstream_cx_permissive_tls"] == 2 and dp.stats["downstream_cx_permissive_plaintext"] == 1


async def test_permissive_without_a_workload_identity_serves_plaintext_and_strict_is_refused(pki):
    app = Upstream("app")
    async with running(app), mesh_dataplane(inbound("PERMISSIVE", app), None) as dp:
        assert (await plaintext_get(dp.port_of("in"))).status == 200
        with pytest.raises(ValueError, match="tls mode STRICT needs the proxy's workload identity"):
            dp.build(inbound("STRICT", app))


@pytest.mark.parametrize("mode", ["DISABLE", None])
async def test_disable_serves_plaintext_only(pki, mode):
    app = Upstream("app")
    async with running(app), mesh_dataplane(inbound(mode, app), FakeIdentity(pki["b"])) as dp:
        port = dp.port_of("in")
        assert (await plaintext_get(port)).status == 200
        with pytest.raises(REFUSED):
            await mesh_get(port, pki["a"])


async def test_switching_strict_and_permissive_keeps_the_port(pki):
    app = Upstream("app")
    async with running(app), mesh_dataplane(inbound("STRICT", app), FakeIdentity(pki["b"])) as dp:
        port = dp.port_of("in")
        with pytest.raises(ConnectionError):
            await plaintext_get(port)
        await dp.apply(dp.build(inbound("PERMISSIVE", app)))
        assert dp.port_of("in") == port
        assert (await plaintext_get(port)).status == 200


async def test_tcp_listener_strict(pki):
    server, echo_port = await echo_server()
    try:
        lis = Listener("in", "127.0.0.1", 0, "inbound", protocol="tcp", cluster="c", tls=PeerTls("STRICT"))
        async with mesh_dataplane(resources(lis, clusters={"c": [("127.0.0.1", echo_port)]}), FakeIdentity(pki["b"])) as dp:
            from knotwork.identity import client_context

            ctx = client_context(pki["a"], alpn=("istio-peer-exchange", "istio"))
            reader, writer = await asyncio.open_connection("127.0.0.1", dp.port_of("in"), ssl=ctx)
            writer.write(b"hello")
            assert await asyncio.wait_for(reader.readexactly(5), 10) == b"hello"
            writer.close()
            bad = client_context(make_svid(pki["other"], A))
            with pytest.raises(REFUSED):
                reader, writer = await asyncio.open_connection("127.0.0.1", dp.port_of("in"), ssl=bad)
                writer.write(b"hello")
                if not await asyncio.wait_for(reader.read(5), 10):
                    raise ConnectionError("closed")
    finally:
        server.close()


# ── upstream ────────────────────────────────────────────────────────────────


def outbound(cluster_tls: UpstreamTls | None, *endpoints: LbEndpoint, protocol: str = "http") -> dict[str, dict[str, Any]]:
    res = resources(http_listener("out", mode="outbound", telemetry=("recorder",)), tables=[one_route()])
    res["clusters"]["c"] = Cluster("c", tls=cluster_tls, protocol=protocol)
    res["endpoints"]["c"] = EndpointSet("c", endpoints)
    return res


def mesh_endpoint(up: Upstream, identity: str | None) -> LbEndpoint:
    return LbEndpoint(up.addr[0], up.addr[1], identity=identity)


async def test_istio_mutual_checks_the_server_identity_before_sending(pki):
    good, wrong, foreign = TlsUpstream("b", pki["b"]), TlsUpstream("c", pki["c"]), TlsUpstream("x", make_svid(pki["other"], B))
    async with running(good, wrong, foreign):
        for up, status in ((good, 200), (wrong, 503), (foreign, 503)):
            res = outbound(UpstreamTls("ISTIO_MUTUAL", identities=(B,), sni="outbound_.80_._.b.default.svc.cluster.local"),
                           mesh_endpoint(up, B))
            async with mesh_dataplane(res, FakeIdentity(pki["a"])) as dp:
                resp = await plaintext_get(dp.port_of("out"))
                assert resp.status == status, resp.text
                if status == 200:
                    assert up.peers == [(pki["a"].serial, A)] and len(up.requests) == 1
                else:
                    assert resp.headers["x-knotwork-response-flags"] in ("UF", "URX,UF")
                    assert up.requests == []  # not a byte of the request
                if up is wrong:  # a clear reason with both identities
                    assert f"presented {C}, expected {B}" in resp.text
                    assert dp.stats["upstream_cx_tls_peer_refused"] >= 1
                if up is foreign:
                    assert "TLS handshake failed" in resp.text


async def test_auto_mtls_is_per_endpoint(pki):
    sidecar, plain = TlsUpstream("sidecar", pki["b"]), Upstream("plain")
    async with running(sidecar, plain):
        res = outbound(UpstreamTls("ISTIO_MUTUAL", identities=(B,), auto=True), mesh_endpoint(sidecar, B),
                       mesh_endpoint(plain, None))
        async with mesh_dataplane(res, FakeIdentity(pki["a"])) as dp:
            client = await RawClient.open(dp.port_of("out"))
            bodies = {(await client.request()).text for _ in range(4)}
            await client.aclose()
            assert {b.split()[0] for b in bodies} == {"sidecar", "plain"}
            assert sidecar.peers and all(peer == A for _, peer in sidecar.peers)
            assert dp.stats["upstream_cx_tls_total"] == len(sidecar.peers)


async def test_istio_mutual_without_a_workload_identity_is_refused(pki):
    res = outbound(UpstreamTls("ISTIO_MUTUAL", identities=(B,)), LbEndpoint("127.0.0.1", closed_port(), identity=B))
    async with mesh_dataplane(outbound(None, LbEndpoint("127.0.0.1", closed_port())), None) as dp:
        with pytest.raises(ValueError, match="ISTIO_MUTUAL needs the proxy's workload identity"):
            dp.build(res)
        with pytest.raises(ValueError, match="tls mode 'BOGUS'"):
            dp.build(outbound(UpstreamTls("BOGUS"), LbEndpoint("127.0.0.1", 1)))


async def test_two_sidecars_over_mesh_mtls(pki):
    """A's outbound (ISTIO_MUTUAL, B's identity) → B's inbound (STRICT) → the app, which sees A."""
    app = Upstream("app")
    async with running(app), mesh_dataplane(inbound("STRICT", app), FakeIdentity(pki["b"])) as b:
        res = outbound(UpstreamTls("ISTIO_MUTUAL", identities=(B,)), LbEndpoint("127.0.0.1", b.port_of("in"), identity=B))
        async with mesh_dataplane(res, FakeIdentity(pki["a"])) as a:
            client = await RawClient.open(a.port_of("out"))
            for _ in range(3):
                assert (await client.request()).status == 200
            await client.aclose()
            assert app.requests[-1].headers["x-forwarded-client-cert"] == f"By={B};URI={A}"
            assert a.stats["upstream_cx_tls_total"] == 1  # one handshake, then keep-alive


async def test_tcp_upstream_istio_mutual(pki):
    app = Upstream("app")
    async with running(app), mesh_dataplane(inbound("STRICT", app), FakeIdentity(pki["b"])) as b:
        lis = Listener("out", "127.0.0.1", 0, "outbound", protocol="tcp", cluster="c")
        res = resources(lis, clusters={"c": []})
        res["clusters"]["c"] = Cluster("c", protocol="tcp", tls=UpstreamTls("ISTIO_MUTUAL", identities=(B,)))
        res["endpoints"]["c"] = EndpointSet("c", (LbEndpoint("127.0.0.1", b.port_of("in"), identity=B),))
        async with mesh_dataplane(res, FakeIdentity(pki["a"])) as a:
            assert (await plaintext_get(a.port_of("out"))).status == 200
            assert app.requests[-1].headers["x-forwarded-client-cert"] == f"By={B};URI={A}"
        res["clusters"]["c"] = attrs.evolve(res["clusters"]["c"], tls=UpstreamTls("ISTIO_MUTUAL", identities=(C,)))
        async with mesh_dataplane(res, FakeIdentity(pki["a"])) as a:
            with pytest.raises(ConnectionError):  # refused: the downstream connection is closed
                await plaintext_get(a.port_of("out"))
            assert a.stats["upstream_cx_tls_peer_refused"] >= 1


# ── TLS origination (SIMPLE / MUTUAL) ───────────────────────────────────────


class HttpsUpstream(Upstream):
    """An HTTPS upstream with a DNS-named certificate; asks for a client certificate when `client_ca`."""

    def __init__(self, name: str, crt: Path, key: Path, client_ca: Path | None = None) -> None:
        super().__init__(name)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(crt), str(key))
        if client_ca is not None:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(str(client_ca))
        self.sni: list[str | None] = []
        self.ctx.sni_callback = lambda obj, name, ctx: self.sni.append(name)

    async def start(self) -> HttpsUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self


async def test_simple_and_mutual_origination(pki):
    ca = pki["root"]
    crt, key = make_certificate(ca, pki["dir"] / "ext", "api.example.com")
    client_crt, client_key = make_certificate(ca, pki["dir"] / "client", "client", client=True)
    simple, mutual = HttpsUpstream("simple", crt, key), HttpsUpstream("mutual", crt, key, client_ca=ca)
    secrets = {"root": Secret("root", trust_bundle=ca.read_text()),
               "cert": Secret("cert", certificate_chain=client_crt.read_text(), private_key=client_key.read_text())}
    cases = [
        (simple, UpstreamTls("SIMPLE", sni="api.example.com", ca_secret="root"), 200),
        (simple, UpstreamTls("SIMPLE", sni="other.example.com", ca_secret="root"), 503),  # host name check on sni
        (simple, UpstreamTls("SIMPLE", sni="x", ca_secret="root", subject_alt_names=("api.example.com",)), 200),
        (simple, UpstreamTls("SIMPLE", sni="x", ca_secret="root", subject_alt_names=("nope.example.com",)), 503),
        (simple, UpstreamTls("SIMPLE", sni="api.example.com"), 503),  # system roots do not know the test CA
        (simple, UpstreamTls("SIMPLE", sni="whatever", insecure_skip_verify=True), 200),
        (mutual, UpstreamTls("MUTUAL", sni="api.example.com", ca_secret="root", certificate="cert"), 200),
        (mutual, UpstreamTls("SIMPLE", sni="api.example.com", ca_secret="root"), 503),  # no client certificate
    ]
    async with running(simple, mutual):
        for up, tls, status in cases:
            res = outbound(tls, LbEndpoint(*up.addr))
            res["secrets"].update(secrets)
            async with mesh_dataplane(res, None) as dp:
                resp = await plaintext_get(dp.port_of("out"))
                assert resp.status == status, (tls, resp.text)
                assert up.sni[-1] == tls.sni
    with pytest.raises(ValueError, match="tls mode MUTUAL needs a certificate secret"):
        async with mesh_dataplane(outbound(UpstreamTls("MUTUAL"), LbEndpoint("127.0.0.1", 1)), None):
            pass


# ── rotation ────────────────────────────────────────────────────────────────


async def test_rotation_keeps_pooled_upstream_connections_and_new_handshakes_present_the_new_serial(pki):
    """A real WorkloadIdentity (2 s certificates, renewed at half) against a real certificate service."""
    hold = asyncio.Event()

    async def handler(up: Upstream, req: Req, writer: asyncio.StreamWriter, nth: int) -> None:
        if req.path == "/hold":
            await hold.wait()
        await respond(writer, 200, req.path.encode())

    async with mesh_ca(pki["root"], pki["dir"] / "state", ttl=2) as ca:
        up = TlsUpstream("b", make_svid(pki["root"], B), handler)
        identity = ca.identity("node-a", A)
        serials: list[int] = []
        identity.on_change(lambda svid: serials.append(svid.serial))
        async with running(up), mesh_dataplane(outbound(UpstreamTls("ISTIO_MUTUAL", identities=(B,)),
                                                        mesh_endpoint(up, B)), identity) as dp:
            async with anyio.create_task_group() as tg:
                await tg.start(identity.run)
                first = identity.svid.serial
                client = await RawClient.open(dp.port_of("out"))
                first_resp = await client.request(path="/one")
                assert first_resp.status == 200, first_resp.text
                assert up.peers == [(first, A)]
                with anyio.fail_after(10):
                    while identity.svid.serial == first:
                        await identity.wait_change()
                # the pooled connection made with the old certificate keeps serving
                assert (await client.request(path="/two")).status == 200
                assert len(up.peers) == 1 and dp.pools.idle_count() == 1
                # a new connection (the pooled one is busy) presents the new certificate
                client.send(path="/hold")
                await wait_for(lambda: len(up.requests) == 3, what="/hold to arrive")
                other = await RawClient.open(dp.port_of("out"))
                assert (await other.request(path="/three")).status == 200
                assert len(up.peers) == 2 and up.peers[1][0] != first and up.peers[1][0] in serials
                hold.set()
                assert (await client.response()).status == 200
                await client.aclose()
                await other.aclose()
                assert dp.status()["mesh_identity"]["rotations"] >= 1
                tg.cancel_scope.cancel()


async def test_inbound_handshakes_after_a_rotation_present_the_new_certificate(pki):
    app = Upstream("app")
    identity = FakeIdentity(pki["b"])
    async with running(app), mesh_dataplane(inbound("STRICT", app), identity) as dp:
        port = dp.port_of("in")
        before = await MeshClient.open(port, pki["a"])
        assert (await before.get()).server_serial == pki["b"].serial
        renewed = make_svid(pki["root"], B)
        identity.rotate(renewed)
        after = await mesh_get(port, pki["a"])
        assert after.status == 200 and after.server_serial == renewed.serial
        resp = await before.get()  # the connection made before the rotation is untouched
        assert resp.status == 200 and resp.server_serial == pki["b"].serial
        await before.aclose()
