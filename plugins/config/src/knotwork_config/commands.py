"""`knotwork apply -f FILE` and `knotwork delete -f FILE`: talk to the running `files` source.

The file is validated here first (exit 2 with one line per problem, no
mesh needed); then it is sent to the control plane's config socket, which
checks it again against everything else it holds (conflicts with config/
files) and accepts it whole or not at all. No running mesh: one line, exit 1.

`knotwork analyze [DIR] [-f FILE]`: the mesh's resources checked like
``istioctl analyze`` (see :mod:`knotwork_config.analyze`); exit
:data:`ANALYZE_ISSUES` (79, istioctl's) when a finding reaches
``--failure-threshold``, 2 for a directory that is not a mesh.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import anyio

from knotwork.config import STATE_DIR, find_mesh_file, load_mesh
from knotwork.records import CliCommand

from .settings import FilesSettings

# The parser (YAML, the Istio schemas), the config socket's client and the
# control plane's admin client are imported by the commands that use them:
# every `knotwork` command loads this module to build its parser.

__all__ = ["ANALYZE_ISSUES", "COMMANDS", "NotRunning", "call"]

#: Exit status of `analyze` when findings reach the failure threshold (istioctl's AnalyzerFoundIssues).
ANALYZE_ISSUES = 79

TIMEOUT = 10.0


class NotRunning(Exception):
    """The control plane's config socket is not there or not answering."""


async def call(state_dir: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the config socket in `state_dir`; raises NotRunning."""
    from grpclib.client import Channel
    from grpclib.const import Cardinality

    from knotwork.wire import JSONCodec

    from .source import CONFIG_METHOD, CONFIG_SOCKET

    path = Path(state_dir) / CONFIG_SOCKET
    if not path.exists():
        raise NotRunning(f"no config socket at {path}")
    channel = Channel(path=str(path), codec=JSONCodec())
    try:
        with anyio.fail_after(TIMEOUT):
            async with channel.request(CONFIG_METHOD, Cardinality.UNARY_UNARY, dict, dict) as stream:
                await stream.send_message(request, end=True)
                return await stream.recv_message() or {}
    except (OSError, TimeoutError) as exc:
        raise NotRunning(f"{path}: {exc.strerror or exc if isinstance(exc, OSError) else 'no answer'}") from None
    finally:
        channel.close()


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                   help="YAML file of Istio resources (repeatable; - reads standard input)")
    p.add_argument("-n", "--namespace", help="namespace of resources that name none (default: default)")
    p.add_argument("--mesh", metavar="DIR", help="mesh directory or file (default: the current directory)")


def _read(name: str) -> str:
    from .parse import ConfigError

    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{name}: (file): expected a readable YAML file, got "
                           f"{getattr(exc, 'strerror', None) or exc}"]) from None


def _run(args: argparse.Namespace, method: str) -> int:
    from .parse import ConfigError, parse_resources

    namespace = args.namespace or "default"
    texts: list[tuple[str, str]] = []
    problems: list[str] = []
    for name in args.filename:
        try:
            text = _read(name)
            parse_resources(text, name, namespace=namespace, forced_namespace=args.namespace is not None,
                            identity_only=method == "delete")
            texts.append((name, text))
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        return 2
    state_dir = find_mesh_file(args.mesh).absolute().parent / STATE_DIR
    for name, text in texts:
        request = {"method": method, "text": text, "file": name, "namespace": namespace,
                   "forced_namespace": args.namespace is not None}
        try:
            reply = anyio.run(call, state_dir, request)
        except NotRunning as exc:
            print(f"knotwork {method}: the mesh is not running ({exc}); start it with `knotwork up`",
                  file=sys.stderr)
            return 1
        if reply.get("problems"):
            for line in reply["problems"]:
                print(line, file=sys.stderr)
            return 2
        for resource, outcome in reply.get("outcome", {}).items():
            print(f"{resource} {outcome}")
    return 0


def run_apply(args: argparse.Namespace) -> int:
    return _run(args, "apply")


def run_delete(args: argparse.Namespace) -> int:
    return _run(args, "delete")


def configure_analyze(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", metavar="DIR", help="mesh directory or file (default: the current directory)")
    p.add_argument("-f", "--filename", action="append", default=[], metavar="FILE",
                   help="also analyze these resources as if applied now (file, folder of *.yaml, or - for stdin; "
                        "repeatable)")
    p.add_argument("-n", "--namespace", help="namespace of -f resources that name none (default: default)")
    p.add_argument("--use-mesh", "--use-kube", dest="use_mesh", choices=("auto", "true", "false"), default="auto",
                   help="take services, gateway workloads and platform resources from the running mesh: auto "
                        "(when it runs), true (it must run) or false (files only, like istioctl --use-kube=false)")
    p.add_argument("-o", "--output", choices=("log", "json", "yaml"), default="log")
    p.add_argument("--output-threshold", choices=("Info", "Warning", "Error"), default="Info",
                   help="lowest level printed (default Info)")
    p.add_argument("--failure-threshold", choices=("Info", "Warning", "Error"), default="Error",
                   help=f"lowest level that makes the exit status {ANALYZE_ISSUES} (default Error)")


def _extra_files(names: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, text) of every -f file (folders: their *.yaml/*.yml, recursively), and the read problems."""
    from .parse import ConfigError

    out, problems = [], []
    for name in names:
        path = Path(name)
        paths = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()) \
            if name != "-" and path.is_dir() else [path]
        for p in paths:
            shown = name if p == path else str(p)
            try:
                out.append((shown, _read(shown)))
            except ConfigError as exc:
                problems += exc.problems
    return out, problems


