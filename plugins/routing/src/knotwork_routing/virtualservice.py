"""VirtualService (networking.istio.io): which hosts and gateways each one binds.

A VirtualService's ``hosts`` are resolved relative to its namespace (short
names become FQDNs; ``*`` and ``*.suffix`` stay); its ``gateways`` default to
``["mesh"]`` and are keyed ``mesh`` or ``<namespace>/<name>`` (a bare name is
relative to the VirtualService's namespace). The per-route translation lives
in :mod:`knotwork_routing.httproutes`; this module decides *where* it applies:

- for sidecars (the ``mesh`` gateway), the first VirtualService naming a host
  owns it — its routes replace the default route of that host's virtual hosts
  (no match: 404, as in Istio); a wildcard host applies to services it covers
  that no VirtualService names exactly, the longest wildcard first;
- for a gateway, every VirtualService bound to it contributes, in order, and
  routes of several VirtualServices for one host are merged (as Istio does).

``exportTo`` and Sidecar egress hosts decide which VirtualServices a proxy
sees (:mod:`knotwork_routing.visibility`). ``tcp`` routes: see
:mod:`knotwork_routing.tcproutes`. Still to come:
``tls[]``, delegation.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import attrs
from knotwork import Resource

from .errors import ResourceError, field_path, warn_unsupported
from .hosts import covers, intersect

__all__ = ["BoundVirtualService", "VirtualServices", "exposed_hosts", "gateway_key", "owner_of", "server_hosts"]

MESH = "mesh"


def gateway_key(name: str, namespace: str) -> str:
    """``mesh``, or ``<ns>/<name>`` for a gateway named in a resource of `namespace`."""
    name = name.strip()
    if name == MESH or "/" in name:
        return name
    return f"{namespace}/{name}"


@attrs.frozen
class BoundVirtualService:
    """A VirtualService with its hosts resolved and gateways keyed."""

    resource: Resource
    hosts: tuple[str, ...]
    gateways: frozenset[str]

    @classmethod
    def parse(cls, vs: Resource, resolve: Callable[[str, str], str]) -> BoundVirtualService:
        """Read `vs`'s hosts and gateways; raises ResourceError on malformed ones."""
        hosts = vs.spec.get("hosts")
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h for h in hosts):
            raise ResourceError(vs, "spec.hosts", "expected a non-empty list of host names")
        gateways = vs.spec.get("gateways") or [MESH]
        if not isinstance(gateways, list) or not all(isinstance(g, str) for g in gateways):
            raise ResourceError(vs, "spec.gateways", "expected a list of gateway names")
        if "tls" in vs.spec:
            warn_unsupported(vs, field_path("spec", "tls"))
        resolved = tuple(dict.fromkeys(resolve(h, vs.namespace) for h in hosts))
        return cls(vs, resolved, frozenset(gateway_key(g, vs.namespace) for g in gateways))


class VirtualServices:
    """Every VirtualService of the mesh, parsed once per compile."""

    def __init__(
        self,
        resources: Iterable[Resource],
        resolve: Callable[[str, str], str],
        keep: Callable[[BoundVirtualService], bool] | None = None,
    ) -> None:
        """Parse `resources`; `keep` (when given) says which ones this proxy sees."""
        parsed = (BoundVirtualService.parse(vs, resolve) for vs in resources)
        self.all = tuple(vs for vs in parsed if keep is None or keep(vs))

    def bound_to(self, gateway: str) -> list[BoundVirtualService]:
        """The VirtualServices bound to `gateway` (``mesh`` or ``ns/name``), in order."""
        return [vs for vs in self.all if gateway in vs.gateways]

    def mesh_hosts(self) -> dict[str, BoundVirtualService]:
        """Host → the VirtualService owning it for sidecars (the first naming it).

        ``*`` is not a valid host for the mesh gateway (Istio refuses it) and
        is left out here.
        """
        owners: dict[str, BoundVirtualService] = {}
        for vs in self.bound_to(MESH):
            for host in vs.hosts:
                if host == "*":
                    warn_unsupported(vs.resource, "spec.hosts['*'] for the mesh gateway")
                    continue
                owners.setdefault(host, vs)
        return owners


def owner_of(fqdn: str, owners: Mapping[str, BoundVirtualService]) -> BoundVirtualService | None:
    """The mesh VirtualService for a service: exact host first, then the longest covering wildcard."""
    found = owners.get(fqdn)
    if found is not None:
        return found
    wildcards = sorted((h for h in owners if h.startswith("*.")), key=len, reverse=True)
    for pattern in wildcards:
        if covers(pattern, fqdn):
            return owners[pattern]
    return None


def server_hosts(gateway: Resource, server: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A Gateway server's ``hosts`` as (namespace filter, host); ``*`` filter = any namespace."""
    out = []
    for entry in server.get("hosts") or ["*"]:
        namespace, sep, host = str(entry).rpartition("/")
        if not sep:
            namespace = "*"
        elif namespace == ".":
            namespace = gateway.namespace
        out.append((namespace, host.lower()))
    return out


def exposed_hosts(vs: BoundVirtualService, allowed: Collection[tuple[str, str]]) -> list[str]:
    """The domains of `vs` a gateway server exposes: each VS host narrowed by the server's hosts."""
    out: list[str] = []
    for host in vs.hosts:
        for namespace, pattern in allowed:
            if namespace not in ("*", vs.resource.namespace):
                continue
            common = intersect(host, pattern)
            if common is not None and common not in out:
                out.append(common)
    return out
