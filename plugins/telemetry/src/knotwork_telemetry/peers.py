"""Who is on each side of a request, as Istio's standard labels name them.

Pure functions and small bounded caches, shared by the `metrics` and
`access-log` sinks so both agree on every identity:

- the *destination service* from the cluster name Istio-style
  (``outbound|<port>|<subset>|<fqdn>``), else the request's host;
- the *source* of an inbound request from the :data:`~knotwork.proxyconfig.PEER_HEADER`
  the client sidecar set, trusted only as far as mTLS proves it (see
  :func:`source_peer`).
"""

from __future__ import annotations

from knotwork.proxyconfig import PeerInfo

__all__ = ["UNKNOWN", "UNKNOWN_PEER", "canonical", "host_of", "namespace_of", "service_of", "source_peer", "split_fqdn"]

UNKNOWN = "unknown"
UNKNOWN_PEER = PeerInfo()
_MAX_CACHED = 4096
_SOURCES: dict[tuple[str | None, str | None], PeerInfo] = {}


def namespace_of(principal: str | None) -> str:
    """The namespace of a SPIFFE ID ``spiffe://<td>/ns/<ns>/sa/<sa>`` (Istio's fallback), else ``unknown``."""
    if principal:
        begin = principal.find("/ns/")
        if begin >= 0:
            begin += 4
            end = principal.find("/", begin)
            found = principal[begin:end] if end >= 0 else principal[begin:]
            if found:
                return found
    return UNKNOWN


def source_peer(header: str | None, peer_identity: str | None) -> PeerInfo:
    """The calling workload of an inbound request, from its peer header and mTLS identity.

    With mTLS (`peer_identity` set) the header is believed only when its
    principal is that identity; otherwise the source is known by its
    principal alone (its namespace read from the SPIFFE ID, as Istio does).
    Without mTLS the header is taken as it is but its principal is not:
    ``source_principal`` is then ``unknown``. No or a malformed header: every
    field ``unknown`` but what the identity proves.
    """
    key = (header, peer_identity)
    found = _SOURCES.get(key)
    if found is None:
        peer = PeerInfo.parse(header)
        if peer_identity:
            if peer is None or peer.principal != peer_identity:
                peer = PeerInfo(namespace=namespace_of(peer_identity), principal=peer_identity)
        elif peer is None:
            peer = UNKNOWN_PEER
        elif peer.principal != UNKNOWN:
            peer = PeerInfo(peer.workload, peer.namespace, peer.app, peer.version)
        if len(_SOURCES) >= _MAX_CACHED:
            _SOURCES.clear()
        found = _SOURCES[key] = peer
    return found


def canonical(peer: PeerInfo) -> tuple[str, str]:
    """Istio's canonical service and revision of a peer: app (else workload), version (else ``latest``)."""
    service = peer.app if peer.app != UNKNOWN else peer.workload
    return service, peer.version if peer.version != UNKNOWN else "latest"


def split_fqdn(fqdn: str) -> tuple[str, str]:
    """``(name, namespace)`` of ``<name>.<ns>.svc.<domain>``; ``(fqdn, unknown)`` for any other host."""
    parts = fqdn.split(".")
    if len(parts) >= 3 and parts[2] == "svc" and parts[0] and parts[1]:
        return parts[0], parts[1]
    return fqdn, UNKNOWN


def host_of(authority: str | None) -> str:
    """The host of a ``Host``/``:authority`` value, port removed; ``unknown`` when empty."""
    if not authority:
        return UNKNOWN
    if authority.startswith("["):  # [v6]:port
        end = authority.find("]")
        return authority[:end + 1] if end > 0 else authority
    host, colon, port = authority.rpartition(":")
    return host if colon and port.isdigit() and host else authority


def service_of(cluster: str | None, authority: str | None) -> tuple[str, str, str]:
    """``(destination_service, destination_service_name, destination_service_namespace)``.

    From an outbound cluster ``outbound|<port>|<subset>|<fqdn>``: the FQDN and
    its name and namespace. A request that got no such cluster is named by its
    host; a named catch-all cluster (``PassthroughCluster``,
    ``BlackHoleCluster``) gives the service name, as in Istio.
    """
    if cluster and cluster.startswith("outbound|"):
        fqdn = cluster.rpartition("|")[2]
        if fqdn:
            return (fqdn, *split_fqdn(fqdn))
    host = host_of(authority)
    if cluster and "|" not in cluster:
        return host, cluster, UNKNOWN
    return host, UNKNOWN, UNKNOWN
