"""ServiceEntry and outboundTrafficPolicy in the networking compiler: what an egress config compiles to."""

from __future__ import annotations

import pytest
import structlog
from knotwork import MeshSettings, OutboundTrafficPolicy
from routing_helpers import BOOKINFO_ENDPOINTS, BOOKINFO_SERVICES, Req, compile_snapshot, gateway_node, resource, router, sidecar

from knotwork_routing.egress import PASSTHROUGH
from knotwork_routing.errors import ResourceError

ALLOW_ANY = MeshSettings(outbound_traffic_policy=OutboundTrafficPolicy.ALLOW_ANY)
REGISTRY_ONLY = MeshSettings(outbound_traffic_policy=OutboundTrafficPolicy.REGISTRY_ONLY)
HTTPBIN = "httpbin.example.com"


def entry(name: str, spec: dict, ns: str = "default"):
    return resource("ServiceEntry", name, spec, ns)


STATIC = entry("httpbin", {
    "hosts": [HTTPBIN],
    "location": "MESH_EXTERNAL",
    "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8000}],
    "resolution": "STATIC",
    "endpoints": [
        {"address": "127.0.0.10", "labels": {"version": "v1"}},
        {"address": "127.0.0.11", "labels": {"version": "v2"}, "ports": {"http": 9000}, "weight": 3},
    ],
})


def compile_(*resources, mesh=REGISTRY_ONLY, node=None):
    return compile_snapshot(node or sidecar("productpage"), BOOKINFO_SERVICES, BOOKINFO_ENDPOINTS, resources, mesh=mesh)


def vhost(snap, name):
    return next(v for v in snap.resources["routes"]["outbound"].virtual_hosts if v.name == name)


def cluster_of(route):
    (only,) = route.action.clusters
    return only.cluster


# ── ServiceEntry ────────────────────────────────────────────────────────────


def test_static_entry_is_a_known_host_with_its_endpoints():
    snap = compile_(STATIC)
    vh = vhost(snap, f"{HTTPBIN}:80")
    assert vh.domains == (HTTPBIN, f"{HTTPBIN}:80")  # as written: no short names for ServiceEntry hosts
    name = f"outbound|80||{HTTPBIN}"
    assert cluster_of(vh.routes[0]) == name
    cluster = snap.resources["clusters"][name]
    assert (cluster.resolution, cluster.protocol, cluster.port, cluster.service) == ("static", "http", 80, HTTPBIN)
    eps = snap.resources["endpoints"][name].endpoints
    # targetPort, unless the endpoint names a port for the port's name; labels and weight kept
    assert [(e.address, e.port, e.weight, dict(e.labels)) for e in eps] == [
        ("127.0.0.10", 8000, 1, {"version": "v1"}), ("127.0.0.11", 9000, 3, {"version": "v2"})]
    assert router(snap, "outbound").match(Req(HTTPBIN)).action.clusters[0].cluster == name


def test_dns_entry_resolves_its_host_or_its_endpoints_names():
    by_host = entry("local", {"hosts": ["api.local.test"], "ports": [{"number": 8080, "name": "http"}],
                              "resolution": "DNS"})
    by_endpoint = entry("named", {"hosts": ["named.example.com"], "ports": [{"number": 80, "name": "http"}],
                                  "resolution": "DNS", "endpoints": [{"address": "localhost", "ports": {"http": 18080}}]})
    snap = compile_(by_host, by_endpoint)
    for name, want in ((f"outbound|8080||api.local.test", ("api.local.test", 8080)),
                       ("outbound|80||named.example.com", ("localhost", 18080))):
        assert snap.resources["clusters"][name].resolution == "dns"
        (ep,) = snap.resources["endpoints"][name].endpoints
        assert (ep.address, ep.port) == want
    # a single HTTP port other than 80 still answers to the bare host
    assert vhost(snap, "api.local.test:8080").domains == ("api.local.test", "api.local.test:8080")


def test_none_resolution_passes_through_with_no_endpoints():
    snap = compile_(entry("wiki", {"hosts": ["*.wikipedia.org"], "ports": [{"number": 80, "name": "http"}]}))
    name = "outbound|80||*.wikipedia.org"
    assert snap.resources["clusters"][name].resolution == "passthrough"  # NONE is the default resolution
    assert snap.resources["endpoints"][name].endpoints == ()
    assert vhost(snap, "*.wikipedia.org:80").domains == ("*.wikipedia.org", "*.wikipedia.org:80")
    assert cluster_of(router(snap, "outbound").match(Req("en.wikipedia.org"))) == name


