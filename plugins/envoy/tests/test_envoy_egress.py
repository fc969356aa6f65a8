"""Egress on the envoy engine: passthrough clusters (dynamic forward proxy), dns clusters
(STRICT_DNS with the endpoint set inlined), translated and then served by a real Envoy."""

from __future__ import annotations

import asyncio

import pytest
from knotwork.distribution import SnapshotCache
from knotwork.proxyconfig import Cluster, EndpointSet, LbEndpoint, Listener

from envoy_helpers import (
    NODE, Upstream, envoy_proxy, free_port, get, http_listener, read_response, route, running, snapshot, table,
    tcp_echo, xds_server,
)
from knotwork_envoy.translate import TranslationError, pack, translate
from knotwork_envoy.translate.clusters import DNS_CACHE

DFP_CLUSTER = "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig"
DFP_FILTER = "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig"
PASSTHROUGH = Cluster(name="PassthroughCluster", resolution="passthrough", lb="least_request")
DNS = Cluster(name="outbound|80||api.example.com", resolution="dns")
#: A name that fails without asking any DNS server (longer than DNS allows: the resolver
#: refuses it before sending a query), so the test stays on loopback.
UNRESOLVABLE = ".".join(["a" * 60] * 5) + ".invalid"
DNS_EPS = EndpointSet(name=DNS.name, endpoints=(LbEndpoint("localhost", 8080, weight=2), LbEndpoint("127.0.0.1", 8081)))


# ── translation ─────────────────────────────────────────────────────────────


def test_passthrough_cluster_is_a_dynamic_forward_proxy() -> None:
    out = translate("clusters", PASSTHROUGH)
    assert out["cluster_type"] == {"name": "envoy.clusters.dynamic_forward_proxy",
                                   "typed_config": {"@type": DFP_CLUSTER, "dns_cache_config": DNS_CACHE}}
    assert out["lb_policy"] == "CLUSTER_PROVIDED"
    assert "type" not in out and "eds_cluster_config" not in out and "least_request_lb_config" not in out
    pack("clusters", PASSTHROUGH)  # valid for Envoy's API types


def test_dns_cluster_inlines_its_endpoint_set() -> None:
    out = translate("clusters", DNS, endpoints=DNS_EPS)
    assert (out["type"], out["dns_lookup_family"], out["lb_policy"]) == ("STRICT_DNS", "V4_PREFERRED", "ROUND_ROBIN")
    assert "eds_cluster_config" not in out
    lbs = out["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert out["load_assignment"]["cluster_name"] == DNS.name
    assert [(e["endpoint"]["address"]["socket_address"], e["load_balancing_weight"]) for e in lbs] == [
        ({"address": "localhost", "port_value": 8080}, 2), ({"address": "127.0.0.1", "port_value": 8081}, 1)]
    pack("clusters", DNS, endpoints=DNS_EPS)
    with pytest.raises(TranslationError, match="resolution dns: the cluster's endpoint set is needed"):
        translate("clusters", DNS)
    with pytest.raises(TranslationError, match="resolution 'magic' is not one of"):
        translate("clusters", Cluster(name="odd", resolution="magic"))


def test_static_cluster_is_unchanged_eds() -> None:
    out = translate("clusters", Cluster(name="c"))
    assert out["type"] == "EDS" and out["eds_cluster_config"]["service_name"] == "c"


def test_forward_proxy_filter_on_outbound_and_gateway_listeners_only() -> None:
    def filters(mode: str) -> list[str]:
        lis = Listener(name="l", address="127.0.0.1", port=1, mode=mode, route_table="rt")
        hcm = translate("listeners", lis)["filter_chains"][0]["filters"][0]["typed_config"]
        return [f["name"] for f in hcm["http_filters"]]

    for mode in ("http_proxy", "gateway"):
        assert filters(mode)[-2:] == ["envoy.filters.http.dynamic_forward_proxy", "envoy.filters.http.router"]
    assert "envoy.filters.http.dynamic_forward_proxy" not in filters("inbound")
    lis = Listener(name="l", address="127.0.0.1", port=1, mode="http_proxy", route_table="rt")
    dfp = translate("listeners", lis)["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][-2]
    assert dfp["typed_config"] == {"@type": DFP_FILTER, "dns_cache_config": DNS_CACHE}  # the clusters' cache
    pack("listeners", lis)


# ── a real Envoy ─────────────────────────────────────────────────────────────


def publish(cache: SnapshotCache, *resources) -> None:
    cache.set(NODE, snapshot(*resources))
    cache.notify()


@pytest.mark.anyio
async def test_envoy_passes_through_names_and_ips_and_resolves_dns_clusters() -> None:
    anywhere, named = Upstream("anywhere"), Upstream("named")
    echo, echo_port = await tcp_echo()
    cache, port = SnapshotCache(), free_port()
    async with running(anywhere, named):
        dns_eps = EndpointSet(name=DNS.name, endpoints=(LbEndpoint("localhost", named.port),))
        publish(cache, http_listener("http_proxy", port, "outbound", mode="http_proxy"),
                table("outbound", ("api", ("api.example.com",), (route("default", DNS.name),)),
                      ("allow_any", ("*",), (route("default", "PassthroughCluster"),))),
                PASSTHROUGH, EndpointSet(name="PassthroughCluster"), DNS, dns_eps)
        async with xds_server(cache) as server, envoy_proxy(server.address):
            resp = await get(port, "http://api.example.com/x", host="api.example.com")
            assert (resp.status, resp.text) == (200, "named GET /x")
            for host in (f"127.0.0.1:{anywhere.port}", f"localhost:{anywhere.port}"):
                resp = await get(port, f"http://{host}/p?q=1", host=host)
                assert (resp.status, resp.text) == (200, "anywhere GET /p?q=1"), resp.text
                assert anywhere.requests[-1][2]["host"] == host
            resp = await get(port, f"http://{UNRESOLVABLE}/", host=UNRESOLVABLE)
            assert (resp.status, resp.headers["x-knotwork-response-flags"]) == (503, "DF")

            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"CONNECT localhost:%d HTTP/1.1\r\nhost: localhost:%d\r\n\r\n" % (echo_port, echo_port))
            established = await asyncio.wait_for(read_response(reader, head_only=True), 5)
            assert established.status == 200
            assert await asyncio.wait_for(reader.readline(), 5) == b"hello\n"
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(9), 5) == b"echo:ping"
            writer.close()
    echo.close()
