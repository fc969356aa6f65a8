"""Gateway nodes: a listener and route table per Gateway server port.

A gateway node serves every Gateway resource whose ``selector`` labels are
all among the node's labels (an empty selector selects every gateway node).
Each server whose ``port.number`` N has a ``gateway:N`` port on the node
becomes listener ``gateway|N`` on ``node.address:ports["gateway:N"]`` with
route table ``gateway|N``; servers sharing a port share both. The table has
one virtual host per host exposed: the hosts of the VirtualServices bound to
one of those Gateways, narrowed by the server's ``hosts``; routes of several
VirtualServices for one host are merged in order.

TLS (see :mod:`knotwork_routing.gatewaytls`): a server whose ``tls.mode`` is
``SIMPLE`` or ``MUTUAL`` makes its port's listener terminate TLS; each such
server is one :class:`~knotwork.proxyconfig.ServerTls` chain whose server
names (SNI) are the server's hosts (``*``: any name, the fallback chain), so
several servers on one port present different certificates by SNI. A name
already claimed by an earlier server of the port is left to it (warned), as a
port is either TLS or plaintext: a plaintext server on a TLS port (or the
reverse) is an error naming the later server. The certificates travel as
Secrets. ``tls.httpsRedirect`` on a plaintext server answers its exposed
hosts with a 301 to ``https://`` on the gateway's port-443 listener. After
the handshake, routes are chosen by Host among all the port's hosts (Istio
keeps one route table per server). TCP and TLS-protocol servers come later.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from knotwork import Resource
from knotwork.proxyconfig import Listener, Redirect, Route, RouteMatch, RouteTable, ServerTls, SnapshotBuilder, VirtualHost

from .context import CompileContext
from .errors import ResourceError, field_path, warn_unsupported
from .gatewaytls import TerminatedTls, parse_server_tls
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
    tls: TerminatedTls | None = None
    https_redirect: bool = False
    where: str = "spec.servers"

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
    base = ctx.inp.mesh_dir if ctx.inp.mesh_dir is not None else Path.cwd()
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
            tls = parse_server_tls(gw, server.get("tls"), f"{where}.tls", base)
            if protocol == "HTTPS" and tls is None:
                raise ResourceError(gw, f"{where}.tls.mode", "an HTTPS server needs tls mode SIMPLE or MUTUAL")
            if protocol != "HTTPS" and tls is not None:
                raise ResourceError(gw, f"{where}.port.protocol", f"TLS is terminated on HTTPS servers, not {protocol}")
            redirect = server.get("tls") or {}
            https_redirect = bool(redirect.get("httpsRedirect")) if isinstance(redirect, Mapping) else False
            candidate = GatewayServer(gateway=gw, port=number, hosts=tuple(server_hosts(gw, server)), tls=tls,
                                      https_redirect=https_redirect and tls is None, where=where)
            same_port = by_port.setdefault(number, [])
            if same_port and (same_port[0].tls is None) != (tls is None):
                first = same_port[0]
                raise ResourceError(gw, f"{where}.tls", (
                    f"port {number} is already served {'in plaintext' if first.tls is None else 'with TLS'} by "
                    f"{first.gateway} {first.where}; a port is either TLS or plaintext"))
            same_port.append(candidate)
    return by_port


def _tls_chains(servers: list[GatewayServer]) -> tuple[tuple[ServerTls, ...], list[Any]]:
    """The TLS chains of one port's servers, by SNI (first server wins a name), and their secrets."""
    chains: list[ServerTls] = []
    secrets: dict[str, Any] = {}
    claimed: dict[str, GatewayServer] = {}
    for server in servers:
        assert server.tls is not None
        names: list[str] = []
        for _, host in server.hosts:
            name = "" if host == "*" else host
            if name in claimed:
                if claimed[name] is not server:
                    warn_unsupported(server.gateway, f"{server.where}.hosts[{host!r}] (TLS for it comes from "
                                                     f"{claimed[name].gateway} {claimed[name].where})")
                continue
            claimed[name] = server
            names.append(name)
        if not names:
            continue
        for secret in server.tls.secrets:
            secrets.setdefault(secret.name, secret)
        if "" in names:  # the fallback chain: no server names
            chains.append(attrs.evolve(server.tls.chain, server_names=()))
            names.remove("")
        if names:
            chains.append(attrs.evolve(server.tls.chain, server_names=tuple(sorted(names))))
    return tuple(chains), list(secrets.values())


def _https_redirect(ctx: CompileContext) -> Route:
    """Istio's ``httpsRedirect``: 301 to https, on the node's port-443 listener (the port dropped if it is 443)."""
    port = ctx.node.ports.get("gateway:443", 443)
    return Route(name="https-redirect", match=RouteMatch(prefix="/"),
                 redirect=Redirect(scheme="https", port=0 if port == 443 else port, status=301))


def gateway_virtual_hosts(ctx: CompileContext, port: int, servers: list[GatewayServer]) -> tuple[VirtualHost, ...]:
    """One virtual host per exposed host, VirtualService routes merged in order."""
    routes: dict[str, list[Route]] = {}
    seen: set[tuple[tuple[str, str, str], str]] = set()  # (VS key, host): merged once per port
    for server in servers:
        for vs in ctx.virtual_services.bound_to(server.key):
            hosts = [h for h in exposed_hosts(vs, server.hosts) if (vs.resource.key, h) not in seen]
            if not hosts:
                continue
            compiled = [_https_redirect(ctx)] if server.https_redirect else http_routes(vs.resource, ctx.scope(server.key, port))
            for host in hosts:
                seen.add((vs.resource.key, host))
                if server.https_redirect:
                    routes[host] = list(compiled)  # the redirect replaces whatever else was bound to the host
                else:
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
        chains: tuple[ServerTls, ...] = ()
        if servers[0].tls is not None:
            chains, secrets = _tls_chains(servers)
            for secret in secrets:
                builder.add(secret)
        builder.add(RouteTable(name=name, virtual_hosts=gateway_virtual_hosts(ctx, port, servers), router=ctx.router))
        builder.add(Listener(
            name=name, address=node.address, port=node.ports[f"gateway:{port}"], mode="gateway",
            protocol="http", route_table=name, server_tls=chains,
        ))
