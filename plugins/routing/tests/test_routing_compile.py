"""The networking compiler without VirtualServices: listeners, tables, clusters, endpoints."""

from __future__ import annotations

import pytest
from knotwork import Compiler, Protocol, Service, ServicePort
from knotwork.proxyconfig import LbEndpoint
from routing_helpers import (
    BOOKINFO_ENDPOINTS, BOOKINFO_SERVICES, Req, compile_snapshot, endpoint, fqdn, gateway_node, http_service,
    router, sidecar, target,
)

from knotwork_routing import _hooks
from knotwork_routing.compile import SLOTS

REVIEWS = fqdn("reviews")


def test_compiler_record():
    (record,) = _hooks.knotwork_compilers()
    assert isinstance(record, Compiler)
    assert (record.name, record.area) == ("networking", "networking")
    assert record.slots == frozenset({"listeners", "routes", "clusters", "endpoints", "secrets"}) == SLOTS


# ── sidecar inbound ─────────────────────────────────────────────────────────


def test_inbound_http_listener_table_cluster_endpoint():
    snap = compile_snapshot(sidecar("reviews"), BOOKINFO_SERVICES, BOOKINFO_ENDPOINTS)
    listener = snap.resources["listeners"]["inbound|9080"]
    assert (listener.address, listener.port, listener.mode, listener.protocol) == ("127.0.0.1", 15006, "inbound", "http")
    assert listener.route_table == "inbound|9080" and listener.cluster is None
    table = snap.resources["routes"]["inbound|9080"]
    assert table.router == "host"
    (vhost,) = table.virtual_hosts
    assert vhost.domains == ("*",)
    (default,) = vhost.routes
    assert default.match.prefix == "/" and target(default) == "inbound|9080||"
    cluster = snap.resources["clusters"]["inbound|9080||"]
    assert (cluster.service, cluster.port, cluster.protocol, cluster.lb) == (REVIEWS, 9080, "http", "round_robin")
    assert snap.resources["endpoints"]["inbound|9080||"].endpoints == (
        LbEndpoint(address="127.0.0.1", port=20001, instance="reviews-1"),
    )


def test_inbound_router_answers_any_host():
    snap = compile_snapshot(sidecar("reviews"), BOOKINFO_SERVICES, BOOKINFO_ENDPOINTS)
    assert target(router(snap, "inbound|9080").match(Req("reviews:9080", "/reviews/0"))) == "inbound|9080||"


def test_inbound_tcp_port_forwards_to_cluster():
    db = Service("mongodb", "default", (ServicePort(27017, "mongo", Protocol.TCP),))
    node = sidecar("mongodb", ports={"inbound:27017": 15007, "app:27017": 20010})
    snap = compile_snapshot(node, [db])
    listener = snap.resources["listeners"]["inbound|27017"]
    assert (listener.protocol, listener.cluster, listener.route_table) == ("tcp", "inbound|27017||", None)
    assert "inbound|27017" not in snap.resources["routes"]
    assert snap.resources["clusters"]["inbound|27017||"].protocol == "tcp"


@pytest.mark.parametrize("protocol", [Protocol.HTTP, Protocol.HTTP2, Protocol.GRPC, Protocol.UNKNOWN])
def test_inbound_http_ish_protocols(protocol):
    svc = Service("api", "default", (ServicePort(8080, "p", protocol),))
    snap = compile_snapshot(sidecar("api", ports={"inbound:8080": 15006, "app:8080": 20000}), [svc])
    assert snap.resources["listeners"]["inbound|8080"].protocol == "http"


def test_inbound_only_for_ports_the_platform_gave():
    svc = http_service("api", "default", 8080, 8081)
    snap = compile_snapshot(sidecar("api", ports={"inbound:8080": 15006, "app:8080": 20000}), [svc])
    assert set(snap.resources["listeners"]) == {"inbound|8080"}


def test_inbound_app_port_defaults_to_target_port():
    svc = Service("api", "default", (ServicePort(80, "http", Protocol.HTTP, target_port=8000),))
    snap = compile_snapshot(sidecar("api", ports={"inbound:80": 15006}), [svc])
    assert snap.resources["endpoints"]["inbound|80||"].endpoints[0].port == 8000


