"""A trivial workload: GET /health is 200, GET /env returns its environment as JSON."""

import http.server
import json
import os

print(f"app {os.environ['INSTANCE']} on {os.environ['PORT']}")


class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = json.dumps(dict(os.environ)).encode() if self.path == "/env" else b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), App).serve_forever()
