"""A minimal Python HTTP/1.1 proxy: the floor a Python data plane can reach here.

asyncio + uvloop + httptools, one upstream, keep-alive on both sides, an idle
connection pool (LIFO). The request head is rebuilt from the parsed headers;
response bytes are streamed downstream as they arrive, parsed only to know
where the response ends. No route table, stats, timeouts, retries, request
ids or x-forwarded-*: what BENCHMARKS.md calls "minimal Python proxy", measured
in the same run as the native engine so that the native engine's overhead
can be read against what Python itself costs on this machine.

    python bench/minimal.py --port 8081 --upstream 8080
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
from upstream import RequestProtocol, serve_protocol  # shared with the upstream (bench/ is on sys.path)

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

_SKIP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"})


class Upstream(asyncio.Protocol):
    __slots__ = ("down", "parser", "pool", "transport")

    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.down: Downstream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        down = self.down
        if down is None:
            self.transport.close()  # type: ignore[union-attr]
            return
        down.transport.write(data)  # type: ignore[union-attr]
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        down, self.down = self.down, None
        self.pool.append(self)
        if down is not None:
            down.response_done()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)
        down, self.down = self.down, None
        if down is not None and down.transport is not None:
            down.transport.close()


class Downstream(RequestProtocol):
    __slots__ = ("head", "keep", "proxy", "url")

    def __init__(self, proxy: MinimalProxy) -> None:
        super().__init__()
        self.proxy = proxy
        self.url = b""
        self.head: list[bytes] = []
        self.keep = True

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in _SKIP:
            self.head += (name, b": ", value, b"\r\n")

    def on_message_complete(self) -> None:
        request = b"%s %s HTTP/1.1\r\n%s\r\n" % (self.parser.get_method(), self.url, b"".join(self.head))
        self.url = b""
        self.head = []
        self.keep = self.parser.should_keep_alive()
        self.transport.pause_reading()  # type: ignore[union-attr] - one request at a time
        pool = self.proxy.pool
        if pool:
            up = pool.pop()
            up.down = self
            up.transport.write(request)  # type: ignore[union-attr]
        else:
            asyncio.get_running_loop().create_task(self.proxy.connect(self, request))

    def response_done(self) -> None:
        if not self.keep:
            self.transport.close()  # type: ignore[union-attr]
        else:
            self.transport.resume_reading()  # type: ignore[union-attr]


class MinimalProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.pool: list[Upstream] = []

    async def connect(self, down: Downstream, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(lambda: Upstream(self.pool), "127.0.0.1", self.upstream_port)
        except OSError:
            down.transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")  # type: ignore[union-attr]
            down.response_done()
            return
        up.down = down
        up.transport.write(request)  # type: ignore[union-attr]


async def serve(port: int, upstream_port: int) -> None:
    proxy = MinimalProxy(upstream_port)
    await serve_protocol(port, lambda: Downstream(proxy))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", type=int, required=True, help="upstream port on 127.0.0.1")
    args = parser.parse_args()
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        asyncio.run(serve(args.port, args.upstream))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
