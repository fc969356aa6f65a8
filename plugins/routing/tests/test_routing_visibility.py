"""Scoping what each proxy receives: exportTo and Sidecar egress hosts (Istio's semantics)."""

from __future__ import annotations

import pytest
import structlog
from knotwork import Protocol, Resource, Service, ServicePort
from routing_helpers import (
    BOOKINFO_ENDPOINTS, BOOKINFO_GATEWAY, BOOKINFO_SERVICES, BOOKINFO_VS, REVIEWS_DR, REVIEWS_JASON_VS, Req,
    compile_snapshot, endpoint, fqdn, gateway_node, http_service, resource, router, sidecar, target,
)

from knotwork_routing import ResourceError
from knotwork_routing.errors import warn_ignored
from knotwork_routing.visibility import EgressHost, export_namespaces

RATINGS, REVIEWS, DETAILS, PRODUCTPAGE = (fqdn(n) for n in ("ratings", "reviews", "details", "productpage"))
JASON = {"end-user": "jason"}


def scoped_sidecar(*hosts: str, ns: str = "default", name: str = "default", **spec: object) -> Resource:
    return resource("Sidecar", name, {"egress": [{"hosts": list(hosts)}], **spec}, ns)


def outbound_domains(snap) -> set[str]:
    return {d for vh in snap.resources["routes"]["outbound"].virtual_hosts for d in vh.domains}


def services_of(snap) -> set[str]:
    """The services the proxy's outbound clusters point at."""
    return {c.service for name, c in snap.resources["clusters"].items() if name.startswith("outbound|")}


def compile_bookinfo(node, *resources: Resource, services=BOOKINFO_SERVICES, endpoints=BOOKINFO_ENDPOINTS):
    return compile_snapshot(node, services, endpoints, resources)


# ── exportTo ────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("written", "want"), [
    (None, None),
    ([], None),
    (["*"], None),
    (["."], {"bookinfo"}),
    (["~"], set()),
    ([".", "prod"], {"bookinfo", "prod"}),
    (["prod", "staging"], {"prod", "staging"}),
])
def test_export_namespaces(written, want):
    spec = {"hosts": ["reviews"]} if written is None else {"hosts": ["reviews"], "exportTo": written}
    found = export_namespaces(resource("VirtualService", "r", spec, "bookinfo"))
    assert found == (None if want is None else frozenset(want))


@pytest.mark.parametrize(("written", "field", "problem"), [
    (["*", "prod"], "spec.exportTo[0]", "cannot be combined"),
    (["prod", "~"], "spec.exportTo[1]", "cannot be combined"),
    ([".", "bookinfo"], "spec.exportTo[1]", "listed twice"),
    (["Prod_1"], "spec.exportTo[0]", "namespace name"),
    ([7], "spec.exportTo[0]", "namespace name"),
    (".", "spec.exportTo", "expected a list"),
])
def test_bad_export_to_names_the_field(written, field, problem):
    vs = resource("VirtualService", "reviews", {"hosts": ["reviews"], "exportTo": written}, "bookinfo")
    with pytest.raises(ResourceError) as raised:
        compile_bookinfo(sidecar("productpage"), vs)
    assert raised.value.field == field and problem in raised.value.problem
    assert str(raised.value).startswith("plugin/routing: VirtualService/bookinfo/reviews")


def test_virtual_service_exported_to_own_namespace_only_is_hidden_from_others():
    private = resource("VirtualService", "reviews", {**REVIEWS_JASON_VS.spec, "exportTo": ["."]})
    # productpage in `default` sees it: jason to v2, others to v1
    inside = router(compile_bookinfo(sidecar("productpage"), REVIEWS_DR, private), "outbound")
    assert target(inside.match(Req("reviews:9080", headers=JASON))) == f"outbound|9080|v2|{REVIEWS}"
    assert target(inside.match(Req("reviews:9080"))) == f"outbound|9080|v1|{REVIEWS}"
    # a client in another namespace does not: the plain service route
    outside = router(compile_bookinfo(sidecar("client", ns="other"), REVIEWS_DR, private), "outbound")
    assert target(outside.match(Req("reviews.default:9080", headers=JASON))) == f"outbound|9080||{REVIEWS}"


def test_virtual_service_exported_to_listed_namespaces():
    listed = resource("VirtualService", "reviews", {**REVIEWS_JASON_VS.spec, "exportTo": ["other"]})
    for ns, want in (("other", f"outbound|9080|v1|{REVIEWS}"), ("third", f"outbound|9080||{REVIEWS}"),
                     ("default", f"outbound|9080||{REVIEWS}")):
        table = router(compile_bookinfo(sidecar("client", ns=ns), REVIEWS_DR, listed), "outbound")
        assert target(table.match(Req(f"{REVIEWS}:9080"))) == want, ns


