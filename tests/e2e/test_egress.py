"""Egress on both engines: outboundTrafficPolicy and ServiceEntry, applied live.

Istio's egress tasks (https://istio.io/latest/docs/tasks/traffic-management/egress/)
with the test's own HTTP server on 127.0.0.1 as the "external" service, reached
through the HTTP proxy port of a client workload's sidecar (`sleep`, as in
Istio's docs): by default (ALLOW_ANY) an unknown host is passed through; a
root-namespace Sidecar with REGISTRY_ONLY blocks it (502, flag NR, for plain
requests and CONNECT alike); a STATIC or DNS ServiceEntry opens it again, and a
VirtualService on the entry's host applies (its timeout gives 504 UT). YAML in
tests/e2e/egress/ is Istio's with host names and ports changed; the server's
port is filled in for ``${EXTERNAL_PORT}``. Waits poll behaviour against a
deadline; nothing sleeps blindly.
"""

from __future__ import annotations

import contextlib
import socket
import string
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from .harness import RunningMesh, running_mesh, wait_for

EGRESS = Path(__file__).resolve().parent / "egress"
STATIC_HOST = "httpbin.external.test"  # not in any DNS: only the STATIC ServiceEntry can route it
#: A name that fails without asking any DNS server (longer than DNS allows: the resolver refuses
#: it before sending a query), so passing it through keeps the test on loopback.
UNRESOLVABLE = ".".join(["a" * 60] * 5) + ".invalid"


