"""``Cluster`` → Envoy ``Cluster`` (CDS, endpoints over EDS),
``EndpointSet`` → ``ClusterLoadAssignment`` (EDS), ``Secret`` → SDS ``Secret``.

Clusters behave as the native engine's: only healthy endpoints are picked
(Envoy's panic mode, which would send to unhealthy ones, is off), and no
circuit breaking (Envoy's default limits of 1024 become unlimited).
"""

from __future__ import annotations

from typing import Any

from knotwork.proxyconfig import Cluster, EndpointSet, Secret

from .common import ADS, TranslationError, duration, socket_address, typed

__all__ = ["LB_POLICIES", "cluster", "cluster_load_assignment", "secret"]

#: The balancer names Envoy carries out, and how.
LB_POLICIES = {"round_robin": "ROUND_ROBIN", "least_request": "LEAST_REQUEST", "random": "RANDOM"}
UNLIMITED = 4294967295
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_H2 = frozenset({"http2", "grpc", "h2", "h2c"})


def cluster(c: Cluster) -> dict[str, Any]:
    """The CDS resource of `c` (proto-JSON); raises TranslationError."""
    where = f"cluster {c.name!r}"
    if c.lb not in LB_POLICIES:
        raise TranslationError(f"{where}: lb: balancer {c.lb!r} has no Envoy equivalent (envoy supports {', '.join(LB_POLICIES)})")
    if c.connect_timeout <= 0:
        raise TranslationError(f"{where}: connect_timeout must be > 0")
    if c.tls:
        raise TranslationError(f"{where}: tls: upstream TLS is not supported by the envoy engine yet")
    for ext in c.extensions:
        raise TranslationError(f"{where}: extension {ext.name!r} (plugin {ext.plugin!r}) is not supported by the envoy engine")
    out: dict[str, Any] = {
        "name": c.name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": ADS, "service_name": c.name},
        "connect_timeout": duration(c.connect_timeout),
        "lb_policy": LB_POLICIES[c.lb],
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "circuit_breakers": {"thresholds": [{
            "max_connections": UNLIMITED, "max_pending_requests": UNLIMITED,
            "max_requests": UNLIMITED, "max_retries": UNLIMITED,
        }]},
    }
    if c.lb == "least_request":
        out["least_request_lb_config"] = {"choice_count": int(c.lb_settings.get("choice_count", 2))}
    if c.protocol.lower() in _H2:
        out["typed_extension_protocol_options"] = {
            HTTP_OPTIONS: typed(HTTP_OPTIONS, explicit_http_config={"http2_protocol_options": {}}),
        }
    return out


def cluster_load_assignment(e: EndpointSet) -> dict[str, Any]:
    """The EDS resource of `e`: one locality, health and weight per endpoint."""
    lb_endpoints = []
    for ep in e.endpoints:
        endpoint: dict[str, Any] = {"address": socket_address(ep.address, ep.port)}
        if ep.instance:
            endpoint["hostname"] = ep.instance
        lb_endpoints.append({
            "endpoint": endpoint,
            "health_status": "HEALTHY" if ep.healthy else "UNHEALTHY",
            "load_balancing_weight": max(1, ep.weight),
        })
    out: dict[str, Any] = {"cluster_name": e.name}
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