def test_export_to_none_hides_everywhere():
    hidden = resource("VirtualService", "reviews", {**REVIEWS_JASON_VS.spec, "exportTo": ["~"]})
    table = router(compile_bookinfo(sidecar("productpage"), REVIEWS_DR, hidden), "outbound")
    assert target(table.match(Req("reviews:9080", headers=JASON))) == f"outbound|9080||{REVIEWS}"


def test_destination_rule_not_exported_leaves_its_subsets_undefined():
    private_dr = resource("DestinationRule", "reviews", {**REVIEWS_DR.spec, "exportTo": ["."]})
    # the VirtualService lives in `other` and is exported everywhere; its subsets come from the rule in `default`
    vs = resource("VirtualService", "reviews", {
        "hosts": [REVIEWS], "http": [{"route": [{"destination": {"host": REVIEWS, "subset": "v2"}}]}],
    }, "other")
    v2 = f"outbound|9080|v2|{REVIEWS}"
    inside = compile_bookinfo(sidecar("productpage"), private_dr, vs)
    assert [ep.port for ep in inside.resources["endpoints"][v2].endpoints] == [20004]
    outside = compile_bookinfo(sidecar("client", ns="other"), private_dr, vs)
    assert outside.resources["endpoints"][v2].endpoints == ()  # no rule defines v2 there: 503, as in Istio


def test_export_to_applies_to_gateways_by_their_namespace():
    private = resource("VirtualService", "bookinfo", {**BOOKINFO_VS.spec, "exportTo": ["."]})
    hidden = compile_bookinfo(gateway_node(), BOOKINFO_GATEWAY, private)
    assert hidden.resources["routes"]["gateway|80"].virtual_hosts == ()
    exported = resource("VirtualService", "bookinfo", {**BOOKINFO_VS.spec, "exportTo": [".", "knotwork-system"]})
    shown = compile_bookinfo(gateway_node(), BOOKINFO_GATEWAY, exported)
    table = router(shown, "gateway|80")
    assert target(table.match(Req("bookinfo.example.com", "/productpage"))) == f"outbound|9080||{PRODUCTPAGE}"


# ── Sidecar egress hosts ────────────────────────────────────────────────────


BOOKINFO_NO_RATINGS = scoped_sidecar(f"./{DETAILS}", f"./{REVIEWS}", f"./{PRODUCTPAGE}")


def test_sidecar_egress_leaves_out_a_service():
    snap = compile_bookinfo(sidecar("reviews"), BOOKINFO_NO_RATINGS)
    assert services_of(snap) == {DETAILS, REVIEWS, PRODUCTPAGE}
    assert not any("ratings" in d for d in outbound_domains(snap))
    assert not any("ratings" in name for kind in ("clusters", "endpoints") for name in snap.resources[kind])
    table = router(snap, "outbound")
    assert table.match(Req("ratings:9080")) is None  # no virtual host: the engine's unknown-host answer
    assert target(table.match(Req("details:9080"))) == f"outbound|9080||{DETAILS}"
    # inbound is never scoped by egress hosts
    assert target(router(snap, "inbound|9080").match(Req("reviews:9080"))) == "inbound|9080||"


def test_without_sidecar_everything_is_visible():
    snap = compile_bookinfo(sidecar("reviews"))
    assert services_of(snap) == {DETAILS, REVIEWS, PRODUCTPAGE, RATINGS}


def test_sidecar_shrinks_the_pushed_config():
    full = compile_bookinfo(sidecar("reviews"))
    scoped = compile_bookinfo(sidecar("reviews"), BOOKINFO_NO_RATINGS)
    assert scoped.count("clusters") == full.count("clusters") - 1
    assert scoped.version != full.version


def test_sidecar_namespace_filters_by_where_services_are_declared():
    services = (*BOOKINFO_SERVICES, http_service("api", "shop"), http_service("db", "data"))
    own = compile_snapshot(sidecar("reviews"), services, (), [scoped_sidecar("./*")])
    assert services_of(own) == {DETAILS, REVIEWS, PRODUCTPAGE, RATINGS}
    named = compile_snapshot(sidecar("reviews"), services, (), [scoped_sidecar("shop/*", f"./{RATINGS}")])
    assert services_of(named) == {fqdn("api", "shop"), RATINGS}
    anywhere = compile_snapshot(sidecar("reviews"), services, (), [scoped_sidecar(f"*/{fqdn('db', 'data')}")])
    assert services_of(anywhere) == {fqdn("db", "data")}
    wrong_ns = compile_snapshot(sidecar("reviews"), services, (), [scoped_sidecar(f"shop/{fqdn('db', 'data')}")])
    assert services_of(wrong_ns) == set()


