"""Where the CA's signing key comes from: a self-signed root it keeps, or a user's cacerts folder.

Both end as a :class:`SigningMaterial`: the certificate and key that sign,
the intermediates between it and the root (sent after each leaf) and the
roots workloads trust. Every problem is a :class:`~knotwork.config.MeshError`
line ``plugin/ca: FILE: expected X, got Y`` naming the file, never a
traceback: the control plane stops before serving anything.
"""

from __future__ import annotations

import datetime
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import NameOID

from knotwork.config import MeshError

__all__ = [
    "CA_CERT", "CA_KEY", "CERT_CHAIN", "ROOT_CERT", "ROOT_KEY", "SigningMaterial", "load_cacerts", "own_root",
    "pem", "signature_hash",
]

log = structlog.get_logger("knotwork.ca", plugin="ca")

#: The self-signed root, in ``<state dir>/ca/``.
ROOT_KEY = "root-key.pem"
ROOT_CERT = "root-cert.pem"
#: Istio's plug-in CA layout (``cacerts``): the signing certificate and key, the roots, the chain up to them.
CA_CERT, CA_KEY, CERT_CHAIN = "ca-cert.pem", "ca-key.pem", "cert-chain.pem"
#: Seconds certificates are back-dated by, against clocks a little behind ours.
CLOCK_SKEW = 60.0


@attrs.frozen
class SigningMaterial:
    """The signing certificate and key, the intermediates above it (ending below a root), and the roots."""

    cert: x509.Certificate
    key: Any = attrs.field(repr=False)
    intermediates: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]
    source: Path  # the folder it was read from


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def signature_hash(key: Any) -> hashes.HashAlgorithm | None:
    """The digest to sign with `key`: none for Ed25519/Ed448, SHA-256 otherwise."""
    return None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()


def _fail(path: Path, problem: str) -> MeshError:
    return MeshError([f"plugin/ca: {path}: {problem}"])


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# ── reading and checking PEM files ──────────────────────────────────────────


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _fail(path, f"expected {what}, got no such file") from None
    except OSError as exc:
        raise _fail(path, f"expected a readable file with {what}, got {exc.strerror or exc}") from None


def _certificates(path: Path) -> list[x509.Certificate]:
    data = _read(path, "PEM certificates")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise _fail(path, "expected PEM certificates (-----BEGIN CERTIFICATE-----), got none that parse")
    return certs


