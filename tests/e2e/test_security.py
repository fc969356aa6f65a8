"""Security scenarios on each engine: workload certificates, mTLS between sidecars, PeerAuthentication.

The `secure` mesh (tests/e2e/meshes/secure) runs `front` and `back` with
20-second certificates. A test client speaks to `back`'s sidecar inbound
port directly, with no certificate, with an SVID the mesh's own root signed
(read from the CA's state directory, as only the mesh owner could), and
with certificates the mesh must refuse.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from cryptography import x509
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from knotwork.identity import Svid, client_context, make_csr, make_key
from knotwork.testing import make_ca, make_svid, sign_request

from .harness import REPO, RunningMesh, running_mesh, wait_for

SECURE = REPO / "tests" / "e2e" / "meshes" / "secure"
TD = "spiffe://cluster.local"
FRONT, BACK = f"{TD}/ns/default/sa/front", f"{TD}/ns/default/sa/back"
GATEWAY = f"{TD}/ns/knotwork-system/sa/knotwork-ingressgateway"


@pytest.fixture(scope="module")
def secure(engine: str, tmp_path_factory: pytest.TempPathFactory):
    with running_mesh(SECURE, tmp_path_factory.mktemp(f"secure-{engine}"), "--engine", engine) as mesh:
        yield mesh


@pytest.fixture(scope="module")
def mesh_root(secure: RunningMesh, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mesh root as a knotwork.testing CA (``.crt`` and ``.key`` side by side)."""
    ca_dir = secure.dir / ".knotwork" / "ca"
    out = tmp_path_factory.mktemp("mesh-root") / "root.crt"
    shutil.copy(ca_dir / "root-cert.pem", out)
    shutil.copy(ca_dir / "root-key.pem", out.with_suffix(".key"))
    return out


# ── a client that talks to a sidecar's inbound port itself ─────────────────


def inbound_port(mesh: RunningMesh, instance: str) -> int:
    return int(mesh.instance(f"{instance}-1")["ports"]["inbound:8080"])


def plain_get(port: int, path: str = "/") -> int | None:
    """The status of a plaintext GET, or None when the connection is refused or closed without an answer."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5, headers={"host": "back"})
    except httpx.TransportError:
        return None
    return response.status_code


def tls_get(port: int, svid: Svid | None, bundle: str, path: str = "/") -> tuple[int, dict[str, Any], int]:
    """An mTLS GET (presenting `svid`, verifying the server with `bundle`): status, JSON body, server serial."""
    ctx = client_context(svid, bundle, alpn=("istio-http/1.1", "istio", "http/1.1"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        # TLS 1.3: the client's handshake is done before the server has judged the client's certificate;
        # a refusal shows as an alert or a close on the first read
        serial = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number
        tls.sendall(f"GET {path} HTTP/1.1\r\nhost: back\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        raise ConnectionError("closed without an answer")
    return int(head.split()[1]), json.loads(body or b"{}"), serial


def refused_tls(port: int, svid: Svid | None, bundle: str) -> bool:
    try:
        tls_get(port, svid, bundle)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    return False


def apply(mesh: RunningMesh, tmp: Path, text: str) -> None:
    path = tmp / "policy.yaml"
    path.write_text(text)
    done = mesh.knotwork("apply", "-f", str(path))
    assert done.returncode == 0, done.stderr


def delete(mesh: RunningMesh, tmp: Path) -> None:
    done = mesh.knotwork("delete", "-f", str(tmp / "policy.yaml"))
    assert done.returncode == 0, done.stderr


def certs(mesh: RunningMesh, workload: str) -> list[dict[str, Any]]:
    return mesh.knotwork_json("certs", workload)


STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: STRICT}
"""


# ── scenarios ───────────────────────────────────────────────────────────────


def test_every_proxy_has_an_svid_from_the_mesh_root(secure: RunningMesh) -> None:
    rows = certs(secure, "back")
    assert [r["identity"] for r in rows] == [BACK]
    chain = rows[0]["chain"]
    assert chain[0]["spiffe_ids"] == [BACK] and chain[-1]["subject"] == chain[-1]["issuer"], chain
    table = secure.knotwork("certs", "front")
    assert table.returncode == 0 and FRONT in table.stdout and rows[0]["serial"] not in table.stdout


