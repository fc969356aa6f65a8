"""Istio's secure ingress task on Bookinfo, both engines: a Gateway terminating TLS with a
certificate from files (https://istio.io/latest/docs/tasks/traffic-management/ingress/secure-ingress/,
the file-mounted variant), real HTTPS from outside with SNI, verified against a test CA.

The local platform gives the ingress gateway a loopback port for Gateway servers on
port 443 (``gateway:443`` in ``knotwork status``); the certificate files live in the
mesh directory and are named relative to it.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from .harness import RunningMesh, wait_for
from knotwork.testing import make_ca, make_certificate

HOST = "bookinfo.example.com"

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: mygateway
  labels:
    generation: "{generation}"
spec:
  selector:
    istio: ingressgateway # use istio default ingress gateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: SIMPLE
      serverCertificate: certs/tls.crt
      privateKey: certs/tls.key
    hosts:
    - "bookinfo.example.com"
"""

VIRTUAL_SERVICE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts:
  - "bookinfo.example.com"
  gateways:
  - mygateway
  http:
  - match:
    - uri:
        exact: /productpage
    - uri:
        prefix: /static
    - uri:
        prefix: /api/v1/products
    route:
    - destination:
        host: productpage
        port:
          number: 9080
"""


@pytest.fixture(scope="module")
def mesh(bookinfo: RunningMesh) -> RunningMesh:
    """This module's Bookinfo mesh (one per engine)."""
    return bookinfo


def https_port(mesh: RunningMesh) -> int:
    return mesh.state()["gateway"]["ports"]["gateway:443"]


def client_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def presented_certificate(port: int, sni: str, ca: Path) -> x509.Certificate:
    """The certificate the gateway presents for `sni` (the handshake verifies it against `ca`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            client_context(ca).wrap_socket(raw, server_hostname=sni) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def get(client: httpx.Client, port: int, path: str, sni: str = HOST, host: str = HOST) -> httpx.Response:
    """GET over HTTPS to the gateway on 127.0.0.1, with TLS server name `sni` and Host `host`."""
    return client.get(f"https://127.0.0.1:{port}{path}", headers={"host": host}, extensions={"sni_hostname": sni})


def apply_text(mesh: RunningMesh, name: str, text: str, verb: str = "apply") -> None:
    path = mesh.dir.parent / name
    path.write_text(text)
    done = mesh.knotwork(verb, "-f", str(path))
    assert done.returncode == 0, (verb, name, done.stdout, done.stderr)


def test_https_ingress_with_a_certificate_from_files(mesh: RunningMesh):
    certs = mesh.dir / "certs"
    certs.mkdir(exist_ok=True)
    ca = make_ca(mesh.dir.parent / "example-ca")
    make_certificate(ca, certs / "tls", HOST)
    port = https_port(mesh)
    with httpx.Client(verify=client_context(ca), timeout=10) as client:
        applied = time.monotonic()
        apply_text(mesh, "bookinfo-gateway-tls.yaml", GATEWAY.format(generation=1) + "---\n" + VIRTUAL_SERVICE)
        try:
            def served() -> bool:
                return get(client, port, "/productpage").status_code == 200

            wait_for(served, 30, "HTTPS /productpage through the gateway")
            print(f"\nHTTPS served {time.monotonic() - applied:.2f}s after apply")
            page = get(client, port, "/productpage")
            assert "Book Details" in page.text or "productpage" in page.text.lower()
            assert page.http_version == "HTTP/1.1"

            # a Host the Gateway does not expose: TLS is fine, but there is no route
            assert get(client, port, "/productpage", host="other.example.com").status_code == 404
            # a server name no Gateway server names: the handshake is refused (a new connection:
            # httpx pools connections by address, not by server name)
            with httpx.Client(verify=client_context(ca), timeout=10) as fresh, pytest.raises(httpx.ConnectError):
                get(fresh, port, "/productpage", sni="other.example.com")
            # plain HTTP on the TLS port is not served
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/productpage", headers={"host": HOST}, timeout=5)

            # renew the certificate files, then push the Gateway again (any change does)
            before = presented_certificate(port, HOST, ca)
            make_certificate(ca, certs / "tls", HOST)
            renewed = x509.load_pem_x509_certificate((certs / "tls.crt").read_bytes())
            assert renewed.serial_number != before.serial_number
            apply_text(mesh, "bookinfo-gateway-tls-2.yaml", GATEWAY.format(generation=2))
            wait_for(lambda: presented_certificate(port, HOST, ca).serial_number == renewed.serial_number, 30,
                     "the renewed certificate to be served")
            assert get(client, port, "/productpage").status_code == 200
        finally:
            apply_text(mesh, "bookinfo-gateway-tls.yaml", GATEWAY.format(generation=2) + "---\n" + VIRTUAL_SERVICE,
                       verb="delete")
        # deleted: the TLS listener is gone
        wait_for(lambda: _refused(port), 30, "the TLS listener to close after delete")


def test_a_missing_certificate_file_is_refused_and_routing_stays(mesh: RunningMesh):
    text = GATEWAY.format(generation=1).replace("certs/tls.crt", "certs/missing.crt")
    path = mesh.dir.parent / "bad-gateway.yaml"
    path.write_text(text)
    done = mesh.knotwork("apply", "-f", str(path))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Gateway/default/mygateway" in done.stderr
    assert "spec.servers[0].tls.serverCertificate" in done.stderr
    assert "missing.crt" in done.stderr
    assert "Traceback" not in done.stderr
    # plain ingress keeps serving
    assert httpx.get(f"{mesh.url}/productpage", timeout=10).status_code == 200


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True