def test_inbound_only_for_the_nodes_own_service_and_namespace():
    other_ns = http_service("reviews", "prod")
    snap = compile_snapshot(sidecar("reviews", ns="default"), [other_ns, http_service("ratings")])
    assert "inbound|9080" not in snap.resources["listeners"]


# ── sidecar outbound ────────────────────────────────────────────────────────


def test_http_proxy_listener_and_outbound_table():
    snap = compile_snapshot(sidecar("productpage"), BOOKINFO_SERVICES, BOOKINFO_ENDPOINTS,
                            selection={"router": "fancy", "load_balancer": "least_request"})
    listener = snap.resources["listeners"]["http_proxy"]
    assert (listener.address, listener.port, listener.mode, listener.protocol, listener.route_table) == (
        "127.0.0.1", 15001, "http_proxy", "http", "outbound")
    table = snap.resources["routes"]["outbound"]
    assert table.router == "fancy"
    assert snap.resources["clusters"][f"outbound|9080||{REVIEWS}"].lb == "least_request"
    names = [vh.name for vh in table.virtual_hosts]
    assert names == [f"{fqdn(s)}:9080" for s in ("details", "productpage", "ratings", "reviews")]


def test_outbound_domains_same_namespace():
    snap = compile_snapshot(sidecar("productpage"), BOOKINFO_SERVICES)
    vhost = next(v for v in snap.resources["routes"]["outbound"].virtual_hosts if v.name == f"{REVIEWS}:9080")
    assert set(vhost.domains) == {
        REVIEWS, f"{REVIEWS}:9080", "reviews.default.svc", "reviews.default.svc:9080",
        "reviews.default", "reviews.default:9080", "reviews", "reviews:9080",
    }
    (default,) = vhost.routes
    assert target(default) == f"outbound|9080||{REVIEWS}"


def test_outbound_domains_other_namespace_have_no_short_name():
    snap = compile_snapshot(sidecar("productpage"), [http_service("productpage"), http_service("reviews", "prod")])
    vhost = next(v for v in snap.resources["routes"]["outbound"].virtual_hosts if v.name.startswith("reviews.prod"))
    assert "reviews" not in vhost.domains and "reviews:9080" not in vhost.domains
    assert "reviews.prod" in vhost.domains and "reviews.prod.svc.cluster.local:9080" in vhost.domains


def test_outbound_router_resolves_what_apps_send():
    snap = compile_snapshot(sidecar("productpage"), BOOKINFO_SERVICES)
    r = router(snap, "outbound")
    for authority in ("reviews:9080", "reviews", "reviews.default:9080", REVIEWS, f"{REVIEWS}:9080"):
        assert target(r.match(Req(authority, "/reviews/0"))) == f"outbound|9080||{REVIEWS}"
    assert r.match(Req("unknown.example.com", "/")) is None


def test_multi_port_service_portless_names_go_to_port_80():
    svc = http_service("web", "default", 8080, 80)
    snap = compile_snapshot(sidecar("client", ports={"http_proxy": 15001}), [svc])
    r = router(snap, "outbound")
    assert target(r.match(Req("web"))) == f"outbound|80||{fqdn('web')}"
    assert target(r.match(Req("web:8080"))) == f"outbound|8080||{fqdn('web')}"
    assert target(r.match(Req("web:80"))) == f"outbound|80||{fqdn('web')}"


def test_multi_port_service_without_80_uses_lowest_http_port():
    svc = http_service("web", "default", 9090, 8080)
    snap = compile_snapshot(sidecar("client", ports={"http_proxy": 15001}), [svc])
    assert target(router(snap, "outbound").match(Req("web"))) == f"outbound|8080||{fqdn('web')}"


def test_tcp_ports_get_no_virtual_host_but_a_cluster():
    db = Service("mongodb", "default", (ServicePort(27017, "mongo", Protocol.TCP),))
    snap = compile_snapshot(sidecar("ratings"), [db, http_service("ratings")])
    assert all("mongodb" not in vh.name for vh in snap.resources["routes"]["outbound"].virtual_hosts)
    assert snap.resources["clusters"][f"outbound|27017||{fqdn('mongodb')}"].protocol == "tcp"