def test_tls_port_is_reachable_by_connect_only():
    snap = compile_(entry("google", {"hosts": ["www.google.com"], "resolution": "DNS",
                                     "ports": [{"number": 443, "name": "https", "protocol": "TLS"}]}))
    vh = vhost(snap, "www.google.com:443")
    assert vh.domains == ("www.google.com:443",)
    assert snap.resources["clusters"]["outbound|443||www.google.com"].protocol == "tcp"
    assert router(snap, "outbound").match(Req("www.google.com")) is None


def test_virtual_service_and_destination_rule_apply_to_an_entry_host():
    vs = resource("VirtualService", "httpbin", {
        "hosts": [HTTPBIN],
        "http": [{"timeout": "3s", "route": [{"destination": {"host": HTTPBIN, "subset": "v2"}}]}],
    })
    dr = resource("DestinationRule", "httpbin", {"host": HTTPBIN, "subsets": [{"name": "v2", "labels": {"version": "v2"}}]})
    snap = compile_(STATIC, vs, dr)
    (route,) = vhost(snap, f"{HTTPBIN}:80").routes
    assert route.action.timeout == 3.0
    name = f"outbound|80|v2|{HTTPBIN}"
    assert cluster_of(route) == name
    assert snap.resources["clusters"][name].resolution == "static"
    assert [e.address for e in snap.resources["endpoints"][name].endpoints] == ["127.0.0.11"]


def test_platform_service_wins_and_first_entry_owns_a_host():
    shadow = entry("shadow", {"hosts": ["reviews.default.svc.cluster.local"], "ports": [{"number": 9080, "name": "http"}]})
    later = entry("later", {"hosts": [HTTPBIN], "ports": [{"number": 80, "name": "http"}]})
    snap = compile_(STATIC, later, shadow)
    assert snap.resources["clusters"]["outbound|9080||reviews.default.svc.cluster.local"].resolution == "static"
    assert len(snap.resources["endpoints"]["outbound|9080||reviews.default.svc.cluster.local"].endpoints) == 3
    assert snap.resources["clusters"][f"outbound|80||{HTTPBIN}"].resolution == "static"  # STATIC's, not later's NONE


def test_unsupported_fields_warn():
    noisy = entry("noisy", {
        "hosts": ["db.example.com"], "addresses": ["10.0.0.1"], "workloadSelector": {"labels": {"app": "db"}},
        "ports": [{"number": 5432, "name": "tcp"}], "resolution": "STATIC",
        "endpoints": [{"address": "127.0.0.1", "network": "n1"}],
    })
    with structlog.testing.capture_logs() as logs:
        compile_(noisy)
    warned = {e["field"] for e in logs if e.get("resource") == "ServiceEntry/default/noisy"}
    assert warned == {"spec.addresses", "spec.workloadSelector", "spec.endpoints[0].network"}


@pytest.mark.parametrize(("spec", "field", "problem"), [
    ({"ports": [{"number": 80}]}, "spec.hosts", "at least one host"),
    ({"hosts": ["*"], "ports": [{"number": 80}]}, "spec.hosts[0]", "not a valid ServiceEntry host"),
    ({"hosts": ["a.example.com"]}, "spec.ports", "at least one port"),
    ({"hosts": ["a.example.com"], "ports": [{"number": 80}, {"number": 80}]}, "spec.ports[1].number", "twice"),
    ({"hosts": ["a.example.com"], "ports": [{"number": 80}], "resolution": "DYNAMIC"}, "spec.resolution",
     "expected one of NONE, STATIC, DNS, DNS_ROUND_ROBIN"),
    ({"hosts": ["a.example.com"], "ports": [{"number": 80}], "location": "OUTSIDE"}, "spec.location", "MESH_EXTERNAL"),
    ({"hosts": ["a.example.com"], "ports": [{"number": 80}], "resolution": "STATIC",
      "endpoints": [{"address": "localhost"}]}, "spec.endpoints[0].address", "needs an IP address"),
    ({"hosts": ["a.example.com"], "ports": [{"number": 80}], "endpoints": [{"address": "127.0.0.1"}]},
     "spec.endpoints", "not allowed with resolution NONE"),
    ({"hosts": ["*.example.com"], "ports": [{"number": 80}], "resolution": "DNS"}, "spec.endpoints",
     "wildcard host '*.example.com' needs endpoints"),
])
def test_bad_entries_name_the_field(spec, field, problem):
    with pytest.raises(ResourceError) as info:
        compile_(entry("bad", spec))
    assert info.value.field == field and problem in info.value.problem
    assert str(info.value).startswith("plugin/routing: ServiceEntry/default/bad")