def run_analyze(args: argparse.Namespace) -> int:
    from knotwork.control import admin_call

    from .analyze import Level, compile_findings, load_inputs, own_resources, render
    from .analyzers import OFFLINE_SKIPPED, run_all

    target = args.dir or "."
    mesh_file = find_mesh_file(target)
    if not mesh_file.is_file():
        print(f"knotwork analyze: {target}: expected a mesh directory (with knotwork.yaml) or mesh file, "
              f"got {'a directory without knotwork.yaml' if Path(target).is_dir() else 'no such file'}",
              file=sys.stderr)
        return 2
    mesh = load_mesh(mesh_file, args.hooks)  # a bad mesh file: MeshError, exit 2
    settings = mesh.settings.get("files")
    folder = settings.directory if isinstance(settings, FilesSettings) else FilesSettings().directory
    extra, problems = _extra_files(args.filename)
    if problems:
        for line in problems:
            print(f"knotwork analyze: {line}", file=sys.stderr)
        return 2
    config_dir = (mesh.dir / folder).resolve()
    extra = [(name, text) for name, text in extra  # a config/ file is analyzed as one anyway, not as applied
             if name == "-" or not Path(name).resolve().is_relative_to(config_dir)]
    registry = None
    if args.use_mesh != "false":
        try:
            registry = anyio.run(admin_call, mesh.state_dir, "registry")
        except (OSError, TimeoutError) as exc:
            if args.use_mesh == "true":
                print(f"knotwork analyze: the mesh is not running ({exc}); start it with `knotwork up` "
                      f"or use --use-mesh=false", file=sys.stderr)
                return 1
        if registry is not None and "services" not in registry:  # a control plane without the method
            registry = None
    if registry is None:
        why = "--use-mesh=false" if args.use_mesh == "false" else "the mesh is not running"
        print(f"Info: {why}: checks of {', '.join(OFFLINE_SKIPPED)} skipped; analyzing files only", file=sys.stderr)
    inputs = load_inputs(mesh.dir, mesh.state_dir, mesh.mesh, folder, extra=extra,
                         namespace=args.namespace or "default", forced_namespace=args.namespace is not None,
                         registry=registry)
    findings = run_all(inputs)
    if registry is not None:  # what only the mesh's compilers know: the trial compile `apply` runs
        reply = anyio.run(lambda: admin_call(mesh.state_dir, "validate", source="files",
                                             resources=own_resources(inputs)))
        findings = sorted([*findings, *compile_findings(inputs, reply.get("problems") or ())], key=lambda f: f.sort_key())
    shown = [f for f in findings if f.level >= Level[args.output_threshold]]
    if shown or args.output != "log":
        print(render(shown, args.output))
    else:
        print(f"No validation issues found when analyzing {mesh.dir}.", file=sys.stderr)
    return ANALYZE_ISSUES if any(f.level >= Level[args.failure_threshold] for f in findings) else 0


COMMANDS = [
    CliCommand(name="apply", help="create or update Istio resources in the running mesh (whole file or nothing)",
               configure=configure, run=run_apply),
    CliCommand(name="delete", help="delete resources created with `knotwork apply`",
               configure=configure, run=run_delete),
    CliCommand(name="analyze", help="check the mesh's Istio resources like `istioctl analyze` (exit 79 on errors)",
               configure=configure_analyze, run=run_analyze),
]
