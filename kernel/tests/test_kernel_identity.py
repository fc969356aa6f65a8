"""knotwork.identity: the certificate service and a workload's identity, over real TLS and grpclib on loopback."""

from __future__ import annotations

import ssl
from pathlib import Path

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from knotwork.identity import (
    BUNDLE_FILE,
    CertificateServer,
    Svid,
    WorkloadIdentity,
    make_csr,
    make_key,
)
from knotwork.model import MeshSettings
from knotwork.testing import OneTimeCredentials, RootAuthority, make_ca, make_svid, sign_request

TD = "cluster.local"
ALICE = f"spiffe://{TD}/ns/default/sa/alice"
BOB = f"spiffe://{TD}/ns/default/sa/bob"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_ca(tmp_path / "root")


async def _serve(ca: RootAuthority, tokens: OneTimeCredentials, tmp: Path, task_status=anyio.TASK_STATUS_IGNORED) -> None:
    server = CertificateServer(ca, tokens, MeshSettings(), tmp, "127.0.0.1:0")
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        assert (tmp / BUNDLE_FILE).read_text() == ca.trust_bundle()
        task_status.started(("127.0.0.1:%d" % server.address[1], server.service))


@pytest.mark.anyio
async def test_first_certificate_then_renewals_over_mtls(root: Path, tmp_path: Path) -> None:
    ca, tokens = RootAuthority(root, ttl=2), OneTimeCredentials(t1=("node-a", ALICE))
    async with anyio.create_task_group() as tg:
        address, service = await tg.start(_serve, ca, tokens, tmp_path)
        wi = WorkloadIdentity(ca_address=address, spiffe_id=ALICE, node_id="node-a",
                              bundle_file=tmp_path / BUNDLE_FILE, credential="t1", platform="test")
        seen: list[int] = []
        wi.on_change(lambda svid: seen.append(svid.serial))
        await tg.start(wi.run)
        first = wi.svid
        assert first is not None and first.spiffe_id == ALICE and "credential" not in repr(wi.__dict__.get("_credential"))
        with anyio.fail_after(10):
            while wi.renewals < 2:  # renewed at half of a 2 s lifetime, authenticated by the SVID it holds
                await wi.wait_change()
        assert len(set(seen)) >= 3 and wi.svid.serial != first.serial
        assert tokens.used == {"t1"} and service.signed >= 3
        assert wi.status()["identity"] == ALICE and wi.status()["serial"] == format(wi.svid.serial, "x")
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_refusals_are_clear_and_the_service_keeps_serving(root: Path, tmp_path: Path) -> None:
    ca, tokens = RootAuthority(root), OneTimeCredentials(t1=("node-a", ALICE), t2=("node-b", BOB))
    async with anyio.create_task_group() as tg:
        address, service = await tg.start(_serve, ca, tokens, tmp_path)
        bundle = ca.trust_bundle()

        async def refused(request: dict, svid: Svid | None = None) -> GRPCError:
            with pytest.raises(GRPCError) as info:
                await sign_request(address, bundle, request, svid)
            return info.value

        key = make_key()
        # a credential proving bob, a CSR asking for alice
        err = await refused({"csr": make_csr(key, ALICE), "node": "node-b", "platform": "test", "credential": "t2"})
        assert err.status is Status.PERMISSION_DENIED and "proves" in err.message and BOB in err.message
        ok = await sign_request(address, bundle, {"csr": make_csr(key, ALICE), "node": "node-a", "platform": "test",
                                           "credential": "t1"})
        assert ok["certificate_chain"] and ok["trust_bundle"] == bundle
        err = await refused({"csr": make_csr(key, ALICE), "node": "node-a", "platform": "test", "credential": "t1"})
        assert err.status is Status.PERMISSION_DENIED and "already used" in err.message
        err = await refused({"csr": make_csr(key, ALICE), "node": "node-a", "platform": "test"})
        assert err.status is Status.UNAUTHENTICATED
        for garbage, words in (("not a csr", "not a valid PEM"), ("", "required"),
                               (make_csr(key, "spiffe://other.domain/ns/default/sa/alice"), "trust domain"),
                               (make_csr(key, "https://example.test/"), "exactly one spiffe")):
            err = await refused({"csr": garbage, "node": "node-a", "platform": "test", "credential": "t9"})
            assert words in err.message, err.message
        # a CSR whose signature does not verify: another key's signature over the same request body
        csr = x509.load_pem_x509_csr(make_csr(key, ALICE).encode())
        forged = csr.public_bytes(serialization.Encoding.DER)
        forged = forged[:-8] + bytes(b ^ 0xFF for b in forged[-8:])
        pem = "-----BEGIN CERTIFICATE REQUEST-----\n" + __import__("base64").encodebytes(forged).decode() + \
            "-----END CERTIFICATE REQUEST-----\n"
        err = await refused({"csr": pem, "node": "node-a", "platform": "test", "credential": "t9"})
        assert err.status is Status.INVALID_ARGUMENT
        # renewal over mTLS: allowed for the peer's own identity only
        alice = make_svid(root, ALICE)
        assert (await sign_request(address, bundle, {"csr": make_csr(key, ALICE)}, alice))["certificate_chain"]
        err = await refused({"csr": make_csr(key, BOB)}, alice)
        assert err.status is Status.PERMISSION_DENIED and "authenticated as" in err.message
        assert service.refused >= 8 and service.signed == 2
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_foreign_or_self_signed_client_certificate_is_refused_in_the_handshake(root: Path, tmp_path: Path) -> None:
    ca, tokens = RootAuthority(root), OneTimeCredentials()
    async with anyio.create_task_group() as tg:
        address, _ = await tg.start(_serve, ca, tokens, tmp_path)
        for svid in (make_svid(None, ALICE), make_svid(make_ca(tmp_path / "other"), ALICE)):
            with pytest.raises((ssl.SSLError, ConnectionError, StreamTerminatedError)):
                await sign_request(address, ca.trust_bundle(), {"csr": make_csr(make_key(), ALICE)}, svid)
        tg.cancel_scope.cancel()


def test_ec_keys_and_csrs_name_only_the_claimed_identity() -> None:
    key = make_key()
    csr = x509.load_pem_x509_csr(make_csr(key, ALICE).encode())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [ALICE]
