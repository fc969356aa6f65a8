"""Typed readers for the plain mappings users write; errors name the resource and field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from knotwork import Resource

from .durations import parse_duration
from .errors import ResourceError

__all__ = ["as_duration", "as_int", "as_list", "as_mapping"]


def as_list(res: Resource, value: Any, where: str) -> list[Any]:
    """`value` as a list; absent is empty."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ResourceError(res, where, "expected a list")
    return value


def as_mapping(res: Resource, value: Any, where: str) -> Mapping[str, Any]:
    """`value` as a mapping; absent is empty."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ResourceError(res, where, "expected a mapping")
    return value


def as_int(res: Resource, value: Any, where: str) -> int:
    """`value` as an integer (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ResourceError(res, where, f"expected an integer, got {value!r}")
    return value


def as_duration(res: Resource, value: Any, where: str) -> float | None:
    """An Istio duration string as seconds; absent is None."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ResourceError(res, where, str(exc)) from None
