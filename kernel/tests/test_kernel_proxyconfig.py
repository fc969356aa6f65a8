"""The compiled proxy config: snapshots, versions, consistency, slots, wire (knotwork.proxyconfig)."""

from __future__ import annotations

import json

import cattrs
import pytest

from knotwork.proxyconfig import (
    TYPE_ORDER,
    Cluster,
    ConsistencyError,
    DirectResponse,
    EndpointSet,
    Extension,
    HeaderMatch,
    LbEndpoint,
    Listener,
    ProxySnapshot,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
    RouteTable,
    Secret,
    SlotError,
    SnapshotBuilder,
    UpstreamTls,
    VirtualHost,
    WeightedCluster,
    content_version,
    wire,
)

CLUSTER = "outbound|9080||reviews.default.svc.cluster.local"


def route_table(cluster: str = CLUSTER, name: str = "9080") -> RouteTable:
    route = Route(
        name="default",
        match=RouteMatch(prefix="/", headers=(HeaderMatch("end-user", exact="jason"),)),
        action=RouteAction((WeightedCluster(cluster, 80), WeightedCluster(cluster, 20)), timeout=2.5,
                           retry=RetryPolicy(2, 0.5, ("5xx",), (503,))),
        request_headers_set={"x-mesh": "knotwork"},
        extensions=(Extension("tenant", "tenant", {"header": "x-tenant"}),),
    )
    return RouteTable(name, (VirtualHost("reviews", ("reviews", "reviews:9080")), VirtualHost("all", ("*",), (route,))))


def full_set() -> list:
    return [
        Secret("default", certificate_chain="CERT", private_key="KEY", trust_bundle="ROOT"),
        Cluster(CLUSTER, service="reviews.default.svc.cluster.local", port=9080, lb_settings={"choices": 2},
                tls=UpstreamTls("ISTIO_MUTUAL", identities=("spiffe://cluster.local/ns/default/sa/reviews",))),
        EndpointSet(CLUSTER, (LbEndpoint("127.0.0.1", 41001, labels={"version": "v1"},
                                         identity="spiffe://cluster.local/ns/default/sa/reviews"),)),
        Listener("http_proxy", "127.0.0.1", 15001, "http_proxy", route_table="9080", authz=("tenant",)),
        route_table(),
    ]


def test_snapshot_groups_by_type_and_versions_by_content():
    snap = ProxySnapshot.build(full_set())
    assert list(snap.resources) == list(TYPE_ORDER) == ["secrets", "clusters", "endpoints", "listeners", "routes"]
    assert snap.count("clusters") == 1
    assert snap.versions["clusters"][CLUSTER] == content_version(snap.resources["clusters"][CLUSTER])
    snap.check()


def test_identical_resources_share_versions_across_proxies():
    a = ProxySnapshot.build(full_set())
    b = ProxySnapshot.build([*full_set(), Listener("gateway", "0.0.0.0", 8080, "gateway", route_table="9080")])
    assert a.versions["clusters"] == b.versions["clusters"]
    assert a.versions["routes"] == b.versions["routes"]
    assert a.type_version("clusters") == b.type_version("clusters")
    assert a.type_version("listeners") != b.type_version("listeners")
    assert a.version != b.version


def test_any_change_changes_the_version():
    a = ProxySnapshot.build(full_set())
    changed = [r if r.TYPE != "clusters" else Cluster(CLUSTER, lb="least_request") for r in full_set()]
    b = ProxySnapshot.build(changed)
    assert a.versions["clusters"][CLUSTER] != b.versions["clusters"][CLUSTER]
    assert a.version != b.version
    assert ProxySnapshot.build(full_set()).version == a.version  # and is deterministic


def test_two_resources_with_one_name_are_refused():
    with pytest.raises(ConsistencyError, match="two clusters named 'c'"):
        ProxySnapshot.build([Cluster("c"), Cluster("c", port=1)])


@pytest.mark.parametrize(("resources", "problem"), [
    ([route_table("missing"), Cluster(CLUSTER), EndpointSet(CLUSTER)],
     "route table '9080' references missing cluster 'missing'"),
    ([Cluster(CLUSTER)], f"cluster '{CLUSTER}' has no endpoint set"),
    ([Listener("l", "127.0.0.1", 1, "inbound", route_table="nope")],
     "listener 'l' references missing route table 'nope'"),
    ([Listener("l", "127.0.0.1", 1, "inbound", protocol="tcp", cluster="nope")],
     "listener 'l' references missing cluster 'nope'"),
    ([Listener("l", "127.0.0.1", 1, "outbound", protocol="tcp", weighted_clusters=(
        WeightedCluster(CLUSTER, 50), WeightedCluster("gone", 50))), Cluster(CLUSTER), EndpointSet(CLUSTER)],
     "listener 'l' references missing cluster 'gone'"),
])
def test_consistency_check_failures(resources, problem):
    with pytest.raises(ConsistencyError) as info:
        ProxySnapshot.build(resources).check()
    assert problem in str(info.value)


def test_consistency_check_lists_every_problem():
    snap = ProxySnapshot.build([Cluster("a"), Cluster("b")])
    with pytest.raises(ConsistencyError, match="cluster 'a' has no endpoint set; cluster 'b' has no endpoint set"):
        snap.check()


