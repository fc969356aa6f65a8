"""What the networking compiler knows while compiling one proxy: indexes built once."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import attrs
from knotwork import CompileInput, ProxyNode, Service
from knotwork.proxyconfig import PeerTls

from .clusters import ClusterSet
from .destinationrule import DestinationRules
from .errors import warn_ignored
from .hosts import resolve
from .httproutes import RouteScope
from .peerauth import PeerAuthentications
from .serviceentry import ServiceEntries
from .upstreamtls import UpstreamTlsPolicy
from .virtualservice import MESH, VirtualServices
from .visibility import Visibility

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
    services: dict[str, Service]  # FQDN -> service this proxy sees (exportTo, Sidecar egress)
    clusters: ClusterSet
    virtual_services: VirtualServices
    registry: dict[str, Service]  # FQDN -> every service, ordered by namespace then name
    visibility: Visibility
    peers: PeerAuthentications | None  # None: the mesh selects no certificate authority (no mTLS)

    @classmethod
    def build(cls, inp: CompileInput) -> CompileContext:
        """Index `inp`: services by FQDN, DestinationRules, VirtualServices, clusters.

        Only what this proxy sees is indexed (see :mod:`knotwork_routing.visibility`):
        resources exported to its namespace and, for a sidecar scoped by a
        Sidecar resource, the services and VirtualServices its egress hosts admit.
        """
        registry: dict[str, Service] = {}
        for service in sorted(inp.services, key=lambda s: (s.namespace, s.name)):
            registry.setdefault(service.fqdn(inp.mesh.domain), service)
        visibility = Visibility.build(inp)
        # ServiceEntry hosts are services too (a platform service keeps its name)
        endpoints = ServiceEntries(visibility.resources(inp, "ServiceEntry")).merge_into(registry, inp.endpoints)
        lb = _selected(inp.selection, "load_balancer", "round_robin")
        domain = inp.mesh.domain

        def resolve_known(host: str, namespace: str) -> str:
            return resolve(host, namespace, domain, registry)

        virtual_services = VirtualServices(
            visibility.resources(inp, "VirtualService"), resolve_known,
            keep=lambda vs: visibility.admits_any(vs.resource.namespace, vs.hosts),
        )
        services = visibility.services(
            registry, ((vs.resource, vs.hosts) for vs in virtual_services.bound_to(MESH)), resolve_known
        )
        rules = DestinationRules(visibility.resources(inp, "DestinationRule"), inp.node.namespace, inp.mesh, services)
        peers = _peer_authentications(inp)
        base = inp.mesh_dir if inp.mesh_dir is not None else Path.cwd()
        return cls(
            inp=inp,
            router=_selected(inp.selection, "router", "host"),
            lb=lb,
            services=services,
            clusters=ClusterSet(services, endpoints, rules, lb, UpstreamTlsPolicy(rules, peers, base)),
            virtual_services=virtual_services,
            registry=registry,
            visibility=visibility,
            peers=peers,
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

    def peer_tls(self, workload_port: int) -> PeerTls | None:
        """The mTLS this sidecar's inbound listener for `workload_port` accepts (None: no CA, plaintext)."""
        if self.peers is None:
            return None
        mode = self.peers.mode(self.node.namespace, self.node.labels, workload_port)
        return PeerTls(mode=mode, trust_domain=self.inp.mesh.trust_domain)

    def scope(self, gateway: str, port: int | None) -> RouteScope:
        """Where VirtualService routes are being compiled."""
        return RouteScope(gateway=gateway, port=port, clusters=self.clusters, resolve=self.resolve)


def _peer_authentications(inp: CompileInput) -> PeerAuthentications | None:
    """Every PeerAuthentication, validated, when the mesh selects a certificate authority; else None (warned)."""
    policies = tuple(inp.resources.get("PeerAuthentication", ()))
    if inp.selection.get("certificate_authority"):
        return PeerAuthentications(policies, inp.mesh)
    for policy in policies:
        warn_ignored(policy, "spec",
                     "PeerAuthentication ignored: the mesh selects no certificate_authority (plaintext)")
    return None
