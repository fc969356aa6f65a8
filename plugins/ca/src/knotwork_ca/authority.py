"""The `ca` certificate authority: signs workload CSRs into X.509 SVIDs.

The control plane builds it once (:func:`build`) and hands it to the
kernel's :class:`~knotwork.identity.CertificateService`, which has already
checked the CSR and authenticated its caller; :meth:`CertificateAuthority.sign`
only issues. Leaves look like Istio's: no subject, the SPIFFE ID as the only
URI SAN (critical), server and client auth, back-dated a little for clock
skew, never valid longer than the CA that signs them.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from knotwork.config import MeshError
from knotwork.records import ComponentContext

from .material import CLOCK_SKEW, SigningMaterial, load_cacerts, own_root, pem, signature_hash
from .settings import CASettings

__all__ = ["CertificateAuthority", "build"]

log = structlog.get_logger("knotwork.ca", plugin="ca")

_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_MIN_RSA_BITS = 2048


def build(ctx: ComponentContext) -> CertificateAuthority:
    """The component factory: the cacerts folder if the settings name one, else the root kept in
    ``<state dir>/ca`` (made on first start). Problems raise :class:`~knotwork.config.MeshError`."""
    settings = ctx.settings if isinstance(ctx.settings, CASettings) else CASettings()
    if settings.cacerts is not None:
        material = _cacerts(ctx, settings.cacerts)
    else:
        material = own_root(ctx.state_dir / "ca", ctx.mesh.trust_domain, settings.root_cert_ttl)
    ca = CertificateAuthority(material, settings)
    log.info("certificate authority ready", source=str(material.source), signer=material.cert.subject.rfc4514_string(),
             not_after=material.cert.not_valid_after_utc.isoformat(), workload_cert_ttl=settings.workload_cert_ttl,
             rotate_at=settings.rotate_at)
    return ca


def check(ctx: ComponentContext) -> None:
    """The component's check (``knotwork check``, ``knotwork up``): a ``cacerts`` folder must hold a usable CA.
    Reads only; the default root is made by the control plane on its first start."""
    settings = ctx.settings if isinstance(ctx.settings, CASettings) else CASettings()
    if settings.cacerts is not None:
        _cacerts(ctx, settings.cacerts)


def _cacerts(ctx: ComponentContext, folder: Path) -> SigningMaterial:
    try:
        return load_cacerts((ctx.mesh_dir / folder).absolute())
    except MeshError as exc:  # name the mesh file's field that pointed there
        raise MeshError([f"{ctx.mesh_dir / 'knotwork.yaml'}: ca.cacerts: {line.removeprefix('plugin/ca: ')}"
                         for line in exc.problems]) from None


def _check_key(public: Any) -> None:
    if isinstance(public, ec.EllipticCurvePublicKey):
        if not isinstance(public.curve, _CURVES):
            raise ValueError(f"expected an ECDSA key on P-256, P-384 or P-521, got curve {public.curve.name}")
    elif isinstance(public, rsa.RSAPublicKey):
        if public.key_size < _MIN_RSA_BITS:
            raise ValueError(f"expected an RSA key of at least {_MIN_RSA_BITS} bits, got {public.key_size}")
    elif not isinstance(public, ed25519.Ed25519PublicKey):
        raise ValueError(f"expected an ECDSA, RSA or Ed25519 key, got {type(public).__name__}")


def _whole(t: datetime.datetime, *, up: bool = False) -> datetime.datetime:
    """`t` rounded down (or `up`) to a whole second."""
    down = t.replace(microsecond=0)
    return down + datetime.timedelta(seconds=1) if up and down != t else down


class CertificateAuthority:
    """Implements :class:`knotwork.identity.CertificateAuthority` over one :class:`SigningMaterial`."""

    def __init__(self, material: SigningMaterial, settings: CASettings) -> None:
        self.material, self.settings = material, settings
        self.rotate_at = settings.rotate_at
        self._chain = [pem(c) for c in material.intermediates]
        self._bundle = "".join(pem(c) for c in material.roots)
        #: The last moment any certificate of the chain is valid: no leaf outlives it.
        self.not_after = min(c.not_valid_after_utc for c in (material.cert, *material.intermediates, *material.roots))
        self.not_before = material.cert.not_valid_before_utc
        signer_ext = material.cert.extensions
        try:
            ski = signer_ext.get_extension_for_oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER).value
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(material.cert.public_key())
        self.issued = 0

    def lifetime(self, ttl: float | None) -> float:
        """Seconds a leaf asked for with `ttl` lives (before the CA's own expiry cuts it)."""
        if ttl is None:
            return self.settings.workload_cert_ttl
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or math.isnan(ttl) or ttl <= 0:
            raise ValueError(f"ttl: expected a positive number of seconds, got {ttl!r}")
        return min(float(ttl), self.settings.max_workload_cert_ttl)

    def sign(self, csr: x509.CertificateSigningRequest, spiffe_id: str, *, ttl: float | None = None,
             dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = ()) -> list[str]:
        """Issue a leaf for `spiffe_id` on `csr`'s key; the chain (leaf, then intermediates) as PEM.

        `dns_names` and `ip_addresses` are extra SANs (the control plane's own
        certificate). Raises ValueError for a key too weak or of an unknown kind.
        """
        public = csr.public_key()
        _check_key(public)
        lifetime = self.lifetime(ttl)
        now = datetime.datetime.now(datetime.UTC)
        # X.509 times have whole seconds: round outwards, so a leaf lives at least `lifetime` from now.
        not_after = _whole(now + datetime.timedelta(seconds=lifetime), up=True)
        if not_after > self.not_after:
            if self.not_after <= now + datetime.timedelta(seconds=1):
                raise ValueError(f"the signing CA expired on {self.not_after:%Y-%m-%d %H:%M:%S} UTC")
            log.warning("certificate cut short: the signing CA expires first", identity=spiffe_id,
                        ca_not_after=self.not_after.isoformat())
            not_after = self.not_after
        # Back-dated for clocks a little behind, by at most a tenth of the lifetime: workloads renew at
        # `rotate_at` of not_before..not_after, so a minute on a 20 s certificate would make them renew at once.
        not_before = max(_whole(now - datetime.timedelta(seconds=min(CLOCK_SKEW, lifetime / 10))), self.not_before)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
        names += [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(self.material.cert.subject)
                .public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(not_before)
                .not_valid_after(not_after)
                .add_extension(x509.SubjectAlternativeName(names), critical=True)  # critical: the subject is empty
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                .add_extension(self._aki, critical=False)
                .sign(self.material.key, signature_hash(self.material.key)))
        self.issued += 1
        return [pem(cert), *self._chain]

    def trust_bundle(self) -> str:
        """The roots, as PEM (``root-cert.pem``'s certificates, or the self-signed root)."""
        return self._bundle
