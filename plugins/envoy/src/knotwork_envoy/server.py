"""The envoy engine's config distribution server: xDS ADS, state of the world.

One bidirectional gRPC stream per Envoy (grpclib, the ``envoy_data_plane``
service base). The first request names the node (Envoy sends it only once:
``set_node_on_first_message_only``). Versions, nonces, ACK/NACK and the push
order (CDS → EDS → LDS → RDS; removals last, reversed) are the kernel's
shared core (:class:`knotwork.distribution.AdsSession`); this module maps
Envoy's type URLs to the core's type keys, translates resources
(:mod:`knotwork_envoy.translate`) and packs them once per (type, name,
version) for every proxy (:class:`knotwork.distribution.ResourceCache`).

A resource that cannot be translated is logged with the reason and left out
of the response (Envoy keeps whatever it had under that name); it is retried
when its content changes.

With a certificate authority the control plane passes ``options["ssl"]``
(a server context requiring client certificates) and
``options["authorize"](node_id, peer_spiffe_id) -> reason | None``: the
server then serves TLS only, and a stream whose first request names a node
its client's SVID may not stream is ended with ``PERMISSION_DENIED`` and the
reason (no node-id spoofing).

Listener telemetry sinks run in the sidecar agent, fed from Envoy's access
log (see :mod:`knotwork_envoy.telemetry`); with ``options["telemetry_strategies"]``
(name → Strategy) the server warns about sinks that do not support Envoy.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from envoy_data_plane.envoy.service.discovery.v3 import (
    AggregatedDiscoveryServiceBase,
    DiscoveryRequest as XdsRequest,
    DiscoveryResponse,
)
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from knotwork.distribution import AdsSession, DiscoveryRequest, Push, ResourceCache, SnapshotCache, StreamStatus
from knotwork.identity import peer_spiffe_id
from knotwork.proxyconfig import (
    Cluster, EndpointSet, LbEndpoint, Listener, ProxySnapshot, Route, RouteAction, RouteTable, VirtualHost, WeightedCluster,
)
from knotwork.records import ComponentContext
from knotwork.wire import serving

from .httpio import parse_address
from .settings import EnvoySettings
from .translate import TYPE_KEYS, TYPE_URLS, TranslateOptions, TranslationError, pack

__all__ = ["ADS_METHOD", "EnvoyServer", "parse_address"]

log = structlog.get_logger("knotwork.envoy.server").bind(plugin="envoy")
ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def request_from_xds(req: XdsRequest, type_key: str) -> DiscoveryRequest:
    """The engine-neutral form of an Envoy request; any ``error_detail`` makes it a NACK."""
    error = None
    if req.error_detail is not None:
        error = req.error_detail.message or f"rejected (code {req.error_detail.code})"
    return DiscoveryRequest(
        type=type_key, version_info=req.version_info, response_nonce=req.response_nonce,
        resource_names=tuple(req.resource_names), error_detail=error,
    )


class _Server(Server):
    """grpclib's server, but :meth:`close` also closes the connections.

    grpclib stops listening and cancels the running streams, yet leaves the
    HTTP/2 connections open; Envoy then reopens its ADS stream on them and a
    stopped server keeps serving. (Private grpclib API, pinned by the tests.)
    """

    def __init__(self, handlers: list[Any]) -> None:
        super().__init__(handlers)
        self._protocols: weakref.WeakSet[Any] = weakref.WeakSet()

    def _protocol_factory(self) -> Any:
        protocol = super()._protocol_factory()
        self._protocols.add(protocol)
        return protocol

    def close(self) -> None:
        super().close()
        for protocol in list(self._protocols):
            processor = getattr(protocol, "processor", None)
            if processor is not None:
                processor.close("server closed")


def warm_up() -> None:
    """Translate and pack one small resource of each type (see :meth:`EnvoyServer.run`)."""
    samples = {
        "listeners": Listener(name="warm", address="127.0.0.1", port=1, mode="inbound", route_table="warm"),
        "routes": RouteTable(name="warm", virtual_hosts=(VirtualHost(name="warm", domains=("*",), routes=(
            Route(name="warm", action=RouteAction(clusters=(WeightedCluster("warm"),))),)),)),
        "clusters": Cluster(name="warm"),
        "endpoints": EndpointSet(name="warm", endpoints=(LbEndpoint("127.0.0.1", 1),)),
    }
    for type_key, resource in samples.items():
        bytes(DiscoveryResponse(resources=[pack(type_key, resource)], type_url=TYPE_URLS[type_key]))


class EnvoyServer(AggregatedDiscoveryServiceBase):
    """Serves every Envoy its snapshot from the control plane's cache over ADS."""

    def __init__(self, ctx: ComponentContext, cache: SnapshotCache) -> None:
        self.cache = cache
        self.listen = parse_address(str(ctx.options.get("listen", "127.0.0.1:0")))
        settings = ctx.settings if isinstance(ctx.settings, EnvoySettings) else EnvoySettings()
        self.options = TranslateOptions(server_name=settings.server_name, system_roots=settings.system_roots)
        self.ssl = ctx.options.get("ssl")
        self.authorize = ctx.options.get("authorize")
        #: the installed telemetry strategies (name → Strategy), when the control plane passes them
        self.telemetry: Mapping[str, Any] = ctx.options.get("telemetry_strategies") or {}
        self.refused = 0
        self.encoded = ResourceCache()
        self.address: tuple[str, int] | None = None
        #: (type, name) -> why the latest version of that resource could not be translated
        self.errors: dict[tuple[str, str], str] = {}
        self.responses = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # The first message of each type costs ~0.5 s (the API types build their validators
        # lazily): pay it now, off the loop, rather than on the first proxy's first response.
        await anyio.to_thread.run_sync(warm_up)
        server = _Server([self])
        async with serving(server, listen=self.listen, ssl=self.ssl) as self.address:
            log.info("xDS (ADS) server listening", address=f"{self.address[0]}:{self.address[1]}", tls=self.ssl is not None)
            task_status.started()
            await anyio.sleep_forever()

    # ── encoding ─────────────────────────────────────────────────────────
    def _encode(self, type_key: str, name: str, resource: Any, tunnels: bool = False, endpoints: Any = None) -> Any:
        try:
            packed = pack(type_key, resource, self.options, tunnels=tunnels, endpoints=endpoints)
        except TranslationError as exc:
            self.errors[(type_key, name)] = str(exc)
            log.error("resource cannot be translated to Envoy config; not sent", type=type_key, name=name, error=str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - a bug in one translator must not stop distribution
            self.errors[(type_key, name)] = f"{type(exc).__name__}: {exc}"
            log.exception("translation failed", type=type_key, name=name)
            return None
        self.errors.pop((type_key, name), None)
        if type_key == "listeners" and resource.telemetry:
            foreign = [s for s in resource.telemetry if not self._runs_on_envoy(s)]
            if foreign:
                log.warning("listener telemetry strategies that do not support Envoy; ignored", name=name,
                            telemetry=foreign)
        return packed

    def _runs_on_envoy(self, sink: str) -> bool:
        """Whether the telemetry strategy `sink` runs for Envoy (in the agent); unknown: assume so,
        the agent skips and reports what it cannot run."""
        record = self.telemetry.get(sink)
        return record is None or "envoy" in record.engines

    def response(self, push: Push, snap: ProxySnapshot) -> DiscoveryResponse:
        """The DiscoveryResponse of one planned push: the type's whole subscribed set."""
        versions = snap.versions[push.type]
        tunnels: set[str] = set()
        if push.type == "routes":  # tables behind the app's HTTP proxy also route CONNECT
            tunnels = {lis.route_table for lis in snap.resources["listeners"].values() if lis.mode == "http_proxy"}
        resources = []
        for name in sorted(push.resources):
            tunnel = name in tunnels
            # a dns cluster inlines its endpoint set (its version covers both, see ProxySnapshot.build)
            eps = snap.resources["endpoints"].get(name) if push.type == "clusters" else None
            packed = self.encoded.get((push.type, name, versions[name] + ("+connect" if tunnel else "")),
                                      lambda n=name, t=tunnel, e=eps: self._encode(push.type, n, push.resources[n], t, e))
            if packed is not None:
                resources.append(packed)
        self.responses += 1
        return DiscoveryResponse(version_info=push.version, resources=resources, type_url=TYPE_URLS[push.type],
                                 nonce=push.nonce)

    # ── the ADS stream ───────────────────────────────────────────────────
    def __mapping__(self) -> dict[str, Handler]:
        # the generated base hands the handler only the messages; ours needs the stream's peer certificate
        mapping = super().__mapping__()
        mapping[ADS_METHOD] = Handler(self._rpc_ads, Cardinality.STREAM_STREAM, XdsRequest, DiscoveryResponse)
        return mapping

    async def _rpc_ads(self, stream: Any) -> None:
        peer = peer_spiffe_id(stream.peer.cert()) if self.ssl is not None and stream.peer is not None else None
        async for response in self.stream_aggregated_resources(stream.__aiter__(), peer):
            await stream.send_message(response)

    def _check_peer(self, node: str, peer: str | None) -> None:
        """Raise PERMISSION_DENIED unless the client proven as `peer` may stream `node`'s config."""
        if self.authorize is None:
            return
        reason = self.authorize(node, peer)
        if reason:
            self.refused += 1
            log.warning("ADS stream refused", node=node, peer=peer, reason=reason)
            raise GRPCError(Status.PERMISSION_DENIED, reason)

    async def stream_aggregated_resources(self, messages: AsyncIterator[XdsRequest],
                                          peer: str | None = None) -> AsyncIterator[DiscoveryResponse]:
        """One Envoy's ADS stream; `peer` is the SPIFFE ID its client certificate proves (None: no TLS)."""
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        reader = asyncio.create_task(self._read(messages, queue))
        watcher: asyncio.Task[None] | None = None
        node = ""
        session: AdsSession | None = None
        try:
            while True:
                kind, item = await queue.get()
                if kind == "end":
                    return
                if kind == "request":
                    if session is None:
                        node = item.node.id if item.node is not None else ""
                        if not node:
                            log.warning("ADS stream without a node id refused")
                            return
                        self._check_peer(node, peer)
                        session = AdsSession(node, self.cache.status.setdefault(node, StreamStatus()))
                        self.cache.connected[node] = self.cache.connected.get(node, 0) + 1
                        watcher = asyncio.create_task(self._watch(node, queue))
                        log.info("envoy connected", node=node, peer=peer)
                    if not self._on_request(node, session, item):
                        continue
                if session is None:
                    continue
                snap = self.cache.get(node)
                if snap is None:
                    continue
                for push in session.plan(snap):
                    log.debug("push", node=node, type=push.type, version=push.version, nonce=push.nonce,
                              resources=len(push.resources), changed=len(push.changed), removed=len(push.removed))
                    yield self.response(push, snap)
        finally:
            reader.cancel()
            if watcher is not None:
                watcher.cancel()
            if session is not None:
                self.cache.connected[node] -= 1
                log.info("envoy disconnected", node=node)

    def _on_request(self, node: str, session: AdsSession, req: XdsRequest) -> bool:
        """Account for one request; True when it owes a response."""
        type_key = TYPE_KEYS.get(req.type_url)
        if type_key is None:
            log.warning("unknown resource type requested; ignored", node=node, type_url=req.type_url)
            return False
        verdict = session.on_request(request_from_xds(req, type_key))
        log.debug("request", node=node, type=type_key, version=req.version_info, nonce=req.response_nonce,
                  names=len(req.resource_names), verdict=verdict)
        if verdict == "nack":
            log.warning("config rejected by Envoy (NACK); it keeps its last good config", node=node, type=type_key,
                        version=req.version_info, detail=session.status.nacked.get(type_key))
        return verdict == "subscribe"

    @staticmethod
    async def _read(messages: AsyncIterator[XdsRequest], queue: asyncio.Queue[tuple[str, Any]]) -> None:
        try:
            async for message in messages:
                queue.put_nowait(("request", message))
        except Exception as exc:  # noqa: BLE001 - a broken stream ends the session
            log.debug("ADS stream read failed", error=repr(exc))
        finally:
            queue.put_nowait(("end", None))

    async def _watch(self, node: str, queue: asyncio.Queue[tuple[str, Any]]) -> None:
        seen: str | None = None
        while True:
            snap = await self.cache.wait_change(node, seen)
            seen = snap.version
            queue.put_nowait(("change", seen))
