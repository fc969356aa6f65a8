"""``Cluster`` → Envoy ``Cluster`` (CDS, endpoints over EDS),
``EndpointSet`` → ``ClusterLoadAssignment`` (EDS), ``Secret`` → SDS ``Secret``.

Clusters behave as the native engine's: only healthy endpoints are picked
(Envoy's panic mode, which would send to unhealthy ones, is off), and no
circuit breaking (Envoy's default limits of 1024 become unlimited).

By ``resolution``: ``static`` clusters get their endpoints over EDS; ``dns``
clusters are ``STRICT_DNS`` with their endpoint set inlined as the
``load_assignment`` (EDS endpoints must be IPs), IPv4 first; ``passthrough``
clusters are dynamic forward proxy clusters (``CLUSTER_PROVIDED``), whose
host the ``envoy.filters.http.dynamic_forward_proxy`` filter of outbound and
gateway listeners takes from the request's authority (port 80 when absent).

``tls`` (:class:`~knotwork.proxyconfig.UpstreamTls`, see :mod:`.tls`):
``ISTIO_MUTUAL`` — a mesh mTLS ``transport_socket``; with ``auto`` (Istio's
auto-mTLS) ``transport_socket_matches`` instead: endpoints with an identity
carry the metadata ``envoy.transport_socket_match: {tlsMode: istio}`` and
get mTLS, the others the plaintext socket. ``SIMPLE``/``MUTUAL`` — TLS
origination, the SNI and verified name of a passthrough cluster being each
request's host (Envoy's ``auto_sni``/``auto_san_validation``; with
``subject_alt_names`` or ``insecure_skip_verify`` only ``auto_sni``).
"""

from __future__ import annotations

from typing import Any

from knotwork.proxyconfig import RESOLUTIONS, Cluster, EndpointSet, Secret

from .common import ADS, TranslationError, duration, socket_address, typed
from .observe import peer_metadata
from .tls import TLS_MODE_ISTIO, custom_verification, upstream_tls

__all__ = ["DFP_FILTER", "DNS_CACHE", "LB_POLICIES", "cluster", "cluster_load_assignment", "secret"]

#: The balancer names Envoy carries out, and how.
LB_POLICIES = {"round_robin": "ROUND_ROBIN", "least_request": "LEAST_REQUEST", "random": "RANDOM"}
UNLIMITED = 4294967295
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_H2 = frozenset({"http2", "grpc", "h2", "h2c"})
DFP_CLUSTER = "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig"
#: The HTTP filter that resolves a passthrough cluster's host (see :mod:`.listeners`).
DFP_FILTER = "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig"
#: Names resolve to IPv4 first (a loopback mesh listens on 127.0.0.1; ``localhost`` may also be ::1).
DNS_LOOKUP_FAMILY = "V4_PREFERRED"
#: The DNS cache shared by the filter and every passthrough cluster: one name, one config.
DNS_CACHE: dict[str, Any] = {"name": "knotwork_passthrough", "dns_lookup_family": DNS_LOOKUP_FAMILY}


def _resolution(c: Cluster, endpoints: EndpointSet | None, where: str) -> dict[str, Any]:
    """How Envoy finds the cluster's hosts (see the module docstring)."""
    if c.resolution == "static":
        return {"type": "EDS", "eds_cluster_config": {"eds_config": ADS, "service_name": c.name}}
    if c.resolution == "dns":
        if endpoints is None:
            raise TranslationError(f"{where}: resolution dns: the cluster's endpoint set is needed to inline it")
        return {"type": "STRICT_DNS", "dns_lookup_family": DNS_LOOKUP_FAMILY,
                "load_assignment": cluster_load_assignment(endpoints, c.name)}
    if c.resolution == "passthrough":
        config = typed(DFP_CLUSTER, dns_cache_config=DNS_CACHE)
        if custom_verification(c.tls):  # Envoy insists on auto_san_validation unless told otherwise
            config["allow_insecure_cluster_options"] = True
        return {"cluster_type": {"name": "envoy.clusters.dynamic_forward_proxy", "typed_config": config}}
    raise TranslationError(f"{where}: resolution {c.resolution!r} is not one of {list(RESOLUTIONS)}")


