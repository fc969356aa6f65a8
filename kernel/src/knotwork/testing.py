"""Test one Knotwork plugin in isolation: the kernel's pytest plugin.

Installed with knotwork-kernel (``pytest11`` entry point ``knotwork``), so any
test can ask for the fixtures `plugin_manager`, `hooks`, `register_plugin`,
`hook_recorder` and `capture_logs`. The helpers are imported from here:
per-request fakes (:func:`make_request`, :func:`make_connection`,
:func:`make_response`), model builders (:func:`make_service`,
:func:`make_endpoint`, :func:`make_node`, :func:`make_snapshot`),
:func:`compile_node` (compilers run as the control plane runs them),
throw-away TLS material (:func:`make_ca`, :func:`make_certificate`), and
:func:`settings_from_yaml` / :func:`mesh_from_yaml` (the kernel's strict rules
and error lines). docs/plugin-guide.md shows them at work.
"""

from __future__ import annotations

import datetime
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pluggy
import pytest
import structlog.testing

from . import kernel
from .config import Mesh, Selection, load_mesh, settings_from_text
from .model import Endpoint, MeshSettings, PlatformSnapshot, ProxyNode, Resource, Service, ServicePort, port_protocol
from .proxyconfig import ProxySnapshot
from .records import CompileInput

__all__ = [
    "FakeConnection", "FakeRequest", "FakeResponse", "FakeTcp", "HookCall", "HookRecorder", "OneTimeCredentials", "RootAuthority", "compile_node", "make_connection",
    "make_ca", "make_certificate", "make_endpoint", "make_node", "make_request", "make_response", "make_service", "make_snapshot", "make_svid", "make_tcp", "mesh_from_yaml", "sign_request",
    "settings_from_yaml",
]

# ── fixtures: a plugin manager of your own ───────────────────────────────────


@pytest.fixture
def plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager with Knotwork's hook specs and no plugins (no entry points)."""
    return kernel.make_plugin_manager(entry_points=False)


@pytest.fixture
def hooks(plugin_manager: pluggy.PluginManager) -> kernel.Hooks:
    """The typed facade over `plugin_manager`; sees plugins registered later too."""
    return kernel.Hooks(plugin_manager)


@pytest.fixture
def register_plugin(plugin_manager: pluggy.PluginManager) -> Iterator[Any]:
    """``register_plugin(obj, name=None) -> obj``: register a plugin (a module or an
    object with ``@hookimpl`` methods) the way the kernel does — ``async def``
    implementations and misspelled hook names raise :class:`~knotwork.kernel.PluginError`.
    The name defaults to the module's or class's name; unregistered at teardown."""
    registered: list[object] = []

    def register(obj: object, name: str | None = None) -> object:
        name = name or getattr(obj, "__name__", None) or type(obj).__name__
        kernel.register(plugin_manager, obj, name)
        registered.append(obj)
        try:
            kernel.check_pending(plugin_manager)
        except kernel.PluginError:
            plugin_manager.unregister(obj)
            raise
        return obj

    yield register
    for obj in registered:
        if plugin_manager.is_registered(obj):
            plugin_manager.unregister(obj)


@attrs.frozen
class HookCall:
    """One recorded hook call: `plugins` are the implementations called."""

    name: str
    kwargs: Mapping[str, Any]
    plugins: tuple[str, ...]
    results: Any = None  # a list, or one value for firstresult hooks
    exception: BaseException | None = None