def test_permissive_by_default_takes_plaintext_and_mtls_on_one_port(secure: RunningMesh, mesh_root: Path) -> None:
    port, bundle = inbound_port(secure, "back"), mesh_root.read_text()
    assert plain_get(port) == 200
    status, body, _ = tls_get(port, make_svid(mesh_root, FRONT), bundle)
    assert status == 200 and f"URI={FRONT}" in body["xfcc"], body
    # sidecar to sidecar: the ingress gateway and front's sidecar use mTLS on their own (auto-mTLS)
    relayed = httpx.get(f"{secure.url}/relay", timeout=10)
    assert relayed.status_code == 200 and f"URI={FRONT}" in relayed.json()["xfcc"], relayed.text
    direct = httpx.get(f"{secure.url}/", timeout=10)
    assert f"URI={GATEWAY}" in direct.json()["xfcc"], direct.text


def test_strict_refuses_plaintext_and_every_certificate_but_a_mesh_svid(
        secure: RunningMesh, mesh_root: Path, tmp_path: Path) -> None:
    port, bundle = inbound_port(secure, "back"), mesh_root.read_text()
    apply(secure, tmp_path, STRICT)
    try:
        wait_for(lambda: plain_get(port) is None, 15, "plaintext to back's sidecar to be refused under STRICT")
        status, body, _ = tls_get(port, make_svid(mesh_root, FRONT), bundle)
        assert status == 200 and f"URI={FRONT}" in body["xfcc"]
        assert refused_tls(port, make_svid(None, FRONT), bundle), "a self-signed certificate was accepted"
        assert refused_tls(port, make_svid(make_ca(tmp_path / "other"), FRONT), bundle), "another CA was accepted"
        assert refused_tls(port, make_svid(mesh_root, FRONT, valid=(-7200, -3600)), bundle), "an expired SVID was accepted"
        assert refused_tls(port, None, bundle), "a client without a certificate was accepted"
        # the mesh keeps working: gateway -> front -> back, all mTLS
        for _ in range(5):
            relayed = httpx.get(f"{secure.url}/relay", timeout=10)
            assert relayed.status_code == 200 and f"URI={FRONT}" in relayed.json()["xfcc"], relayed.text
    finally:
        delete(secure, tmp_path)
    wait_for(lambda: plain_get(port) == 200, 15, "plaintext to be accepted again once the policy is gone")


def test_port_level_disable_under_a_strict_workload_policy(secure: RunningMesh, mesh_root: Path, tmp_path: Path) -> None:
    port = inbound_port(secure, "back")
    apply(secure, tmp_path, """\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: back, namespace: default}
spec:
  selector: {matchLabels: {app: back}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
""")
    try:
        wait_for(lambda: refused_tls(port, make_svid(mesh_root, FRONT), mesh_root.read_text()), 15,
                 "mTLS to be refused on a DISABLE port")
        assert plain_get(port) == 200
        # auto-mTLS: front's sidecar sees back's DISABLE and speaks plaintext to it
        relayed = wait_for(lambda: (r := httpx.get(f"{secure.url}/relay", timeout=10)).status_code == 200 and r, 15,
                           "front to reach back in plaintext")
        assert relayed.json()["xfcc"] is None, relayed.text
    finally:
        delete(secure, tmp_path)


def test_a_client_sidecar_refuses_a_server_that_is_not_who_the_destination_may_be(
        secure: RunningMesh, tmp_path: Path) -> None:
    """`impostor.test` is a ServiceEntry whose endpoint is back's sidecar, which proves back's identity:
    a client sidecar told to expect another identity refuses it before sending the request."""
    port = inbound_port(secure, "back")

    def entry(san: str) -> str:
        return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: impostor, namespace: default}}
spec:
  hosts: [impostor.test]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
  subjectAltNames: ["{san}"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: impostor, namespace: default}}
