"""TLS transport sockets: mesh mTLS (Istio's, through the agent's SDS) and TLS origination.

Mesh mTLS (:class:`~knotwork.proxyconfig.PeerTls` on inbound listeners,
``ISTIO_MUTUAL`` clusters) is TLS 1.3 only, with Istio's ALPN: a client
offers ``MESH_ALPN_HTTP``, ``MESH_ALPN_TCP`` or, for HTTP/2 clusters,
:data:`MESH_ALPN_H2`; an inbound listener offers ``h2`` then
``MESH_ALPN_SERVER``, so that ``h2`` is negotiated exactly with HTTP/2
clients (Envoy's connection manager picks its codec by the negotiated
protocol: anything but ``h2`` is HTTP/1). Both sides present the proxy's
SVID (SDS secret ``default`` from the agent, :mod:`knotwork_envoy.sds`)
and verify the peer with the mesh's trust bundle (``ROOTCA``), plus a SPIFFE
ID check in ``match_typed_subject_alt_names``: a client must be in the trust
domain (URI prefix ``spiffe://<td>/``); a server must be one of the
destination's identities (URI exact).

TLS origination (``SIMPLE``/``MUTUAL``) takes its certificates from the
snapshot's Secrets over ADS (like gateway certificates): the server is
verified with ``ca_secret``'s bundle (else the system's roots, a file),
and its certificate must name `subject_alt_names` (else `sni` as a DNS
name) unless ``insecure_skip_verify``.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from typing import Any

from knotwork.proxyconfig import MESH_ALPN_HTTP, MESH_ALPN_SERVER, MESH_ALPN_TCP, UPSTREAM_MODES, PeerTls, UpstreamTls

from ..sds import CERT_SECRET, ROOT_SECRET, mesh_secret
from .common import ADS, TranslationError, typed

__all__ = [
    "DOWNSTREAM_TLS",
    "RAW_BUFFER",
    "TLS_MODE_ISTIO",
    "TLS_SOCKET",
    "UPSTREAM_TLS",
    "custom_verification",
    "mesh_downstream_tls",
    "san_matchers",
    "system_roots",
    "upstream_tls",
]

DOWNSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
RAW_BUFFER_TYPE = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_BUFFER: dict[str, Any] = {"name": "envoy.transport_sockets.raw_buffer", "typed_config": typed(RAW_BUFFER_TYPE)}
#: Mesh mTLS: TLS 1.3 only.
MESH_TLS_PARAMS = {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"}
#: Endpoint metadata of a peer with a sidecar (Istio's), matched by auto-mTLS clusters' ``transport_socket_matches``.
TLS_MODE_ISTIO = {"envoy.transport_socket_match": {"tlsMode": "istio"}}
#: Where system CA bundles live, first found wins (after OpenSSL's default file).
SYSTEM_ROOTS = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
#: Protocols whose clusters speak TCP (not HTTP) to the peer sidecar, and HTTP/2 ones.
_TCP_PROTOCOLS = frozenset({"tcp", "tls", "mongo", "mysql", "redis"})
_H2_PROTOCOLS = frozenset({"http2", "grpc", "grpc-web", "h2", "h2c"})
#: ALPN a sidecar offers a peer over mesh mTLS for HTTP/2 (Istio's ``ALPNInMeshH2``): the
#: peer's connection manager takes HTTP/2 only when ``h2`` is negotiated.
MESH_ALPN_H2 = ("istio-h2", "istio", "h2")
#: ALPN an inbound listener offers, in its order of preference (the server's wins): ``h2`` first,
#: so HTTP/2 peers get HTTP/2, then the mesh's names, so HTTP/1.1 and TCP peers get theirs.
INBOUND_ALPN = ("h2", *MESH_ALPN_SERVER)


def system_roots(configured: str | None = None) -> str:
    """The CA bundle file that stands for "the system's roots" (Envoy has no implicit ones)."""
    if configured:
        return configured
    for path in (ssl.get_default_verify_paths().cafile, *SYSTEM_ROOTS):
        if path and os.path.isfile(path):
            return path
    raise TranslationError("no system CA bundle found: set envoy.system_roots in the mesh file")


def _socket(type_name: str, **config: Any) -> dict[str, Any]:
    return {"name": TLS_SOCKET, "typed_config": typed(type_name, **config)}


def san_matchers(names: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    """``SubjectAltNameMatcher``s, exact: URIs (``scheme://``), IP addresses, else DNS names."""
    out = []
    for name in names:
        if "://" in name:
            kind = "URI"
        else:
            try:
                ipaddress.ip_address(name)
                kind = "IP_ADDRESS"
            except ValueError:
                kind = "DNS"
        out.append({"san_type": kind, "matcher": {"exact": name}})
    return out


def _mesh_common(alpn: tuple[str, ...], names: list[dict[str, Any]]) -> dict[str, Any]:
    validation: dict[str, Any] = {"validation_context_sds_secret_config": mesh_secret(ROOT_SECRET),
                                  "default_validation_context": {}}
    if names:
        validation["default_validation_context"] = {"match_typed_subject_alt_names": names}
    return {
        "tls_params": dict(MESH_TLS_PARAMS),
        "alpn_protocols": list(alpn),
        "tls_certificate_sds_secret_configs": [mesh_secret(CERT_SECRET)],
        "combined_validation_context": validation,
    }


def mesh_downstream_tls(peer: PeerTls) -> dict[str, Any]:
    """The transport socket of an inbound listener's mTLS filter chain."""
    names = [{"san_type": "URI", "matcher": {"prefix": f"spiffe://{peer.trust_domain}/"}}]
    return _socket(DOWNSTREAM_TLS, common_tls_context=_mesh_common(INBOUND_ALPN, names),
                   require_client_certificate=True)


def _mesh_upstream(tls: UpstreamTls, protocol: str) -> dict[str, Any]:
    kind = protocol.lower()
    alpn = tls.alpn or (MESH_ALPN_TCP if kind in _TCP_PROTOCOLS else MESH_ALPN_H2 if kind in _H2_PROTOCOLS else MESH_ALPN_HTTP)
    if kind in _H2_PROTOCOLS and "h2" not in alpn:
        alpn = MESH_ALPN_H2  # the peer's connection manager speaks HTTP/2 only when h2 is negotiated
    # no identities known: any SVID of the mesh's roots (still a spiffe:// URI SAN)
    names = san_matchers(tls.identities) if tls.identities else [{"san_type": "URI", "matcher": {"prefix": "spiffe://"}}]
    config: dict[str, Any] = {"common_tls_context": _mesh_common(alpn, names)}
    if tls.sni:
        config["sni"] = tls.sni
    return _socket(UPSTREAM_TLS, **config)


def _origination(tls: UpstreamTls, where: str, roots: str | None, auto_sni: bool) -> dict[str, Any]:
    common: dict[str, Any] = {"tls_params": {"tls_minimum_protocol_version": "TLSv1_2",
                                             "tls_maximum_protocol_version": "TLSv1_3"}}
    if tls.alpn:
        common["alpn_protocols"] = list(tls.alpn)
    if tls.mode == "MUTUAL":
        if not tls.certificate:
            raise TranslationError(f"{where}: tls: mode MUTUAL needs a client certificate secret")
        common["tls_certificate_sds_secret_configs"] = [{"name": tls.certificate, "sds_config": ADS}]
    elif tls.certificate:
        raise TranslationError(f"{where}: tls: a client certificate is sent in mode MUTUAL only, not {tls.mode}")
    if not tls.insecure_skip_verify:
        # with auto_sni (dynamic forward proxy) Envoy checks the requested host unless SANs are given
        names = san_matchers(tls.subject_alt_names or ((tls.sni,) if tls.sni and not auto_sni else ()))
        default: dict[str, Any] = {"match_typed_subject_alt_names": names} if names else {}
        if tls.ca_secret:
            common["combined_validation_context"] = {
                "default_validation_context": default,
                "validation_context_sds_secret_config": {"name": tls.ca_secret, "sds_config": ADS},
            }
        else:
            common["validation_context"] = {"trusted_ca": {"filename": system_roots(roots)}, **default}
    config: dict[str, Any] = {"common_tls_context": common}
    if tls.sni and not auto_sni:
        config["sni"] = tls.sni
    return _socket(UPSTREAM_TLS, **config)


def custom_verification(tls: UpstreamTls | None) -> bool:
    """TLS origination that checks given names, or nothing, rather than the server's host name."""
    return bool(tls and tls.mode != "ISTIO_MUTUAL" and (tls.insecure_skip_verify or tls.subject_alt_names))


def upstream_tls(tls: UpstreamTls, protocol: str, where: str, *, roots: str | None = None,
                 passthrough: bool = False) -> dict[str, Any]:
    """The cluster fields for `tls`: ``transport_socket`` or (auto-mTLS) ``transport_socket_matches``.

    `passthrough` clusters (dynamic forward proxy) send each request's host as
    SNI (``auto_sni``; `sni` is not used) and verify that name
    (``auto_san_validation``) unless `subject_alt_names` or
    ``insecure_skip_verify`` say otherwise (see :func:`custom_verification`);
    mesh mTLS cannot apply to them.
    """
    if tls.mode not in UPSTREAM_MODES:
        raise TranslationError(f"{where}: tls: mode {tls.mode!r} is not one of {list(UPSTREAM_MODES)}")
    if tls.mode == "ISTIO_MUTUAL":
        if passthrough:
            if tls.auto:
                return {}  # no endpoint of a passthrough cluster has a sidecar we know of
            raise TranslationError(f"{where}: tls: ISTIO_MUTUAL needs the destination's endpoints and identities; "
                                   "a passthrough cluster has none")
        mtls = _mesh_upstream(tls, protocol)
        if not tls.auto:
            return {"transport_socket": mtls}
        return {"transport_socket_matches": [
            {"name": "tlsMode-istio", "match": dict(TLS_MODE_ISTIO["envoy.transport_socket_match"]), "transport_socket": mtls},
            {"name": "tlsMode-disabled", "match": {}, "transport_socket": RAW_BUFFER},
        ]}
    return {"transport_socket": _origination(tls, where, roots, passthrough)}
