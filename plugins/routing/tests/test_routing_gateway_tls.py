"""Gateway servers with TLS: certificates read from files into Secrets, SNI chains, httpsRedirect, errors."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from knotwork.proxyconfig import Redirect, ServerTls, SnapshotBuilder
from routing_helpers import (
    BOOKINFO_ENDPOINTS, BOOKINFO_SERVICES, Req, compile_input, compile_snapshot, gateway_node, resource, router, target,
)
from knotwork.testing import make_ca, make_certificate

from knotwork_routing import SLOTS, ResourceError, compile_proxy

PRODUCTPAGE = "outbound|9080||productpage.default.svc.cluster.local"
NODE = gateway_node({"gateway:80": 8080, "gateway:443": 8443})


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d / "ca")
    files = {"ca": ca}
    for stem, names in (("bookinfo", ("bookinfo.example.com",)), ("other", ("other.example.com",)),
                        ("wild", ("*.example.org",))):
        files[f"{stem}.crt"], files[f"{stem}.key"] = make_certificate(ca, d / stem, *names)
    return files


def server(port: int = 443, hosts=("bookinfo.example.com",), protocol: str = "HTTPS", tls: dict | None = None,
           **more) -> dict:
    out = {"port": {"number": port, "name": protocol.lower(), "protocol": protocol}, "hosts": list(hosts)}
    if tls or more:
        out["tls"] = {**(tls or {}), **more}
    return out


def simple(pki, stem: str = "bookinfo", **more) -> dict:
    return {"mode": "SIMPLE", "serverCertificate": str(pki[f"{stem}.crt"]), "privateKey": str(pki[f"{stem}.key"]), **more}


def gateway(*servers: dict, name: str = "mygateway"):
    return resource("Gateway", name, {"selector": {"istio": "ingressgateway"}, "servers": list(servers)})


def bookinfo_vs(hosts=("bookinfo.example.com",), gateways=("mygateway",)):
    return resource("VirtualService", "bookinfo", {
        "hosts": list(hosts), "gateways": list(gateways),
        "http": [{"match": [{"uri": {"exact": "/productpage"}}],
                  "route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}]}],
    })


def compile_gw(*resources, mesh_dir: Path | None = None, node=NODE):
    inp = attrs.evolve(compile_input(node, BOOKINFO_SERVICES, BOOKINFO_ENDPOINTS, resources), mesh_dir=mesh_dir)
    builder = SnapshotBuilder().as_compiler("networking", SLOTS)
    compile_proxy(builder, inp)
    return builder.snapshot()


def test_simple_tls_server_gets_a_tls_listener_and_its_certificate_as_a_secret(pki):
    snap = compile_gw(gateway(server(tls=simple(pki))), bookinfo_vs())
    listener = snap.resources["listeners"]["gateway|443"]
    name = f"file-cert:{pki['bookinfo.crt']}~{pki['bookinfo.key']}"
    assert (listener.port, listener.route_table) == (8443, "gateway|443")
    assert listener.server_tls == (ServerTls(certificate=name, server_names=("bookinfo.example.com",)),)
    secret = snap.resources["secrets"][name]
    assert secret.certificate_chain == pki["bookinfo.crt"].read_text()
    assert secret.private_key == pki["bookinfo.key"].read_text()
    r = router(snap, "gateway|443")
    assert target(r.match(Req("bookinfo.example.com:8443", "/productpage"))) == PRODUCTPAGE
    assert r.match(Req("other.example.com", "/productpage")) is None


def test_relative_paths_resolve_against_the_mesh_directory(pki):
    base = pki["ca"].parent
    snap = compile_gw(gateway(server(tls={"mode": "SIMPLE", "serverCertificate": "bookinfo.crt",
                                          "privateKey": "bookinfo.key"})), bookinfo_vs(), mesh_dir=base)
    (chain,) = snap.resources["listeners"]["gateway|443"].server_tls
    assert chain.certificate == f"file-cert:{base / 'bookinfo.crt'}~{base / 'bookinfo.key'}"


def test_servers_on_one_port_choose_certificates_by_sni_and_star_is_the_fallback(pki):
    gw = gateway(server(tls=simple(pki)), server(hosts=["other.example.com"], tls=simple(pki, "other")),
                 server(hosts=["*.example.org"], tls=simple(pki, "wild", minProtocolVersion="TLSV1_3")),
                 server(hosts=["*"], tls=simple(pki)))
    snap = compile_gw(gw, bookinfo_vs(hosts=["bookinfo.example.com", "other.example.com"]))
    chains = {c.server_names: c for c in snap.resources["listeners"]["gateway|443"].server_tls}
    assert set(chains) == {("bookinfo.example.com",), ("other.example.com",), ("*.example.org",), ()}
    assert chains[("other.example.com",)].certificate.startswith(f"file-cert:{pki['other.crt']}")
    assert chains[("*.example.org",)].min_version == "1.3"
    assert chains[()].certificate == chains[("bookinfo.example.com",)].certificate
    assert len(snap.resources["secrets"]) == 3  # one per distinct certificate


def test_a_name_claimed_by_an_earlier_server_stays_with_it(pki):
    gw = gateway(server(tls=simple(pki)), server(hosts=["bookinfo.example.com", "other.example.com"], tls=simple(pki, "other")))
    snap = compile_gw(gw, bookinfo_vs())
    chains = {c.server_names: c.certificate for c in snap.resources["listeners"]["gateway|443"].server_tls}
    assert chains[("bookinfo.example.com",)].startswith(f"file-cert:{pki['bookinfo.crt']}")
    assert chains[("other.example.com",)].startswith(f"file-cert:{pki['other.crt']}")


def test_mutual_tls_names_the_client_ca_secret(pki):
    snap = compile_gw(gateway(server(tls=simple(pki, mode="MUTUAL", caCertificates=str(pki["ca"])))), bookinfo_vs())
    (chain,) = snap.resources["listeners"]["gateway|443"].server_tls
    assert chain.client_ca == f"file-root:{pki['ca']}"
    assert snap.resources["secrets"][chain.client_ca].trust_bundle == pki["ca"].read_text()


def test_https_redirect_answers_the_plain_port_with_a_301_to_the_tls_listener(pki):
    gw = gateway(server(port=80, protocol="HTTP", httpsRedirect=True), server(tls=simple(pki)))
    snap = compile_gw(gw, bookinfo_vs())
    assert snap.resources["listeners"]["gateway|80"].server_tls == ()
    route = router(snap, "gateway|80").match(Req("bookinfo.example.com:8080", "/productpage"))
    assert route.redirect == Redirect(scheme="https", port=8443, status=301)
    assert target(router(snap, "gateway|443").match(Req("bookinfo.example.com", "/productpage"))) == PRODUCTPAGE
    # a gateway listening on 443 itself: the port is dropped from the location
    snap = compile_gw(gw, bookinfo_vs(), node=gateway_node({"gateway:80": 80, "gateway:443": 443}))
    assert router(snap, "gateway|80").match(Req("bookinfo.example.com", "/")).redirect.port == 0


def test_a_renewed_certificate_file_is_read_on_the_next_compile(tmp_path):
    ca = make_ca(tmp_path / "ca")
    make_certificate(ca, tmp_path / "tls", "bookinfo.example.com")
    tls = {"mode": "SIMPLE", "serverCertificate": "tls.crt", "privateKey": "tls.key"}
    first = compile_gw(gateway(server(tls=tls)), bookinfo_vs(), mesh_dir=tmp_path)
    make_certificate(ca, tmp_path / "tls", "bookinfo.example.com")
    second = compile_gw(gateway(server(tls=tls)), bookinfo_vs(), mesh_dir=tmp_path)
    (name,) = first.resources["secrets"]
    assert first.resources["secrets"][name].certificate_chain != second.resources["secrets"][name].certificate_chain
    assert first.versions["secrets"][name] != second.versions["secrets"][name]
    assert first.versions["listeners"] == second.versions["listeners"]  # only the secret is pushed again


@pytest.mark.parametrize(("tls", "field", "problem"), [
    ({"mode": "SIMPLE", "credentialName": "bookinfo-credential"}, "tls.credentialName", "Kubernetes secrets are not supported"),
    ({"mode": "PASSTHROUGH"}, "tls.mode", "passthrough"),
    ({"mode": "ISTIO_MUTUAL"}, "tls.mode", "ISTIO_MUTUAL"),
    ({"mode": "BOGUS"}, "tls.mode", "expected SIMPLE or MUTUAL"),
    ({"mode": "SIMPLE", "privateKey": "x.key"}, "tls.serverCertificate", "required"),
    ({"mode": "SIMPLE", "serverCertificate": "missing.crt", "privateKey": "missing.key"}, "tls.serverCertificate",
     "cannot read"),
    ({"mode": "SIMPLE", "serverCertificate": "bookinfo.key", "privateKey": "bookinfo.key"}, "tls.serverCertificate",
     "no PEM certificate"),
    ({"mode": "SIMPLE", "serverCertificate": "bookinfo.crt", "privateKey": "bookinfo.crt"}, "tls.privateKey",
     "no unencrypted PEM private key"),
    ({"mode": "SIMPLE", "serverCertificate": "bookinfo.crt", "privateKey": "other.key"}, "tls.privateKey",
     "is not the private key of the certificate"),
    ({"mode": "MUTUAL", "serverCertificate": "bookinfo.crt", "privateKey": "bookinfo.key"}, "tls.caCertificates",
     "required for mode MUTUAL"),
    ({"mode": "SIMPLE", "serverCertificate": "bookinfo.crt", "privateKey": "bookinfo.key",
      "minProtocolVersion": "TLSV1_0"}, "tls.minProtocolVersion", "TLS 1.2 is the lowest"),
    ({"mode": "SIMPLE", "serverCertificate": "bookinfo.crt", "privateKey": "bookinfo.key",
      "minProtocolVersion": "TLSV1_3", "maxProtocolVersion": "TLSV1_2"}, "tls.minProtocolVersion", "above"),
    ({"mode": "SIMPLE", "serverCertificate": "bookinfo.crt", "privateKey": "bookinfo.key", "sni": "x"}, "tls.sni",
     "unknown field"),
])
def test_tls_that_cannot_be_served_is_an_error_naming_gateway_and_field(pki, tls, field, problem):
    with pytest.raises(ResourceError) as err:
        compile_gw(gateway(server(tls=tls)), bookinfo_vs(), mesh_dir=pki["ca"].parent)
    assert err.value.field == f"spec.servers[0].{field}"
    assert problem in err.value.problem
    assert str(err.value).startswith("plugin/routing: Gateway/default/mygateway")


def test_https_without_tls_and_tls_on_a_plain_port_are_errors(pki):
    with pytest.raises(ResourceError, match=r"spec.servers\[0\].tls.mode: an HTTPS server needs tls mode"):
        compile_gw(gateway(server()), bookinfo_vs())
    with pytest.raises(ResourceError, match=r"spec.servers\[1\].tls: port 443 is already served with TLS by "
                                            r"Gateway/default/mygateway spec.servers\[0\]"):
        compile_gw(gateway(server(tls=simple(pki)), server(hosts=["other.example.com"], protocol="HTTP")), bookinfo_vs())
    with pytest.raises(ResourceError, match="TLS is terminated on HTTPS servers, not HTTP"):
        compile_gw(gateway(server(protocol="HTTP", tls=simple(pki))), bookinfo_vs())


def test_the_kernel_compile_path_reads_files_relative_to_the_mesh_dir(pki):
    # compile_snapshot (no mesh_dir) resolves relative paths against the working directory
    with pytest.raises(ResourceError, match="cannot read"):
        compile_snapshot(NODE, BOOKINFO_SERVICES, BOOKINFO_ENDPOINTS,
                         [gateway(server(tls={"mode": "SIMPLE", "serverCertificate": "bookinfo.crt",
                                              "privateKey": "bookinfo.key"})), bookinfo_vs()])
