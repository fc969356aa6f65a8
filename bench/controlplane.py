"""A mini control plane: hand-built proxy configs served by an engine's server.

No mesh file, no compilers: the benchmark builds the :mod:`knotwork.proxyconfig`
resources one proxy needs, puts a :class:`~knotwork.proxyconfig.ProxySnapshot`
per node in a :class:`~knotwork.distribution.SnapshotCache`, and serves it with
the proxy engine's own distribution server (looked up in the plugin registry,
as the real control plane does; the native engine's is ``NativeServer``).
Routers and balancers are left at their defaults (``host``, ``round_robin``),
so the figures follow the defaults the mesh ships with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anyio.abc import TaskGroup
from knotwork import ComponentContext, MeshSettings
from knotwork.distribution import SnapshotCache
from knotwork.kernel import Hooks, make_plugin_manager
from knotwork.proxyconfig import (
    Cluster,
    EndpointSet,
    LbEndpoint,
    Listener,
    ProxySnapshot,
    Route,
    RouteAction,
    RouteTable,
    VirtualHost,
    WeightedCluster,
)

__all__ = ["SERVICE", "MiniControlPlane", "inbound_snapshot", "outbound_snapshot"]

#: The service every request is for; wrk sends it as the Host header through the mesh hop.
SERVICE = "upstream.bench.svc.cluster.local"
SERVICE_PORT = 80
LOOPBACK = "127.0.0.1"


def _default_route(cluster: str) -> Route:
    return Route(name="default", action=RouteAction(clusters=(WeightedCluster(cluster),)))


def inbound_snapshot(listen_port: int, app_ports: tuple[int, ...]) -> ProxySnapshot:
    """A sidecar's server side, as the routing plugin compiles it: an ``inbound``
    listener, route table ``inbound|80`` (``*`` → the local app), cluster ``inbound|80||``."""
    cluster = f"inbound|{SERVICE_PORT}||"
    table = f"inbound|{SERVICE_PORT}"
    snap = ProxySnapshot.build([
        Cluster(name=cluster, service=SERVICE, port=SERVICE_PORT),
        EndpointSet(name=cluster, endpoints=tuple(LbEndpoint(address=LOOPBACK, port=p) for p in app_ports)),
        RouteTable(name=table, virtual_hosts=(VirtualHost(name=table, domains=("*",), routes=(_default_route(cluster),)),)),
        Listener(name=table, address=LOOPBACK, port=listen_port, mode="inbound", route_table=table),
    ])
    snap.check()
    return snap


def outbound_snapshot(listen_port: int, next_hop_port: int, mode: str = "gateway") -> ProxySnapshot:
    """A sidecar's client side: a listener (``gateway`` routing by Host, or the app's
    ``http_proxy``), route table ``outbound`` with one virtual host for :data:`SERVICE`,
    cluster ``outbound|80||SERVICE`` whose endpoint is the next sidecar's inbound listener."""
    cluster = f"outbound|{SERVICE_PORT}||{SERVICE}"
    short = SERVICE.split(".")[0]
    domains = (SERVICE, f"{SERVICE}:{SERVICE_PORT}", short, f"{short}:{SERVICE_PORT}")
    snap = ProxySnapshot.build([
        Cluster(name=cluster, service=SERVICE, port=SERVICE_PORT),
        EndpointSet(name=cluster, endpoints=(LbEndpoint(address=LOOPBACK, port=next_hop_port),)),
        RouteTable(name="outbound", virtual_hosts=(
            VirtualHost(name=f"{SERVICE}:{SERVICE_PORT}", domains=domains, routes=(_default_route(cluster),)),
        )),
        Listener(name=mode, address=LOOPBACK, port=listen_port, mode=mode, route_table="outbound"),
    ])
    snap.check()
    return snap


class MiniControlPlane:
    """A SnapshotCache served by an engine's distribution server, in this process."""

    def __init__(self, engine: str, listen_port: int, state_dir: Path) -> None:
        self.hooks = Hooks(make_plugin_manager())
        registry = self.hooks.registry()
        engines = registry["proxy_engines"]
        if engine not in engines:
            raise SystemExit(f"bench: proxy engine {engine!r} is not installed (installed: {', '.join(sorted(engines))})")
        self.engine = engines[engine]
        self.cache = SnapshotCache()
        self.address = f"{LOOPBACK}:{listen_port}"
        settings = self.engine.settings() if self.engine.settings is not None else None
        ctx = ComponentContext(mesh=MeshSettings(), settings=settings, mesh_dir=state_dir, state_dir=state_dir,
                               options={"listen": self.address})
        self.server: Any = self.engine.control_server(ctx, self.cache)

    def strategies(self) -> dict[str, list[str]]:
        """Installed strategy names by kind (what proxies can load through entry points)."""
        return {kind: sorted(recs) for kind, recs in self.hooks.strategies().items()}

    async def start(self, tg: TaskGroup) -> None:
        await tg.start(self.server.run)

    def publish(self, node_id: str, snapshot: ProxySnapshot) -> None:
        """Store a node's snapshot and wake its stream (the control plane's push)."""
        self.cache.set(node_id, snapshot)
        self.cache.notify()
