"""A Gateway server's ``tls``: certificates read from files into Secrets, one TLS chain per server.

Istio's file-mounted gateway certificates: ``serverCertificate``,
``privateKey`` and (``MUTUAL``) ``caCertificates`` are file paths, absolute
or relative to the mesh directory, read into Secrets when the gateway's config
is compiled (see :mod:`knotwork_routing.pemfiles`; a bad file is a
:class:`~knotwork_routing.errors.ResourceError` naming the Gateway and field,
and the proxy keeps its last good config).

Supported: ``mode`` ``SIMPLE`` and ``MUTUAL``, ``httpsRedirect``,
``minProtocolVersion`` / ``maxProtocolVersion`` (``TLS_AUTO``, ``TLSV1_2``,
``TLSV1_3``). Refused with a clear error: ``credentialName`` (Kubernetes
secrets), ``PASSTHROUGH``, ``AUTO_PASSTHROUGH``, ``ISTIO_MUTUAL``,
``OPTIONAL_MUTUAL``, TLS 1.0 and 1.1. Ignored with a warning:
``cipherSuites``, ``subjectAltNames``, ``verifyCertificateSpki``,
``verifyCertificateHash``, ``caCrl``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from knotwork import Resource
from knotwork.proxyconfig import Secret, ServerTls

from .errors import ResourceError, warn_unsupported
from .pemfiles import certificate_secret, root_secret

__all__ = ["TerminatedTls", "parse_server_tls"]

_VERSIONS = {"TLS_AUTO": None, "TLSV1_2": "1.2", "TLSV1_3": "1.3"}
_OLD_VERSIONS = frozenset({"TLSV1_0", "TLSV1_1"})
_IGNORED = ("cipherSuites", "subjectAltNames", "verifyCertificateSpki", "verifyCertificateHash", "caCrl")
_KNOWN = frozenset({"mode", "serverCertificate", "privateKey", "caCertificates", "credentialName", "credentialNames",
                    "httpsRedirect", "minProtocolVersion", "maxProtocolVersion", *_IGNORED})
_UNSUPPORTED_MODES = {
    "PASSTHROUGH": "TLS passthrough (SNI routing of encrypted traffic) is not supported yet",
    "AUTO_PASSTHROUGH": "AUTO_PASSTHROUGH is not supported (there is no multi-cluster east-west gateway)",
    "ISTIO_MUTUAL": "ISTIO_MUTUAL on a gateway server is not supported yet (mesh mTLS comes later)",
    "OPTIONAL_MUTUAL": "OPTIONAL_MUTUAL is not supported yet; use MUTUAL or SIMPLE",
}


@attrs.frozen
class TerminatedTls:
    """What one TLS-terminating server needs: its chain (without server names) and secrets."""

    chain: ServerTls
    secrets: tuple[Secret, ...]


def _server_secret(tls: Mapping[str, Any], gateway: Resource, where: str, base: Path) -> Secret:
    cert_field, key_field = f"{where}.serverCertificate", f"{where}.privateKey"
    if "serverCertificate" not in tls:
        raise ResourceError(gateway, cert_field, "required for mode SIMPLE and MUTUAL (a PEM file path)")
    if "privateKey" not in tls:
        raise ResourceError(gateway, key_field, "required for mode SIMPLE and MUTUAL (a PEM file path)")
    return certificate_secret(gateway, tls["serverCertificate"], tls["privateKey"], cert_field, key_field, base)


def _ca_secret(tls: Mapping[str, Any], gateway: Resource, where: str, base: Path) -> Secret:
    field = f"{where}.caCertificates"
    if "caCertificates" not in tls:
        raise ResourceError(gateway, field, "required for mode MUTUAL (a PEM file of the CAs client certificates chain to)")
    return root_secret(gateway, tls["caCertificates"], field, base)


def _version(tls: Mapping[str, Any], key: str, gateway: Resource, where: str) -> str | None:
    value = tls.get(key)
    if value is None:
        return None
    text = str(value).upper()
    if text in _OLD_VERSIONS:
        raise ResourceError(gateway, f"{where}.{key}", f"{value} is not supported (TLS 1.2 is the lowest version)")
    if text not in _VERSIONS:
        raise ResourceError(gateway, f"{where}.{key}", f"expected one of {', '.join(_VERSIONS)}, got {value!r}")
    return _VERSIONS[text]


def parse_server_tls(gateway: Resource, tls: Any, where: str, base: Path) -> TerminatedTls | None:
    """A server's ``tls`` (at `where`, e.g. ``spec.servers[0].tls``) when it terminates TLS, else None.

    Relative file paths resolve against `base` (the mesh directory). Raises
    ResourceError naming the field for anything that cannot be served.
    """
    if tls is None:
        return None
    if not isinstance(tls, Mapping):
        raise ResourceError(gateway, where, "expected a mapping")
    for key in tls:
        if key not in _KNOWN:
            raise ResourceError(gateway, f"{where}.{key}", "unknown field")
    for key in _IGNORED:
        if tls.get(key):
            warn_unsupported(gateway, f"{where}.{key}")
    mode = str(tls.get("mode") or "").upper()
    if not mode:
        if tls.get("credentialName") or tls.get("serverCertificate"):
            raise ResourceError(gateway, f"{where}.mode", "required when certificates are given (SIMPLE or MUTUAL)")
        return None  # e.g. only httpsRedirect on a plain HTTP server
    if mode in _UNSUPPORTED_MODES:
        raise ResourceError(gateway, f"{where}.mode", _UNSUPPORTED_MODES[mode])
    if mode not in ("SIMPLE", "MUTUAL"):
        raise ResourceError(gateway, f"{where}.mode", f"expected SIMPLE or MUTUAL, got {tls.get('mode')!r}")
    for key in ("credentialName", "credentialNames"):
        if tls.get(key):
            raise ResourceError(gateway, f"{where}.{key}",
                                "Kubernetes secrets are not supported yet; give serverCertificate and privateKey "
                                "(and caCertificates for MUTUAL) as PEM file paths")
    minimum = _version(tls, "minProtocolVersion", gateway, where)
    maximum = _version(tls, "maxProtocolVersion", gateway, where)
    if minimum and maximum and minimum > maximum:
        raise ResourceError(gateway, f"{where}.minProtocolVersion",
                            f"{tls['minProtocolVersion']} is above maxProtocolVersion {tls['maxProtocolVersion']}")
    secrets = [_server_secret(tls, gateway, where, base)]
    client_ca = None
    if mode == "MUTUAL":
        secrets.append(_ca_secret(tls, gateway, where, base))
        client_ca = secrets[-1].name
    chain = ServerTls(certificate=secrets[0].name, client_ca=client_ca, min_version=minimum, max_version=maximum)
    return TerminatedTls(chain=chain, secrets=tuple(secrets))
