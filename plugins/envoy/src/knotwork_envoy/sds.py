"""The agent's secret discovery service: Envoy's mesh certificate, key and roots.

As Istio's pilot-agent does, the sidecar agent keeps the proxy's key: it
runs the :class:`~knotwork.identity.WorkloadIdentity` and serves two
secrets to its own Envoy over SDS (``envoy.service.secret.v3.SecretDiscoveryService``,
state of the world, gRPC on a unix socket in a private 0700 directory):

- ``default``: ``tls_certificate`` — the SVID's chain and key;
- ``ROOTCA``: ``validation_context.trusted_ca`` — the trust bundle.

Envoy's bootstrap has a static cluster ``sds-grpc`` to that socket, and
every mesh TLS context (the control channel, inbound mTLS, ``ISTIO_MUTUAL``
clusters) names these secrets through :data:`MESH_SDS`. On rotation the new
secret versions are pushed on the open streams: Envoy keeps its established
connections and uses the new certificate for new handshakes.

The messages are written and read with :mod:`.protowire` rather than the
``envoy_data_plane`` types, whose import would cost the agent ~1 s and
~20 MB; the tests check the bytes against the typed messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import structlog
from grpclib.const import Cardinality, Handler
from grpclib.encoding.base import CodecBase
from grpclib.server import Server
from knotwork.wire import serving

from .protowire import fields, message, string

__all__ = [
    "CERT_SECRET",
    "MESH_SDS",
    "ROOT_SECRET",
    "SDS_CLUSTER",
    "SECRET_TYPE",
    "SdsRequest",
    "SecretServer",
    "decode_request",
    "encode_response",
    "encode_secret",
    "mesh_secret",
]

log = structlog.get_logger("knotwork.envoy.sds").bind(plugin="envoy")

#: The bootstrap's static cluster to the agent's SDS socket.
SDS_CLUSTER = "sds-grpc"
#: The proxy's SVID (certificate chain and key) and the mesh's trust bundle, as Istio names them.
CERT_SECRET = "default"
ROOT_SECRET = "ROOTCA"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
STREAM_METHOD = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
#: The config source of the mesh secrets (proto-JSON): the agent, over ``sds-grpc``. Fetched
#: without a timeout: the agent has the first SVID before Envoy starts.
MESH_SDS: dict[str, Any] = {
    "api_config_source": {
        "api_type": "GRPC",
        "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}],
        "set_node_on_first_message_only": True,
    },
    "resource_api_version": "V3",
    "initial_fetch_timeout": "0s",
}


def mesh_secret(name: str) -> dict[str, Any]:
    """An ``SdsSecretConfig`` naming one of the agent's secrets."""
    return {"name": name, "sds_config": MESH_SDS}


# ── the messages ─────────────────────────────────────────────────────────────


def encode_secret(name: str, *, chain: str = "", key: str = "", bundle: str = "") -> bytes:
    """A serialised ``Secret``: a certificate chain and key (``inline_bytes``), or a trust bundle."""
    if chain:
        body = message(2, message(1, string(2, chain.encode())) + message(2, string(2, key.encode())))
    else:
        body = message(4, message(1, string(2, bundle.encode())))
    return string(1, name) + body


def encode_response(version: str, secrets: list[bytes], nonce: str) -> bytes:
    """A serialised ``DiscoveryResponse`` of Secrets (each packed in an ``Any``)."""
    resources = b"".join(message(2, string(1, SECRET_TYPE) + string(2, s)) for s in secrets)
    return string(1, version) + resources + string(4, SECRET_TYPE) + string(5, nonce)


@attrs.frozen
class SdsRequest:
    """The fields of a ``DiscoveryRequest`` the server reads (the node is skipped)."""

    version_info: str = ""
    resource_names: tuple[str, ...] = ()
    type_url: str = ""
    response_nonce: str = ""
    error_detail: str | None = None


def decode_request(data: bytes) -> SdsRequest:
    """Parse a serialised ``DiscoveryRequest``; raises ValueError when malformed."""
    version = type_url = nonce = ""
    names: list[str] = []
    error: str | None = None
    for field, value in fields(data):
        if not isinstance(value, bytes):
            continue
        if field == 1:
            version = value.decode()
        elif field == 3:
            names.append(value.decode())
        elif field == 4:
            type_url = value.decode()
        elif field == 5:
            nonce = value.decode()
        elif field == 6:  # google.rpc.Status: code 1, message 2
            parts = dict(fields(value))
            text = parts.get(2)
            error = text.decode() if isinstance(text, bytes) and text else f"rejected (code {parts.get(1, 0)})"
    return SdsRequest(version, tuple(names), type_url, nonce, error)


