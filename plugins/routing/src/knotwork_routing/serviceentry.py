"""ServiceEntry (networking.istio.io): hosts the platform does not know, added to the registry.

Each host of a ServiceEntry becomes an :class:`ExternalService`, which the
compiler treats like a platform service (same duck type: ``name``,
``namespace``, ``ports``, ``port()``, ``fqdn()``): outbound virtual hosts,
``outbound|<port>|<subset>|<host>`` clusters, VirtualService destinations and
DestinationRule subsets. Read:

- ``hosts`` — kept as written (lower-case, no trailing dot; Istio does not
  expand short names here); ``*.suffix`` wildcards are allowed (resolution
  ``NONE`` or endpoints given), a lone ``*`` is not;
- ``ports[]`` — ``number``, ``name``, ``protocol`` (Istio's port-name
  prefixes apply when absent), ``targetPort``;
- ``location`` — ``MESH_EXTERNAL`` (default) or ``MESH_INTERNAL``;
- ``resolution`` — ``NONE`` (default, as in Istio): the request goes to the
  host and port it named (cluster resolution ``passthrough``); ``STATIC``:
  ``endpoints[].address`` are IPs (``static``); ``DNS`` / ``DNS_ROUND_ROBIN``:
  the endpoints' addresses, or the host itself when there are none, are
  resolved by the proxy (``dns``);
- ``endpoints[]`` — ``address``, ``ports`` (by port name), ``labels``
  (DestinationRule subsets select by them), ``weight``, ``locality``. An
  endpoint's port is ``ports[<port name>]``, else the port's ``targetPort``,
  else its ``number``.

``subjectAltNames`` are the identities a server of the hosts may present
when a DestinationRule asks for ``ISTIO_MUTUAL`` (see
:mod:`knotwork_routing.upstreamtls`). ``addresses``, ``workloadSelector`` and
endpoint ``network``/``serviceAccount`` are not supported yet and are ignored
with a warning; ``exportTo`` is applied by :mod:`knotwork_routing.visibility`. The
first ServiceEntry naming a host owns it (a later one is ignored with a
warning); a platform service with the same name wins over a ServiceEntry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from knotwork import Endpoint, Resource, ServicePort
from knotwork.model import port_protocol

from .errors import ResourceError, field_path, log, warn_unsupported
from .specs import as_int, as_list, as_mapping

__all__ = ["LOCATIONS", "RESOLUTIONS", "ExternalService", "ServiceEntries", "is_external"]

#: ``location`` values.
LOCATIONS = ("MESH_EXTERNAL", "MESH_INTERNAL")
#: Istio ``resolution`` -> :attr:`knotwork.proxyconfig.Cluster.resolution`.
RESOLUTIONS = {"NONE": "passthrough", "STATIC": "static", "DNS": "dns", "DNS_ROUND_ROBIN": "dns"}
_LATER = ("addresses", "workloadSelector")
_ENDPOINT_LATER = ("network", "serviceAccount")


@attrs.frozen
class ExternalService:
    """One host of a ServiceEntry, shaped like a :class:`knotwork.Service` for the compiler."""

    host: str
    namespace: str
    ports: tuple[ServicePort, ...]
    resolution: str  # "passthrough" | "static" | "dns"
    location: str
    resource: Resource
    labels: Mapping[str, str] = attrs.field(factory=dict)
    #: ``subjectAltNames``: the identities a server of this host may present over ISTIO_MUTUAL.
    subject_alt_names: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.host

    def fqdn(self, domain: str = "") -> str:
        """The host as written: ServiceEntry hosts are not expanded."""
        return self.host

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.port == number), None)


def _host(entry: Resource, value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ResourceError(entry, where, "expected a host name")
    host = value.strip().rstrip(".").lower()
    if host == "*":
        raise ResourceError(entry, where, "'*' is not a valid ServiceEntry host (outboundTrafficPolicy ALLOW_ANY "
                                          "passes unknown hosts through)")
    if "*" in host and not (host.startswith("*.") and "*" not in host[2:]):
        raise ResourceError(entry, where, f"wildcard {value!r}: only a leading '*.' is allowed")
    return host


def _ports(entry: Resource) -> tuple[ServicePort, ...]:
    ports = as_list(entry, entry.spec.get("ports"), "spec.ports")
    if not ports:
        raise ResourceError(entry, "spec.ports", "required: at least one port")
    out: list[ServicePort] = []
    for i, spec in enumerate(ports):
        where = field_path("spec", "ports", i)
        spec = as_mapping(entry, spec, where)
        number = as_int(entry, spec.get("number"), f"{where}.number")
        if not 0 < number < 65536:
            raise ResourceError(entry, f"{where}.number", f"port {number} out of range")
        if any(p.port == number for p in out):
            raise ResourceError(entry, f"{where}.number", f"port {number} is listed twice")
        target = spec.get("targetPort")
        if target is not None:
            target = as_int(entry, target, f"{where}.targetPort")
        name = str(spec.get("name") or "")
        protocol = port_protocol(name, str(spec["protocol"]) if spec.get("protocol") else None)
        out.append(ServicePort(port=number, name=name, protocol=protocol, target_port=target))
    return tuple(out)


def _choice(entry: Resource, key: str, allowed: Iterable[str], default: str) -> str:
    value = entry.spec.get(key, default)
    allowed = tuple(allowed)
    if value not in allowed:
        raise ResourceError(entry, f"spec.{key}", f"expected one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _endpoints(entry: Resource, hosts: tuple[str, ...], ports: tuple[ServicePort, ...],
               resolution: str) -> list[tuple[str, Mapping[str, str], dict[str, int], int, str]]:
    """(address, labels, ports by name, weight, locality) per endpoint; for DNS without endpoints, the hosts."""
    written = as_list(entry, entry.spec.get("endpoints"), "spec.endpoints")
    if resolution == "passthrough":
        if written:
            raise ResourceError(entry, "spec.endpoints", "not allowed with resolution NONE (the request names its "
                                                         "destination); use STATIC or DNS")
        return []
    out = []
    for i, spec in enumerate(written):
        where = field_path("spec", "endpoints", i)
        spec = as_mapping(entry, spec, where)
        for key in _ENDPOINT_LATER:
            if spec.get(key):
                warn_unsupported(entry, f"{where}.{key}")
        address = spec.get("address")
        if not isinstance(address, str) or not address:
            raise ResourceError(entry, f"{where}.address", "required")
        if address.startswith("unix://"):
            raise ResourceError(entry, f"{where}.address", "unix domain sockets are not supported")
        if resolution == "static":
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ResourceError(entry, f"{where}.address",
                                    f"resolution STATIC needs an IP address, got {address!r} (use DNS for names)") from None
        by_name = {str(k): as_int(entry, v, f"{where}.ports.{k}")
                   for k, v in as_mapping(entry, spec.get("ports"), f"{where}.ports").items()}
        labels = {str(k): str(v) for k, v in as_mapping(entry, spec.get("labels"), f"{where}.labels").items()}
        weight = as_int(entry, spec.get("weight", 1), f"{where}.weight") or 1
        out.append((address, labels, by_name, weight, str(spec.get("locality") or "")))
    if not written and resolution == "dns":
        wild = [h for h in hosts if h.startswith("*")]
        if wild:
            raise ResourceError(entry, "spec.endpoints",
                                f"resolution DNS of wildcard host {wild[0]!r} needs endpoints to resolve")
        out = [(host, {}, {}, 1, "") for host in hosts]
    return out


class ServiceEntries:
    """The ServiceEntries one proxy sees, as external services and endpoints by host."""

    def __init__(self, entries: Iterable[Resource]) -> None:
        #: host -> external service, in the order written
        self.services: dict[str, ExternalService] = {}
        #: (host, port) -> endpoints
        self.endpoints: dict[tuple[str, int], tuple[Endpoint, ...]] = {}
        for entry in entries:
            self._add(entry)

    def _add(self, entry: Resource) -> None:
        for key in _LATER:
            if entry.spec.get(key):
                warn_unsupported(entry, field_path("spec", key))
        written = as_list(entry, entry.spec.get("hosts"), "spec.hosts")
        if not written:
            raise ResourceError(entry, "spec.hosts", "required: at least one host")
        hosts = tuple(dict.fromkeys(_host(entry, h, field_path("spec", "hosts", i)) for i, h in enumerate(written)))
        ports = _ports(entry)
        location = _choice(entry, "location", LOCATIONS, "MESH_EXTERNAL")
        resolution = RESOLUTIONS[_choice(entry, "resolution", RESOLUTIONS, "NONE")]
        wild = [h for h in hosts if h.startswith("*")]
        if wild and resolution == "static" and not entry.spec.get("endpoints"):
            raise ResourceError(entry, "spec.endpoints", f"resolution STATIC of wildcard host {wild[0]!r} needs endpoints")
        endpoints = _endpoints(entry, hosts, ports, resolution)
        sans = tuple(str(n) for n in as_list(entry, entry.spec.get("subjectAltNames"), "spec.subjectAltNames"))
        for host in hosts:
            owner = self.services.get(host)
            if owner is not None:
                log.warning("ServiceEntry host already defined; ignored", resource=str(entry), host=host,
                            defined_by=str(owner.resource), source=str(entry.source))
                continue
            self.services[host] = ExternalService(host, entry.namespace, ports, resolution, location, entry,
                                                  subject_alt_names=sans)
            for sp in ports:
                self.endpoints[(host, sp.port)] = tuple(
                    Endpoint(service=host, service_port=sp.port, address=address, labels=labels, weight=weight,
                             locality=locality, port=by_name.get(sp.name, sp.target_port or sp.port))
                    for address, labels, by_name, weight, locality in endpoints
                )

    def merge_into(self, registry: dict[str, Any], endpoints: Mapping[tuple[str, int], Any]) -> dict[tuple[str, int], Any]:
        """Add the entry hosts to `registry` (FQDN -> service; a platform service keeps its name) and
        return `endpoints` with theirs added."""
        merged = dict(endpoints)
        for host, service in self.services.items():
            if registry.setdefault(host, service) is not service:
                log.warning("ServiceEntry host is a platform service; the entry is ignored for it", host=host,
                            resource=str(service.resource), source=str(service.resource.source))
                continue
            merged.update({(host, sp.port): self.endpoints[(host, sp.port)] for sp in service.ports})
        return merged


def is_external(service: object) -> bool:
    """True for a ServiceEntry host (as opposed to a platform service)."""
    return isinstance(service, ExternalService)
