"""What one proxy may see: ``exportTo`` and a Sidecar's ``egress[].hosts`` (Istio's scoping).

**exportTo** (VirtualService, DestinationRule, ServiceEntry): a list of
namespaces the resource is visible to — ``.`` its own namespace, ``*`` every
namespace, ``~`` none, or namespace names. Without it the mesh-wide default
``*`` applies (Istio's ``defaultVirtualServiceExportTo`` & co.). A resource
not exported to a proxy's namespace does not exist for that proxy: its
routes, subsets and hosts are not compiled in. This holds for gateways too,
by the gateway proxy's namespace, as in Istio. Services of the platform carry
no ``exportTo`` and are visible everywhere.

**Sidecar egress** (sidecar proxies only; see :func:`~knotwork_routing.sidecar.sidecar_for`):
each ``egress[].hosts`` entry is ``namespace/dnsName``. The namespace is
``*`` (any), ``.`` (the Sidecar's own), ``~`` (none) or a name, and is
compared with the namespace where a service, ServiceEntry or VirtualService
is *declared*; ``dnsName`` is a FQDN, ``*.suffix`` or ``*``, compared with its
hosts (wildcards on either side match when one covers the other). A proxy
scoped by a Sidecar with egress hosts receives outbound virtual hosts and
clusters only for the services those hosts admit, plus the VirtualServices
they admit and the services those VirtualServices route or mirror to (Istio
adds them to the scope too). A Sidecar without ``egress`` scopes nothing.
``egress[].port``/``bind``/``captureMode``, ``ingress`` and
``inboundConnectionPool`` are not supported yet and are ignored with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from knotwork import CompileInput, Resource, Service

from .errors import ResourceError, field_path, warn_unsupported
from .hosts import intersect
from .sidecar import sidecar_for

__all__ = ["DEFAULT_EXPORT_TO", "EXPORTED_KINDS", "EgressHost", "Visibility", "export_namespaces", "route_hosts"]

#: The mesh-wide default of ``exportTo``: every namespace.
DEFAULT_EXPORT_TO = ("*",)
#: The kinds whose ``spec.exportTo`` scopes them.
EXPORTED_KINDS = frozenset({"VirtualService", "DestinationRule", "ServiceEntry"})
#: A Kubernetes namespace name (DNS-1123 label).
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SIDECAR_LATER = ("ingress", "inboundConnectionPool")
_EGRESS_LATER = ("port", "bind", "captureMode")


def export_namespaces(resource: Resource) -> frozenset[str] | None:
    """The namespaces `resource` is exported to; None means every namespace.

    Raises :class:`ResourceError` for a malformed ``spec.exportTo`` (Istio's
    rules: namespace names, ``.``, ``*`` or ``~``; ``*`` and ``~`` stand
    alone; no duplicates).
    """
    written = resource.spec.get("exportTo")
    if written is None or written == []:
        written = list(DEFAULT_EXPORT_TO)
    if not isinstance(written, list):
        raise ResourceError(resource, "spec.exportTo", "expected a list of namespaces ('.', '*', '~' or names)")
    out: set[str] = set()
    for i, entry in enumerate(written):
        where = field_path("spec", "exportTo", i)
        if not isinstance(entry, str) or not (entry in (".", "*", "~") or _NAMESPACE.match(entry)):
            raise ResourceError(resource, where, f"expected '.', '*', '~' or a namespace name, got {entry!r}")
        if entry in ("*", "~") and len(written) > 1:
            raise ResourceError(resource, where, f"{entry!r} cannot be combined with other namespaces")
        namespace = resource.namespace if entry == "." else entry
        if namespace in out:
            raise ResourceError(resource, where, f"namespace {namespace!r} is listed twice")
        out.add(namespace)
    if "*" in out:
        return None
    out.discard("~")
    return frozenset(out)


def exported_to(resource: Resource, namespace: str, canonical: Callable[[str], str] = str) -> bool:
    """True when `resource` is visible to proxies in `namespace` (names compared through `canonical`)."""
    namespaces = export_namespaces(resource)
    return namespaces is None or canonical(namespace) in {canonical(n) for n in namespaces}


@attrs.frozen
class EgressHost:
    """One ``egress[].hosts`` entry: a namespace filter and a DNS name pattern."""

    namespace: str  # "*" = any namespace, "~" = none, else one namespace
    dns: str  # FQDN, "*.suffix" or "*"

    @classmethod
    def parse(cls, sidecar: Resource, entry: object, where: str) -> EgressHost:
        if not isinstance(entry, str) or entry.count("/") != 1:
            raise ResourceError(sidecar, where, f"expected namespace/dnsName (e.g. './*', 'prod/*.example.com'), "
                                                f"got {entry!r}")
        namespace, dns = (part.strip() for part in entry.split("/"))
        namespace = sidecar.namespace if namespace == "." else namespace
        if not namespace or not (namespace in ("*", "~") or _NAMESPACE.match(namespace)):
            raise ResourceError(sidecar, where, f"namespace {namespace!r}: expected '.', '*', '~' or a namespace name")
        if not dns or ("*" in dns and dns != "*" and not (dns.startswith("*.") and "*" not in dns[2:])):
            raise ResourceError(sidecar, where, f"dnsName {dns!r}: expected a FQDN, '*.suffix' or '*'")
        return cls(namespace, dns.rstrip(".").lower())

    def admits(self, namespace: str, host: str) -> bool:
        """True when this entry selects `host` declared in `namespace` (both namespaces canonical)."""
        if self.namespace == "~" or self.namespace not in ("*", namespace):
            return False
        return intersect(host, self.dns) is not None


def _egress_hosts(sidecar: Resource, canonical: Callable[[str], str]) -> tuple[EgressHost, ...] | None:
    """The Sidecar's egress hosts, or None when it has no ``egress`` (nothing scoped)."""
    for key in _SIDECAR_LATER:
        if sidecar.spec.get(key):
            warn_unsupported(sidecar, field_path("spec", key))
    egress = sidecar.spec.get("egress")
    if not egress:
        return None
    if not isinstance(egress, list):
        raise ResourceError(sidecar, "spec.egress", "expected a list of egress listeners")
    out: list[EgressHost] = []
    for i, listener in enumerate(egress):
        where = field_path("spec", "egress", i)
        if not isinstance(listener, Mapping):
            raise ResourceError(sidecar, where, "expected a mapping")
        for key in _EGRESS_LATER:
            if listener.get(key) not in (None, "", "DEFAULT"):
                warn_unsupported(sidecar, f"{where}.{key}")
        hosts = listener.get("hosts")
        if not isinstance(hosts, list) or not hosts:
            raise ResourceError(sidecar, f"{where}.hosts", "expected a non-empty list of namespace/dnsName")
        for j, entry in enumerate(hosts):
            host = EgressHost.parse(sidecar, entry, f"{where}.hosts[{j}]")
            out.append(attrs.evolve(host, namespace=canonical(host.namespace)))
    return tuple(out)


