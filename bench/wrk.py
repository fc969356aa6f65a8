"""Running wrk and reading its report."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import attrs

__all__ = ["WrkResult", "parse", "run_wrk", "wrk_path", "wrk_version"]

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@attrs.frozen
class WrkResult:
    rps: float
    requests: int
    seconds: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    errors: int  # socket errors (connect, read, write, timeout)
    non2xx: int


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(output: str) -> WrkResult:
    """Parse ``wrk --latency`` output."""
    pct = {int(p): _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.M)}
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", output, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if not (m and rps and len(pct) == 4):
        raise ValueError(f"unreadable wrk output:\n{output}")
    sock = re.search(r"Socket errors:(.*)$", output, re.M)
    errors = sum(int(n) for n in re.findall(r"\d+", sock.group(1))) if sock else 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return WrkResult(
        rps=float(rps.group(1)), requests=int(m.group(1)), seconds=_ms(m.group(2) + m.group(3)) / 1e3,
        p50_ms=pct[50], p75_ms=pct[75], p90_ms=pct[90], p99_ms=pct[99], errors=errors,
        non2xx=int(non2xx.group(1)) if non2xx else 0,
    )


def wrk_path() -> str | None:
    return shutil.which("wrk")


async def wrk_version() -> str:
    proc = await asyncio.create_subprocess_exec("wrk", "-v", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return out.decode(errors="replace").splitlines()[0].strip() if out else "?"


async def run_wrk(url: str, *, connections: int, duration: int, headers: dict[str, str] | None = None,
                  script: Path | None = None, timeout_s: int = 5) -> WrkResult:
    """``wrk -t1 -cN -dDs --latency URL``; raises on a wrk failure."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(duration))}s", "--latency", f"--timeout={timeout_s}s"]
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {err.decode(errors='replace')}")
    return parse(out.decode(errors="replace"))
