"""The `ca` authority: its own root (made once, kept 0600), a cacerts folder, the leaves it signs."""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ca_helpers import ALICE, BOB, TD, ca_cert, context, intermediate_cacerts, key_pem, pem, write_cacerts
from knotwork.config import MeshError
from knotwork.identity import Svid, client_context, make_csr, make_key, peer_spiffe_id, server_context
from knotwork_ca.authority import build, check
from knotwork_ca.settings import DAY


def csr_for(spiffe_id: str, key=None) -> tuple[x509.CertificateSigningRequest, ec.EllipticCurvePrivateKey]:
    key = key or make_key()
    return x509.load_pem_x509_csr(make_csr(key, spiffe_id).encode()), key


def leaf_of(chain: list[str]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(chain[0].encode())


def lifetime(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).total_seconds()


# ── the self-signed root ─────────────────────────────────────────────────────


def test_the_root_is_made_once_with_private_files_and_reused(tmp_path: Path) -> None:
    old = os.umask(0)  # the modes must not depend on the umask
    try:
        first = build(context(tmp_path))
    finally:
        os.umask(old)
    folder = tmp_path / ".knotwork" / "ca"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "root-key.pem").stat().st_mode & 0o777 == 0o600
    assert (folder / "root-cert.pem").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in folder.iterdir()) == ["root-cert.pem", "root-key.pem"]  # no temporary file left
    root = x509.load_pem_x509_certificate((folder / "root-cert.pem").read_bytes())
    assert first.trust_bundle() == (folder / "root-cert.pem").read_text()
    assert root.subject == root.issuer and TD in root.subject.rfc4514_string()
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert 9.9 * 365 * DAY < lifetime(root) <= 10 * 365 * DAY
    key_before = (folder / "root-key.pem").read_bytes()

    again = build(context(tmp_path))  # a restart: the same root, nothing rewritten
    assert again.trust_bundle() == first.trust_bundle() and (folder / "root-key.pem").read_bytes() == key_before
    leaf = leaf_of(again.sign(csr_for(ALICE)[0], ALICE))
    leaf.verify_directly_issued_by(root)


def test_root_lifetime_is_configurable(tmp_path: Path) -> None:
    ca = build(context(tmp_path, root_cert_ttl=3600))
    root = x509.load_pem_x509_certificate(ca.trust_bundle().encode())
    assert 3500 < lifetime(root) <= 3600


@pytest.mark.parametrize(("damage", "file", "words"), [
    (lambda d: (d / "root-key.pem").write_text("garbage"), "root-key.pem", "PEM private key"),
    (lambda d: (d / "root-cert.pem").write_text("garbage"), "root-cert.pem", "PEM certificates"),
    (lambda d: (d / "root-key.pem").write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1()))), "root-key.pem",
     "private key of root-cert.pem"),
    (lambda d: (d / "root-cert.pem").unlink(), "root-cert.pem", "no such file"),
    (lambda d: (d / "root-key.pem").unlink(), "root-key.pem", "no such file"),
])
def test_a_damaged_root_is_a_clear_error_naming_the_file(tmp_path: Path, damage, file: str, words: str) -> None:
    build(context(tmp_path))
    folder = tmp_path / ".knotwork" / "ca"
    damage(folder)
    with pytest.raises(MeshError) as info:
        build(context(tmp_path))
    (line,) = info.value.problems
    assert line.startswith(f"plugin/ca: {folder / file}: ") and words in line, line


# ── the leaves ───────────────────────────────────────────────────────────────


def test_a_leaf_is_an_svid_like_istios(tmp_path: Path) -> None:
    ca = build(context(tmp_path))
    root = x509.load_pem_x509_certificate(ca.trust_bundle().encode())
    csr, key = csr_for(ALICE)
    chain = ca.sign(csr, ALICE)
    assert len(chain) == 1  # signed by the root itself: no intermediates
    leaf = leaf_of(chain)
    assert leaf.subject == x509.Name([]) and leaf.issuer == root.subject
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    ext = leaf.extensions
    san = ext.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(ALICE)]
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert not usage.value.key_cert_sign
    assert set(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    constraints = ext.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    assert ext.get_extension_for_class(x509.SubjectKeyIdentifier).value == \
        x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == \
        root.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER).value.digest
    now = datetime.datetime.now(datetime.UTC)
    assert 55 <= (now - leaf.not_valid_before_utc).total_seconds() <= 65  # back-dated a minute for clock skew
    assert DAY - 5 < lifetime(leaf) <= DAY + 1  # 24 h by default (+ rounding up to a whole second)
    assert leaf_of(ca.sign(csr, ALICE)).serial_number != leaf.serial_number  # random serials


