"""`knotwork status` and `knotwork logs` against a state directory written by hand,
and the pure argv/environment of the children."""

from __future__ import annotations

import argparse
import json
import os
import sys

import pytest

from knotwork.cli import UsageError
from knotwork.model import MeshSettings
from knotwork_local.commands import render_status, run_status
from knotwork_local.launch import Launch, app_argv, app_env
from knotwork_local import logs
from knotwork_local.logs import is_access_line, log_files, run_logs
from knotwork_local.ports import plan_ports
from knotwork_local.settings import LocalSettings, PortSettings, UpstreamSettings, WorkloadSettings
from knotwork_local.state import write_state
from knotwork_local.supervisor import Supervisor

SETTINGS = LocalSettings(workloads=(
    WorkloadSettings(name="web", service="web", command=("python", "web.py"), replicas=2, env={"PORT": "override"},
                     labels={"version": "v2"}, ports=(PortSettings(8080, "http"), PortSettings(9090, "grpc")),
                     upstreams=(UpstreamSettings("mysql", 3306), UpstreamSettings("mysql", 3307))),
))


@pytest.fixture
def mesh_dir(tmp_path):
    """A state directory as a running `up` (this test process) leaves it."""
    up = Supervisor(mesh_path=tmp_path / "knotwork.yaml", settings=SETTINGS, mesh=MeshSettings(),
                    plan=plan_ports(SETTINGS), engine="native")
    up.instances["web-1"].app.pid, up.instances["web-1"].app.ready, up.instances["web-1"].app.restarts = 4242, True, 3
    up.instances["web-1"].app.last_exit = -9
    state_dir = tmp_path / ".knotwork"
    (state_dir / "logs").mkdir(parents=True)
    write_state(state_dir, up.document())
    (state_dir / "logs" / "web-1.log").write_text("one\ntwo\n")
    (state_dir / "logs" / "web-2.log").write_text("three\npartial")
    (state_dir / "logs" / "web-1.proxy.log").write_text("proxy line\n")
    return tmp_path


def ns(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"output": "table", "follow": False, "proxy": False, "access": False, "hooks": None, **kw})


