"""The compiled proxy configuration: what one proxy must do.

A :class:`ProxySnapshot` is a consistent, versioned set of named resources,
the shape of go-control-plane's snapshot and of Envoy's xDS:

=================  ==========================================  ===========
Knotwork           Envoy (xDS v3)                              type key
=================  ==========================================  ===========
:class:`Listener`  ``config.listener.v3.Listener`` (LDS)        listeners
:class:`RouteTable` ``config.route.v3.RouteConfiguration`` (RDS) routes
:class:`Cluster`   ``config.cluster.v3.Cluster`` (CDS)          clusters
:class:`EndpointSet` ``config.endpoint.v3.ClusterLoadAssignment`` (EDS) endpoints
:class:`Secret`    ``extensions.transport_sockets.tls.v3.Secret`` (SDS) secrets
=================  ==========================================  ===========

Each resource is versioned by a hash of its content, so identical resources
are shared across proxies and only changed ones are pushed. Both engines
consume the same snapshot. Area plugins build it through :class:`SnapshotBuilder`
and may write only the *slots* they declared (see :class:`knotwork.records.Compiler`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import attrs
import cattrs

__all__ = [
    "TYPE_ORDER",
    "check_consistency",
    "Cluster",
    "ConsistencyError",
    "CorsPolicy",
    "DirectResponse",
    "EndpointSet",
    "Extension",
    "FaultPolicy",
    "HeaderMatch",
    "LbEndpoint",
    "Listener",
    "MirrorPolicy",
    "Observability",
    "PEER_HEADER",
    "PeerInfo",
    "ProxySnapshot",
    "RESOLUTIONS",
    "Redirect",
    "RetryPolicy",
    "Route",
    "RouteAction",
    "RouteMatch",
    "RouteTable",
    "MESH_ALPN_H2",
    "MESH_ALPN_HTTP",
    "MESH_ALPN_SERVER",
    "MESH_ALPN_TCP",
    "PEER_MODES",
    "PeerTls",
    "Secret",
    "ServerTls",
    "UPSTREAM_MODES",
    "UpstreamTls",
    "SlotError",
    "SnapshotBuilder",
    "StringMatch",
    "TagOverride",
    "Tracing",
    "VirtualHost",
    "WeightedCluster",
    "wire",
]


@attrs.frozen
class Extension:
    """Plugin-specific behaviour attached to a resource, typed by name.

    `engines` lists the proxy engines that know how to carry it out; an
    engine refuses (NACKs) a resource carrying an extension it does not know.
    """

    name: str
    plugin: str
    config: Mapping[str, Any] = attrs.field(factory=dict)
    engines: tuple[str, ...] = ("native",)


# ── routes (RDS) ────────────────────────────────────────────────────────────


@attrs.frozen
class HeaderMatch:
    """Envoy ``HeaderMatcher``: exactly one of exact/prefix/regex/present."""

    name: str
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None
    invert: bool = False


@attrs.frozen
class RouteMatch:
    """Envoy ``RouteMatch``: path (one of prefix/path/regex), headers, query."""

    prefix: str | None = "/"
    path: str | None = None
    regex: str | None = None
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[HeaderMatch, ...] = ()
    source_labels: Mapping[str, str] = attrs.field(factory=dict)
    port: int | None = None


@attrs.frozen
class WeightedCluster:
    """Envoy ``WeightedCluster.ClusterWeight``."""

    cluster: str
    weight: int = 100


@attrs.frozen
class RetryPolicy:
    """Envoy ``RetryPolicy``: retries = attempts after the first."""

    attempts: int = 0
    per_try_timeout: float | None = None
    retry_on: tuple[str, ...] = ()
    retriable_status_codes: tuple[int, ...] = ()


@attrs.frozen
class RouteAction:
    """Envoy ``RouteAction``: where a matched request goes and how."""

    clusters: tuple[WeightedCluster, ...]
    timeout: float | None = None
    retry: RetryPolicy | None = None
    prefix_rewrite: str | None = None
    host_rewrite: str | None = None


@attrs.frozen
class DirectResponse:
    """Envoy ``DirectResponseAction``."""

    status: int
    body: str = ""


@attrs.frozen
class Redirect:
    """Envoy ``RedirectAction``: `path` (``path_redirect``), `host` (``host_redirect``),
    `scheme` (``scheme_redirect``; None keeps the request's) and `port`
    (``port_redirect``; None keeps the request's, 0 drops it from the authority)."""

    path: str | None = None
    host: str | None = None
    status: int = 301
    scheme: str | None = None
    port: int | None = None


@attrs.frozen
class FaultPolicy:
    """Fault injection on a route: Envoy ``extensions.filters.http.fault.v3.HTTPFault``,
    given per route in ``typed_per_filter_config["envoy.filters.http.fault"]``.

    `delay` (seconds, Envoy ``delay.fixed_delay``) is injected into `delay_percent`
    percent of requests (``delay.percentage``); `abort_status` (Envoy
    ``abort.http_status``) answers `abort_percent` percent of requests
    (``abort.percentage``) directly, response flag ``FI`` (a delay is flagged
    ``DI``). Each percentage is sampled per request; the delay comes first.
    """

    delay: float | None = None
    delay_percent: float = 100.0
    abort_status: int | None = None
    abort_percent: float = 100.0


@attrs.frozen
class MirrorPolicy:
    """A copy of the route's requests to another cluster, fire-and-forget:
    Envoy ``RouteAction.RequestMirrorPolicy`` (``cluster``, ``runtime_fraction``
    = `percent` of requests). The copy's authority gets a ``-shadow`` suffix."""

    cluster: str
    percent: float = 100.0


@attrs.frozen
class StringMatch:
    """Envoy ``type.matcher.v3.StringMatcher``: exactly one of exact/prefix/regex (RE2)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


@attrs.frozen
class CorsPolicy:
    """Envoy ``extensions.filters.http.cors.v3.CorsPolicy`` (the cors filter's per-route
    config in ``typed_per_filter_config["envoy.filters.http.cors"]``).

    `allow_origins` ↔ ``allow_origin_string_match``; `allow_methods`,
    `allow_headers`, `expose_headers` ↔ the comma-joined ``allow_methods``,
    ``allow_headers``, ``expose_headers``; `max_age` (seconds) ↔ ``max_age``;
    `allow_credentials` ↔ ``allow_credentials``. A preflight (``OPTIONS`` with
    ``Origin`` and ``Access-Control-Request-Method``) from a matching origin is
    answered by the proxy; other responses to a matching origin get
    ``access-control-allow-origin`` (and credentials, expose headers).
    """

    allow_origins: tuple[StringMatch, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None
    allow_credentials: bool | None = None


@attrs.frozen
class Route:
    """Envoy ``Route``: a match and exactly one of action/direct/redirect.

    Header operations (names lower-case) are Envoy's route-level
    ``request_headers_to_add`` / ``request_headers_to_remove`` /
    ``response_headers_to_add`` / ``response_headers_to_remove``: ``*_set``
    replace (``OVERWRITE_IF_EXISTS_OR_ADD``), ``*_add`` append
    (``APPEND_IF_EXISTS_OR_ADD``), ``*_remove`` removes first. `fault`,
    `mirror` and `cors`: see :class:`FaultPolicy`, :class:`MirrorPolicy`
    (``RouteAction.request_mirror_policies``, action routes only) and
    :class:`CorsPolicy`.
    """

    name: str
    match: RouteMatch = attrs.field(factory=RouteMatch)
    action: RouteAction | None = None
    direct: DirectResponse | None = None
    redirect: Redirect | None = None
    request_headers_set: Mapping[str, str] = attrs.field(factory=dict)
    extensions: tuple[Extension, ...] = ()
    request_headers_add: Mapping[str, str] = attrs.field(factory=dict)
    request_headers_remove: tuple[str, ...] = ()
    response_headers_set: Mapping[str, str] = attrs.field(factory=dict)
    response_headers_add: Mapping[str, str] = attrs.field(factory=dict)
    response_headers_remove: tuple[str, ...] = ()
    fault: FaultPolicy | None = None
    mirror: tuple[MirrorPolicy, ...] = ()
    cors: CorsPolicy | None = None


@attrs.frozen
class VirtualHost:
    """Envoy ``VirtualHost``: domains (exact, `*.suffix`, `*`) and routes, first match wins."""

    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...] = ()


@attrs.frozen
class RouteTable:
    """Envoy ``RouteConfiguration`` (RDS); `router` names the Router strategy."""

    TYPE: ClassVar[str] = "routes"
    name: str
    virtual_hosts: tuple[VirtualHost, ...] = ()
    router: str = "host"

    def referenced_clusters(self) -> Iterable[str]:
        for vh in self.virtual_hosts:
            for route in vh.routes:
                if route.action:
                    yield from (w.cluster for w in route.action.clusters)
                yield from (m.cluster for m in route.mirror)


# ── listeners (LDS) ─────────────────────────────────────────────────────────


@attrs.frozen
class ServerTls:
    """TLS a listener terminates for its clients, for one group of SNI names:
    an Envoy filter chain whose ``filter_chain_match.server_names`` are
    `server_names` (exact or ``*.suffix``; empty: any name, or none — the
    fallback chain), with a ``DownstreamTlsContext`` transport socket.

    `certificate` names the :class:`Secret` (certificate chain and key) the
    proxy presents (SDS ``tls_certificate_sds_secret_configs``); `client_ca`,
    when set, names the Secret whose trust bundle verifies the certificate
    every client must present (``require_client_certificate``, Istio's
    ``MUTUAL``). `min_version` / `max_version` are ``"1.2"`` or ``"1.3"``
    (None: the engine's default, at least TLS 1.2). `alpn`: the protocols
    offered by ALPN. A client naming no chain's server name (and with no
    fallback chain) is refused during the handshake.
    """

    certificate: str
    server_names: tuple[str, ...] = ()
    client_ca: str | None = None
    min_version: str | None = None
    max_version: str | None = None
    alpn: tuple[str, ...] = ("http/1.1",)


#: The modes of :class:`PeerTls` (Istio PeerAuthentication ``mtls.mode``, UNSET resolved by the compiler).
PEER_MODES = ("STRICT", "PERMISSIVE", "DISABLE")
#: The modes of :class:`UpstreamTls` (Istio DestinationRule ``tls.mode``, DISABLE meaning no `tls` at all).
UPSTREAM_MODES = ("ISTIO_MUTUAL", "SIMPLE", "MUTUAL")
#: ALPN a sidecar offers a peer sidecar over mesh mTLS, as Istio's Envoy does: the
#: ``istio-*`` names tell the server it is talking to a mesh peer.
MESH_ALPN_HTTP = ("istio-http/1.1", "istio", "http/1.1")
MESH_ALPN_TCP = ("istio-peer-exchange", "istio")
#: ... for an HTTP/2 or gRPC cluster: Envoy picks its HTTP/2 codec only when ``h2`` is negotiated.
MESH_ALPN_H2 = ("istio-h2", "istio", "h2")
#: What an inbound listener accepts over mesh mTLS (Istio's inbound filter chain match).
MESH_ALPN_SERVER = ("istio-http/1.0", "istio-http/1.1", "istio-h2", "istio-peer-exchange", "istio", "http/1.1")


@attrs.frozen
class PeerTls:
    """The mesh mTLS an inbound sidecar listener accepts (Istio PeerAuthentication).

    `mode`: ``STRICT`` — only TLS 1.3 connections whose client presents an
    SVID of the mesh's trust bundle; ``PERMISSIVE`` — those and plaintext on
    the same port, told apart per connection by peeking at the first bytes
    (a TLS ClientHello starts ``0x16 0x03``); ``DISABLE`` — plaintext only.
    The certificate the listener presents is the proxy's own SVID, which is
    never in a snapshot: each engine gets it from its workload identity
    (:mod:`knotwork.identity`). Over mTLS the engine knows the peer's SPIFFE
    ID for every request (`ConnectionView.peer_identity`) and tells the app in
    ``x-forwarded-client-cert`` (``By=<own id>;URI=<peer id>``), as Istio does.
    """

    mode: str = "PERMISSIVE"
    trust_domain: str = "cluster.local"


@attrs.frozen
class UpstreamTls:
    """TLS a cluster's connections use (Istio DestinationRule ``trafficPolicy.tls``, or auto-mTLS).

    ``ISTIO_MUTUAL``: mesh mTLS with the proxy's own SVID; the server must
    present one of `identities` (SPIFFE IDs: the identities of the
    destination's endpoints), checked before a byte is sent. With `auto`
    (Istio's auto-mTLS: no DestinationRule TLS setting) only endpoints that
    have an identity (a sidecar) get mTLS, the others plaintext.
    ``SIMPLE`` / ``MUTUAL``: TLS origination to a server outside the mesh:
    `ca_secret` names the Secret whose trust bundle verifies the server (None:
    the system's roots), `certificate` (MUTUAL) the client certificate's
    Secret; `subject_alt_names`, when given, are the names the server's
    certificate must carry (else `sni` is checked as the host name, unless
    `insecure_skip_verify`). `sni`: the server name sent. `alpn`: offered
    protocols (empty: none, or the mesh's for ISTIO_MUTUAL).
    """

    mode: str
    identities: tuple[str, ...] = ()
    auto: bool = False
    sni: str = ""
    alpn: tuple[str, ...] = ()
    ca_secret: str | None = None
    certificate: str | None = None
    subject_alt_names: tuple[str, ...] = ()
    insecure_skip_verify: bool = False

    def referenced_secrets(self) -> Iterable[str]:
        return tuple(n for n in (self.ca_secret, self.certificate) if n)


# ── observability (a listener's telemetry: metrics, access log, tracing) ────

#: Request header a client sidecar sets to its own workload's :meth:`PeerInfo.header`
#: (an app's own value is replaced); the server sidecar reads it for the source labels.
PEER_HEADER = "x-knotwork-peer"
_UNKNOWN = "unknown"


@attrs.frozen(cache_hash=True)
class PeerInfo:
    """A workload as telemetry labels it (Istio's ``*_workload``, ``*_app``, …).

    Fields are ``unknown`` when not known, as in Istio. `principal` is the
    SPIFFE ID. :meth:`header` is the value of :data:`PEER_HEADER`.
    """

    workload: str = _UNKNOWN
    namespace: str = _UNKNOWN
    app: str = _UNKNOWN
    version: str = _UNKNOWN
    principal: str = _UNKNOWN

    def header(self) -> str:
        """``workload=…;namespace=…;app=…;version=…;principal=…`` (no ``;``/``=`` in values)."""
        return ";".join(f"{k}={getattr(self, k)}" for k in ("workload", "namespace", "app", "version", "principal"))

    @classmethod
    def parse(cls, value: str | None) -> PeerInfo | None:
        """The inverse of :meth:`header`; None for a missing or malformed value."""
        if not value or len(value) > 1024:
            return None
        fields: dict[str, str] = {}
        for part in value.split(";"):
            key, eq, val = part.partition("=")
            if not eq or key not in _PEER_FIELDS or not val:
                return None
            fields[key] = val
        return cls(**fields)


_PEER_FIELDS = frozenset(("workload", "namespace", "app", "version", "principal"))


@attrs.frozen
class TagOverride:
    """A Telemetry API ``metrics.overrides[].tagOverrides`` entry.

    `metric` is Istio's selector (``ALL_METRICS``, ``REQUEST_COUNT``,
    ``REQUEST_DURATION``, ``REQUEST_SIZE``, ``RESPONSE_SIZE``,
    ``TCP_OPENED_CONNECTIONS``, ``TCP_CLOSED_CONNECTIONS``, ``TCP_SENT_BYTES``,
    ``TCP_RECEIVED_BYTES``); `mode` ``CLIENT_AND_SERVER``, ``CLIENT`` or
    ``SERVER``. `remove` drops the label; else `value` is its expression: a
    quoted literal, ``request.host``, ``request.method``, ``request.url_path``,
    ``request.path``, ``request.protocol``, ``request.headers['name']`` or
    ``response.code``.
    """

    metric: str
    tag: str
    remove: bool = False
    value: str = ""
    mode: str = "CLIENT_AND_SERVER"


@attrs.frozen
class Tracing:
    """Tracing of a listener's requests: a sampling percent and where spans go.

    `sampling` (0-100) applies to requests that arrive without a sampling
    decision; a caller's decision (W3C ``traceparent`` flags, B3 sampled) is
    honoured. `endpoint` is an OTLP/HTTP traces URL
    (``http://127.0.0.1:4318/v1/traces``). `service` names the spans' service.
    """

    sampling: float
    endpoint: str
    service: str
    max_path_tag_length: int = 256
    custom_tags: tuple[tuple[str, str], ...] = ()  # (attribute, literal value)


@attrs.frozen
class Observability:
    """What a listener reports, compiled from the mesh settings and Telemetry API.

    `reporter` is ``source`` (outbound and gateway listeners: the client
    side) or ``destination`` (inbound). `workload` is this proxy's own
    workload. `service` (inbound) is the served service FQDN. `naming`
    ``knotwork`` emits ``knotwork_requests_total`` and base units; ``istio``
    Istio's exact names and buckets. Both engines carry it out the same way;
    telemetry sinks read it from ``listener.observability``.
    """

    reporter: str
    workload: PeerInfo
    service: str = ""
    metrics: bool = True
    naming: str = "knotwork"
    tag_overrides: tuple[TagOverride, ...] = ()
    disabled_metrics: tuple[str, ...] = ()  # Istio metric selectors (REQUEST_COUNT, …) this listener does not emit
    access_log: bool = True
    tracing: Tracing | None = None


@attrs.frozen
class Listener:
    """Envoy ``Listener`` (LDS).

    `mode`: ``inbound`` (in front of the local app), ``outbound`` (a loopback
    port per TCP upstream, or the iptables capture port), ``http_proxy`` (the
    local app's ``HTTP_PROXY``, with CONNECT), ``gateway`` (ingress).
    `protocol` ``http`` routes through `route_table`; ``tcp`` forwards each
    connection to `cluster`, or splits connections over `weighted_clusters`
    by weight when those are given (a VirtualService ``tcp`` route).
    `authn`, `authz` and `telemetry` are the ordered strategy chains.
    `server_tls` (gateways): TLS terminated for clients, one entry per SNI
    group (see :class:`ServerTls`); empty: plaintext. `tls` (inbound sidecar
    listeners): the mesh mTLS it accepts (see :class:`PeerTls`); None: plaintext.
    """

    TYPE: ClassVar[str] = "listeners"
    name: str
    address: str
    port: int
    mode: str
    protocol: str = "http"
    route_table: str | None = None
    cluster: str | None = None
    authn: tuple[str, ...] = ()
    authz: tuple[str, ...] = ()
    telemetry: tuple[str, ...] = ()
    tls: PeerTls | None = None
    extensions: tuple[Extension, ...] = ()
    server_tls: tuple[ServerTls, ...] = ()
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    observability: Observability | None = None

    def referenced_secrets(self) -> Iterable[str]:
        """The secrets the listener's TLS names."""
        for chain in self.server_tls:
            yield chain.certificate
            if chain.client_ca:
                yield chain.client_ca


# ── clusters (CDS) and endpoints (EDS) ──────────────────────────────────────


@attrs.frozen
class Cluster:
    """Envoy ``Cluster`` (CDS) with EDS endpoints named like the cluster.

    Names follow Istio: ``outbound|<port>|<subset>|<fqdn>``, ``inbound|<port>||``.
    `lb` names the LoadBalancer strategy, `tls` the upstream TLS (see
    :class:`UpstreamTls`; None: plaintext).

    `resolution` says how the proxy finds the hosts to send to (one of
    :data:`RESOLUTIONS`): ``static`` — the endpoint set's addresses are IPs
    (Envoy ``EDS``); ``dns`` — they are host names the proxy resolves (Envoy
    ``STRICT_DNS``, the endpoint set inlined as its ``load_assignment``);
    ``passthrough`` — no endpoints: each request goes to the host and port it
    names (Istio's ``PassthroughCluster`` and ServiceEntry resolution ``NONE``;
    Envoy's dynamic forward proxy), port 80 when the authority has none.
    """

    TYPE: ClassVar[str] = "clusters"
    name: str
    service: str = ""
    port: int = 0
    protocol: str = "http"
    connect_timeout: float = 1.0
    lb: str = "round_robin"
    lb_settings: Mapping[str, Any] = attrs.field(factory=dict)
    tls: UpstreamTls | None = None
    extensions: tuple[Extension, ...] = ()
    resolution: str = "static"


#: The values of :attr:`Cluster.resolution`.
RESOLUTIONS = ("static", "dns", "passthrough")


@attrs.frozen
class LbEndpoint:
    """Envoy ``LbEndpoint`` with the metadata a client checks and reports.

    `workload` / `namespace` name the endpoint's workload (telemetry's
    ``destination_workload``); `labels` carry ``app`` and ``version``.
    """

    address: str
    port: int
    weight: int = 1
    healthy: bool = True
    labels: Mapping[str, str] = attrs.field(factory=dict)
    locality: str = ""
    identity: str | None = None
    instance: str = ""
    workload: str = ""
    namespace: str = ""

    def peer(self) -> PeerInfo:
        """The endpoint as telemetry labels it (``unknown`` where not known)."""
        labels = self.labels
        return PeerInfo(
            workload=self.workload or _UNKNOWN, namespace=self.namespace or _UNKNOWN,
            app=labels.get("app") or labels.get("app.kubernetes.io/name") or _UNKNOWN,
            version=labels.get("version") or labels.get("app.kubernetes.io/version") or _UNKNOWN,
            principal=self.identity or _UNKNOWN,
        )


@attrs.frozen
class EndpointSet:
    """Envoy ``ClusterLoadAssignment`` (EDS); named like its cluster."""

    TYPE: ClassVar[str] = "endpoints"
    name: str
    endpoints: tuple[LbEndpoint, ...] = ()


@attrs.frozen
class Secret:
    """Envoy SDS ``Secret``: a certificate chain and key, or a trust bundle."""

    TYPE: ClassVar[str] = "secrets"
    name: str
    certificate_chain: str = ""
    private_key: str = attrs.field(default="", repr=False)
    trust_bundle: str = ""


RESOURCE_TYPES: dict[str, type] = {
    "secrets": Secret,
    "clusters": Cluster,
    "endpoints": EndpointSet,
    "listeners": Listener,
    "routes": RouteTable,
}
#: xDS push order: SDS, CDS, EDS, LDS, RDS (removals go in reverse).
TYPE_ORDER: tuple[str, ...] = tuple(RESOURCE_TYPES)

#: The converter for the wire and for content hashes.
wire = cattrs.Converter(forbid_extra_keys=True)
# Generic aliases are not classes: singledispatch refuses them, so match by predicate.
wire.register_structure_hook_func(lambda t: t in (Mapping[str, str], Mapping[str, Any]), lambda v, _: dict(v))


def content_version(resource: Any) -> str:
    data = json.dumps(wire.unstructure(resource), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()[:16]


class ConsistencyError(ValueError):
    """A snapshot references resources it does not contain."""


class SlotError(ValueError):
    """A compiler wrote a slot it did not declare."""


def check_consistency(resources: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise ConsistencyError unless every reference in `resources[type][name]` resolves.

    Every route's cluster exists; every cluster has an endpoint set; every
    listener's route table or cluster, and every secret it names, exists. Proxies run it on what they
    received, the control plane before publishing.
    """
    clusters, endpoints = resources.get("clusters", {}), resources.get("endpoints", {})
    routes = resources.get("routes", {})
    problems = [f"route table {table.name!r} references missing cluster {name!r}"
                for table in routes.values() for name in table.referenced_clusters() if name not in clusters]
    problems += [f"cluster {name!r} has no endpoint set" for name in clusters if name not in endpoints]
    secrets = resources.get("secrets", {})
    problems += [f"cluster {cluster.name!r} references missing secret {name!r}"
                 for cluster in clusters.values() if cluster.tls for name in cluster.tls.referenced_secrets()
                 if name not in secrets]
    for listener in resources.get("listeners", {}).values():
        problems += [f"listener {listener.name!r} references missing secret {name!r}"
                     for name in listener.referenced_secrets() if name not in secrets]
        if listener.route_table and listener.route_table not in routes:
            problems.append(f"listener {listener.name!r} references missing route table {listener.route_table!r}")
        for name in (listener.cluster, *(w.cluster for w in listener.weighted_clusters)):
            if name and name not in clusters:
                problems.append(f"listener {listener.name!r} references missing cluster {name!r}")
    if problems:
        raise ConsistencyError("; ".join(sorted(set(problems))))


@attrs.frozen
class ProxySnapshot:
    """A consistent, versioned set of named resources for one proxy.

    `resources[type][name]` is the resource; `versions[type][name]` its
    content hash. `version` changes when any resource does.
    """

    resources: Mapping[str, Mapping[str, Any]]
    versions: Mapping[str, Mapping[str, str]]
    version: str

    @classmethod
    def build(cls, resources: Iterable[Any]) -> ProxySnapshot:
        """Version every resource by its content; a ``dns`` cluster's version covers its endpoint
        set too, since engines that resolve names inline those endpoints in the cluster (Envoy)."""
        by_type: dict[str, dict[str, Any]] = {t: {} for t in TYPE_ORDER}
        versions: dict[str, dict[str, str]] = {t: {} for t in TYPE_ORDER}
        for res in resources:
            if res.name in by_type[res.TYPE]:
                raise ConsistencyError(f"two {res.TYPE} named {res.name!r}")
            by_type[res.TYPE][res.name] = res
            versions[res.TYPE][res.name] = content_version(res)
        for name, cluster in by_type["clusters"].items():
            if cluster.resolution == "dns" and name in versions["endpoints"]:
                both = versions["clusters"][name] + versions["endpoints"][name]
                versions["clusters"][name] = hashlib.sha256(both.encode()).hexdigest()[:16]
        digest = hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:16]
        return cls(by_type, versions, digest)

    def type_version(self, type_key: str) -> str:
        data = json.dumps(sorted(self.versions[type_key].items()))
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    def check(self) -> None:
        """Raise ConsistencyError unless every reference resolves (see :func:`check_consistency`)."""
        check_consistency(self.resources)

    def count(self, type_key: str) -> int:
        return len(self.resources[type_key])


class SnapshotBuilder:
    """Collects one proxy's resources during compilation, enforcing slots.

    A compiler may create resources of the types it declared as slots
    (``"clusters"``) and set fields it declared (``"clusters.lb"``,
    ``"listeners.authz"``); anything else raises :class:`SlotError`.
    """

    def __init__(self) -> None:
        self._resources: dict[tuple[str, str], Any] = {}
        self._writer: str = ""
        self._slots: frozenset[str] = frozenset()

    def as_compiler(self, name: str, slots: frozenset[str]) -> SnapshotBuilder:
        self._writer, self._slots = name, slots
        return self

    def _allow(self, slot: str) -> None:
        if slot not in self._slots:
            raise SlotError(f"compiler {self._writer!r} wrote slot {slot!r} it did not declare")

    def add(self, resource: Any) -> None:
        """Add (or replace) a resource; needs the slot named by its type."""
        self._allow(resource.TYPE)
        self._resources[(resource.TYPE, resource.name)] = resource

    def get(self, type_key: str, name: str) -> Any | None:
        return self._resources.get((type_key, name))

    def all(self, type_key: str) -> list[Any]:
        return [r for (t, _), r in self._resources.items() if t == type_key]

    def set(self, type_key: str, name: str, field: str, value: Any) -> None:
        """Set one declared slot (`type.field`) of an existing resource."""
        self._allow(f"{type_key}.{field}")
        key = (type_key, name)
        self._resources[key] = attrs.evolve(self._resources[key], **{field: value})

    def extend(self, type_key: str, name: str, extension: Extension) -> None:
        """Attach an extension; needs the slot `type.extensions.<name>`."""
        self._allow(f"{type_key}.extensions.{extension.name}")
        key = (type_key, name)
        res = self._resources[key]
        others = tuple(e for e in res.extensions if e.name != extension.name)
        self._resources[key] = attrs.evolve(res, extensions=(*others, extension))

    def snapshot(self) -> ProxySnapshot:
        snap = ProxySnapshot.build(self._resources.values())
        snap.check()
        return snap
