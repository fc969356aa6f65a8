"""Listeners terminating TLS (a gateway's HTTPS servers): certificates by SNI, mutual TLS,
protocol versions, renewal without rebinding, and secrets the data plane refuses (NACK).

Real TLS over loopback sockets: the client is the stdlib's ``ssl`` with SNI and
verification against a throw-away CA; the upstream is a plain HTTP server.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography import x509
from knotwork.proxyconfig import Redirect, Route, RouteMatch, Secret, ServerTls

from test_dataplane_support import both_event_loops  # noqa: F401 - the anyio_backend fixture
from test_dataplane_support import Upstream, dataplane, http_listener, one_route, resources, table
from knotwork.testing import make_ca, make_certificate

pytestmark = pytest.mark.anyio
NAMES = ("a.example.com", "b.example.com", "*.example.org")


@pytest.fixture
async def up():
    upstream = await Upstream().start()
    yield upstream
    await upstream.close()


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = make_ca(tmp_path / "ca")
    out: dict[str, Any] = {"ca": ca, "dir": tmp_path}
    for i, name in enumerate(NAMES):
        out[name] = make_certificate(ca, tmp_path / f"server{i}", name)
    out["client"] = make_certificate(ca, tmp_path / "client", "client.example.com", client=True)
    return out


def cert_secret(pki: dict[str, Any], name: str, secret: str | None = None) -> Secret:
    crt, key = pki[name]
    return Secret(secret or f"cert-{name}", certificate_chain=crt.read_text(), private_key=key.read_text())


def tls_resources(pki: dict[str, Any], *chains: ServerTls, secrets: tuple[Secret, ...] = (), upstream: Upstream) -> dict:
    res = resources(http_listener("gw", mode="gateway", server_tls=chains),
                    tables=[one_route("c")], clusters={"c": [upstream.addr]})
    for name in NAMES:
        res["secrets"][f"cert-{name}"] = cert_secret(pki, name)
    res["secrets"]["ca"] = Secret("ca", trust_bundle=pki["ca"].read_text())
    for s in secrets:
        res["secrets"][s.name] = s
    return res


def client_context(pki: dict[str, Any], *, client_cert: bool = False, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if client_cert:
        crt, key = pki["client"]
        ctx.load_cert_chain(str(crt), str(key))
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


async def https_get(port: int, sni: str, ctx: ssl.SSLContext, path: str = "/", host: str | None = None
                    ) -> tuple[int, dict[str, str], x509.Certificate]:
    """One HTTPS request with SNI `sni`; returns status, headers and the certificate the proxy presented."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni), 10)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(f"GET {path} HTTP/1.1\r\nhost: {host or sni}\r\nconnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    if not head[0]:
        raise ConnectionResetError("the proxy closed the connection without a response")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
    return int(head[0].split()[1]), headers, x509.load_der_x509_certificate(der)


def dns_names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


CHAINS = (ServerTls("cert-a.example.com", ("a.example.com",)), ServerTls("cert-b.example.com", ("b.example.com",)),
          ServerTls("cert-*.example.org", ("*.example.org",)))


async def test_certificate_is_chosen_by_sni_and_requests_are_routed(pki, up):
    async with dataplane(tls_resources(pki, *CHAINS, upstream=up)) as dp:
        port = dp.port_of("gw")
        ctx = client_context(pki)
        for sni, want in (("a.example.com", "a.example.com"), ("b.example.com", "b.example.com"),
                          ("x.example.org", "*.example.org")):
            status, _, cert = await https_get(port, sni, ctx)
            assert status == 200
            assert dns_names(cert) == [want]
        assert up.requests[-1].headers["x-forwarded-proto"] == "https"
        with pytest.raises((ssl.SSLError, ConnectionError)):  # no chain for this name and no fallback: refused in the handshake
            await https_get(port, "c.example.com", ssl.create_default_context(cafile=str(pki["ca"])))
        assert dp.status()["listeners"][0]["tls"] is True


async def test_a_chain_without_names_is_the_fallback(pki, up):
    chains = (CHAINS[0], ServerTls("cert-b.example.com"))
    async with dataplane(tls_resources(pki, *chains, upstream=up)) as dp:
        ctx = client_context(pki)
        ctx.check_hostname = False  # the fallback's certificate does not name c.example.com
        _, _, cert = await https_get(dp.port_of("gw"), "c.example.com", ctx)
        assert dns_names(cert) == ["b.example.com"]


