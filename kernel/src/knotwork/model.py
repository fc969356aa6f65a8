"""The mesh model: what the mesh *is*, independent of any platform or engine.

Every record is a frozen attrs class. Platforms produce them (in a
:class:`PlatformSnapshot`), the compile step reads them, nothing mutates them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "Endpoint",
    "Identity",
    "MeshSettings",
    "MeshTelemetry",
    "MetricNaming",
    "OutboundTrafficPolicy",
    "PlatformSnapshot",
    "Protocol",
    "ProxyNode",
    "Resource",
    "ResourceError",
    "Service",
    "ServicePort",
    "SourceRef",
    "WarnOnce",
    "Workload",
    "field_path",
    "port_protocol",
    "resolve_host",
]


class OutboundTrafficPolicy(enum.StrEnum):
    """What a sidecar does with a host no service or ServiceEntry names (Istio's MeshConfig)."""

    ALLOW_ANY = "ALLOW_ANY"
    REGISTRY_ONLY = "REGISTRY_ONLY"


class MetricNaming(enum.StrEnum):
    """Names of the request metrics: Knotwork's base units or Istio's exact names and buckets."""

    KNOTWORK = "knotwork"
    ISTIO = "istio"


def _percent(_: Any, attribute: Any, value: float) -> None:
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"expected a percent from 0 to 100, got {value!r}")


@attrs.frozen
class MeshTelemetry:
    """Mesh-wide telemetry defaults (Istio's MeshConfig); Telemetry resources override them."""

    metric_names: MetricNaming = attrs.field(default=MetricNaming.KNOTWORK, metadata={
        "help": "knotwork: knotwork_requests_total, seconds; istio: istio_requests_total, milliseconds, Istio's buckets"})
    access_log: bool = attrs.field(default=True, metadata={"help": "one JSON line per request from every proxy"})
    tracing_sampling: float = attrs.field(default=1.0, validator=_percent, metadata={
        "help": "percent of requests without a caller's decision that are traced"})
    tracing_endpoint: str | None = attrs.field(default=None, metadata={
        "help": "OTLP/HTTP traces URL (http://127.0.0.1:4318/v1/traces); null: no tracing"})


@attrs.frozen
class MeshSettings:
    """Mesh-wide names, from the `mesh:` section of the mesh file."""

    domain: str = attrs.field(default="cluster.local", metadata={"help": "DNS suffix of service FQDNs"})
    trust_domain: str = attrs.field(default="cluster.local", metadata={"help": "SPIFFE trust domain"})
    root_namespace: str = attrs.field(
        default="knotwork-system",
        metadata={"help": "namespace whose resources apply mesh-wide (istio-system is an alias)"},
    )
    outbound_traffic_policy: OutboundTrafficPolicy = attrs.field(
        default=OutboundTrafficPolicy.ALLOW_ANY,
        metadata={"help": "ALLOW_ANY passes unknown hosts through; REGISTRY_ONLY answers 502 (flag NR)"},
    )
    telemetry: MeshTelemetry = attrs.field(factory=MeshTelemetry, metadata={
        "help": "metrics naming, access logs, tracing sampling and OTLP endpoint"})

    def is_root_namespace(self, namespace: str) -> bool:
        return namespace == self.root_namespace or namespace == "istio-system"


class Protocol(enum.StrEnum):
    """Application protocol of a port, as Istio names them."""

    HTTP = "HTTP"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"
    TCP = "TCP"
    TLS = "TLS"
    UNKNOWN = "UNKNOWN"  # sniffed at connection time

    @property
    def is_http(self) -> bool:
        return self in (Protocol.HTTP, Protocol.HTTP2, Protocol.GRPC)


_PREFIXES = {
    "http": Protocol.HTTP,
    "http2": Protocol.HTTP2,
    "grpc": Protocol.GRPC,
    "grpc-web": Protocol.HTTP2,
    "tcp": Protocol.TCP,
    "tls": Protocol.TLS,
    "https": Protocol.TLS,
    "mongo": Protocol.TCP,
    "mysql": Protocol.TCP,
    "redis": Protocol.TCP,
}


def port_protocol(name: str = "", protocol: str | None = None, app_protocol: str | None = None) -> Protocol:
    """Protocol of a port, the way Istio selects it.

    `appProtocol` wins, then an explicit application protocol, then the port
    name's prefix (`http-web`, `grpc`, `tcp-db`), else UNKNOWN (sniffed).
    """
    for value in (app_protocol, protocol):
        if value:
            found = _PREFIXES.get(value.lower())
            if found is not None:
                return found
    prefix = name.lower().split("-", 1)[0] if name else ""
    if name.lower().startswith("grpc-web"):
        return Protocol.HTTP2
    return _PREFIXES.get(prefix, Protocol.UNKNOWN)


def resolve_host(host: str, namespace: str, domain: str = "cluster.local") -> str:
    """Resolve a host as Istio does: a short name is relative to `namespace`.

    `reviews` in `default` is `reviews.default.svc.cluster.local`; a name
    with a dot (`bookinfo.com`, a FQDN) or a wildcard is returned unchanged.
    """
    host = host.strip().rstrip(".").lower()
    if host == "*" or "." in host:
        return host
    return f"{host}.{namespace}.svc.{domain}"


