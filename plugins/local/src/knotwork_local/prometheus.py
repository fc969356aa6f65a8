"""`knotwork prometheus-config`: a Prometheus scrape configuration for the running local mesh.

Two jobs, from `up`'s state document: ``knotwork-control`` scrapes the
control plane's ``/metrics`` and ``knotwork-proxies`` every sidecar's and the
gateway's admin port at ``/stats/prometheus``; one static target each,
labelled ``workload``, ``namespace``, ``instance`` and ``kind``. Ports never
change while that `up` runs (restarts included), so the file stays right
until the mesh is started again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from knotwork.cli import UsageError
from knotwork.config import STATE_DIR, find_mesh_file

from .state import is_running, read_state

__all__ = ["CONTROL_JOB", "PROXY_JOB", "configure_prometheus", "run_prometheus", "scrape_config"]

CONTROL_JOB, PROXY_JOB = "knotwork-control", "knotwork-proxies"
#: Labels of the control plane's target (its workload is named after its service account).
CONTROL_WORKLOAD, CONTROL_INSTANCE = "knotwork-control", "control"
SCRAPE_INTERVAL = "15s"


def configure_prometheus(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mesh", metavar="DIR", help="mesh directory or file (default: the current directory)")
    p.add_argument("--output", "-o", choices=("yaml", "json"), default="yaml", help="output format (default: yaml)")


def _target(address: str, **labels: str) -> dict[str, Any]:
    return {"targets": [address], "labels": labels}


def scrape_config(doc: dict[str, Any], control_metrics: str | None) -> dict[str, Any]:
    """The configuration for one state document; `control_metrics` is the control plane's
    ``/metrics`` address (``HOST:PORT``; None: no control plane job)."""
    root = (doc.get("gateway") or {}).get("namespace") or (doc.get("control") or {}).get("namespace") or "knotwork-system"
    jobs = []
    if control_metrics:
        jobs.append({"job_name": CONTROL_JOB, "metrics_path": "/metrics", "static_configs": [
            _target(control_metrics, workload=CONTROL_WORKLOAD, namespace=root, instance=CONTROL_INSTANCE, kind="control")]})
    proxies = []
    gateway = doc.get("gateway") or {}
    if (gateway.get("ports") or {}).get("admin"):
        proxies.append(_target(f"127.0.0.1:{gateway['ports']['admin']}", workload="ingress", namespace=root,
                               instance="ingress", kind="gateway"))
    for inst in doc.get("instances", ()):
        proxies.append(_target(f"127.0.0.1:{inst['ports']['admin']}", workload=inst["workload"],
                               namespace=inst["namespace"], instance=inst["instance"], kind="sidecar"))
    jobs.append({"job_name": PROXY_JOB, "metrics_path": "/stats/prometheus", "static_configs": proxies})
    return {"global": {"scrape_interval": SCRAPE_INTERVAL}, "scrape_configs": jobs}


def _control_metrics(doc: dict[str, Any], state_dir: Path) -> str | None:
    """The control plane's metrics address: from the state document, else (an `up` that does not
    pin it) as the running control plane reports it."""
    address = (doc.get("control") or {}).get("metrics_address")
    if address:
        return address
    import anyio

    from knotwork.control import admin_call

    try:
        return anyio.run(admin_call, state_dir, "status").get("metrics")
    except (OSError, TimeoutError):
        return None


def run_prometheus(args: argparse.Namespace) -> int:
    mesh_file = find_mesh_file(args.mesh).absolute()
    state_dir = mesh_file.parent / STATE_DIR
    doc = read_state(state_dir)
    if not is_running(doc):
        raise UsageError(f"no mesh is running in {mesh_file.parent} (start it with `knotwork up`)")
    assert doc is not None
    config = scrape_config(doc, _control_metrics(doc, state_dir))
    if args.output == "json":
        print(json.dumps(config, indent=2))
        return 0
    import yaml

    print(f"# Prometheus scrape configuration of the mesh {doc['mesh']} (knotwork up pid {doc['up']['pid']}):\n"
          f"# its ports stay the same until that `knotwork up` stops.")
    print(yaml.safe_dump(config, sort_keys=False, default_flow_style=False), end="")
    return 0