def test_extra_names_for_the_control_planes_own_certificate(tmp_path: Path) -> None:
    import ipaddress

    ca = build(context(tmp_path))
    leaf = leaf_of(ca.sign(csr_for(ALICE)[0], ALICE, dns_names=("knotwork-control",), ip_addresses=("127.0.0.1", "::1")))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [ALICE]
    assert san.get_values_for_type(x509.DNSName) == ["knotwork-control"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]


def test_lifetimes_default_cut_at_the_maximum_and_at_the_cas_expiry(tmp_path: Path) -> None:
    ca = build(context(tmp_path, workload_cert_ttl=3600, max_workload_cert_ttl=7200))
    csr = csr_for(ALICE)[0]
    assert 3599 <= lifetime(leaf_of(ca.sign(csr, ALICE))) <= 3601  # at least what was asked
    assert 599 <= lifetime(leaf_of(ca.sign(csr, ALICE, ttl=600))) <= 601
    assert 7199 <= lifetime(leaf_of(ca.sign(csr, ALICE, ttl=10 * DAY))) <= 7201  # more than the maximum: cut
    assert 7199 <= lifetime(leaf_of(ca.sign(csr, ALICE, ttl=float("inf")))) <= 7201
    for bad in (0, -1, float("nan"), "60", True):
        with pytest.raises(ValueError, match="ttl"):
            ca.sign(csr, ALICE, ttl=bad)
    # an intermediate expiring in an hour: no leaf outlives it
    folder, _, inter = intermediate_cacerts(tmp_path / "cacerts", valid=(-60, 3600))
    short = build(context(tmp_path, cacerts=Path("cacerts")))
    leaf = leaf_of(short.sign(csr, ALICE))
    assert leaf.not_valid_after_utc == inter.not_valid_after_utc


def test_a_short_lifetime_is_back_dated_by_a_tenth_at_most(tmp_path: Path) -> None:
    """Workloads renew at rotate_at of not_before..not_after: a 20 s certificate back-dated a minute
    would be renewed at once, so the back-dating shrinks with the lifetime."""
    ca = build(context(tmp_path, workload_cert_ttl=20, rotate_at=0.8))
    chain = ca.sign(csr_for(ALICE)[0], ALICE)
    svid = Svid.build(chain, make_key(), ca.trust_bundle(), ca.rotate_at)
    assert 22 <= svid.not_after - svid.not_before <= 24  # 20 s + 2 s back, each end rounded outwards to a second
    now = datetime.datetime.now(datetime.UTC).timestamp()
    assert 13 <= svid.renew_at - now <= 17


def test_weak_or_unknown_keys_are_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes

    ca = build(context(tmp_path))
    for key, words in ((rsa.generate_private_key(65537, 1024), "at least 2048 bits"),
                       (ec.generate_private_key(ec.SECP192R1()), "P-256")):
        csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
               .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ALICE)]), critical=True)
               .sign(key, hashes.SHA256()))
        with pytest.raises(ValueError, match=words):
            ca.sign(csr, ALICE)
    rsa_ok = rsa.generate_private_key(65537, 2048)
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ALICE)]), critical=True)
           .sign(rsa_ok, hashes.SHA256()))
    assert ca.sign(csr, ALICE)


# ── a cacerts folder ─────────────────────────────────────────────────────────


def test_cacerts_intermediate_chain_and_bundle(tmp_path: Path) -> None:
    folder, root, inter = intermediate_cacerts(tmp_path / "cacerts")
    ca = build(context(tmp_path, cacerts=Path("cacerts")))  # relative to the mesh directory
    assert not (tmp_path / ".knotwork" / "ca").exists()  # no root of its own
    assert ca.trust_bundle() == pem(root).decode()
    csr, _ = csr_for(ALICE)
    chain = ca.sign(csr, ALICE)
    assert len(chain) == 2 and chain[1] == pem(inter).decode()  # leaf, intermediate (the root is in the bundle)
    leaf = leaf_of(chain)
    assert leaf.issuer == inter.subject
    # cryptography's path building (RFC 5280 client profile) verifies the leaf through the chain to the root
    verifier = PolicyBuilder().store(Store([root])).build_client_verifier()
    verified = verifier.verify(leaf, [inter])
    assert [c.subject for c in verified.chain] == [leaf.subject, inter.subject, root.subject]
    with pytest.raises(VerificationError):  # without the intermediate there is no path
        verifier.verify(leaf, [])