# ── the server ───────────────────────────────────────────────────────────────


class _RawCodec(CodecBase):
    """Serialised protobuf in, serialised protobuf out (``application/grpc+proto``)."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return message

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


class SecretServer:
    """Serves the proxy's SVID and trust bundle to its Envoy; pushes new versions on :meth:`update`."""

    def __init__(self) -> None:
        #: name -> (version, serialised Secret)
        self.secrets: dict[str, tuple[str, bytes]] = {}
        self.streams = 0
        self.pushes = 0
        self.nacks: list[str] = []
        self._queues: set[asyncio.Queue[tuple[str, Any]]] = set()

    def update(self, svid: Any) -> None:
        """Take a (new) :class:`~knotwork.identity.Svid`; open streams get the secrets that changed."""
        bundle_version = hashlib.sha256(svid.bundle_pem.encode()).hexdigest()[:12]
        self.secrets = {
            CERT_SECRET: (format(svid.serial, "x"), encode_secret(CERT_SECRET, chain=svid.chain_pem, key=svid.key_pem)),
            ROOT_SECRET: (bundle_version, encode_secret(ROOT_SECRET, bundle=svid.bundle_pem)),
        }
        for queue in self._queues:
            queue.put_nowait(("change", None))

    def __mapping__(self) -> dict[str, Handler]:
        return {STREAM_METHOD: Handler(self._stream, Cardinality.STREAM_STREAM, bytes, bytes)}

    @contextlib.asynccontextmanager
    async def serving(self, path: Path) -> AsyncIterator[Path]:
        """Serve on the unix socket `path` (0600; its directory should be private) for the block."""
        async with serving(Server([self], codec=_RawCodec()), path=path) as bound:
            log.debug("SDS server listening", path=str(bound))
            yield bound

    async def _stream(self, stream: Any) -> None:
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._queues.add(queue)
        self.streams += 1
        reader = asyncio.ensure_future(self._read(stream, queue))
        names: tuple[str, ...] | None = None
        sent: dict[str, str] = {}
        nonce, counter = "", 0
        try:
            while True:
                kind, req = await queue.get()
                if kind == "end":
                    return
                if kind == "request":
                    if req.error_detail is not None and req.response_nonce == nonce:
                        self.nacks.append(req.error_detail)
                        log.warning("Envoy rejected a secret (NACK)", names=list(names or ()), error=req.error_detail)
                    if req.response_nonce and req.response_nonce != nonce:
                        continue  # stale: answers an older response
                    if req.response_nonce and req.resource_names == names:
                        continue  # ACK or NACK of the latest response
                    names = req.resource_names
                elif names is None:
                    continue
                wanted = [n for n in (names or tuple(self.secrets)) if n in self.secrets]
                if kind == "change" and all(sent.get(n) == self.secrets[n][0] for n in wanted):
                    continue
                missing = [n for n in (names or ()) if n not in self.secrets]
                if missing:
                    log.warning("Envoy asked for secrets the agent does not have", names=missing)
                counter += 1
                nonce = str(counter)
                versions = {n: self.secrets[n][0] for n in wanted}
                version = ",".join(f"{n}={v}" for n, v in versions.items())
                await stream.send_message(encode_response(version, [self.secrets[n][1] for n in wanted], nonce))
                sent.update(versions)
                self.pushes += 1
                log.debug("secrets sent", names=wanted, version=version, nonce=nonce)
        finally:
            reader.cancel()
            self._queues.discard(queue)
            self.streams -= 1

    @staticmethod
    async def _read(stream: Any, queue: asyncio.Queue[tuple[str, Any]]) -> None:
        try:
            async for data in stream:
                try:
                    queue.put_nowait(("request", decode_request(data)))
                except ValueError as exc:
                    log.warning("malformed SDS request ignored", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a broken stream ends it
            log.debug("SDS stream read failed", error=repr(exc))
        finally:
            queue.put_nowait(("end", None))
