"""Where a proxy's CPU goes under load: py-spy per Python function, perf per binary.

- ``py-spy record --format raw --function --nonblocking``: collapsed stacks
  (``frame;frame;… count``, a frame being ``function (file:line)``), summed per
  ``file:function``. *Self* is the leaf frame, *total* includes callees. py-spy
  samples wall-clock time of a non-idle thread, and C calls count as the calling
  Python function's: a ``transport.write()`` (uvloop writes at once) is the
  caller's self time, ``asyncio/runners.py:Runner.run`` as leaf is uvloop itself.
  On a busy machine a thread preempted in a syscall is still sampled there, so
  syscalls look bigger than their CPU share.
- ``--native`` (py-spy unwinds C frames; it pauses the process per sample):
  samples whose leaf is a libc syscall wrapper are set apart, the others are
  charged to their innermost Python frame: the Python-level split of the CPU.
- ``perf record -e cpu-clock`` (if perf is installed): on-CPU samples per binary
  (kernel, libpython, httptools, uvloop, libc): what the interpreter costs
  against the kernel's socket work, in µs per request.
"""

from __future__ import annotations

import asyncio
import collections
import re
import shutil
import sys
from pathlib import Path
from typing import Any

__all__ = ["perf_dso", "perf_path", "pyspy_path", "record", "summarize", "summarize_native"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_SYSCALLS = frozenset({"write", "writev", "send", "sendmsg", "read", "readv", "recv", "recvmsg", "epoll_pwait", "epoll_wait"})


def pyspy_path() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def perf_path() -> str | None:
    return shutil.which("perf")


async def record(pid: int, seconds: int, out: Path, *, native: bool = False, rate: int = 200) -> tuple[int, str]:
    """py-spy-sample `pid` for `seconds`; returns py-spy's exit status and stderr."""
    argv = [pyspy_path() or "py-spy", "record", "--pid", str(pid), "--duration", str(max(1, seconds)),
            "--rate", str(rate), "--format", "raw", "--function", "--output", str(out)]
    # --native pauses the process to unwind C frames; otherwise sample without stopping it
    argv.append("--native" if native else "--nonblocking")
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await proc.communicate()
    return proc.returncode or 0, (stderr or stdout).decode(errors="replace")


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/src/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{m.group('func')}"


def _stacks(raw: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if frames:
            out.append((frames, int(count)))
    return out


def summarize(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and total shares (% of samples) per ``file:function``, highest first."""
    self_n: collections.Counter[str] = collections.Counter()
    total_n: collections.Counter[str] = collections.Counter()
    samples = 0
    for frames, n in _stacks(raw):
        samples += n
        short = [_short(f) for f in frames]
        self_n[short[-1]] += n
        for f in set(short):
            total_n[f] += n
    if not samples:
        return {"samples": 0, "self": [], "total": []}
    return {
        "samples": samples,
        "self": [(f, round(100.0 * c / samples, 1)) for f, c in self_n.most_common(top)],
        "total": [(f, round(100.0 * c / samples, 1)) for f, c in total_n.most_common(top)],
    }


def summarize_native(raw: Path, top: int = 25) -> dict[str, Any]:
    """From ``--native`` stacks: the share of syscall leaves, and the other samples
    by innermost Python frame (% of the non-syscall samples)."""
    syscalls: collections.Counter[str] = collections.Counter()
    inner: collections.Counter[str] = collections.Counter()
    samples = 0
    for frames, n in _stacks(raw):
        samples += n
        leaf = _short(frames[-1])
        lib, _, func = leaf.partition(":")
        if lib.startswith("libc") and func in _SYSCALLS:
            syscalls[func] += n
            continue
        py = [_short(f) for f in frames if ".py" in f]
        inner[py[-1] if py else leaf] += n
    rest = samples - sum(syscalls.values())
    return {
        "samples": samples,
        "syscall_leaf_pct": {k: round(100.0 * v / samples, 1) for k, v in syscalls.most_common()} if samples else {},
        "python_inner": [(f, round(100.0 * c / rest, 1)) for f, c in inner.most_common(top)] if rest else [],
    }


async def perf_dso(pid: int, seconds: int, out: Path) -> dict[str, float]:
    """On-CPU samples of `pid` per binary (%), from ``perf record -e cpu-clock``; {} if perf fails."""
    perf = perf_path()
    if perf is None:
        return {}
    rec = await asyncio.create_subprocess_exec(
        perf, "record", "-e", "cpu-clock", "-F", "1000", "-p", str(pid), "-o", str(out), "--", "sleep", str(seconds),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    if await rec.wait() != 0 or not out.exists():
        return {}
    rep = await asyncio.create_subprocess_exec(
        perf, "report", "-i", str(out), "--no-children", "--sort", "dso", "--stdio",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    text, _ = await rep.communicate()
    shares: dict[str, float] = {}
    for line in text.decode(errors="replace").splitlines():
        m = re.match(r"^\s+([\d.]+)%\s+(\S.*?)\s*$", line)
        if m:
            name = m.group(2)
            name = re.sub(r"\.cpython-\d+.*\.so$", "", name)
            shares[name] = float(m.group(1))
    return shares
