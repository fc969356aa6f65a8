"""Workload identity: X.509 SVIDs, the certificate service, and TLS contexts for them.

The contract between a certificate authority plugin, the control plane and
the proxy engines:

- A sidecar makes its own key (ECDSA P-256; it never leaves the process) and
  a CSR whose only SAN is the SPIFFE ID it claims. It calls
  ``/knotwork.v1.Certificates/Sign`` on the control plane's certificate
  service (JSON over grpclib, TLS; the server is verified with the mesh's
  trust bundle, read from a file the platform provides). The first call
  carries the platform's one-time bootstrap credential, which the
  ``knotwork_attest_workload`` hook redeems; renewals are authenticated by the
  current SVID over mTLS instead. See :class:`WorkloadIdentity`.
- :class:`CertificateService` is the server side: it parses and checks the
  CSR, authenticates the caller (peer SVID, else attestation), and asks the
  selected :class:`CertificateAuthority` to sign. Refusals are gRPC errors
  with one clear message; nothing a client sends crashes it.
- TLS contexts: :func:`server_context` and :func:`client_context` build
  contexts from an :class:`Svid` (TLS 1.3, client certificates required,
  no host name check); the SPIFFE ID of the peer is checked by the caller
  with :func:`peer_spiffe_id` before a byte is sent. Build a new context per
  rotation: established connections keep theirs.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio
import attrs
import structlog
from anyio.abc import TaskStatus
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from .model import Identity, MeshSettings
from .records import AttestationClaim

__all__ = [
    "BUNDLE_FILE",
    "CREDENTIAL_ENV",
    "SIGN_METHOD",
    "CertificateAuthority",
    "CertificateServer",
    "CertificateService",
    "Svid",
    "WorkloadIdentity",
    "call_isolated",
    "client_context",
    "load_chain",
    "make_csr",
    "make_key",
    "peer_spiffe_id",
    "server_context",
    "spiffe_ids",
]

log = structlog.get_logger("knotwork.identity")

SIGN_METHOD = "/knotwork.v1.Certificates/Sign"
#: The environment variable a platform hands a proxy its one-time bootstrap credential in.
CREDENTIAL_ENV = "KNOTWORK_CREDENTIAL"
#: The trust bundle the control plane writes in the mesh's state directory (public, 0644).
BUNDLE_FILE = "trust-bundle.pem"
#: Retry delays of a sidecar whose certificate request failed: 0.1 s doubling to 5 s.
RETRY_MIN, RETRY_MAX = 0.1, 5.0
#: How long a proxy keeps presenting a refused bootstrap credential (the platform may not have told the
#: control plane about it yet) before it gives up and exits, so its platform restarts it with a new one.
BOOTSTRAP_PATIENCE = 30.0


class CertificateAuthority(Protocol):
    """What a certificate authority component (``knotwork_certificate_authorities``) provides."""

    #: Fraction of a certificate's lifetime after which a workload renews it.
    rotate_at: float

    def sign(self, csr: x509.CertificateSigningRequest, spiffe_id: str, *, ttl: float | None = None,
             dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = ()) -> list[str]:
        """Sign `csr` (already checked) as `spiffe_id`; return the chain, leaf first, as PEM strings.

        `ttl` in seconds (None: the CA's default; more than its maximum is cut).
        """

    def trust_bundle(self) -> str:
        """The root certificate(s) workloads trust, as PEM."""


# ── keys, CSRs, SVIDs ───────────────────────────────────────────────────────


def make_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: str) -> str:
    """A PEM CSR whose only SAN is `spiffe_id`."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def spiffe_ids(cert: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    """The ``spiffe://`` URI SANs of a certificate or CSR."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return []
    return [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]


def peer_spiffe_id(ssl_object: Any) -> str | None:
    """The SPIFFE ID of a verified peer (an ``ssl.SSLObject``/``SSLSocket`` or a ``getpeercert()`` dict)."""
    cert = ssl_object if isinstance(ssl_object, dict) or ssl_object is None else ssl_object.getpeercert()
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "URI" and value.startswith("spiffe://"):
            return value
    return None


@attrs.frozen
class Svid:
    """An X.509 SVID with its key and the trust bundle it was issued with."""

    chain_pem: str  # leaf first
    key_pem: str = attrs.field(repr=False)
    bundle_pem: str
    spiffe_id: str
    serial: int
    not_before: float  # unix seconds
    not_after: float
    rotate_at: float = 0.8

    @classmethod
    def build(cls, chain: Sequence[str], key: ec.EllipticCurvePrivateKey, bundle: str, rotate_at: float = 0.8) -> Svid:
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        ids = spiffe_ids(leaf)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        return cls("".join(chain), key_pem, bundle, ids[0] if ids else "", leaf.serial_number,
                   leaf.not_valid_before_utc.timestamp(), leaf.not_valid_after_utc.timestamp(), rotate_at)

    @property
    def renew_at(self) -> float:
        """When to renew: `rotate_at` of the way through the lifetime."""
        return self.not_before + (self.not_after - self.not_before) * self.rotate_at

    def describe(self) -> dict[str, Any]:
        """Identity, serial, validity and the chain to the root (for admin ``/certs``)."""
        certs = x509.load_pem_x509_certificates((self.chain_pem + self.bundle_pem).encode())
        return {"identity": self.spiffe_id, "serial": format(self.serial, "x"),
                "not_before": _iso(self.not_before), "not_after": _iso(self.not_after),
                "chain": [{"subject": c.subject.rfc4514_string(), "issuer": c.issuer.rfc4514_string(),
                           "serial": format(c.serial_number, "x"), "not_after": _iso(c.not_valid_after_utc.timestamp()),
                           "spiffe_ids": spiffe_ids(c)} for c in certs]}


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat().replace("+00:00", "Z")


# ── TLS contexts ────────────────────────────────────────────────────────────


def load_chain(ctx: ssl.SSLContext, chain_pem: str, key_pem: str) -> None:
    """Load a PEM chain and key into `ctx` without writing the key to a disk.

    ``ssl`` loads only from files: the PEM goes to an anonymous in-memory file
    (``memfd_create``) read through ``/proc/self/fd``; where that is missing,
    to 0600 files in a private temporary directory removed right after.
    """
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fds = [os.memfd_create(name, os.MFD_CLOEXEC) for name in ("chain", "key")]
        try:
            for fd, text in zip(fds, (chain_pem, key_pem), strict=True):
                os.write(fd, text.encode())
            ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="knotwork-tls-") as tmp:
        paths = [Path(tmp) / "chain.pem", Path(tmp) / "key.pem"]
        for path, text in zip(paths, (chain_pem, key_pem), strict=True):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        ctx.load_cert_chain(str(paths[0]), str(paths[1]))


