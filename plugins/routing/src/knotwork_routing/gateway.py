"""Gateway nodes: a listener and route table per Gateway server port.

A gateway node serves every Gateway resource whose ``selector`` labels are
all among the node's labels (an empty selector selects every gateway node).
Each server whose ``port.number`` N has a ``gateway:N`` port on the node
becomes listener ``gateway|N`` on ``node.address:ports["gateway:N"]`` with
route table ``gateway|N``; servers sharing a port share both. The table has
one virtual host per host exposed: the hosts of the VirtualServices bound to
one of those Gateways, narrowed by the server's ``hosts``; routes of several
VirtualServices for one host are merged in order. ``tls`` is not terminated
yet (the listener's ``tls`` stays None); TCP and TLS servers come later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from knotwork import Resource
from knotwork.proxyconfig import Listener, Route, RouteTable, SnapshotBuilder, VirtualHost

from .context import CompileContext
from .errors import ResourceError, field_path, warn_unsupported
from .httproutes import http_routes
from .virtualservice import exposed_hosts, server_hosts

__all__ = ["GatewayServer", "add_gateways", "selected_gateways"]

_HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "HTTPS"})


@attrs.frozen
class GatewayServer:
    """One ``servers[]`` entry of a Gateway selected for this node."""

    gateway: Resource
    port: int
    hosts: tuple[tuple[str, str], ...]  # (namespace filter, host)
    tls: Mapping[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.gateway.namespace}/{self.gateway.name}"


def selected_gateways(ctx: CompileContext) -> list[Resource]:
    """The Gateway resources whose selector matches this node's labels."""
    labels = ctx.node.labels
    out = []
    for gw in ctx.inp.resources.get("Gateway", ()):
        selector = gw.spec.get("selector") or {}
        if not isinstance(selector, Mapping):
            raise ResourceError(gw, "spec.selector", "expected a mapping of labels")
        if all(labels.get(str(k)) == str(v) for k, v in selector.items()):
            out.append(gw)
    return out


def _servers(ctx: CompileContext) -> dict[int, list[GatewayServer]]:
    by_port: dict[int, list[GatewayServer]] = {}
    for gw in selected_gateways(ctx):
        for i, server in enumerate(gw.spec.get("servers") or ()):
            where = field_path("spec", "servers", i)
            port = server.get("port") if isinstance(server, Mapping) else None
            if not isinstance(port, Mapping) or not isinstance(port.get("number"), int):
                raise ResourceError(gw, f"{where}.port.number", "expected an integer")
            number = port["number"]
            if f"gateway:{number}" not in ctx.node.ports:
                continue
            protocol = str(port.get("protocol") or "HTTP").upper()
            if protocol not in _HTTP_PROTOCOLS:
                warn_unsupported(gw, f"{where}.port.protocol={protocol}")
                continue
            if server.get("tls"):
                warn_unsupported(gw, f"{where}.tls")
            by_port.setdefault(number, []).append(
                GatewayServer(gateway=gw, port=number, hosts=tuple(server_hosts(gw, server)), tls=None)
            )
    return by_port


def gateway_virtual_hosts(ctx: CompileContext, port: int, servers: list[GatewayServer]) -> tuple[VirtualHost, ...]:
    """One virtual host per exposed host, VirtualService routes merged in order."""
    routes: dict[str, list[Route]] = {}
    seen: set[tuple[tuple[str, str, str], str]] = set()  # (VS key, host): merged once per port
    for server in servers:
        for vs in ctx.virtual_services.bound_to(server.key):
            hosts = [h for h in exposed_hosts(vs, server.hosts) if (vs.resource.key, h) not in seen]
            if not hosts:
                continue
            compiled = http_routes(vs.resource, ctx.scope(server.key, port))
            for host in hosts:
                seen.add((vs.resource.key, host))
                routes.setdefault(host, []).extend(compiled)
    return tuple(
        VirtualHost(name=f"{host}:{port}", domains=("*",) if host == "*" else (host, f"{host}:{port}"),
                    routes=tuple(host_routes))
        for host, host_routes in routes.items()
    )


def add_gateways(builder: SnapshotBuilder, ctx: CompileContext) -> None:
    """Add the listeners and route tables of a gateway node."""
    node = ctx.node
    for port, servers in sorted(_servers(ctx).items()):
        name = f"gateway|{port}"
        builder.add(RouteTable(name=name, virtual_hosts=gateway_virtual_hosts(ctx, port, servers), router=ctx.router))
        builder.add(Listener(
            name=name, address=node.address, port=node.ports[f"gateway:{port}"], mode="gateway",
            protocol="http", route_table=name, tls=None,
        ))
