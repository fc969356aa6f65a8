"""The `ca` authority behind the kernel's CertificateService, over real grpclib TLS on 127.0.0.1.

The service presents a certificate the CA issued through an intermediate
(as the control plane does: its own SVID with IP SAN 127.0.0.1), so every
handshake here verifies a chain leaf → intermediate → root.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.verification import PolicyBuilder, Store
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ca_helpers import ALICE, BOB, TD, context, intermediate_cacerts
from knotwork.identity import BUNDLE_FILE, CertificateServer, Svid, WorkloadIdentity, make_csr, make_key
from knotwork.model import MeshSettings
from knotwork.testing import OneTimeCredentials, make_ca, make_svid, sign_request
from knotwork_ca.authority import CertificateAuthority, build


def authority(tmp_path: Path, **settings) -> tuple[CertificateAuthority, x509.Certificate]:
    _, root, _ = intermediate_cacerts(tmp_path / "cacerts")
    return build(context(tmp_path, cacerts=Path("cacerts"), **settings)), root


async def serve(ca: CertificateAuthority, tokens: OneTimeCredentials, tmp: Path, *,
                task_status=anyio.TASK_STATUS_IGNORED) -> None:
    """The certificate service as the control plane runs it; started with (address, service)."""
    server = CertificateServer(ca, tokens, MeshSettings(trust_domain=TD), tmp, "127.0.0.1:0")
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        task_status.started((f"127.0.0.1:{server.address[1]}", server.service))


def weak_csr() -> str:
    """A CSR for alice on a 1024-bit RSA key."""
    return (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ALICE)]), critical=True)
            .sign(rsa.generate_private_key(65537, 1024), hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def chain_of(reply: dict) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(c.encode()) for c in reply["certificate_chain"]]


@pytest.mark.anyio
async def test_first_certificate_by_credential_then_renewals_over_mtls(tmp_path: Path) -> None:
    ca, root = authority(tmp_path, workload_cert_ttl=3, rotate_at=0.5)
    tokens = OneTimeCredentials(t1=("node-a", ALICE))
    async with anyio.create_task_group() as tg:
        address, service = await tg.start(serve, ca, tokens, tmp_path)
        wi = WorkloadIdentity(ca_address=address, spiffe_id=ALICE, node_id="node-a",
                              bundle_file=tmp_path / BUNDLE_FILE, credential="t1", platform="test")
        with anyio.fail_after(10):
            await tg.start(wi.run)
        first = wi.svid
        assert first is not None and first.spiffe_id == ALICE and first.rotate_at == 0.5
        status = wi.status()
        assert [c["spiffe_ids"] for c in status["chain"]] == [[ALICE], [], []]  # leaf, intermediate, root
        assert status["chain"][-1]["subject"] == root.subject.rfc4514_string()
        with anyio.fail_after(10):
            while wi.renewals < 2:  # at half of a 3 s lifetime, authenticated by the SVID it holds: no credential
                await wi.wait_change()
        assert wi.svid.serial != first.serial and wi.last_error is None
        assert tokens.used == {"t1"} and service.signed >= 3 and service.refused == 0
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_refusals_are_clear_and_the_service_keeps_serving(tmp_path: Path) -> None:
    ca, root = authority(tmp_path, max_workload_cert_ttl=3600)
    tokens = OneTimeCredentials(t1=("node-a", ALICE), t2=("node-b", BOB), t3=("node-a", ALICE))
    async with anyio.create_task_group() as tg:
        address, service = await tg.start(serve, ca, tokens, tmp_path)
        bundle = ca.trust_bundle()

        async def refused(request: dict, svid: Svid | None = None) -> GRPCError:
            with pytest.raises(GRPCError) as info:
                await sign_request(address, bundle, request, svid)
            return info.value

        key = make_key()
        # a CSR for another identity than the credential proves
        err = await refused({"csr": make_csr(key, ALICE), "node": "node-b", "platform": "test", "credential": "t2"})
        assert err.status is Status.PERMISSION_DENIED and f"the credential proves {BOB}" in err.message
        # a good one: leaf and intermediate, verifiable to the root; a requested lifetime above the maximum is cut
        reply = await sign_request(address, bundle, {"csr": make_csr(key, ALICE), "node": "node-a", "platform": "test",
                                             "credential": "t1", "ttl": 86400})
        leaf, inter = chain_of(reply)
        assert reply["trust_bundle"] == bundle and reply["rotate_at"] == 0.8
        PolicyBuilder().store(Store([root])).build_client_verifier().verify(leaf, [inter])
        assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() <= 3600 + 360
        # the credential again
        err = await refused({"csr": make_csr(key, ALICE), "node": "node-a", "platform": "test", "credential": "t1"})
        assert err.status is Status.PERMISSION_DENIED and "already used" in err.message
        # garbage CSRs
        no_san = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
                  .public_bytes(serialization.Encoding.PEM).decode())
        two = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
               .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ALICE),
                                                           x509.UniformResourceIdentifier(BOB)]), critical=True)
               .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
        der = x509.load_pem_x509_csr(make_csr(key, ALICE).encode()).public_bytes(serialization.Encoding.DER)
        forged = der[:-8] + bytes(b ^ 0xFF for b in der[-8:])  # the signature no longer verifies
        bad_signature = x509.load_der_x509_csr(forged).public_bytes(serialization.Encoding.PEM).decode()
        for csr, status, words in (
            ("not a csr", Status.INVALID_ARGUMENT, "not a valid PEM"),
            (bad_signature, Status.INVALID_ARGUMENT, "signature does not verify"),
            (no_san, Status.INVALID_ARGUMENT, "exactly one spiffe:// URI SAN, has 0"),
            (two, Status.INVALID_ARGUMENT, "exactly one spiffe:// URI SAN, has 2"),
            (make_csr(key, "spiffe://evil.example/ns/default/sa/alice"), Status.PERMISSION_DENIED, "trust domain"),
        ):
            err = await refused({"csr": csr, "node": "node-a", "platform": "test", "credential": "t3"})
            assert err.status is status and words in err.message, err.message
        # a key too weak to sign: refused, and nothing crashes (the status: see the test below)
        err = await refused({"csr": weak_csr(), "node": "node-a", "platform": "test", "credential": "t3"})
        assert err.status in (Status.INVALID_ARGUMENT, Status.UNKNOWN)
        # renewal over mTLS with a current SVID: no credential needed, for the peer's own identity only
        alice = Svid.build(reply["certificate_chain"], key, reply["trust_bundle"])
        renewed = await sign_request(address, bundle, {"csr": make_csr(make_key(), ALICE)}, alice)
        assert chain_of(renewed)[0].serial_number != leaf.serial_number
        err = await refused({"csr": make_csr(make_key(), BOB)}, alice)
        assert err.status is Status.PERMISSION_DENIED and f"authenticated as {ALICE}" in err.message
        # a client certificate of another CA never gets past the handshake
        with pytest.raises((ssl.SSLError, ConnectionError, StreamTerminatedError)):
            await sign_request(address, bundle, {"csr": make_csr(make_key(), ALICE)}, make_svid(make_ca(tmp_path / "x"), ALICE))
        # still serving
        assert (await sign_request(address, bundle, {"csr": make_csr(make_key(), ALICE)}, alice))["certificate_chain"]
        assert service.refused >= 8
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_key_the_ca_refuses_is_an_invalid_argument_naming_why(tmp_path: Path) -> None:
    ca, _ = authority(tmp_path)
    async with anyio.create_task_group() as tg:
        address, _ = await tg.start(serve, ca, OneTimeCredentials(t1=("node-a", ALICE)), tmp_path)
        with pytest.raises(GRPCError) as info:
            await sign_request(address, ca.trust_bundle(), {"csr": weak_csr(), "node": "node-a", "platform": "test",
                                                    "credential": "t1"})
        tg.cancel_scope.cancel()
    assert info.value.status is Status.INVALID_ARGUMENT and "2048 bits" in info.value.message
