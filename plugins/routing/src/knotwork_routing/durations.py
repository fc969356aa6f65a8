"""Istio duration strings (`"0.5s"`, `"3s"`, `"1m"`, `"1h30m"`, `"250ms"`) as seconds.

Istio reads durations with Go's ``time.ParseDuration`` rules: one or more
decimal numbers, each with a unit (``ns``, ``us``/``µs``, ``ms``, ``s``,
``m``, ``h``). A bare number has no unit and is refused, as Istio does.
"""

from __future__ import annotations

import re

__all__ = ["parse_duration"]

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: object) -> float:
    """Seconds in an Istio duration string; raises ValueError saying what is wrong.

    >>> parse_duration("1m30s")
    90.0
    """
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as '3s', got {value!r}")
    text = value.strip()
    if not text:
        raise ValueError("expected a duration such as '3s', got an empty string")
    total, pos = 0.0, 0
    while pos < len(text):
        part = _PART.match(text, pos)
        if part is None:
            raise ValueError(f"expected a duration such as '3s' or '1m30s', got {value!r}")
        total += float(part.group(1)) * _UNITS[part.group(2)]
        pos = part.end()
    return round(total, 9)
