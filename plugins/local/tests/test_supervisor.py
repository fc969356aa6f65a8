"""One real-process run of the supervisor: a trivial app, fake proxies and control plane.

Checks the start order (an app waits for its sidecar's /ready), the app's
environment, state.json and the platform socket, restarts of a crashed app,
sidecar and control plane on the same ports, and the ordered stop leaving no
process behind. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import anyio
import pytest

from knotwork.identity import CREDENTIAL_ENV
from knotwork.model import MeshSettings, PlatformSnapshot
from knotwork.records import AttestationClaim, ComponentContext
from knotwork_local.credentials import fingerprint
from knotwork_local.platform import LocalPlatform, build_snapshot
from knotwork_local.ports import plan_ports
from knotwork_local.process import http_status
from knotwork_local.settings import (
    IngressRoute,
    IngressSettings,
    LocalSettings,
    PortSettings,
    ReadinessSettings,
    UpstreamSettings,
    WorkloadSettings,
)
from knotwork_local.state import is_running, pid_alive, read_state
from knotwork_local.launch import Launch
from knotwork_local.supervisor import Supervisor

FAKES = Path(__file__).parent / "fakes"
MESH = MeshSettings()
SETTINGS = LocalSettings(
    drain_timeout=0.5,
    ingress=IngressSettings(routes=(IngressRoute("web", 8080, prefix="/"),)),
    workloads=(
        WorkloadSettings(name="web", service="web", command=("python", str(FAKES / "app.py")), replicas=2,
                         labels={"version": "v7"}, env={"EXTRA": "1"}, ports=(PortSettings(8080, "http"),),
                         upstreams=(UpstreamSettings("mysql", 3306),),
                         readiness=ReadinessSettings(http="/health", period=0.2)),
        WorkloadSettings(name="worker", service="worker", command=("python", "-c", "import time; time.sleep(600)")),
    ),
)


@pytest.mark.anyio
async def test_supervisor_runs_restarts_and_stops_a_mesh(tmp_path):
    (tmp_path / "hold-sidecar~web-2").touch()  # web-2's sidecar answers /ready 503 until this goes
    lines: list[str] = []
    up = Supervisor(
        mesh_path=tmp_path / "knotwork.yaml", settings=SETTINGS, mesh=MESH, plan=plan_ports(SETTINGS), engine="native",
        launch=Launch(control=(sys.executable, str(FAKES / "fake_control.py")),
                      proxy=(sys.executable, str(FAKES / "fake_proxy.py"))),
        out=lines.append,
    )
    web1, web2 = up.instances["web-1"], up.instances["web-2"]
    seen: set[int] = set()

    def pids() -> set[int]:
        found = {s.pid for s in (up.control, up.gateway, *(x for i in up.instances.values() for x in (i.app, i.sidecar)))}
        seen.update(p for p in found if p)
        return found

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(20):
            await tg.start(up.run)
            await up.until(lambda: web1.app.ready and up.instances["worker-1"].app.ready and up.gateway.ready)
            assert web2.sidecar.running and not web2.sidecar.ready and web2.app.started == 0  # gated on its sidecar
            assert lines == []  # not every instance has started yet
            (tmp_path / "hold-sidecar~web-2").unlink()
            await up.until(lambda: up.announced)
            assert web2.app.ready and len(lines) == 2
            assert lines[0] == f"Ingress: http://127.0.0.1:{up.plan.ingress}/"
            pids()

            # the app's environment
            async with await anyio.connect_tcp("127.0.0.1", web1.ports["app:8080"]) as s:
                await s.send(b"GET /env HTTP/1.0\r\n\r\n")
                raw = b""
                try:
                    while True:
                        raw += await s.receive()
                except anyio.EndOfStream:
                    pass
            env = json.loads(raw.split(b"\r\n\r\n", 1)[1])
            proxy = f"http://127.0.0.1:{web1.ports['http_proxy']}"
            assert {k: env.get(k) for k in ("PORT", "PORT_8080", "INSTANCE", "SERVICE_NAME", "SERVICE_VERSION",
                                             "POD_NAMESPACE", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
                                             "EXTRA", "PYTHONUNBUFFERED", "MYSQL_ADDR")} == {
                "PORT": str(web1.ports["app:8080"]), "PORT_8080": str(web1.ports["app:8080"]), "INSTANCE": "web-1",
                "SERVICE_NAME": "web", "SERVICE_VERSION": "v7", "POD_NAMESPACE": "default", "HTTP_PROXY": proxy,
                "http_proxy": proxy, "NO_PROXY": "", "no_proxy": "", "EXTRA": "1", "PYTHONUNBUFFERED": "1",
                "MYSQL_ADDR": f"127.0.0.1:{web1.ports['tcp:mysql.default.svc.cluster.local:3306']}"}
            assert await http_status(web1.ports["admin"], "/ready") == 200

            # state.json and the platform socket agree with the supervisor
            state_dir = tmp_path / ".knotwork"
            assert (os.stat(state_dir).st_mode & 0o777, os.stat(state_dir / "platform.sock").st_mode & 0o777) == (0o700, 0o600)
            await up.until(lambda: (read_state(state_dir) or {}).get("instances", [{}])[1].get("ready") is True)
            doc = read_state(state_dir)
            assert is_running(doc) and doc["ingress"]["url"] == lines[0].split(" ", 1)[1]
            assert doc["instances"][0]["pid"] == web1.app.pid and doc["instances"][0]["sidecar"]["ready"]
            async with await anyio.connect_unix(state_dir / "platform.sock") as s:
                raw = b""
                while not raw.endswith(b"\n"):
                    raw += await s.receive()
            snap = build_snapshot(json.loads(raw), MESH, 1)
            assert sorted(e.instance for e in snap.endpoints if e.healthy) == ["web-1", "web-2"]

            # a crashed app restarts on the same port; its sidecar is untouched
            old_app, sidecar_pid, ports = web1.app.pid, web1.sidecar.pid, dict(web1.ports)
            os.kill(old_app, signal.SIGKILL)
            await up.until(lambda: web1.app.restarts == 1 and web1.app.ready)
            assert web1.app.pid != old_app and web1.app.last_exit == -signal.SIGKILL
            assert web1.sidecar.pid == sidecar_pid and web1.ports == ports
            assert "--- knotwork: app:web-1 killed by SIGKILL; restart 1 in 0.5 s ---" in (
                state_dir / "logs" / "web-1.log").read_text()

            # a crashed sidecar restarts; its app keeps running
            app_pid = web1.app.pid
            os.kill(sidecar_pid, signal.SIGKILL)
            await up.until(lambda: web1.sidecar.restarts == 1 and web1.sidecar.ready)
            assert web1.app.pid == app_pid and web1.app.restarts == 1

            # a killed control plane comes back on the same port
            control = up.control.pid
            os.kill(control, signal.SIGKILL)
            await up.until(lambda: up.control.restarts == 1 and up.control.ready)
            assert up.control.pid != control
            with socket.create_connection(("127.0.0.1", up.plan.control), timeout=1):
                pass
            pids()

            # the ordered stop: within 5 s, nothing left behind
            began = time.monotonic()
            up.stop()
    assert up.finished
    assert time.monotonic() - began < 5
    assert not [p for p in seen if pid_alive(p)]
    doc = read_state(tmp_path / ".knotwork")
    assert not is_running(doc) and doc["up"]["pid"] is None and doc["control"]["pid"] is None
    assert all(i["pid"] is None and i["sidecar"]["pid"] is None for i in doc["instances"])
    assert not (tmp_path / ".knotwork" / "platform.sock").exists()


async def get_json(port: int, path: str) -> dict:
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        raw = b""
        try:
            while True:
                raw += await s.receive()
        except anyio.EndOfStream:
            pass
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


async def eventually(condition, interval: float = 0.02) -> None:
    """Poll `condition` (the caller's fail_after is the deadline) for what no supervisor event announces."""
    while not condition():
        await anyio.sleep(interval)


SECURE = LocalSettings(drain_timeout=0.2, workloads=(
    WorkloadSettings(name="web", service="web", service_account="web-sa", command=("python", str(FAKES / "app.py")),
                     ports=(PortSettings(8080, "http"),), readiness=ReadinessSettings(http="/health", period=0.2)),
))


@pytest.mark.anyio
async def test_with_a_ca_every_proxy_spawn_gets_a_fresh_credential_in_its_environment_only(tmp_path, monkeypatch,
                                                                                            local_hooks):
    monkeypatch.setenv(CREDENTIAL_ENV, "inherited-from-up")  # never passed on
    up = Supervisor(
        mesh_path=tmp_path / "knotwork.yaml", settings=SECURE, mesh=MESH, plan=plan_ports(SECURE), engine="native",
        launch=Launch(control=(sys.executable, str(FAKES / "fake_control.py")),
                      proxy=(sys.executable, str(FAKES / "fake_proxy.py"))),
        out=lambda line: None, certificate_authority="ca",
    )
    state_dir, web = tmp_path / ".knotwork", up.instances["web-1"]
    identity = "spiffe://cluster.local/ns/default/sa/web-sa"
    # the control plane's side: the platform component following up's socket, with its credential book
    platform = LocalPlatform(ComponentContext(mesh=MESH, settings=SECURE, mesh_dir=tmp_path, state_dir=state_dir))
    send, receive = anyio.create_memory_object_stream[PlatformSnapshot](1000)

    def attest(node: str, spiffe_id: str, credential: str):
        return local_hooks.attest_workload(AttestationClaim("local", node, spiffe_id, credential))

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(15):
            await tg.start(up.run)
            await tg.start(platform.run, send)
            await up.until(lambda: web.app.ready and web.sidecar.ready and up.gateway.ready)

            # argv: the control plane serves the CA; each proxy claims its identity there
            ca = f"127.0.0.1:{up.plan.ca}"
            assert f"certificate service {ca}, metrics 127.0.0.1:{up.plan.metrics}" in \
                (state_dir / "logs" / "control.log").read_text()  # /metrics: where the state document says
            assert up.document()["control"]["metrics_address"] == f"127.0.0.1:{up.plan.metrics}"
            side, gw = await get_json(web.ports["admin"], "/status"), await get_json(up.plan.gateway["admin"], "/status")
            assert side["argv"][-4:] == ["--ca", ca, "--identity", identity]
            assert gw["argv"][-4:] == ["--ca", ca, "--identity",
                                       "spiffe://cluster.local/ns/knotwork-system/sa/knotwork-ingressgateway"]
            # the credential: in the proxy's environment, its hash in the state, nowhere else
            assert side["credential"] not in (None, "inherited-from-up") and side["credential"] != gw["credential"]
            assert fingerprint(side["credential"]) == web.sidecar.credential_sha256
            assert CREDENTIAL_ENV not in await get_json(web.ports["app:8080"], "/env")
            await eventually(lambda: (read_state(state_dir) or {}).get("instances", [{}])[0].get("sidecar", {}).get(
                "credential_sha256") == web.sidecar.credential_sha256)
            text = (state_dir / "state.json").read_text()
            assert side["credential"] not in text and gw["credential"] not in text and "inherited-from-up" not in text

            # the control plane redeems it once
            await eventually(lambda: platform.book.knows(web.sidecar.credential_sha256))
            assert attest("sidecar~web-1", identity, side["credential"]).spiffe_id == identity
            with pytest.raises(ValueError, match="already used"):
                attest("sidecar~web-1", identity, side["credential"])

            # a restarted sidecar has a new credential; the old one is dead
            os.kill(web.sidecar.pid, signal.SIGKILL)
            await up.until(lambda: web.sidecar.restarts == 1 and web.sidecar.ready)
            again = await get_json(web.ports["admin"], "/status")
            assert again["credential"] != side["credential"]
            assert fingerprint(again["credential"]) == web.sidecar.credential_sha256
            await eventually(lambda: platform.book.knows(web.sidecar.credential_sha256))
            with pytest.raises(ValueError, match="no longer valid"):
                attest("sidecar~web-1", identity, side["credential"])
            assert attest("sidecar~web-1", identity, again["credential"]).spiffe_id == identity

            up.stop()
            await eventually(lambda: up.finished)
        tg.cancel_scope.cancel()
    doc = read_state(state_dir)
    assert doc["gateway"]["credential_sha256"] is None and doc["instances"][0]["sidecar"]["credential_sha256"] is None


@pytest.mark.anyio
async def test_a_control_plane_that_refuses_the_mesh_stops_up_with_its_reason(tmp_path):
    """Exit status 2 before ever being ready is a user mistake (a CA folder that is not one): `up` stops and
    keeps the reason for the user, instead of restarting the control plane forever."""
    refuse = tmp_path / "refuse.py"
    refuse.write_text("import sys\nprint('knotwork.yaml: ca.cacerts: certs/: expected a cacerts folder', file=sys.stderr)\n"
                      "sys.exit(2)\n")
    up = Supervisor(
        mesh_path=tmp_path / "knotwork.yaml", settings=SETTINGS, mesh=MESH, plan=plan_ports(SETTINGS), engine="native",
        launch=Launch(control=(sys.executable, str(refuse)), proxy=(sys.executable, str(FAKES / "fake_proxy.py"))),
        out=lambda line: None,
    )
    with anyio.fail_after(20):
        await up.run()
    assert up.fatal == ["knotwork.yaml: ca.cacerts: certs/: expected a cacerts folder"]
    assert up.control.restarts == 0 and up.finished
