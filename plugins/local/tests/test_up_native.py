"""`knotwork up` for real: the native engine, one trivial workload, the ingress.

Skipped when the native engine is not installed. Every wait has a deadline.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from knotwork.kernel import Hooks, make_plugin_manager
from knotwork_local.state import pid_alive

HELLO = ("import http.server, os\n"
         "class H(http.server.BaseHTTPRequestHandler):\n"
         "    def do_GET(self):\n"
         "        body = os.environ['INSTANCE'].encode()\n"
         "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
         "        self.wfile.write(body)\n"
         "    def log_message(self, *a): pass\n"
         "http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n")


def native_installed() -> bool:
    try:
        return "native" in Hooks(make_plugin_manager()).registry()["proxy_engines"]
    except Exception:  # noqa: BLE001 - a plugin being written may not load yet
        return False


pytestmark = pytest.mark.skipif(not native_installed(), reason="the native proxy engine is not installed")


def readline(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no line from knotwork up within {timeout} s")
    return proc.stdout.readline()


def test_up_serves_through_the_ingress_and_stops_cleanly(tmp_path):
    (tmp_path / "knotwork.yaml").write_text(textwrap.dedent("""
        plugins: {platform: local, engine: native}
        local:
          drain_timeout: 0.5
          ingress:
            routes: [{prefix: /, service: hello, port: 8080}]
          workloads:
            - name: hello
              service: hello
              command: [python, -c, {code}]
              ports: [{port: 8080, name: http}]
              readiness: {http: /}
        """).replace("{code}", json.dumps(HELLO)))
    up = subprocess.Popen([sys.executable, "-m", "knotwork", "up", str(tmp_path), "--quiet"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = readline(up, 60)
        assert line.startswith("Ingress: http://127.0.0.1:"), line + up.stderr.read() if up.poll() is not None else line
        url = line.split()[1]
        with urllib.request.urlopen(url + "anything", timeout=10) as reply:  # printed once it is served
            assert (reply.status, reply.read()) == (200, b"hello-1")
        state = json.loads((tmp_path / ".knotwork" / "state.json").read_text())
        pids = [state["control"]["pid"], state["gateway"]["pid"],
                *(p for i in state["instances"] for p in (i["pid"], i["sidecar"]["pid"]))]
        assert all(pids) and state["ingress"]["url"] == url
    finally:
        began = time.monotonic()
        up.send_signal(signal.SIGINT)
        rc = up.wait(timeout=10)
    assert rc == 0 and time.monotonic() - began < 5
    assert not [p for p in pids if pid_alive(p)]
    assert json.loads((tmp_path / ".knotwork" / "state.json").read_text())["up"]["pid"] is None
