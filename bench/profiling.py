"""Where a proxy's CPU goes: py-spy samples under load, summed per function.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;… count``,
a frame being ``function (file:line)``). Self time is what a function spent
itself (the leaf frame); total time includes what it called. Samples whose leaf
is the event loop's ``run_forever``/``run`` frame are time inside uvloop and
the kernel (epoll, socket reads and writes), which py-spy cannot see into
without ``--native``.
"""

from __future__ import annotations

import asyncio
import collections
import re
import shutil
import sys
from pathlib import Path

__all__ = ["pyspy_path", "record", "summarize"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def pyspy_path() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, out: Path, *, native: bool = False, rate: int = 200) -> tuple[int, str]:
    """Sample `pid` for `seconds`; returns py-spy's exit status and stderr."""
    argv = [pyspy_path() or "py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
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


def summarize(raw: Path, top: int = 25) -> dict:
    """Self and total shares (% of samples) per ``file:function``, highest first."""
    self_n: collections.Counter[str] = collections.Counter()
    total_n: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        self_n[frames[-1]] += n
        for f in set(frames):
            total_n[f] += n
    if not samples:
        return {"samples": 0, "self": [], "total": []}
    pct = lambda c: round(100.0 * c / samples, 1)  # noqa: E731
    return {
        "samples": samples,
        "self": [(f, pct(c)) for f, c in self_n.most_common(top)],
        "total": [(f, pct(c)) for f, c in total_n.most_common(top)],
    }