def test_sidecar_wildcard_dns_names():
    services = (*BOOKINFO_SERVICES, http_service("api", "shop"))
    snap = compile_snapshot(sidecar("reviews"), services, (), [scoped_sidecar("*/*.shop.svc.cluster.local")])
    assert services_of(snap) == {fqdn("api", "shop")}
    everything = compile_snapshot(sidecar("reviews"), services, (), [scoped_sidecar("*/*")])
    assert services_of(everything) == {DETAILS, REVIEWS, PRODUCTPAGE, RATINGS, fqdn("api", "shop")}


def test_sidecar_tilde_namespace_admits_nothing():
    snap = compile_bookinfo(sidecar("reviews"), scoped_sidecar("~/*"))
    assert services_of(snap) == set()
    assert snap.resources["routes"]["outbound"].virtual_hosts == ()
    assert "inbound|9080" in snap.resources["listeners"]


def test_sidecar_admits_virtual_services_and_their_destinations():
    vs = resource("VirtualService", "front", {
        "hosts": ["bookinfo.example.com"],
        "http": [{"route": [{"destination": {"host": "productpage"}}],
                  "mirror": {"host": "details"}}],
    })
    snap = compile_bookinfo(sidecar("reviews"), vs, scoped_sidecar("./bookinfo.example.com"))
    assert services_of(snap) == {PRODUCTPAGE, DETAILS}  # routed and mirrored to: part of the scope
    table = router(snap, "outbound")
    assert target(table.match(Req("bookinfo.example.com"))) == f"outbound|9080||{PRODUCTPAGE}"
    # destinations join the scope as services (Istio does the same): reachable by their own names too
    assert target(table.match(Req("productpage:9080"))) == f"outbound|9080||{PRODUCTPAGE}"
    assert table.match(Req("ratings:9080")) is None
    # the same VirtualService, not admitted: neither it nor its destinations
    other = compile_bookinfo(sidecar("reviews"), vs, scoped_sidecar(f"./{RATINGS}"))
    assert services_of(other) == {RATINGS}
    assert router(other, "outbound").match(Req("bookinfo.example.com")) is None


def test_sidecar_applies_virtual_services_of_admitted_hosts():
    scope = scoped_sidecar(f"./{REVIEWS}")
    table = router(compile_bookinfo(sidecar("productpage"), REVIEWS_DR, REVIEWS_JASON_VS, scope), "outbound")
    assert target(table.match(Req("reviews:9080", headers=JASON))) == f"outbound|9080|v2|{REVIEWS}"


def test_virtual_service_admitted_only_from_its_declared_namespace():
    vs = resource("VirtualService", "reviews", {  # declared in `routes`, for the service in `default`
        "hosts": [REVIEWS], "http": [{"route": [{"destination": {"host": REVIEWS, "subset": "v1"}}]}],
    }, "routes")
    via_default = compile_bookinfo(sidecar("productpage"), REVIEWS_DR, vs, scoped_sidecar(f"./{REVIEWS}"))
    assert target(router(via_default, "outbound").match(Req("reviews:9080"))) == f"outbound|9080||{REVIEWS}"
    via_routes = compile_bookinfo(sidecar("productpage"), REVIEWS_DR, vs,
                                  scoped_sidecar(f"./{REVIEWS}", f"routes/{REVIEWS}"))
    assert target(router(via_routes, "outbound").match(Req("reviews:9080"))) == f"outbound|9080|v1|{REVIEWS}"


def test_workload_selector_sidecar_scopes_only_its_workloads():
    scope = resource("Sidecar", "reviews-only", {
        "workloadSelector": {"labels": {"app": "reviews"}}, "egress": [{"hosts": [f"./{DETAILS}"]}],
    })
    chosen = compile_bookinfo(sidecar("reviews", labels={"app": "reviews"}), scope)
    assert services_of(chosen) == {DETAILS}
    other = compile_bookinfo(sidecar("productpage", labels={"app": "productpage"}), scope)
    assert services_of(other) == {DETAILS, REVIEWS, PRODUCTPAGE, RATINGS}


def test_root_namespace_sidecar_is_the_mesh_default_but_never_scopes_gateways():
    mesh_wide = scoped_sidecar(f"./{DETAILS}", f"*/{REVIEWS}", ns="knotwork-system")
    assert services_of(compile_bookinfo(sidecar("productpage"), mesh_wide)) == {REVIEWS}
    gateway = compile_bookinfo(gateway_node(), BOOKINFO_GATEWAY, BOOKINFO_VS, mesh_wide)
    assert services_of(gateway) == {DETAILS, REVIEWS, PRODUCTPAGE, RATINGS}
    assert target(router(gateway, "gateway|80").match(Req("x", "/productpage"))) == f"outbound|9080||{PRODUCTPAGE}"


