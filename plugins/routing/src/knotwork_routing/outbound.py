"""The sidecar's ``outbound`` route table: one virtual host per HTTP service port.

A virtual host ``<fqdn>:<port>`` answers to the names an app may use:
``fqdn``, ``name.ns.svc``, ``name.ns`` and, for services in the proxy's own
namespace, ``name`` — each also with ``:port``. The names *without* a port go
to one port of the service only: 80 when it has it, else its lowest HTTP
port (a bare ``Host: reviews`` cannot say which port it meant). Its default
route sends everything to ``outbound|<port>||<fqdn>``; a mesh VirtualService
for the host replaces it. VirtualService hosts that are not services get a
virtual host of their own.

ServiceEntry hosts (:mod:`knotwork_routing.serviceentry`) answer to the host
as written, with and without port like services; their non-HTTP ports (TLS,
TCP, …) get a virtual host ``host:port`` too, so an app can reach them with
``CONNECT`` through its HTTP proxy (HTTPS to an external host).
"""

from __future__ import annotations

from collections.abc import Iterable

from knotwork import Service
from knotwork.proxyconfig import Route, RouteAction, RouteTable, VirtualHost, WeightedCluster

from .context import CompileContext
from .hosts import is_http
from .httproutes import http_routes
from .serviceentry import is_external
from .virtualservice import MESH, BoundVirtualService, owner_of

__all__ = ["OUTBOUND", "outbound_route_table", "service_domains"]

OUTBOUND = "outbound"


def service_domains(service: Service, port: int, client_namespace: str, domain: str, portless: bool) -> list[str]:
    """The domains of one service port, as seen from `client_namespace`."""
    if is_external(service):  # a ServiceEntry host: as written only
        names = [service.fqdn(domain)]
        return [*names, f"{names[0]}:{port}"] if portless else [f"{names[0]}:{port}"]
    names = [service.fqdn(domain), f"{service.name}.{service.namespace}.svc", f"{service.name}.{service.namespace}"]
    if service.namespace == client_namespace:
        names.append(service.name)
    with_port = [f"{name}:{port}" for name in names]
    return [*names, *with_port] if portless else with_port


def _portless_port(service: Service) -> int | None:
    ports = sorted(p.port for p in service.ports if is_http(p.protocol))
    if not ports:
        return None
    return 80 if 80 in ports else ports[0]


def default_route(cluster: str) -> Route:
    """Everything to one cluster."""
    return Route(name="default", action=RouteAction(clusters=(WeightedCluster(cluster),)))


def outbound_route_table(ctx: CompileContext) -> RouteTable:
    """The route table behind the sidecar's ``http_proxy`` listener."""
    owners = ctx.virtual_services.mesh_hosts()
    used: set[str] = set()
    vhosts = list(_service_hosts(ctx, owners, used))
    for host, vs in owners.items():
        if host in ctx.services or host in used:
            continue
        used.add(host)
        routes = tuple(http_routes(vs.resource, ctx.scope(MESH, None)))
        vhosts.append(VirtualHost(name=host, domains=(host,), routes=routes))
    return RouteTable(name=OUTBOUND, virtual_hosts=tuple(vhosts), router=ctx.router)


def _service_hosts(
    ctx: CompileContext, owners: dict[str, BoundVirtualService], used: set[str]
) -> Iterable[VirtualHost]:
    for fqdn, service in ctx.services.items():
        portless = _portless_port(service)
        vs = owner_of(fqdn, owners)
        external = is_external(service)
        for sp in sorted(service.ports, key=lambda p: p.port):
            if not is_http(sp.protocol) and not external:
                continue
            names = service_domains(service, sp.port, ctx.node.namespace, ctx.domain, sp.port == portless)
            domains = tuple(d for d in names if d not in used)
            if not domains:
                continue
            used.update(domains)
            if vs is None or not is_http(sp.protocol):  # a ServiceEntry's TCP/TLS port: CONNECT only
                routes: tuple[Route, ...] = (default_route(ctx.clusters.want(fqdn, sp.port)),)
            else:
                routes = tuple(http_routes(vs.resource, ctx.scope(MESH, sp.port)))
            yield VirtualHost(name=f"{fqdn}:{sp.port}", domains=domains, routes=routes)