def server_context(svid: Svid, *, alpn: Iterable[str] = (), require_client: bool = True,
                   min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    """A server context presenting `svid`, verifying clients against its bundle."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = min_version
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cadata=svid.bundle_pem)
    load_chain(ctx, svid.chain_pem, svid.key_pem)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(svid: Svid | None, bundle_pem: str | None = None, *, alpn: Iterable[str] = (),
                   check_hostname: bool = False, min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    """A client context presenting `svid` (if any), verifying the server against the bundle.

    Without `check_hostname` the caller checks the server's SPIFFE ID
    (:func:`peer_spiffe_id`) before sending a byte.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = min_version
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle_pem or (svid.bundle_pem if svid else None))
    if svid is not None:
        load_chain(ctx, svid.chain_pem, svid.key_pem)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


# ── the certificate service (control plane side) ───────────────────────────


class CertificateService:
    """``/knotwork.v1.Certificates/Sign``: check a CSR, authenticate its caller, have the CA sign it.

    `attest(claim)` is the kernel's ``knotwork_attest_workload`` hook.
    Request: ``{"csr": PEM, "node": id, "platform": name, "credential": str?, "ttl": seconds?}``;
    reply: ``{"certificate_chain": [PEM, ...], "trust_bundle": PEM, "rotate_at": fraction}``.
    """

    def __init__(self, ca: CertificateAuthority, attest: Callable[[AttestationClaim], Identity | None],
                 trust_domain: str) -> None:
        self.ca, self.attest, self.trust_domain = ca, attest, trust_domain
        self.signed = 0
        self.renewed = 0  # of `signed`, over mTLS with a current SVID
        self.refused = 0
        self.refusals: dict[str, int] = {}  # gRPC status name -> refused requests

    def handlers(self) -> dict[str, tuple[Callable[..., Any], Cardinality]]:
        return {SIGN_METHOD: (self._handle, Cardinality.UNARY_UNARY)}

    async def _handle(self, stream: Any) -> None:
        request = await stream.recv_message()
        peer = peer_spiffe_id(stream.peer.cert() if stream.peer is not None else None)
        try:
            reply = self.sign(request if isinstance(request, dict) else {}, peer)
        except GRPCError as exc:
            self.refused += 1
            self.refusals[exc.status.name] = self.refusals.get(exc.status.name, 0) + 1
            log.warning("certificate request refused", reason=exc.message, node=(request or {}).get("node")
                        if isinstance(request, dict) else None)
            raise
        self.signed += 1
        self.renewed += peer is not None
        await stream.send_message(reply)

    def sign(self, request: dict, peer_id: str | None) -> dict:
        """The reply to one request from a caller whose verified SVID is `peer_id` (None: no mTLS)."""
        csr_text = request.get("csr")
        if not isinstance(csr_text, str) or not csr_text.strip():
            raise GRPCError(Status.INVALID_ARGUMENT, "csr: a PEM certificate signing request is required")
        try:
            csr = x509.load_pem_x509_csr(csr_text.encode())
            valid = csr.is_signature_valid
            claimed = spiffe_ids(csr)
        except (ValueError, TypeError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, f"csr: not a valid PEM certificate signing request ({exc})") from None
        if not valid:
            raise GRPCError(Status.INVALID_ARGUMENT, "csr: its signature does not verify")
        key = csr.public_key()
        if not (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in ("secp256r1", "secp384r1")
                or isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048):
            raise GRPCError(Status.INVALID_ARGUMENT, "csr: the key must be ECDSA P-256/P-384 or RSA of 2048 bits or more")
        if len(claimed) != 1:
            raise GRPCError(Status.INVALID_ARGUMENT, f"csr: needs exactly one spiffe:// URI SAN, has {len(claimed)}")
        spiffe_id = claimed[0]
        try:
            identity = Identity.parse(spiffe_id)
        except ValueError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, f"csr: {exc}") from None
        if identity.trust_domain != self.trust_domain:
            raise GRPCError(Status.PERMISSION_DENIED,
                            f"csr: trust domain {identity.trust_domain!r} is not the mesh's {self.trust_domain!r}")
        ttl = request.get("ttl")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0):
            raise GRPCError(Status.INVALID_ARGUMENT, f"ttl: expected a positive number of seconds, got {ttl!r}")
        if peer_id is not None:
            if peer_id != spiffe_id:
                raise GRPCError(Status.PERMISSION_DENIED, f"a workload authenticated as {peer_id} asked for {spiffe_id}")
        else:
            self._attest(request, spiffe_id)  # last: a credential is spent only on a request that is otherwise good
        try:
            chain = self.ca.sign(csr, spiffe_id, ttl=ttl)
        except ValueError as exc:  # the CA's own refusals (a key it will not certify, ...)
            raise GRPCError(Status.INVALID_ARGUMENT, f"csr: {exc}") from None
        log.info("certificate issued", identity=spiffe_id, node=request.get("node"),
                 renewal=peer_id is not None)
        return {"certificate_chain": chain, "trust_bundle": self.ca.trust_bundle(), "rotate_at": self.ca.rotate_at}

    def _attest(self, request: dict, spiffe_id: str) -> None:
        credential, platform, node = request.get("credential"), request.get("platform"), request.get("node")
        if not isinstance(credential, str) or not credential:
            raise GRPCError(Status.UNAUTHENTICATED,
                            "no credential: present a platform bootstrap credential, or renew over mTLS with a current SVID")
        if not isinstance(platform, str) or not isinstance(node, str) or not node:
            raise GRPCError(Status.INVALID_ARGUMENT, "platform and node: strings naming the caller are required")
        try:
            proven = self.attest(AttestationClaim(platform, node, spiffe_id, credential))
        except ValueError as exc:
            raise GRPCError(Status.PERMISSION_DENIED, f"credential refused: {exc}") from None
        if proven is None:
            raise GRPCError(Status.UNAUTHENTICATED, f"no plugin attests credentials of platform {platform!r}")
        if proven.spiffe_id != spiffe_id:
            raise GRPCError(Status.PERMISSION_DENIED,
                            f"the credential proves {proven.spiffe_id}, but the CSR asks for {spiffe_id}")


