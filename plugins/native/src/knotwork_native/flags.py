"""Envoy response flags and the proxy's own (local) replies.

A proxy-generated response is never opaque: it says in a short text body
which cluster and endpoint failed and why, carries ``server: knotwork`` and
``x-knotwork-response-flags`` with Envoy's flag codes (``URX,UF``), so an
operator can read the failure from a curl output or an access log alike.
"""

from __future__ import annotations

from http import HTTPStatus

__all__ = [
    "DC",
    "DF",
    "DI",
    "DPE",
    "FI",
    "LR",
    "MEANINGS",
    "NC",
    "NONE",
    "NR",
    "UC",
    "UF",
    "UH",
    "UO",
    "UPE",
    "UR",
    "URX",
    "UT",
    "combine",
    "local_reply",
    "status_line",
]

NONE = "-"
NR = "NR"
NC = "NC"
DF = "DF"
UH = "UH"
UF = "UF"
UT = "UT"
URX = "URX"
UC = "UC"
UR = "UR"
UO = "UO"
UPE = "UPE"
DC = "DC"
DPE = "DPE"
LR = "LR"
DI = "DI"
FI = "FI"

#: Flag code → meaning, as in Envoy's access-log documentation.
MEANINGS: dict[str, str] = {
    NR: "no route configured for the request (404), or unknown host on the HTTP proxy (502)",
    NC: "the route names a cluster that is not configured (503)",
    DF: "the upstream's name did not resolve (DNS resolution failure, 503)",
    UH: "no healthy upstream host in the cluster (503)",
    UF: "upstream connection failure (503)",
    UT: "upstream request timeout (504)",
    URX: "upstream retry limit exceeded; combined with the last attempt's flag",
    UC: "upstream connection termination before a response (503)",
    UR: "upstream remote reset during the response",
    UO: "upstream overflow: circuit breaking (reserved)",
    UPE: "upstream protocol error: the upstream's response could not be parsed (502)",
    DC: "downstream connection termination before the response was complete",
    DPE: "downstream protocol error: the request could not be parsed (400)",
    LR: "connection local reset (reserved)",
    DI: "request delayed by fault injection",
    FI: "request aborted by fault injection",
}


def combine(*flags: str) -> str:
    """Join flags the way Envoy prints them (``URX,UF``), skipping empty ones."""
    return ",".join(f for f in flags if f and f != NONE) or NONE


_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()}


def status_line(status: int, reason: bytes = b"") -> bytes:
    """The pre-encoded ``HTTP/1.1 <status> <reason>\\r\\n`` line."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason or b"Unknown")
    return line


def local_reply(
    status: int, flags: str, body: str, *, close: bool = False, headers: bytes = b"", head_only: bool = False,
    exact: bytes | None = None,
) -> bytes:
    """Encode a complete proxy-generated response.

    `body` is a one-line explanation (a newline is added); `exact` replaces it
    byte for byte (direct responses). `headers` are extra pre-encoded header
    lines (``b"location: …\\r\\n"``); `flags` goes into
    ``x-knotwork-response-flags`` unless it is ``-``; `head_only` leaves the
    body out (responses to HEAD).
    """
    if exact is not None:
        payload = exact
    else:
        payload = (body + "\n").encode() if body else b""
    parts = [
        status_line(status),
        b"server: knotwork\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n" % len(payload),
    ]
    if flags and flags != NONE:
        parts.append(b"x-knotwork-response-flags: %s\r\n" % flags.encode())
    if headers:
        parts.append(headers)
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(payload)
    return b"".join(parts)