spec:
  host: impostor.test
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
"""

    relay = f"{secure.url}/relay?to=http://impostor.test:8080/"
    apply(secure, tmp_path, entry(f"{TD}/ns/default/sa/payments"))
    try:
        refused = wait_for(lambda: (r := httpx.get(relay, timeout=10)).status_code == 503 and r, 15,
                           "front's sidecar to refuse a server proving the wrong identity")
        assert "instance" not in refused.text  # the request never reached back's app
        apply(secure, tmp_path, entry(BACK))
        accepted = wait_for(lambda: (r := httpx.get(relay, timeout=10)).status_code == 200 and r, 15,
                            "front's sidecar to accept back once back's identity is the expected one")
        assert f"URI={FRONT}" in accepted.json()["xfcc"]
    finally:
        delete(secure, tmp_path)


@pytest.fixture
def https_server(tmp_path: Path):
    """A TLS server outside the mesh on 127.0.0.1 for `api.test`, its certificate from a CA of its own:
    yields (port, CA file); it answers with the server name the client sent."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from knotwork.testing import make_certificate

    ca = make_ca(tmp_path / "api-ca")
    cert, key = make_certificate(ca, tmp_path / "api", "api.test")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    names: list[str] = []
    ctx.sni_callback = lambda sock, name, _: names.append(name or "")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = json.dumps({"outside": True, "sni": names[-1] if names else None}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], ca
    finally:
        server.shutdown()
        server.server_close()


def test_tls_origination_to_a_service_entry_host(secure: RunningMesh, https_server, tmp_path: Path) -> None:
    """The app speaks plain HTTP to `api.test`; its sidecar originates TLS (DestinationRule SIMPLE), verifying
    the server with the CA file the rule names and sending the rule's SNI."""
    port, ca = https_server
    apply(secure, tmp_path, f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: default}}
spec:
  host: api.test
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {ca}, sni: api.test}}
""")
    try:
        relay = f"{secure.url}/relay?to=http://api.test/"
        got = wait_for(lambda: (r := httpx.get(relay, timeout=10)).status_code == 200 and r, 15,
                       "front's sidecar to originate TLS to api.test")
        assert got.json() == {"outside": True, "sni": "api.test"}
    finally:
        delete(secure, tmp_path)


def _csr_call(address: str, bundle: str, request: dict, svid: Svid | None = None) -> dict:
    return anyio.run(sign_request, address, bundle, request, svid)


def test_the_certificate_service_refuses_bad_requests_and_keeps_serving(secure: RunningMesh, mesh_root: Path) -> None:
    address = secure.knotwork_json("status")["control"]["ca_address"]
    bundle = mesh_root.read_text()
    cases = [
        ({"csr": "garbage", "node": "x", "platform": "local", "credential": "c"}, None, Status.INVALID_ARGUMENT, "csr"),
        ({"csr": make_csr(make_key(), BACK), "node": "sidecar~back-1", "platform": "local",
          "credential": "not-issued"}, None, Status.PERMISSION_DENIED, "unknown bootstrap credential"),
        ({"csr": make_csr(make_key(), BACK)}, make_svid(mesh_root, FRONT), Status.PERMISSION_DENIED, "authenticated as"),
        ({"csr": make_csr(make_key(), BACK), "node": "sidecar~back-1", "platform": "local"}, None,
         Status.UNAUTHENTICATED, "credential"),
    ]
    # the credential `up` gave front's sidecar (still readable in its /proc environ by the same user): spent
    front = secure.instance("front-1")
    environ = Path(f"/proc/{front['sidecar']['pid']}/environ").read_bytes().split(b"\0")
    spent = next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"KNOTWORK_CREDENTIAL="))
    cases.append(({"csr": make_csr(make_key(), FRONT), "node": front["node"], "platform": "local", "credential": spent},
                  None, Status.PERMISSION_DENIED, "already used"))
    for request, svid, status, words in cases:
        with pytest.raises(GRPCError) as info:
            _csr_call(address, bundle, request, svid)
        assert info.value.status is status and words in info.value.message, info.value.message
    assert httpx.get(f"{secure.url}/relay", timeout=10).status_code == 200
    assert _csr_call(address, bundle, {"csr": make_csr(make_key(), FRONT)}, make_svid(mesh_root, FRONT))["certificate_chain"]


def tls_upstream_connections(mesh: RunningMesh, engine: str, workload: str) -> tuple[int, int]:
    """(TLS upstream connections made so far, open now) of a workload's sidecar, from its admin /stats."""
    admin = int(mesh.instance(f"{workload}-1")["ports"]["admin"])
    text = httpx.get(f"http://127.0.0.1:{admin}/stats", timeout=5).text
    if engine == "native":
        stats = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
        return int(stats.get("upstream_cx_tls_total", 0)), int(stats.get("upstream_cx_tls_active", 0))
    total = active = 0  # Envoy: its outbound clusters (mesh mTLS here)
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name.startswith("cluster.outbound|") and name.endswith(".upstream_cx_total"):
            total += int(value)
        elif name.startswith("cluster.outbound|") and name.endswith(".upstream_cx_active"):
            active += int(value)
    return total, active


