"""The TLS of outbound clusters: DestinationRule ``tls`` and Istio's auto-mTLS.

Only when the mesh selects a certificate authority; otherwise every cluster
is plaintext and a DestinationRule's ``tls`` is ignored with a warning.
Outbound clusters of sidecars and gateways alike; inbound clusters (the
local app) never use TLS. The ``tls`` that applies to a cluster follows
Istio's merge of rule, port-level, subset and subset port-level policies
(:meth:`~knotwork_routing.destinationrule.DestinationRules.client_tls`):

- ``ISTIO_MUTUAL`` — mesh mTLS with the proxy's own SVID
  (:class:`~knotwork.proxyconfig.UpstreamTls` mode ``ISTIO_MUTUAL``): the
  server must present one of `identities`, the rule's ``subjectAltNames``
  when given, else a ServiceEntry host's ``subjectAltNames``, else the
  SPIFFE IDs of the cluster's endpoints (none of these: any SVID the mesh's
  trust bundle verifies, as Istio); ``sni`` the
  rule's, else Istio's ``outbound_.<port>_.<subset>_.<host>``; ALPN
  :data:`~knotwork.proxyconfig.MESH_ALPN_HTTP` (HTTP clusters) or
  :data:`~knotwork.proxyconfig.MESH_ALPN_TCP`. Certificate fields are ignored
  (warned): the proxy's SVID is used.
- ``DISABLE`` (also a ``tls`` block without ``mode``, the proto's zero
  value) — plaintext.
- ``SIMPLE`` / ``MUTUAL`` — TLS origination, meant for ServiceEntry hosts:
  ``caCertificates`` (a file, as a ``file-root:`` Secret; absent: the system
  roots), ``clientCertificate`` + ``privateKey`` (``MUTUAL``, required; a
  ``file-cert:`` Secret), ``sni`` (default: the host itself, as Istio's
  auto-SNI sends the request's host; none for a wildcard host),
  ``subjectAltNames``, ``insecureSkipVerify`` (with ``caCertificates`` or
  ``subjectAltNames`` it is an error, as in Istio). Files are read at
  compile time (see :mod:`knotwork_routing.pemfiles`). ``credentialName``
  (Kubernetes secrets) is refused; ``caCrl`` is ignored with a warning.

**Auto-mTLS** (no ``tls`` for the cluster): as Istio's per-endpoint check
(``mtlsChecker``), an endpoint gets mTLS when it has an identity (a
sidecar), the rule's per-endpoint mode
(:meth:`~knotwork_routing.destinationrule.DestinationRules.endpoint_tls_mode`)
is not ``DISABLE``, and either that mode is ``ISTIO_MUTUAL`` or the
destination workload's PeerAuthentication (by the endpoint's labels, the
service's namespace and the service port's ``targetPort``) is not
``DISABLE``. The cluster gets ``UpstreamTls(ISTIO_MUTUAL, auto=True)`` with
the identities of those endpoints; the others have their
:attr:`~knotwork.proxyconfig.LbEndpoint.identity` cleared, which is how the
snapshot says "plaintext to this one" (Istio strips the endpoint's
``tlsMode`` label). When no endpoint qualifies — no sidecars (ServiceEntry
hosts, passthrough), or every server says ``DISABLE`` — the cluster is
plaintext. One difference from Istio, on purpose: Istio also drops TLS for
the whole cluster when the destination's *namespace or mesh* policy is
``DISABLE`` even if a workload policy re-enables mTLS (its "best effort"
shortcut, which then fails against that STRICT workload); Knotwork decides
per endpoint from the workload's effective mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from knotwork.proxyconfig import MESH_ALPN_HTTP, MESH_ALPN_TCP, LbEndpoint, Secret, UpstreamTls

from .destinationrule import ClientTls, DestinationRules
from .errors import ResourceError, warn_ignored, warn_unsupported
from .peerauth import PeerAuthentications
from .pemfiles import certificate_secret, root_secret

__all__ = ["CLIENT_TLS_MODES", "UpstreamTlsPolicy", "istio_sni"]

#: Istio ``ClientTLSSettings.mode`` values.
CLIENT_TLS_MODES = ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")
_CERT_FIELDS = ("clientCertificate", "privateKey", "caCertificates", "credentialName")
_KNOWN = frozenset({"mode", "sni", "subjectAltNames", "insecureSkipVerify", "caCrl", *_CERT_FIELDS})

Upstream = tuple[UpstreamTls | None, tuple[LbEndpoint, ...], tuple[Secret, ...]]


def istio_sni(port: int, subset: str, fqdn: str) -> str:
    """Istio's outbound SNI: ``outbound_.<port>_.<subset>_.<fqdn>`` (an empty subset is ``_``)."""
    return f"outbound_.{port}_.{subset}_.{fqdn}"