class HookRecorder:
    """Records every hook call of a plugin manager (cf. pytest's ``HookRecorder``).

    The facade calls each plugin's implementation separately, so a hook
    implemented by two plugins shows up as two calls.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._calls: list[HookCall] = []
        self._undo = pm.add_hookcall_monitoring(lambda *_: None, self._after)

    def _after(self, outcome: Any, name: str, impls: Any, kwargs: Mapping[str, Any]) -> None:
        results = None if outcome.exception else outcome.get_result()
        self._calls.append(HookCall(name, dict(kwargs), tuple(i.plugin_name for i in impls), results, outcome.exception))

    def calls(self, name: str | None = None) -> list[HookCall]:
        """The calls so far, in order; only those of hook `name` if given."""
        return [c for c in self._calls if name is None or c.name == name]

    def clear(self) -> None:
        self._calls.clear()

    def finish_recording(self) -> None:
        self._undo()


@pytest.fixture
def hook_recorder(plugin_manager: pluggy.PluginManager) -> Iterator[HookRecorder]:
    """A :class:`HookRecorder` on `plugin_manager`: ``hook_recorder.calls("knotwork_routers")``."""
    recorder = HookRecorder(plugin_manager)
    yield recorder
    recorder.finish_recording()


@pytest.fixture
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """structlog events logged during the test, as dicts (``event``, ``log_level``, …)."""
    with structlog.testing.capture_logs() as logs:
        yield logs


# ── per-request fakes (knotwork.protocols) ───────────────────────────────────


@attrs.define
class FakeConnection:
    """A :class:`~knotwork.protocols.ConnectionView`."""

    peer_address: tuple[str, int] = ("127.0.0.1", 40000)
    local_address: tuple[str, int] = ("127.0.0.1", 15006)
    peer_identity: str | None = None
    tls: bool = False


@attrs.define
class FakeRequest:
    """A :class:`~knotwork.protocols.RequestView`; `headers` keys are lower-case."""

    method: str
    path: str
    authority: str
    connection: FakeConnection
    headers: dict[str, str] = attrs.Factory(dict)
    principal: str | None = None
    source_labels: dict[str, str] = attrs.Factory(dict)
    protocol: str = "HTTP/1.1"
    start_time: float = 0.0
    trace_id: str | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@attrs.define
class FakeResponse:
    """A :class:`~knotwork.protocols.ResponseInfo`."""

    status: int = 200
    flags: str = "-"
    upstream: str | None = None
    cluster: str | None = None
    bytes_received: int = 0
    bytes_sent: int = 0
    duration: float = 0.0
    upstream_peer: Any = None
    grpc_status: str = ""


@attrs.define
class FakeTcp:
    """A :class:`~knotwork.protocols.TcpInfo`: one proxied TCP connection."""

    connection: FakeConnection = attrs.Factory(lambda: FakeConnection())
    start_time: float = 0.0
    cluster: str | None = None
    upstream: str | None = None
    upstream_peer: Any = None
    flags: str = "-"
    bytes_received: int = 0
    bytes_sent: int = 0
    duration: float = 0.0


def make_connection(peer_identity: str | None = None, *, tls: bool | None = None, **fields: Any) -> FakeConnection:
    """A connection; `tls` defaults to true when a peer identity is given."""
    return FakeConnection(peer_identity=peer_identity, tls=peer_identity is not None if tls is None else tls, **fields)


def make_request(method: str = "GET", path: str = "/", authority: str = "x", headers: Mapping[str, str] | None = None,
                 peer_identity: str | None = None, source_labels: Mapping[str, str] | None = None, *,
                 principal: str | None = None, connection: FakeConnection | None = None) -> FakeRequest:
    """A request as an engine would hand it to a router, authenticator or authorizer."""
    return FakeRequest(method, path, authority.lower(), connection or make_connection(peer_identity),
                       {k.lower(): v for k, v in (headers or {}).items()}, principal, dict(source_labels or {}))


def make_response(status: int = 200, **fields: Any) -> FakeResponse:
    """How a request ended, for telemetry sinks."""
    return FakeResponse(status=status, **fields)


def make_tcp(peer_identity: str | None = None, **fields: Any) -> FakeTcp:
    """A proxied TCP connection, for telemetry sinks' ``tcp_opened`` / ``tcp_closed``."""
    return FakeTcp(connection=make_connection(peer_identity), **fields)


# ── model builders ───────────────────────────────────────────────────────────


def make_service(name: str = "reviews", namespace: str = "default", ports: Iterable[Any] = ((9080, "http"),),
                 **fields: Any) -> Service:
    """A service; each port is a number, ``(number, name)`` or a :class:`ServicePort`
    (the protocol comes from the name, as in Istio)."""
    def port(p: Any) -> ServicePort:
        if isinstance(p, ServicePort):
            return p
        number, pname = (p, "") if isinstance(p, int) else p
        return ServicePort(number, pname, port_protocol(pname))

    return Service(name, namespace, tuple(port(p) for p in ports), **fields)


def make_endpoint(service: str = "reviews", port: int = 9080, address: str = "127.0.0.1", *,
                  target_port: int | None = None, namespace: str = "default", domain: str = "cluster.local",
                  **fields: Any) -> Endpoint:
    """An endpoint of `service` (a short name or FQDN) on service port `port`."""
    fqdn = service if "." in service else f"{service}.{namespace}.svc.{domain}"
    return Endpoint(fqdn, port, address, target_port or port, **fields)


def make_node(workload: str = "reviews", kind: str = "sidecar", namespace: str = "default", **fields: Any) -> ProxyNode:
    """A proxy node with id ``<kind>~<workload>`` unless `id` is given."""
    fields.setdefault("id", f"{kind}~{workload}")
    return ProxyNode(kind=kind, workload=workload, namespace=namespace, **fields)


