"""Identity helpers for the envoy engine's tests (no tests here): a short-lived
test CA behind the kernel's real certificate service, and mTLS clients."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from grpclib.server import Server
from knotwork.identity import CertificateService, Svid, client_context, make_csr, make_key, server_context
from knotwork.model import Identity
from knotwork.records import AttestationClaim
from knotwork.testing import RootAuthority
from knotwork.wire import JSONCodec, JsonService, serving

from envoy_helpers import Response, read_response

TRUST_DOMAIN = "cluster.local"
CONTROL_ID = f"spiffe://{TRUST_DOMAIN}/ns/knotwork-system/sa/knotwork-control"


def spiffe(sa: str, ns: str = "default", td: str = TRUST_DOMAIN) -> str:
    return f"spiffe://{td}/ns/{ns}/sa/{sa}"


class MeshCA(RootAuthority):
    """The kernel's test CA over a :func:`knotwork.testing.make_ca` root, remembering every serial it issued."""

    def __init__(self, ca: Path, ttl: float = 3600.0, rotate_at: float = 0.8) -> None:
        super().__init__(ca, ttl, rotate_at)
        self.issued: list[int] = []

    def sign(self, csr: Any, spiffe_id: str, **kw: Any) -> list[str]:
        chain = super().sign(csr, spiffe_id, **kw)
        self.issued.append(x509.load_pem_x509_certificate(chain[0].encode()).serial_number)
        return chain

    def control_svid(self) -> Svid:
        """The control plane's SVID: its SPIFFE ID and IP SAN 127.0.0.1, valid for an hour."""
        key = make_key()
        csr = x509.load_pem_x509_csr(make_csr(key, CONTROL_ID).encode())
        return Svid.build(self.sign(csr, CONTROL_ID, ttl=3600, ip_addresses=("127.0.0.1",)), key, self.trust_bundle())


def attest(claim: AttestationClaim) -> Identity:
    """Tests' platform: the credential of node N is ``token-N``."""
    if claim.credential != f"token-{claim.node_id}":
        raise ValueError("unknown credential")
    return Identity.parse(claim.identity)


@contextlib.asynccontextmanager
async def certificate_service(ca: MeshCA, control: Svid) -> AsyncIterator[str]:
    """The kernel's certificate service on loopback (TLS, client certificate optional); yields HOST:PORT."""
    service = CertificateService(ca, attest, TRUST_DOMAIN)
    server = Server([JsonService(service.handlers())], codec=JSONCodec())
    ctx = server_context(control, alpn=("h2",), require_client=False, min_version=ssl.TLSVersion.TLSv1_2)
    async with serving(server, listen=("127.0.0.1", 0), ssl=ctx) as bound:
        yield f"{bound[0]}:{bound[1]}"


def control_tls(control: Svid) -> ssl.SSLContext:
    """The xDS server's context, as the control plane builds it."""
    return server_context(control, alpn=("h2",), require_client=True, min_version=ssl.TLSVersion.TLSv1_2)


class TlsClient:
    """One mTLS (or plain) HTTP/1.1 keep-alive connection to an Envoy listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, svid: Svid | None, bundle: str, alpn: Sequence[str] = ()) -> TlsClient:
        ctx = client_context(svid, bundle, alpn=alpn) if svid is not None or bundle else None
        return cls(*await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 5))

    @property
    def peer_serial(self) -> int:
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number

    async def get(self, path: str = "/", headers: dict[str, str] | None = None) -> Response:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.writer.write(f"GET {path} HTTP/1.1\r\nhost: svc\r\n{extra}\r\n".encode())
        return await asyncio.wait_for(read_response(self.reader), 5)

    async def aclose(self) -> None:
        self.writer.close()


async def mtls_get(port: int, svid: Svid | None, bundle: str, **kw: Any) -> Response:
    """One request over a fresh (m)TLS connection; raises on a refused handshake or a closed connection."""
    client = await TlsClient.open(port, svid, bundle)
    try:
        return await client.get(**kw)
    finally:
        await client.aclose()
