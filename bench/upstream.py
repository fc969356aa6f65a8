"""The benchmark's upstream: a canned ``200`` with a 13-byte body.

asyncio + uvloop + httptools, one process, keep-alive, no routing: the
fastest thing Python can put behind a proxy, so the figures measure the proxy.
Run as its own process by ``bench/run.py``::

    python bench/upstream.py --port 8080 --body 'Hello, World!'

Prints ``READY <port>`` on stdout once listening; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys

import httptools

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop comes with knotwork-native
    uvloop = None


def canned(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


class RequestProtocol(asyncio.Protocol):
    """A server connection that feeds an httptools request parser (calling back into the subclass)."""

    __slots__ = ("parser", "transport")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()  # type: ignore[union-attr]


class CannedProtocol(RequestProtocol):
    """Answers every request on the connection with the same bytes."""

    __slots__ = ("response",)

    def __init__(self, response: bytes) -> None:
        super().__init__()
        self.response = response

    def on_message_complete(self) -> None:
        transport = self.transport
        transport.write(self.response)  # type: ignore[union-attr]
        if not self.parser.should_keep_alive():
            transport.close()  # type: ignore[union-attr]


async def serve(port: int, body: bytes) -> None:
    response = canned(body)
    await serve_protocol(port, lambda: CannedProtocol(response))


async def serve_protocol(port: int, factory) -> None:  # noqa: ANN001 - a protocol factory
    """Serve `factory` on 127.0.0.1:`port`, print `READY <port>`, stop on SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = await loop.create_server(factory, sock=sock, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--body", default="Hello, World!", help="the response body (13 bytes by default)")
    args = parser.parse_args()
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        asyncio.run(serve(args.port, args.body.encode()))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