class CertificateServer:
    """The control plane's side of workload identity: a CA component served as a :class:`CertificateService`.

    It issues the control plane its own SVID
    (``spiffe://<td>/ns/<root ns>/sa/knotwork-control``, with the IP SANs of
    `listen` and `also_serving` and DNS ``knotwork-control``), writes the
    trust bundle to ``<state_dir>/trust-bundle.pem`` for proxies to verify the
    control plane by, serves the certificate service on `listen` (TLS, a
    client certificate optional: renewals present one, first requests a
    credential), and renews its SVID at the CA's `rotate_at`, reloading every
    context from :meth:`server_tls` (new handshakes get the new certificate).
    """

    def __init__(self, ca: CertificateAuthority, attest: Callable[[AttestationClaim], Identity | None],
                 mesh: MeshSettings, state_dir: Path, listen: str, *, also_serving: Iterable[str] = ()) -> None:
        self.ca, self.mesh, self.state_dir, self.listen = ca, mesh, Path(state_dir), listen
        self.service = CertificateService(ca, attest, mesh.trust_domain)
        self.ips = sorted({"127.0.0.1", *(ip for a in (listen, *also_serving) for ip in self_issued_ip(a))})
        self.svid: Svid | None = None
        self.address: tuple[str, int] | None = None
        self._contexts: list[ssl.SSLContext] = []
        self._issue()

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.mesh.trust_domain}/ns/{self.mesh.root_namespace}/sa/knotwork-control"

    def _issue(self) -> None:
        key = make_key()
        csr = x509.load_pem_x509_csr(make_csr(key, self.spiffe_id).encode())
        chain = self.ca.sign(csr, self.spiffe_id, ip_addresses=self.ips, dns_names=(
            "knotwork-control", f"knotwork-control.{self.mesh.root_namespace}.svc", "localhost"))
        self.svid = Svid.build(chain, key, self.ca.trust_bundle(), self.ca.rotate_at)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        bundle, tmp = self.state_dir / BUNDLE_FILE, self.state_dir / f".{BUNDLE_FILE}.tmp"
        tmp.write_text(self.svid.bundle_pem)
        os.chmod(tmp, 0o644)
        tmp.replace(bundle)
        for ctx in self._contexts:
            load_chain(ctx, self.svid.chain_pem, self.svid.key_pem)

    def server_tls(self, *, require_client: bool) -> ssl.SSLContext:
        """A gRPC server context presenting the control plane's SVID, kept current across renewals."""
        assert self.svid is not None
        ctx = server_context(self.svid, alpn=("h2",), require_client=require_client, min_version=ssl.TLSVersion.TLSv1_2)
        self._contexts.append(ctx)
        return ctx

    def status(self) -> dict[str, Any]:
        return {"address": None if self.address is None else "%s:%d" % self.address,
                "signed": self.service.signed, "refused": self.service.refused,
                "serial": format(self.svid.serial, "x") if self.svid else None}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        from grpclib.server import Server

        from .wire import JSONCodec, JsonService, parse_address, serving

        server = Server([JsonService(self.service.handlers())], codec=JSONCodec())
        async with serving(server, listen=parse_address(self.listen), ssl=self.server_tls(require_client=False)) as bound:
            self.address = bound
            log.info("certificate service listening", address="%s:%d" % bound, identity=self.spiffe_id)
            task_status.started()
            while True:
                assert self.svid is not None
                await anyio.sleep(max(1.0, self.svid.renew_at - time.time()))
                self._issue()
                log.info("control plane certificate renewed", serial=format(self.svid.serial, "x"))


