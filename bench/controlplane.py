"""A mini control plane: hand-built proxy configs served by an engine's server.

No mesh file, no compilers: the benchmark builds the :mod:`knotwork.proxyconfig`
resources one proxy needs, puts a :class:`~knotwork.proxyconfig.ProxySnapshot`
per node in a :class:`~knotwork.distribution.SnapshotCache`, and serves it with
the proxy engine's own distribution server (looked up in the plugin registry,
as the real control plane does; the native engine's is ``NativeServer``).
Routers and balancers are left at their defaults (``host``, ``round_robin``),
so the figures follow the defaults the mesh ships with.

The route-scale case is the exception: its sidecars get real Istio
VirtualService resources compiled by the mesh's own ``networking`` compiler
(:func:`route_scale_snapshot`), exactly as the control plane compiles them.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from anyio.abc import TaskGroup
from knotwork import (
    CompileInput, ComponentContext, Endpoint, Identity, MeshSettings, Protocol, ProxyNode, Resource, Service, ServicePort,
)
from knotwork.records import AttestationClaim
from knotwork.control import compile_proxy
from knotwork.distribution import SnapshotCache
from knotwork.identity import CertificateServer
from knotwork.kernel import Hooks, make_plugin_manager
from knotwork.proxyconfig import (
    MESH_ALPN_HTTP,
    Cluster,
    EndpointSet,
    LbEndpoint,
    Listener,
    Observability,
    PeerInfo,
    PeerTls,
    ProxySnapshot,
    Route,
    RouteAction,
    RouteTable,
    Tracing,
    UpstreamTls,
    VirtualHost,
    WeightedCluster,
)

__all__ = ["ROUTE_PATH", "SERVICE", "TELEMETRY", "MiniControlPlane", "full_telemetry", "inbound_snapshot",
           "outbound_snapshot", "route_scale_host", "route_scale_snapshot", "router_match_ns"]

#: The service every request is for; wrk sends it as the Host header through the mesh hop.
SERVICE = "upstream.bench.svc.cluster.local"
SERVICE_PORT = 80
LOOPBACK = "127.0.0.1"


#: The telemetry sinks of a fully observed listener: Istio's metrics and the JSON access log.
TELEMETRY = ("metrics", "access-log")


def full_telemetry(reporter: str, workload: str, otlp_endpoint: str, sampling: float = 1.0,
                   parts: tuple[str, ...] = ("metrics", "access-log", "tracing")) -> Observability:
    """What the telemetry compiler gives a listener by default, with tracing at `sampling` percent; `parts`
    keeps only some of ``metrics``, ``access-log`` and ``tracing`` on (what each one costs alone)."""
    return Observability(
        reporter=reporter, workload=PeerInfo(workload=workload, namespace="bench", app=workload, version="v1",
                                             principal=f"spiffe://cluster.local/ns/bench/sa/{workload}"),
        service=SERVICE if reporter == "destination" else "",
        metrics="metrics" in parts, access_log="access-log" in parts,
        tracing=Tracing(sampling=sampling, endpoint=otlp_endpoint, service=f"{workload}.bench") if "tracing" in parts else None,
    )


def _default_route(cluster: str) -> Route:
    return Route(name="default", action=RouteAction(clusters=(WeightedCluster(cluster),)))


def inbound_snapshot(listen_port: int, app_ports: tuple[int, ...], tls: PeerTls | None = None,
                     observability: Observability | None = None) -> ProxySnapshot:
    """A sidecar's server side, as the routing plugin compiles it: an ``inbound``
    listener (accepting the mesh mTLS `tls` says; reporting what `observability` says, with the
    :data:`TELEMETRY` sinks), route table ``inbound|80`` (``*`` → the local app), cluster ``inbound|80||``."""
    cluster = f"inbound|{SERVICE_PORT}||"
    table = f"inbound|{SERVICE_PORT}"
    snap = ProxySnapshot.build([
        Cluster(name=cluster, service=SERVICE, port=SERVICE_PORT),
        EndpointSet(name=cluster, endpoints=tuple(LbEndpoint(address=LOOPBACK, port=p) for p in app_ports)),
        RouteTable(name=table, virtual_hosts=(VirtualHost(name=table, domains=("*",), routes=(_default_route(cluster),)),)),
        Listener(name=table, address=LOOPBACK, port=listen_port, mode="inbound", route_table=table, tls=tls,
                 telemetry=TELEMETRY if observability else (), observability=observability),
    ])
    snap.check()
    return snap


def outbound_snapshot(listen_port: int, next_hop_port: int, mode: str = "gateway",
                      peer_identity: str | None = None, observability: Observability | None = None) -> ProxySnapshot:
    """A sidecar's client side: a listener (``gateway`` routing by Host, or the app's
    ``http_proxy``), route table ``outbound`` with one virtual host for :data:`SERVICE`,
    cluster ``outbound|80||SERVICE`` whose endpoint is the next sidecar's inbound listener;
    with `peer_identity`, over mesh mTLS to a server that must prove that SPIFFE ID."""
    cluster = f"outbound|{SERVICE_PORT}||{SERVICE}"
    short = SERVICE.split(".")[0]
    domains = (SERVICE, f"{SERVICE}:{SERVICE_PORT}", short, f"{short}:{SERVICE_PORT}")
    snap = ProxySnapshot.build([
        Cluster(name=cluster, service=SERVICE, port=SERVICE_PORT, tls=None if peer_identity is None else UpstreamTls(
            "ISTIO_MUTUAL", identities=(peer_identity,), sni=f"outbound_.{SERVICE_PORT}_._.{SERVICE}", alpn=MESH_ALPN_HTTP)),
        EndpointSet(name=cluster, endpoints=(LbEndpoint(address=LOOPBACK, port=next_hop_port, identity=peer_identity,
                                                        workload="b", namespace="bench", labels={"app": "b", "version": "v1"}),)),
        RouteTable(name="outbound", virtual_hosts=(
            VirtualHost(name=f"{SERVICE}:{SERVICE_PORT}", domains=domains, routes=(_default_route(cluster),)),
        )),
        Listener(name=mode, address=LOOPBACK, port=listen_port, mode=mode, route_table="outbound",
                 telemetry=TELEMETRY if observability else (), observability=observability),
    ])
    snap.check()
    return snap


# ── the route-scale case: many VirtualServices, compiled by the networking compiler ──

ROUTES_NAMESPACE = "bench"
#: The path every route-scale request asks for: only the last route of a VirtualService matches it.
ROUTE_PATH = "/bench/route"
#: The routes in front of the matching one, as users write them; none matches ROUTE_PATH
#: (one is a longer sibling prefix, two are regexes, the others exact paths, prefixes with
#: header, method or query conditions). They send to a subset no DestinationRule defines:
#: a cluster without endpoints, so a request that took one of them would get 503.
_DECOYS: tuple[dict[str, Any], ...] = (
    {"uri": {"prefix": "/api/v1/"}, "headers": {"end-user": {"exact": "jason"}}},
    {"uri": {"exact": "/productpage"}},
    {"uri": {"regex": "/reviews/[0-9]+"}},
    {"uri": {"prefix": "/static"}},
    {"uri": {"prefix": "/api/v2"}, "method": {"exact": "POST"}},
    {"uri": {"exact": "/login"}},
    {"uri": {"regex": "/api/v[0-9]+/ratings/.*"}},
    {"uri": {"prefix": "/details"}, "queryParams": {"debug": {"exact": "1"}}},
    {"uri": {"prefix": "/bench/other"}},
)


def route_scale_host(index: int) -> str:
    """The FQDN of the route-scale case's service `index`."""
    return f"svc{index:03d}.{ROUTES_NAMESPACE}.svc.cluster.local"


