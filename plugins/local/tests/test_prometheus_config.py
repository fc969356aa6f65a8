"""`knotwork prometheus-config` against a state directory as a running `up` leaves it, with a
stand-in HTTP server on every port the configuration names."""

from __future__ import annotations

import argparse
import http.server
import json
import threading
import urllib.request

import pytest
import yaml

from knotwork.cli import UsageError
from knotwork.model import MeshSettings
from knotwork_local.ports import plan_ports
from knotwork_local.prometheus import run_prometheus, scrape_config
from knotwork_local.settings import LocalSettings, PortSettings, WorkloadSettings
from knotwork_local.state import write_state
from knotwork_local.supervisor import Supervisor

SETTINGS = LocalSettings(workloads=(
    WorkloadSettings(name="web", service="web", command=("python", "web.py"), replicas=2,
                     ports=(PortSettings(8080, "http"),)),
    WorkloadSettings(name="db", service="db", namespace="data", command=("python", "db.py"),
                     ports=(PortSettings(5432, "tcp"),)),
))


def ns(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"output": "yaml", "hooks": None, **kw})


@pytest.fixture
def running(tmp_path):
    """A state document of a running mesh (this process as `up`); returns (mesh dir, document)."""
    up = Supervisor(mesh_path=tmp_path / "knotwork.yaml", settings=SETTINGS, mesh=MeshSettings(root_namespace="mesh-root"),
                    plan=plan_ports(SETTINGS), engine="native")
    doc = up.document()
    (tmp_path / ".knotwork").mkdir()
    write_state(tmp_path / ".knotwork", doc)
    return tmp_path, doc


@pytest.fixture
def answering(running):
    """An HTTP server on every metrics port of the document, answering only the path that port serves."""
    _, doc = running
    paths = {int(doc["control"]["metrics_address"].rpartition(":")[2]): "/metrics",
             doc["gateway"]["ports"]["admin"]: "/stats/prometheus",
             **{i["ports"]["admin"]: "/stats/prometheus" for i in doc["instances"]}}
    servers = []
    for port, path in paths.items():
        class Handler(http.server.BaseHTTPRequestHandler):
            serves = path

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                ok = self.path == self.serves
                body = b"# TYPE up gauge\nup 1\n" if ok else b"not found\n"
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield
    for server in servers:
        server.shutdown()
        server.server_close()


def test_the_yaml_names_every_proxy_and_the_control_plane_and_each_target_answers(running, answering, capsys):
    mesh_dir, doc = running
    assert run_prometheus(ns(mesh=str(mesh_dir))) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Prometheus scrape configuration of the mesh ")
    config = yaml.safe_load(out)
    assert config["global"] == {"scrape_interval": "15s"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"knotwork-control", "knotwork-proxies"}
    assert jobs["knotwork-control"]["metrics_path"] == "/metrics"
    assert jobs["knotwork-proxies"]["metrics_path"] == "/stats/prometheus"
    (control,) = jobs["knotwork-control"]["static_configs"]
    assert control == {"targets": [doc["control"]["metrics_address"]], "labels": {
        "workload": "knotwork-control", "namespace": "mesh-root", "instance": "control", "kind": "control"}}
    labels = {(t["labels"]["kind"], t["labels"]["workload"], t["labels"]["namespace"], t["labels"]["instance"])
              for t in jobs["knotwork-proxies"]["static_configs"]}
    assert labels == {("gateway", "ingress", "mesh-root", "ingress"), ("sidecar", "web", "default", "web-1"),
                      ("sidecar", "web", "default", "web-2"), ("sidecar", "db", "data", "db-1")}
    admin = {i["instance"]: i["ports"]["admin"] for i in doc["instances"]}
    for target in jobs["knotwork-proxies"]["static_configs"]:
        if target["labels"]["kind"] == "sidecar":
            assert target["targets"] == [f"127.0.0.1:{admin[target['labels']['instance']]}"]
    for job in jobs.values():
        for static in job["static_configs"]:
            (target,) = static["targets"]
            with urllib.request.urlopen(f"http://{target}{job['metrics_path']}", timeout=5) as reply:
                assert reply.status == 200 and b"up 1" in reply.read()


def test_json_output_is_the_same_configuration(running, capsys):
    mesh_dir, _ = running
    assert run_prometheus(ns(mesh=str(mesh_dir))) == 0
    as_yaml = yaml.safe_load(capsys.readouterr().out)
    assert run_prometheus(ns(mesh=str(mesh_dir / "knotwork.yaml"), output="json")) == 0
    assert json.loads(capsys.readouterr().out) == as_yaml


def test_a_mesh_that_is_not_running_is_one_clear_error(tmp_path):
    with pytest.raises(UsageError, match=r"^no mesh is running in .* \(start it with `knotwork up`\)$"):
        run_prometheus(ns(mesh=str(tmp_path)))


def test_without_a_control_plane_address_there_is_only_the_proxy_job(running):
    _, doc = running
    config = scrape_config(doc, None)
    assert [job["job_name"] for job in config["scrape_configs"]] == ["knotwork-proxies"]


def test_the_cli_exits_2_with_one_line_when_nothing_runs(tmp_path):
    import subprocess
    import sys

    (tmp_path / "knotwork.yaml").write_text("plugins: {platform: local}\n")
    done = subprocess.run([sys.executable, "-m", "knotwork", "prometheus-config", "--mesh", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"knotwork prometheus-config: no mesh is running in {tmp_path} (start it with `knotwork up`)\n"
