"""`knotwork up` and `knotwork status` (and the records of every local command: `logs`, `prometheus-config`)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from knotwork.cli import UsageError, configure_logging
from knotwork.config import STATE_DIR, find_mesh_file, load_mesh, preflight
from knotwork.records import CliCommand

from . import logs, prometheus
from .ports import plan_ports
from .settings import LocalSettings
from .state import is_running, read_state, route_lines
from .launch import Launch

# The supervisor, process handling and the control plane's admin client are
# imported by the commands that use them: every `knotwork` command loads this
# module to build its parser.
if TYPE_CHECKING:
    from .supervisor import Supervisor

__all__ = ["COMMANDS", "run_status", "run_up"]

log = structlog.get_logger("knotwork.local", plugin="local")

HARD_STOP = 5.0  # seconds after the first signal when `up` exits no matter what


# ── up ────────────────────────────────────────────────────────────────────────


def configure_up(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default=".", metavar="DIR", help="mesh directory (with knotwork.yaml) or mesh file")
    p.add_argument("--ingress-port", type=int, metavar="N", help="ingress on 127.0.0.1:N (default: local.ingress.port, else free)")
    p.add_argument("--engine", metavar="NAME", help="override the mesh file's proxy engine")
    p.add_argument("--quiet", action="store_true", help="print only the ingress URL and problems")
    p.add_argument("--control-command", help=argparse.SUPPRESS)  # tests: replaces `python -m knotwork control`
    p.add_argument("--proxy-command", help=argparse.SUPPRESS)  # tests: replaces `python -m knotwork proxy`
    p.set_defaults(mesh=None)


def run_up(args: argparse.Namespace) -> int:
    from .supervisor import Supervisor

    mesh = load_mesh(args.dir, args.hooks, engine=args.engine)
    preflight(mesh, args.hooks)  # what the settings point at (a CA folder, ...), before anything starts
    if mesh.plugins.platform != "local":
        raise UsageError(f"runs the local platform; {mesh.path} selects platform {mesh.plugins.platform!r}")
    settings = mesh.settings.get("local") or LocalSettings()
    existing = read_state(mesh.state_dir)
    if is_running(existing):
        raise UsageError(f"this mesh is already running (knotwork up pid {existing['up']['pid']}); "
                         f"see `knotwork status --mesh {mesh.dir}`")
    if args.ingress_port is not None and not 1 <= args.ingress_port <= 65535:
        raise UsageError(f"--ingress-port: expected a port 1-65535, got {args.ingress_port}")
    mesh.state_dir.mkdir(mode=0o700, exist_ok=True)
    try:
        plan = plan_ports(settings, domain=mesh.mesh.domain, ingress_port=args.ingress_port)
    except ValueError as exc:
        where = "--ingress-port" if args.ingress_port is not None else "local.ingress.port"
        raise UsageError(f"{where}: {exc}") from None
    defaults = Launch()
    launch = Launch(
        control=tuple(shlex.split(args.control_command)) if args.control_command else defaults.control,
        proxy=tuple(shlex.split(args.proxy_command)) if args.proxy_command else defaults.proxy,
    )
    if args.quiet:
        configure_logging("warning")
    supervisor = Supervisor(mesh_path=mesh.path, settings=settings, mesh=mesh.mesh, plan=plan,
                            engine=mesh.plugins.engine, launch=launch, quiet=args.quiet,
                            route_lines=route_lines(mesh.path),
                            certificate_authority=mesh.plugins.certificate_authority)
    try:
        anyio.run(_up, supervisor, backend="asyncio")
    except OSError as exc:
        print(f"knotwork up: {exc}", file=sys.stderr)
        return 1
    if supervisor.fatal:
        for line in supervisor.fatal:
            print(line, file=sys.stderr)
        return 2
    return 0


async def _up(supervisor: Supervisor) -> None:
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                async for signum in signals:
                    if not supervisor.stopping:
                        log.info("stopping the mesh", signal=signal.Signals(signum).name)
                        timer = threading.Timer(HARD_STOP, os._exit, (1,))
                        timer.daemon = True
                        timer.start()
                    supervisor.stop()

        tg.start_soon(on_signals)
        await supervisor.run()
        tg.cancel_scope.cancel()


# ── status ──────────────────────────────────────────────────────────────────


def configure_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mesh", metavar="DIR", help="mesh directory or file (default: the current directory)")
    p.add_argument("--output", "-o", choices=("table", "json"), default="table", help="output format")


def state_dir_of(target: str | None) -> Path:
    return find_mesh_file(target).absolute().parent / STATE_DIR


async def _control_status(state_dir: Path) -> dict[str, Any] | None:
    from knotwork.control import admin_call

    try:
        with anyio.fail_after(2.0):
            status = await admin_call(state_dir, "status")
            proxies = await admin_call(state_dir, "proxy_status")
    except Exception:  # noqa: BLE001 - the table shows what state.json knows without it
        return None
    return {**status, "proxies": {p["node"]: p for p in proxies.get("proxies", ())}}


def run_status(args: argparse.Namespace) -> int:
    state_dir = state_dir_of(args.mesh)
    doc = read_state(state_dir)
    if not is_running(doc):
        print(f"knotwork status: no mesh is running in {state_dir.parent} (start it with `knotwork up`)", file=sys.stderr)
        return 1
    control = anyio.run(_control_status, state_dir)
    if args.output == "json":
        print(json.dumps({**doc, "control_plane": control}, indent=2))
        return 0
    print(render_status(doc, control))
    return 0


def _yes(value: Any) -> str:
    return "yes" if value else "no"


def _exit(value: int | None) -> str:
    from .process import describe_exit

    return "-" if value is None else describe_exit(value)


def render_status(doc: dict[str, Any], control: dict[str, Any] | None) -> str:
    """The status table of one state document (and the control plane's answer, if any)."""
    up, ctl, gw = doc["up"], doc["control"], doc["gateway"]
    uptime = int(time.time() - up["started"])
    proxies = (control or {}).get("proxies", {})

    def config(node: str) -> str:
        row = proxies.get(node)
        return "-" if row is None else f"{str(row['version'])[:8]}" + ("" if row["connected"] else " (disconnected)")

    version = f"config version {control['version']}" if control else "admin socket not answering"
    ca = f"  ca {ctl['ca_address']} ({ctl['certificate_authority']})" if ctl.get("ca_address") else "  plaintext (no CA)"
    lines = [
        f"mesh     {doc['mesh']}  (knotwork up pid {up['pid']}, engine {up['engine']}, up {uptime // 60}m{uptime % 60:02d}s)",
        f"control  {ctl['address']}{ca}  pid {ctl['pid'] or '-'}  ready {_yes(ctl['ready'])}  restarts {ctl['restarts']}  "
        f"{version}",
        f"ingress  {doc['ingress']['url']}  gateway pid {gw['pid'] or '-'}  ready {_yes(gw['ready'])}  "
        f"restarts {gw['restarts']}  config {config(gw['node'])}",
        "",
    ]
    header = ("WORKLOAD", "INSTANCE", "PID", "READY", "RESTARTS", "LAST EXIT", "SIDECAR", "PROXY PID", "PROXY RESTARTS",
              "CONFIG", "PORTS")
    rows = [header]
    for inst in doc["instances"]:
        side = inst["sidecar"]
        ports = " ".join(f"{k}={v}" for k, v in inst["ports"].items())
        rows.append((inst["workload"], inst["instance"], str(inst["pid"] or "-"), _yes(inst["ready"]),
                     str(inst["restarts"]), _exit(inst["last_exit"]), _yes(side["ready"]), str(side["pid"] or "-"),
                     str(side["restarts"]), config(inst["node"]), ports))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return "\n".join(lines)


COMMANDS = [
    CliCommand(name="up", help="run the mesh on this machine: control plane, workloads, sidecars, ingress",
               configure=configure_up, run=run_up),
    CliCommand(name="status", help="show the workloads and processes of a running `knotwork up`",
               configure=configure_status, run=run_status),
    CliCommand(name="logs", help="print (or follow) the logs of a workload's instances",
               configure=logs.configure_logs, run=logs.run_logs),
    CliCommand(name="prometheus-config", help="print a Prometheus scrape configuration for the running mesh "
               "(control plane /metrics, every proxy's /stats/prometheus)",
               configure=prometheus.configure_prometheus, run=prometheus.run_prometheus),
]