def _virtual_service(index: int, routes: int) -> Resource:
    name = f"svc{index:03d}"
    http = [{"name": f"decoy-{i}", "match": [_DECOYS[i % len(_DECOYS)]],
             "route": [{"destination": {"host": name, "subset": "unmatched"}}]} for i in range(routes - 1)]
    http.append({"name": "bench", "match": [{"uri": {"prefix": ROUTE_PATH}}],
                 "route": [{"destination": {"host": name}}]})
    return Resource("networking.istio.io/v1", "VirtualService", name, ROUTES_NAMESPACE,
                    {"hosts": [name], "http": http})


def route_scale_snapshot(hooks: Hooks, node_id: str, listen_port: int, upstream_port: int,
                         virtual_services: int, routes: int, only_last: bool = False) -> ProxySnapshot:
    """A sidecar whose outbound route table holds `virtual_services` VirtualServices
    (one per service ``svcNNN.bench``) of `routes` HTTP routes each, the one matching
    :data:`ROUTE_PATH` last; with `only_last`, the last of them alone. Its app's
    ``HTTP_PROXY`` listener is on `listen_port`. Compiled from the Istio resources by
    the ``networking`` compiler of the installed routing plugin (no other compiler),
    as the control plane does."""
    indices = [virtual_services - 1] if only_last else list(range(virtual_services))
    services, endpoints = [], {}
    for i in indices:
        service = Service(f"svc{i:03d}", ROUTES_NAMESPACE, (ServicePort(80, "http", Protocol.HTTP),))
        services.append(service)
        endpoints[(route_scale_host(i), 80)] = (Endpoint(
            service=route_scale_host(i), service_port=80, address=LOOPBACK, port=upstream_port,
            labels={"app": service.name}),)
    resources = {"VirtualService": tuple(_virtual_service(i, routes) for i in indices)}
    node = ProxyNode(id=node_id, kind="sidecar", workload="bench-client", namespace=ROUTES_NAMESPACE,
                     ports={"http_proxy": listen_port})
    compilers = [c for c in hooks.compilers() if c.name == "networking"]
    if not compilers:
        raise SystemExit("bench: no 'networking' compiler installed (the routing plugin)")
    inp = CompileInput(MeshSettings(), node, tuple(services), endpoints, resources,
                       {"router": "host", "load_balancer": "round_robin"}, (), (node,))
    snap = compile_proxy(compilers, inp)
    snap.check()
    return snap


