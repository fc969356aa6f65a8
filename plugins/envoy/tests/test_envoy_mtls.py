"""Mesh mTLS on the envoy engine without Envoy: PeerTls / UpstreamTls translation,
the bootstrap's SDS and control-channel TLS, the agent's SDS messages and stream,
and the xDS server refusing a node its client certificate does not prove."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import pytest
from envoy_data_plane.envoy.config.core.v3 import Node
from envoy_data_plane.envoy.service.discovery.v3 import (
    DiscoveryRequest as XdsRequest,
    DiscoveryResponse,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import Secret as EnvoySecret
from envoy_data_plane.google.rpc import Status
from grpclib.client import Channel
from grpclib.const import Cardinality, Status as GrpcStatus
from grpclib.exceptions import GRPCError, StreamTerminatedError
from knotwork.distribution import SnapshotCache
from knotwork.identity import client_context
from knotwork.proxyconfig import (
    MESH_ALPN_HTTP, MESH_ALPN_SERVER, MESH_ALPN_TCP, Cluster, EndpointSet, LbEndpoint, Listener, PeerTls, UpstreamTls,
)
from knotwork.testing import make_ca, make_svid

from envoy_helpers import snapshot, xds_server
from identity_helpers import MeshCA, control_tls, spiffe
from knotwork_envoy.bootstrap import bootstrap
from knotwork_envoy.sds import (
    MESH_SDS, SECRET_TYPE, STREAM_METHOD, SdsRequest, SecretServer, _RawCodec, decode_request, encode_response, encode_secret,
)
from knotwork_envoy.translate import TYPE_URLS, TranslateOptions, to_message, translate
from knotwork_envoy.translate.fastwire import encode_cluster_load_assignment
from knotwork_envoy.translate.tls import system_roots

SDS = {"name": "default", "sds_config": MESH_SDS}
ROOTCA = {"name": "ROOTCA", "sds_config": MESH_SDS}
ADS = {"ads": {}, "resource_api_version": "V3"}
MESH_PARAMS = {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"}
REVIEWS = spiffe("reviews")


def inbound(mode: str | None, protocol: str = "http") -> Listener:
    target = {"route_table": "inbound|9080"} if protocol == "http" else {"cluster": "inbound|9080||"}
    return Listener("inbound|9080", "127.0.0.1", 15006, "inbound", protocol=protocol,
                    tls=None if mode is None else PeerTls(mode, "example.org"), **target)


def chain_tls(chain: dict) -> dict:
    return chain["transport_socket"]["typed_config"]


def hcm(chain: dict) -> dict:
    return chain["filters"][0]["typed_config"]


# ── inbound listeners (PeerTls) ──────────────────────────────────────────────


def test_strict_is_one_mtls_chain_requiring_an_svid_of_the_trust_domain() -> None:
    out = translate("listeners", inbound("STRICT"))
    (chain,) = out["filter_chains"]
    assert "listener_filters" not in out and "filter_chain_match" not in chain
    tls = chain_tls(chain)
    assert tls["@type"].endswith("DownstreamTlsContext") and tls["require_client_certificate"] is True
    assert tls["common_tls_context"] == {
        "tls_params": MESH_PARAMS,
        "alpn_protocols": ["h2", *MESH_ALPN_SERVER],  # h2 first: the codec is HTTP/2 only when h2 is negotiated
        "tls_certificate_sds_secret_configs": [SDS],
        "combined_validation_context": {
            "validation_context_sds_secret_config": ROOTCA,
            "default_validation_context": {"match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"prefix": "spiffe://example.org/"}}]},
        },
    }
    assert hcm(chain)["forward_client_cert_details"] == "SANITIZE_SET"
    assert hcm(chain)["set_current_client_cert_details"] == {"uri": True}
    to_message("listeners", out)


def test_permissive_tells_tls_from_plaintext_per_connection() -> None:
    out = translate("listeners", inbound("PERMISSIVE"))
    assert [f["name"] for f in out["listener_filters"]] == ["envoy.filters.listener.tls_inspector"]
    assert out["continue_on_listener_filters_timeout"] is True and out["listener_filters_timeout"] == "1s"
    mtls, plain = out["filter_chains"]
    assert mtls["filter_chain_match"] == {"transport_protocol": "tls"}
    assert chain_tls(mtls)["require_client_certificate"] is True
    assert plain["filter_chain_match"] == {"transport_protocol": "raw_buffer"} and "transport_socket" not in plain
    assert hcm(mtls)["forward_client_cert_details"] == "SANITIZE_SET"
    assert hcm(plain)["forward_client_cert_details"] == "SANITIZE"  # a plaintext client's XFCC is never believed
    assert "set_current_client_cert_details" not in hcm(plain)
    to_message("listeners", out)


def test_disable_and_none_are_plaintext() -> None:
    (chain,) = translate("listeners", inbound("DISABLE"))["filter_chains"]
    assert "transport_socket" not in chain and "filter_chain_match" not in chain
    assert hcm(chain)["forward_client_cert_details"] == "SANITIZE"
    (chain,) = translate("listeners", inbound(None))["filter_chains"]
    assert "transport_socket" not in chain and "forward_client_cert_details" not in hcm(chain)


def test_tcp_inbound_listeners_take_mtls_too() -> None:
    out = translate("listeners", inbound("PERMISSIVE", protocol="tcp"))
    mtls, plain = out["filter_chains"]
    assert mtls["filters"][0]["name"] == plain["filters"][0]["name"] == "envoy.filters.network.tcp_proxy"
    assert chain_tls(mtls)["require_client_certificate"] is True
    to_message("listeners", out)


# ── clusters (UpstreamTls) and endpoints ─────────────────────────────────────


def test_istio_mutual_checks_the_destination_identities() -> None:
    tls = UpstreamTls("ISTIO_MUTUAL", identities=(REVIEWS, spiffe("reviews-v2")), sni="outbound_.9080_._.reviews")
    out = translate("clusters", Cluster("outbound|9080||reviews", tls=tls))
    socket = out["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    context = socket["typed_config"]
    assert context["@type"].endswith("UpstreamTlsContext") and context["sni"] == "outbound_.9080_._.reviews"
    assert context["common_tls_context"] == {
        "tls_params": MESH_PARAMS,
        "alpn_protocols": list(MESH_ALPN_HTTP),
        "tls_certificate_sds_secret_configs": [SDS],
        "combined_validation_context": {
            "validation_context_sds_secret_config": ROOTCA,
            "default_validation_context": {"match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"exact": REVIEWS}},
                {"san_type": "URI", "matcher": {"exact": spiffe("reviews-v2")}}]},
        },
    }
    to_message("clusters", out)
    tcp = translate("clusters", Cluster("c", protocol="tcp", tls=UpstreamTls("ISTIO_MUTUAL", identities=(REVIEWS,))))
    assert tcp["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"] == list(MESH_ALPN_TCP)
    assert "sni" not in tcp["transport_socket"]["typed_config"]
    h2 = translate("clusters", Cluster("c", protocol="grpc", tls=UpstreamTls("ISTIO_MUTUAL", identities=(REVIEWS,))))
    assert h2["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"] == ["istio-h2", "istio", "h2"]
    own = translate("clusters", Cluster("c", tls=UpstreamTls("ISTIO_MUTUAL", alpn=("x",))))
    assert own["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"] == ["x"]
    # an HTTP/2 cluster must get h2 negotiated, whatever ALPN the compiler chose
    forced = translate("clusters", Cluster("c", protocol="http2", tls=UpstreamTls("ISTIO_MUTUAL", alpn=MESH_ALPN_TCP)))
    assert forced["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"] == ["istio-h2", "istio", "h2"]


def test_auto_mtls_picks_the_socket_by_endpoint_metadata() -> None:
    out = translate("clusters", Cluster("c", tls=UpstreamTls("ISTIO_MUTUAL", identities=(REVIEWS,), auto=True)))
    assert "transport_socket" not in out
    mesh, plain = out["transport_socket_matches"]
    assert mesh["match"] == {"tlsMode": "istio"} and mesh["transport_socket"]["name"] == "envoy.transport_sockets.tls"
    assert plain["match"] == {} and plain["transport_socket"]["name"] == "envoy.transport_sockets.raw_buffer"
    to_message("clusters", out)
    eps = EndpointSet("c", (LbEndpoint("127.0.0.1", 1, identity=REVIEWS), LbEndpoint("127.0.0.1", 2)))
    first, second = translate("endpoints", eps)["endpoints"][0]["lb_endpoints"]
    assert first["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == {"tlsMode": "istio"}
    assert first["metadata"]["filter_metadata"]["knotwork"]["principal"] == REVIEWS  # telemetry's destination
    assert "metadata" not in second
    config = translate("endpoints", eps)
    assert encode_cluster_load_assignment(config) == bytes(to_message("endpoints", config))  # the fast path too
    # a dns cluster inlines the same endpoint metadata
    dns = translate("clusters", Cluster("c", resolution="dns", tls=UpstreamTls("ISTIO_MUTUAL", auto=True)), endpoints=eps)
    assert dns["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"] == first["metadata"]
    # a passthrough cluster has no endpoints with sidecars: plaintext
    dfp = translate("clusters", Cluster("p", resolution="passthrough", tls=UpstreamTls("ISTIO_MUTUAL", auto=True)))
    assert "transport_socket" not in dfp and "transport_socket_matches" not in dfp


def test_istio_mutual_without_known_identities_still_wants_an_svid() -> None:
    out = translate("clusters", Cluster("c", tls=UpstreamTls("ISTIO_MUTUAL")))
    names = out["transport_socket"]["typed_config"]["common_tls_context"]["combined_validation_context"][
        "default_validation_context"]["match_typed_subject_alt_names"]
    assert names == [{"san_type": "URI", "matcher": {"prefix": "spiffe://"}}]


def test_simple_and_mutual_originate_tls_with_snapshot_secrets() -> None:
    mutual = UpstreamTls("MUTUAL", sni="api.example.com", ca_secret="api-ca", certificate="api-client",
                         subject_alt_names=("api.example.com", "10.0.0.7", "spiffe://x/y"), alpn=("h2",))
    context = translate("clusters", Cluster("c", tls=mutual))["transport_socket"]["typed_config"]
    assert context["sni"] == "api.example.com"
    common = context["common_tls_context"]
    assert common["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"}
    assert common["alpn_protocols"] == ["h2"]
    assert common["tls_certificate_sds_secret_configs"] == [{"name": "api-client", "sds_config": ADS}]
    assert common["combined_validation_context"] == {
        "validation_context_sds_secret_config": {"name": "api-ca", "sds_config": ADS},
        "default_validation_context": {"match_typed_subject_alt_names": [
            {"san_type": "DNS", "matcher": {"exact": "api.example.com"}},
            {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.7"}},
            {"san_type": "URI", "matcher": {"exact": "spiffe://x/y"}}]},
    }
    simple = translate("clusters", Cluster("c", tls=UpstreamTls("SIMPLE", sni="api.example.com")))
    common = simple["transport_socket"]["typed_config"]["common_tls_context"]
    assert common["validation_context"] == {  # system roots; the SNI is the name checked
        "trusted_ca": {"filename": system_roots()},
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "api.example.com"}}]}
    assert "tls_certificate_sds_secret_configs" not in common and "alpn_protocols" not in common
    insecure = translate("clusters", Cluster("c", tls=UpstreamTls("SIMPLE", sni="a.example", insecure_skip_verify=True)))
    common = insecure["transport_socket"]["typed_config"]["common_tls_context"]
    assert "validation_context" not in common and "combined_validation_context" not in common
    roots = translate("clusters", Cluster("c", tls=UpstreamTls("SIMPLE")), TranslateOptions(system_roots="/etc/my-roots.pem"))
    assert roots["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"] == {
        "trusted_ca": {"filename": "/etc/my-roots.pem"}}
    for config in (simple, insecure, roots):
        to_message("clusters", config)


def test_passthrough_tls_takes_sni_and_name_from_each_request() -> None:
    out = translate("clusters", Cluster("p", resolution="passthrough", tls=UpstreamTls("SIMPLE", sni="api.example.com")))
    context = out["transport_socket"]["typed_config"]
    assert "sni" not in context and "match_typed_subject_alt_names" not in context["common_tls_context"]["validation_context"]
    assert "allow_insecure_cluster_options" not in out["cluster_type"]["typed_config"]  # Envoy's auto_sni/auto_san_validation
    assert "typed_extension_protocol_options" not in out
    named = translate("clusters", Cluster("p", resolution="passthrough", tls=UpstreamTls("SIMPLE", subject_alt_names=("a.example",))))
    assert named["cluster_type"]["typed_config"]["allow_insecure_cluster_options"] is True  # the given names instead
    assert named["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"][
        "match_typed_subject_alt_names"] == [{"san_type": "DNS", "matcher": {"exact": "a.example"}}]
    insecure = translate("clusters", Cluster("p", resolution="passthrough", tls=UpstreamTls("SIMPLE", insecure_skip_verify=True)))
    assert insecure["cluster_type"]["typed_config"]["allow_insecure_cluster_options"] is True
    options = insecure["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["upstream_http_protocol_options"] == {"auto_sni": True}
    assert options["explicit_http_config"] == {"http_protocol_options": {}}
    to_message("clusters", out)
    to_message("clusters", insecure)


# ── the bootstrap ────────────────────────────────────────────────────────────


def test_bootstrap_with_identity_has_sds_and_an_mtls_control_channel() -> None:
    out = bootstrap("sidecar~r", "127.0.0.1:15010", sds_path="/tmp/knotwork-sds-x/sds.sock",
                    control_identity="spiffe://cluster.local/ns/knotwork-system/sa/knotwork-control")
    sds, xds = out["static_resources"]["clusters"]
    assert sds["name"] == "sds-grpc"
    assert sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "pipe": {"path": "/tmp/knotwork-sds-x/sds.sock"}}
    assert "http2_protocol_options" in sds["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
    context = xds["transport_socket"]["typed_config"]
    assert "sni" not in context  # an IP: verified by IP SAN
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"] and common["tls_certificate_sds_secret_configs"] == [SDS]
    assert common["combined_validation_context"]["validation_context_sds_secret_config"] == ROOTCA
    assert common["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/knotwork-system/sa/knotwork-control"}},
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}]
    named = bootstrap("n", "knotwork-control:15010", sds_path="/s", control_identity=None)
    context = named["static_resources"]["clusters"][1]["transport_socket"]["typed_config"]
    assert context["sni"] == "knotwork-control"
    assert context["common_tls_context"]["combined_validation_context"]["default_validation_context"][
        "match_typed_subject_alt_names"] == [{"san_type": "DNS", "matcher": {"exact": "knotwork-control"}}]
    import envoy_data_plane.envoy.extensions.transport_sockets.tls.v3  # noqa: F401
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

    Bootstrap.from_dict(out)
    assert "transport_socket" not in bootstrap("n", "127.0.0.1:1")["static_resources"]["clusters"][0]


# ── the agent's SDS ──────────────────────────────────────────────────────────


def test_sds_messages_are_byte_for_byte_envoys() -> None:
    secret = encode_secret("default", chain="CHAIN\n", key="KEY\n")
    assert secret == bytes(EnvoySecret.from_dict({"name": "default", "tls_certificate": {
        "certificate_chain": {"inline_bytes": "Q0hBSU4K"}, "private_key": {"inline_bytes": "S0VZCg=="}}}))
    bundle = encode_secret("ROOTCA", bundle="ROOTS\n")
    assert bundle == bytes(EnvoySecret.from_dict({"name": "ROOTCA", "validation_context": {
        "trusted_ca": {"inline_bytes": "Uk9PVFMK"}}}))
    response = DiscoveryResponse.parse(encode_response("default=1f", [secret, bundle], "7"))
    assert (response.version_info, response.type_url, response.nonce) == ("default=1f", SECRET_TYPE, "7")
    assert [EnvoySecret.parse(r.value).name for r in response.resources] == ["default", "ROOTCA"]
    assert [r.type_url for r in response.resources] == [SECRET_TYPE] * 2
    request = XdsRequest(version_info="v", node=Node(id="sidecar~x", cluster="knotwork"), resource_names=["default"],
                         type_url=SECRET_TYPE, response_nonce="3", error_detail=Status(code=13, message="bad key"))
    assert decode_request(bytes(request)) == SdsRequest("v", ("default",), SECRET_TYPE, "3", "bad key")
    assert decode_request(bytes(XdsRequest(error_detail=Status(code=3)))).error_detail == "rejected (code 3)"
    with pytest.raises(ValueError):
        decode_request(b"\x0a\x05ab")


@pytest.mark.anyio
async def test_sds_stream_answers_subscriptions_ignores_acks_and_pushes_rotations(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    first, second = make_svid(ca, REVIEWS), make_svid(ca, REVIEWS)
    secrets = SecretServer()
    secrets.update(first)
    async with secrets.serving(tmp_path / "sds.sock") as path:
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        channel = Channel(path=str(path), codec=_RawCodec())
        try:
            async with channel.request(STREAM_METHOD, Cardinality.STREAM_STREAM, bytes, bytes) as stream:
                async def reply() -> DiscoveryResponse:
                    return DiscoveryResponse.parse(await asyncio.wait_for(stream.recv_message(), 5))

                await stream.send_message(bytes(XdsRequest(node=Node(id="n"), resource_names=["default"], type_url=SECRET_TYPE)))
                r1 = await reply()
                (res,) = r1.resources
                cert = EnvoySecret.parse(res.value)
                assert cert.name == "default" and cert.tls_certificate.certificate_chain.inline_bytes == first.chain_pem.encode()
                assert r1.version_info == f"default={first.serial:x}"
                # an ACK gets no reply; a stale nonce neither; a changed subscription does
                await stream.send_message(bytes(XdsRequest(version_info=r1.version_info, response_nonce=r1.nonce,
                                                           resource_names=["default"], type_url=SECRET_TYPE)))
                await stream.send_message(bytes(XdsRequest(response_nonce="0", resource_names=["default", "ROOTCA"],
                                                           type_url=SECRET_TYPE)))
                await stream.send_message(bytes(XdsRequest(version_info=r1.version_info, response_nonce=r1.nonce,
                                                           resource_names=["default", "ROOTCA"], type_url=SECRET_TYPE)))
                r2 = await reply()
                assert [EnvoySecret.parse(r.value).name for r in r2.resources] == ["default", "ROOTCA"]
                assert EnvoySecret.parse(r2.resources[1].value).validation_context.trusted_ca.inline_bytes == first.bundle_pem.encode()
                # a rotation is pushed; the same SVID again is not
                secrets.update(first)
                secrets.update(second)
                r3 = await reply()
                assert EnvoySecret.parse(r3.resources[0].value).tls_certificate.certificate_chain.inline_bytes == \
                    second.chain_pem.encode()
                assert r3.nonce != r2.nonce and r3.version_info.startswith(f"default={second.serial:x},ROOTCA=")
                # a NACK is recorded, not answered
                await stream.send_message(bytes(XdsRequest(version_info=r2.version_info, response_nonce=r3.nonce,
                                                           resource_names=["default", "ROOTCA"], type_url=SECRET_TYPE,
                                                           error_detail=Status(code=13, message="no good"))))
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stream.recv_message()), 0.2)
                assert secrets.nacks == ["no good"] and secrets.pushes == 3
                await stream.cancel()
        finally:
            channel.close()


# ── the xDS server: TLS and node authorization ───────────────────────────────


@pytest.mark.anyio
async def test_xds_server_refuses_a_node_the_client_certificate_does_not_prove(tmp_path: Path) -> None:
    ca_path = make_ca(tmp_path / "ca")
    ca = MeshCA(ca_path)
    control = ca.control_svid()
    cache = SnapshotCache()
    cache.set("sidecar~reviews", snapshot(Cluster(name="c"), EndpointSet(name="c")))
    calls = []

    def authorize(node: str, peer: str | None) -> str | None:
        calls.append((node, peer))
        return None if (node, peer) == ("sidecar~reviews", REVIEWS) else f"node {node!r} runs as {REVIEWS}, not {peer}"

    async def first_response(svid, node: str) -> DiscoveryResponse:
        ctx = client_context(svid, ca.trust_bundle(), alpn=("h2",), check_hostname=True, min_version=ssl.TLSVersion.TLSv1_2)
        channel = Channel("127.0.0.1", server.address[1], ssl=ctx)
        try:
            async with channel.request("/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
                                       Cardinality.STREAM_STREAM, XdsRequest, DiscoveryResponse) as stream:
                await stream.send_message(XdsRequest(node=Node(id=node), type_url=TYPE_URLS["clusters"]))
                response = await asyncio.wait_for(stream.recv_message(), 5)
                with contextlib.suppress(Exception):
                    await stream.cancel()
                return response
        finally:
            channel.close()

    async with xds_server(cache, ssl=control_tls(control), authorize=authorize) as server:
        response = await first_response(make_svid(ca_path, REVIEWS), "sidecar~reviews")
        assert response.type_url == TYPE_URLS["clusters"] and len(response.resources) == 1
        with pytest.raises(GRPCError) as info:
            await first_response(make_svid(ca_path, spiffe("ratings")), "sidecar~reviews")
        assert info.value.status == GrpcStatus.PERMISSION_DENIED
        assert info.value.message == f"node 'sidecar~reviews' runs as {REVIEWS}, not {spiffe('ratings')}"
        assert calls == [("sidecar~reviews", REVIEWS), ("sidecar~reviews", spiffe("ratings"))] and server.refused == 1
        # no client certificate, or one from another CA: no TLS session at all
        for svid in (None, make_svid(make_ca(tmp_path / "other"), REVIEWS)):
            with pytest.raises((ssl.SSLError, ConnectionError, GRPCError, OSError, StreamTerminatedError)):
                await first_response(svid, "sidecar~reviews")
        assert len(calls) == 2


def test_authorization_is_off_without_options() -> None:
    from knotwork.records import ComponentContext

    from knotwork_envoy.server import EnvoyServer

    server = EnvoyServer(ComponentContext(mesh=None, settings=None, mesh_dir=None, state_dir=None,  # type: ignore[arg-type]
                                          options={"listen": "127.0.0.1:0"}), SnapshotCache())
    assert server.ssl is None and server.authorize is None
    server._check_peer("anything", None)  # noqa: SLF001 - plaintext distribution as before