def cluster(c: Cluster, endpoints: EndpointSet | None = None, *, system_roots: str | None = None) -> dict[str, Any]:
    """The CDS resource of `c` (proto-JSON); raises TranslationError.

    `endpoints`: the cluster's endpoint set, needed by ``dns`` clusters only.
    `system_roots`: the CA bundle file that verifies TLS-originated servers without a ``ca_secret``.
    """
    where = f"cluster {c.name!r}"
    if c.lb not in LB_POLICIES:
        raise TranslationError(f"{where}: lb: balancer {c.lb!r} has no Envoy equivalent (envoy supports {', '.join(LB_POLICIES)})")
    if c.connect_timeout <= 0:
        raise TranslationError(f"{where}: connect_timeout must be > 0")
    for ext in c.extensions:
        raise TranslationError(f"{where}: extension {ext.name!r} (plugin {ext.plugin!r}) is not supported by the envoy engine")
    passthrough = c.resolution == "passthrough"
    out: dict[str, Any] = {
        "name": c.name,
        **_resolution(c, endpoints, where),
        "connect_timeout": duration(c.connect_timeout),
        "lb_policy": "CLUSTER_PROVIDED" if passthrough else LB_POLICIES[c.lb],
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "circuit_breakers": {"thresholds": [{
            "max_connections": UNLIMITED, "max_pending_requests": UNLIMITED,
            "max_requests": UNLIMITED, "max_retries": UNLIMITED,
        }]},
    }
    if c.lb == "least_request" and not passthrough:
        out["least_request_lb_config"] = {"choice_count": int(c.lb_settings.get("choice_count", 2))}
    http: dict[str, Any] = {}
    if c.tls:
        out.update(upstream_tls(c.tls, c.protocol, where, roots=system_roots, passthrough=passthrough))
        if passthrough and custom_verification(c.tls):
            http["upstream_http_protocol_options"] = {"auto_sni": True}
    if c.protocol.lower() in _H2:
        http["explicit_http_config"] = {"http2_protocol_options": {}}
    elif http:
        http["explicit_http_config"] = {"http_protocol_options": {}}
    if http:
        out["typed_extension_protocol_options"] = {HTTP_OPTIONS: typed(HTTP_OPTIONS, **http)}
    return out


def cluster_load_assignment(e: EndpointSet, cluster_name: str | None = None) -> dict[str, Any]:
    """The EDS resource of `e` (or a cluster's inline ``load_assignment``): health and weight per endpoint."""
    lb_endpoints = []
    for ep in e.endpoints:
        endpoint: dict[str, Any] = {"address": socket_address(ep.address, ep.port)}
        if ep.instance:
            endpoint["hostname"] = ep.instance
        lb: dict[str, Any] = {"endpoint": endpoint, "health_status": "HEALTHY" if ep.healthy else "UNHEALTHY"}
        filter_metadata: dict[str, Any] = {}
        if ep.identity:  # a peer with a sidecar: auto-mTLS clusters use mTLS to it
            filter_metadata.update(TLS_MODE_ISTIO)
        peer = peer_metadata(ep)
        if peer is not None:  # the workload telemetry reports as the request's destination
            filter_metadata["knotwork"] = peer
        if filter_metadata:
            lb["metadata"] = {"filter_metadata": filter_metadata}
        lb["load_balancing_weight"] = max(1, ep.weight)
        lb_endpoints.append(lb)
    out: dict[str, Any] = {"cluster_name": cluster_name or e.name}
    if lb_endpoints:
        out["endpoints"] = [{"lb_endpoints": lb_endpoints}]
    return out


def secret(s: Secret) -> dict[str, Any]:
    """The SDS resource of `s`: a certificate and key, or a trust bundle."""
    if s.certificate_chain:
        return {"name": s.name, "tls_certificate": {
            "certificate_chain": {"inline_string": s.certificate_chain},
            "private_key": {"inline_string": s.private_key},
        }}
    if s.trust_bundle:
        return {"name": s.name, "validation_context": {"trusted_ca": {"inline_string": s.trust_bundle}}}
    raise TranslationError(f"secret {s.name!r}: neither a certificate chain nor a trust bundle")
