"""A workload for the security scenarios.

`GET /health`: 200. `GET /relay`: calls `RELAY_TO` (or the `to` query
parameter) through the sidecar (`HTTP_PROXY`, one kept-alive connection per
server thread) and answers with that response's status and body. Anything else: a JSON body with
`INSTANCE` and the `x-forwarded-client-cert` header this request carried.
"""

import http.client
import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

INSTANCE = os.environ.get("INSTANCE", "app")
RELAY_TO = os.environ.get("RELAY_TO", "")
_local = threading.local()


def relay(url: str) -> tuple[int, bytes]:
    proxy = urlsplit(os.environ["HTTP_PROXY"])
    target = urlsplit(url)
    for attempt in range(2):  # a kept-alive connection the sidecar closed meanwhile: once more on a new one
        conn = getattr(_local, "conn", None)
        if conn is None:
            conn = _local.conn = http.client.HTTPConnection(proxy.hostname, proxy.port, timeout=10)
        try:
            conn.request("GET", url, headers={"host": target.netloc})
            response = conn.getresponse()
            return response.status, response.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            _local.conn = None
            if attempt:
                raise
    raise AssertionError("unreachable")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # head and body go out in two writes: without this, Nagle and delayed ACKs add 40 ms to each answer
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        path, to = url.path, parse_qs(url.query).get("to", [RELAY_TO])[0]
        if path == "/health":
            status, body = 200, b"ok"
        elif path == "/relay" and to:
            try:
                status, body = relay(to)
            except (http.client.HTTPException, OSError) as exc:
                status, body = 599, f"relay failed: {exc!r}".encode()
        else:
            status = 200
            body = json.dumps({"instance": INSTANCE, "xfcc": self.headers.get("x-forwarded-client-cert")}).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


if __name__ == "__main__":
    main()