class _Request:
    """The request view the router sees (the engine's lower-cased authority, no headers)."""

    __slots__ = ("authority", "connection", "method", "path", "principal", "source_labels")

    def __init__(self, authority: str, path: str) -> None:
        self.authority, self.path, self.method = authority, path, "GET"
        self.source_labels: dict[str, str] = {}
        self.principal = None
        self.connection = None

    def header(self, name: str) -> str | None:
        return None


def router_match_ns(hooks: Hooks, snapshot: ProxySnapshot, table: str, host: str, path: str,
                    number: int = 20000, repeat: int = 5) -> tuple[float, str]:
    """Nanoseconds one ``match()`` of the route table's router takes for `host` and `path`
    (the router built through the strategy registry, as the native engine builds it; best
    of `repeat` timings of `number` calls, so other work on the machine moves it little),
    and the name of the route it returns."""
    import timeit

    rt = snapshot.resources["routes"][table]
    router = hooks.strategies()["routers"][rt.router].factory(rt, None)
    request = _Request(host, path)
    route = router.match(request)
    if route is None:
        raise RuntimeError(f"route table {table}: no route for {host}{path}")
    best = min(timeit.repeat(lambda: router.match(request), number=number, repeat=repeat))
    return best / number * 1e9, route.name


class MiniControlPlane:
    """A SnapshotCache served by an engine's distribution server, in this process."""

    def __init__(self, engine: str, listen_port: int, state_dir: Path, *, secure: bool = False) -> None:
        self.hooks = Hooks(make_plugin_manager())
        registry = self.hooks.registry()
        engines = registry["proxy_engines"]
        if engine not in engines:
            raise SystemExit(f"bench: proxy engine {engine!r} is not installed (installed: {', '.join(sorted(engines))})")
        self.engine = engines[engine]
        self.cache = SnapshotCache()
        self.address = f"{LOOPBACK}:{listen_port}"
        self.state_dir = state_dir
        settings = self.engine.settings() if self.engine.settings is not None else None
        options: dict[str, Any] = {"listen": self.address}
        self.certificates: CertificateServer | None = None
        self.identities: dict[str, str] = {}  # node id -> SPIFFE ID
        self._credentials: dict[str, str] = {}  # one-time credential -> node id
        if secure:  # the mesh's own CA plugin, the kernel's certificate service, mTLS on the config stream
            if "ca" not in registry["certificate_authorities"]:
                raise SystemExit("bench: the mTLS case needs the certificate authority plugin 'ca' installed")
            record = registry["certificate_authorities"]["ca"]
            ca = record.factory(ComponentContext(mesh=MeshSettings(), settings=record.settings(), mesh_dir=state_dir,
                                                 state_dir=state_dir))
            self.certificates = CertificateServer(ca, self._attest, MeshSettings(), state_dir, f"{LOOPBACK}:0",
                                                  also_serving=(self.address,))
            options.update(ssl=self.certificates.server_tls(require_client=True), authorize=self._authorize)
        ctx = ComponentContext(mesh=MeshSettings(), settings=settings, mesh_dir=state_dir, state_dir=state_dir,
                               options=options)
        self.server: Any = self.engine.control_server(ctx, self.cache)

    @staticmethod
    def spiffe_id(node_id: str) -> str:
        """The identity a bench sidecar gets: service account = its node id."""
        return f"spiffe://cluster.local/ns/bench/sa/{node_id.replace('~', '-')}"

    def enrol(self, node_id: str) -> tuple[str, str]:
        """A SPIFFE ID and a one-time credential for a sidecar this bench starts."""
        spiffe_id = self.spiffe_id(node_id)
        credential = secrets.token_urlsafe(32)
        self.identities[node_id], self._credentials[credential] = spiffe_id, node_id
        return spiffe_id, credential

    def _attest(self, claim: AttestationClaim) -> Identity:
        node = self._credentials.pop(claim.credential, None)
        if node is None or node != claim.node_id or self.identities[node] != claim.identity:
            raise ValueError("unknown or used bench credential")
        return Identity.parse(claim.identity)

    def _authorize(self, node_id: str, peer_id: str | None) -> str | None:
        return None if peer_id is not None and self.identities.get(node_id) == peer_id else f"{peer_id} may not be {node_id}"

    def strategies(self) -> dict[str, list[str]]:
        """Installed strategy names by kind (what proxies can load through entry points)."""
        return {kind: sorted(recs) for kind, recs in self.hooks.strategies().items()}

    @property
    def ca_address(self) -> str | None:
        address = self.certificates.address if self.certificates else None
        return None if address is None else f"{address[0]}:{address[1]}"

    async def start(self, tg: TaskGroup) -> None:
        if self.certificates is not None:
            await tg.start(self.certificates.run)
        await tg.start(self.server.run)

    def publish(self, node_id: str, snapshot: ProxySnapshot) -> None:
        """Store a node's snapshot and wake its stream (the control plane's push)."""
        self.cache.set(node_id, snapshot)
        self.cache.notify()