def make_snapshot(platform: str = "test", version: int = 1, **fields: Any) -> PlatformSnapshot:
    """A :class:`PlatformSnapshot`; iterables are turned into tuples."""
    return PlatformSnapshot(platform, version, **{k: tuple(v) if k != "synced" else v for k, v in fields.items()})


def compile_node(hooks: kernel.Hooks, node: ProxyNode, *, services: Iterable[Service] = (),
                 endpoints: Iterable[Endpoint] = (), resources: Iterable[Resource] = (),
                 selection: Mapping[str, Any] | None = None, mesh: MeshSettings | None = None,
                 workloads: Iterable[Any] = (), proxies: Iterable[ProxyNode] | None = None) -> ProxySnapshot:
    """Compile `node`'s config with every registered compiler, as the control plane does.

    `selection` overrides the defaults of the mesh file's ``plugins:`` section.
    Raises what compilation raises (:class:`~knotwork.proxyconfig.SlotError`,
    :class:`~knotwork.proxyconfig.ConsistencyError`, the compiler's own errors).
    """
    from .control import compile_proxy  # imported late: grpclib is heavy for a pytest plugin

    by_port: dict[tuple[str, int], list[Endpoint]] = {}
    for ep in endpoints:
        by_port.setdefault((ep.service, ep.service_port), []).append(ep)
    by_kind: dict[str, list[Resource]] = {}
    for res in resources:
        by_kind.setdefault(res.kind, []).append(res)
    chosen = {**attrs.asdict(Selection()), **(selection or {})}
    inp = CompileInput(mesh or MeshSettings(), node, tuple(services), {k: tuple(v) for k, v in by_port.items()},
                       {k: tuple(v) for k, v in by_kind.items()}, chosen, tuple(workloads),
                       tuple(proxies) if proxies is not None else (node,))
    return compile_proxy(hooks.compilers(), inp)


# ── settings and mesh files ──────────────────────────────────────────────────


def _dedent(text: str) -> str:
    """Dedent a triple-quoted YAML text; a leading newline is dropped, so line 1 is the first line."""
    return textwrap.dedent(text).removeprefix("\n")


def settings_from_yaml(text: str, cls: type, file: str = "settings.yaml") -> Any:
    """Structure one settings section written in YAML into `cls`, exactly as the
    mesh file's section would be (strict types, unknown keys refused, `problems()`).
    Raises :class:`~knotwork.config.MeshError`; its `problems` are the lines
    ``settings.yaml:LINE: dotted.path: expected X, got Y``."""
    return settings_from_text(_dedent(text), cls, file)


def mesh_from_yaml(tmp_path: Path, text: str, hooks: kernel.Hooks) -> Mesh:
    """Write `text` (dedented) to ``tmp_path/knotwork.yaml`` and load it with the plugins of `hooks`."""
    path = Path(tmp_path) / "knotwork.yaml"
    path.write_text(_dedent(text))
    return load_mesh(path, hooks)


# ── TLS material: a throw-away CA and leaf certificates, as PEM files ───────
# (cryptography is imported on first use: every pytest run loads this module)


def _write_pem(path: Path, cert: Any, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _sign(subject: str, issuer: Any, public_key: Any, signing_key: Any, extensions: Iterable[tuple[Any, bool]],
          *, valid: tuple[float, float] = (-300.0, 86400.0)) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)] if subject else [])
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer or name)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now + datetime.timedelta(seconds=valid[0]))
               .not_valid_after(now + datetime.timedelta(seconds=valid[1])))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def make_ca(path: Path, common_name: str = "test root CA") -> Path:
    """A self-signed CA valid for a day: ``<path>.crt`` and ``<path>.key``; returns the certificate's path."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign(common_name, None, key.public_key(), key, [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(True, False, False, False, False, True, True, False, False), True),
    ])
    _write_pem(path, cert, key)
    return path.with_suffix(".crt")


def make_certificate(ca: Path, path: Path, *names: str, client: bool = False) -> tuple[Path, Path]:
    """A leaf certificate for DNS `names` signed by the CA at `ca` (from :func:`make_ca`):
    ``<path>.crt`` and ``<path>.key``; returns both paths. `client` makes it a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_cert = x509.load_pem_x509_certificate(ca.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.with_suffix(".key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = _sign(names[0], ca_cert.subject, key.public_key(), ca_key, [
        (x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False),
        (x509.ExtendedKeyUsage([usage]), False),
    ])
    _write_pem(path, cert, key)
    return path.with_suffix(".crt"), path.with_suffix(".key")


