"""Outbound clusters' TLS: auto-mTLS, DestinationRule tls modes and their precedence, TLS origination."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import structlog
from knotwork import Protocol, Resource, Service, ServicePort
from knotwork.proxyconfig import MESH_ALPN_HTTP, MESH_ALPN_TCP, SnapshotBuilder, UpstreamTls
from knotwork.testing import make_ca, make_certificate
from routing_helpers import SELECTION, compile_input, endpoint, fqdn, gateway_node, http_service, resource, sidecar

from knotwork_routing import SLOTS, ResourceError, compile_proxy

CA = {**SELECTION, "certificate_authority": "ca"}
REVIEWS = fqdn("reviews")
SA = "spiffe://cluster.local/ns/default/sa/"
SERVICES = (http_service("productpage"), http_service("reviews"),
            Service("mongodb", "default", (ServicePort(27017, "mongo", Protocol.TCP, target_port=27018),)))
ENDPOINTS = (
    endpoint("productpage", "127.0.0.1", 20001, service_port=9080, labels={"app": "productpage"},
             identity=SA + "productpage"),
    endpoint("reviews", "127.0.0.2", 20003, service_port=9080, labels={"app": "reviews", "version": "v1"},
             identity=SA + "reviews-v1"),
    endpoint("reviews", "127.0.0.3", 20004, service_port=9080, labels={"app": "reviews", "version": "v2"},
             identity=SA + "reviews-v2"),
    endpoint("reviews", "127.0.0.4", 20005, service_port=9080, labels={"app": "reviews", "version": "v3"}),  # plain
    endpoint("mongodb", "127.0.0.5", 20006, service_port=27017, labels={"app": "mongodb"}, identity=SA + "mongodb"),
)
SUBSETS = [{"name": f"v{i}", "labels": {"version": f"v{i}"}} for i in (1, 2, 3)]
#: Routes to every subset, so the subset clusters exist.
SPLIT = resource("VirtualService", "reviews", {"hosts": ["reviews"], "http": [{"route": [
    {"destination": {"host": "reviews", "subset": f"v{i}"}, "weight": w} for i, w in ((1, 34), (2, 33), (3, 33))]}]})


def rule(spec: dict, name: str = "reviews", host: str = "reviews") -> Resource:
    return resource("DestinationRule", name, {"host": host, **spec})


def compile_split(*resources, **kw):
    return compile_(SPLIT, *resources, **kw)


def peer_auth(name: str, mode: str, ns: str = "default", selector: dict | None = None, ports: dict | None = None):
    spec: dict = {"mtls": {"mode": mode}}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    if ports:
        spec["portLevelMtls"] = {p: {"mode": m} for p, m in ports.items()}
    return Resource("security.istio.io/v1beta1", "PeerAuthentication", name, ns, spec)


def compile_(*resources, node=None, selection=CA, services=SERVICES, endpoints=ENDPOINTS, mesh_dir: Path | None = None):
    inp = compile_input(node or sidecar("productpage"), services, endpoints, resources, selection=selection)
    builder = SnapshotBuilder().as_compiler("networking", SLOTS)
    compile_proxy(builder, attrs.evolve(inp, mesh_dir=mesh_dir))
    return builder.snapshot()


def tls_of(snap, name: str = f"outbound|9080||{REVIEWS}") -> UpstreamTls | None:
    return snap.resources["clusters"][name].tls


def identities_of(snap, name: str = f"outbound|9080||{REVIEWS}") -> list[str | None]:
    return [ep.identity for ep in snap.resources["endpoints"][name].endpoints]


# ── auto-mTLS ───────────────────────────────────────────────────────────────


def test_auto_mtls_to_endpoints_with_identities():
    snap = compile_()
    assert tls_of(snap) == UpstreamTls("ISTIO_MUTUAL", identities=(SA + "reviews-v1", SA + "reviews-v2"), auto=True,
                                       sni=f"outbound_.9080_._.{REVIEWS}", alpn=MESH_ALPN_HTTP)
    assert identities_of(snap) == [SA + "reviews-v1", SA + "reviews-v2", None]  # v3 has no sidecar: plaintext


def test_auto_mtls_on_subset_clusters_and_tcp():
    snap = compile_split(rule({"subsets": SUBSETS}))
    assert tls_of(snap, f"outbound|9080|v1|{REVIEWS}") == UpstreamTls(
        "ISTIO_MUTUAL", identities=(SA + "reviews-v1",), auto=True, sni=f"outbound_.9080_.v1_.{REVIEWS}",
        alpn=MESH_ALPN_HTTP)
    assert tls_of(snap, f"outbound|9080|v3|{REVIEWS}") is None  # no endpoint has a sidecar
    mongo = tls_of(snap, f"outbound|27017||{fqdn('mongodb')}")
    assert mongo is not None and mongo.alpn == MESH_ALPN_TCP and mongo.auto


def test_no_certificate_authority_means_no_tls_anywhere():
    dr = rule({"trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}, name="reviews-no-ca")
    with structlog.testing.capture_logs() as logs:
        snap = compile_(dr, selection=SELECTION)
    assert all(c.tls is None for c in snap.resources["clusters"].values())
    assert identities_of(snap) == [SA + "reviews-v1", SA + "reviews-v2", None]
    assert any(e.get("resource") == "DestinationRule/default/reviews-no-ca" and e["field"] == "spec.trafficPolicy.tls"
               for e in logs)


def test_gateways_get_auto_mtls_too():
    snap = compile_(node=gateway_node())
    assert tls_of(snap).auto and tls_of(snap).identities == (SA + "reviews-v1", SA + "reviews-v2")


def test_no_identities_no_tls():
    plain = tuple(attrs.evolve(ep, identity=None) for ep in ENDPOINTS)
    snap = compile_(endpoints=plain)
    assert all(c.tls is None for c in snap.resources["clusters"].values())


# ── auto-mTLS follows the server's PeerAuthentication ───────────────────────


def test_auto_mtls_off_when_every_server_disables_it():
    snap = compile_(peer_auth("default", "DISABLE"))
    assert tls_of(snap) is None and tls_of(snap, f"outbound|9080||{fqdn('productpage')}") is None


def test_auto_mtls_off_only_for_the_workloads_that_disable_it():
    snap = compile_(peer_auth("reviews-v1", "DISABLE", selector={"version": "v1"}))
    assert tls_of(snap).identities == (SA + "reviews-v2",)
    assert identities_of(snap) == [None, SA + "reviews-v2", None]
    assert tls_of(snap, f"outbound|9080||{fqdn('productpage')}").identities == (SA + "productpage",)


def test_auto_mtls_looks_at_the_servers_workload_port():
    by_target = peer_auth("mongo", "STRICT", selector={"app": "mongodb"}, ports={27018: "DISABLE"})
    assert tls_of(compile_(by_target), f"outbound|27017||{fqdn('mongodb')}") is None
    by_service_port = peer_auth("mongo", "STRICT", selector={"app": "mongodb"}, ports={27017: "DISABLE"})
    assert tls_of(compile_(by_service_port), f"outbound|27017||{fqdn('mongodb')}") is not None


def test_namespace_disable_with_a_strict_workload_keeps_mtls_to_that_workload():
    snap = compile_(peer_auth("default", "DISABLE"), peer_auth("v2", "STRICT", selector={"version": "v2"}))
    assert tls_of(snap).identities == (SA + "reviews-v2",)


def test_server_policies_of_other_namespaces_do_not_count():
    snap = compile_(peer_auth("default", "DISABLE", ns="prod"))
    assert tls_of(snap) is not None


def test_subset_disable_of_a_rule_applies_per_endpoint_of_the_default_cluster():
    """Istio's per-endpoint check: the first subset an endpoint belongs to decides its mode."""
    subsets = [{**SUBSETS[0], "trafficPolicy": {"tls": {"mode": "DISABLE"}}}, *SUBSETS[1:]]
    snap = compile_split(rule({"subsets": subsets}))
    assert tls_of(snap).identities == (SA + "reviews-v2",)
    assert tls_of(snap, f"outbound|9080|v1|{REVIEWS}") is None


