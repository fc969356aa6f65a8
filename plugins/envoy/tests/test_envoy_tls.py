"""Gateway TLS on the envoy engine: ServerTls chains → filter chains by SNI with a
DownstreamTlsContext whose certificates come over SDS; redirects to https; and a
real Envoy terminating TLS, choosing certificates by SNI, serving a renewed one."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from knotwork.distribution import SnapshotCache
from knotwork.proxyconfig import Listener, Redirect, Route, RouteMatch, Secret, ServerTls

from envoy_helpers import NODE, Upstream, clusters, envoy_proxy, free_port, route, running, snapshot, table, wait_for, xds_server
from knotwork_envoy.translate import TranslationError, pack, to_message, translate
from knotwork.testing import make_ca, make_certificate

ADS = {"ads": {}, "resource_api_version": "V3"}
CHAINS = (ServerTls("cert-a", ("a.example.com",), client_ca="ca", min_version="1.3"),
          ServerTls("cert-b", ("b.example.com", "*.example.org")), ServerTls("cert-b"))


def gateway(port: int = 8443, chains: tuple[ServerTls, ...] = CHAINS) -> Listener:
    return Listener("gateway|443", "127.0.0.1", port, "gateway", route_table="gateway|443", server_tls=chains)


def test_chains_become_filter_chains_by_sni_with_sds_certificates():
    out = translate("listeners", gateway())
    assert out["listener_filters"] == [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]
    first, second, fallback = out["filter_chains"]
    assert first["filter_chain_match"] == {"server_names": ["a.example.com"]}
    assert second["filter_chain_match"] == {"server_names": ["b.example.com", "*.example.org"]}
    assert "filter_chain_match" not in fallback
    tls = first["transport_socket"]["typed_config"]
    assert tls["@type"].endswith("DownstreamTlsContext")
    assert tls["require_client_certificate"] is True
    common = tls["common_tls_context"]
    assert common["tls_certificate_sds_secret_configs"] == [{"name": "cert-a", "sds_config": ADS}]
    assert common["validation_context_sds_secret_config"] == {"name": "ca", "sds_config": ADS}
    assert common["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_3"}
    assert common["alpn_protocols"] == ["http/1.1"]
    plain = second["transport_socket"]["typed_config"]
    assert "require_client_certificate" not in plain
    assert plain["common_tls_context"]["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_2"}
    assert first["filters"] == second["filters"]  # one HTTP connection manager for every chain
    to_message("listeners", out)  # Envoy's API accepts it
    pack("listeners", gateway())


def test_plain_listeners_have_no_tls_inspector():
    out = translate("listeners", gateway(chains=()))
    assert "listener_filters" not in out and "transport_socket" not in out["filter_chains"][0]


def test_secrets_translate_to_sds_certificates_and_trust_bundles():
    assert translate("secrets", Secret("c", "CHAIN", "KEY")) == {"name": "c", "tls_certificate": {
        "certificate_chain": {"inline_string": "CHAIN"}, "private_key": {"inline_string": "KEY"}}}
    assert translate("secrets", Secret("ca", trust_bundle="CA")) == {
        "name": "ca", "validation_context": {"trusted_ca": {"inline_string": "CA"}}}


@pytest.mark.parametrize(("lis", "problem"), [
    (gateway(chains=(ServerTls("c", min_version="1.1"),)), "server_tls: version '1.1'"),
    (Listener("t", "127.0.0.1", 1, "gateway", protocol="tcp", cluster="c", server_tls=(ServerTls("c"),)),
     "TLS is terminated on http listeners only"),
])
def test_tls_that_envoy_cannot_do_is_refused(lis, problem):
    with pytest.raises(TranslationError, match=problem):
        translate("listeners", lis)


def test_redirects_carry_scheme_and_port():
    r = Route("https", RouteMatch(prefix="/"), redirect=Redirect(scheme="https", port=8443))
    out = translate("routes", table("rt", ("vh", ("*",), (r,))))
    assert out["virtual_hosts"][0]["routes"][0]["redirect"] == {
        "response_code": "MOVED_PERMANENTLY", "scheme_redirect": "https", "port_redirect": 8443}
    r0 = Route("https", RouteMatch(prefix="/"), redirect=Redirect(scheme="https", port=0))
    assert "port_redirect" not in translate("routes", table("rt", ("vh", ("*",), (r0,))))["virtual_hosts"][0]["routes"][0]["redirect"]


# ── a real Envoy ─────────────────────────────────────────────────────────────


async def https_get(port: int, sni: str, cafile: Path) -> x509.Certificate:
    """One HTTPS request with SNI `sni` (verified against `cafile`); returns the presented certificate."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni), 10)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(f"GET /x HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    return x509.load_der_x509_certificate(der)


@pytest.mark.anyio
async def test_envoy_terminates_tls_by_sni_and_serves_a_renewed_certificate(tmp_path: Path):
    ca = make_ca(tmp_path / "ca")
    a, b = make_certificate(ca, tmp_path / "a", "a.example.com"), make_certificate(ca, tmp_path / "b", "b.example.com")
    up = Upstream("up")
    cache, port = SnapshotCache(), free_port()

    def publish(cert_a: tuple[Path, Path]) -> None:
        chains = (ServerTls("cert-a", ("a.example.com",)), ServerTls("cert-b", ("b.example.com",)))
        cache.set(NODE, snapshot(
            gateway(port, chains), table("gateway|443", ("vh", ("*",), (route("r", "c"),))),
            *clusters({"c": [up.addr]}),
            Secret("cert-a", cert_a[0].read_text(), cert_a[1].read_text()),
            Secret("cert-b", b[0].read_text(), b[1].read_text())))
        cache.notify()

    async with running(up):
        publish(a)
        async with xds_server(cache) as server, envoy_proxy(server.address):
            cert = await wait_for(lambda: _try(https_get(port, "a.example.com", ca)), 15, "TLS on the gateway")
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert names.get_values_for_type(x509.DNSName) == ["a.example.com"]
            cert_b = await https_get(port, "b.example.com", ca)
            assert cert_b.subject != cert.subject
            with pytest.raises((ssl.SSLError, ConnectionError)):  # no chain names it
                await https_get(port, "c.example.com", ca)
            renewed = make_certificate(ca, tmp_path / "a2", "a.example.com")
            publish(renewed)
            want = x509.load_pem_x509_certificate(renewed[0].read_bytes()).serial_number

            async def renewed_served() -> bool:
                return (await https_get(port, "a.example.com", ca)).serial_number == want

            await wait_for(lambda: _try(renewed_served()), 15, "the renewed certificate to be served")


async def _try(coro):
    """Await `coro`; a failed handshake or connection counts as not yet."""
    try:
        return await coro
    except (OSError, ssl.SSLError, asyncio.TimeoutError, AssertionError):
        return None