class UpstreamTlsPolicy:
    """Decides each outbound cluster's TLS; `peers` None means the mesh has no CA (all plaintext)."""

    def __init__(self, rules: DestinationRules, peers: PeerAuthentications | None, base: Path) -> None:
        self._rules, self._peers, self._base = rules, peers, base
        self._secrets: dict[tuple[Any, ...], Secret] = {}

    def upstream(self, fqdn: str, port: int, subset: str, protocol: str, service: Any,
                 endpoints: tuple[LbEndpoint, ...]) -> Upstream:
        """(tls, endpoints — identities cleared where auto-mTLS sends plaintext —, secrets to add)."""
        tls = self._rules.client_tls(fqdn, port, subset)
        if self._peers is None:
            if tls is not None:
                warn_ignored(tls.rule, tls.where, "tls ignored: the mesh selects no certificate_authority (plaintext)")
            return None, endpoints, ()
        if tls is None:
            return self._auto(fqdn, port, subset, protocol, service, endpoints)
        _check_fields(tls)
        mode = tls.mode
        if mode == "DISABLE":
            return None, endpoints, ()
        if mode == "ISTIO_MUTUAL":
            return self._istio_mutual(tls, fqdn, port, subset, protocol, service, endpoints), endpoints, ()
        if mode in ("SIMPLE", "MUTUAL"):
            upstream, secrets = self._originate(tls, fqdn)
            return upstream, endpoints, secrets
        raise ResourceError(tls.rule, f"{tls.where}.mode",
                            f"expected one of {', '.join(CLIENT_TLS_MODES)}, got {mode!r}")

    # ── modes ────────────────────────────────────────────────────────────────

    def _istio_mutual(self, tls: ClientTls, fqdn: str, port: int, subset: str, protocol: str, service: Any,
                      endpoints: Sequence[LbEndpoint]) -> UpstreamTls:
        for key in _CERT_FIELDS:
            if tls.settings.get(key):
                warn_ignored(tls.rule, f"{tls.where}.{key}",
                             "ignored with mode ISTIO_MUTUAL: the proxy's own SVID is used")
        names = _names(tls, "subjectAltNames")
        # the rule's names, else a ServiceEntry's subjectAltNames, else who the endpoints are; none: any SVID of the mesh
        identities = (names or tuple(getattr(service, "subject_alt_names", ()))
                      or tuple(sorted({ep.identity for ep in endpoints if ep.identity})))
        sni = _text(tls, "sni") or istio_sni(port, subset, fqdn)
        return UpstreamTls("ISTIO_MUTUAL", identities=identities, sni=sni, alpn=_mesh_alpn(protocol))

    def _auto(self, fqdn: str, port: int, subset: str, protocol: str, service: Any,
              endpoints: tuple[LbEndpoint, ...]) -> Upstream:
        assert self._peers is not None
        if not any(ep.identity for ep in endpoints):
            return None, endpoints, ()
        service_port = service.port(port) if service is not None else None
        workload_port = (service_port.target_port or port) if service_port is not None else port
        namespace = getattr(service, "namespace", "")
        kept: list[LbEndpoint] = []
        for ep in endpoints:
            keep = bool(ep.identity)
            if keep:
                mode = self._rules.endpoint_tls_mode(fqdn, port, ep.labels)
                keep = mode != "DISABLE" and (
                    mode == "ISTIO_MUTUAL" or self._peers.mode(namespace, ep.labels, workload_port) != "DISABLE")
            kept.append(ep if keep or not ep.identity else attrs.evolve(ep, identity=None))
        identities = tuple(sorted({ep.identity for ep in kept if ep.identity}))
        if not identities:
            return None, endpoints, ()
        tls = UpstreamTls("ISTIO_MUTUAL", identities=identities, auto=True, sni=istio_sni(port, subset, fqdn),
                          alpn=_mesh_alpn(protocol))
        return tls, tuple(kept), ()

    def _originate(self, tls: ClientTls, fqdn: str) -> tuple[UpstreamTls, tuple[Secret, ...]]:
        rule, where, settings, mode = tls.rule, tls.where, tls.settings, tls.mode
        if settings.get("credentialName"):
            raise ResourceError(rule, f"{where}.credentialName",
                                "Kubernetes secrets are not supported yet; give caCertificates (and clientCertificate "
                                "and privateKey for MUTUAL) as PEM file paths")
        skip = settings.get("insecureSkipVerify", False)
        if not isinstance(skip, bool):
            raise ResourceError(rule, f"{where}.insecureSkipVerify", f"expected true or false, got {skip!r}")
        names = _names(tls, "subjectAltNames")
        if skip:
            for key in ("caCertificates", "subjectAltNames"):
                if settings.get(key):
                    raise ResourceError(rule, f"{where}.{key}",
                                        "cannot be set when insecureSkipVerify is true (nothing is verified)")
        secrets: list[Secret] = []
        ca_secret = certificate = None
        if settings.get("caCertificates"):
            secrets.append(self._secret(("root", repr(settings["caCertificates"])), lambda: root_secret(
                rule, settings["caCertificates"], f"{where}.caCertificates", self._base)))
            ca_secret = secrets[-1].name
        if mode == "MUTUAL":
            for key in ("clientCertificate", "privateKey"):
                if not settings.get(key):
                    raise ResourceError(rule, f"{where}.{key}", "required for mode MUTUAL (a PEM file path)")
            cert_file, key_file = settings["clientCertificate"], settings["privateKey"]
            secrets.append(self._secret(("cert", repr(cert_file), repr(key_file)), lambda: certificate_secret(
                rule, cert_file, key_file, f"{where}.clientCertificate", f"{where}.privateKey", self._base)))
            certificate = secrets[-1].name
        else:
            for key in ("clientCertificate", "privateKey"):
                if settings.get(key):
                    warn_ignored(rule, f"{where}.{key}", "ignored with mode SIMPLE (no client certificate is sent)")
        sni = _text(tls, "sni") or ("" if "*" in fqdn else fqdn)
        upstream = UpstreamTls(str(mode), sni=sni, ca_secret=ca_secret, certificate=certificate,
                               subject_alt_names=names, insecure_skip_verify=skip)
        return upstream, tuple(secrets)

    def _secret(self, key: tuple[Any, ...], read: Any) -> Secret:
        found = self._secrets.get(key)
        if found is None:
            found = self._secrets[key] = read()
        return found


def _check_fields(tls: ClientTls) -> None:
    for key in tls.settings:
        if key not in _KNOWN:
            raise ResourceError(tls.rule, f"{tls.where}.{key}",
                                f"unknown field; expected one of {', '.join(sorted(_KNOWN))}")
    if tls.settings.get("caCrl"):
        warn_unsupported(tls.rule, f"{tls.where}.caCrl")


def _text(tls: ClientTls, key: str) -> str:
    value = tls.settings.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ResourceError(tls.rule, f"{tls.where}.{key}", f"expected a string, got {value!r}")
    return value


def _names(tls: ClientTls, key: str) -> tuple[str, ...]:
    value = tls.settings.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ResourceError(tls.rule, f"{tls.where}.{key}", "expected a list of names")
    return tuple(sorted(set(value)))


def _mesh_alpn(protocol: str) -> tuple[str, ...]:
    return MESH_ALPN_HTTP if protocol == "http" else MESH_ALPN_TCP
