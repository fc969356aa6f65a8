"""Outbound clusters and their endpoint sets.

:class:`ClusterSet` records every outbound cluster the proxy's listeners and
routes refer to — plus one per service port — and emits each with its
:class:`EndpointSet` at the end, so the snapshot is always consistent: a
destination that is not a known service, or a subset no DestinationRule
defines, gets a cluster with no endpoints (requests to it fail with 503, as
in Istio). ServiceEntry hosts are services here too; their clusters carry the
entry's resolution (``static``, ``dns`` or ``passthrough``). Each cluster's
TLS (and the Secrets it names) comes from
:class:`~knotwork_routing.upstreamtls.UpstreamTlsPolicy`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from knotwork import Endpoint, Service
from knotwork.proxyconfig import Cluster, EndpointSet, LbEndpoint, SnapshotBuilder

from .destinationrule import DestinationRules
from .hosts import is_http, outbound_cluster
from .serviceentry import is_external
from .upstreamtls import UpstreamTlsPolicy

__all__ = ["ClusterSet", "PortError", "lb_endpoint"]


class PortError(LookupError):
    """A destination's port is missing and cannot be inferred."""


def lb_endpoint(ep: Endpoint) -> LbEndpoint:
    """The compiled form of a discovered endpoint (a workload's lives in its service's namespace)."""
    parts = ep.service.split(".")
    namespace = parts[1] if ep.workload and len(parts) > 2 and parts[2] == "svc" else ""
    return LbEndpoint(
        address=ep.address, port=ep.port, weight=ep.weight, healthy=ep.healthy, labels=dict(ep.labels),
        locality=ep.locality, identity=ep.identity, instance=ep.instance, workload=ep.workload, namespace=namespace,
    )


def _selected(endpoints: Iterable[Endpoint], labels: Mapping[str, str]) -> list[Endpoint]:
    return [ep for ep in endpoints if all(ep.labels.get(k) == v for k, v in labels.items())]


class ClusterSet:
    """The outbound clusters of one proxy, collected while compiling, emitted last."""

    def __init__(
        self,
        services: Mapping[str, Service],
        endpoints: Mapping[tuple[str, int], Sequence[Endpoint]],
        rules: DestinationRules,
        lb: str,
        tls: UpstreamTlsPolicy,
    ) -> None:
        self._services, self._endpoints, self._rules, self._lb, self._tls = services, endpoints, rules, lb, tls
        self._wanted: dict[str, tuple[str, int, str, str]] = {}  # name -> fqdn, port, subset, protocol

    def want(self, fqdn: str, port: int, subset: str = "", protocol: str = "http") -> str:
        """Name of the cluster for `fqdn:port` (and subset), recording that it must exist.

        `protocol` is only used when `fqdn` is not a known service.
        """
        name = outbound_cluster(port, subset, fqdn)
        if name not in self._wanted:
            service = self._services.get(fqdn)
            service_port = service.port(port) if service else None
            if service_port is not None:
                protocol = "http" if is_http(service_port.protocol) else "tcp"
            self._wanted[name] = (fqdn, port, subset, protocol)
        return name

    def want_service_ports(self) -> None:
        """Record the default cluster of every port of every known service."""
        for fqdn, service in self._services.items():
            for sp in service.ports:
                self.want(fqdn, sp.port)

    def destination_port(self, fqdn: str, port: int | None, context_port: int | None) -> int:
        """The port of a route destination: as written, else inferred.

        A service with a single port needs none; otherwise the port the
        request was addressed to (`context_port`) is used when the service
        has it, or for hosts that are not services. Raises PortError.
        """
        if port is not None:
            return port
        service = self._services.get(fqdn)
        if service is not None and len(service.ports) == 1:
            return service.ports[0].port
        if context_port is not None and (service is None or service.port(context_port) is not None):
            return context_port
        if service is None:
            raise PortError(f"destination {fqdn!r} is not a known service: its port.number is required")
        ports = ", ".join(str(p.port) for p in service.ports)
        raise PortError(f"service {fqdn!r} has several ports ({ports}): port.number is required")

    def emit(self, builder: SnapshotBuilder) -> None:
        """Add every recorded cluster and its endpoint set to `builder`."""
        for name, (fqdn, port, subset, protocol) in self._wanted.items():
            lb = self._rules.load_balancer(fqdn, port, subset) or self._lb
            service = self._services.get(fqdn)
            resolution = service.resolution if is_external(service) else "static"  # type: ignore[union-attr]
            tls, endpoints, secrets = self._tls.upstream(fqdn, port, subset, protocol, service,
                                                         self._lb_endpoints(fqdn, port, subset))
            for secret in secrets:
                builder.add(secret)
            builder.add(Cluster(name=name, service=fqdn, port=port, protocol=protocol, lb=lb, resolution=resolution,
                                tls=tls))
            builder.add(EndpointSet(name=name, endpoints=endpoints))

    def _lb_endpoints(self, fqdn: str, port: int, subset: str) -> tuple[LbEndpoint, ...]:
        found: Iterable[Endpoint] = self._endpoints.get((fqdn, port), ())
        if subset:
            labels = self._rules.subset_labels(fqdn, subset)
            found = _selected(found, labels) if labels is not None else ()
        ordered = sorted(found, key=lambda ep: (ep.address, ep.port, ep.instance))
        return tuple(lb_endpoint(ep) for ep in ordered)
