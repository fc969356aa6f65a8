"""The per-request interfaces proxy engines call.

When a proxy receives a config, its engine builds, once, plain objects from
the :class:`~knotwork.records.Strategy` factories: a router per route table, a
balancer per cluster, authenticators, authorizers and telemetry sinks per
listener. Per request the engine calls their methods directly — never a hook.
Methods marked *may be async* may return an awaitable; engines await it.
Keep them cheap: no attrs objects, regexes or logging per request unless the
config asks for them.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .proxyconfig import LbEndpoint, PeerInfo, Route

__all__ = [
    "Authenticator",
    "Authorizer",
    "Balancer",
    "ConnectionView",
    "Decision",
    "Releasing",
    "RequestView",
    "ResponseInfo",
    "Router",
    "TcpInfo",
    "TelemetrySink",
]


class ConnectionView(Protocol):
    """One downstream connection, as the strategies may see it."""

    peer_address: tuple[str, int]
    local_address: tuple[str, int]
    peer_identity: str | None  # the SPIFFE ID proven by mTLS, else None
    tls: bool


class RequestView(Protocol):
    """One HTTP request, as the strategies may see it (read-only but `principal`)."""

    method: str
    path: str  # path and query, as received
    authority: str  # Host / :authority, lower-case, port kept
    connection: ConnectionView
    principal: str | None  # set by authenticators
    source_labels: dict[str, str]  # labels of the calling workload (outbound)
    protocol: str  # "HTTP/1.1", "HTTP/1.0", "HTTP/2", …
    start_time: float  # wall clock (time.time()) when the request headers were read
    trace_id: str | None  # 32 hex digits when the request is part of a trace, else None

    def header(self, name: str) -> str | None:
        """The first value of a header (name lower-case), or None."""


class ResponseInfo(Protocol):
    """How a request ended, for telemetry sinks."""

    status: int
    flags: str  # Envoy response flags, "-" when none
    upstream: str | None  # "address:port" of the chosen endpoint
    cluster: str | None
    bytes_received: int
    bytes_sent: int
    duration: float  # seconds
    upstream_peer: PeerInfo | None  # the chosen endpoint's workload (outbound), else None
    grpc_status: str  # the response's grpc-status, "" when none


class TcpInfo(Protocol):
    """One proxied TCP connection (a tcp listener's), for telemetry sinks."""

    connection: ConnectionView
    start_time: float  # wall clock when it was accepted
    cluster: str | None
    upstream: str | None  # "address:port"
    upstream_peer: PeerInfo | None
    flags: str
    bytes_received: int  # from the downstream so far
    bytes_sent: int  # to the downstream so far
    duration: float  # seconds, at close


@runtime_checkable
class Router(Protocol):
    """Matches requests against one compiled route table."""

    def match(self, request: RequestView) -> Route | None:
        """Return the first matching route, or None (the engine answers 404, flag NR)."""


@runtime_checkable
class Balancer(Protocol):
    """Picks an endpoint of one cluster; updated when its endpoints change."""

    def update(self, endpoints: Sequence[LbEndpoint]) -> None:
        """Replace the endpoint set (healthy and unhealthy)."""

    def pick(self, request: RequestView | None, exclude: Sequence[LbEndpoint] = ()) -> LbEndpoint | None:
        """Return a healthy endpoint not in `exclude`, or None (flag UH)."""


@runtime_checkable
class Releasing(Protocol):
    """Optional ability of a balancer that tracks load (least request)."""

    def release(self, endpoint: LbEndpoint) -> None:
        """Called once per picked endpoint when that request or attempt ends."""


class Decision(enum.Enum):
    """An authorizer's verdict. Across a chain, any DENY wins."""

    ALLOW = "allow"
    DENY = "deny"
    ABSTAIN = "abstain"


@runtime_checkable
class Authenticator(Protocol):
    """Establishes who made a request (peer certificate, JWT, …)."""

    def authenticate(self, request: RequestView) -> str | None | Awaitable[str | None]:
        """Return the principal, or None when this method does not apply.

        May be async. Raise PermissionError to reject the request (401).
        """


@runtime_checkable
class Authorizer(Protocol):
    """Decides whether an (authenticated) request may proceed."""

    def authorize(self, request: RequestView) -> Decision | Awaitable[Decision]:
        """Return ALLOW, DENY or ABSTAIN. May be async. Any DENY wins (403)."""


@runtime_checkable
class TelemetrySink(Protocol):
    """Sees every request on a listener: metrics, traces, access logs."""

    def request_finished(self, request: RequestView, response: ResponseInfo) -> None:
        """Called when the response is done or failed. Must not block."""

    # Optional (engines look them up once, at build time, and skip sinks without them):
    #   request_started(request: RequestView) -> None   when the request headers are read
    # and, for tcp listeners:
    #   tcp_opened(info: TcpInfo) -> None   when the upstream connection is established
    #   tcp_closed(info: TcpInfo) -> None   when both sides are closed, with final byte counts
    #                                       (also after a failed connect, with no tcp_opened before it)
    # On the Envoy engine, sinks that declare engine "envoy" run in the agent, fed
    # from Envoy's access-log stream (see docs/observability.md).
