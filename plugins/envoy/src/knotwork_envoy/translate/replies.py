"""Proxy-generated replies: the same status, ``x-knotwork-response-flags``
header and (as closely as Envoy's formatters allow) the same body as the
native engine, through the HTTP connection manager's ``local_reply_config``.

Envoy prints combined flags in its own order (``UF,URX``); the native engine
puts ``URX`` first. The mappers are tried in order and the first match wins,
so the retry combinations come first and carry the native header literally.
Replies without a flag (direct responses, redirects) are left alone.
"""

from __future__ import annotations

from typing import Any

from knotwork.proxyconfig import Listener

from .common import escape_format, header_option

__all__ = ["FLAGS_HEADER", "local_reply_config"]

FLAGS_HEADER = "x-knotwork-response-flags"
_AT = "cluster %UPSTREAM_CLUSTER% endpoint %UPSTREAM_HOST%"
#: The body of a reply per flag, as the native engine words it (see README).
BODIES = {
    "UH": "no healthy upstream for cluster %UPSTREAM_CLUSTER%",
    "UF": f"upstream connect error to {_AT}: %UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "UT": f"upstream request timeout (%METADATA(ROUTE:knotwork:timeout)%) waiting for {_AT}",
    "UC": f"upstream connection to {_AT} closed before response headers",
}
_OTHER = "%LOCAL_REPLY_BODY% (cluster %UPSTREAM_CLUSTER%, flags %RESPONSE_FLAGS%)"


def _flags(*codes: str) -> dict[str, Any]:
    return {"response_flag_filter": {"flags": list(codes)}}


def _mapper(flt: dict[str, Any], header: str, body: str, status: int | None = None) -> dict[str, Any]:
    mapper: dict[str, Any] = {
        "filter": flt,
        "headers_to_add": [header_option(FLAGS_HEADER, header)],
        "body_format_override": {"text_format_source": {"inline_string": body + "\n"}},
    }
    if status is not None:
        mapper["status_code"] = status
    return mapper


def local_reply_config(listener: Listener) -> dict[str, Any]:
    """The ``LocalReplyConfig`` of an HTTP listener (the names in bodies are its own)."""
    where = escape_format(f"(listener {listener.name}, route table {listener.route_table})")
    if listener.mode == "http_proxy":
        no_route = _mapper(_flags("NR"), "NR", f"no route to host %REQ(:AUTHORITY)% {where}", 502)
    else:
        no_route = _mapper(_flags("NR"), "NR", f"no route for %REQ(:AUTHORITY)%%REQ(:PATH)% {where}")
    retried = [
        _mapper({"and_filter": {"filters": [_flags("URX"), _flags(code)]}}, f"URX,{code}", BODIES[code])
        for code in ("UF", "UC", "UT")
    ]
    single = [_mapper(_flags(code), code, BODIES[code]) for code in ("UH", "UF", "UT", "UC")]
    single.append(_mapper(_flags("FI"), "FI", "fault filter abort"))  # a fault abort, as the native engine says it
    other = _mapper({"response_flag_filter": {}}, "%RESPONSE_FLAGS%", _OTHER)
    mappers = [*retried, no_route, *single, other]
    if listener.mode != "http_proxy":  # CONNECT finds no route here: say why, as the native engine does
        mappers.insert(0, {
            "filter": {"header_filter": {"header": {"name": ":method", "string_match": {"exact": "CONNECT"}}}},
            "status_code": 405,
            "body_format_override": {"text_format_source": {"inline_string": escape_format(
                f"CONNECT is served only by http_proxy listeners, not by listener {listener.name}") + "\n"}},
        })
    return {"mappers": mappers}
