"""DestinationRule ``trafficPolicy.loadBalancer.simple``: per rule, port and subset."""

from __future__ import annotations

import pytest

from knotwork_routing import ResourceError
from routing_helpers import compile_snapshot, endpoint, fqdn, http_service, resource, sidecar

SERVICES = (http_service("reviews", "default", 9080, 9090), http_service("ratings"))
ENDPOINTS = (endpoint("reviews", "127.0.0.2", labels={"version": "v1"}),
             endpoint("reviews", "127.0.0.3", labels={"version": "v2"}))


def lbs(*rules: dict) -> dict[str, str]:
    snap = compile_snapshot(sidecar("productpage"), SERVICES, ENDPOINTS,
                            [resource("DestinationRule", f"dr{i}", spec) for i, spec in enumerate(rules)])
    return {name: c.lb for name, c in snap.resources["clusters"].items() if name.startswith("outbound|")}


def subsets(**policies: dict) -> list[dict]:
    out = []
    for name in ("v1", "v2"):
        entry: dict = {"name": name, "labels": {"version": name}}
        if name in policies:
            entry["trafficPolicy"] = policies[name]
        out.append(entry)
    return out


def simple(name: str) -> dict:
    return {"loadBalancer": {"simple": name}}


def want(host: str, port: int, subset: str = "") -> str:
    return f"outbound|{port}|{subset}|{fqdn(host)}"


def test_without_a_rule_every_cluster_uses_the_mesh_default():
    assert set(lbs().values()) == {"round_robin"}


def test_rule_wide_balancer_applies_to_every_port_and_subset_of_its_host_only():
    got = lbs({"host": "reviews", "trafficPolicy": simple("RANDOM"), "subsets": subsets()},
              {"host": "productpage", "subsets": []})
    assert got[want("reviews", 9080)] == got[want("reviews", 9090)] == "random"
    assert got[want("ratings", 9080)] == "round_robin"


def test_port_level_setting_overrides_the_rule_for_that_port():
    got = lbs({"host": "reviews", "trafficPolicy": {
        "loadBalancer": {"simple": "RANDOM"},
        "portLevelSettings": [{"port": {"number": 9090}, "loadBalancer": {"simple": "LEAST_REQUEST"}}]}})
    assert got[want("reviews", 9080)] == "random"
    assert got[want("reviews", 9090)] == "least_request"


def test_subset_policy_overrides_the_rule_for_that_subset():
    vs = resource("VirtualService", "reviews", {"hosts": ["reviews"], "http": [{"route": [
        {"destination": {"host": "reviews", "subset": "v1", "port": {"number": 9080}}, "weight": 50},
        {"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}, "weight": 50}]}]})
    dr = resource("DestinationRule", "reviews", {"host": "reviews", "trafficPolicy": simple("RANDOM"),
                                                  "subsets": subsets(v2=simple("LEAST_REQUEST"))})
    snap = compile_snapshot(sidecar("productpage"), SERVICES, ENDPOINTS, [vs, dr])
    clusters = snap.resources["clusters"]
    assert clusters[want("reviews", 9080, "v1")].lb == "random"
    assert clusters[want("reviews", 9080, "v2")].lb == "least_request"


def test_unspecified_and_least_conn_alias():
    got = lbs({"host": "reviews", "trafficPolicy": {
        "loadBalancer": {"simple": "UNSPECIFIED"},
        "portLevelSettings": [{"port": {"number": 9090}, "loadBalancer": {"simple": "LEAST_CONN"}}]}})
    assert got[want("reviews", 9080)] == "round_robin"
    assert got[want("reviews", 9090)] == "least_request"


def test_unknown_balancer_names_the_rule_and_field():
    with pytest.raises(ResourceError) as err:
        lbs({"host": "reviews", "trafficPolicy": {"portLevelSettings": [
            {"port": {"number": 9080}, "loadBalancer": {"simple": "PASSTHROUGH"}}]}})
    assert str(err.value).startswith("plugin/routing: DestinationRule/default/dr0")
    assert "spec.trafficPolicy.portLevelSettings[0].loadBalancer.simple: expected one of ROUND_ROBIN" in str(err.value)
    assert "got 'PASSTHROUGH'" in str(err.value)
