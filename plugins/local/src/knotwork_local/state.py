"""The live state of a `knotwork up` run, as one JSON document.

The same document is written to ``.knotwork/state.json`` (atomically) and
streamed, one line per change, on ``.knotwork/platform.sock`` to the local
platform component inside the control plane. It is self-contained: the
control plane builds its :class:`~knotwork.model.PlatformSnapshot` from it
alone. See the README for the schema.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import attrs

from knotwork.model import MeshSettings, resolve_host

from .ports import PortPlan, upstream_key
from .settings import LocalSettings, WorkloadSettings

__all__ = [
    "SCHEMA",
    "InstanceStatus",
    "ProcStatus",
    "is_running",
    "json_line",
    "read_state",
    "routes_doc",
    "state_path",
    "workload_doc",
    "write_state",
]

SCHEMA = 1
STATE_FILE = "state.json"
PLATFORM_SOCKET = "platform.sock"


@attrs.define
class ProcStatus:
    """One supervised process, across its restarts."""

    pid: int | None = None
    running: bool = False
    ready: bool = False
    started: int = 0  # how many times it was started
    restarts: int = 0
    last_exit: int | None = None  # Popen returncode: negative = killed by that signal
    #: SHA-256 (hex) of the one-time bootstrap credential of the running spawn (proxies with a CA only).
    credential_sha256: str | None = None

    def doc(self) -> dict[str, Any]:
        return {"pid": self.pid, "running": self.running, "ready": self.ready,
                "restarts": self.restarts, "last_exit": self.last_exit}


@attrs.define
class InstanceStatus:
    """One workload instance: its app and its sidecar, with their ports."""

    workload: WorkloadSettings
    instance: str
    ports: dict[str, int]
    app: ProcStatus = attrs.Factory(ProcStatus)
    sidecar: ProcStatus = attrs.Factory(ProcStatus)
    identity: str = ""  # the SPIFFE ID its sidecar claims

    @property
    def node(self) -> str:
        return f"sidecar~{self.instance}"

    def doc(self) -> dict[str, Any]:
        w = self.workload
        return {"instance": self.instance, "workload": w.name, "service": w.service, "namespace": w.namespace,
                "node": self.node, "identity": self.identity, **self.app.doc(),
                "sidecar": {**self.sidecar.doc(), "credential_sha256": self.sidecar.credential_sha256},
                "ports": dict(self.ports)}


def workload_doc(w: WorkloadSettings, mesh: MeshSettings) -> dict[str, Any]:
    """A workload with its defaults resolved, as the state document carries it."""
    return {
        "name": w.name, "service": w.service, "namespace": w.namespace,
        "service_account": w.resolved_service_account, "labels": w.resolved_labels,
        "ports": [{"port": p.port, "name": p.name, "protocol": p.resolved_protocol.value} for p in w.ports],
        "upstreams": [{"service": u.service, "host": resolve_host(u.service, w.namespace, mesh.domain), "port": u.port,
                       "key": upstream_key(u.service, u.port, w.namespace, mesh.domain)} for u in w.upstreams],
        "replicas": w.replicas, "instances": w.instance_names(),
    }


def routes_doc(settings: LocalSettings, mesh: MeshSettings, file: str = "",
               lines: list[int] | None = None) -> list[dict[str, Any]]:
    """The ingress routes with FQDN hosts and where each was written."""
    return [{"match": r.match, "host": resolve_host(r.service, r.namespace, mesh.domain), "port": r.port,
             "file": file, "line": (lines[i] if lines and i < len(lines) else 0)}
            for i, r in enumerate(settings.ingress.routes)]


def route_lines(path: Path) -> list[int]:
    """Line of each `local.ingress.routes[i]` in the mesh file (for resource sources)."""
    import yaml

    try:
        node = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
        for key in ("local", "ingress", "routes"):
            node = next(v for k, v in node.value if k.value == key)
        return [item.start_mark.line + 1 for item in node.value]
    except Exception:  # noqa: BLE001 - line numbers are a nicety; the file was validated already
        return []


def document(*, generation: int, mesh_path: Path, up_pid: int | None, started: float, engine: str, plan: PortPlan,
             control: ProcStatus, gateway: ProcStatus, instances: list[InstanceStatus],
             workloads: list[dict[str, Any]], routes: list[dict[str, Any]], certificate_authority: str | None = None,
             gateway_identity: str = "", root_namespace: str = "knotwork-system") -> dict[str, Any]:
    """The whole state document; `certificate_authority` is the mesh's selection (None: plaintext mesh),
    `root_namespace` the mesh's, where the control plane and the gateway run."""
    return {
        "schema": SCHEMA,
        "generation": generation,
        "mesh": str(mesh_path),
        "up": {"pid": up_pid, "pid_start": proc_start(up_pid) if up_pid else None, "started": started, "engine": engine},
        "updated": time.time(),
        "control": {"address": f"127.0.0.1:{plan.control}", "certificate_authority": certificate_authority,
                    "ca_address": f"127.0.0.1:{plan.ca}" if certificate_authority else None,
                    "metrics_address": f"127.0.0.1:{plan.metrics}" if plan.metrics else None,
                    "namespace": root_namespace, **control.doc()},
        "ingress": {"url": f"http://127.0.0.1:{plan.ingress}/", "port": plan.ingress},
        "gateway": {"node": "gateway~ingress", "identity": gateway_identity, "namespace": root_namespace, **gateway.doc(),
                    "credential_sha256": gateway.credential_sha256, "ports": dict(plan.gateway)},
        "workloads": workloads,
        "routes": routes,
        "instances": [i.doc() for i in instances],
    }


def json_line(doc: dict[str, Any]) -> bytes:
    """One document as one line of the platform socket's stream."""
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def write_state(state_dir: Path, doc: dict[str, Any]) -> None:
    """Write state.json atomically (a temporary file renamed over it), mode 0600."""
    path = state_path(state_dir)
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """The last state document, or None when there is none (or it is unreadable)."""
    try:
        doc = json.loads(state_path(state_dir).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == SCHEMA else None


def proc_start(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (Linux /proc), None when unknown."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int | None, start: int | None = None) -> bool:
    """True when `pid` is a live process, not a zombie, and (when `start` is
    given and /proc is there) the same process as when it was recorded."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True  # no /proc: trust kill(0)
    if fields[0] == "Z":
        return False
    return start is None or int(fields[19]) == start


def is_running(doc: dict[str, Any] | None) -> bool:
    """True when the document belongs to a live `up` process."""
    up = (doc or {}).get("up") or {}
    return pid_alive(up.get("pid"), up.get("pid_start"))
