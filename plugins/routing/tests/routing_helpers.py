"""Builders for the routing plugin's tests: mesh objects, a compile run, a request."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from knotwork import (
    CompileInput, Endpoint, MeshSettings, OutboundTrafficPolicy, Protocol, ProxyNode, Resource, Service, ServicePort,
)
from knotwork.proxyconfig import ProxySnapshot, SnapshotBuilder

from knotwork_routing import SLOTS, HostRouter, compile_proxy

DOMAIN = "cluster.local"
SELECTION = {"router": "host", "load_balancer": "round_robin"}
#: Tests compile with REGISTRY_ONLY unless they say otherwise, so an outbound table holds
#: exactly what the registry names (the mesh default, ALLOW_ANY, adds a ``*`` passthrough).
MESH = MeshSettings(outbound_traffic_policy=OutboundTrafficPolicy.REGISTRY_ONLY)


def fqdn(name: str, ns: str = "default") -> str:
    return f"{name}.{ns}.svc.{DOMAIN}"


def http_service(name: str, ns: str = "default", *ports: int) -> Service:
    return Service(name, ns, tuple(ServicePort(p, f"http-{p}", Protocol.HTTP) for p in (ports or (9080,))))


def endpoint(service: str, address: str, port: int = 9080, ns: str = "default", **kw: Any) -> Endpoint:
    return Endpoint(service=fqdn(service, ns), service_port=kw.pop("service_port", port), address=address,
                    port=port, **kw)


def resource(kind: str, name: str, spec: Mapping[str, Any], ns: str = "default") -> Resource:
    return Resource("networking.istio.io/v1", kind, name, ns, spec)


def sidecar(service: str, ns: str = "default", ports: Mapping[str, int] | None = None, **kw: Any) -> ProxyNode:
    return ProxyNode(
        id=f"{service}-1.{ns}", kind="sidecar", workload=service, namespace=ns,
        ports=dict(ports if ports is not None else {"inbound:9080": 15006, "app:9080": 20001, "http_proxy": 15001}),
        metadata={"service": service, "instance": f"{service}-1"}, **kw,
    )


def gateway_node(ports: Mapping[str, int] | None = None, labels: Mapping[str, str] | None = None) -> ProxyNode:
    return ProxyNode(
        id="ingressgateway", kind="gateway", workload="ingressgateway", namespace="knotwork-system",
        labels=dict(labels if labels is not None else {"istio": "ingressgateway"}),
        ports=dict(ports if ports is not None else {"gateway:80": 8080}),
    )


def compile_input(
    node: ProxyNode,
    services: Iterable[Service] = (),
    endpoints: Iterable[Endpoint] = (),
    resources: Iterable[Resource] = (),
    selection: Mapping[str, Any] = SELECTION,
    mesh: MeshSettings = MESH,
) -> CompileInput:
    eps: dict[tuple[str, int], list[Endpoint]] = defaultdict(list)
    for ep in endpoints:
        eps[(ep.service, ep.service_port)].append(ep)
    res: dict[str, list[Resource]] = defaultdict(list)
    for r in resources:
        res[r.kind].append(r)
    return CompileInput(
        mesh=mesh, node=node, services=tuple(services),
        endpoints={k: tuple(v) for k, v in eps.items()}, resources={k: tuple(v) for k, v in res.items()},
        selection=dict(selection),
    )


def compile_snapshot(node: ProxyNode, *args: Any, **kw: Any) -> ProxySnapshot:
    """Run the networking compiler exactly as the kernel does; checks consistency."""
    builder = SnapshotBuilder().as_compiler("networking", SLOTS)
    compile_proxy(builder, compile_input(node, *args, **kw))
    return builder.snapshot()


def router(snapshot: ProxySnapshot, table: str) -> HostRouter:
    return HostRouter(snapshot.resources["routes"][table], None)


@attrs.define
class Conn:
    peer_address: tuple[str, int] = ("127.0.0.1", 40000)
    local_address: tuple[str, int] = ("127.0.0.1", 15001)
    peer_identity: str | None = None
    tls: bool = False


@attrs.define
class Req:
    """A RequestView for tests."""

    authority: str
    path: str = "/"
    method: str = "GET"
    headers: dict[str, str] = attrs.Factory(dict)
    source_labels: dict[str, str] = attrs.Factory(dict)
    connection: Conn = attrs.Factory(Conn)
    principal: str | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def target(route: Any) -> str | None:
    """The single cluster a route sends to (None for redirect/direct/no route)."""
    if route is None or route.action is None:
        return None
    (only,) = route.action.clusters
    return only.cluster


# ── Bookinfo ────────────────────────────────────────────────────────────────

BOOKINFO_SERVICES = (
    http_service("productpage"), http_service("details"), http_service("reviews"), http_service("ratings"),
)
BOOKINFO_ENDPOINTS = (
    endpoint("productpage", "127.0.0.1", 20001, service_port=9080, labels={"app": "productpage", "version": "v1"}),
    endpoint("details", "127.0.0.1", 20002, service_port=9080, labels={"app": "details", "version": "v1"}),
    endpoint("reviews", "127.0.0.1", 20003, service_port=9080, labels={"app": "reviews", "version": "v1"},
             identity="spiffe://cluster.local/ns/default/sa/bookinfo-reviews", instance="reviews-v1-1"),
    endpoint("reviews", "127.0.0.1", 20004, service_port=9080, labels={"app": "reviews", "version": "v2"}),
    endpoint("reviews", "127.0.0.1", 20005, service_port=9080, labels={"app": "reviews", "version": "v3"}),
    endpoint("ratings", "127.0.0.1", 20006, service_port=9080, labels={"app": "ratings", "version": "v1"}),
)
BOOKINFO_GATEWAY = resource("Gateway", "bookinfo-gateway", {
    "selector": {"istio": "ingressgateway"},
    "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
})
BOOKINFO_VS = resource("VirtualService", "bookinfo", {
    "hosts": ["*"],
    "gateways": ["bookinfo-gateway"],
    "http": [{
        "match": [
            {"uri": {"exact": "/productpage"}}, {"uri": {"prefix": "/static"}}, {"uri": {"exact": "/login"}},
            {"uri": {"exact": "/logout"}}, {"uri": {"prefix": "/api/v1/products"}},
        ],
        "route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}],
    }],
})
REVIEWS_DR = resource("DestinationRule", "reviews", {
    "host": "reviews",
    "subsets": [{"name": f"v{i}", "labels": {"version": f"v{i}"}} for i in (1, 2, 3)],
})
REVIEWS_JASON_VS = resource("VirtualService", "reviews", {
    "hosts": ["reviews"],
    "http": [
        {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
         "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
        {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]},
    ],
})
