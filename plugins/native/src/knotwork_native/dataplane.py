"""The native engine's data plane: listeners bound from a built config.

The control-plane client calls :meth:`DataPlane.build` for each received
config (the NACK point) and :meth:`DataPlane.apply` to swap it in; the entry
point calls :meth:`DataPlane.drain` and :meth:`DataPlane.aclose` on the way out.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping
from typing import Any

from knotwork.records import ProxyContext

from .http1 import DownstreamProtocol
from . import tracing
from .inbound_tls import MeshAcceptor
from .mesh_tls import MeshIdentity
from .runtime import ListenerRuntime, Runtime, Shared, install_event_loop
from .runtime_build import build_runtime
from .tcp import TcpListenerProtocol
from .upstream import Pools

__all__ = ["DataPlane", "ListenerSlot", "install_event_loop"]

_DRAINED_MODES = frozenset({"inbound", "gateway"})


def _match_key(lrt: ListenerRuntime) -> tuple[Any, ...]:
    """Listeners with equal keys are kept across configs: address, port, mode,
    protocol (and the name, for listeners on an ephemeral port)."""
    return lrt.key if lrt.listener.port else (*lrt.key, lrt.name)


class ListenerSlot:
    """A bound listener; its runtime is swapped when a new config keeps it."""

    __slots__ = ("connections", "draining", "match_key", "name", "overwrite_xfp", "port", "rt", "server", "source_labels")

    def __init__(self, rt: ListenerRuntime, source_labels: Mapping[str, str]) -> None:
        self.rt = rt
        self.name = rt.name
        self.match_key = _match_key(rt)
        self.server: asyncio.AbstractServer | None = None
        self.port = rt.listener.port  # the bound port (differs when the config says 0)
        self.connections: set[Any] = set()
        self.draining = False
        mode = rt.listener.mode
        self.overwrite_xfp = mode == "gateway"
        self.source_labels = dict(source_labels) if mode in ("outbound", "http_proxy") else {}

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    def close_connections(self) -> None:
        for conn in list(self.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.close()


class DataPlane:
    """Listeners, route/cluster lookups and upstream pools of one proxy."""

    def __init__(
        self,
        ctx: ProxyContext,
        *,
        node_id: str,
        known_extensions: frozenset[str] = frozenset(),
        source_labels: Mapping[str, str] | None = None,
        identity: Any = None,
    ) -> None:
        """`known_extensions`: extension names this engine carries out (others are NACKed);
        `source_labels`: the local workload's labels, seen by strategies on outbound requests;
        `identity`: the proxy's :class:`~knotwork.identity.WorkloadIdentity` (None: no mesh mTLS)."""
        self.ctx = ctx
        #: the proxy's SVID as TLS contexts, rebuilt on each renewal (None: no workload identity)
        self.mesh = MeshIdentity(identity) if identity is not None else None
        self.node_id = node_id
        self.known_extensions = known_extensions
        self.source_labels = dict(source_labels or {})
        settings = ctx.settings
        #: seconds an idle keep-alive connection (downstream or pooled upstream) is kept
        self.idle_timeout: float = getattr(settings, "idle_timeout", 60.0)
        #: seconds a PERMISSIVE listener waits for a connection's first bytes before serving it as plaintext
        self.peek_timeout: float = getattr(settings, "peek_timeout", 5.0)
        self.stats: collections.Counter[str] = collections.Counter()
        self.shared = Shared(None, None, self.stats)  # type: ignore[arg-type]
        self.pools = Pools(self.stats, None, getattr(settings, "max_idle_per_endpoint", 128), self.shared)  # type: ignore[arg-type]
        self.shared.pools = self.pools
        self._sweeper: asyncio.Task[None] | None = None
        self.runtime: Runtime | None = None
        self.slots: dict[str, ListenerSlot] = {}
        self.ready = False
        self.draining = False
        self.min_clusters_since_ready: int | None = None
        self.applied = 0
        self._retired: list[ListenerSlot] = []
        self._lock = asyncio.Lock()
        self._closed = False

    # ── config ───────────────────────────────────────────────────────────
    def build(self, resources: Mapping[str, Mapping[str, Any]]) -> Runtime:
        """Validate and build the per-request objects of a config.

        Raises ConsistencyError when references do not resolve yet (wait for
        more types), ValueError naming resource and field when it is invalid (NACK).
        """
        return build_runtime(self.ctx, resources, self.runtime, self.known_extensions, self.mesh)

    async def apply(self, runtime: Runtime) -> None:
        """Swap in `runtime`: bind new listeners, close removed ones, keep unchanged ones.

        Raises ValueError (nothing changed) when a new listener cannot bind.
        """
        async with self._lock:
            if self._closed:
                raise RuntimeError("data plane is closed")
            loop = asyncio.get_running_loop()
            self.shared.loop = self.pools.loop = loop
            old_by_key = {slot.match_key: slot for slot in self.slots.values()}
            kept: dict[str, ListenerSlot] = {}
            added: list[ListenerRuntime] = []
            for name, lrt in runtime.listeners.items():
                slot = old_by_key.pop(_match_key(lrt), None)
                if slot is not None:
                    kept[name] = slot
                else:
                    added.append(lrt)
            removed = list(old_by_key.values())
            busy = {(s.rt.listener.address, s.port) for s in removed}
            first = [lrt for lrt in added if (lrt.listener.address, lrt.listener.port) not in busy]
            later = [lrt for lrt in added if (lrt.listener.address, lrt.listener.port) in busy]
            bound: dict[str, ListenerSlot] = {}
            try:
                for lrt in first:
                    bound[lrt.name] = await self._bind(lrt)
            except ValueError:
                for slot in bound.values():
                    slot.stop_accepting()
                raise
            # commit: from here on the new config is live
            for slot in removed:
                self._retire(slot)
            for lrt in later:
                bound[lrt.name] = await self._bind(lrt)
            for name, slot in kept.items():
                lrt = runtime.listeners[name]
                slot.rt, slot.name = lrt, name
            for crt in runtime.clusters.values():
                if crt.pending_update:
                    crt.balancer.update(crt.endpoints)
                    crt.pending_update = False
            self.slots = {**kept, **bound}
            self.runtime = runtime
            self.pools.keep_only(runtime.endpoint_keys())
            self.applied += 1
            count = len(runtime.clusters)
            low = self.min_clusters_since_ready
            self.min_clusters_since_ready = count if low is None else min(low, count)
            self.ready = True
            if self._sweeper is None:
                self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Close keep-alive connections idle for about `idle_timeout` (checked 4 times per timeout)."""
        shared = self.shared
        while True:
            await asyncio.sleep(self.idle_timeout / 4)
            shared.tick += 1
            before = shared.tick - 4
            for pool in list(self.pools.values()):
                pool.close_idle(before)
            for slot in [*self.slots.values(), *self._retired]:
                for conn in list(slot.connections):
                    conn.close_idle(before)

    async def _bind(self, lrt: ListenerRuntime) -> ListenerSlot:
        slot = ListenerSlot(lrt, self.source_labels)
        lis = lrt.listener
        shared = self.shared
        if lis.protocol == "tcp":
            def factory() -> asyncio.Protocol:
                return TcpListenerProtocol(slot, shared)
        else:
            def factory() -> asyncio.Protocol:
                return DownstreamProtocol(slot, shared)
        try:
            if lrt.mtls is not None:  # mesh mTLS: sockets accepted and peeked at before a transport reads (see .inbound_tls)
                server: Any = MeshAcceptor(shared.loop, lis.address, lis.port, slot, factory, self.stats, self.peek_timeout)
            else:
                # TLS: one listening context whose SNI callback follows the slot's current runtime (see .downstream_tls)
                ssl_context = lrt.tls.listening_context(lambda: slot.rt.tls) if lrt.tls is not None else None
                server = await shared.loop.create_server(factory, lis.address, lis.port, reuse_address=True, backlog=1024,
                                                         ssl=ssl_context)
        except OSError as exc:
            raise ValueError(f"listener {lis.name!r}: cannot listen on {lis.address}:{lis.port}: {exc.strerror or exc}") from exc
        slot.server = server
        slot.port = server.sockets[0].getsockname()[1]
        return slot

    def _retire(self, slot: ListenerSlot) -> None:
        """Stop accepting; idle connections close now, busy ones after their response."""
        slot.stop_accepting()
        slot.draining = True
        for conn in list(slot.connections):
            conn.close_idle()
        if slot.connections:
            self._retired.append(slot)
        self._retired = [s for s in self._retired if s.connections]

    # ── shutdown ─────────────────────────────────────────────────────────
    async def drain(self, timeout: float) -> None:
        """Stop accepting on inbound/gateway listeners, finish in-flight requests
        (up to `timeout` seconds; responses say ``connection: close``), then close all."""
        self.draining = True
        for slot in self.slots.values():
            if slot.rt.listener.mode in _DRAINED_MODES:
                slot.draining = True
                slot.stop_accepting()
        shared = self.shared
        if shared.inflight > 0:
            shared.idle = asyncio.Event()
            try:
                await asyncio.wait_for(shared.idle.wait(), timeout)
            except TimeoutError:
                pass
            finally:
                shared.idle = None
        await self.aclose()

    async def aclose(self) -> None:
        """Close every listener, connection and pooled upstream connection."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for slot in [*self.slots.values(), *self._retired]:
            slot.stop_accepting()
            slot.close_connections()
        self._retired = []
        self.pools.close()
        await asyncio.sleep(0)  # let transports run their close callbacks
        await tracing.shutdown()  # spans recorded so far are exported (off the event loop, bounded)

    # ── introspection ────────────────────────────────────────────────────
    def status(self) -> dict[str, Any]:
        """A JSON-able summary for the admin endpoint."""
        rt = self.runtime
        clusters = rt.clusters if rt is not None else {}
        shared = self.shared
        return {
            "node_id": self.node_id,
            "ready": self.ready,
            "draining": self.draining,
            "configs_applied": self.applied,
            "listeners": [
                {
                    "name": name, "address": slot.rt.listener.address, "port": slot.port,
                    "configured_port": slot.rt.listener.port, "mode": slot.rt.listener.mode,
                    "protocol": slot.rt.listener.protocol, "connections": len(slot.connections),
                    "tls": slot.rt.tls is not None,
                    "mtls": slot.rt.mtls.mode if slot.rt.mtls is not None else None,
                }
                for name, slot in sorted(self.slots.items())
            ],
            "clusters": len(clusters),
            "min_clusters_since_ready": self.min_clusters_since_ready,
            "endpoints": {
                name: {"total": len(c.endpoints), "healthy": c.healthy, "requests": c.rq_total}
                for name, c in sorted(clusters.items())
            },
            "requests": shared.requests,
            "in_flight": shared.inflight,
            "responses": {f"{i}xx": n for i, n in enumerate(shared.codes) if i and n},
            "response_flags": dict(sorted(shared.flag_counts.items())),
            "upstream_cx_active": self.stats["upstream_cx_active"],
            "upstream_cx_idle": self.pools.idle_count(),
            "last_internal_error": shared.last_error,
            "mesh_identity": self.mesh.status() if self.mesh is not None else None,
        }

    def stats_text(self) -> str:
        """Plain-text counters, one ``name value`` per line (for ``/stats``)."""
        shared = self.shared
        lines = [f"{k} {v}" for k, v in sorted(self.stats.items())]
        lines += [f"downstream_rq_{i}xx {n}" for i, n in enumerate(shared.codes) if i]
        lines += [f"response_flag_{k} {v}" for k, v in sorted(shared.flag_counts.items())]
        lines.append(f"downstream_rq_total {shared.requests}")
        lines.append(f"downstream_rq_active {shared.inflight}")
        lines.append(f"upstream_cx_idle {self.pools.idle_count()}")
        rt = self.runtime
        for name, crt in sorted((rt.clusters if rt else {}).items()):
            lines.append(f'cluster_upstream_rq_total{{cluster="{name}"}} {crt.rq_total}')
            lines.append(f'cluster_endpoints_healthy{{cluster="{name}"}} {crt.healthy}')
        return "\n".join(lines) + "\n"

    def port_of(self, listener: str) -> int:
        """The bound port of a listener (useful when the config asked for port 0)."""
        return self.slots[listener].port