def make_svid(ca: Path | None, spiffe_id: str, *, valid: tuple[float, float] = (-300.0, 3600.0)) -> Any:
    """An X.509 SVID for `spiffe_id` signed by the CA at `ca` (from :func:`make_ca`), or self-signed when
    `ca` is None, valid from ``now + valid[0]`` to ``now + valid[1]`` seconds (negative both: expired).
    Returns a :class:`knotwork.identity.Svid` whose bundle is the CA (or the certificate itself)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from .identity import Svid

    key = ec.generate_private_key(ec.SECP256R1())
    if ca is not None:
        ca_cert = x509.load_pem_x509_certificate(ca.read_bytes())
        ca_key, issuer = serialization.load_pem_private_key(ca.with_suffix(".key").read_bytes(), None), ca_cert.subject
    else:
        ca_cert, ca_key, issuer = None, key, None
    cert = _sign("", issuer, key.public_key(), ca_key, [
        (x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        (x509.KeyUsage(True, False, True, False, False, False, False, False, False), True),
    ], valid=valid)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    bundle = ca_cert.public_bytes(serialization.Encoding.PEM).decode() if ca_cert is not None else pem
    return Svid.build([pem], key, bundle)


class RootAuthority:
    """A :class:`~knotwork.identity.CertificateAuthority` over a :func:`make_ca` root, for testing an engine
    or a platform without a CA plugin: SVIDs of `ttl` seconds from now (not backdated, so a short lifetime
    still renews ahead of time), renewed at `rotate_at` of their lifetime."""

    def __init__(self, root: Path, ttl: float = 3600, rotate_at: float = 0.5) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        self.cert = x509.load_pem_x509_certificate(root.read_bytes())
        self.key = serialization.load_pem_private_key(root.with_suffix(".key").read_bytes(), None)
        self.ttl, self.rotate_at = ttl, rotate_at

    def sign(self, csr: Any, spiffe_id: str, *, ttl: float | None = None, dns_names: Iterable[str] = (),
             ip_addresses: Iterable[str] = ()) -> list[str]:
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        names = [x509.UniformResourceIdentifier(spiffe_id), *(x509.DNSName(n) for n in dns_names),
                 *(x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses)]
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.cert.subject)
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(seconds=ttl or self.ttl))
                .add_extension(x509.SubjectAlternativeName(names), critical=True)
                .sign(self.key, hashes.SHA256()))
        return [cert.public_bytes(serialization.Encoding.PEM).decode()]

    def trust_bundle(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return self.cert.public_bytes(serialization.Encoding.PEM).decode()


class OneTimeCredentials:
    """The attestation hook of a test platform (``platform == "test"``): one-time credentials, each issued
    for a node and a SPIFFE ID: ``OneTimeCredentials(t1=("node-a", "spiffe://..."))``. A reused, unknown or
    misdirected credential raises ValueError, as a real platform's hook does."""

    def __init__(self, **issued: tuple[str, str]) -> None:
        self.issued, self.used = issued, set()

    def __call__(self, claim: Any) -> Any:
        from .model import Identity

        if claim.platform != "test":
            return None
        if claim.credential in self.used:
            raise ValueError("bootstrap credential already used")
        if claim.credential not in self.issued:
            raise ValueError("unknown bootstrap credential")
        node, identity = self.issued[claim.credential]
        if node != claim.node_id:
            raise ValueError(f"issued for node {node}, not {claim.node_id}")
        self.used.add(claim.credential)
        return Identity.parse(identity)


async def sign_request(address: str, bundle: str, request: dict, svid: Any = None) -> dict:
    """One ``/knotwork.v1.Certificates/Sign`` call to the certificate service at ``HOST:PORT``, verified
    with `bundle`, presenting `svid` if given; a refusal raises grpclib's GRPCError (a WorkloadIdentity
    would retry it forever)."""
    import ssl

    import anyio
    from grpclib.client import Channel

    from .identity import SIGN_METHOD, call_isolated, client_context
    from .wire import JSONCodec

    host, _, port = address.rpartition(":")
    ctx = client_context(svid, bundle, alpn=("h2",), check_hostname=True, min_version=ssl.TLSVersion.TLSv1_2)
    channel = Channel(host, int(port), ssl=ctx, codec=JSONCodec())
    try:
        with anyio.fail_after(10):
            return await call_isolated(channel, SIGN_METHOD, request)
    finally:
        channel.close()
