"""What the networking compiler knows while compiling one proxy: indexes built once."""

from __future__ import annotations

from collections.abc import Mapping

import attrs
from knotwork import CompileInput, ProxyNode, Service

from .clusters import ClusterSet
from .destinationrule import DestinationRules
from .hosts import resolve
from .httproutes import RouteScope
from .virtualservice import VirtualServices

__all__ = ["CompileContext"]


def _selected(selection: Mapping[str, object], role: str, default: str) -> str:
    value = selection.get(role)
    return value if isinstance(value, str) and value else default


@attrs.define
class CompileContext:
    """One proxy's compile: its input, the chosen strategies and the mesh's indexes."""

    inp: CompileInput
    router: str
    lb: str
    services: dict[str, Service]  # FQDN -> service, ordered by namespace then name
    clusters: ClusterSet
    virtual_services: VirtualServices

    @classmethod
    def build(cls, inp: CompileInput) -> CompileContext:
        """Index `inp`: services by FQDN, DestinationRules, VirtualServices, clusters."""
        services: dict[str, Service] = {}
        for service in sorted(inp.services, key=lambda s: (s.namespace, s.name)):
            services.setdefault(service.fqdn(inp.mesh.domain), service)
        lb = _selected(inp.selection, "load_balancer", "round_robin")
        rules = DestinationRules(inp.resources.get("DestinationRule", ()), inp.node.namespace, inp.mesh, services)
        domain = inp.mesh.domain

        def resolve_known(host: str, namespace: str) -> str:
            return resolve(host, namespace, domain, services)

        return cls(
            inp=inp,
            router=_selected(inp.selection, "router", "host"),
            lb=lb,
            services=services,
            clusters=ClusterSet(services, inp.endpoints, rules, lb),
            virtual_services=VirtualServices(inp.resources.get("VirtualService", ()), resolve_known),
        )

    @property
    def node(self) -> ProxyNode:
        return self.inp.node

    @property
    def domain(self) -> str:
        return self.inp.mesh.domain

    def resolve(self, host: str, namespace: str) -> str:
        """A host as written in `namespace`, resolved (see :func:`knotwork_routing.hosts.resolve`)."""
        return resolve(host, namespace, self.domain, self.services)

    def scope(self, gateway: str, port: int | None) -> RouteScope:
        """Where VirtualService routes are being compiled."""
        return RouteScope(gateway=gateway, port=port, clusters=self.clusters, resolve=self.resolve)
