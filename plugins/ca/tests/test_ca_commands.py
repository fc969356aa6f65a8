"""`knotwork certs`: the table it prints from the proxies' GET /identity answers, and a mesh not running.

(Against a running mesh, with real sidecars, it is tested by the end-to-end tests.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from knotwork.testing import make_ca, make_svid
from knotwork_ca.commands import render

ALICE = "spiffe://cluster.local/ns/default/sa/reviews"


def test_render_shows_identity_serial_validity_and_the_chain_to_the_root(tmp_path: Path) -> None:
    svid = make_svid(make_ca(tmp_path / "root", "Knotwork root CA"), ALICE)
    status = {"identity": ALICE, "renewals": 2, "last_error": None, **svid.describe()}
    text = render([{"node": "sidecar~reviews-v1-1", "instance": "reviews-v1-1", "workload": "reviews-v1", **status}])
    lines = text.splitlines()
    assert lines[0] == "reviews-v1-1 (sidecar~reviews-v1-1)"
    assert f"  identity:    {ALICE}" in lines
    assert f"  serial:      {format(svid.serial, 'x')}" in lines
    assert f"  not before:  {status['not_before']}" in lines and f"  not after:   {status['not_after']}" in lines
    assert "  renewals:    2" in lines
    chain = [line for line in lines if "→" in line]
    assert len(chain) == 2  # the leaf, then the root
    assert chain[0].startswith(f"  chain:       {ALICE}  →  CN=Knotwork root CA")  # no subject: named by its SPIFFE ID
    assert "CN=Knotwork root CA  →  CN=Knotwork root CA  (root)" in chain[1]
    assert not any("last error" in line for line in lines)


def test_render_without_identity_certificate_or_admin() -> None:
    text = render([
        {"node": "sidecar~a-1", "instance": "a-1", "identity": None},
        {"node": "sidecar~b-1", "instance": "b-1", "identity": ALICE, "renewals": 0,
         "last_error": "UNAUTHENTICATED: no credential"},
        {"node": "gateway~ingress", "instance": "", "admin_error": "http://127.0.0.1:1/identity: refused"},
    ])
    assert text.splitlines() == [
        "a-1 (sidecar~a-1)",
        "  identity:    none (the mesh has no certificate authority: plaintext)",
        "b-1 (sidecar~b-1)",
        f"  identity:    {ALICE}",
        "  certificate: none yet (still requesting)",
        "  last error:  UNAUTHENTICATED: no credential",
        "gateway~ingress",
        "  error:       admin not reachable: http://127.0.0.1:1/identity: refused",
    ]


def test_a_mesh_not_running_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "knotwork.yaml").write_text("plugins: {certificate_authority: ca}\n")
    result = subprocess.run([sys.executable, "-m", "knotwork", "certs", "reviews", "--mesh", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("knotwork certs: the mesh is not running") and "knotwork up" in err[0]


def test_knotwork_check_reports_a_bad_cacerts_folder(tmp_path):
    (tmp_path / "knotwork.yaml").write_text("plugins: {certificate_authority: ca}\nca: {cacerts: certs}\n")
    done = subprocess.run([sys.executable, "-m", "knotwork", "check", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"{tmp_path / 'knotwork.yaml'}: ca.cacerts: {tmp_path / 'certs'}: expected a cacerts "
                                   "folder (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem), got no such folder")
    assert not (tmp_path / ".knotwork").exists()  # a check changes nothing
