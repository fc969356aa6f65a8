"""Helpers for the mesh mTLS tests (no tests here): a small CA and a certificate service, identities,
an upstream that speaks mesh mTLS, and an mTLS HTTP client. Everything is real TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
from cryptography import x509
from knotwork.identity import BUNDLE_FILE, CertificateServer, WorkloadIdentity, client_context, server_context, spiffe_ids
from knotwork.model import Identity, MeshSettings
from knotwork.proxyconfig import MESH_ALPN_HTTP, MESH_ALPN_SERVER
from knotwork.records import AttestationClaim, ProxyContext, Strategy
from knotwork.testing import RootAuthority

from test_dataplane_support import Upstream, default_handler, make_ctx
from knotwork_native.dataplane import DataPlane

TD = "cluster.local"


def sa(name: str, trust_domain: str = TD) -> str:
    return f"spiffe://{trust_domain}/ns/default/sa/{name}"


@attrs.define
class MeshCA:
    """A running certificate service (the kernel's CertificateServer) and what proxies need to use it."""

    server: CertificateServer
    address: str
    state_dir: Path
    tokens: dict[str, tuple[str, str]] = attrs.field(factory=dict)  # credential -> (node, SPIFFE ID)

    def credential(self, node: str, spiffe_id: str) -> str:
        token = f"token-{len(self.tokens)}-{node}"
        self.tokens[token] = (node, spiffe_id)
        return token

    def attest(self, claim: AttestationClaim) -> Identity | None:
        node, spiffe_id = self.tokens.pop(claim.credential, (None, None))
        if node is None:
            raise ValueError("unknown or spent credential")
        if node != claim.node_id:
            raise ValueError(f"issued for node {node}")
        return Identity.parse(spiffe_id)

    def identity(self, node: str, spiffe_id: str, *, ttl: float | None = None) -> WorkloadIdentity:
        return WorkloadIdentity(ca_address=self.address, spiffe_id=spiffe_id, node_id=node,
                                bundle_file=self.state_dir / BUNDLE_FILE, credential=self.credential(node, spiffe_id),
                                platform="test", ttl=ttl)

    def proxy_context(self, node: str, spiffe_id: str, control: str, **kw: Any) -> ProxyContext:
        return attrs.evolve(make_ctx(), node_id=node, control_address=control, ca_address=self.address,
                            identity=spiffe_id, credential=self.credential(node, spiffe_id),
                            bundle_file=self.state_dir / BUNDLE_FILE, platform="test", **kw)


@contextlib.asynccontextmanager
async def mesh_ca(root: Path, state_dir: Path, ttl: float = 3600) -> AsyncIterator[MeshCA]:
    """A certificate service signing with `root` on a loopback port, for the block."""
    holder: list[MeshCA] = []
    server = CertificateServer(RootAuthority(root, ttl), lambda claim: holder[0].attest(claim), MeshSettings(), state_dir,
                               "127.0.0.1:0")
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        assert server.address is not None
        holder.append(MeshCA(server, "127.0.0.1:%d" % server.address[1], state_dir))
        yield holder[0]
        tg.cancel_scope.cancel()


class FakeIdentity:
    """What the data plane needs of a WorkloadIdentity: `.svid`, `.on_change`, `.status()`; `rotate()` renews."""

    def __init__(self, svid: Any) -> None:
        self.svid = svid
        self.spiffe_id = svid.spiffe_id
        self.callbacks: list[Callable[[Any], None]] = []

    def on_change(self, callback: Callable[[Any], None]) -> None:
        self.callbacks.append(callback)

    def rotate(self, svid: Any) -> None:
        self.svid = svid
        for callback in self.callbacks:
            callback(svid)

    def status(self) -> dict[str, Any]:
        return {"identity": self.spiffe_id, **self.svid.describe()}


class PeerAuthenticator:
    """The principal is the connection's mTLS peer (what strategies see of ``ConnectionView.peer_identity``)."""

    def __init__(self, listener: Any, settings: Any = None) -> None:
        pass

    def authenticate(self, request: Any) -> str | None:
        return request.connection.peer_identity


def mesh_ctx(**kw: Any) -> ProxyContext:
    ctx = make_ctx()
    strategies = {**ctx.strategies, "authenticators": {**ctx.strategies["authenticators"],
                                                        "peer": Strategy(name="peer", factory=PeerAuthenticator)}}
    return attrs.evolve(ctx, strategies=strategies, **kw)


@contextlib.asynccontextmanager
async def mesh_dataplane(res: dict[str, dict[str, Any]], identity: Any, *, peek_timeout: float | None = None,
                         node_id: str = "test-node") -> AsyncIterator[DataPlane]:
    dp = DataPlane(mesh_ctx(), node_id=node_id, identity=identity)
    if peek_timeout is not None:
        dp.peek_timeout = peek_timeout
    await dp.apply(dp.build(res))
    try:
        yield dp
    finally:
        await dp.aclose()


class TlsUpstream(Upstream):
    """An HTTP upstream behind mesh mTLS with `svid` (TLS 1.3, client certificate required).

    `peers` has, per accepted connection, the client certificate's (serial, SPIFFE ID).
    """

    def __init__(self, name: str, svid: Any, handler: Any = default_handler) -> None:
        super().__init__(name, handler)
        self.svid = svid
        self.peers: list[tuple[int, str]] = []

    async def start(self) -> TlsUpstream:
        ctx = server_context(self.svid, alpn=MESH_ALPN_SERVER)
        self.server = await asyncio.start_server(self._tls_serve, "127.0.0.1", 0, ssl=ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _tls_serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cert = x509.load_der_x509_certificate(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
        self.peers.append((cert.serial_number, spiffe_ids(cert)[0]))
        await self._serve(reader, writer)


@attrs.define
class MeshResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    server_serial: int
    server_id: str


class MeshClient:
    """An HTTP/1.1 keep-alive client over mesh mTLS presenting `svid` (None: no client certificate)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        ssl_object = writer.get_extra_info("ssl_object")
        self.alpn = ssl_object.selected_alpn_protocol()
        cert = x509.load_der_x509_certificate(ssl_object.getpeercert(binary_form=True))
        self.server_serial = cert.serial_number
        self.server_id = (spiffe_ids(cert) or [""])[0]

    @classmethod
    async def open(cls, port: int, svid: Any, bundle: str | None = None, *,
                   max_version: ssl.TLSVersion | None = None, alpn: tuple[str, ...] = MESH_ALPN_HTTP) -> MeshClient:
        ctx = client_context(svid, bundle, alpn=alpn)
        if max_version is not None:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.maximum_version = max_version
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 10)
        return cls(reader, writer)

    async def get(self, path: str = "/", headers: dict[str, str] | None = None, host: str = "svc") -> MeshResponse:
        lines = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.writer.write(f"GET {path} HTTP/1.1\r\nhost: {host}\r\n{lines}\r\n".encode())
        async with asyncio.timeout(10):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *rest = head.decode("latin-1").split("\r\n")
            found = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest if h)}
            body = await self.reader.readexactly(int(found.get("content-length", "0")))
        return MeshResponse(int(status_line.split()[1]), found, body, self.server_serial, self.server_id)

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def mesh_get(port: int, svid: Any, bundle: str | None = None, **kw: Any) -> MeshResponse:
    """One request on a new mTLS connection; raises (SSLError, ConnectionError, IncompleteReadError) when refused."""
    client = await MeshClient.open(port, svid, bundle, **kw)
    try:
        return await client.get()
    finally:
        await client.aclose()


REFUSED = (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, EOFError)