# ── the workload side ───────────────────────────────────────────────────────


async def call_isolated(channel: Any, method: str, request: dict) -> dict:
    """One unary JSON call on a grpclib `channel`, in a task of its own.

    grpclib answers a lost connection by cancelling the task that is waiting
    on the stream and turning that into ``StreamTerminatedError``; the task's
    cancellation count is never taken back, which then confuses the caller's
    anyio cancel scopes. A separate task absorbs it.
    """
    import asyncio

    async def call() -> dict:
        async with channel.request(method, Cardinality.UNARY_UNARY, dict, dict) as stream:
            await stream.send_message(request, end=True)
            return await stream.recv_message() or {}

    return await asyncio.ensure_future(call())


class WorkloadIdentity:
    """A proxy's SVID: requested at start, renewed at `rotate_at` of its lifetime, forever.

    `bundle_file` is the trust bundle that verifies the certificate service
    (and, until the first reply, the mesh); `credential` the platform's
    one-time bootstrap credential, used for the first request only. After a
    renewal `svid` is the new one and every `on_change` callback runs; the
    old SVID stays valid until it expires, so connections made with it live
    on. `run()` reports started once the first SVID is in hand.
    """

    def __init__(self, *, ca_address: str, spiffe_id: str, node_id: str, bundle_file: Path, credential: str,
                 platform: str = "local", ttl: float | None = None) -> None:
        self.ca_address, self.spiffe_id, self.node_id = ca_address, spiffe_id, node_id
        self.bundle_file, self.platform, self.ttl = Path(bundle_file), platform, ttl
        self._credential: str | None = credential or None
        self.svid: Svid | None = None
        self.renewals = 0
        self.last_error: str | None = None
        self._callbacks: list[Callable[[Svid], None]] = []
        self._changed = anyio.Event()

    def on_change(self, callback: Callable[[Svid], None]) -> None:
        self._callbacks.append(callback)

    async def wait_change(self) -> Svid:
        await self._changed.wait()
        assert self.svid is not None
        return self.svid

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Get the first SVID, then renew forever. Raises RuntimeError when the bootstrap credential is
        refused for longer than :data:`BOOTSTRAP_PATIENCE` (spent, or issued to a process since gone):
        the proxy exits, and its platform starts it again with a new credential."""
        started = False
        while True:
            delay, refused_since = RETRY_MIN, None
            while True:
                try:
                    await self._request()
                    break
                except GRPCError as exc:
                    self.last_error = f"{exc.status.name}: {exc.message}"
                    if self.svid is None and exc.status in (Status.PERMISSION_DENIED, Status.UNAUTHENTICATED):
                        refused_since = refused_since or time.monotonic()
                        if time.monotonic() - refused_since > BOOTSTRAP_PATIENCE:
                            raise RuntimeError(f"no certificate for {self.spiffe_id}: the bootstrap credential "
                                               f"was refused ({self.last_error})") from None
                except (OSError, ssl.SSLError, anyio.EndOfStream, TimeoutError, ConnectionError) as exc:
                    self.last_error = f"certificate service unreachable: {exc!r}"
                log.warning("certificate request failed; retrying", error=self.last_error, retry_in=delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            if not started:
                started = True
                task_status.started()
            assert self.svid is not None
            lifetime = self.svid.not_after - self.svid.not_before  # a floor, so a CA's odd dates cannot make a tight loop
            await anyio.sleep(max(self.svid.renew_at - time.time(), 0.05 * lifetime, 0.05))

    async def _request(self) -> None:
        from grpclib.client import Channel

        from .wire import JSONCodec

        key = make_key()
        request: dict[str, Any] = {"csr": make_csr(key, self.spiffe_id), "node": self.node_id, "platform": self.platform}
        if self.ttl:
            request["ttl"] = self.ttl
        current = self.svid if self.svid is not None and self.svid.not_after > time.time() else None
        if current is None:
            if self._credential is None:
                raise RuntimeError(f"the SVID of {self.spiffe_id} expired before it could be renewed and the "
                                   "bootstrap credential is spent: exiting, for the platform to restart the proxy")
            request["credential"] = self._credential
        bundle = self.bundle_file.read_text() if current is None else current.bundle_pem
        ctx = client_context(current, bundle, alpn=("h2",), check_hostname=True, min_version=ssl.TLSVersion.TLSv1_2)
        host, _, port = self.ca_address.rpartition(":")
        channel = Channel(host.strip("[]"), int(port), ssl=ctx, codec=JSONCodec())
        try:
            with anyio.fail_after(10):
                reply = await call_isolated(channel, SIGN_METHOD, request)
        finally:
            channel.close()
        if current is None:
            self._credential = None  # one time: spent whether or not the reply arrives intact
        chain, bundle_pem = reply.get("certificate_chain") or [], reply.get("trust_bundle") or ""
        if not chain or not bundle_pem:
            raise GRPCError(Status.INTERNAL, "the certificate service answered without a chain or bundle")
        svid = Svid.build(chain, key, bundle_pem, float(reply.get("rotate_at") or 0.8))
        if svid.spiffe_id != self.spiffe_id:
            raise GRPCError(Status.INTERNAL, f"issued for {svid.spiffe_id}, asked for {self.spiffe_id}")
        renewal = self.svid is not None
        self.svid, self.last_error = svid, None
        self.renewals += renewal
        log.info("certificate renewed" if renewal else "certificate issued", identity=svid.spiffe_id,
                 serial=format(svid.serial, "x"), not_after=_iso(svid.not_after))
        for callback in self._callbacks:
            with contextlib.suppress(Exception):
                callback(svid)
        self._changed.set()
        self._changed = anyio.Event()

    def status(self) -> dict[str, Any]:
        """For the admin API."""
        return {"identity": self.spiffe_id, "renewals": self.renewals, "last_error": self.last_error,
                **(self.svid.describe() if self.svid else {})}


def self_issued_ip(address: str) -> list[str]:
    """`address`'s host when it is an IP (for a server certificate's IP SANs)."""
    host = address.rpartition(":")[0].strip("[]") or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return []
    return [host]
