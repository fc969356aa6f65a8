"""The `access-log` sink: one JSON line per request and per TCP connection, on stdout, with Envoy/Istio field names."""

from __future__ import annotations

import asyncio
import io
import json
import time

from knotwork.proxyconfig import PEER_HEADER, Listener
from knotwork.testing import make_connection
from telemetry_helpers import (
    PRODUCTPAGE, PRODUCTPAGE_ID, REVIEWS_CLUSTER, REVIEWS_FQDN, REVIEWS_ID, Response, Tcp, inbound_listener,
    outbound_listener, outbound_response, request,
)

from knotwork_telemetry.accesslog import AccessLogSink, rfc3339_ms


def lines(capsys) -> list[dict]:
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines()]


def test_a_request_is_one_json_line_on_stdout(capsys):
    sink = AccessLogSink(outbound_listener(), None)
    sink.request_finished(
        request(headers={"x-request-id": "7f1c", "user-agent": "curl/8", "x-forwarded-for": "10.0.0.9"},
                trace_id="4bf92f3577b34da6a3ce929d0e0e4736"),
        outbound_response(bytes_received=12, bytes_sent=295, duration=0.0042))
    (line,) = lines(capsys)
    assert line == {
        "log_type": "access", "reporter": "source", "listener": "http_proxy",
        "start_time": "2026-11-26T01:42:30.123Z",
        "method": "GET", "path": "/reviews/0", "protocol": "HTTP/1.1", "response_code": 200, "grpc_status": None,
        "response_flags": "-", "bytes_received": 12, "bytes_sent": 295, "duration": 4,
        "upstream_host": "127.0.0.1:20001", "upstream_cluster": REVIEWS_CLUSTER, "x_request_id": "7f1c",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "authority": "reviews:9080", "user_agent": "curl/8",
        "x_forwarded_for": "10.0.0.9", "downstream_remote_address": "127.0.0.1:40000",
        "downstream_peer": None, "upstream_peer": REVIEWS_ID,
        "source_workload": "productpage-v1", "source_namespace": "default", "source_principal": PRODUCTPAGE_ID,
        "destination_workload": "reviews-v2", "destination_namespace": "default", "destination_principal": REVIEWS_ID,
        "destination_service": REVIEWS_FQDN,
    }


def test_the_server_side_names_its_caller_as_the_metrics_do(capsys):
    sink = AccessLogSink(inbound_listener())
    sink.request_finished(request(headers={PEER_HEADER: PRODUCTPAGE.header()}, peer_identity=PRODUCTPAGE_ID),
                          Response(503, flags="UF", cluster="inbound|9080||", upstream="127.0.0.1:9080",
                                   grpc_status="14"))
    sink.request_finished(request(headers={PEER_HEADER: PRODUCTPAGE.header()}, peer_identity="spiffe://x/ns/shop/sa/a"),
                          Response(200, cluster="inbound|9080||"))
    good, forged = lines(capsys)
    assert (good["reporter"], good["downstream_peer"], good["source_workload"], good["source_principal"],
            good["destination_workload"], good["destination_service"], good["response_flags"], good["grpc_status"],
            good["upstream_peer"]) == \
        ("destination", PRODUCTPAGE_ID, "productpage-v1", PRODUCTPAGE_ID, "reviews-v2", REVIEWS_FQDN, "UF", "14", None)
    assert (forged["source_workload"], forged["source_namespace"], forged["source_principal"]) == \
        ("unknown", "shop", "spiffe://x/ns/shop/sa/a")


def test_a_tcp_connection_is_one_line_at_close(capsys):
    listener = Listener("outbound|tcp|mongo", "127.0.0.1", 27017, "outbound", protocol="tcp",
                        cluster="outbound|27017||mongo.default.svc.cluster.local",
                        observability=outbound_listener().observability)
    sink = AccessLogSink(listener)
    info = Tcp(connection=make_connection(), cluster="outbound|27017||mongo.default.svc.cluster.local",
               upstream="127.0.0.1:27018", flags="-", start_time=1_795_657_350.5)
    sink.tcp_opened(info)
    assert capsys.readouterr().out == ""
    info.bytes_received, info.bytes_sent, info.duration = 120, 4096, 1.25
    sink.tcp_closed(info)
    (line,) = lines(capsys)
    assert line == {
        "log_type": "access", "reporter": "source", "listener": "outbound|tcp|mongo",
        "start_time": "2026-11-26T01:42:30.500Z", "protocol": "tcp", "response_flags": "-",
        "bytes_received": 120, "bytes_sent": 4096, "duration": 1250, "upstream_host": "127.0.0.1:27018",
        "upstream_cluster": "outbound|27017||mongo.default.svc.cluster.local",
        "downstream_remote_address": "127.0.0.1:40000", "downstream_peer": None, "upstream_peer": None,
        "source_workload": "productpage-v1", "source_namespace": "default", "source_principal": PRODUCTPAGE_ID,
        "destination_workload": "unknown", "destination_namespace": "unknown", "destination_principal": "unknown",
        "destination_service": "mongo.default.svc.cluster.local",
    }


def test_listeners_with_access_logging_off_write_nothing(capsys):
    for listener in (Listener("x", "127.0.0.1", 1, "outbound"), outbound_listener(access_log=False)):
        sink = AccessLogSink(listener)
        sink.request_finished(request(), outbound_response())
        sink.tcp_closed(Tcp())
    assert capsys.readouterr().out == ""


def test_start_time_is_rfc3339_utc_with_milliseconds():
    assert rfc3339_ms(1_795_657_350.123) == "2026-11-26T01:42:30.123Z"
    assert rfc3339_ms(1_795_657_350.9999) == "2026-11-26T01:42:30.999Z"
    assert rfc3339_ms(0.0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_ms(1_795_657_351.0) == "2026-11-26T01:42:31.000Z"


def test_lines_of_one_kind_of_request_keep_their_own_fields(capsys):
    """The fixed parts of lines are cached by what they depend on: a new peer, status or path shows at once."""
    sink = AccessLogSink(outbound_listener())
    sink.request_finished(request(), outbound_response())
    sink.request_finished(request(path="/reviews/1"), outbound_response(503, flags="UF", upstream_peer=None))
    sink.request_finished(request(), outbound_response())
    first, second, third = lines(capsys)
    assert (first["path"], first["response_code"], first["response_flags"], first["upstream_peer"],
            first["destination_workload"]) == ("/reviews/0", 200, "-", REVIEWS_ID, "reviews-v2")
    assert (second["path"], second["response_code"], second["response_flags"], second["upstream_peer"],
            second["destination_workload"]) == ("/reviews/1", 503, "UF", None, "unknown")
    assert third == first


def test_in_a_running_loop_lines_are_written_together_soon_whole_and_in_order():
    out = io.StringIO()
    sink = AccessLogSink(outbound_listener(), file=out)

    async def serve() -> str:
        for i in range(3):
            sink.request_finished(request(path=f"/reviews/{i}"), outbound_response())
        assert out.getvalue() == ""  # queued: one write for the three
        deadline = time.monotonic() + 5
        while out.getvalue().count("\n") < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return out.getvalue()

    text = asyncio.run(serve())
    assert [json.loads(line)["path"] for line in text.splitlines()] == ["/reviews/0", "/reviews/1", "/reviews/2"]