def test_cacerts_two_intermediates_and_a_root_signing_directly(tmp_path: Path) -> None:
    root = ca_cert("acme root")
    upper = ca_cert("acme upper", root)
    lower = ca_cert("acme lower", upper)
    write_cacerts(tmp_path / "deep", lower, [lower[0], upper[0], root[0]], [root[0]])
    chain = build(context(tmp_path, cacerts=Path("deep"))).sign(csr_for(ALICE)[0], ALICE)
    assert chain[1:] == [pem(lower[0]).decode(), pem(upper[0]).decode()]
    write_cacerts(tmp_path / "rootonly", root, [], [root[0]])  # the root signs itself: no cert-chain.pem needed
    ca = build(context(tmp_path, cacerts=tmp_path / "rootonly"))
    chain = ca.sign(csr_for(ALICE)[0], ALICE)
    assert len(chain) == 1 and ca.trust_bundle() == pem(root[0]).decode()


@pytest.mark.anyio
async def test_mtls_between_two_leaves_of_an_intermediate(tmp_path: Path) -> None:
    """A real TLS 1.3 handshake with the kernel's contexts: each side verifies the other through
    the intermediate the chain carries, to the root of the bundle alone."""
    intermediate_cacerts(tmp_path / "cacerts")
    ca = build(context(tmp_path, cacerts=Path("cacerts")))

    def svid(spiffe_id: str) -> Svid:
        csr, key = csr_for(spiffe_id)
        return Svid.build(ca.sign(csr, spiffe_id), key, ca.trust_bundle())

    alice, bob = svid(ALICE), svid(BOB)
    seen: dict[str, str | None] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["server saw"] = peer_spiffe_id(writer.get_extra_info("ssl_object"))
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context(alice))
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=client_context(bob)), 10)
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.version() == "TLSv1.3" and peer_spiffe_id(ssl_object) == ALICE
        writer.write(b"hello\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"hello\n"
        writer.close()
        assert seen["server saw"] == BOB
        # a client trusting another root is refused in the handshake
        other = intermediate_cacerts(tmp_path / "other")[1]
        with pytest.raises(ssl.SSLError):
            await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(bob, pem(other).decode())), 10)
    finally:
        server.close()
        await server.wait_closed()


def _no_key_match(d: Path) -> None:
    (d / "ca-key.pem").write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))


def _not_a_ca(d: Path) -> None:
    root = ca_cert("r")
    leafish = ca_cert("not a ca", root, ca=False)
    write_cacerts(d, leafish, [leafish[0], root[0]], [root[0]])


def _foreign_root(d: Path) -> None:
    (d / "root-cert.pem").write_bytes(pem(ca_cert("someone else's root")[0]))


def _broken_chain(d: Path) -> None:
    root = ca_cert("r")
    inter = ca_cert("i", root)
    write_cacerts(d, inter, [inter[0], ca_cert("stranger")[0], root[0]], [root[0]])


def _expired(d: Path) -> None:
    root = ca_cert("r")
    inter = ca_cert("i", root, valid=(-7200, -60))
    write_cacerts(d, inter, [inter[0], root[0]], [root[0]])


def _encrypted_key(d: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    root = ca_cert("r", key=key)
    write_cacerts(d, root, [], [root[0]])
    (d / "ca-key.pem").write_bytes(key_pem(key, b"secret"))


@pytest.mark.parametrize(("damage", "file", "words"), [
    (lambda d: (d / "ca-key.pem").unlink(), "", "ca-key.pem in the cacerts folder"),
    (lambda d: (d / "root-cert.pem").unlink(), "", "root-cert.pem in the cacerts folder"),
    (lambda d: (d / "cert-chain.pem").unlink(), "cert-chain.pem", "chain from ca-cert.pem"),
    (lambda d: (d / "ca-cert.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
     "ca-cert.pem", "PEM certificates"),
    (_no_key_match, "ca-key.pem", "private key of ca-cert.pem"),
    (_encrypted_key, "ca-key.pem", "unencrypted"),
    (_not_a_ca, "ca-cert.pem", "CA certificate"),
    (_foreign_root, "root-cert.pem", "a root that signed"),
    (_broken_chain, "cert-chain.pem", "signed by the next one"),
    (_expired, "ca-cert.pem", "expired"),
    (lambda d: __import__("shutil").rmtree(d), "", "no such folder"),
], ids=["no-key", "no-root", "no-chain", "bad-pem", "key-mismatch", "encrypted-key", "not-a-ca", "foreign-root",
        "broken-chain", "expired", "no-folder"])
def test_a_bad_cacerts_folder_is_a_clear_error_naming_the_file(tmp_path: Path, damage, file: str, words: str) -> None:
    folder = intermediate_cacerts(tmp_path / "cacerts")[0]
    damage(folder)
    for step in (check, build):  # `knotwork check` and `up` see it before the control plane would
        with pytest.raises(MeshError) as info:
            step(context(tmp_path, cacerts=Path("cacerts")))
        (line,) = info.value.problems
        where = folder / file if file else folder
        assert line.startswith(f"{tmp_path / 'knotwork.yaml'}: ca.cacerts: {where}: ") and words in line, line