def test_tcp_upstream_listener():
    db = Service("mongodb", "default", (ServicePort(27017, "mongo", Protocol.TCP),))
    node = sidecar("ratings", ports={"http_proxy": 15001, "tcp:mongodb:27017": 15100,
                                     f"tcp:{fqdn('redis', 'cache')}:6379": 15101})
    snap = compile_snapshot(node, [db], [endpoint("mongodb", "127.0.0.1", 27017)])
    listener = snap.resources["listeners"][f"outbound|tcp|{fqdn('mongodb')}|27017"]
    assert (listener.address, listener.port, listener.mode, listener.protocol) == ("127.0.0.1", 15100, "outbound", "tcp")
    assert listener.cluster == f"outbound|27017||{fqdn('mongodb')}"
    # an upstream that is not (yet) a service: a cluster without endpoints, still consistent
    unknown = snap.resources["listeners"][f"outbound|tcp|{fqdn('redis', 'cache')}|6379"]
    assert snap.resources["clusters"][unknown.cluster].protocol == "tcp"
    assert snap.resources["endpoints"][unknown.cluster].endpoints == ()


def test_bad_tcp_port_role():
    with pytest.raises(ValueError, match="tcp:<host>:<port>"):
        compile_snapshot(sidecar("x", ports={"tcp:nope": 1}), [])


def test_no_http_proxy_port_means_no_outbound_listener():
    snap = compile_snapshot(sidecar("reviews", ports={"inbound:9080": 15006}), BOOKINFO_SERVICES)
    assert "http_proxy" not in snap.resources["listeners"] and "outbound" not in snap.resources["routes"]


# ── clusters and endpoints ──────────────────────────────────────────────────


def test_cluster_and_endpoints_for_every_service_port():
    snap = compile_snapshot(sidecar("productpage"), BOOKINFO_SERVICES, BOOKINFO_ENDPOINTS)
    for name in ("productpage", "details", "reviews", "ratings"):
        cluster = snap.resources["clusters"][f"outbound|9080||{fqdn(name)}"]
        assert (cluster.service, cluster.port, cluster.protocol) == (fqdn(name), 9080, "http")
    reviews = snap.resources["endpoints"][f"outbound|9080||{REVIEWS}"].endpoints
    assert [ep.port for ep in reviews] == [20003, 20004, 20005]
    assert reviews[0] == LbEndpoint(
        address="127.0.0.1", port=20003, labels={"app": "reviews", "version": "v1"},
        identity="spiffe://cluster.local/ns/default/sa/bookinfo-reviews", instance="reviews-v1-1",
    )


def test_endpoint_fields_carried_including_unhealthy():
    ep = endpoint("reviews", "10.0.0.7", 9080, weight=3, healthy=False, locality="eu/west", instance="r-7")
    snap = compile_snapshot(sidecar("productpage"), [http_service("reviews")], [ep])
    (lb,) = snap.resources["endpoints"][f"outbound|9080||{REVIEWS}"].endpoints
    assert (lb.address, lb.weight, lb.healthy, lb.locality, lb.instance) == ("10.0.0.7", 3, False, "eu/west", "r-7")


def test_service_without_endpoints_has_empty_set():
    snap = compile_snapshot(sidecar("productpage"), [http_service("reviews")])
    assert snap.resources["endpoints"][f"outbound|9080||{REVIEWS}"].endpoints == ()


def test_endpoint_order_is_stable():
    eps = [endpoint("reviews", f"10.0.0.{i}") for i in (3, 1, 2)]
    a = compile_snapshot(sidecar("productpage"), [http_service("reviews")], eps)
    b = compile_snapshot(sidecar("productpage"), [http_service("reviews")], list(reversed(eps)))
    assert a.version == b.version


def test_duplicate_services_first_wins():
    snap = compile_snapshot(sidecar("x", ports={"http_proxy": 1}), [http_service("reviews"), http_service("reviews")])
    assert len(snap.resources["routes"]["outbound"].virtual_hosts) == 1


# ── gateways without VirtualServices ────────────────────────────────────────


def test_gateway_node_gets_clusters_but_no_listener_without_gateway_resource():
    snap = compile_snapshot(gateway_node(), BOOKINFO_SERVICES, BOOKINFO_ENDPOINTS)
    assert snap.count("listeners") == 0
    assert f"outbound|9080||{fqdn('productpage')}" in snap.resources["clusters"]


def test_unknown_node_kind_gets_only_clusters():
    node = sidecar("x").__class__(id="n", kind="waypoint", workload="w")
    snap = compile_snapshot(node, BOOKINFO_SERVICES)
    assert snap.count("listeners") == 0 and snap.count("clusters") == 4
