"""Accepting connections on inbound listeners with mesh mTLS (STRICT or PERMISSIVE).

asyncio's ``start_tls`` cannot take bytes a protocol has already read, and
a transport reads as soon as it exists; so these listeners accept sockets
themselves, and decide before any transport sees a byte:

- ``STRICT``: every connection is a TLS server handshake with the current
  SVID's context (:meth:`MeshIdentity.server_context`); a plaintext client
  fails the handshake and is closed.
- ``PERMISSIVE``: the first bytes are peeked (``MSG_PEEK``, nothing is
  consumed) once the socket is readable: a TLS ClientHello (``0x16 0x03``)
  gets the handshake, anything else is served as plaintext. A client that
  sends nothing for `peek_timeout` seconds is served as plaintext too (the
  protocol may be server-first), as Envoy's listener filter timeout does in
  Istio's inbound listener.

The socket is then handed to the event loop (``connect_accepted_socket``,
which does the handshake) with the listener's ordinary protocol factory;
the protocol checks the peer's SPIFFE ID in ``connection_made``
(:meth:`~knotwork_native.mesh_tls.InboundMtls.admit`). The mode is read per
connection from the listener's current runtime, so STRICT ↔ PERMISSIVE
needs no rebinding; each connection takes the context of the SVID current
when it arrives.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["HANDSHAKE_TIMEOUT", "MeshAcceptor"]

log = structlog.get_logger("knotwork.native.mtls").bind(plugin="native")

#: Seconds a TLS handshake may take on an inbound mesh listener.
HANDSHAKE_TIMEOUT = 10.0
#: Connections accepted per readiness event of the listening socket.
ACCEPT_BATCH = 64
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class MeshAcceptor:
    """A listening socket serving `slot`'s listener with mesh mTLS; stands in for an ``asyncio.Server``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, address: str, port: int, slot: Any,
                 factory: Callable[[], asyncio.Protocol], stats: Any, peek_timeout: float, backlog: int = 1024) -> None:
        self.loop = loop
        self.slot = slot
        self.factory = factory
        self.stats = stats
        self.peek_timeout = peek_timeout
        family, kind, proto, _, sockaddr = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.sockets = [sock]
        self.peeking: dict[int, tuple[socket.socket, asyncio.TimerHandle]] = {}
        self.handshakes: dict[asyncio.Task[None], socket.socket | None] = {}
        self.closed = False
        loop.add_reader(sock.fileno(), self._accept)

    # ── accepting ────────────────────────────────────────────────────────
    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:  # as asyncio: stop accepting for a second
                    self.stats["downstream_cx_accept_error"] += 1
                    log.warning("cannot accept connections", error=str(exc), listener=self.slot.name)
                    self.loop.remove_reader(self.sock.fileno())
                    self.loop.call_later(1.0, self._resume)
                    return
                continue  # ECONNABORTED and the like: that client is gone
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mtls = self.slot.rt.mtls
            mode = mtls.mode if mtls is not None else "DISABLE"
            if mode == "PERMISSIVE":
                self._peek(conn)
            else:
                self._hand_over(conn, mode == "STRICT")

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    # ── PERMISSIVE: TLS or plaintext, from the first bytes ──────────────
    def _peek(self, conn: socket.socket) -> None:
        try:
            head = conn.recv(2, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            fd = conn.fileno()
            timer = self.loop.call_later(self.peek_timeout, self._peek_timeout, fd)
            self.peeking[fd] = (conn, timer)
            self.loop.add_reader(fd, self._readable, fd)
            return
        except OSError:
            conn.close()
            return
        self._decide(conn, head)

    def _readable(self, fd: int) -> None:
        entry = self.peeking.get(fd)
        if entry is None:
            return
        conn, timer = entry
        try:
            head = conn.recv(2, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return  # spurious wake-up: keep waiting
        except OSError:
            head = b""
        self._forget(fd)
        timer.cancel()
        self._decide(conn, head)

    def _peek_timeout(self, fd: int) -> None:
        entry = self.peeking.get(fd)
        if entry is None:
            return
        self._forget(fd)
        self.stats["downstream_cx_peek_timeout"] += 1
        self._hand_over(entry[0], False)

    def _forget(self, fd: int) -> None:
        self.peeking.pop(fd, None)
        self.loop.remove_reader(fd)

    def _decide(self, conn: socket.socket, head: bytes) -> None:
        if not head:  # the client closed before sending anything
            conn.close()
            return
        tls = head[0] == 0x16 and (len(head) == 1 or head[1] == 0x03)
        self.stats["downstream_cx_permissive_tls" if tls else "downstream_cx_permissive_plaintext"] += 1
        self._hand_over(conn, tls)

    # ── handing the socket to the loop ───────────────────────────────────
    def _hand_over(self, conn: socket.socket, tls: bool) -> None:
        ctx = None
        if tls:
            mtls = self.slot.rt.mtls
            try:
                ctx = mtls.mesh.server_context()
            except (OSError, ValueError, AttributeError) as exc:
                self.stats["downstream_cx_tls_refused"] += 1
                log.warning("mTLS connection refused: no server certificate", error=str(exc), listener=self.slot.name)
                conn.close()
                return
        try:
            peer = conn.getpeername()
        except OSError:  # already gone
            conn.close()
            return
        task = self.loop.create_task(self._connect(conn, ctx, peer))
        self.handshakes[task] = conn
        task.add_done_callback(self._handed_over)

    def _handed_over(self, task: asyncio.Task[None]) -> None:
        conn = self.handshakes.pop(task, None)
        if conn is not None:  # cancelled before it ran: the loop never owned the socket
            conn.close()

    async def _connect(self, conn: socket.socket, ctx: Any, peer: Any) -> None:
        self.handshakes[asyncio.current_task()] = None  # type: ignore[index]  # the loop owns the socket from here
        try:
            if ctx is None:
                await self.loop.connect_accepted_socket(self.factory, conn)
            else:
                await self.loop.connect_accepted_socket(self.factory, conn, ssl=ctx,
                                                        ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed handshake: the transport closed the socket
            self.stats["downstream_cx_tls_refused" if ctx is not None else "downstream_cx_accept_error"] += 1
            mtls = self.slot.rt.mtls
            if mtls is not None and ctx is not None:
                why = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or repr(exc)
                mtls.refuse(f"TLS handshake with {peer[0]}:{peer[1]} failed: {why}")

    # ── asyncio.Server's part ────────────────────────────────────────────
    def close(self) -> None:
        """Stop accepting: connections still being peeked at or shaking hands are dropped."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for fd in list(self.peeking):
            conn, timer = self.peeking[fd]
            self._forget(fd)
            timer.cancel()
            conn.close()
        for task in list(self.handshakes):
            task.cancel()
