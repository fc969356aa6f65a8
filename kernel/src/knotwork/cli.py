"""The `knotwork` command. Plugins add subcommands through `knotwork_cli_commands`.

Exit status: 0 success, 1 runtime failure, 2 user mistake (bad mesh file,
bad arguments), 3 broken plugin. User mistakes never print a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import structlog

from .config import STATE_DIR, MeshError, find_mesh_file, load_mesh
from .kernel import Hooks, PluginError, make_plugin_manager
from .records import ProxyContext

__all__ = ["UsageError", "configure_logging", "main", "run_until_signalled"]

#: Seconds a process has to stop after SIGINT/SIGTERM before it is killed.
STOP_BUDGET = 5.0


class UsageError(Exception):
    """A user mistake on the command line: one line, exit 2."""


class RuntimeFailure(Exception):
    """Something the command needs is not there (a mesh not running): one line, exit 1."""


def configure_logging(level: str = "info") -> None:
    """structlog: readable on a terminal, JSON lines otherwise. Only the CLI calls this."""
    tty = sys.stderr.isatty() and not os.environ.get("KNOTWORK_LOG_JSON")
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.dev.ConsoleRenderer() if tty else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def run_until_signalled(main: Callable[..., Any], *args: Any) -> None:
    """Run ``await main(*args, task_status=...)`` until SIGINT/SIGTERM, then cancel it.

    Components clean up in ``finally`` (shielded, bounded); if stopping takes
    longer than :data:`STOP_BUDGET` the process exits anyway.
    """

    async def runner() -> None:
        async with anyio.create_task_group() as tg:
            async def watch() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        timer = threading.Timer(STOP_BUDGET, os._exit, (1,))
                        timer.daemon = True
                        timer.start()
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch)
            await tg.start(main, *args)

    try:
        import uvloop  # noqa: F401 - optional, faster event loop

        backend_options = {"use_uvloop": True}
    except ImportError:
        backend_options = {}
    try:
        anyio.run(runner, backend="asyncio", backend_options=backend_options)
    except BaseExceptionGroup as group:  # a component's start-up failure, as one clear line
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, MeshError | UsageError | RuntimeFailure | PluginError):
            raise leaf from None
        if type(leaf) is RuntimeError:
            raise RuntimeFailure(str(leaf)) from None
        raise


def _load(args: argparse.Namespace, hooks: Hooks, engine: str | None = None) -> Any:
    return load_mesh(getattr(args, "mesh", None) or getattr(args, "dir", None), hooks, engine=engine)


# ── built-in commands ────────────────────────────────────────────────────────


def cmd_plugins(args: argparse.Namespace, hooks: Hooks) -> int:
    mesh = None
    try:
        mesh = _load(args, hooks) if args.mesh or Path("knotwork.yaml").exists() else None
    except MeshError:
        mesh = None
    selected: set[str] = set()
    if mesh is not None:
        names = {n for role in ("platform", "engine", "certificate_authority", "router", "load_balancer",
                                "config_sources", "authenticators", "authorizers", "telemetry")
                 for n in mesh.selected(role)}
        selected = {r.plugin for recs in hooks.registry().values() for r in recs.values() if r.name in names}
        selected |= set(mesh.plugins.extra)
    provides: dict[str, list[str]] = {}
    for kind, recs in hooks.registry().items():
        for rec in recs.values():
            provides.setdefault(rec.plugin, []).append(f"{kind}:{rec.name}")
    print(f"{'order':<6}{'plugin':<16}{'distribution':<28}{'version':<10}{'selected':<10}provides / hooks")
    for info in hooks.plugins():
        sel = "-" if mesh is None else ("yes" if info.name in selected else "no")
        print(f"{info.order:<6}{info.name:<16}{info.distribution:<28}{info.version:<10}{sel:<10}"
              f"{', '.join(sorted(provides.get(info.name, [])))}")
        print(f"{'':<70}hooks: {', '.join(info.hooks)}")
    return 0


def cmd_check(args: argparse.Namespace, hooks: Hooks) -> int:
    from .config import preflight

    mesh = _load(args, hooks, engine=args.engine)
    preflight(mesh, hooks)
    print(f"{mesh.path}: ok (platform {mesh.plugins.platform}, engine {mesh.plugins.engine})")
    return 0


def _check_address(where: str, value: str | None) -> None:
    from .wire import parse_address

    try:
        if value is not None and not 0 <= parse_address(value)[1] <= 65535:
            raise ValueError
    except ValueError:
        raise UsageError(f"{where}: expected host:port (port 0: any free one), got {value!r}") from None


def cmd_control(args: argparse.Namespace, hooks: Hooks) -> int:
    from .control import METRICS_LISTEN_ENV, ControlPlane

    for flag in ("listen", "ca_listen", "metrics_listen"):
        _check_address("--" + flag.replace("_", "-"), getattr(args, flag))
    _check_address(METRICS_LISTEN_ENV, None if args.metrics_listen else os.environ.get(METRICS_LISTEN_ENV))
    mesh = _load(args, hooks, engine=args.engine)
    run_until_signalled(ControlPlane(mesh, hooks, listen=args.listen, ca_listen=args.ca_listen,
                                     metrics_listen=args.metrics_listen).run)
    return 0


def cmd_proxy(args: argparse.Namespace, hooks: Hooks) -> int:
    from .identity import BUNDLE_FILE, CREDENTIAL_ENV

    mesh = _load(args, hooks, engine=args.engine) if args.mesh else None
    engine_name = args.engine or (mesh.plugins.engine if mesh else "native")
    engines = hooks.registry()["proxy_engines"]
    if engine_name not in engines:
        raise UsageError(f"--engine: expected an installed proxy engine ({', '.join(sorted(engines))}), got {engine_name!r}")
    engine = engines[engine_name]
    settings = mesh.settings.get(engine_name) if mesh else None
    if settings is None and engine.settings is not None:
        settings = engine.settings()
    ctx = ProxyContext(
        node_id=args.node, control_address=args.control, admin_port=args.admin_port, settings=settings,
        strategies=hooks.strategies(), strategy_settings=dict(mesh.settings) if mesh else {},
        drain_timeout=args.drain_timeout, state_dir=mesh.state_dir if mesh else None,
        ca_address=args.ca, identity=args.identity, credential=os.environ.pop(CREDENTIAL_ENV, ""),
        bundle_file=Path(args.bundle) if args.bundle else (mesh.state_dir / BUNDLE_FILE if mesh else None),
        platform=mesh.plugins.platform if mesh else "local",
        options={"control_identity": f"spiffe://{mesh.mesh.trust_domain}/ns/{mesh.mesh.root_namespace}/sa/knotwork-control"}
        if mesh else {},
    )
    structlog.contextvars.bind_contextvars(node=args.node)
    run_until_signalled(engine.proxy(ctx).run)
    return 0


def _ask_control(args: argparse.Namespace, method: str) -> Any:
    from .control import admin_call

    state_dir = find_mesh_file(args.mesh).absolute().parent / STATE_DIR
    try:
        return anyio.run(admin_call, state_dir, method)["proxies"]
    except (OSError, TimeoutError) as exc:
        raise RuntimeFailure(f"the control plane is not reachable: {exc}") from None


#: Envoy config dump type -> (type key, list of dynamic resources, path to a resource's name)
_ENVOY_DUMP = {
    "ClustersConfigDump": ("clusters", "dynamic_active_clusters", ("cluster", "name")),
    "EndpointsConfigDump": ("endpoints", "dynamic_endpoint_configs", ("endpoint_config", "cluster_name")),
    "ListenersConfigDump": ("listeners", "dynamic_listeners", ("name",)),
    "RoutesConfigDump": ("routes", "dynamic_route_configs", ("route_config", "name")),
    "SecretsConfigDump": ("secrets", "dynamic_active_secrets", ("name",)),
}


def cmd_proxy_config(args: argparse.Namespace, hooks: Hooks) -> int:
    import urllib.request

    nodes = [n for n in _ask_control(args, "proxies")
             if args.workload in (n["workload"], n["instance"], n["id"]) and n["admin"]]
    if not nodes:
        raise UsageError(f"WORKLOAD: no proxy of workload, instance or node {args.workload!r} is known")
    dumps = {}
    for node in nodes:
        url = f"http://{node['address']}:{node['admin']}/config_dump"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 - loopback admin port
                dumps[node["id"]] = json.load(reply)
        except OSError as exc:
            raise RuntimeFailure(f"{node['id']}: admin {url} not reachable: {exc}") from None
    if args.output == "json":
        print(json.dumps(dumps, indent=1))
        return 0
    for node_id, dump in dumps.items():
        print(f"# {node_id}")
        if "configs" in dump:  # an Envoy admin config dump
            for config in dump["configs"]:
                kind = config.get("@type", "?").rsplit(".", 1)[-1]
                type_key, field, path = _ENVOY_DUMP.get(kind, (kind, "", ()))
                for item in config.get(field, ()) if field else ():
                    for key in path:
                        item = item.get(key, {}) if isinstance(item, dict) else {}
                    print(f"  {type_key:<10} {item}")
            continue
        for type_key, resources in dump.items():
            for name, res in resources.items():
                detail = {"listeners": lambda r: f"{r['mode']} {r['protocol']} :{r['port']} -> "
                                                  f"{r.get('route_table') or r.get('cluster')}",
                          "clusters": lambda r: f"lb={r['lb']}",
                          "endpoints": lambda r: " ".join(f"{e['address']}:{e['port']}{'' if e['healthy'] else '(unhealthy)'}"
                                                          for e in r["endpoints"]),
                          "routes": lambda r: f"{len(r['virtual_hosts'])} virtual hosts"}.get(type_key, lambda r: "")
                print(f"  {type_key:<10} {name:<60} {detail(res)}")
    return 0


def cmd_proxy_status(args: argparse.Namespace, hooks: Hooks) -> int:
    rows = _ask_control(args, "proxy_status")
    for row in rows:
        for t in row["types"].values():
            t["state"] = ("NACKED" if t["nacked"] else "SYNCED" if t["acked"] and t["acked"] == t["latest"]
                          else "STALE" if t["latest"] else "-")
    if args.output == "json":
        print(json.dumps(rows, indent=1))
        return 0
    types = ("clusters", "endpoints", "listeners", "routes", "secrets")
    print(f"{'NAME':<34}{'CONNECTED':<11}" + "".join(f"{t.upper():<11}" for t in types) + "VERSION")
    for row in rows:
        print(f"{row['node']:<34}{'yes' if row['connected'] else 'no':<11}"
              + "".join(f"{row['types'][t]['state']:<11}" for t in types) + str(row["version"]))
    return 0


def _mesh_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mesh", metavar="DIR", help="mesh directory or file (default: the current directory)")


def build_parser(hooks: Hooks) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="knotwork", description="Knotwork: a service mesh in Python.")
    parser.add_argument("--log-level", default=os.environ.get("KNOTWORK_LOG_LEVEL", "info"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("plugins", help="list installed plugins and what they provide")
    _mesh_arg(p)
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("check", help="validate a mesh file and its config without running anything")
    p.add_argument("dir", nargs="?", metavar="DIR", help="mesh directory or file")
    p.add_argument("--engine", help="override the mesh file's proxy engine")
    p.set_defaults(func=cmd_check, mesh=None)
    p = sub.add_parser("control", help="run the control plane of a mesh")
    _mesh_arg(p)
    p.add_argument("--listen", default="127.0.0.1:0", help="address of the config distribution server")
    p.add_argument("--ca-listen", default="127.0.0.1:0", help="address of the certificate service")
    p.add_argument("--metrics-listen", help="address of GET /metrics (default: $KNOTWORK_METRICS_LISTEN, else a free "
                                            "loopback port)")
    p.add_argument("--engine", help="override the mesh file's proxy engine")
    p.set_defaults(func=cmd_control)
    p = sub.add_parser("proxy", help="run one sidecar or gateway proxy")
    _mesh_arg(p)
    p.add_argument("--engine", help="proxy engine (default: the mesh file's, else native)")
    p.add_argument("--node", required=True, help="node id, e.g. sidecar~reviews-v1-1")
    p.add_argument("--control", required=True, help="control plane address HOST:PORT")
    p.add_argument("--admin-port", type=int, default=0, help="admin port on 127.0.0.1 (/ready, /status)")
    p.add_argument("--drain-timeout", type=float, default=3.0, help="seconds to drain in-flight requests on stop")
    p.add_argument("--ca", metavar="HOST:PORT", help="the certificate service (default: none, no mesh mTLS)")
    p.add_argument("--identity", metavar="SPIFFE_ID", help="the identity this proxy claims (with --ca); the "
                   "platform's one-time credential comes in the KNOTWORK_CREDENTIAL environment variable")
    p.add_argument("--bundle", metavar="FILE", help="trust bundle that verifies the control plane "
                   "(default: the mesh's .knotwork/trust-bundle.pem)")
    p.set_defaults(func=cmd_proxy)
    p = sub.add_parser("proxy-config", help="the effective config of a workload's proxies (from their admin)")
    p.add_argument("workload", metavar="WORKLOAD", help="workload, instance or node id")
    _mesh_arg(p)
    p.add_argument("--output", "-o", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_proxy_config)
    p = sub.add_parser("proxy-status", help="per proxy and resource type: synced, stale or NACKed")
    _mesh_arg(p)
    p.add_argument("--output", "-o", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_proxy_status)
    for name, command in sorted(hooks.cli_commands().items()):
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.configure(p)
        p.set_defaults(func=lambda a, h, _c=command: (setattr(a, "hooks", h), _c.run(a))[1])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        hooks = Hooks(make_plugin_manager())
        parser = build_parser(hooks)
    except PluginError as exc:
        print(f"knotwork: {exc}", file=sys.stderr)
        return 3
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(args.func(args, hooks) or 0)
    except MeshError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"knotwork {args.command}: {exc}", file=sys.stderr)
        return 2
    except RuntimeFailure as exc:
        print(f"knotwork {args.command}: {exc}", file=sys.stderr)
        return 1
    except PluginError as exc:
        print(f"knotwork: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `knotwork proxy-status | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
