"""Processes the benchmark starts, and what /proc says about them.

Every process is started with ``PR_SET_PDEATHSIG`` so it dies with the
benchmark even if the benchmark is killed; :meth:`Proc.stop` ends it politely
(SIGTERM, then SIGKILL after a budget). Only processes started here are ever
signalled, by their pid.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["CLK_TCK", "ChildProc", "Proc", "cpu_seconds", "free_port", "http_get", "machine_cpu", "memory", "wait_http", "wait_port"]

CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1
_handed_out: set[int] = set()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # noqa: BLE001 - best effort; Proc.stop still stops it
        pass


def free_port() -> int:
    """A free TCP port on 127.0.0.1, never the same twice in one run."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    data = Path(f"/proc/{pid}/stat").read_text()
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> dict[str, float]:
    """CPU seconds of the whole machine since boot (/proc/stat): busy in processes
    (user, nice, system: what /proc/PID/stat can account to someone), in interrupts
    (irq, softirq: loopback TCP is partly processed there), stolen by the hypervisor, total."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = f
    return {"busy": (user + nice + system) / CLK_TCK, "irq": (irq + softirq) / CLK_TCK, "steal": steal / CLK_TCK,
            "total": sum(f) / CLK_TCK}


def memory(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon (private) and RssFile of a process, in MB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


class Proc:
    """A long-running child process: a server, a proxy, Envoy."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, *, stdout: int | IO[Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name.replace('~', '-').replace('/', '-')}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=stdout if stdout is not None else self._log, stderr=self._log,
            preexec_fn=_die_with_parent, env=env, close_fds=True,
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check(self) -> None:
        """Raise if the process has exited, with the end of its log."""
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with status {self.popen.returncode}; log {self.log_path}:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def memory(self) -> dict[str, float]:
        return memory(self.pid)

    def stop(self, budget: float = 5.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + budget
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.alive():
                self.popen.kill()
            self.popen.wait()
        self._log.close()


class ChildProc:
    """A process the benchmark did not start but measures: Envoy, run by an envoy-engine
    agent (``knotwork proxy --engine envoy``) as its child. Read-only: never signalled
    here (the agent stops it, and it dies with the agent)."""

    def __init__(self, name: str, pid: int, parent: Proc) -> None:
        self.name = name
        self.pid = pid
        self.parent = parent
        self.log_path = parent.log_path  # the agent passes Envoy's output on to its own log

    def alive(self) -> bool:
        try:
            data = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        fields = data[data.rindex(")") + 2:].split()
        return fields[0] != "Z" and int(fields[1]) == self.parent.pid  # state, ppid: still the agent's child

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} (pid {self.pid}, child of {self.parent.name}) is gone: "
                               f"Envoy exited or was restarted; log {self.log_path}:\n{self.parent.tail()}")

    def tail(self, lines: int = 20) -> str:
        return self.parent.tail(lines)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def memory(self) -> dict[str, float]:
        return memory(self.pid)


async def http_get(port: int, path: str, *, host: str = "127.0.0.1", headers: dict[str, str] | None = None,
                   timeout: float = 2.0) -> tuple[int, bytes]:
    """A one-shot HTTP/1.1 GET (``connection: close``); returns status and body."""
    async def go() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            fields = {"host": f"{host}:{port}", **{k.lower(): v for k, v in (headers or {}).items()}, "connection": "close"}
            lines = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
            writer.write(f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode())
            data = await reader.read()
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if b"transfer-encoding: chunked" in head.lower():
            body = _dechunk(body)
        return status, body

    return await asyncio.wait_for(go(), timeout)


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(rest[:size])
        data = rest[size + 2:]
    return b"".join(out)


async def wait_http(proc: Proc, port: int, path: str, *, timeout: float = 30.0) -> float:
    """Poll ``GET path`` until it answers 200; return the seconds it took."""
    started = time.monotonic()
    while True:
        proc.check()
        try:
            status, _ = await http_get(port, path, timeout=1.0)
            if status == 200:
                return time.monotonic() - started
        except (OSError, asyncio.TimeoutError, ValueError, IndexError):
            pass
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{proc.name}: GET 127.0.0.1:{port}{path} not 200 after {timeout:.0f} s; log {proc.log_path}:\n{proc.tail()}")
        await asyncio.sleep(0.02)


async def wait_port(proc: Proc, port: int, *, timeout: float = 15.0) -> None:
    """Wait until 127.0.0.1:port accepts connections."""
    started = time.monotonic()
    while True:
        proc.check()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            pass
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{proc.name}: 127.0.0.1:{port} not accepting after {timeout:.0f} s; log {proc.log_path}:\n{proc.tail()}")
        await asyncio.sleep(0.02)
