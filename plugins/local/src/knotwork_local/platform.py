"""The `local` platform component, run inside the control plane.

It connects to the unix socket `knotwork up` serves (``.knotwork/platform.sock``),
reads one JSON state document per line (the full state on connect, then again
on every change) and pushes a whole :class:`~knotwork.model.PlatformSnapshot`
built from each. Without a running `up` it waits: the snapshot is never
synced, so the control plane serves no config, which is right. It also keeps
the book of the proxies' bootstrap credentials that the plugin's
``knotwork_attest_workload`` hook redeems (see :mod:`knotwork_local.credentials`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from knotwork.model import (
    Endpoint,
    Identity,
    MeshSettings,
    PlatformSnapshot,
    ProxyNode,
    Resource,
    Service,
    ServicePort,
    SourceRef,
    Workload,
    port_protocol,
)
from knotwork.records import ComponentContext

from . import credentials
from .state import PLATFORM_SOCKET, SCHEMA

__all__ = ["GATEWAY_LABELS", "LocalPlatform", "build_snapshot", "gateway_identity", "ingress_resources"]

log = structlog.get_logger("knotwork.local", plugin="local")

PLATFORM = "local"
GATEWAY_NODE = "gateway~ingress"
GATEWAY_WORKLOAD = "ingress"
GATEWAY_ACCOUNT = "knotwork-ingressgateway"
GATEWAY_LABELS = {"istio": "ingressgateway", "app": "knotwork-ingressgateway"}
MAX_LINE = 64 * 1024 * 1024
RETRY = 0.1


def _fqdn(service: str, namespace: str, mesh: MeshSettings) -> str:
    return f"{service}.{namespace}.svc.{mesh.domain}"


def ingress_resources(routes: Iterable[dict[str, Any]], mesh: MeshSettings, mesh_file: str = "") -> tuple[Resource, ...]:
    """The ingress sugar as Istio resources: Gateway `ingress` and, with routes, VirtualService `ingress`."""
    ns = mesh.root_namespace
    gateway = Resource(
        api_version="networking.istio.io/v1", kind="Gateway", name="ingress", namespace=ns,
        spec={"selector": {"istio": "ingressgateway"},
              "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]},
        source=SourceRef(mesh_file),
    )
    routes = list(routes)
    if not routes:
        return (gateway,)
    http = [{"match": [{"uri": dict(r["match"])}],
             "route": [{"destination": {"host": r["host"], "port": {"number": r["port"]}}}]} for r in routes]
    first = routes[0]
    virtual_service = Resource(
        api_version="networking.istio.io/v1", kind="VirtualService", name="ingress", namespace=ns,
        spec={"hosts": ["*"], "gateways": [f"{ns}/ingress"], "http": http},
        source=SourceRef(first.get("file") or mesh_file, first.get("line") or 0),
    )
    return gateway, virtual_service


def gateway_identity(mesh: MeshSettings) -> str:
    """The ingress gateway's SPIFFE ID: service account `knotwork-ingressgateway` of the root namespace."""
    return Identity(mesh.trust_domain, mesh.root_namespace, GATEWAY_ACCOUNT).spiffe_id


