"""The native proxy's config client: subscribe, apply, ACK or NACK, reconnect.

Keeps the last good config while the control plane is away (the data plane
is never torn down on a lost stream) and resubscribes with backoff, sending
the versions it holds. A response whose resources do not validate is NACKed
with the reason and changes nothing; one that is valid but still refers to
resources of a type not yet received is accepted and applied once complete.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import structlog
from grpclib.client import Channel
from grpclib.const import Cardinality
from knotwork.proxyconfig import RESOURCE_TYPES, TYPE_ORDER, ConsistencyError, wire
from knotwork.wire import JSONCodec

from .server import METHOD, parse_address

log = structlog.get_logger("knotwork.native.client").bind(plugin="native")
_CONN_ERRORS = (OSError, ConnectionError, anyio.EndOfStream, anyio.BrokenResourceError)


class ControlClient:
    """One proxy's subscription to the control plane."""

    def __init__(self, node_id: str, control_address: str, dataplane: Any) -> None:
        self.node_id = node_id
        self.address = parse_address(control_address)
        self.dataplane = dataplane
        # accepted state: type -> name -> (version, resource)
        self.accepted: dict[str, dict[str, tuple[str, Any]]] = {t: {} for t in TYPE_ORDER}
        self.type_versions: dict[str, str] = {}
        self.applied_versions: dict[str, dict[str, str]] | None = None
        self.connected = False
        self.nacks = 0
        self.last_error: str | None = None
        self.connects = 0
        self.last_update = 0.0
        self.received: set[str] = set()  # types received at least once: apply only when all were

    def status(self) -> dict:
        return {"control_connected": self.connected, "control_connects": self.connects, "nacks": self.nacks,
                "type_versions": dict(self.type_versions), "last_error": self.last_error}

    async def run(self) -> None:
        backoff = 0.1
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except Exception as exc:  # noqa: BLE001 - any stream failure means reconnect
                if not isinstance(exc, _CONN_ERRORS):
                    log.warning("config stream failed", error=repr(exc))
            self.connected = False
            if time.monotonic() - started > 5:
                backoff = 0.1
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _session(self) -> None:
        channel = Channel(*self.address, codec=JSONCodec())
        try:
            async with channel.request(METHOD, Cardinality.STREAM_STREAM, dict, dict) as stream:
                await stream.send_request()
                for i, type_key in enumerate(TYPE_ORDER):
                    msg = {"type_url": type_key, "version_info": self.type_versions.get(type_key, "")}
                    if i == 0:
                        msg["node"] = {"id": self.node_id}
                    await stream.send_message(msg)
                self.connected = True
                self.connects += 1
                log.info("subscribed to control plane", address=f"{self.address[0]}:{self.address[1]}")
                while (msg := await stream.recv_message()) is not None:
                    reply = await self.on_response(msg)
                    await stream.send_message(reply)
        finally:
            channel.close()

    async def on_response(self, msg: dict) -> dict:
        """Validate and apply one response; return the ACK or NACK to send."""
        type_key = msg["type_url"]
        reply = {"type_url": type_key, "response_nonce": msg["nonce"]}
        if type_key not in RESOURCE_TYPES:
            return {**reply, "version_info": self.type_versions.get(type_key, ""), "error_detail": f"unknown type {type_key}"}
        try:
            candidate = dict(self.accepted[type_key])
            cls = RESOURCE_TYPES[type_key]
            for item in msg.get("resources", ()):
                candidate[item["name"]] = (item["version"], wire.structure(item["resource"], cls))
            for name in msg.get("removed", ()):
                candidate.pop(name, None)
            state = {**self.accepted, type_key: candidate}
            if self.received | {type_key} >= set(TYPE_ORDER):
                await self._apply(state)
        except Exception as exc:  # noqa: BLE001 - anything invalid is a NACK, last good config stays
            self.nacks += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("config rejected (NACK)", type=type_key, error=self.last_error)
            return {**reply, "version_info": self.type_versions.get(type_key, ""), "error_detail": self.last_error}
        self.accepted[type_key] = candidate
        self.received.add(type_key)
        self.type_versions[type_key] = msg["version_info"]
        self.last_update = time.time()
        return {**reply, "version_info": msg["version_info"]}

    async def _apply(self, state: dict[str, dict[str, tuple[str, Any]]]) -> None:
        versions = {t: {n: v for n, (v, _) in res.items()} for t, res in state.items()}
        if versions == self.applied_versions:
            return
        resources = {t: {n: r for n, (_, r) in res.items()} for t, res in state.items()}
        try:
            runtime = self.dataplane.build(resources)
        except ConsistencyError as exc:
            log.debug("config incomplete; waiting for more types", detail=str(exc))
            return
        await self.dataplane.apply(runtime)
        self.applied_versions = versions