async def test_a_renewed_certificate_is_served_without_rebinding(pki, up):
    res = tls_resources(pki, CHAINS[0], upstream=up)
    async with dataplane(res) as dp:
        port = dp.port_of("gw")
        _, _, before = await https_get(port, "a.example.com", client_context(pki))
        renewed = make_certificate(pki["ca"], pki["dir"] / "renewed", "a.example.com")
        res["secrets"]["cert-a.example.com"] = Secret("cert-a.example.com", renewed[0].read_text(), renewed[1].read_text())
        await dp.apply(dp.build(res))
        assert dp.port_of("gw") == port
        _, _, after = await https_get(port, "a.example.com", client_context(pki))
        assert after.serial_number != before.serial_number
        assert after.serial_number == x509.load_pem_x509_certificate(renewed[0].read_bytes()).serial_number


async def test_mutual_tls_requires_a_client_certificate_signed_by_the_ca(pki, up):
    chains = (ServerTls("cert-a.example.com", ("a.example.com",), client_ca="ca"), CHAINS[1])
    async with dataplane(tls_resources(pki, *chains, upstream=up)) as dp:
        port = dp.port_of("gw")
        status, _, _ = await https_get(port, "a.example.com", client_context(pki, client_cert=True))
        assert status == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await https_get(port, "a.example.com", client_context(pki))
        # the SIMPLE chain on the same port asks nothing of the client
        assert (await https_get(port, "b.example.com", client_context(pki)))[0] == 200
        # a certificate from another CA is refused
        other = make_ca(pki["dir"] / "other-ca")
        crt, key = make_certificate(other, pki["dir"] / "intruder", "intruder", client=True)
        ctx = client_context(pki)
        ctx.load_cert_chain(str(crt), str(key))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await https_get(port, "a.example.com", ctx)


async def test_minimum_protocol_version_is_enforced_per_chain(pki, up):
    chains = (ServerTls("cert-a.example.com", ("a.example.com",), min_version="1.3"), CHAINS[1])
    async with dataplane(tls_resources(pki, *chains, upstream=up)) as dp:
        port = dp.port_of("gw")
        old = client_context(pki, max_version=ssl.TLSVersion.TLSv1_2)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await https_get(port, "a.example.com", old)
        assert (await https_get(port, "b.example.com", old))[0] == 200
        assert (await https_get(port, "a.example.com", client_context(pki)))[0] == 200


async def test_redirect_to_https_names_scheme_and_port():
    routes = (Route("https", RouteMatch(prefix="/"), redirect=Redirect(scheme="https", port=8443)),)
    res = resources(http_listener("plain", mode="gateway"), tables=[table("rt", ("vh", ("*",), routes))])
    async with dataplane(res) as dp:
        reader, writer = await asyncio.open_connection("127.0.0.1", dp.port_of("plain"))
        writer.write(b"GET /productpage?u=1 HTTP/1.1\r\nhost: bookinfo.example.com:8080\r\nconnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert data.startswith(b"HTTP/1.1 301")
        assert b"location: https://bookinfo.example.com:8443/productpage?u=1\r\n" in data


@pytest.mark.parametrize(("change", "problem"), [
    (lambda res: res["secrets"].pop("cert-a.example.com"), "references missing secret"),
    (lambda res: res["secrets"].update({"cert-a.example.com": Secret("cert-a.example.com", "junk", "junk")}),
     "certificate chain or key refused"),
    (lambda res: res["secrets"].update({"ca": Secret("ca", trust_bundle="junk")}), "trust bundle refused"),
])
async def test_secrets_that_cannot_be_loaded_are_refused(pki, up, change, problem):
    chains = (ServerTls("cert-a.example.com", ("a.example.com",), client_ca="ca"),)
    res = tls_resources(pki, *chains, upstream=up)
    async with dataplane(res) as dp:
        bad = {t: dict(v) for t, v in res.items()}
        change(bad)
        with pytest.raises(ValueError, match=problem):
            dp.build(bad)
        # the last good config keeps serving
        assert (await https_get(dp.port_of("gw"), "a.example.com", client_context(pki, client_cert=True)))[0] == 200


async def test_tls_versions_outside_12_and_13_are_refused(pki, up):
    chains = (attrs.evolve(CHAINS[0], min_version="1.1"),)
    async with dataplane(tls_resources(pki, *CHAINS[1:], upstream=up)) as dp:
        with pytest.raises(ValueError, match="listener 'gw': min_version '1.1' is not one of"):
            dp.build(tls_resources(pki, *chains, upstream=up))
