"""The value expressions of Telemetry API ``tagOverrides`` (Istio writes them in CEL).

Knotwork understands the subset people write in practice, each compiled once
into a plain function ``(request, response) -> str``:

- a quoted literal: ``'canary'`` or ``"canary"``;
- ``request.host`` (the authority as received), ``request.method``,
  ``request.path`` (with the query), ``request.url_path`` (without),
  ``request.protocol`` (``HTTP/1.1``), ``request.headers['name']``;
- ``response.code``;
- any of them followed by ``| 'default'``: the default when the value is
  missing (Istio's ``request.headers['x'] | 'unknown'``).

A missing value is ``unknown``, as in Istio. On a TCP connection `request`
is None and every ``request.*`` is missing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["SUPPORTED", "Expression", "compile_expression"]

Expression = Callable[[Any, Any], str]
SUPPORTED = ("'literal'", "request.host", "request.method", "request.path", "request.url_path", "request.protocol",
             "request.headers['name']", "response.code", "EXPR | 'default'")
_LITERAL = re.compile(r"""^(?:'([^']*)'|"([^"]*)")$""")
_HEADER = re.compile(r"""^request\.headers\[\s*(?:'([^']+)'|"([^"]+)")\s*\]$""")
_UNKNOWN = "unknown"


def _request_attr(name: str) -> Callable[[Any, Any], str | None]:
    def get(request: Any, response: Any) -> str | None:
        return getattr(request, name, None) if request is not None else None
    return get


def _url_path(request: Any, response: Any) -> str | None:
    return request.path.partition("?")[0] if request is not None else None


def _code(request: Any, response: Any) -> str | None:
    status = getattr(response, "status", None)
    return str(status) if status is not None else None


_NAMED: dict[str, Callable[[Any, Any], str | None]] = {
    "request.host": _request_attr("authority"),
    "request.method": _request_attr("method"),
    "request.path": _request_attr("path"),
    "request.url_path": _url_path,
    "request.protocol": _request_attr("protocol"),
    "response.code": _code,
}


def _literal(text: str) -> str | None:
    m = _LITERAL.match(text)
    return None if m is None else (m.group(1) if m.group(1) is not None else m.group(2))


def compile_expression(text: str) -> Expression:
    """The function computing `text`'s value; ValueError naming the supported forms otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("expected an expression such as request.headers['x-tenant'] or 'literal'")
    body, bar, fallback_text = text.partition("|")
    body = body.strip()
    default = _UNKNOWN
    if bar:
        fallback = _literal(fallback_text.strip())
        if fallback is None:
            raise ValueError(f"{text!r}: after '|' expected a quoted default value such as 'unknown'")
        default = fallback
    literal = _literal(body)
    if literal is not None:
        return lambda request, response: literal
    header = _HEADER.match(body)
    if header is not None:
        name = (header.group(1) or header.group(2)).lower()

        def from_header(request: Any, response: Any) -> str:
            value = request.header(name) if request is not None else None
            return value if value else default
        return from_header
    getter = _NAMED.get(body)
    if getter is None:
        raise ValueError(f"{text!r}: unsupported expression; Knotwork understands {', '.join(SUPPORTED)}")

    def named(request: Any, response: Any) -> str:
        value = getter(request, response)
        return value if value else default
    return named
