"""Child processes that die with `up`, restart backoff and probes.

Every child gets its own process group (Ctrl-C in a terminal reaches only
`up`, which then stops things in order) and ``PR_SET_PDEATHSIG = SIGKILL``
(Linux), so even a SIGKILLed `up` leaves no orphan behind.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anyio
import attrs

from knotwork.control import admin_call

__all__ = ["Backoff", "describe_exit", "gateway_synced", "http_status", "signal_group", "spawn", "tcp_open"]

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent(parent: int) -> Callable[[], None]:
    """preexec_fn: SIGKILL this child when `parent` dies; exit if it already has."""

    def setup() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return setup


async def spawn(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_path: Path,
                truncate: bool = False) -> asyncio.subprocess.Process:
    """Start `argv` with stdout and stderr appended to `log_path` (truncated first if asked).

    Must be awaited from the thread that lives as long as `up` (the event loop
    thread): the parent-death signal follows the thread that forked.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
    fd = os.open(log_path, flags, 0o600)
    try:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT, cwd=str(cwd), env=dict(env),
            preexec_fn=_die_with_parent(os.getpid()), process_group=0, close_fds=True,
        )
    finally:
        os.close(fd)


def signal_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group led by `pid` (the child and what it started)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def describe_exit(returncode: int | None) -> str:
    """`exit code 1`, `killed by SIGKILL`, or `running`."""
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@attrs.define
class Backoff:
    """Restart delays: `initial`, doubling up to `maximum`; back to `initial`
    once a run lasted `reset_after` seconds."""

    initial: float = 0.5
    maximum: float = 10.0
    reset_after: float = 10.0
    factor: float = 2.0
    _current: float | None = None

    def next_delay(self, uptime: float) -> float:
        """The delay before the next start, given how long the last run lasted."""
        if self._current is None or uptime >= self.reset_after:
            self._current = self.initial
        delay = self._current
        self._current = min(self._current * self.factor, self.maximum)
        return delay


async def tcp_open(port: int, timeout: float = 1.0, host: str = "127.0.0.1") -> bool:
    """True when `host:port` accepts a TCP connection within `timeout`."""
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(host, port)
            await stream.aclose()
        return True
    except (OSError, TimeoutError):
        return False


async def http_status(port: int, path: str, timeout: float = 1.0, host: str = "127.0.0.1") -> int | None:
    """Status code of ``GET path`` on `host:port` (HTTP/1.1, Connection: close), None on failure."""
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: knotwork-local-probe\r\n"
               "Connection: close\r\n\r\n").encode()
    try:
        with anyio.fail_after(timeout):
            async with await anyio.connect_tcp(host, port) as stream:
                await stream.send(request)
                head = b""
                while b"\r\n" not in head and len(head) < 4096:
                    head += await stream.receive()
        parts = head.split(b" ", 2)
        return int(parts[1]) if parts[0].startswith(b"HTTP/") else None
    except (OSError, TimeoutError, ValueError, IndexError, anyio.EndOfStream, anyio.BrokenResourceError):
        return None


async def gateway_synced(state_dir: Path, generation: int, *, platform: str = "local",
                         node: str = "gateway~ingress") -> bool | None:
    """True when the control plane has seen `platform`'s snapshot `generation` and `node`
    acked its latest config; None when there is no control plane admin socket to ask."""
    try:
        with anyio.fail_after(1.0):
            status = await admin_call(state_dir, "status")
            proxies = await admin_call(state_dir, "proxy_status")
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - restarting, or busy: ask again
        return False
    if (status.get("sources") or {}).get(platform, {}).get("version", 0) < generation:
        return False
    row = next((r for r in proxies.get("proxies", ()) if r.get("node") == node), None)
    return bool(row and row.get("connected")) and all(
        t.get("latest") is None or t.get("acked") == t.get("latest") for t in row.get("types", {}).values())
