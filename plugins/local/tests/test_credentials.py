"""One-time bootstrap credentials: what the state document carries, the
control plane's book (issue, redeem once, refuse the rest, survive a restart)
and the `knotwork_attest_workload` hook reaching the running platform's book."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import anyio
import pytest

from knotwork.model import Identity, MeshSettings, PlatformSnapshot
from knotwork.records import AttestationClaim, ComponentContext
from knotwork_local import credentials
from knotwork_local.credentials import REDEEMED_FILE, CredentialBook, fingerprint, registered
from knotwork_local.platform import GATEWAY_NODE, LocalPlatform
from knotwork_local.ports import plan_ports
from knotwork_local.settings import LocalSettings, PortSettings, WorkloadSettings
from knotwork_local.state import json_line
from knotwork_local.supervisor import Supervisor

MESH = MeshSettings(trust_domain="td.example")
SETTINGS = LocalSettings(workloads=(
    WorkloadSettings(name="web", service="web", command=("x",), replicas=2, ports=(PortSettings(8080, "http"),)),
    WorkloadSettings(name="db", service="db", namespace="data", service_account="mysql", command=("x",)),
))
WEB = "spiffe://td.example/ns/default/sa/web"
DB = "spiffe://td.example/ns/data/sa/mysql"
GATEWAY = "spiffe://td.example/ns/knotwork-system/sa/knotwork-ingressgateway"


def fake_up(tmp_path: Path, ca: str | None = "ca") -> Supervisor:
    """A supervisor that is not running: its document is what `up` would stream."""
    return Supervisor(mesh_path=tmp_path / "knotwork.yaml", settings=SETTINGS, mesh=MESH, plan=plan_ports(SETTINGS),
                      engine="native", certificate_authority=ca)


def spawn_all(up: Supervisor) -> dict[str, str]:
    """What the supervisor does before each proxy spawn: a fresh credential, its hash in the state."""
    secrets: dict[str, str] = {}
    for node, status in [(i.node, i.sidecar) for i in up.instances.values()] + [(GATEWAY_NODE, up.gateway)]:
        secrets[node], status.credential_sha256 = credentials.issue()
    return secrets


def test_state_document_carries_hashes_and_identities_never_credentials(tmp_path):
    up = fake_up(tmp_path)
    secrets = spawn_all(up)
    doc = up.document()
    text = json.dumps(doc)
    assert not any(secret in text for secret in secrets.values())
    assert all(len(s) >= 43 for s in secrets.values()) and len(set(secrets.values())) == 4  # 32 random bytes each
    web1, db1 = doc["instances"][0], doc["instances"][2]
    assert (web1["node"], web1["identity"]) == ("sidecar~web-1", WEB)
    assert (db1["node"], db1["identity"]) == ("sidecar~db-1", DB)
    assert web1["sidecar"]["credential_sha256"] == fingerprint(secrets["sidecar~web-1"])
    assert re.fullmatch(r"[0-9a-f]{64}", web1["sidecar"]["credential_sha256"])
    assert "credential_sha256" not in web1  # the app has none
    gw = doc["gateway"]
    assert (gw["node"], gw["identity"], gw["credential_sha256"]) == (GATEWAY_NODE, GATEWAY, fingerprint(secrets[GATEWAY_NODE]))
    assert doc["control"]["certificate_authority"] == "ca"
    assert doc["control"]["ca_address"] == f"127.0.0.1:{up.plan.ca}" != doc["control"]["address"]
    assert credentials.grants_of(doc) == {
        fingerprint(secrets[n]): credentials.Grant(n, i) for n, i in (
            ("sidecar~web-1", WEB), ("sidecar~web-2", WEB), ("sidecar~db-1", DB), (GATEWAY_NODE, GATEWAY))}

    plain = fake_up(tmp_path, ca=None).document()
    assert plain["control"]["certificate_authority"] is plain["control"]["ca_address"] is None
    assert plain["instances"][0]["sidecar"]["credential_sha256"] is None and credentials.grants_of(plain) == {}


def test_a_credential_is_redeemed_once_for_its_own_node_and_identity(tmp_path):
    up = fake_up(tmp_path)
    secrets = spawn_all(up)
    book = CredentialBook(tmp_path / REDEEMED_FILE)
    with pytest.raises(ValueError, match="^unknown bootstrap credential$"):  # its state has not arrived yet
        book.redeem(secrets["sidecar~web-1"], "sidecar~web-1", WEB)
    book.update(up.document())

    # another node or identity than it was issued for: refused, and not spent
    with pytest.raises(ValueError, match=re.escape(
            f"bootstrap credential was issued to node sidecar~web-1 as {WEB}, not to node sidecar~db-1 as {DB}")):
        book.redeem(secrets["sidecar~web-1"], "sidecar~db-1", DB)
    with pytest.raises(ValueError, match="issued to node sidecar~web-1 as .*, not to node sidecar~web-2 as"):
        book.redeem(secrets["sidecar~web-1"], "sidecar~web-2", WEB)  # same identity, another node
    with pytest.raises(ValueError, match=f"not to node sidecar~web-1 as {DB}"):
        book.redeem(secrets["sidecar~web-1"], "sidecar~web-1", DB)

    assert book.redeem(secrets["sidecar~web-1"], "sidecar~web-1", WEB) == Identity("td.example", "default", "web")
    with pytest.raises(ValueError, match="^bootstrap credential already used$"):
        book.redeem(secrets["sidecar~web-1"], "sidecar~web-1", WEB)
    assert book.redeem(secrets[GATEWAY_NODE], GATEWAY_NODE, GATEWAY) == Identity.parse(GATEWAY)
    with pytest.raises(ValueError, match="^unknown bootstrap credential$"):
        book.redeem("made-up", "sidecar~web-1", WEB)

    # the hashes are on disk, 0600, and a new book (a restarted control plane) still refuses them
    path = tmp_path / REDEEMED_FILE
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert set(json.loads(path.read_text())["redeemed"]) == {fingerprint(secrets["sidecar~web-1"]),
                                                             fingerprint(secrets[GATEWAY_NODE])}
    assert not any(s in path.read_text() for s in secrets.values())
    again = CredentialBook(path)
    again.update(up.document())
    with pytest.raises(ValueError, match="^bootstrap credential already used$"):
        again.redeem(secrets["sidecar~web-1"], "sidecar~web-1", WEB)
    assert again.redeem(secrets["sidecar~db-1"], "sidecar~db-1", DB) == Identity.parse(DB)


def test_the_credential_of_a_restarted_proxy_is_dead(tmp_path):
    up = fake_up(tmp_path)
    first = spawn_all(up)
    book = CredentialBook(tmp_path / REDEEMED_FILE)
    book.update(up.document())
    assert book.redeem(first["sidecar~web-1"], "sidecar~web-1", WEB)

    # web-1's and web-2's sidecars restart (web-2 never used its credential): new credentials, old ones dead
    web1, web2 = up.instances["web-1"].sidecar, up.instances["web-2"].sidecar
    web2.credential_sha256 = None  # exited, waiting for its restart
    book.update(up.document())
    with pytest.raises(ValueError, match=re.escape("no longer valid: the proxy it was issued to (sidecar~web-2) has "
                                                   "exited or restarted since")):
        book.redeem(first["sidecar~web-2"], "sidecar~web-2", WEB)
    second, web1.credential_sha256 = credentials.issue()
    third, web2.credential_sha256 = credentials.issue()
    book.update(up.document())
    with pytest.raises(ValueError, match="no longer valid: the proxy it was issued to \\(sidecar~web-1\\)"):
        book.redeem(first["sidecar~web-1"], "sidecar~web-1", WEB)
    assert book.redeem(second, "sidecar~web-1", WEB) and book.redeem(third, "sidecar~web-2", WEB)
    # the file keeps only hashes still outstanding: one per proxy at most
    book.update(up.document())
    assert set(json.loads((tmp_path / REDEEMED_FILE).read_text())["redeemed"]) == {fingerprint(second), fingerprint(third)}
    # a restarted control plane knows nothing of older spawns: still refused
    again = CredentialBook(tmp_path / REDEEMED_FILE)
    again.update(up.document())
    for secret, node in ((first["sidecar~web-1"], "sidecar~web-1"), (second, "sidecar~web-1"), (third, "sidecar~web-2")):
        with pytest.raises(ValueError, match="^(unknown bootstrap credential|bootstrap credential already used)$"):
            again.redeem(secret, node, WEB)


def test_a_redemption_that_cannot_be_recorded_is_refused_and_not_spent(tmp_path):
    up = fake_up(tmp_path)
    secrets = spawn_all(up)
    book = CredentialBook(tmp_path / "missing-dir" / REDEEMED_FILE)
    book.update(up.document())
    with pytest.raises(ValueError, match="cannot record the redeemed bootstrap credential .*; try again"):
        book.redeem(secrets["sidecar~db-1"], "sidecar~db-1", DB)
    (tmp_path / "missing-dir").mkdir()
    assert book.redeem(secrets["sidecar~db-1"], "sidecar~db-1", DB) == Identity.parse(DB)


def test_the_hook_redeems_local_claims_in_the_running_platform_book(tmp_path, local_hooks):
    up = fake_up(tmp_path)
    secrets = spawn_all(up)
    claim = AttestationClaim("local", "sidecar~web-2", WEB, secrets["sidecar~web-2"])
    with pytest.raises(ValueError, match="^unknown bootstrap credential \\(the local platform is not running"):
        local_hooks.attest_workload(claim)
    assert local_hooks.attest_workload(AttestationClaim("nomad", "n", WEB, "jwt")) is None  # not ours
    other, book = CredentialBook(), CredentialBook(tmp_path / REDEEMED_FILE)
    book.update(up.document())
    with registered(book), registered(other):  # two control planes in one process: the one that issued it answers
        assert local_hooks.attest_workload(claim) == Identity.parse(WEB)
        with pytest.raises(ValueError, match="^bootstrap credential already used$"):
            local_hooks.attest_workload(claim)
        with pytest.raises(ValueError, match="^unknown bootstrap credential$"):
            local_hooks.attest_workload(AttestationClaim("local", "sidecar~web-2", WEB, "guess"))
    with pytest.raises(ValueError, match="not running"):
        local_hooks.attest_workload(claim)


@pytest.mark.anyio
async def test_the_platform_component_books_the_credentials_of_ups_documents(tmp_path, local_hooks):
    up = fake_up(tmp_path)
    first = spawn_all(up)
    ctx = ComponentContext(mesh=MESH, settings=SETTINGS, mesh_dir=tmp_path, state_dir=tmp_path)
    send, receive = anyio.create_memory_object_stream[PlatformSnapshot](10)
    platform = LocalPlatform(ctx)
    listener = await anyio.create_unix_listener(tmp_path / "platform.sock")
    async with listener, anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            await tg.start(platform.run, send)
            client = await listener.accept()
            await client.send(json_line({**up.document(), "generation": 1}))
            await receive.receive()
            claim = AttestationClaim("local", "sidecar~db-1", DB, first["sidecar~db-1"])
            assert local_hooks.attest_workload(claim) == Identity.parse(DB)
            second, up.instances["db-1"].sidecar.credential_sha256 = credentials.issue()  # db-1's sidecar restarted
            await client.send(json_line({**up.document(), "generation": 2}))
            await receive.receive()
            with pytest.raises(ValueError, match="no longer valid"):
                local_hooks.attest_workload(claim)
            assert local_hooks.attest_workload(AttestationClaim("local", "sidecar~db-1", DB, second))
            await client.aclose()
        tg.cancel_scope.cancel()
    with pytest.raises(ValueError, match="not running"):  # the stopped component's book is gone
        local_hooks.attest_workload(AttestationClaim("local", "sidecar~web-1", WEB, first["sidecar~web-1"]))
