"""The ``networking`` compiler: one proxy's listeners, route tables, clusters and endpoints.

Entry point :func:`compile_proxy`. Ports come from the platform, by role
(``node.ports``): ``inbound:<p>`` / ``app:<p>`` for each service port the
sidecar serves, ``http_proxy`` for the app's ``HTTP_PROXY``,
``tcp:<host>:<p>`` for each TCP upstream, ``gateway:<p>`` for gateways.

Sidecar inbound, per served service port ``p`` (services named
``node.metadata["service"]`` in the node's namespace)::

    Listener inbound|p  (node.address:ports["inbound:p"], mode inbound)
      http → RouteTable inbound|p: "*" → prefix "/" → Cluster inbound|p||
      tcp  → Cluster inbound|p||
    EndpointSet inbound|p|| = 127.0.0.1:ports["app:p"]

When the mesh selects a certificate authority, each inbound listener's ``tls``
is the workload's PeerAuthentication mode for its port ``p.targetPort`` (or
``p``) — see :mod:`knotwork_routing.peerauth` — and outbound clusters get
upstream TLS (see :mod:`knotwork_routing.upstreamtls`); inbound clusters never.

Sidecar outbound: Listener ``http_proxy`` → RouteTable ``outbound`` (see
:mod:`knotwork_routing.outbound`; with outboundTrafficPolicy ALLOW_ANY it ends
with a ``*`` virtual host to Cluster ``PassthroughCluster``, see
:mod:`knotwork_routing.egress`), and Listener ``outbound|tcp|<fqdn>|<p>``
per TCP upstream (a VirtualService's ``tcp`` routes may split it over
weighted clusters, see :mod:`knotwork_routing.tcproutes`). Gateways: see :mod:`knotwork_routing.gateway`. Every
proxy gets ``outbound|<p>||<fqdn>`` for every service port, and any other
cluster its routes name (see :mod:`knotwork_routing.clusters`).
"""

from __future__ import annotations

import attrs
from knotwork import CompileInput, OutboundTrafficPolicy, Service
from knotwork.proxyconfig import (
    Cluster, EndpointSet, LbEndpoint, Listener, RouteTable, SnapshotBuilder, VirtualHost,
)

from .context import CompileContext
from .egress import add_passthrough, outbound_policy, passthrough_virtual_host
from .gateway import add_gateways
from .hosts import inbound_cluster, is_http
from .outbound import OUTBOUND, default_route, outbound_route_table
from .slots import SLOTS
from .tcproutes import tcp_route

__all__ = ["SLOTS", "compile_proxy", "served_services"]

LOOPBACK = "127.0.0.1"


def compile_proxy(builder: SnapshotBuilder, inp: CompileInput) -> None:
    """Compile one proxy's networking resources into `builder`.

    Raises :class:`~knotwork_routing.errors.ResourceError` (a ValueError)
    naming the resource and field when a resource cannot be translated.
    """
    ctx = CompileContext.build(inp)
    ctx.clusters.want_service_ports()
    if inp.node.kind == "sidecar":
        add_inbound(builder, ctx)
        add_outbound(builder, ctx)
    elif inp.node.kind == "gateway":
        add_gateways(builder, ctx)
    ctx.clusters.emit(builder)


# ── inbound ─────────────────────────────────────────────────────────────────


def served_services(ctx: CompileContext) -> list[Service]:
    """The services this sidecar's workload serves: named in its metadata, in its namespace."""
    name = ctx.node.metadata.get("service")
    return [s for s in ctx.registry.values() if s.name == name and s.namespace == ctx.node.namespace]


def add_inbound(builder: SnapshotBuilder, ctx: CompileContext) -> None:
    """A listener, cluster and endpoint (the local app) per served service port."""
    node = ctx.node
    for service in served_services(ctx):
        fqdn = service.fqdn(ctx.domain)
        for sp in service.ports:
            listen = node.ports.get(f"inbound:{sp.port}")
            if listen is None:
                continue
            name = inbound_cluster(sp.port)
            http = is_http(sp.protocol)
            app_port = node.ports.get(f"app:{sp.port}", sp.target_port or sp.port)
            builder.add(Cluster(name=name, service=fqdn, port=sp.port, protocol="http" if http else "tcp", lb=ctx.lb))
            builder.add(EndpointSet(name=name, endpoints=(
                LbEndpoint(address=LOOPBACK, port=app_port, instance=node.metadata.get("instance", "")),
            )))
            table = f"inbound|{sp.port}"
            if http:
                builder.add(RouteTable(name=table, router=ctx.router, virtual_hosts=(
                    VirtualHost(name=table, domains=("*",), routes=(default_route(name),)),
                )))
            builder.add(Listener(
                name=table, address=node.address, port=listen, mode="inbound", protocol="http" if http else "tcp",
                route_table=table if http else None, cluster=None if http else name,
                tls=ctx.peer_tls(sp.target_port or sp.port),
            ))


# ── outbound ────────────────────────────────────────────────────────────────


def add_outbound(builder: SnapshotBuilder, ctx: CompileContext) -> None:
    """The app's ``HTTP_PROXY`` listener with the outbound route table, and TCP upstream listeners."""
    node = ctx.node
    if "http_proxy" in node.ports:
        table = outbound_route_table(ctx)
        if outbound_policy(node, ctx.inp) is OutboundTrafficPolicy.ALLOW_ANY:  # see knotwork_routing.egress
            table = attrs.evolve(table, virtual_hosts=(*table.virtual_hosts, passthrough_virtual_host()))
            add_passthrough(builder, ctx.lb)
        builder.add(table)
        builder.add(Listener(
            name="http_proxy", address=LOOPBACK, port=node.ports["http_proxy"], mode="http_proxy",
            protocol="http", route_table=OUTBOUND,
        ))
    for key, listen in sorted(node.ports.items()):
        if not key.startswith("tcp:"):
            continue
        host, _, port_text = key[len("tcp:"):].rpartition(":")
        if not host or not port_text.isdigit():
            raise ValueError(f"plugin/routing: proxy {node.id!r}: port role {key!r} is not tcp:<host>:<port>")
        fqdn, port = ctx.resolve(host, node.namespace), int(port_text)
        if fqdn in ctx.registry and fqdn not in ctx.services:
            continue  # a service this sidecar's egress hosts leave out: no listener, as in Istio
        split = tcp_route(ctx, fqdn, port)
        if split is not None and len(split) == 1:
            split, cluster = None, split[0].cluster
        else:
            cluster = None if split else ctx.clusters.want(fqdn, port, protocol="tcp")
        builder.add(Listener(
            name=f"outbound|tcp|{fqdn}|{port}", address=LOOPBACK, port=listen, mode="outbound", protocol="tcp",
            cluster=cluster, weighted_clusters=split or (),
        ))
