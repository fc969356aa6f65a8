"""TLS to upstreams: mesh mTLS (``ISTIO_MUTUAL``) and TLS origination (``SIMPLE``/``MUTUAL``).

A cluster's :class:`~knotwork.proxyconfig.UpstreamTls` becomes an
:class:`UpstreamTlsPlan`, built once per config (and reused by the next
config while its content and secrets are unchanged, so pools survive
pushes). Connections to an endpoint with TLS live in their own pool, keyed
``(address, port, plan)``; plaintext ones keep ``(address, port)``.

- ``ISTIO_MUTUAL``: the proxy's SVID (the context of the *current* SVID,
  :meth:`MeshIdentity.client_context`, TLS 1.3, verified with the mesh's
  trust bundle); after the handshake and before a byte is written, the
  server's SPIFFE ID must be one of the cluster's `identities` (any mesh
  SVID when the list is empty, as Envoy without SAN matchers). With `auto`
  only endpoints with an identity (a sidecar) get TLS. A renewal changes
  the context of new connections only: pooled ones keep serving.
- ``SIMPLE``/``MUTUAL``: verified with `ca_secret`'s bundle (else the
  system's roots); the server's certificate must name one of
  `subject_alt_names` (DNS, URI or IP SAN), else the host name check is on
  `sni` (else the endpoint's address); `insecure_skip_verify` checks
  nothing. ``MUTUAL`` presents `certificate`'s chain and key.

A refused server fails the attempt like a refused connection (503 ``UF``
on HTTP, the next endpoint for TCP), with a log naming both identities.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import ssl
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from knotwork.identity import load_chain, peer_spiffe_id
from knotwork.proxyconfig import MESH_ALPN_HTTP, MESH_ALPN_TCP, UPSTREAM_MODES, Cluster, LbEndpoint, Secret

__all__ = ["PeerRefused", "UpstreamTlsPlan", "build_upstream_tls", "connect"]

log = structlog.get_logger("knotwork.native.mtls").bind(plugin="native")

#: Protocols the native engine never speaks upstream (it speaks HTTP/1.1): not offered by ALPN.
_NOT_SPOKEN = frozenset({"h2", "istio-h2", "h3"})
_CACHE: OrderedDict[tuple[Any, ...], ssl.SSLContext] = OrderedDict()
_CACHE_SIZE = 64


class PeerRefused(ConnectionError):
    """The upstream's certificate is valid but names the wrong peer."""


class UpstreamTlsPlan:
    """One cluster's upstream TLS, ready for connections (see the module docstring)."""

    __slots__ = ("alpn", "auto", "cluster", "context_", "identities", "mesh", "mode", "names", "sni", "tag")

    def __init__(self, cluster: str, mode: str, tag: str, *, mesh: Any = None, context: ssl.SSLContext | None = None,
                 alpn: tuple[str, ...] = (), identities: tuple[str, ...] = (), auto: bool = False, sni: str = "",
                 names: tuple[str, ...] = ()) -> None:
        self.cluster, self.mode, self.tag = cluster, mode, tag
        self.mesh, self.context_, self.alpn = mesh, context, alpn
        self.identities = frozenset(identities)
        self.auto, self.sni, self.names = auto, sni, names

    def key(self, ep: LbEndpoint) -> tuple[Any, ...]:
        """The pool key of an endpoint of this cluster (plaintext for identity-less endpoints under `auto`)."""
        if self.auto and not ep.identity:
            return (ep.address, ep.port)
        return (ep.address, ep.port, self)

    def for_endpoint(self, ep: LbEndpoint) -> UpstreamTlsPlan | None:
        return None if self.auto and not ep.identity else self

    def context(self) -> ssl.SSLContext:
        """The client context for a new connection (the current SVID's, for mesh mTLS)."""
        if self.mesh is not None:
            return self.mesh.client_context(self.alpn)
        assert self.context_ is not None
        return self.context_

    def server_hostname(self, address: str) -> str | None:
        """SNI (and, for origination without SANs, the name checked)."""
        if self.mesh is not None:
            return self.sni or None
        return self.sni or address

    def refusal(self, ssl_object: Any, address: str) -> str | None:
        """Why the server of a completed handshake must not get a byte, or None."""
        if ssl_object is None:
            return f"no TLS session with {address}"
        if self.mesh is not None:
            peer = peer_spiffe_id(ssl_object)
            if peer is None:
                return f"upstream {address} of cluster {self.cluster} presented no SPIFFE ID"
            if self.identities and peer not in self.identities:
                return (f"upstream {address} of cluster {self.cluster} presented {peer}, "
                        f"expected {' or '.join(sorted(self.identities))}")
            return None
        if self.names:
            sans = [v for _, v in (ssl_object.getpeercert() or {}).get("subjectAltName", ())]
            if not any(_san_matches(san, name) for san in sans for name in self.names):
                return (f"upstream {address} of cluster {self.cluster}: certificate names {sans}, "
                        f"expected one of {list(self.names)}")
        return None


def _san_matches(san: str, name: str) -> bool:
    if san == name:
        return True
    if san.startswith("*.") and "." in name:  # a DNS wildcard covers one label
        return name.split(".", 1)[1].lower() == san[2:].lower()
    try:
        return ipaddress.ip_address(san) == ipaddress.ip_address(name)
    except ValueError:
        return san.lower() == name.lower()