def test_subset_istio_mutual_keeps_mtls_despite_a_disabling_server():
    subsets = [{**SUBSETS[0], "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}, *SUBSETS[1:]]
    snap = compile_(rule({"subsets": subsets}), peer_auth("default", "DISABLE"))
    assert tls_of(snap).identities == (SA + "reviews-v1",) and tls_of(snap).auto


# ── DestinationRule tls ─────────────────────────────────────────────────────


def test_istio_mutual_checks_every_endpoint_identity():
    snap = compile_(rule({"trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}))
    assert tls_of(snap) == UpstreamTls("ISTIO_MUTUAL", identities=(SA + "reviews-v1", SA + "reviews-v2"),
                                       sni=f"outbound_.9080_._.{REVIEWS}", alpn=MESH_ALPN_HTTP)
    assert identities_of(snap) == [SA + "reviews-v1", SA + "reviews-v2", None]


def test_istio_mutual_with_sni_and_subject_alt_names():
    tls = {"mode": "ISTIO_MUTUAL", "sni": "reviews.example", "subjectAltNames": [SA + "b", SA + "a"]}
    snap = compile_(rule({"trafficPolicy": {"tls": tls}}))
    assert (tls_of(snap).sni, tls_of(snap).identities) == ("reviews.example", (SA + "a", SA + "b"))


def test_istio_mutual_even_against_a_disabling_server():
    snap = compile_(rule({"trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}), peer_auth("default", "DISABLE"))
    assert tls_of(snap).mode == "ISTIO_MUTUAL" and not tls_of(snap).auto


@pytest.mark.parametrize("tls", [{"mode": "DISABLE"}, {}, {"sni": "x"}])
def test_disable_and_a_tls_block_without_mode_are_plaintext(tls):
    assert tls_of(compile_(rule({"trafficPolicy": {"tls": tls}}))) is None


def test_subset_policy_overrides_the_rules():
    subsets = [{**SUBSETS[0], "trafficPolicy": {"tls": {"mode": "DISABLE"}}}, SUBSETS[1],
               {**SUBSETS[2], "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}]
    snap = compile_split(rule({"trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}, "subsets": subsets}))
    assert tls_of(snap, f"outbound|9080|v1|{REVIEWS}") is None
    assert tls_of(snap, f"outbound|9080|v2|{REVIEWS}").sni == f"outbound_.9080_.v2_.{REVIEWS}"
    v3 = tls_of(snap, f"outbound|9080|v3|{REVIEWS}")  # a subset policy without tls inherits the rule's
    assert v3 is not None and v3.mode == "ISTIO_MUTUAL" and not v3.auto


def test_port_level_settings_replace_the_policy_and_do_not_inherit():
    """Istio: a port-level entry replaces the whole policy; without tls it leaves none (auto-mTLS)."""
    spec = {"trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}, "portLevelSettings": [
        {"port": {"number": 9080}, "loadBalancer": {"simple": "RANDOM"}}]}}
    assert tls_of(compile_(rule(spec))).auto
    spec["trafficPolicy"]["portLevelSettings"] = [{"port": {"number": 9080}, "tls": {"mode": "DISABLE"}}]
    assert tls_of(compile_(rule(spec))) is None
    spec["trafficPolicy"]["portLevelSettings"] = [{"port": {"number": 1234}, "tls": {"mode": "DISABLE"}}]
    tls = tls_of(compile_(rule(spec)))
    assert tls.mode == "ISTIO_MUTUAL" and not tls.auto


def test_auto_mtls_after_a_port_level_reset_still_honours_the_rules_disable():
    """Istio's endpoint check reads the rule's tls mode (a port entry without tls does not change it): the
    cluster is auto-mTLS, every endpoint plaintext."""
    spec = {"trafficPolicy": {"tls": {"mode": "DISABLE"}, "portLevelSettings": [
        {"port": {"number": 9080}, "loadBalancer": {"simple": "RANDOM"}}]}}
    snap = compile_(rule(spec))
    assert tls_of(snap) is None and identities_of(snap) == [SA + "reviews-v1", SA + "reviews-v2", None]


def test_subset_port_level_wins_over_everything():
    subsets = [{**SUBSETS[0], "trafficPolicy": {
        "tls": {"mode": "DISABLE"},
        "portLevelSettings": [{"port": {"number": 9080}, "tls": {"mode": "ISTIO_MUTUAL", "sni": "v1.port"}}]}}]
    spec = {"trafficPolicy": {"portLevelSettings": [{"port": {"number": 9080}, "tls": {"mode": "DISABLE"}}]},
            "subsets": subsets}
    snap = compile_split(rule(spec))
    assert tls_of(snap, f"outbound|9080|v1|{REVIEWS}").sni == "v1.port"
    assert tls_of(snap) is None
    subsets[0]["trafficPolicy"] = {"tls": {"mode": "ISTIO_MUTUAL"}, "portLevelSettings": [
        {"port": {"number": 9080}, "loadBalancer": {"simple": "RANDOM"}}]}
    v1 = tls_of(compile_split(rule(spec)), f"outbound|9080|v1|{REVIEWS}")
    assert v1.auto and v1.identities == (SA + "reviews-v1",)  # a port entry without tls: none, so auto-mTLS


@pytest.mark.parametrize(("tls", "field", "problem"), [
    ({"mode": "PLAIN"}, "spec.trafficPolicy.tls.mode", "expected one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL"),
    ({"mode": "ISTIO_MUTUAL", "snii": "x"}, "spec.trafficPolicy.tls.snii", "unknown field"),
    ({"mode": "ISTIO_MUTUAL", "sni": 3}, "spec.trafficPolicy.tls.sni", "expected a string"),
    ({"mode": "ISTIO_MUTUAL", "subjectAltNames": "spiffe://x"}, "spec.trafficPolicy.tls.subjectAltNames",
     "expected a list"),
])
def test_bad_tls_settings_are_resource_errors(tls, field, problem):
    with pytest.raises(ResourceError) as err:
        compile_(rule({"trafficPolicy": {"tls": tls}}))
    assert err.value.field == field and problem in err.value.problem


# ── TLS origination (SIMPLE / MUTUAL) for ServiceEntry hosts ────────────────

EXTERNAL = "api.example.com"


def external_entry(host: str = EXTERNAL) -> Resource:
    return resource("ServiceEntry", "api", {
        "hosts": [host], "location": "MESH_EXTERNAL", "resolution": "DNS",
        "ports": [{"number": 443, "name": "tls", "protocol": "TLS"},
                  {"number": 80, "name": "http", "protocol": "HTTP"}],
    })


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("origination")
    ca = make_ca(d / "ca")
    make_certificate(ca, d / "client", "client.example.com", client=True)
    make_certificate(ca, d / "other", "other.example.com", client=True)
    return d


def test_external_hosts_get_no_auto_mtls():
    snap = compile_(external_entry())
    assert tls_of(snap, f"outbound|80||{EXTERNAL}") is None


def test_istio_mutual_to_a_service_entry_host_checks_its_subject_alt_names():
    entry = external_entry()
    sans = ["spiffe://cluster.local/ns/vm/sa/api"]
    entry = attrs.evolve(entry, spec={**entry.spec, "subjectAltNames": sans, "location": "MESH_INTERNAL"})
    mutual = rule({"trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}, name="api", host=EXTERNAL)
    assert tls_of(compile_(entry, mutual), f"outbound|80||{EXTERNAL}").identities == tuple(sans)
    named = rule({"trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL", "subjectAltNames": ["spiffe://x/ns/a/sa/b"]}}},
                 name="api", host=EXTERNAL)
    assert tls_of(compile_(entry, named), f"outbound|80||{EXTERNAL}").identities == ("spiffe://x/ns/a/sa/b",)
    # without names anywhere: no identity to insist on (any SVID the mesh's bundle verifies)
    assert tls_of(compile_(external_entry(), mutual), f"outbound|80||{EXTERNAL}").identities == ()


def test_simple_origination_with_files_relative_to_the_mesh_dir(pki):
    dr = rule({"trafficPolicy": {"tls": {"mode": "SIMPLE", "caCertificates": "ca.crt",
                                         "subjectAltNames": ["api.example.com"]}}}, name="api", host=EXTERNAL)
    snap = compile_(external_entry(), dr, mesh_dir=pki)
    ca_file = pki / "ca.crt"
    tls = tls_of(snap, f"outbound|443||{EXTERNAL}")
    assert tls == UpstreamTls("SIMPLE", sni=EXTERNAL, ca_secret=f"file-root:{ca_file}",
                              subject_alt_names=("api.example.com",))
    secret = snap.resources["secrets"][f"file-root:{ca_file}"]
    assert secret.trust_bundle == ca_file.read_text() and not secret.private_key
    assert tls_of(snap, f"outbound|80||{EXTERNAL}").ca_secret == tls.ca_secret  # one Secret for both ports


def test_simple_without_ca_uses_system_roots_and_sni_defaults_to_the_host():
    dr = rule({"trafficPolicy": {"tls": {"mode": "SIMPLE"}}}, name="api", host=EXTERNAL)
    tls = tls_of(compile_(external_entry(), dr), f"outbound|443||{EXTERNAL}")
    assert tls == UpstreamTls("SIMPLE", sni=EXTERNAL)
    skip = rule({"trafficPolicy": {"tls": {"mode": "SIMPLE", "sni": "front.example", "insecureSkipVerify": True}}},
                name="api", host=EXTERNAL)
    assert tls_of(compile_(external_entry(), skip), f"outbound|443||{EXTERNAL}") == UpstreamTls(
        "SIMPLE", sni="front.example", insecure_skip_verify=True)


def test_wildcard_host_gets_no_default_sni():
    entry = resource("ServiceEntry", "wild", {"hosts": ["*.example.net"], "resolution": "NONE",
                                             "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}]})
    dr = rule({"trafficPolicy": {"tls": {"mode": "SIMPLE"}}}, name="wild", host="*.example.net")
    assert tls_of(compile_(entry, dr), "outbound|443||*.example.net").sni == ""


def test_mutual_origination_reads_client_certificate_and_key(pki):
    cert, key = pki / "client.crt", pki / "client.key"
    dr = rule({"trafficPolicy": {"tls": {"mode": "MUTUAL", "clientCertificate": str(cert), "privateKey": str(key)}}},
              name="api", host=EXTERNAL)
    snap = compile_(external_entry(), dr)
    tls = tls_of(snap, f"outbound|443||{EXTERNAL}")
    assert tls.mode == "MUTUAL" and tls.certificate == f"file-cert:{cert}~{key}" and tls.ca_secret is None
    secret = snap.resources["secrets"][tls.certificate]
    assert secret.certificate_chain == cert.read_text() and secret.private_key == key.read_text()


@pytest.mark.parametrize(("tls", "field", "problem"), [
    ({"mode": "MUTUAL"}, "spec.trafficPolicy.tls.clientCertificate", "required for mode MUTUAL"),
    ({"mode": "SIMPLE", "caCertificates": "missing.pem"}, "spec.trafficPolicy.tls.caCertificates", "cannot read"),
    ({"mode": "SIMPLE", "credentialName": "api-creds"}, "spec.trafficPolicy.tls.credentialName", "not supported"),
    ({"mode": "SIMPLE", "insecureSkipVerify": True, "caCertificates": "ca.pem"},
     "spec.trafficPolicy.tls.caCertificates", "insecureSkipVerify"),
    ({"mode": "SIMPLE", "insecureSkipVerify": True, "subjectAltNames": ["a"]},
     "spec.trafficPolicy.tls.subjectAltNames", "insecureSkipVerify"),
    ({"mode": "SIMPLE", "insecureSkipVerify": "yes"}, "spec.trafficPolicy.tls.insecureSkipVerify", "true or false"),
])
def test_origination_errors_name_the_field(tls, field, problem, tmp_path):
    dr = rule({"trafficPolicy": {"tls": tls}}, name="api", host=EXTERNAL)
    with pytest.raises(ResourceError) as err:
        compile_(external_entry(), dr, mesh_dir=tmp_path)
    assert err.value.field == field and problem in err.value.problem
    assert str(err.value).startswith("plugin/routing: DestinationRule/default/api")


def test_mismatched_key_is_an_error(pki):
    cert, key = pki / "client.crt", pki / "other.key"
    dr = rule({"trafficPolicy": {"tls": {"mode": "MUTUAL", "clientCertificate": str(cert), "privateKey": str(key)}}},
              name="api", host=EXTERNAL)
    with pytest.raises(ResourceError) as err:
        compile_(external_entry(), dr)
    assert err.value.field == "spec.trafficPolicy.tls.privateKey" and "not the private key" in err.value.problem
