"""`knotwork logs WORKLOAD`: the log files of every instance, prefixed, optionally followed.

With ``--access`` only the sidecars' access-log lines: the JSON objects whose
``log_type`` is ``access`` (what the `access-log` telemetry sink writes, one per
request or TCP connection), among the proxy's own log lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from knotwork.cli import UsageError
from knotwork.config import STATE_DIR, MeshError, find_mesh_file, load_mesh

from .state import read_state

__all__ = ["configure_logs", "is_access_line", "log_files", "run_logs"]

POLL = 0.2


def configure_logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("workload", metavar="WORKLOAD", help="workload name (or `control`, `ingress`)")
    p.add_argument("--mesh", metavar="DIR", help="mesh directory or file (default: the current directory)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until interrupted")
    p.add_argument("--proxy", action="store_true", help="the instances' sidecar logs instead of the apps'")
    p.add_argument("--access", action="store_true",
                   help="only the access-log lines (JSON, \"log_type\": \"access\") of the sidecar logs (implies --proxy)")


def is_access_line(text: str) -> bool:
    """True for one access-log line: a JSON object with ``"log_type": "access"``."""
    if '"log_type"' not in text:  # most lines: no JSON parsing
        return False
    try:
        record = json.loads(text)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("log_type") == "access"


def _instances(args: argparse.Namespace, state_dir: Path) -> dict[str, list[str]]:
    doc = read_state(state_dir)
    if doc is not None:
        return {w["name"]: list(w["instances"]) for w in doc.get("workloads", ())}
    try:
        mesh = load_mesh(args.mesh, args.hooks)
    except MeshError:
        return {}
    settings = mesh.settings.get("local")
    return {w.name: w.instance_names() for w in settings.workloads} if settings else {}


def log_files(workload: str, instances: dict[str, list[str]], logs_dir: Path, *, proxy: bool = False) -> list[tuple[str, Path]]:
    """(prefix, file) of each instance of `workload`; UsageError naming the known ones if unknown."""
    if workload in instances:
        suffix = ".proxy.log" if proxy else ".log"
        return [(name, logs_dir / f"{name}{suffix}") for name in instances[workload]]
    if workload == "control":
        return [("control", logs_dir / "control.log")]
    if workload == "ingress":
        return [("ingress", logs_dir / "ingress.proxy.log")]
    known = ", ".join([*sorted(instances), "control", "ingress"])
    raise UsageError(f"unknown workload {workload!r}; known: {known}")


class _Tail:
    """Reads a growing file line by line; starts over when it is truncated."""

    def __init__(self, prefix: str, path: Path) -> None:
        self.prefix, self.path, self.offset, self.partial = prefix, path, 0, b""

    def lines(self, final: bool = False, keep: Callable[[str], bool] | None = None) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, 2)
                if size < self.offset:
                    self.offset, self.partial = 0, b""
                f.seek(self.offset)
                data = f.read()
                self.offset += len(data)
        except FileNotFoundError:
            return []
        chunks = (self.partial + data).split(b"\n")
        self.partial = chunks.pop()
        if final and self.partial:
            chunks.append(self.partial)
            self.partial = b""
        texts = (c.decode(errors="replace") for c in chunks)
        return [f"{self.prefix} | {t}" for t in texts if keep is None or keep(t)]


def run_logs(args: argparse.Namespace) -> int:
    access = getattr(args, "access", False)
    if access and args.workload == "control":
        raise UsageError("--access: the control plane has no access log; name a workload or `ingress`")
    keep = is_access_line if access else None
    state_dir = find_mesh_file(args.mesh).absolute().parent / STATE_DIR
    files = log_files(args.workload, _instances(args, state_dir), state_dir / "logs", proxy=args.proxy or access)
    tails = [_Tail(prefix, path) for prefix, path in files]
    out = sys.stdout
    for tail in tails:
        for line in tail.lines(final=not args.follow, keep=keep):
            out.write(line + "\n")
    out.flush()
    if not args.follow:
        return 0
    try:
        while True:
            time.sleep(POLL)
            for tail in tails:
                for line in tail.lines(keep=keep):
                    out.write(line + "\n")
            out.flush()
    except KeyboardInterrupt:
        return 0