# ── outboundTrafficPolicy ───────────────────────────────────────────────────


def test_allow_any_passes_unknown_hosts_through_and_keeps_known_ones():
    snap = compile_(mesh=ALLOW_ANY)
    last = snap.resources["routes"]["outbound"].virtual_hosts[-1]
    assert (last.name, last.domains) == ("allow_any", ("*",))
    cluster = snap.resources["clusters"][PASSTHROUGH]
    assert (cluster.resolution, cluster.protocol) == ("passthrough", "http")
    assert snap.resources["endpoints"][PASSTHROUGH].endpoints == ()
    table = router(snap, "outbound")
    assert cluster_of(table.match(Req("example.org:8080"))) == PASSTHROUGH
    assert cluster_of(table.match(Req("127.0.0.1:9999"))) == PASSTHROUGH
    assert cluster_of(table.match(Req("reviews:9080"))) == "outbound|9080||reviews.default.svc.cluster.local"


def test_registry_only_has_no_passthrough():
    snap = compile_()
    assert PASSTHROUGH not in snap.resources["clusters"]
    assert router(snap, "outbound").match(Req("example.org")) is None


ROOT_REGISTRY_ONLY = resource("Sidecar", "default", {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}, ns="istio-system")


def test_root_sidecar_overrides_the_mesh_and_a_namespace_sidecar_overrides_the_root():
    assert PASSTHROUGH not in compile_(ROOT_REGISTRY_ONLY, mesh=ALLOW_ANY).resources["clusters"]
    ns_allow = resource("Sidecar", "default", {"outboundTrafficPolicy": {"mode": "ALLOW_ANY"}})
    assert PASSTHROUGH in compile_(ROOT_REGISTRY_ONLY, ns_allow, mesh=ALLOW_ANY).resources["clusters"]
    assert PASSTHROUGH in compile_(ns_allow, mesh=REGISTRY_ONLY).resources["clusters"]
    # a Sidecar without outboundTrafficPolicy leaves the mesh's; an empty one is REGISTRY_ONLY (the API default)
    plain = resource("Sidecar", "default", {"egress": [{"hosts": ["*/*"]}]})
    assert PASSTHROUGH in compile_(plain, mesh=ALLOW_ANY).resources["clusters"]
    empty = resource("Sidecar", "default", {"outboundTrafficPolicy": {}})
    assert PASSTHROUGH not in compile_(empty, mesh=ALLOW_ANY).resources["clusters"]


def test_a_workload_selected_sidecar_applies_to_its_workload_only():
    only_reviews = resource("Sidecar", "reviews", {"workloadSelector": {"labels": {"app": "reviews"}},
                                                   "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}})
    reviews = sidecar("reviews", labels={"app": "reviews"})
    assert PASSTHROUGH not in compile_(only_reviews, mesh=ALLOW_ANY, node=reviews).resources["clusters"]
    assert PASSTHROUGH in compile_(only_reviews, mesh=ALLOW_ANY).resources["clusters"]


def test_gateways_get_no_passthrough():
    snap = compile_snapshot(gateway_node(), BOOKINFO_SERVICES, mesh=ALLOW_ANY)
    assert PASSTHROUGH not in snap.resources["clusters"]


def test_bad_mode_is_an_error_naming_the_field():
    bad = resource("Sidecar", "default", {"outboundTrafficPolicy": {"mode": "ALLOW_SOME"}})
    with pytest.raises(ResourceError) as info:
        compile_(bad)
    assert info.value.field == "spec.outboundTrafficPolicy.mode"
    assert "ALLOW_ANY, REGISTRY_ONLY" in info.value.problem
