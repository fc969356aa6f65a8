"""Run a real mesh (`knotwork up`) from a test, and look at it from outside.

Everything is a real process on loopback; waits poll a condition until a
deadline, never a bare sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last failure
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


def alive(pid: int | None) -> bool:
    """True if `pid` is a running (non-zombie) process."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class RunningMesh:
    """`knotwork up` on a copy of a mesh directory, in its own session."""

    def __init__(self, source: Path, workdir: Path, *args: str) -> None:
        self.dir = workdir / source.name
        shutil.copytree(source, self.dir, ignore=shutil.ignore_patterns(".knotwork", "tests", "__pycache__"))
        self.log_path = workdir / f"{source.name}-up.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "knotwork", "up", str(self.dir), *args],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "KNOTWORK_LOG_JSON": "1"},
        )

    # -- state ---------------------------------------------------------------
    def state(self) -> dict:
        return json.loads((self.dir / ".knotwork" / "state.json").read_text())

    def instances(self) -> list[dict]:
        return self.state()["instances"]

    def instance(self, name: str) -> dict:
        return next(i for i in self.instances() if i["instance"] == name)

    @property
    def url(self) -> str:
        return self.state()["ingress"]["url"].rstrip("/")

    def admin(self, port: int, path: str) -> Any:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).json()

    def proxy_admin_ports(self) -> dict[str, int]:
        st = self.state()
        ports = {st["gateway"]["node"]: st["gateway"]["ports"]["admin"]}
        ports.update({i["node"]: i["ports"]["admin"] for i in st["instances"]})
        return ports

    def pids(self) -> list[int]:
        st = self.state()
        pids = [st["up"]["pid"], st["control"]["pid"], st["gateway"]["pid"]]
        for inst in st["instances"]:
            pids += [inst["pid"], inst["sidecar"]["pid"]]
        return [p for p in pids if p]

    def knotwork(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "knotwork", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=self.dir)

    def knotwork_json(self, *args: str) -> Any:
        done = self.knotwork(*args, "--output", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    # -- lifecycle -----------------------------------------------------------
    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"knotwork up exited with {self.proc.returncode}:\n{self.output()}")
            st = self.state()
            return bool(st["gateway"]["ready"] and st["instances"]
                        and all(i["ready"] for i in st["instances"] if i.get("expect_ready", True)))

        wait_for(ready, timeout, "every instance and the gateway to be ready", interval=0.2)
        wait_for(lambda: b"Ingress: http://" in self.log_path.read_bytes(), 10, "the ingress URL to be printed")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10) -> float:
        """Signal `up`, wait for it; return how long it took."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return time.monotonic() - started

    def kill_everything(self) -> None:
        """Last-resort cleanup so a failed test never leaks processes."""
        try:
            pids = self.pids()
        except (OSError, ValueError, KeyError):
            pids = []
        for pid in [self.proc.pid, *pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not self._log.closed:
            self._log.close()


@contextlib.contextmanager
def running_mesh(source: Path, tmp: Path, *args: str) -> Iterator[RunningMesh]:
    """A mesh started from `source` and ready; stopped as a user would on the way out, killed if that failed."""
    mesh = RunningMesh(source, tmp, *args)
    try:
        mesh.wait_ready()
        yield mesh
        mesh.stop()
    finally:
        mesh.kill_everything()