def test_sidecar_without_egress_scopes_nothing():
    snap = compile_bookinfo(sidecar("reviews"), resource("Sidecar", "default", {"outboundTrafficPolicy": {}}))
    assert services_of(snap) == {DETAILS, REVIEWS, PRODUCTPAGE, RATINGS}


def test_hidden_tcp_upstream_gets_no_listener():
    db = Service("mongodb", "default", (ServicePort(27017, "mongo", Protocol.TCP),))
    node = sidecar("ratings", ports={"http_proxy": 15001, "tcp:mongodb:27017": 15100})
    shown = compile_snapshot(node, [db], [endpoint("mongodb", "127.0.0.1", 27017)], [scoped_sidecar("./*")])
    assert f"outbound|tcp|{fqdn('mongodb')}|27017" in shown.resources["listeners"]
    hidden = compile_snapshot(node, [db], [endpoint("mongodb", "127.0.0.1", 27017)], [scoped_sidecar("./x.y")])
    assert f"outbound|tcp|{fqdn('mongodb')}|27017" not in hidden.resources["listeners"]
    assert hidden.count("clusters") == 0


@pytest.mark.parametrize(("entry", "problem"), [
    ("details", "expected namespace/dnsName"),
    ("a/b/c", "expected namespace/dnsName"),
    ("/details", "namespace ''"),
    ("Bad_NS/*", "namespace 'Bad_NS'"),
    ("./", "dnsName ''"),
    ("./foo.*.com", "dnsName 'foo.*.com'"),
    (7, "expected namespace/dnsName"),
])
def test_bad_egress_host_names_the_field(entry, problem):
    scope = resource("Sidecar", "default", {"egress": [{"hosts": [f"./{DETAILS}", entry]}]})
    with pytest.raises(ResourceError) as raised:
        compile_bookinfo(sidecar("reviews"), scope)
    assert raised.value.field == "spec.egress[0].hosts[1]"
    assert problem in raised.value.problem
    assert str(raised.value).startswith("plugin/routing: Sidecar/default/default")


def test_egress_listener_without_hosts_is_an_error():
    with pytest.raises(ResourceError) as raised:
        compile_bookinfo(sidecar("reviews"), resource("Sidecar", "default", {"egress": [{"port": {"number": 9080}}]}))
    assert raised.value.field == "spec.egress[0].hosts"


def test_unsupported_sidecar_fields_warn_and_are_ignored():
    scope = resource("Sidecar", "warned", {
        "ingress": [{"port": {"number": 9080, "protocol": "HTTP"}, "defaultEndpoint": "127.0.0.1:8080"}],
        "egress": [{"port": {"number": 9080, "protocol": "HTTP"}, "bind": "127.0.0.2", "captureMode": "NONE",
                    "hosts": [f"./{DETAILS}"]}],
    })
    warn_ignored.seen.clear()
    with structlog.testing.capture_logs() as logs:
        snap = compile_bookinfo(sidecar("reviews"), scope)
    assert services_of(snap) == {DETAILS}
    warned = {entry["field"] for entry in logs if entry.get("resource") == "Sidecar/default/warned"}
    assert warned == {"spec.ingress", "spec.egress[0].port", "spec.egress[0].bind", "spec.egress[0].captureMode"}


@pytest.mark.parametrize(("entry", "ns", "host", "admits"), [
    (EgressHost("*", "*"), "any", "a.b.svc.cluster.local", True),
    (EgressHost("~", "*"), "any", "a.b.svc.cluster.local", False),
    (EgressHost("prod", "*.example.com"), "prod", "www.example.com", True),
    (EgressHost("prod", "*.example.com"), "prod", "example.com", False),
    (EgressHost("prod", "www.example.com"), "prod", "*.example.com", True),  # a wildcard ServiceEntry host
    (EgressHost("prod", "www.example.com"), "dev", "www.example.com", False),
])
def test_egress_host_admits(entry, ns, host, admits):
    assert entry.admits(ns, host) is admits


def test_istio_system_means_the_root_namespace():
    services = (*BOOKINFO_SERVICES, http_service("telemetry", "knotwork-system"))
    snap = compile_snapshot(sidecar("reviews"), services, (), [scoped_sidecar("istio-system/*")])
    assert services_of(snap) == {fqdn("telemetry", "knotwork-system")}
    exported = resource("VirtualService", "bookinfo", {**BOOKINFO_VS.spec, "exportTo": [".", "istio-system"]})
    gateway = compile_bookinfo(gateway_node(), BOOKINFO_GATEWAY, exported)
    assert target(router(gateway, "gateway|80").match(Req("x", "/productpage"))) == f"outbound|9080||{PRODUCTPAGE}"
