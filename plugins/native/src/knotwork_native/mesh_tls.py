"""The proxy's workload identity as the data plane uses it: mesh mTLS contexts and the inbound peer check.

:class:`MeshIdentity` turns the current SVID of a
:class:`~knotwork.identity.WorkloadIdentity` into TLS contexts, built once
per SVID: when the identity renews (``on_change``) the contexts are rebuilt
at once, off the request path, so the next handshake presents the new
certificate while established connections keep the one they were made
with (and pooled upstream connections stay pooled). Each context is a new
:class:`ssl.SSLContext`, never a reloaded one.

:class:`InboundMtls` is what one inbound listener with a
:class:`~knotwork.proxyconfig.PeerTls` accepts: after the handshake (TLS
1.3, a client certificate chaining to the mesh's trust bundle, both checked
by OpenSSL) the client's SPIFFE ID must be in the listener's trust domain;
the connection then carries that ID (``ConnectionView.peer_identity``) and
a pre-encoded ``x-forwarded-client-cert: By=<own id>;URI=<peer id>`` line
that every request forwarded to the app gets. All of it happens once per
connection; a request only appends bytes computed here.
"""

from __future__ import annotations

import ssl
from typing import Any

import structlog
from knotwork.identity import client_context, peer_spiffe_id, server_context
from knotwork.proxyconfig import MESH_ALPN_SERVER, PeerTls

__all__ = ["XFCC", "InboundMtls", "MeshIdentity"]

log = structlog.get_logger("knotwork.native.mtls").bind(plugin="native")

XFCC = b"x-forwarded-client-cert"
#: ALPN an inbound mesh listener accepts: Istio's, but for HTTP/2 (``istio-h2``), which this engine does not speak.
SERVER_ALPN = tuple(p for p in MESH_ALPN_SERVER if p not in ("istio-h2", "h2"))
#: Characters a SPIFFE ID must not carry into a header value (or the XFCC syntax).
_UNSAFE = frozenset(b' \t\r\n";,')


class MeshIdentity:
    """TLS contexts of the proxy's current SVID (a ``WorkloadIdentity``, or any object with
    ``.svid`` and ``.on_change(callback)``), rebuilt when it changes."""

    def __init__(self, identity: Any) -> None:
        self.identity = identity
        self._for: Any = None  # the SVID the contexts below were built from
        self._server: ssl.SSLContext | None = None
        self._clients: dict[tuple[str, ...], ssl.SSLContext] = {}
        self.xfcc_by = b""
        self.rotations = 0
        self.refused_peers = 0
        self.last_refusal: str | None = None
        identity.on_change(self._changed)

    @property
    def svid(self) -> Any:
        return self.identity.svid

    @property
    def spiffe_id(self) -> str | None:
        svid = self.identity.svid
        return svid.spiffe_id if svid is not None else None

    def _current(self) -> Any:
        svid = self.identity.svid
        if svid is None:
            raise ssl.SSLError("the proxy has no SVID yet")
        if svid is not self._for:
            self._for = svid
            self._server = None
            self._clients = {}
            self.xfcc_by = XFCC + b": By=" + svid.spiffe_id.encode("latin-1") + b";URI="
        return svid

    def _changed(self, svid: Any) -> None:
        """A renewed SVID: build the contexts in use now, so no handshake waits for them."""
        in_use = (self._server is not None, tuple(self._clients))
        self.rotations += 1
        try:
            self._current()
            if in_use[0]:
                self.server_context()
            for alpn in in_use[1]:
                self.client_context(alpn)
        except (ssl.SSLError, OSError, ValueError) as exc:
            log.error("cannot load the renewed SVID; new handshakes will fail", error=repr(exc))

    def server_context(self) -> ssl.SSLContext:
        """TLS 1.3, presenting the SVID, a client certificate required (inbound mesh listeners);
        ALPN :data:`SERVER_ALPN`."""
        self._current()
        ctx = self._server
        if ctx is None:
            ctx = self._server = server_context(self._for, alpn=SERVER_ALPN)
        return ctx

    def client_context(self, alpn: tuple[str, ...]) -> ssl.SSLContext:
        """TLS 1.3, presenting the SVID; the caller checks the server's SPIFFE ID (ISTIO_MUTUAL clusters)."""
        self._current()
        ctx = self._clients.get(alpn)
        if ctx is None:
            ctx = self._clients[alpn] = client_context(self._for, alpn=alpn)
        return ctx

    def status(self) -> dict[str, Any]:
        svid = self.identity.svid
        return {"identity": svid.spiffe_id if svid is not None else None,
                "serial": format(svid.serial, "x") if svid is not None else None,
                "rotations": self.rotations, "refused_peers": self.refused_peers, "last_refusal": self.last_refusal}


class InboundMtls:
    """The mesh mTLS one inbound listener accepts (its :class:`PeerTls`, STRICT or PERMISSIVE)."""

    __slots__ = ("mesh", "mode", "prefix", "trust_domain")

    def __init__(self, tls: PeerTls, mesh: MeshIdentity) -> None:
        self.mode = tls.mode
        self.trust_domain = tls.trust_domain
        self.prefix = f"spiffe://{tls.trust_domain}/"
        self.mesh = mesh

    def admit(self, ssl_object: Any, peer_address: Any = None) -> str | None:
        """The client's SPIFFE ID after a completed handshake, or None: refuse the connection."""
        peer = peer_spiffe_id(ssl_object)
        if peer is None:
            why = "the client certificate has no SPIFFE ID"
        elif not peer.startswith(self.prefix):
            why = f"client {peer} is not in the trust domain {self.trust_domain!r}"
        elif _UNSAFE.intersection(peer.encode("latin-1", "replace")):
            why = f"client SPIFFE ID {peer!r} has characters a header cannot carry"
        else:
            return peer
        self.refuse(f"mTLS connection from {_addr(peer_address)} refused: {why}")
        return None

    def refuse(self, why: str) -> None:
        mesh = self.mesh
        mesh.refused_peers += 1
        mesh.last_refusal = why
        log.debug("inbound mTLS refused", reason=why)

    def xfcc(self, peer: str) -> bytes:
        """The ``x-forwarded-client-cert`` line requests on a connection from `peer` carry to the app."""
        return self.mesh.xfcc_by + peer.encode("latin-1") + b"\r\n"


def _addr(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return "a client"