def route_hosts(vs: Resource) -> Iterable[str]:
    """Every host `vs` sends traffic to, as written: route and mirror destinations of http, tcp and tls."""
    spec = vs.spec
    for section in ("http", "tcp", "tls"):
        for rule in spec.get(section) or ():
            if not isinstance(rule, Mapping):
                continue
            destinations: list[Any] = [d.get("destination") for d in rule.get("route") or () if isinstance(d, Mapping)]
            destinations.append(rule.get("mirror"))
            destinations.extend(m.get("destination") for m in rule.get("mirrors") or () if isinstance(m, Mapping))
            for destination in destinations:
                if isinstance(destination, Mapping) and isinstance(destination.get("host"), str):
                    yield destination["host"]


class Visibility:
    """What one proxy sees of the mesh's services and resources.

    Built once per compile by :meth:`build`. :meth:`resources` filters
    resources by ``exportTo``; :meth:`admits` and :meth:`services` apply the
    proxy's Sidecar egress hosts (everything is admitted without one).
    ``istio-system`` and the mesh's root namespace are one namespace here, so
    ``istio-system/*`` and ``exportTo: [istio-system]`` pasted from Istio's
    docs mean the root namespace.
    """

    def __init__(
        self,
        namespace: str,
        sidecar: Resource | None,
        egress: tuple[EgressHost, ...] | None,
        canonical: Callable[[str], str] = str,
    ) -> None:
        self.namespace, self.sidecar, self.egress, self.canonical = namespace, sidecar, egress, canonical

    @classmethod
    def build(cls, inp: CompileInput) -> Visibility:
        mesh = inp.mesh

        def canonical(namespace: str) -> str:
            return mesh.root_namespace if mesh.is_root_namespace(namespace) else namespace

        sidecar = sidecar_for(inp.node, inp.resources.get("Sidecar", ()), mesh)
        egress = _egress_hosts(sidecar, canonical) if sidecar is not None else None
        return cls(inp.node.namespace, sidecar, egress, canonical)

    @property
    def scoped(self) -> bool:
        """True when a Sidecar's egress hosts restrict this proxy."""
        return self.egress is not None

    def resources(self, inp: CompileInput, kind: str) -> tuple[Resource, ...]:
        """The resources of `kind` exported to this proxy's namespace (all of them for other kinds)."""
        found = tuple(inp.resources.get(kind, ()))
        if kind not in EXPORTED_KINDS:
            return found
        return tuple(r for r in found if exported_to(r, self.namespace, self.canonical))

    def admits(self, namespace: str, host: str) -> bool:
        """True when the egress hosts select `host` declared in `namespace` (always, unscoped)."""
        if self.egress is None:
            return True
        namespace = self.canonical(namespace)
        return any(e.admits(namespace, host) for e in self.egress)

    def admits_any(self, namespace: str, hosts: Iterable[str]) -> bool:
        return self.egress is None or any(self.admits(namespace, h) for h in hosts)

    def services(
        self,
        registry: Mapping[str, Service],
        virtual_services: Iterable[tuple[Resource, Iterable[str]]],
        resolve_host: Callable[[str, str], str],
    ) -> dict[str, Service]:
        """The services of `registry` (FQDN -> service) this proxy gets outbound config for.

        A service's namespace is where it is declared (a ServiceEntry's
        namespace for its hosts). `virtual_services` are the (resource,
        resolved hosts) pairs bound to the mesh and visible to this proxy;
        the services the admitted ones route or mirror to are added.
        """
        if self.egress is None:
            return dict(registry)
        wanted = {fqdn for fqdn, s in registry.items() if self.admits(s.namespace, fqdn)}
        for vs, hosts in virtual_services:
            if self.admits_any(vs.namespace, hosts):
                wanted.update(h for h in (resolve_host(h, vs.namespace) for h in route_hosts(vs)) if h in registry)
        return {fqdn: s for fqdn, s in registry.items() if fqdn in wanted}
