"""Certificate files named in resources, read at compile time into Secrets.

Istio's file-mounted certificates: a Gateway server's ``serverCertificate`` /
``privateKey`` / ``caCertificates`` and a DestinationRule's
``clientCertificate`` / ``privateKey`` / ``caCertificates`` are file paths,
absolute or relative to the mesh directory. They are read when a proxy's
config is compiled, so a renewed file is served from the next push on. A file
that is missing, unreadable or not PEM of the right kind is a
:class:`~knotwork_routing.errors.ResourceError` naming the resource and field.
Secrets are named as Istio names file-mounted ones, ``file-cert:<cert>~<key>``
and ``file-root:<ca>`` (absolute paths), so one file pair is one Secret
whichever resources name it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from knotwork import Resource
from knotwork.proxyconfig import Secret

from .errors import ResourceError

__all__ = ["certificate_secret", "file_path", "root_secret"]


def file_path(value: Any, resource: Resource, field: str, base: Path) -> Path:
    """The path written at `field`, relative paths resolved against `base` (the mesh directory)."""
    if not isinstance(value, str) or not value.strip():
        raise ResourceError(resource, field, "expected a file path")
    path = Path(value.strip()).expanduser()
    return path if path.is_absolute() else base / path


def _read(path: Path, resource: Resource, field: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ResourceError(resource, field, f"cannot read {path}: {exc.strerror or exc}") from exc


def _certificates(path: Path, resource: Resource, field: str) -> tuple[str, list[x509.Certificate]]:
    data = _read(path, resource, field)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ResourceError(resource, field, f"{path} holds no PEM certificate ({exc})") from exc
    return data.decode("ascii", errors="replace"), certs


def certificate_secret(resource: Resource, cert: Any, key: Any, cert_field: str, key_field: str, base: Path) -> Secret:
    """A certificate chain and its private key (``file-cert:<cert>~<key>``); the key must match the leaf."""
    cert_path = file_path(cert, resource, cert_field, base)
    key_path = file_path(key, resource, key_field, base)
    chain_text, chain = _certificates(cert_path, resource, cert_field)
    key_data = _read(key_path, resource, key_field)
    try:
        private = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError) as exc:
        raise ResourceError(resource, key_field, f"{key_path} holds no unencrypted PEM private key ({exc})") from exc
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(serialization.Encoding.DER, public) != \
            private.public_key().public_bytes(serialization.Encoding.DER, public):
        raise ResourceError(resource, key_field, f"{key_path} is not the private key of the certificate in {cert_path}")
    return Secret(name=f"file-cert:{cert_path}~{key_path}", certificate_chain=chain_text,
                  private_key=key_data.decode("ascii", errors="replace"))


def root_secret(resource: Resource, value: Any, field: str, base: Path) -> Secret:
    """A trust bundle of PEM certificates (``file-root:<path>``)."""
    path = file_path(value, resource, field, base)
    text, _ = _certificates(path, resource, field)
    return Secret(name=f"file-root:{path}", trust_bundle=text)
