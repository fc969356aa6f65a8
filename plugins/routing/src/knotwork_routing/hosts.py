"""Host names: resolving what users write, wildcard coverage, and cluster names."""

from __future__ import annotations

from collections.abc import Collection

from knotwork import Protocol
from knotwork.model import resolve_host

__all__ = [
    "covers",
    "inbound_cluster",
    "intersect",
    "is_http",
    "outbound_cluster",
    "resolve",
]


def resolve(host: str, namespace: str, domain: str, known: Collection[str] = ()) -> str:
    """Resolve a host the user wrote, relative to `namespace` (Istio's short names).

    `known` is accepted for callers that pass the service registry; Istio's
    rule needs none: only a name without a dot is expanded.
    """
    return resolve_host(host, namespace, domain)


def covers(pattern: str, host: str) -> bool:
    """True when `pattern` (exact, ``*.suffix`` or ``*``) matches every name `host` can be."""
    if pattern == "*" or pattern == host:
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and (len(host) > len(suffix)) and host != "*"
    return False


def intersect(host: str, other: str) -> str | None:
    """The more specific of two host patterns when one covers the other, else None."""
    if covers(other, host):
        return host
    if covers(host, other):
        return other
    return None


def is_http(protocol: Protocol) -> bool:
    """HTTP-ish ports are routed as HTTP: HTTP, HTTP2, GRPC and UNKNOWN (sniffed)."""
    return protocol.is_http or protocol is Protocol.UNKNOWN


def outbound_cluster(port: int, subset: str, fqdn: str) -> str:
    """Istio's outbound cluster name: ``outbound|<port>|<subset>|<fqdn>``."""
    return f"outbound|{port}|{subset}|{fqdn}"


def inbound_cluster(port: int) -> str:
    """Istio's inbound cluster name: ``inbound|<port>||``."""
    return f"inbound|{port}||"
