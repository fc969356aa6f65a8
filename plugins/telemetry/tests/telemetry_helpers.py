"""Builders for the telemetry plugin's tests: request/response/TCP views with the observability fields, listeners, scrapes."""

from __future__ import annotations

from typing import Any

import attrs
from knotwork.proxyconfig import Listener, Observability, PeerInfo
from knotwork.testing import FakeConnection, FakeRequest, FakeResponse, make_connection
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

PRODUCTPAGE_ID = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
REVIEWS_ID = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
PRODUCTPAGE = PeerInfo("productpage-v1", "default", "productpage", "v1", PRODUCTPAGE_ID)
REVIEWS = PeerInfo("reviews-v2", "default", "reviews", "v2", REVIEWS_ID)
REVIEWS_FQDN = "reviews.default.svc.cluster.local"
REVIEWS_CLUSTER = f"outbound|9080||{REVIEWS_FQDN}"
START = 1_795_657_350.123  # 2026-11-26T01:42:30.123Z


@attrs.define
class Request(FakeRequest):
    """A RequestView with the observability fields the kernel's FakeRequest lacks."""

    protocol: str = "HTTP/1.1"
    start_time: float = START
    trace_id: str | None = None


@attrs.define
class Response(FakeResponse):
    """A ResponseInfo with the observability fields."""

    upstream_peer: PeerInfo | None = None
    grpc_status: str = ""


@attrs.define
class Tcp:
    """A TcpInfo."""

    connection: FakeConnection = attrs.Factory(make_connection)
    start_time: float = START
    cluster: str | None = None
    upstream: str | None = None
    upstream_peer: PeerInfo | None = None
    flags: str = "-"
    bytes_received: int = 0
    bytes_sent: int = 0
    duration: float = 0.0


def request(method: str = "GET", path: str = "/reviews/0", authority: str = "reviews:9080",
            headers: dict[str, str] | None = None, peer_identity: str | None = None, **fields: Any) -> Request:
    return Request(method, path, authority, make_connection(peer_identity),
                   {k.lower(): v for k, v in (headers or {}).items()}, **fields)


def outbound_response(status: int = 200, **fields: Any) -> Response:
    fields.setdefault("cluster", REVIEWS_CLUSTER)
    fields.setdefault("upstream", "127.0.0.1:20001")
    fields.setdefault("upstream_peer", REVIEWS)
    return Response(status=status, **fields)


def outbound_listener(workload: PeerInfo = PRODUCTPAGE, **obs: Any) -> Listener:
    return Listener("http_proxy", "127.0.0.1", 15001, "http_proxy", route_table="outbound",
                    observability=Observability("source", workload, **obs))


def inbound_listener(workload: PeerInfo = REVIEWS, service: str = REVIEWS_FQDN, **obs: Any) -> Listener:
    return Listener("inbound|9080", "127.0.0.1", 15006, "inbound", route_table="inbound|9080",
                    observability=Observability("destination", workload, service=service, **obs))


def scrape(prefix: str = "knotwork_") -> dict[str, Any]:
    """Our families of the process registry, parsed back from the text format: name -> family."""
    text = generate_latest(REGISTRY).decode()
    return {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith(prefix)}


def samples(prefix: str = "knotwork_") -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in scrape(prefix).values() for s in f.samples]


def one(prefix: str, name: str, **labels: str) -> tuple[dict[str, str], float]:
    """The single sample of `name` whose labels include `labels`."""
    found = [(lbl, v) for n, lbl, v in samples(prefix) if n == name and labels.items() <= lbl.items()]
    assert len(found) == 1, found
    return found[0]
