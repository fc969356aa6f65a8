"""The native engine's config distribution server (control-plane side).

ADS-shaped over grpclib with JSON payloads: one bidirectional stream per
proxy at ``/knotwork.v1.Discovery/Stream``. The first request names the node;
per resource type the server sends a version and a nonce, and only the
resources that changed (plus the names removed); the proxy ACKs or NACKs each
response. Versions, diffs and subscriptions are the kernel's shared core
(:class:`knotwork.distribution.AdsSession`); this module only transports.

With a certificate authority the control plane passes ``options["ssl"]``
(a server context requiring the proxy's SVID) and ``options["authorize"]``
(``authorize(node_id, peer_spiffe_id) -> reason | None``): the stream is
served over mTLS, and one whose first node id the peer's SVID may not
stream ends with gRPC ``PERMISSION_DENIED`` and the reason — no node-id
spoofing.
"""

from __future__ import annotations

from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from knotwork.distribution import AdsSession, DiscoveryRequest, ResourceCache, SnapshotCache, StreamStatus
from knotwork.identity import peer_spiffe_id
from knotwork.proxyconfig import RESOURCE_TYPES, wire
from knotwork.records import ComponentContext
from knotwork.wire import JSONCodec, JsonService, serving

log = structlog.get_logger("knotwork.native.server").bind(plugin="native")
METHOD = "/knotwork.v1.Discovery/Stream"


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def request_from_wire(msg: dict) -> DiscoveryRequest:
    err = msg.get("error_detail")
    return DiscoveryRequest(
        type=msg.get("type_url", ""), version_info=msg.get("version_info", ""),
        response_nonce=msg.get("response_nonce", ""), resource_names=tuple(msg.get("resource_names") or ()),
        error_detail=err or None,
    )


class NativeServer:
    """Serves every native proxy its snapshot from the control plane's cache."""

    def __init__(self, ctx: ComponentContext, cache: SnapshotCache) -> None:
        self.cache = cache
        self.listen = parse_address(str(ctx.options.get("listen", "127.0.0.1:0")))
        self.encoded = ResourceCache()
        self.address: tuple[str, int] | None = None
        self.ssl = ctx.options.get("ssl")  # server SSLContext (client certificate required), or None: plaintext
        self.authorize = ctx.options.get("authorize")  # (node_id, peer SPIFFE ID) -> why not, or None
        self.refused = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        server = Server([JsonService({METHOD: (self._stream, Cardinality.STREAM_STREAM)})], codec=JSONCodec())
        async with serving(server, listen=self.listen, ssl=self.ssl) as self.address:
            log.info("native distribution listening", address=f"{self.address[0]}:{self.address[1]}",
                     mtls=self.ssl is not None)
            task_status.started()
            await anyio.sleep_forever()

    def _encode(self, type_key: str, name: str, version: str, resource: Any) -> dict:
        return self.encoded.get((type_key, name, version), lambda: {
            "name": name, "version": version, "resource": wire.unstructure(resource)})

    async def _stream(self, stream: Any) -> None:
        first = await stream.recv_message()
        if not first or not (first.get("node") or {}).get("id"):
            log.warning("stream without a node id refused")
            return
        node = first["node"]["id"]
        if self.authorize is not None:
            peer = peer_spiffe_id(stream.peer.cert() if stream.peer is not None else None)
            reason = self.authorize(node, peer)
            if reason is not None:
                self.refused += 1
                log.warning("config stream refused", node=node, peer=peer, reason=reason)
                raise GRPCError(Status.PERMISSION_DENIED, reason)
        status = self.cache.status.setdefault(node, StreamStatus())
        session = AdsSession(node, status)
        self.cache.connected[node] = self.cache.connected.get(node, 0) + 1
        wake = anyio.Event()
        log.info("proxy connected", node=node)

        def handle(msg: dict) -> None:
            nonlocal wake
            req = request_from_wire(msg)
            if req.type not in RESOURCE_TYPES:
                log.warning("unknown resource type requested", node=node, type=req.type)
                return
            verdict = session.on_request(req)
            if verdict == "nack":
                log.warning("config rejected by proxy (NACK)", node=node, type=req.type, detail=req.error_detail)
            if verdict == "subscribe":
                wake.set()

        async def reader() -> None:
            while (msg := await stream.recv_message()) is not None:
                handle(msg)
            tg.cancel_scope.cancel()

        try:
            handle(first)
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                seen: str | None = None
                while True:
                    wake = anyio.Event()
                    snap = self.cache.get(node)
                    if snap is not None:
                        for push in session.plan(snap):
                            await stream.send_message({
                                "type_url": push.type, "version_info": push.version, "nonce": push.nonce,
                                "resources": [self._encode(push.type, n, snap.versions[push.type][n], push.resources[n])
                                              for n in push.changed],
                                "removed": list(push.removed), "snapshot": snap.version,
                            })
                        seen = snap.version
                    async with anyio.create_task_group() as waiters:
                        async def on_change() -> None:
                            await self.cache.wait_change(node, seen)
                            waiters.cancel_scope.cancel()

                        async def on_request() -> None:
                            await wake.wait()
                            waiters.cancel_scope.cancel()

                        waiters.start_soon(on_change)
                        waiters.start_soon(on_request)
        finally:
            self.cache.connected[node] -= 1
            log.info("proxy disconnected", node=node)
