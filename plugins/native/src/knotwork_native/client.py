"""The native proxy's config client: subscribe, apply, ACK or NACK, reconnect.

Keeps the last good config while the control plane is away (the data plane
is never torn down on a lost stream) and resubscribes with backoff, sending
the versions it holds. A response whose resources do not validate is NACKed
with the reason and changes nothing; one that is valid but still refers to
resources of a type not yet received is accepted and applied once complete.

With a workload identity the stream runs over mTLS: the client presents the
SVID current at each (re)connect and verifies the control plane with the
mesh's trust bundle (its certificate names 127.0.0.1). The control plane may
refuse the stream (PERMISSION_DENIED: this SVID may not stream this node's
config); the refusal is logged with its reason and retried with backoff, as
the platform may not have told the control plane about this proxy yet.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import anyio
import structlog
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from knotwork.identity import client_context
from knotwork.proxyconfig import RESOURCE_TYPES, TYPE_ORDER, ConsistencyError, wire
from knotwork.wire import JSONCodec

from .server import METHOD, parse_address

log = structlog.get_logger("knotwork.native.client").bind(plugin="native")
_CONN_ERRORS = (OSError, ConnectionError, anyio.EndOfStream, anyio.BrokenResourceError)


class ControlClient:
    """One proxy's subscription to the control plane."""

    def __init__(self, node_id: str, control_address: str, dataplane: Any, *, identity: Any = None) -> None:
        self.node_id = node_id
        self.identity = identity  # a WorkloadIdentity: mTLS with its current SVID (None: plaintext)
        self._tls: tuple[Any, ssl.SSLContext] | None = None  # (SVID, context made from it)
        self.refusals = 0
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
                "type_versions": dict(self.type_versions), "last_error": self.last_error,
                "control_mtls": self.identity is not None, "control_refusals": self.refusals}

    async def run(self) -> None:
        backoff = 0.1
        while True:
            started = time.monotonic()
            cap = 2.0
            try:
                await self._isolated()
            except GRPCError as exc:
                self.last_error = f"{exc.status.name}: {exc.message}"
                if exc.status in (Status.PERMISSION_DENIED, Status.UNAUTHENTICATED):
                    self.refusals += 1
                    cap = 5.0
                    log.warning("config stream refused by the control plane", status=exc.status.name,
                                reason=exc.message, retry_in=backoff)
                else:
                    log.warning("config stream failed", status=exc.status.name, error=exc.message)
            except ssl.SSLError as exc:
                why = f"TLS with the control plane failed: {getattr(exc, 'verify_message', None) or exc.reason or exc}"
                if why != self.last_error:
                    log.warning("config stream failed", error=why)
                self.last_error = why
            except Exception as exc:  # noqa: BLE001 - any stream failure means reconnect
                if not isinstance(exc, _CONN_ERRORS):
                    log.warning("config stream failed", error=repr(exc))
            self.connected = False
            if time.monotonic() - started > 5:
                backoff = 0.1
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, cap)

    async def _isolated(self) -> None:
        """One session in a task of its own: grpclib cancels the task waiting on a stream whose
        connection is lost (or refused in the TLS handshake) and never takes that back, which
        would confuse this task's cancel scopes (see ``knotwork.identity.call_isolated``)."""
        task = asyncio.ensure_future(self._session())
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled (shutdown); `task` was cancelled with us
            raise ConnectionError("config stream cancelled by its connection") from None

    def _ssl(self) -> ssl.SSLContext | None:
        """The client context of the current SVID (made once per SVID), or None without an identity."""
        if self.identity is None:
            return None
        svid = self.identity.svid
        if svid is None:
            raise ConnectionError("no SVID yet")
        if self._tls is None or self._tls[0] is not svid:
            self._tls = (svid, client_context(svid, alpn=("h2",), check_hostname=True,
                                              min_version=ssl.TLSVersion.TLSv1_2))
        return self._tls[1]

    async def _session(self) -> None:
        channel = Channel(*self.address, codec=JSONCodec(), ssl=self._ssl())
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

