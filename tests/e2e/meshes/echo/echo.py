"""A tiny workload for end-to-end tests: answers with its instance name.

`GET /health` is 200 only once the file named by `READY_FILE` exists (always,
when unset). `GET /slow?s=SECONDS` answers after a delay. Anything else
returns `INSTANCE` as the body.
"""

import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

INSTANCE = os.environ.get("INSTANCE", "echo")
READY_FILE = os.environ.get("READY_FILE")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        status, body = 200, INSTANCE.encode()
        if url.path == "/health":
            ready = not READY_FILE or os.path.exists(READY_FILE)
            status, body = (200, b"ok") if ready else (503, b"not ready")
        elif url.path == "/slow":
            time.sleep(float(parse_qs(url.query).get("s", ["1"])[0]))
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-instance", INSTANCE)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stdout.write(f"{INSTANCE} {fmt % args}\n")
        sys.stdout.flush()


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


if __name__ == "__main__":
    main()