@attrs.frozen
class Identity:
    """A workload identity: SPIFFE `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`."""

    trust_domain: str
    namespace: str
    service_account: str

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @classmethod
    def parse(cls, spiffe_id: str) -> Identity:
        """Parse a SPIFFE ID; raises ValueError naming what is wrong."""
        prefix = "spiffe://"
        if not spiffe_id.startswith(prefix):
            raise ValueError(f"not a SPIFFE ID: {spiffe_id!r}")
        trust_domain, _, path = spiffe_id[len(prefix):].partition("/")
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa" or not trust_domain:
            raise ValueError(f"not a Kubernetes-style SPIFFE ID (…/ns/NS/sa/SA): {spiffe_id!r}")
        return cls(trust_domain, parts[1], parts[3])

    def __str__(self) -> str:
        return self.spiffe_id


@attrs.frozen
class ServicePort:
    """One port of a service. `target_port` is where the workload listens."""

    port: int
    name: str = ""
    protocol: Protocol = Protocol.UNKNOWN
    target_port: int | None = None


@attrs.frozen
class Service:
    """A named set of endpoints, reachable as `<name>.<namespace>.svc.<domain>`."""

    name: str
    namespace: str = "default"
    ports: tuple[ServicePort, ...] = ()
    labels: Mapping[str, str] = attrs.field(factory=dict)

    def fqdn(self, domain: str = "cluster.local") -> str:
        return f"{self.name}.{self.namespace}.svc.{domain}"

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.port == number), None)


@attrs.frozen
class Workload:
    """What runs: a set of instances sharing namespace, service account, labels."""

    name: str
    namespace: str = "default"
    service_account: str = "default"
    labels: Mapping[str, str] = attrs.field(factory=dict)

    def identity(self, trust_domain: str) -> Identity:
        return Identity(trust_domain, self.namespace, self.service_account)


@attrs.frozen
class Endpoint:
    """One address of a service port, with what a client needs to know of it.

    `identity` is the SPIFFE ID the endpoint's proxy presents, so a client can
    check it; `healthy` is false until the workload's readiness probe passes.
    """

    service: str  # FQDN
    service_port: int
    address: str
    port: int
    labels: Mapping[str, str] = attrs.field(factory=dict)
    locality: str = ""
    weight: int = 1
    healthy: bool = True
    identity: str | None = None
    workload: str = ""
    instance: str = ""


@attrs.frozen
class ProxyNode:
    """A proxy the platform runs: a workload's sidecar or a gateway.

    `ports` are the listener ports the platform gave this proxy, by role:
    `inbound:<service-port>`, `http_proxy`, `tcp:<fqdn>:<port>`,
    `gateway:<port>`, `app:<service-port>` (where the local app listens).
    """

    id: str
    kind: str  # "sidecar" | "gateway"
    workload: str
    namespace: str = "default"
    labels: Mapping[str, str] = attrs.field(factory=dict)
    identity: str | None = None
    address: str = "127.0.0.1"
    ports: Mapping[str, int] = attrs.field(factory=dict)
    metadata: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class SourceRef:
    """Where a resource came from, for error messages: file and line."""

    file: str = ""
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@attrs.frozen
class Resource:
    """A configuration resource users write (Istio API): kind, name, spec.

    The spec is kept as the plain mapping the user wrote; area plugins read
    the kinds they own. `source` says which file and line defined it.
    """

    api_version: str
    kind: str
    name: str
    namespace: str = "default"
    spec: Mapping[str, Any] = attrs.field(factory=dict)
    labels: Mapping[str, str] = attrs.field(factory=dict)
    source: SourceRef = attrs.field(factory=SourceRef, eq=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


class ResourceError(ValueError):
    """A resource a compiler cannot translate: ``plugin/<plugin>: Kind/ns/name (file:line): field: problem``.

    A compiler plugin raises it (a subclass setting `plugin`); the config
    source's trial compile reports the message and the change is refused whole.
    """

    plugin = "?"

    def __init__(self, resource: Resource, field: str, problem: str) -> None:
        where = f" ({resource.source})" if str(resource.source) else ""
        super().__init__(f"plugin/{self.plugin}: {resource}{where}: {field}: {problem}")
        self.resource, self.field, self.problem = resource, field, problem


def field_path(*parts: str | int) -> str:
    """``spec.http[0].route[1]`` from ``("spec", "http", 0, "route", 1)``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class WarnOnce:
    """Logs a warning once per resource and field (a field, or a whole resource, that has no effect);
    bounded, so it cannot grow forever."""

    def __init__(self, log: Any, limit: int = 1000) -> None:
        self.log, self.limit = log, limit
        self.seen: set[tuple[tuple[str, str, str], str]] = set()

    def __call__(self, resource: Resource, field: str, event: str = "field not supported yet, ignored") -> None:
        key = (resource.key, field)
        if key in self.seen:
            return
        if len(self.seen) >= self.limit:
            self.seen.clear()
        self.seen.add(key)
        self.log.warning(event, resource=str(resource), field=field, source=str(resource.source))


@attrs.frozen
class PlatformSnapshot:
    """Everything one platform knows, as a whole: pushed on every change.

    `synced` is false until the platform has seen its first full state; the
    control plane serves no config before every platform reports synced.
    """

    platform: str
    version: int
    services: tuple[Service, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    workloads: tuple[Workload, ...] = ()
    proxies: tuple[ProxyNode, ...] = ()
    resources: tuple[Resource, ...] = ()
    synced: bool = True
