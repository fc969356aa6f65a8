"""The `files` config source component, run inside the control plane.

On start it reads the applied resources persisted by earlier runs and every
``*.yaml``/``*.yml`` file under the config folder (recursively), serves the
config socket (``.knotwork/config.sock``, 0600) that ``knotwork apply`` and
``knotwork delete`` talk to, and pushes its first synced snapshot at once
(even an empty one: the control plane waits for it). Every change is
first compiled for every proxy in a trial run (``ctx.validate``): one no
compiler can translate is refused whole. Then it polls the
folder's modification times every ``poll_interval`` seconds and pushes a
whole new snapshot after every accepted change. A file with a bad resource
is refused whole and logged; its previous content stays in force.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from grpclib.server import Server

from knotwork.model import PlatformSnapshot
from knotwork.records import ComponentContext
from knotwork.wire import JSONCodec, JsonService, serving, unary

from .parse import ConfigError, parse_resources
from .settings import FilesSettings
from .store import Store

__all__ = ["CONFIG_METHOD", "CONFIG_SOCKET", "FilesSource"]

log = structlog.get_logger("knotwork.config", plugin="config")

PLATFORM = "files"
CONFIG_SOCKET = "config.sock"
CONFIG_METHOD = "/knotwork.v1.Config/Call"
_SUFFIXES = (".yaml", ".yml")

Signature = tuple[int, int]  # (mtime_ns, size)


class FilesSource:
    """config/ files plus applied resources, merged and checked, pushed as snapshots."""

    def __init__(self, ctx: ComponentContext) -> None:
        self.ctx = ctx
        self.settings: FilesSettings = ctx.settings or FilesSettings()
        self.config_dir = Path(ctx.mesh_dir) / self.settings.directory
        self.socket_path = Path(ctx.state_dir) / CONFIG_SOCKET
        self.store = Store(Path(ctx.state_dir) / "applied", check=lambda resources: ctx.validate(PLATFORM, resources))
        self.seen: dict[str, Signature] = {}  # every file looked at, accepted or not
        self.version = 0
        self._send: Any = None
        self._lock = anyio.Lock()

    # -- lifecycle --------------------------------------------------------------
    async def run(self, send: Any, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._send = send
        async with send, anyio.create_task_group() as tg:
            try:
                self.store.load_applied()
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("cannot read the applied resources; starting without them",
                          path=str(self.store.applied_dir), error=repr(exc))
            self.rescan()
            await tg.start(self._serve)
            await self._push()
            log.info("files config source started", directory=str(self.config_dir),
                     resources=len(self.store.resources()), socket=str(self.socket_path))
            task_status.started()
            while True:
                await anyio.sleep(self.settings.poll_interval)
                if self.rescan():
                    async with self._lock:
                        await self._push()

    async def _push(self) -> None:
        self.version += 1
        await self._send.send(PlatformSnapshot(platform=PLATFORM, version=self.version,
                                               resources=self.store.resources(), synced=True))

    # -- the config folder ------------------------------------------------------
    def _scan(self) -> dict[str, Signature]:
        found: dict[str, Signature] = {}
        if not self.config_dir.is_dir():
            return found
        for path in self.config_dir.rglob("*"):
            if path.suffix not in _SUFFIXES or path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if path.is_file():
                found[self._name(path)] = (st.st_mtime_ns, st.st_size)
        return found

    def _name(self, path: Path) -> str:
        """How a config file is named in messages: relative to the mesh directory."""
        try:
            return str(path.relative_to(self.ctx.mesh_dir))
        except ValueError:
            return str(path)

    def rescan(self) -> bool:
        """Look at the folder once; apply what changed. True if the resources changed."""
        found = self._scan()
        changed = False
        for name in sorted(set(self.seen) - set(found)):
            del self.seen[name]
            if self.store.remove_file(name):
                log.info("config file removed", file=name)
                changed = True
        for name, signature in sorted(found.items()):
            if self.seen.get(name) == signature:
                continue
            self.seen[name] = signature
            changed |= self._load(name)
        return changed

    def _load(self, name: str) -> bool:
        path = Path(self.ctx.mesh_dir) / name
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            problem = f"{name}: (file): expected a readable UTF-8 file, got {exc}"
            self.ctx.rejected(PLATFORM, [problem])
            log.error("config file rejected; its previous content stays in force", file=name, problem=problem)
            return False
        before = self.store.files.get(name)
        try:
            self.store.set_file(name, parse_resources(text, name))
        except ConfigError as exc:
            self.ctx.rejected(PLATFORM, exc.problems)
            for line in exc.problems:
                log.error("config file rejected; its previous content stays in force", file=name, problem=line)
            return False
        log.info("config file loaded", file=name, resources=len(self.store.files[name]))
        return before != self.store.files[name] or before is None

    # -- the config socket ------------------------------------------------------
    async def _call(self, request: dict) -> dict:
        method = request.get("method")
        if method == "list":
            return {"resources": [{"resource": str(r), "source": str(r.source)} for r in self.store.resources()],
                    "version": self.version}
        if method not in ("apply", "delete"):
            return {"problems": [f"(request): method: expected apply, delete or list, got {method!r}"]}
        try:
            resources = parse_resources(
                str(request.get("text", "")), str(request.get("file", "-")),
                namespace=str(request.get("namespace") or "default"),
                forced_namespace=bool(request.get("forced_namespace")), identity_only=method == "delete")
            async with self._lock:
                outcome = self.store.apply(resources) if method == "apply" else self.store.delete(resources)
                if any(v != "unchanged" for v in outcome.values()):
                    await self._push()
        except ConfigError as exc:
            self.ctx.rejected(PLATFORM, exc.problems)
            return {"problems": exc.problems}
        except OSError as exc:
            return {"problems": [f"{request.get('file', '-')}: (store): expected to persist the change, got {exc}"]}
        log.info(f"{method} accepted", file=request.get("file"), outcome=outcome, version=self.version)
        return {"outcome": outcome, "version": self.version}

    async def _serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        server = Server([JsonService({CONFIG_METHOD: unary(self._call)})], codec=JSONCodec())
        async with serving(server, path=self.socket_path):
            task_status.started()
            await anyio.sleep_forever()