def test_builder_enforces_declared_slots():
    builder = SnapshotBuilder()
    net = builder.as_compiler("net", frozenset({"listeners", "clusters", "endpoints"}))
    net.add(Cluster(CLUSTER))
    net.add(EndpointSet(CLUSTER))
    net.add(Listener("in", "127.0.0.1", 15006, "inbound", protocol="tcp", cluster=CLUSTER))
    with pytest.raises(SlotError, match="compiler 'net' wrote slot 'routes' it did not declare"):
        net.add(route_table())
    with pytest.raises(SlotError, match="compiler 'net' wrote slot 'clusters.lb' it did not declare"):
        net.set("clusters", CLUSTER, "lb", "random")

    lb = builder.as_compiler("lb", frozenset({"clusters.lb"}))
    lb.set("clusters", CLUSTER, "lb", "random")
    with pytest.raises(SlotError, match="compiler 'lb' wrote slot 'clusters' it did not declare"):
        lb.add(Cluster("other"))
    with pytest.raises(SlotError, match="'lb' wrote slot 'listeners.extensions.tenant'"):
        lb.extend("listeners", "in", Extension("tenant", "tenant"))

    ext = builder.as_compiler("ext", frozenset({"listeners.extensions.tenant"}))
    ext.extend("listeners", "in", Extension("tenant", "tenant", {"v": 1}))
    ext.extend("listeners", "in", Extension("tenant", "tenant", {"v": 2}))  # replaces, never duplicates
    snap = builder.snapshot()
    assert snap.resources["clusters"][CLUSTER].lb == "random"
    assert snap.resources["listeners"]["in"].extensions == (Extension("tenant", "tenant", {"v": 2}),)
    assert [c.name for c in builder.all("clusters")] == [CLUSTER]
    assert builder.get("routes", "x") is None


def test_builder_snapshot_runs_the_consistency_check():
    builder = SnapshotBuilder().as_compiler("c", frozenset({"clusters"}))
    builder.add(Cluster("lonely"))
    with pytest.raises(ConsistencyError):
        builder.snapshot()


@pytest.mark.parametrize("resource", full_set(), ids=lambda r: r.TYPE)
def test_wire_round_trip(resource):
    data = json.loads(json.dumps(wire.unstructure(resource)))
    assert wire.structure(data, type(resource)) == resource


def test_wire_refuses_unknown_fields():
    data = wire.unstructure(Cluster("c"))
    data["surprise"] = 1
    with pytest.raises(cattrs.ClassValidationError) as info:
        wire.structure(data, Cluster)
    (extra,) = info.value.exceptions
    assert isinstance(extra, cattrs.ForbiddenExtraKeysError) and extra.extra_fields == {"surprise"}


def test_direct_response_route_round_trip():
    table = RouteTable("r", (VirtualHost("v", ("*",), (Route("teapot", direct=DirectResponse(418, "tea")),)),))
    assert wire.structure(json.loads(json.dumps(wire.unstructure(table))), RouteTable) == table
    assert list(table.referenced_clusters()) == []


def test_route_with_fault_mirror_headers_and_cors_round_trips_and_mirror_clusters_are_checked():
    from knotwork.proxyconfig import CorsPolicy, FaultPolicy, MirrorPolicy, RouteAction, StringMatch, WeightedCluster

    route = Route(
        "r", action=RouteAction((WeightedCluster("a"),)),
        request_headers_set={"x-set": "1"}, request_headers_add={"x-add": "2"}, request_headers_remove=("x-rm",),
        response_headers_set={"x-rs": "3"}, response_headers_add={"x-ra": "4"}, response_headers_remove=("server",),
        fault=FaultPolicy(delay=0.5, delay_percent=50.0, abort_status=503, abort_percent=10.0),
        mirror=(MirrorPolicy("shadow", 25.0),),
        cors=CorsPolicy(allow_origins=(StringMatch(exact="https://a"), StringMatch(regex=".*b")),
                        allow_methods=("GET",), allow_headers=("x-h",), expose_headers=("x-e",), max_age=60,
                        allow_credentials=True),
    )
    table = RouteTable("r", (VirtualHost("v", ("*",), (route,)),))
    assert wire.structure(json.loads(json.dumps(wire.unstructure(table))), RouteTable) == table
    assert list(table.referenced_clusters()) == ["a", "shadow"]
    with pytest.raises(ConsistencyError, match="missing cluster 'shadow'"):
        ProxySnapshot.build([table, Cluster("a"), EndpointSet("a")]).check()
    ProxySnapshot.build([table, Cluster("a"), EndpointSet("a"), Cluster("shadow"), EndpointSet("shadow")]).check()


def test_a_dns_clusters_version_covers_its_endpoints() -> None:
    """Engines that resolve names inline a dns cluster's endpoints in the cluster (Envoy STRICT_DNS):
    a changed endpoint set must re-send the cluster. Static clusters do not depend on theirs."""
    dns = Cluster(name="outbound|80||api.example.com", resolution="dns")

    def version(cluster: Cluster, *endpoints: LbEndpoint) -> str:
        return ProxySnapshot.build([cluster, EndpointSet(cluster.name, endpoints)]).versions["clusters"][cluster.name]

    assert version(dns, LbEndpoint("localhost", 8080)) != version(dns, LbEndpoint("localhost", 9090))
    static = Cluster(name="s")
    assert version(static, LbEndpoint("127.0.0.1", 1)) == version(static, LbEndpoint("127.0.0.1", 2))