async def connect(loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol], address: str, port: int,
                  plan: UpstreamTlsPlan, stats: Any = None) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
    """Open a TLS connection with `plan` and check the server before returning it.

    Raises ``ssl.SSLError`` (a failed handshake), :class:`PeerRefused`, or OSError as a plain connect does.
    """
    transport, proto = await loop.create_connection(factory, address, port, ssl=plan.context(),
                                                    server_hostname=plan.server_hostname(address))
    why = plan.refusal(transport.get_extra_info("ssl_object"), f"{address}:{port}")
    if why is not None:
        transport.abort()
        if stats is not None:
            stats["upstream_cx_tls_peer_refused"] += 1
        log.warning("upstream TLS peer refused", reason=why, cluster=plan.cluster)
        raise PeerRefused(why)
    if stats is not None:
        stats["upstream_cx_tls_total"] += 1
    return transport, proto


# ── building ────────────────────────────────────────────────────────────────


def build_upstream_tls(cluster: Cluster, secrets: Mapping[str, Secret], mesh: Any,
                       previous: Mapping[str, UpstreamTlsPlan], where: str) -> UpstreamTlsPlan:
    """The plan of `cluster.tls`; raises ValueError naming cluster, field and secret (a NACK).

    A plan of `previous` (tag → plan) with the same content is reused, so pooled connections stay.
    """
    tls = cluster.tls
    assert tls is not None
    if tls.mode not in UPSTREAM_MODES:
        raise ValueError(f"{where}: tls mode {tls.mode!r} is not one of {list(UPSTREAM_MODES)}")
    if tls.mode == "ISTIO_MUTUAL":
        if mesh is None:
            raise ValueError(f"{where}: tls mode ISTIO_MUTUAL needs the proxy's workload identity, and this proxy "
                             "has none (start it with --ca and --identity)")
        default = MESH_ALPN_HTTP if cluster.protocol.startswith("http") else MESH_ALPN_TCP
        alpn = tuple(p for p in (tls.alpn or default) if p not in _NOT_SPOKEN)
        tag = _tag(cluster.name, tls, alpn)
        found = previous.get(tag)
        if found is not None and found.mesh is mesh:
            return found
        return UpstreamTlsPlan(cluster.name, tls.mode, tag, mesh=mesh, alpn=alpn, identities=tls.identities,
                               auto=tls.auto, sni=tls.sni)
    ca = _secret(secrets, tls.ca_secret, where, "ca_secret") if tls.ca_secret else None
    cert = _secret(secrets, tls.certificate, where, "certificate") if tls.certificate else None
    if tls.mode == "MUTUAL" and cert is None:
        raise ValueError(f"{where}: tls mode MUTUAL needs a certificate secret")
    alpn = tuple(p for p in tls.alpn if p not in _NOT_SPOKEN)
    tag = _tag(cluster.name, tls, alpn, ca.trust_bundle if ca else None,
               (cert.certificate_chain, cert.private_key) if cert else None)
    found = previous.get(tag)
    if found is not None:
        return found
    ctx = _origination_context(tls, ca, cert, alpn, where)
    return UpstreamTlsPlan(cluster.name, tls.mode, tag, context=ctx, alpn=alpn, sni=tls.sni,
                           names=() if tls.insecure_skip_verify else tls.subject_alt_names)


def _tag(*content: Any) -> str:
    return hashlib.sha256(repr(content).encode()).hexdigest()[:16]


def _secret(secrets: Mapping[str, Secret], name: str | None, where: str, field: str) -> Secret:
    found = secrets.get(name or "")
    if found is None:
        raise ValueError(f"{where}: tls {field}: secret {name!r} is missing")
    if field == "ca_secret" and not found.trust_bundle:
        raise ValueError(f"{where}: tls ca_secret: secret {name!r} has no trust bundle")
    if field == "certificate" and not (found.certificate_chain and found.private_key):
        raise ValueError(f"{where}: tls certificate: secret {name!r} has no certificate chain and key")
    return found


def _origination_context(tls: Any, ca: Secret | None, cert: Secret | None, alpn: tuple[str, ...],
                         where: str) -> ssl.SSLContext:
    key = (tls.insecure_skip_verify, bool(tls.subject_alt_names), ca.trust_bundle if ca else None,
           (cert.certificate_chain, cert.private_key) if cert else None, alpn)
    ctx = _CACHE.get(key)
    if ctx is not None:
        _CACHE.move_to_end(key)
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        if ca is not None:
            try:
                ctx.load_verify_locations(cadata=ca.trust_bundle)
            except (ssl.SSLError, ValueError) as exc:
                raise ValueError(f"{where}: tls ca_secret: secret {ca.name!r}: trust bundle refused: {exc}") from exc
        else:
            ctx.load_default_certs()
        ctx.check_hostname = not tls.subject_alt_names  # with names, refusal() checks them after the handshake
    if cert is not None:
        try:
            load_chain(ctx, cert.certificate_chain, cert.private_key)
        except (ssl.SSLError, OSError, UnicodeEncodeError) as exc:
            raise ValueError(f"{where}: tls certificate: secret {cert.name!r}: chain or key refused: {exc}") from exc
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    _CACHE[key] = ctx
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return ctx