def build_snapshot(doc: dict[str, Any], mesh: MeshSettings, version: int) -> PlatformSnapshot:
    """The platform snapshot of one state document (see README for its schema). Pure."""
    workloads = {w["name"]: w for w in doc.get("workloads", ())}
    services: dict[tuple[str, str], dict[int, ServicePort]] = {}
    for w in workloads.values():
        ports = services.setdefault((w["service"], w["namespace"]), {})
        for p in w["ports"]:
            ports.setdefault(p["port"], ServicePort(p["port"], p["name"], port_protocol(p["name"], p["protocol"] or None),
                                                    target_port=p["port"]))
    endpoints: list[Endpoint] = []
    proxies: list[ProxyNode] = []
    for inst in doc.get("instances", ()):
        w = workloads.get(inst["workload"])
        if w is None:
            continue
        identity = Identity(mesh.trust_domain, w["namespace"], w["service_account"]).spiffe_id
        labels = dict(w["labels"])
        healthy = bool(inst["running"] and inst["ready"] and inst["sidecar"]["ready"])
        ports = inst["ports"]
        for p in w["ports"]:
            endpoints.append(Endpoint(
                service=_fqdn(w["service"], w["namespace"], mesh), service_port=p["port"], address="127.0.0.1",
                port=ports[f"inbound:{p['port']}"], labels=labels, healthy=healthy, identity=identity,
                workload=w["name"], instance=inst["instance"],
            ))
        proxies.append(ProxyNode(
            id=inst["node"], kind="sidecar", workload=w["name"], namespace=w["namespace"], labels=labels,
            identity=identity, address="127.0.0.1", ports=dict(ports),
            metadata={"service": w["service"], "instance": inst["instance"]},
        ))
    gw = doc.get("gateway")
    ns = mesh.root_namespace
    extra_workloads: list[Workload] = []
    if gw:
        proxies.append(ProxyNode(
            id=gw.get("node", GATEWAY_NODE), kind="gateway", workload=GATEWAY_WORKLOAD, namespace=ns,
            labels=dict(GATEWAY_LABELS), identity=gateway_identity(mesh),
            address="127.0.0.1", ports=dict(gw["ports"]), metadata={"instance": GATEWAY_WORKLOAD},
        ))
        extra_workloads.append(Workload(GATEWAY_WORKLOAD, ns, GATEWAY_ACCOUNT, dict(GATEWAY_LABELS)))
    return PlatformSnapshot(
        platform=PLATFORM, version=version,
        services=tuple(Service(name, namespace, tuple(sorted(ports.values(), key=lambda p: p.port)))
                       for (name, namespace), ports in sorted(services.items())),
        endpoints=tuple(endpoints),
        workloads=tuple(Workload(w["name"], w["namespace"], w["service_account"], dict(w["labels"]))
                        for w in workloads.values()) + tuple(extra_workloads),
        proxies=tuple(proxies),
        resources=ingress_resources(doc.get("routes", ()), mesh, doc.get("mesh", "")) if gw else (),
        synced=True,
    )


class LocalPlatform:
    """Follows `up`'s state socket and pushes a snapshot per change; keeps the credential book."""

    def __init__(self, ctx: ComponentContext) -> None:
        self.ctx = ctx
        self.path = ctx.state_dir / PLATFORM_SOCKET
        self.version = 0
        self.last: PlatformSnapshot | None = None
        self.book = credentials.CredentialBook(ctx.state_dir / credentials.REDEEMED_FILE)

    async def run(self, send: Any, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with credentials.registered(self.book):
            await self._run(send, task_status)

    async def _run(self, send: Any, task_status: TaskStatus[None]) -> None:
        task_status.started()
        waiting_logged = False
        async with send:
            while True:
                try:
                    stream = await anyio.connect_unix(self.path)
                except OSError:
                    if not waiting_logged:
                        log.info("waiting for knotwork up's platform socket", path=str(self.path))
                        waiting_logged = True
                    await anyio.sleep(RETRY)
                    continue
                log.info("following knotwork up", path=str(self.path))
                async with stream:
                    await self._follow(BufferedByteReceiveStream(stream), send)
                log.warning("knotwork up's platform socket closed; keeping the last snapshot")
                waiting_logged = False
                await anyio.sleep(RETRY)

    async def _follow(self, lines: BufferedByteReceiveStream, send: Any) -> None:
        while True:
            try:
                line = await lines.receive_until(b"\n", MAX_LINE)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.DelimiterNotFound):
                return
            try:
                doc = json.loads(line)
                if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
                    raise ValueError(f"expected a state document of schema {SCHEMA}, got {str(doc)[:80]}")
                # versions follow up's state generations, so up can tell when a change got here
                snapshot = build_snapshot(doc, self.ctx.mesh, max(self.version + 1, doc.get("generation", 0)))
                self.book.update(doc)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.error("bad state document from knotwork up; ignored", error=repr(exc))
                continue
            self.version = snapshot.version
            self.last = snapshot
            await send.send(snapshot)
