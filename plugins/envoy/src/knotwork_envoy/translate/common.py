"""Small building blocks shared by the translators: durations, addresses,
config sources, typed configs and header values, in Envoy's proto-JSON form."""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "ADS",
    "TranslationError",
    "duration",
    "escape_format",
    "header_option",
    "socket_address",
    "stat_name",
    "typed",
]

#: Resources of every type come over the one ADS stream, xDS v3.
ADS: dict[str, Any] = {"ads": {}, "resource_api_version": "V3"}

_STAT_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class TranslationError(ValueError):
    """A compiled resource cannot be expressed as Envoy config; names the resource and field."""


def typed(type_name: str, **config: Any) -> dict[str, Any]:
    """A ``typed_config`` (an ``Any`` in proto-JSON) of the Envoy message `type_name`."""
    return {"@type": f"type.googleapis.com/{type_name}", **config}


def duration(seconds: float) -> str:
    """Seconds as a proto-JSON ``Duration`` (``"1.5s"``)."""
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text}s"


def socket_address(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def stat_name(name: str) -> str:
    """A stat prefix from a resource name (``inbound|9080`` → ``inbound_9080``)."""
    return _STAT_UNSAFE.sub("_", name) or "_"


def escape_format(text: str) -> str:
    """Literal text inside an Envoy substitution format string (``%`` doubled)."""
    return text.replace("%", "%%")


def header_option(key: str, value: str, action: str = "OVERWRITE_IF_EXISTS_OR_ADD") -> dict[str, Any]:
    """A ``HeaderValueOption``; `value` is a format string (escape literals first)."""
    return {"header": {"key": key, "value": value}, "append_action": action}
