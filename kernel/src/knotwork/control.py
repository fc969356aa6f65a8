"""The control plane: platforms in, compiled per-proxy snapshots out.

Platforms and config sources push whole :class:`~knotwork.model.PlatformSnapshot`
objects into one stream. The control plane keeps the latest per source,
debounces, and once every source has reported a full sync compiles every
proxy's config with the selected plugins' compilers, checks it, and hands it
to the engine's distribution server through a :class:`SnapshotCache`. A proxy
whose compile fails keeps its last good snapshot. The admin socket (grpclib,
JSON, a 0600 unix socket in the state directory) answers the CLI.

With a certificate authority selected, the control plane also serves the
certificate service (:mod:`knotwork.identity`) on `ca_listen`, writes the
trust bundle to the state directory for proxies to verify it by, and holds
an SVID of its own: the engine's distribution server then requires mTLS,
and a proxy may only stream the config of a node whose identity its SVID
proves (no node-id spoofing).

Metrics: :class:`~knotwork.control_metrics.ControlMetrics` (``knotwork_control_*``, Prometheus text) is
served over HTTP at ``GET /metrics`` on `metrics_listen` (else the
``KNOTWORK_METRICS_LISTEN`` environment variable, else a free loopback port;
the bound address is in the admin ``status`` reply).
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import attrs
import structlog
from anyio.abc import TaskStatus
from grpclib.server import Server
from prometheus_client.core import CollectorRegistry

from .config import Mesh
from .control_metrics import ControlMetrics, serve_metrics
from .distribution import SnapshotCache
from .identity import CertificateServer
from .kernel import Hooks
from .model import PlatformSnapshot, Resource, SourceRef
from .proxyconfig import TYPE_ORDER, ProxySnapshot, SnapshotBuilder, wire
from .records import CompileInput, Compiler, ComponentContext
from .wire import JSONCodec, JsonService, serving, unary

__all__ = ["METRICS_LISTEN_ENV", "ControlPlane", "compile_proxy"]

log = structlog.get_logger("knotwork.control")
DEBOUNCE = 0.02
#: Where the control plane serves ``/metrics`` when the caller names no address (``HOST:PORT``).
METRICS_LISTEN_ENV = "KNOTWORK_METRICS_LISTEN"


def compile_proxy(compilers: Iterable[Compiler], inp: CompileInput) -> ProxySnapshot:
    """Run `compilers` (already in run order) for one proxy and return its checked snapshot.

    Each compiler writes only its declared slots (:class:`~knotwork.proxyconfig.SlotError`
    otherwise); the result passes :meth:`~knotwork.proxyconfig.ProxySnapshot.check`
    (:class:`~knotwork.proxyconfig.ConsistencyError` otherwise). The control plane
    and :func:`knotwork.testing.compile_node` both compile through here.
    """
    builder = SnapshotBuilder()
    for compiler in compilers:
        compiler.compile(builder.as_compiler(compiler.name, compiler.slots), inp)
    return builder.snapshot()


def _problem(exc: Exception) -> str:
    """A trial compile's failure as one line: ``FILE: Kind/ns/name: field: problem`` when the
    compiler named the resource (``resource``, ``field`` and ``problem`` attributes), else its message."""
    resource, field, problem = (getattr(exc, a, None) for a in ("resource", "field", "problem"))
    if resource is not None and field and problem:
        source = getattr(resource, "source", None)
        return f"{getattr(source, 'file', '') or '-'}: {resource}: {field}: {problem}"
    return f"(compile): {type(exc).__name__}: {exc}"


class ControlPlane:
    """Runs platforms, compiles, distributes. One per mesh."""

    def __init__(self, mesh: Mesh, hooks: Hooks, *, listen: str = "127.0.0.1:0", ca_listen: str = "127.0.0.1:0",
                 metrics_listen: str | None = None) -> None:
        self.mesh, self.hooks, self.listen, self.ca_listen = mesh, hooks, listen, ca_listen
        self.metrics_listen = metrics_listen or os.environ.get(METRICS_LISTEN_ENV) or "127.0.0.1:0"
        self.metrics_address: tuple[str, int] | None = None
        self.certificates: CertificateServer | None = None
        self.cache = SnapshotCache()
        self.sources: dict[str, PlatformSnapshot] = {}
        self.expected: set[str] = set()
        self.version = 0
        self.pushes = 0
        self.compile_errors: dict[str, str] = {}
        self.started = time.time()
        # counters, exported at scrape time by ControlMetrics
        self.failed_compiles = 0
        self.rejections: Counter[str] = Counter()  # source -> changes its config source refused
        self.snapshots_received: Counter[str] = Counter()  # source -> platform snapshots
        self.registry_events: Counter[tuple[str, str]] = Counter()  # (services|endpoints|configs, add|update|delete)
        self.metrics = CollectorRegistry()
        self.metrics.register(ControlMetrics(self))
        selected = {r.plugin for kind, recs in hooks.registry().items() for r in recs.values()
                    if r.name in self._selected_names()}
        self.compilers = hooks.compilers(plugins=selected | set(mesh.plugins.extra))
        log.info("compile order", compilers=[f"{c.area}/{c.name}" for c in self.compilers])

    def _selected_names(self) -> set[str]:
        names: set[str] = set()
        for role in ("platform", "engine", "certificate_authority", "router", "load_balancer",
                     "config_sources", "authenticators", "authorizers", "telemetry"):
            names.update(self.mesh.selected(role))
        return names

    def context(self, name: str, **options: Any) -> ComponentContext:
        return ComponentContext(
            mesh=self.mesh.mesh, settings=self.mesh.settings.get(name), mesh_dir=self.mesh.dir,
            state_dir=self.mesh.state_dir, selection=self.mesh.selection_map(), options=options,
            validate=self.validate, rejected=self._rejected,
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        reg = self.hooks.registry()
        send, receive = anyio.create_memory_object_stream[PlatformSnapshot](64)
        async with anyio.create_task_group() as tg:
            engine = reg["proxy_engines"][self.mesh.plugins.engine]
            secure: dict[str, Any] = {}
            if self.mesh.plugins.certificate_authority:
                record = reg["certificate_authorities"][self.mesh.plugins.certificate_authority]
                self.certificates = CertificateServer(
                    record.factory(self.context(record.name)), self.hooks.attest_workload, self.mesh.mesh,
                    self.mesh.state_dir, self.ca_listen, also_serving=(self.listen,))
                await tg.start(self.certificates.run)
                secure = {"ssl": self.certificates.server_tls(require_client=True), "authorize": self.authorize_node}
            options = {"listen": self.listen, "telemetry_strategies": reg["telemetry"], **secure}
            server = engine.control_server(self.context(engine.name, **options), self.cache)
            await tg.start(server.run)
            await tg.start(self._serve_admin)
            await tg.start(self._serve_metrics)
            tg.start_soon(self._merge, receive)
            for role, kind in (("platform", "platforms"), ("config_sources", "config_sources")):
                for name in self.mesh.selected(role):
                    if name not in reg[kind]:  # a default config source that is not installed
                        continue
                    self.expected.add(name)
                    component = reg[kind][name].factory(self.context(name))
                    await tg.start(component.run, send.clone())
            log.info("control plane started", engine=engine.name, sources=sorted(self.expected))
            task_status.started()

    # -- identity -----------------------------------------------------------
    def authorize_node(self, node_id: str, peer_id: str | None) -> str | None:
        """Why a caller proven as `peer_id` may not stream node `node_id`'s config (None: it may)."""
        if peer_id is None:
            return "no client certificate: the config stream needs the proxy's SVID"
        nodes = [n for p in self.sources.values() for n in p.proxies if n.id == node_id]
        if not nodes:
            return f"no proxy {node_id!r} is known"
        if nodes[0].identity != peer_id:
            return f"node {node_id!r} runs as {nodes[0].identity}, not {peer_id}"
        return None

    async def _merge(self, receive: Any) -> None:
        async with receive:
            while True:
                self._received(await receive.receive())
                with anyio.move_on_after(DEBOUNCE):
                    while True:
                        self._received(await receive.receive())
                if not all(s in self.sources and self.sources[s].synced for s in self.expected):
                    log.info("waiting for first full sync", have=sorted(self.sources))
                    continue
                self.publish()

    def _received(self, snap: PlatformSnapshot) -> None:
        """Keep `snap` as its source's latest; count it and what changed against the one before."""
        old = self.sources.get(snap.platform) or PlatformSnapshot(platform=snap.platform, version=0)
        self.sources[snap.platform] = snap
        self.snapshots_received[snap.platform] += 1
        for kind, key, before, after in (
                ("services", lambda s: (s.namespace, s.name), old.services, snap.services),
                ("endpoints", lambda e: (e.service, e.service_port, e.address, e.port), old.endpoints, snap.endpoints),
                ("configs", lambda r: (r.kind, r.namespace, r.name), old.resources, snap.resources)):
            if before == after:
                continue
            was, now = {key(x): x for x in before}, {key(x): x for x in after}
            self.registry_events[(kind, "add")] += len(now.keys() - was.keys())
            self.registry_events[(kind, "delete")] += len(was.keys() - now.keys())
            self.registry_events[(kind, "update")] += sum(1 for k in now.keys() & was.keys() if now[k] != was[k])

    def _inputs(self, sources: dict[str, PlatformSnapshot]) -> Iterable[CompileInput]:
        """One compile input per proxy of `sources`."""
        snaps = list(sources.values())
        services = tuple(s for p in snaps for s in p.services)
        endpoints: dict[tuple[str, int], list[Any]] = defaultdict(list)
        for p in snaps:
            for ep in p.endpoints:
                endpoints[(ep.service, ep.service_port)].append(ep)
        resources: dict[str, list[Any]] = defaultdict(list)
        for p in snaps:
            for r in p.resources:
                resources[r.kind].append(r)
        proxies = tuple(n for p in snaps for n in p.proxies)
        workloads = tuple(w for p in snaps for w in p.workloads)
        frozen_eps = {k: tuple(v) for k, v in endpoints.items()}
        frozen_res = {k: tuple(v) for k, v in resources.items()}
        for node in proxies:
            yield CompileInput(self.mesh.mesh, node, services, frozen_eps, frozen_res,
                               self.mesh.selection_map(), workloads, proxies, mesh_dir=Path(self.mesh.dir))

    def validate(self, source: str, resources: tuple[Any, ...]) -> list[str]:
        """Problems if `source` held `resources`: every proxy compiled in a trial run, nothing published.

        A proxy failing with the very error it fails with today does not
        count: the change did not cause it.
        """
        sources = dict(self.sources)
        current = sources.get(source)
        sources[source] = (attrs.evolve(current, resources=tuple(resources)) if current is not None
                           else PlatformSnapshot(platform=source, version=0, resources=tuple(resources), synced=True))
        problems: set[str] = set()
        for inp in self._inputs(sources):
            try:
                compile_proxy(self.compilers, inp)
            except Exception as exc:  # noqa: BLE001 - every compile failure is a problem to report
                if self.compile_errors.get(inp.node.id) != f"{type(exc).__name__}: {exc}":
                    problems.add(_problem(exc))
        return sorted(problems)

    def _rejected(self, source: str, problems: list[str]) -> None:
        """A config source refused a change whole (``knotwork_control_config_rejections_total``)."""
        self.rejections[source] += 1

    def publish(self) -> None:
        """Compile every proxy and publish the snapshots that changed."""
        started = time.perf_counter()
        changed, counts, compiled = [], dict.fromkeys(TYPE_ORDER, 0), 0
        for inp in self._inputs(self.sources):
            node = inp.node
            compiled += 1
            try:
                snapshot = compile_proxy(self.compilers, inp)
            except Exception as exc:  # noqa: BLE001 - a failed compile keeps the last good config
                self.compile_errors[node.id] = f"{type(exc).__name__}: {exc}"
                self.failed_compiles += 1
                log.error("compile failed; proxy keeps its last good config", node=node.id, error=str(exc))
                continue
            self.compile_errors.pop(node.id, None)
            for t in TYPE_ORDER:
                counts[t] += snapshot.count(t)
            if self.cache.set(node.id, snapshot):
                changed.append(node.id)
        if changed:
            self.version += 1
            self.pushes += 1
            self.cache.notify()
            self.hooks.snapshot_published(str(self.version), changed, counts)
        log.info("compiled", proxies=compiled, changed=len(changed), version=self.version,
                 seconds=round(time.perf_counter() - started, 4))

    # -- admin socket -------------------------------------------------------
    async def _admin(self, request: dict) -> dict:
        method = request.get("method")
        if method == "proxy_status":
            return {"proxies": self.proxy_status()}
        if method == "proxies":
            return {"proxies": [{"id": n.id, "kind": n.kind, "workload": n.workload, "namespace": n.namespace,
                                 "address": n.address, "admin": n.ports.get("admin"),
                                 "instance": n.metadata.get("instance", "")}
                                for p in self.sources.values() for n in p.proxies]}
        if method == "status":
            return {"version": self.version, "pushes": self.pushes, "pid": os.getpid(), "uptime": time.time() - self.started,
                    "metrics": None if self.metrics_address is None else "%s:%d" % self.metrics_address,
                    "ca": self.certificates.status() if self.certificates else None,
                    "sources": {k: {"version": v.version, "synced": v.synced} for k, v in self.sources.items()},
                    "compile_errors": self.compile_errors}
        if method == "config":
            snap = self.cache.get(request.get("node", ""))
            return {"config": None if snap is None else {t: {n: wire.unstructure(r) for n, r in res.items()}
                                                         for t, res in snap.resources.items()}}
        if method == "registry":
            return self.registry()
        if method == "validate":  # a trial compile, e.g. for `knotwork analyze`: see validate()
            resources = tuple(Resource(
                api_version=str(r.get("apiVersion", "")), kind=str(r.get("kind", "")), name=str(r.get("name", "")),
                namespace=str(r.get("namespace", "default")), spec=r.get("spec") or {}, labels=r.get("labels") or {},
                source=SourceRef(str(r.get("file") or ""), int(r.get("line") or 0)),
            ) for r in request.get("resources") or ())
            return {"problems": self.validate(str(request.get("source", "")), resources)}
        return {"error": f"unknown method {method!r}"}

    def registry(self) -> dict:
        """What the sources know, read-only, for checks such as ``knotwork analyze``.

        Services with their FQDN and ports, the proxies (gateways carry the
        labels a Gateway's selector matches) and every source's resources.
        """
        domain = self.mesh.mesh.domain
        return {
            "services": [{"name": s.name, "namespace": s.namespace, "fqdn": s.fqdn(domain),
                          "ports": [{"port": sp.port, "name": sp.name, "protocol": str(sp.protocol)} for sp in s.ports]}
                         for p in self.sources.values() for s in p.services],
            "proxies": [{"id": n.id, "kind": n.kind, "workload": n.workload, "namespace": n.namespace,
                         "labels": dict(n.labels)} for p in self.sources.values() for n in p.proxies],
            "resources": [{"source": p.platform, "apiVersion": r.api_version, "kind": r.kind, "name": r.name,
                           "namespace": r.namespace, "labels": dict(r.labels), "spec": r.spec,
                           "file": r.source.file, "line": r.source.line}
                          for p in self.sources.values() for r in p.resources],
        }

    def proxy_status(self) -> list[dict]:
        """Per node and type: the latest version, what was sent, ACKed, NACKed.

        A type with no resources that was never sent has no latest version
        (nothing to be synced to): Envoy subscribes to SDS only once a
        resource names a secret.
        """
        rows = []
        for node in self.cache.nodes():
            snap = self.cache.get(node)
            st = self.cache.status.get(node)

            def latest(t: str, snap: ProxySnapshot | None = snap, st: Any = st) -> str | None:
                if snap is None or (not snap.count(t) and not (st and t in st.sent)):
                    return None
                return snap.type_version(t)

            rows.append({
                "node": node, "connected": self.cache.connected.get(node, 0) > 0, "version": snap.version if snap else None,
                "types": {t: {"latest": latest(t),
                              "sent": st.sent.get(t) if st else None, "acked": st.acked.get(t) if st else None,
                              "nacked": st.nacked.get(t) if st else None} for t in TYPE_ORDER},
            })
        return rows

    async def _serve_admin(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        server = Server([JsonService({"/knotwork.v1.Admin/Call": unary(self._admin)})], codec=JSONCodec())
        async with serving(server, path=Path(self.mesh.state_dir) / "control.sock"):
            task_status.started()
            await anyio.sleep_forever()

    # -- metrics (HTTP) -----------------------------------------------------
    async def _serve_metrics(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """``GET /metrics`` on `metrics_listen` (see :func:`knotwork.control_metrics.serve_metrics`)."""
        def bound(address: tuple[str, int]) -> None:
            self.metrics_address = address
            log.info("metrics listening", address="http://%s:%d/metrics" % address)

        await serve_metrics(self.metrics, self.metrics_listen, bound, task_status=task_status)


async def admin_call(state_dir: Path, method: str, **args: Any) -> dict:
    """Call the control plane's admin socket; raises OSError when it is not running."""
    from grpclib.client import Channel

    path = Path(state_dir) / "control.sock"
    if not path.exists():
        raise FileNotFoundError(f"no control plane socket at {path} (is the mesh running?)")
    channel = Channel(path=str(path), codec=JSONCodec())
    try:
        with anyio.fail_after(10):
            return await _unary(channel, {"method": method, **args})
    finally:
        channel.close()


async def _unary(channel: Any, request: dict) -> dict:
    from grpclib.const import Cardinality

    async with channel.request("/knotwork.v1.Admin/Call", Cardinality.UNARY_UNARY, dict, dict) as stream:
        await stream.send_message(request, end=True)
        reply = await stream.recv_message()
        return reply or {}