def test_status_table_and_json(mesh_dir, capsys):
    assert run_status(ns(mesh=str(mesh_dir))) == 0
    out = capsys.readouterr().out
    assert "admin socket not answering" in out
    row = next(line for line in out.splitlines() if line.startswith("web ") and "web-1" in line)
    assert row.split()[:6] == ["web", "web-1", "4242", "yes", "3", "killed"]
    assert run_status(ns(mesh=str(mesh_dir / "knotwork.yaml"), output="json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["instances"][0]["pid"] == 4242 and doc["control_plane"] is None


def test_status_when_nothing_runs(tmp_path, capsys):
    assert run_status(ns(mesh=str(tmp_path))) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"knotwork status: no mesh is running in {tmp_path} (start it with `knotwork up`)"


def test_render_status_shows_proxy_config_from_the_control_plane(mesh_dir):
    doc = json.loads((mesh_dir / ".knotwork" / "state.json").read_text())
    control = {"version": 7, "proxies": {"sidecar~web-2": {"version": "abcdef0123456", "connected": False}}}
    text = render_status(doc, control)
    assert "config version 7" in text and "abcdef01 (disconnected)" in text


def test_logs_prefix_every_line_with_its_instance(mesh_dir, capsys):
    assert run_logs(ns(mesh=str(mesh_dir), workload="web")) == 0
    assert capsys.readouterr().out.splitlines() == ["web-1 | one", "web-1 | two", "web-2 | three", "web-2 | partial"]
    assert run_logs(ns(mesh=str(mesh_dir), workload="web", proxy=True)) == 0
    assert capsys.readouterr().out.splitlines() == ["web-1 | proxy line"]


def test_logs_of_an_unknown_workload_name_the_known_ones(mesh_dir):
    with pytest.raises(UsageError, match="^unknown workload 'wbe'; known: web, control, ingress$"):
        run_logs(ns(mesh=str(mesh_dir), workload="wbe"))
    assert log_files("control", {}, mesh_dir) == [("control", mesh_dir / "control.log")]


ACCESS = '{"log_type": "access", "method": "GET", "path": "/a", "response_code": 200}'
PROXY_LOG = "\n".join([
    '{"event": "proxy ready", "level": "info"}',  # the proxy's own JSON log line
    ACCESS,
    "log_type: access (not JSON)",
    '{"log_type": "audit", "path": "/b"}',
    '["log_type", "access"]',
    "",
])


def test_logs_access_prints_only_the_access_lines_of_the_sidecar_logs(mesh_dir, capsys):
    logs_dir = mesh_dir / ".knotwork" / "logs"
    (logs_dir / "web-1.proxy.log").write_text(PROXY_LOG)
    (logs_dir / "web-2.proxy.log").write_text(ACCESS.replace("/a", "/c") + "\n")
    (logs_dir / "ingress.proxy.log").write_text(PROXY_LOG)
    assert run_logs(ns(mesh=str(mesh_dir), workload="web", access=True)) == 0  # --proxy is implied
    assert capsys.readouterr().out.splitlines() == [f"web-1 | {ACCESS}", f"web-2 | {ACCESS.replace('/a', '/c')}"]
    assert run_logs(ns(mesh=str(mesh_dir), workload="ingress", access=True)) == 0
    assert capsys.readouterr().out.splitlines() == [f"ingress | {ACCESS}"]
    with pytest.raises(UsageError, match="^--access: the control plane has no access log"):
        run_logs(ns(mesh=str(mesh_dir), workload="control", access=True))
    assert [is_access_line(line) for line in PROXY_LOG.splitlines()] == [False, True, False, False, False]


def test_logs_access_follows_new_lines(mesh_dir, capsys, monkeypatch):
    log = mesh_dir / ".knotwork" / "logs" / "web-1.proxy.log"
    log.write_text('{"event": "started"}\n' + ACCESS[:20])  # an access line half written
    (mesh_dir / ".knotwork" / "logs" / "web-2.proxy.log").write_text("")
    polls = iter([
        lambda: log.write_text(log.read_text() + ACCESS[20:] + "\n{\"event\": \"x\"}\n"),  # the rest arrives
        lambda: log.write_text(log.read_text() + ACCESS.replace("/a", "/d") + "\n"),
        lambda: (_ for _ in ()).throw(KeyboardInterrupt),  # Ctrl-C
    ])
    monkeypatch.setattr(logs.time, "sleep", lambda seconds: next(polls)())
    assert run_logs(ns(mesh=str(mesh_dir), workload="web", access=True, follow=True)) == 0
    assert capsys.readouterr().out.splitlines() == [f"web-1 | {ACCESS}", f"web-1 | {ACCESS.replace('/a', '/d')}"]


def test_app_argv_and_environment():
    w = SETTINGS.workloads[0]
    assert app_argv(w) == [sys.executable, "web.py"]
    ports = plan_ports(SETTINGS).instances["web-2"]
    env = app_env(w, "web-2", ports, MeshSettings(), {"HOME": "/h", "NO_PROXY": "localhost"})
    assert env["HOME"] == "/h" and env["NO_PROXY"] == "" and env["INSTANCE"] == "web-2"
    assert env["PORT"] == "override"  # the workload's env comes last
    assert env["PORT_8080"] == str(ports["app:8080"]) and env["PORT_9090"] == str(ports["app:9090"])
    assert env["MYSQL_ADDR"] == env["MYSQL_3306_ADDR"] == f"127.0.0.1:{ports['tcp:mysql.default.svc.cluster.local:3306']}"
    assert env["MYSQL_3307_ADDR"] == f"127.0.0.1:{ports['tcp:mysql.default.svc.cluster.local:3307']}"
    assert env["SERVICE_VERSION"] == "v2" and env["SERVICE_NAME"] == "web" and env["POD_NAMESPACE"] == "default"


def test_proxy_and_control_argv(tmp_path):
    launch = Launch(engine="envoy")
    assert launch.control_argv(tmp_path, "127.0.0.1:1") == [
        sys.executable, "-m", "knotwork", "control", "--mesh", str(tmp_path), "--engine", "envoy",
        "--listen", "127.0.0.1:1"]
    assert launch.proxy_argv(tmp_path, "sidecar~a-1", "127.0.0.1:1", 5, 2.0)[4:] == [
        "--mesh", str(tmp_path), "--engine", "envoy", "--node", "sidecar~a-1", "--control", "127.0.0.1:1",
        "--admin-port", "5", "--drain-timeout", "2.0"]


def test_with_a_certificate_authority_the_control_plane_serves_it_and_proxies_claim_an_identity(tmp_path):
    launch = Launch()
    assert launch.control_argv(tmp_path, "127.0.0.1:1", "127.0.0.1:2")[-4:] == [
        "--listen", "127.0.0.1:1", "--ca-listen", "127.0.0.1:2"]
    spiffe = "spiffe://cluster.local/ns/default/sa/web"
    argv = launch.proxy_argv(tmp_path, "sidecar~a-1", "127.0.0.1:1", 5, 2.0, ca="127.0.0.1:2", identity=spiffe)
    assert argv[-4:] == ["--ca", "127.0.0.1:2", "--identity", spiffe]
    assert launch.proxy_argv(tmp_path, "sidecar~a-1", "127.0.0.1:1", 5, 2.0, ca=None, identity=spiffe) == \
        launch.proxy_argv(tmp_path, "sidecar~a-1", "127.0.0.1:1", 5, 2.0)  # no CA: plaintext, no identity
    with pytest.raises(ValueError, match="sidecar~a-1: a certificate service needs the identity"):
        launch.proxy_argv(tmp_path, "sidecar~a-1", "127.0.0.1:1", 5, 2.0, ca="127.0.0.1:2")


def test_status_names_the_certificate_service(tmp_path):
    plan = plan_ports(SETTINGS)
    for ca, expected in (("ca", f"control  127.0.0.1:{plan.control}  ca 127.0.0.1:{plan.ca} (ca)  pid"),
                         (None, f"control  127.0.0.1:{plan.control}  plaintext (no CA)  pid")):
        up = Supervisor(mesh_path=tmp_path / "knotwork.yaml", settings=SETTINGS, mesh=MeshSettings(), plan=plan,
                        engine="native", certificate_authority=ca)
        assert render_status(up.document(), None).splitlines()[1].startswith(expected)
