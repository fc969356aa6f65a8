"""The xDS server without Envoy: request mapping, translation failures, the node handshake."""

from __future__ import annotations

import pytest
from envoy_data_plane.envoy.config.core.v3 import Node
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest as XdsRequest
from envoy_data_plane.google.rpc import Status
from knotwork.distribution import AdsSession, DiscoveryRequest, SnapshotCache
from knotwork.proxyconfig import Cluster, EndpointSet
from knotwork.records import ComponentContext

from envoy_helpers import snapshot
from knotwork_envoy.server import EnvoyServer, request_from_xds
from knotwork_envoy.settings import EnvoySettings
from knotwork_envoy.translate import TYPE_KEYS, TYPE_URLS

pytestmark = pytest.mark.anyio


def make_server(cache: SnapshotCache, settings: EnvoySettings | None = None) -> EnvoyServer:
    ctx = ComponentContext(mesh=None, settings=settings, mesh_dir=None, state_dir=None, options={"listen": "127.0.0.1:0"})  # type: ignore[arg-type]
    return EnvoyServer(ctx, cache)


def test_type_urls_map_both_ways() -> None:
    assert set(TYPE_URLS) == {"listeners", "routes", "clusters", "endpoints", "secrets"}
    assert all(TYPE_KEYS[url] == key for key, url in TYPE_URLS.items())


def test_requests_and_nacks_become_core_requests() -> None:
    ack = XdsRequest(version_info="v1", response_nonce="3", type_url=TYPE_URLS["endpoints"], resource_names=["a", "b"])
    assert request_from_xds(ack, "endpoints") == DiscoveryRequest("endpoints", "v1", "3", ("a", "b"), None)
    nack = XdsRequest(version_info="v1", response_nonce="4", type_url=TYPE_URLS["listeners"],
                      error_detail=Status(code=13, message="cannot bind '127.0.0.1:80'"))
    assert request_from_xds(nack, "listeners").error_detail == "cannot bind '127.0.0.1:80'"
    silent = XdsRequest(response_nonce="5", error_detail=Status(code=3))
    assert request_from_xds(silent, "listeners").error_detail == "rejected (code 3)"


def test_untranslatable_resources_are_left_out_and_reported() -> None:
    cache = SnapshotCache()
    server = make_server(cache)
    snap = snapshot(Cluster(name="good"), EndpointSet(name="good"), Cluster(name="bad", lb="ring_hash"), EndpointSet(name="bad"))
    session = AdsSession("n")
    session.on_request(DiscoveryRequest("clusters"))
    (push,) = session.plan(snap)
    response = server.response(push, snap)
    assert (response.type_url, response.version_info, response.nonce) == (TYPE_URLS["clusters"], push.version, push.nonce)
    assert [r.type_url for r in response.resources] == [TYPE_URLS["clusters"]]
    assert "balancer 'ring_hash' has no Envoy equivalent" in server.errors[("clusters", "bad")]
    again = server.response(push, snap)  # cached, per (type, name, version): not translated twice
    assert again.resources[0] is response.resources[0]


def test_settings_shape_translation() -> None:
    server = make_server(SnapshotCache(), EnvoySettings(server_name="edge"))
    assert server.options.server_name == "edge"


async def test_stream_needs_a_node_then_pushes_in_xds_order() -> None:
    cache = SnapshotCache()
    server = make_server(cache)
    from knotwork.proxyconfig import Listener, RouteTable

    cache.set("n1", snapshot(Listener(name="l", address="127.0.0.1", port=1, mode="inbound", route_table="r"),
                             RouteTable(name="r"), Cluster(name="c"), EndpointSet(name="c")))

    async def requests(*reqs: XdsRequest):
        for req in reqs:
            yield req

    assert [r async for r in server.stream_aggregated_resources(requests(XdsRequest(type_url=TYPE_URLS["clusters"])))] == []
    stream = server.stream_aggregated_resources(requests(
        XdsRequest(node=Node(id="n1"), type_url=TYPE_URLS["clusters"]),
        XdsRequest(type_url=TYPE_URLS["listeners"]),
        XdsRequest(type_url=TYPE_URLS["endpoints"], resource_names=["c"]),
        XdsRequest(type_url="type.googleapis.com/envoy.service.runtime.v3.Runtime"),
    ))
    sent = []
    async for response in stream:
        sent.append(response.type_url.rsplit(".", 1)[1])
        if len(sent) == 3:
            break
    await stream.aclose()
    assert sent == ["Cluster", "Listener", "ClusterLoadAssignment"]
    assert cache.connected["n1"] == 0 and cache.status["n1"].sent.keys() == {"clusters", "listeners", "endpoints"}


def test_only_tables_behind_the_http_proxy_route_connect() -> None:
    from knotwork.proxyconfig import Listener, Route, RouteAction, RouteTable, VirtualHost, WeightedCluster
    from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration

    server = make_server(SnapshotCache())

    def table(name: str) -> RouteTable:
        return RouteTable(name=name, virtual_hosts=(VirtualHost(name="v", domains=("*",), routes=(
            Route(name="d", action=RouteAction(clusters=(WeightedCluster("c"),))),)),))

    snap = snapshot(Listener(name="http_proxy", address="127.0.0.1", port=1, mode="http_proxy", route_table="outbound"),
                    Listener(name="inbound|9080", address="127.0.0.1", port=2, mode="inbound", route_table="inbound|9080"),
                    table("outbound"), table("inbound|9080"), Cluster(name="c"), EndpointSet(name="c"))
    session = AdsSession("n")
    session.on_request(DiscoveryRequest("routes", resource_names=("outbound", "inbound|9080")))
    (push,) = session.plan(snap)
    configs = {c.name: c for c in (RouteConfiguration.parse(r.value) for r in server.response(push, snap).resources)}
    assert [r.name for r in configs["outbound"].virtual_hosts[0].routes] == ["d/connect", "d"]
    assert [r.name for r in configs["inbound|9080"].virtual_hosts[0].routes] == ["d"]
