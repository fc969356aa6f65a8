"""Stands in for `knotwork proxy`: admin /ready (503 while a hold file exists) and /status
(its node, argv and, unlike a real proxy, the bootstrap credential it was given)."""

import argparse
import http.server
import json
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--mesh")
parser.add_argument("--engine")
parser.add_argument("--node", required=True)
parser.add_argument("--control", required=True)
parser.add_argument("--admin-port", type=int, required=True)
parser.add_argument("--drain-timeout", type=float, required=True)
parser.add_argument("--ca")
parser.add_argument("--identity")
args = parser.parse_args()
credential = os.environ.pop("KNOTWORK_CREDENTIAL", None)  # as `knotwork proxy` does
hold = os.path.join(os.path.dirname(os.path.abspath(args.mesh)), f"hold-{args.node}")


class Admin(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/ready":
            code, body = (503, b"no config\n") if os.path.exists(hold) else (200, b"ready\n")
        else:
            code, body = 200, json.dumps({"node": args.node, "argv": sys.argv[1:], "credential": credential}).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


print(f"fake proxy {args.node} admin {args.admin_port}", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", args.admin_port), Admin).serve_forever()