def _private_key(path: Path) -> Any:
    data = _read(path, "a PEM private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise _fail(path, "expected an unencrypted PEM private key, got an encrypted one") from None
    except (ValueError, UnsupportedAlgorithm):
        raise _fail(path, "expected a PEM private key (-----BEGIN PRIVATE KEY-----), got none that parses") from None
    return key


def _public(key_or_cert: Any) -> bytes:
    public = key_or_cert.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(no subject)"


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _check_signer(cert: x509.Certificate, key: Any, cert_path: Path, key_path: Path) -> None:
    if _public(cert) != _public(key):
        raise _fail(key_path, f"expected the private key of {cert_path.name}, got another key")
    if not _is_ca(cert):
        raise _fail(cert_path, "expected a CA certificate (basic constraints CA:TRUE, key usage keyCertSign), "
                               f"got one that may not sign certificates ({_name(cert)})")
    if cert.not_valid_after_utc <= _utc_now():
        raise _fail(cert_path, f"expected a certificate still valid, got one that expired on "
                               f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")


# ── the self-signed root ─────────────────────────────────────────────────────


def _new_root(trust_domain: str, ttl: float) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                      x509.NameAttribute(NameOID.COMMON_NAME, "Knotwork root CA")])
    now = _utc_now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(seconds=CLOCK_SKEW))
            .not_valid_after(now + datetime.timedelta(seconds=ttl))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` atomically, created with `mode` (never wider, whatever the umask)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def own_root(folder: Path, trust_domain: str, ttl: float) -> SigningMaterial:
    """The root kept in `folder` (``root-cert.pem`` 0644, ``root-key.pem`` 0600, the folder 0700),
    made on first use and read back on every later start."""
    cert_path, key_path = folder / ROOT_CERT, folder / ROOT_KEY
    have_cert, have_key = cert_path.exists(), key_path.exists()
    if not have_cert and not have_key:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
            cert, key = _new_root(trust_domain, ttl)
            _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), 0o600)
            _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        except OSError as exc:
            raise _fail(folder, f"expected a folder the CA may keep its root in, got {exc.strerror or exc}") from None
        log.info("created a self-signed root CA", folder=str(folder), subject=cert.subject.rfc4514_string(),
                 not_after=cert.not_valid_after_utc.isoformat())
    elif not have_cert or not have_key:
        missing, present = (cert_path, key_path) if not have_cert else (key_path, cert_path)
        raise _fail(missing, f"expected it next to {present.name}, got no such file; restore it, or remove "
                             f"{folder} to create a new root (every workload certificate then changes)")
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("the root key is readable by others; chmod 600 it", file=str(key_path), mode=oct(mode))
    certs, key = _certificates(cert_path), _private_key(key_path)
    if len(certs) != 1:
        raise _fail(cert_path, f"expected one certificate, got {len(certs)}")
    _check_signer(certs[0], key, cert_path, key_path)
    return SigningMaterial(certs[0], key, (), (certs[0],), folder)


# ── a user's cacerts folder ──────────────────────────────────────────────────


def _chain_above(cert: x509.Certificate, chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate],
                 chain_path: Path) -> tuple[x509.Certificate, ...]:
    """The intermediates above `cert`, from `chain` (Istio's cert-chain.pem: ca-cert, intermediates,
    maybe the root), checked to lead to one of `roots`."""
    root_der = {r.public_bytes(serialization.Encoding.DER) for r in roots}
    rest = [c for c in chain if c.public_bytes(serialization.Encoding.DER) not in root_der]
    if rest and rest[0] == cert:
        rest = rest[1:]
    above: list[x509.Certificate] = []
    current = cert
    for parent in rest:
        if not _issued_by(current, parent):
            raise _fail(chain_path, f"expected each certificate to be signed by the next one, got {_name(current)} "
                                    f"not signed by {_name(parent)}")
        if not _is_ca(parent):
            raise _fail(chain_path, f"expected CA certificates, got {_name(parent)} that is none")
        above.append(parent)
        current = parent
    if not any(current == r or _issued_by(current, r) for r in roots):
        raise _fail(chain_path.with_name(ROOT_CERT),
                    f"expected a root that signed {_name(current)}, got roots {', '.join(_name(r) for r in roots)}")
    return tuple(above)


def load_cacerts(folder: Path) -> SigningMaterial:
    """A user's root or intermediate: ``ca-cert.pem`` and ``ca-key.pem`` sign, ``root-cert.pem`` is the
    trust bundle, ``cert-chain.pem`` (optional when ca-cert is the root) the chain from ca-cert up to it."""
    if not folder.is_dir():
        raise _fail(folder, f"expected a cacerts folder ({CA_CERT}, {CA_KEY}, {ROOT_CERT}, {CERT_CHAIN}), "
                            f"got {'a file' if folder.exists() else 'no such folder'}")
    cert_path, key_path, root_path, chain_path = (folder / n for n in (CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN))
    missing = [p.name for p in (cert_path, key_path, root_path) if not p.exists()]
    if missing:
        raise _fail(folder, f"expected {', '.join(missing)} in the cacerts folder, got no such file")
    certs, key, roots = _certificates(cert_path), _private_key(key_path), _certificates(root_path)
    if len(certs) != 1:
        raise _fail(cert_path, f"expected one certificate (the chain goes in {CERT_CHAIN}), got {len(certs)}")
    cert = certs[0]
    _check_signer(cert, key, cert_path, key_path)
    for root in roots:
        if not _is_ca(root) or not _issued_by(root, root):
            raise _fail(root_path, f"expected self-signed CA certificates, got {_name(root)}")
    if chain_path.exists():
        intermediates = _chain_above(cert, _certificates(chain_path), roots, chain_path)
    elif cert in roots:
        intermediates = ()
    else:
        raise _fail(chain_path, f"expected the chain from {CA_CERT} up to {ROOT_CERT}, got no such file "
                                f"({CA_CERT} is not one of the roots)")
    if cert not in roots:
        intermediates = (cert, *intermediates)
    now = _utc_now()
    for path, group in ((chain_path, intermediates), (root_path, roots)):
        for c in group:
            if c.not_valid_after_utc <= now:
                raise _fail(path, f"expected certificates still valid, got {_name(c)} "
                                  f"that expired on {c.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    return SigningMaterial(cert, key, intermediates, tuple(roots), folder)
