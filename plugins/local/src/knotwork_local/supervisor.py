"""The `up` supervisor: a tiny kubelet for one mesh on loopback.

Order: the platform socket, then the control plane, the ingress gateway and
every sidecar; an instance's app starts once its sidecar answers ``/ready``.
Crashed processes restart with backoff on the same ports. Stop: apps and
sidecars get SIGTERM together (sidecars drain), SIGKILL after the budget,
then the gateway and the control plane; all within 5 seconds.

With a certificate authority selected in the mesh file, the control plane
also serves its certificate service on the plan's `ca` port and every proxy
claims its SPIFFE ID there, proving it with a one-time credential made
before each of its spawns (see :mod:`knotwork_local.credentials`).
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
import structlog
from anyio.abc import TaskStatus

from knotwork.control import METRICS_LISTEN_ENV
from knotwork.identity import CREDENTIAL_ENV
from knotwork.model import Identity, MeshSettings

from . import credentials, publish, state
from .launch import Launch, app_argv, app_env
from .platform import GATEWAY_NODE, gateway_identity
from .ports import PortPlan
from .process import Backoff, describe_exit, gateway_synced, http_status, signal_group, spawn, tcp_open
from .settings import LocalSettings

__all__ = ["Supervisor"]

#: The exit status of a knotwork command that refused what the user gave it.
USER_ERROR = 2


def _tail(path: Path, size: int = 16384) -> list[str]:
    """The last lines of a log file."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace").splitlines()[-20:]
    except OSError:
        return []

log = structlog.get_logger("knotwork.local", plugin="local")

STOP_BUDGET = 4.2  # seconds for the whole ordered stop, kills included (`up` exits after 5 whatever happens)
KILL_WAIT = 0.2  # seconds to reap what was SIGKILLed
CONTROL_WAIT = 15.0  # seconds proxies wait for the control plane's port before starting anyway
ANNOUNCE_WAIT = 30.0  # seconds the ingress line waits for every instance to have started and be ready
SETTLE_WAIT = 5.0  # seconds it then waits for the gateway to have the config with those instances


