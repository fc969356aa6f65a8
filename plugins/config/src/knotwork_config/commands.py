"""`knotwork apply -f FILE` and `knotwork delete -f FILE`: talk to the running `files` source.

The file is validated here first (exit 2 with one line per problem, no
mesh needed); then it is sent to the control plane's config socket, which
checks it again against everything else it holds (conflicts with config/
files) and accepts it whole or not at all. No running mesh: one line, exit 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import anyio

from knotwork.config import STATE_DIR, find_mesh_file
from knotwork.records import CliCommand
from knotwork.wire import JSONCodec

from .parse import ConfigError, parse_resources
from .source import CONFIG_METHOD, CONFIG_SOCKET

__all__ = ["COMMANDS", "NotRunning", "call"]

TIMEOUT = 10.0


class NotRunning(Exception):
    """The control plane's config socket is not there or not answering."""


async def call(state_dir: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the config socket in `state_dir`; raises NotRunning."""
    from grpclib.client import Channel
    from grpclib.const import Cardinality

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
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{name}: (file): expected a readable YAML file, got "
                           f"{getattr(exc, 'strerror', None) or exc}"]) from None


def _run(args: argparse.Namespace, method: str) -> int:
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


COMMANDS = [
    CliCommand(name="apply", help="create or update Istio resources in the running mesh (whole file or nothing)",
               configure=configure, run=run_apply),
    CliCommand(name="delete", help="delete resources created with `knotwork apply`",
               configure=configure, run=run_delete),
]