def test_rotation_under_load_loses_no_request(secure: RunningMesh, mesh_root: Path, engine: str) -> None:
    """200 requests/s for 60 s through gateway -> front -> back with 20-second certificates."""
    rate, duration, workers = 200, 60.0, 8
    results: Counter[int] = Counter()
    failures: list[str] = []
    stop = threading.Event()
    began = time.monotonic()

    def worker(index: int) -> None:
        interval = workers / rate
        next_at = began + index * interval / workers
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                now = time.monotonic()
                if now < next_at:
                    stop.wait(next_at - now)
                    continue
                next_at += interval
                try:
                    response = client.get(f"{secure.url}/relay")
                    results[response.status_code] += 1
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    before = {w: certs(secure, w)[0]["serial"] for w in ("front", "back")}
    # during the load, the same /identity answers `knotwork certs` shows, read straight from the sidecars' admin
    admins = {w: int(secure.instance(f"{w}-1")["ports"]["admin"]) for w in ("front", "back")}
    serials: dict[str, list[str]] = {w: [s] for w, s in before.items()}
    last: tuple[int, int] | None = None
    presented: list[tuple[str, str]] = []  # (serial the sidecar's admin shows, serial a new handshake got)
    # front's sidecar to back's, around each of front's rotations: (made before, open before, made after)
    pools: list[tuple[int, int, int]] = []
    port, bundle = inbound_port(secure, "back"), mesh_root.read_text()
    try:
        while time.monotonic() - began < duration:
            made, open_now = tls_upstream_connections(secure, engine, "front")
            for workload, seen in serials.items():
                serial = secure.admin(admins[workload], "/identity")["serial"]
                if seen[-1] != serial:
                    seen.append(serial)
                    if workload == "front" and last is not None:
                        pools.append((*last, made))
            last = (made, open_now)
            shown = serials["back"][-1]
            _, _, got = tls_get(port, make_svid(mesh_root, FRONT), bundle)
            presented.append((shown, format(got, "x")))
            stop.wait(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    after = {w: certs(secure, w)[0]["serial"] for w in ("front", "back")}
    total = sum(results.values())
    assert total >= rate * duration * 0.9, f"only {total} requests sent"
    assert not failures, f"{len(failures)} of {total} failed, e.g. {failures[:5]}"
    for workload, seen in serials.items():
        assert len(seen) >= 3, f"{workload}: serials {seen} (wanted at least two changes in {duration} s)"
        assert after[workload] != before[workload]  # `knotwork certs` shows the renewals too
    # a rotation that did not cut the pool: fewer new connections over it than were open before it
    assert any(after_made - made < open_before for made, open_before, after_made in pools), \
        f"every rotation replaced front's pooled connections to back: {pools}"
    fresh = [shown == got for shown, got in presented]
    assert sum(fresh) >= len(fresh) - 2, f"new handshakes did not present the current serial: {presented}"
    assert len({got for _, got in presented}) >= 3, presented