class Supervisor:
    """Runs and watches every process of one mesh; its state is the platform's truth.

    `certificate_authority`: the mesh file's ``plugins.certificate_authority``
    (None: no certificate service, a plaintext mesh).
    """

    def __init__(self, *, mesh_path: Path, settings: LocalSettings, mesh: MeshSettings, plan: PortPlan, engine: str,
                 launch: Launch = Launch(), quiet: bool = False, out: Callable[[str], None] | None = None,
                 route_lines: Sequence[int] = (), certificate_authority: str | None = None) -> None:
        self.mesh_path, self.settings, self.mesh, self.plan, self.engine = mesh_path, settings, mesh, plan, engine
        self.certificate_authority = certificate_authority
        self.dir = mesh_path.parent
        self.state_dir, self.logs = self.dir / ".knotwork", self.dir / ".knotwork" / "logs"
        self.launch, self.quiet = launch, quiet
        self.out = out or (lambda line: print(line, flush=True))
        self.control, self.gateway = state.ProcStatus(), state.ProcStatus()
        self.instances = {
            name: state.InstanceStatus(
                w, name, dict(plan.instances[name]),
                identity=Identity(mesh.trust_domain, w.namespace, w.resolved_service_account).spiffe_id)
            for w in settings.workloads for name in w.instance_names()}
        self.gateway_identity = gateway_identity(mesh)
        self.workloads = [state.workload_doc(w, mesh) for w in settings.workloads]
        self.routes = state.routes_doc(settings, mesh, str(mesh_path), list(route_lines))
        self.started, self.generation, self.stopping, self.finished, self.announced = time.time(), 0, False, False, False
        self._changed: anyio.Event | None = None  # events need the event loop: made in run()
        self._stop: anyio.Event | None = None
        self._ready: dict[str, anyio.Event] = {}
        self._procs: dict[str, Any] = {}
        self._shut = False
        #: The control plane's error lines when it refused the mesh at start (exit status 2): `up` prints them.
        self.fatal: list[str] = []

    # -- state ---------------------------------------------------------------
    def document(self) -> dict[str, Any]:
        return state.document(generation=self.generation, mesh_path=self.mesh_path,
                              up_pid=None if self.finished else os.getpid(),
                              started=self.started, engine=self.engine, plan=self.plan, control=self.control,
                              gateway=self.gateway, instances=list(self.instances.values()),
                              workloads=self.workloads, routes=self.routes,
                              certificate_authority=self.certificate_authority, gateway_identity=self.gateway_identity,
                              root_namespace=self.mesh.root_namespace)

    def changed(self) -> None:
        self.generation += 1
        if self._changed is None:
            return
        event, self._changed = self._changed, anyio.Event()
        event.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition()` holds; it is re-checked on every state change."""
        while not condition():
            await self._changed.wait()

    def stop(self) -> None:
        """Ask for the ordered stop; asked twice, kill everything now."""
        if self.stopping:
            self.kill_all()
        self.stopping = True
        if self._stop is not None:
            self._stop.set()

    def kill_all(self) -> None:
        for proc in self._procs.values():
            if proc.returncode is None:
                signal_group(proc.pid, signal.SIGKILL)

    # -- lifecycle -------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._changed, self._stop = anyio.Event(), anyio.Event()
        if self.stopping:
            self._stop.set()
        self.logs.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        (self.state_dir / "control.sock").unlink(missing_ok=True)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(publish.serve_platform, self, self.state_dir / state.PLATFORM_SOCKET)
                tg.start_soon(publish.write_state_loop, self, self.state_dir)
                tg.start_soon(self._start_all, tg)
                task_status.started()
                await self._stop.wait()
                await self._shutdown()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._shutdown()
                self.finished = True
                for status in (self.control, self.gateway, *(s for i in self.instances.values() for s in (i.app, i.sidecar))):
                    status.pid, status.running, status.ready, status.credential_sha256 = None, False, False, None
                state.write_state(self.state_dir, self.document())
                self.changed()
                for sock in (state.PLATFORM_SOCKET, "control.sock"):
                    (self.state_dir / sock).unlink(missing_ok=True)
                log.info("mesh stopped")

    async def _start_all(self, tg: Any) -> None:
        inherited = {k: v for k, v in os.environ.items() if k != CREDENTIAL_ENV}  # only a proxy gets one, its own
        base = {**inherited, "PYTHONUNBUFFERED": "1"}
        ctl, launch = f"127.0.0.1:{self.plan.control}", attrs.evolve(self.launch, engine=self.engine)
        ca = f"127.0.0.1:{self.plan.ca}" if self.certificate_authority else None
        control_env = {**base, METRICS_LISTEN_ENV: f"127.0.0.1:{self.plan.metrics}"} if self.plan.metrics else base
        tg.start_soon(self._supervise, "control", self.control, launch.control_argv(self.mesh_path, ctl, ca), control_env,
                      "control.log", None, lambda proc: self._watch_tcp(self.control, self.plan.control))
        with anyio.move_on_after(CONTROL_WAIT):
            await self.until(lambda: self.control.ready)
        if not self.control.ready:
            log.warning("control plane not listening yet; starting proxies anyway", log=str(self.logs / "control.log"))

        def proxy_argv(node: str, admin: int, identity: str) -> list[str]:
            return launch.proxy_argv(self.mesh_path, node, ctl, admin, self.settings.drain_timeout,
                                     ca=ca, identity=identity if ca else None)

        admin = self.plan.gateway["admin"]
        tg.start_soon(functools.partial(
            self._supervise, "gateway", self.gateway, proxy_argv(GATEWAY_NODE, admin, self.gateway_identity), base,
            "ingress.proxy.log", None, lambda proc: self._watch_proxy("gateway", self.gateway, admin),
            credential=ca is not None))
        for name, inst in self.instances.items():
            key = f"sidecar:{name}"
            tg.start_soon(functools.partial(
                self._supervise, key, inst.sidecar, proxy_argv(inst.node, inst.ports["admin"], inst.identity), base,
                f"{name}.proxy.log", None, lambda proc, k=key, i=inst: self._watch_proxy(k, i.sidecar, i.ports["admin"]),
                credential=ca is not None))
            tg.start_soon(self._supervise, f"app:{name}", inst.app, app_argv(inst.workload),
                          app_env(inst.workload, name, inst.ports, self.mesh, inherited),
                          f"{name}.log", lambda k=key: self._ready_event(k).wait(),
                          lambda proc, i=inst: self._watch_app(i))
        tg.start_soon(self._announce)

    def _ready_event(self, key: str) -> anyio.Event:
        return self._ready.setdefault(key, anyio.Event())

    async def _supervise(self, key: str, status: state.ProcStatus, argv: list[str], env: dict[str, str], log_name: str,
                         gate: Callable[[], Awaitable[Any]] | None, watch: Callable[[Any], Awaitable[Any]], *,
                         credential: bool = False) -> None:
        """Start, watch and restart one process. `credential`: a proxy that proves its identity
        with a one-time credential, fresh for each spawn, in its environment only; the state
        document (and so the control plane, before the proxy can ask) gets its hash first."""
        backoff, log_path = Backoff(), self.logs / log_name
        while not self.stopping:
            if gate is not None:
                await gate()
            if self.stopping:
                return
            began = time.monotonic()
            spawn_env = env
            if credential:
                secret, status.credential_sha256 = credentials.issue()
                spawn_env = {**env, CREDENTIAL_ENV: secret}
                self.changed()  # the hash is on its way to the control plane while the process starts
            try:
                proc = await spawn(argv, env=spawn_env, cwd=self.dir, log_path=log_path, truncate=status.started == 0)
            except OSError as exc:
                log.error("cannot start", process=key, argv=argv, error=str(exc))
                proc, returncode = None, 127
            status.started += 1
            if proc is not None:
                self._procs[key] = proc
                if self.stopping:
                    signal_group(proc.pid, signal.SIGKILL)
                status.pid, status.running = proc.pid, True
                log.info("started", process=key, pid=proc.pid)
                self.changed()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch, proc)
                    returncode = await proc.wait()
                    tg.cancel_scope.cancel()
            was_ready = status.ready
            status.pid, status.running, status.ready, status.last_exit = None, False, False, returncode
            status.credential_sha256 = None  # that spawn's credential dies with it
            if self.stopping:
                self.changed()
                return
            if key == "control" and returncode == USER_ERROR and not was_ready and status.restarts == 0:
                # the control plane refused the mesh (a CA folder that is not one, ...): say why and stop,
                # rather than restart it forever behind a log file
                self.fatal = [line for line in _tail(log_path) if line and not line.startswith(("{", "---"))]
                log.error("the control plane refused this mesh; stopping", log=str(log_path))
                self.stop()
                return
            status.restarts += 1
            delay = backoff.next_delay(time.monotonic() - began)
            log.warning("exited; restarting", process=key, status=describe_exit(returncode),
                        restarts=status.restarts, restart_in=delay, log=str(log_path))
            with open(log_path, "a") as f:
                f.write(f"--- knotwork: {key} {describe_exit(returncode)}; restart {status.restarts} in {delay} s ---\n")
            self.changed()
            with anyio.move_on_after(delay):
                await self._stop.wait()

    # -- watches: run while the process runs, cancelled when it exits -----------
    async def _watch_tcp(self, status: state.ProcStatus, port: int) -> None:
        while not await tcp_open(port, timeout=0.5):
            await anyio.sleep(0.05)
        status.ready = True
        self.changed()

    async def _watch_proxy(self, key: str, status: state.ProcStatus, admin: int) -> None:
        try:
            interval = 0.05
            while await http_status(admin, "/ready", timeout=1.0) != 200:
                await anyio.sleep(interval)
                interval = min(interval * 1.3, 0.25)
            status.ready = True
            self._ready_event(key).set()
            log.info("proxy ready", process=key)
            self.changed()
            await anyio.sleep_forever()
        finally:
            if self._ready_event(key).is_set():
                self._ready[key] = anyio.Event()

    async def _watch_app(self, inst: state.InstanceStatus) -> None:
        probe, status, w = inst.workload.readiness, inst.app, inst.workload
        if probe is None or not w.ports:
            status.ready = True
            self.changed()
            return
        port, failures, interval = inst.ports[f"app:{w.ports[0].port}"], 0, 0.05
        while True:
            if probe.http is not None:
                code = await http_status(port, probe.http, timeout=probe.timeout)
                ok = code is not None and 200 <= code < 400
            else:
                ok = await tcp_open(port, timeout=probe.timeout)
            failures = 0 if ok else failures + 1
            if ok and not status.ready:
                status.ready = True
                log.info("ready", instance=inst.instance)
                self.changed()
            elif status.ready and failures >= max(1, probe.failure_threshold):
                status.ready = False
                log.warning("readiness probe failing", instance=inst.instance, failures=failures)
                self.changed()
            await anyio.sleep(probe.period if status.ready else min(interval, probe.period))
            interval = min(interval * 1.5, probe.period)

    async def _announce(self) -> None:
        with anyio.move_on_after(ANNOUNCE_WAIT) as waited:
            await self.until(lambda: self.gateway.ready)
        if waited.cancelled_caught:
            log.warning("ingress gateway not ready yet", log=str(self.logs / "ingress.proxy.log"))
            await self.until(lambda: self.gateway.ready)
        with anyio.move_on_after(ANNOUNCE_WAIT):
            await self.until(lambda: all(i.app.started for i in self.instances.values()))
            await self.until(lambda: all(i.app.ready for i in self.instances.values()))
        not_ready = sorted(n for n, i in self.instances.items() if not i.app.ready)
        if not_ready:
            log.warning("instances not ready yet", instances=not_ready)
        with anyio.move_on_after(SETTLE_WAIT):
            target, synced = self.generation, 0
            while synced < 2:  # twice in a row: the control plane debounces before it compiles
                has = await gateway_synced(self.state_dir, target)
                if has is None:
                    break
                synced = synced + 1 if has else 0
                await anyio.sleep(0.1)
        self.announced = True
        self.out(f"Ingress: http://127.0.0.1:{self.plan.ingress}/")
        if not self.quiet:
            self.out(f"  knotwork status --mesh {self.dir}  ·  knotwork logs WORKLOAD --mesh {self.dir}  ·  Ctrl-C stops")
        self.changed()

    # -- stop ------------------------------------------------------------------
    async def _shutdown(self) -> None:
        if self._shut:
            return
        self._shut = self.stopping = True
        began = time.monotonic()
        first = [k for k in self._procs if k.startswith(("app:", "sidecar:"))]
        await self._terminate(first, began + min(self.settings.drain_timeout + 0.25, STOP_BUDGET - 1.0))
        log.info("apps and sidecars stopped", seconds=round(time.monotonic() - began, 3))
        await self._terminate(["gateway", "control"], began + STOP_BUDGET - KILL_WAIT)
        self.kill_all()  # anything that started while stopping
        log.info("gateway and control plane stopped", seconds=round(time.monotonic() - began, 3))
        self.changed()

    async def _terminate(self, keys: list[str], deadline: float) -> None:
        """SIGTERM the process groups of `keys`, SIGKILL what still runs at `deadline`."""
        procs = [self._procs[k] for k in keys if k in self._procs and self._procs[k].returncode is None]
        for proc in procs:
            signal_group(proc.pid, signal.SIGTERM)
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            for proc in procs:
                await proc.wait()
        for proc in procs:
            if proc.returncode is None:
                log.warning("did not stop in time; killed", pid=proc.pid)
                signal_group(proc.pid, signal.SIGKILL)
        with anyio.move_on_after(KILL_WAIT):
            for proc in procs:
                await proc.wait()
