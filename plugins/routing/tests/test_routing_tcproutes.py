"""VirtualService ``tcp`` routes on a sidecar's TCP upstream listeners."""

from __future__ import annotations

import pytest
from knotwork import Protocol, Service, ServicePort
from knotwork.proxyconfig import WeightedCluster

from knotwork_routing import ResourceError
from routing_helpers import compile_snapshot, fqdn, resource, sidecar

MONGO = fqdn("mongodb")
DB = Service("mongodb", "default", (ServicePort(27017, "mongo", Protocol.TCP), ServicePort(27018, "mongo-2", Protocol.TCP)))
SUBSETS = resource("DestinationRule", "mongodb", {"host": "mongodb", "subsets": [
    {"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]})


def listener(vs_spec: dict | None, port: int = 27017, **node_kw):
    node = sidecar("ratings", ports={"tcp:mongodb:27017": 15100, "tcp:mongodb:27018": 15101}, **node_kw)
    resources = [SUBSETS] + ([resource("VirtualService", "mongodb", {"hosts": ["mongodb"], **vs_spec})] if vs_spec else [])
    snap = compile_snapshot(node, [DB], [], resources)
    lis = snap.resources["listeners"][f"outbound|tcp|{MONGO}|{port}"]
    return lis, snap


def to(subset: str, weight: int | None = None, port: int | None = None) -> dict:
    dest: dict = {"host": "mongodb", "subset": subset}
    if port:
        dest["port"] = {"number": port}
    return {"destination": dest, **({"weight": weight} if weight is not None else {})}


def test_without_tcp_routes_the_listener_uses_the_service_cluster():
    lis, _ = listener(None)
    assert (lis.cluster, lis.weighted_clusters) == (f"outbound|27017||{MONGO}", ())


def test_weighted_tcp_route_splits_the_listener():
    lis, snap = listener({"tcp": [{"route": [to("v1", 80), to("v2", 20)]}]})
    assert lis.cluster is None
    assert lis.weighted_clusters == (WeightedCluster(f"outbound|27017|v1|{MONGO}", 80),
                                     WeightedCluster(f"outbound|27017|v2|{MONGO}", 20))
    assert all(w.cluster in snap.resources["clusters"] for w in lis.weighted_clusters)


def test_single_destination_is_a_plain_cluster():
    lis, _ = listener({"tcp": [{"route": [to("v2")]}]})
    assert (lis.cluster, lis.weighted_clusters) == (f"outbound|27017|v2|{MONGO}", ())


def test_routes_by_port_first_match_wins():
    spec = {"tcp": [{"match": [{"port": 27018}], "route": [to("v2")]},
                    {"match": [{"port": 27017}], "route": [to("v1")]},
                    {"route": [to("v2")]}]}
    assert listener(spec, 27017)[0].cluster == f"outbound|27017|v1|{MONGO}"
    assert listener(spec, 27018)[0].cluster == f"outbound|27018|v2|{MONGO}"


def test_source_labels_and_namespace_are_the_proxys_own():
    spec = {"tcp": [{"match": [{"sourceLabels": {"app": "ratings"}, "sourceNamespace": "default"}],
                     "route": [to("v2")]}]}
    assert listener(spec, labels={"app": "ratings"})[0].cluster == f"outbound|27017|v2|{MONGO}"
    assert listener(spec, labels={"app": "reviews"})[0].cluster == f"outbound|27017||{MONGO}"


def test_no_matching_entry_keeps_the_default_and_other_gateways_do_not_apply():
    spec = {"tcp": [{"match": [{"port": 1}], "route": [to("v1")]},
                    {"match": [{"gateways": ["ingress"]}], "route": [to("v1")]}]}
    assert listener(spec)[0].cluster == f"outbound|27017||{MONGO}"


def test_destination_subnets_refused_and_empty_route_refused():
    with pytest.raises(ResourceError, match=r"spec\.tcp\[0\]\.match\[0\]\.destinationSubnets"):
        listener({"tcp": [{"match": [{"destinationSubnets": ["10.0.0.0/8"]}], "route": [to("v1")]}]})
    with pytest.raises(ResourceError, match=r"spec\.tcp\[0\]\.route: expected at least one destination"):
        listener({"tcp": [{"route": []}]})