class _External(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        if url.path == "/slow":
            time.sleep(float(parse_qs(url.query).get("s", ["1"])[0]))
        body = f"external {self.headers.get('host')} {url.path}".encode()
        try:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the proxy gave up first (a route timeout)
            self.close_connection = True

    def log_message(self, fmt: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def external() -> Iterator[int]:
    """An HTTP server outside the mesh, on loopback; yields its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _External)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def mesh(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with running_mesh(EGRESS / "mesh", tmp_path_factory.mktemp(f"egress-{engine}"), "--engine", engine) as running:
        yield running


@pytest.fixture(scope="module")
def proxy(mesh: RunningMesh) -> int:
    """The HTTP proxy port of the `sleep` workload's sidecar (its HTTP_PROXY)."""
    (sleep,) = [i for i in mesh.instances() if i["workload"] == "sleep"]
    return sleep["ports"]["http_proxy"]


# --------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def applied(mesh: RunningMesh, port: int, *names: str) -> Iterator[None]:
    """Apply `names` (``${EXTERNAL_PORT}`` filled in) in order; delete them on the way out."""
    done: list[Path] = []
    try:
        for name in names:
            text = string.Template((EGRESS / name).read_text()).substitute(EXTERNAL_PORT=port)
            path = mesh.dir.parent / name
            path.write_text(text)
            result = mesh.knotwork("apply", "-f", str(path))
            assert result.returncode == 0, (name, result.stdout, result.stderr)
            done.append(path)
        yield
    finally:
        errors = []
        for path in reversed(done):
            result = mesh.knotwork("delete", "-f", str(path))
            if result.returncode != 0:
                errors.append(f"delete {path.name}: {result.stderr}")
        assert not errors, errors


def get(proxy: int, url: str, timeout: float = 10) -> httpx.Response:
    with httpx.Client(proxy=f"http://127.0.0.1:{proxy}", timeout=timeout) as client:
        return client.get(url)


def outcome(proxy: int, url: str) -> tuple[int, str | None]:
    response = get(proxy, url)
    return response.status_code, response.headers.get("x-knotwork-response-flags")


def blocked(proxy: int, url: str) -> bool:
    return outcome(proxy, url) == (502, "NR")


def connect(proxy: int, authority: str, path: str = "/tunnel") -> tuple[int, bytes]:
    """CONNECT `authority` through the proxy; on 200, one plain HTTP request in the tunnel.

    Returns (CONNECT status, the tunneled response or the refusal)."""
    with socket.create_connection(("127.0.0.1", proxy), timeout=10) as sock:
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        status = int(head.split()[1])
        if status != 200:
            return status, head
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n".encode())
        rest = head.partition(b"\r\n\r\n")[2]
        while chunk := sock.recv(4096):
            rest += chunk
        return status, rest


# --------------------------------------------------------------------------- scenarios

def test_allow_any_passes_unknown_hosts_through(mesh: RunningMesh, proxy: int, external: int) -> None:
    """The mesh default: a host no service names goes where the request points (PassthroughCluster)."""
    for host in (f"127.0.0.1:{external}", f"localhost:{external}"):
        response = wait_for(lambda h=host: (r := get(proxy, f"http://{h}/anything")).status_code == 200 and r,
                            15, f"passthrough to {host}")
        assert response.text == f"external {host} /anything"
    assert get(proxy, f"http://{UNRESOLVABLE}/").status_code == 503  # passed through, but no such name
    status, tunneled = connect(proxy, f"localhost:{external}")
    assert status == 200 and tunneled.endswith(f"external localhost:{external} /tunnel".encode())


def test_registry_only_blocks_and_service_entries_open(mesh: RunningMesh, proxy: int, external: int) -> None:
    unknown = f"http://localhost:{external}/blocked"
    with applied(mesh, external, "sidecar-registry-only.yaml"):
        began = time.monotonic()
        wait_for(lambda: blocked(proxy, unknown), 15, "REGISTRY_ONLY to block the unknown host")
        print(f"\nREGISTRY_ONLY applied -> blocked in {(time.monotonic() - began) * 1000:.0f} ms")
        response = get(proxy, unknown)
        assert (response.status_code, response.headers["x-knotwork-response-flags"]) == (502, "NR")
        assert f"localhost:{external}" in response.text  # the refusal names the host
        assert blocked(proxy, f"http://{STATIC_HOST}/")
        status, refusal = connect(proxy, f"localhost:{external}")  # HTTPS through the proxy: same policy
        assert status == 502 and b"x-knotwork-response-flags: NR" in refusal

        with applied(mesh, external, "service-entry-static.yaml"):
            wait_for(lambda: get(proxy, f"http://{STATIC_HOST}/static").status_code == 200, 15,
                     "the STATIC ServiceEntry to route")
            assert get(proxy, f"http://{STATIC_HOST}/static").text == f"external {STATIC_HOST} /static"
            assert blocked(proxy, unknown)  # only what the entry names is open

        with applied(mesh, external, "service-entry-dns.yaml"):
            wait_for(lambda: get(proxy, unknown).status_code == 200, 15, "the DNS ServiceEntry to route")
            assert get(proxy, unknown).text == f"external localhost:{external} /blocked"
            status, tunneled = connect(proxy, f"localhost:{external}")
            assert status == 200 and tunneled.endswith(f"external localhost:{external} /tunnel".encode())
            assert blocked(proxy, f"http://{STATIC_HOST}/")

        wait_for(lambda: blocked(proxy, unknown), 15, "deleting the ServiceEntry to block the host again")
    wait_for(lambda: get(proxy, unknown).status_code == 200, 15, "deleting the Sidecar to restore ALLOW_ANY")


def test_virtual_service_on_a_service_entry_host(mesh: RunningMesh, proxy: int, external: int) -> None:
    """A 0.5 s timeout on the external host: 504 UT for a 3 s answer, fast answers unaffected."""
    slow = f"http://{STATIC_HOST}/slow?s=3"
    with applied(mesh, external, "service-entry-static.yaml", "virtual-service-httpbin-timeout.yaml"):
        wait_for(lambda: outcome(proxy, slow) == (504, "UT"), 30, "the VirtualService timeout on the entry host")
        began = time.monotonic()
        assert outcome(proxy, slow) == (504, "UT")
        took = time.monotonic() - began
        print(f"\n0.5 s timeout on {STATIC_HOST}: 504 UT after {took:.2f} s")
        assert 0.3 < took < 2.0, took
        assert get(proxy, f"http://{STATIC_HOST}/fast").text == f"external {STATIC_HOST} /fast"


def test_bad_service_entry_is_refused_whole(mesh: RunningMesh, proxy: int, external: int) -> None:
    """A ServiceEntry the compiler cannot translate is refused at apply (exit 2, file, resource, field)."""
    bad = EGRESS / "service-entry-bad-static.yaml"
    result = mesh.knotwork("apply", "-f", str(bad))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "ServiceEntry/default/bad-static" in result.stderr and "spec.endpoints[0].address" in result.stderr
    assert "needs an IP address" in result.stderr and "Traceback" not in result.stderr
    assert get(proxy, f"http://127.0.0.1:{external}/still").status_code == 200  # the mesh default keeps serving
