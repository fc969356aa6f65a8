"""Test material for the `ca` plugin's tests: CA certificates made with cryptography, cacerts folders."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from knotwork.model import MeshSettings
from knotwork.records import ComponentContext
from knotwork_ca.settings import CASettings

TD = "cluster.local"
ALICE = f"spiffe://{TD}/ns/default/sa/alice"
BOB = f"spiffe://{TD}/ns/default/sa/bob"


def context(tmp_path: Path, settings: CASettings | None = None, **fields: Any) -> ComponentContext:
    """The context the control plane gives the CA: mesh dir `tmp_path`, state dir `tmp_path/.knotwork`."""
    return ComponentContext(mesh=MeshSettings(), settings=settings or CASettings(**fields), mesh_dir=tmp_path,
                            state_dir=tmp_path / ".knotwork")


def ca_cert(name: str, issuer: tuple[x509.Certificate, Any] | None = None, *, valid: tuple[float, float] = (-60, 86400 * 30),
            ca: bool = True, key: Any = None) -> tuple[x509.Certificate, Any]:
    """A CA certificate named `name`, self-signed or signed by `issuer` (cert, key); returns (cert, key)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme"), x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer or (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now + datetime.timedelta(seconds=valid[0]))
               .not_valid_after(now + datetime.timedelta(seconds=valid[1]))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(True, False, False, False, False, ca, ca, False, False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    return builder.sign(issuer_key, hashes.SHA256()), key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Any, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def write_cacerts(folder: Path, signer: tuple[x509.Certificate, Any], chain: list[x509.Certificate],
                  roots: list[x509.Certificate]) -> Path:
    """Istio's plug-in CA layout: ca-cert.pem, ca-key.pem, cert-chain.pem (`chain`, if any), root-cert.pem."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca-cert.pem").write_bytes(pem(signer[0]))
    (folder / "ca-key.pem").write_bytes(key_pem(signer[1]))
    if chain:
        (folder / "cert-chain.pem").write_bytes(b"".join(pem(c) for c in chain))
    (folder / "root-cert.pem").write_bytes(b"".join(pem(c) for c in roots))
    return folder


def intermediate_cacerts(folder: Path, *, valid: tuple[float, float] = (-60, 86400 * 30),
                         ) -> tuple[Path, x509.Certificate, x509.Certificate]:
    """A root and an intermediate it signed, as a cacerts folder like Istio's samples/certs
    (cert-chain.pem = intermediate + root). Returns (folder, root, intermediate)."""
    root = ca_cert("acme root")
    inter = ca_cert("acme intermediate", root, valid=valid)
    return write_cacerts(folder, inter, [inter[0], root[0]], [root[0]]), root[0], inter[0]
