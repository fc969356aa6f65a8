"""The `metrics` sink: Istio's labels on both reporters, the peer header's principal check, namings,
exact buckets, tag overrides, TCP, and the exposition a scrape reads."""

from __future__ import annotations

import pytest
from knotwork.proxyconfig import PEER_HEADER, Listener, Observability, PeerInfo, TagOverride
from prometheus_client import REGISTRY, generate_latest
from telemetry_helpers import (
    PRODUCTPAGE, PRODUCTPAGE_ID, REVIEWS_FQDN, REVIEWS_ID, Response, Tcp, inbound_listener,
    one, outbound_listener, outbound_response, request, samples, scrape,
)

from knotwork.testing import make_connection
from knotwork_telemetry.metrics import HTTP_LABELS, TCP_LABELS, MetricsSink
from knotwork_telemetry.naming import ENVOY_DEFAULT_BUCKETS
from knotwork_telemetry.store import store

ENVOY_LE = ["0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000", "30000",
            "60000", "300000", "600000", "1800000", "3600000", "+Inf"]


def count_labels(prefix: str = "knotwork_") -> list[dict[str, str]]:
    return [labels for name, labels, _ in samples(prefix) if name == f"{prefix}requests_total"]


# ── labels, source reporter ─────────────────────────────────────────────────


def test_source_reporter_labels_are_istios():
    sink = MetricsSink(outbound_listener())
    sink.request_finished(request(), outbound_response(bytes_sent=295, duration=0.0042))
    (labels,) = count_labels()
    assert labels == {
        "reporter": "source",
        "source_workload": "productpage-v1", "source_workload_namespace": "default", "source_principal": PRODUCTPAGE_ID,
        "source_app": "productpage", "source_version": "v1",
        "source_canonical_service": "productpage", "source_canonical_revision": "v1",
        "destination_workload": "reviews-v2", "destination_workload_namespace": "default",
        "destination_principal": REVIEWS_ID, "destination_app": "reviews", "destination_version": "v2",
        "destination_service": REVIEWS_FQDN, "destination_service_name": "reviews",
        "destination_service_namespace": "default",
        "destination_canonical_service": "reviews", "destination_canonical_revision": "v2",
        "request_protocol": "http", "response_code": "200", "grpc_response_status": "", "response_flags": "-",
        "connection_security_policy": "unknown",
    }
    assert list(labels) == sorted(HTTP_LABELS)  # every standard label, no other


def test_a_request_without_cluster_is_named_by_its_host_and_a_catch_all_cluster_by_name():
    sink = MetricsSink(outbound_listener())
    sink.request_finished(request(authority="nowhere.example:8080"),
                          Response(404, flags="NR", cluster=None, upstream=None))
    sink.request_finished(request(authority="api.example.com"),
                          Response(200, cluster="PassthroughCluster", upstream="93.184.216.34:80"))
    by_host = {lbl["destination_service"]: lbl for lbl in count_labels()}
    nr = by_host["nowhere.example"]
    assert (nr["destination_service_name"], nr["destination_service_namespace"], nr["destination_workload"],
            nr["response_flags"], nr["response_code"]) == ("unknown", "unknown", "unknown", "NR", "404")
    passthrough = by_host["api.example.com"]
    assert (passthrough["destination_service_name"], passthrough["destination_service_namespace"]) == \
        ("PassthroughCluster", "unknown")


def test_a_service_entry_host_keeps_its_fqdn_as_name():
    sink = MetricsSink(outbound_listener())
    sink.request_finished(request(authority="api.example.com"),
                          Response(200, cluster="outbound|443||api.example.com", upstream_peer=None))
    (labels,) = count_labels()
    assert (labels["destination_service"], labels["destination_service_name"],
            labels["destination_service_namespace"], labels["destination_canonical_revision"]) == \
        ("api.example.com", "api.example.com", "unknown", "latest")


def test_grpc_requests_report_protocol_and_status():
    sink = MetricsSink(outbound_listener())
    sink.request_finished(request("POST", "/hello.Greeter/SayHello", headers={"content-type": "application/grpc+proto"}),
                          outbound_response(grpc_status="14"))
    (labels,) = count_labels()
    assert (labels["request_protocol"], labels["grpc_response_status"]) == ("grpc", "14")


# ── labels, destination reporter: the peer header and mTLS ──────────────────


def test_destination_reporter_believes_the_peer_header_its_mtls_identity_proves():
    sink = MetricsSink(inbound_listener())
    sink.request_finished(request(headers={PEER_HEADER: PRODUCTPAGE.header()}, peer_identity=PRODUCTPAGE_ID),
                          Response(200, cluster="inbound|9080||", upstream="127.0.0.1:9080"))
    (labels,) = count_labels()
    assert {k: v for k, v in labels.items() if k.startswith("source_")} == {
        "source_workload": "productpage-v1", "source_workload_namespace": "default", "source_principal": PRODUCTPAGE_ID,
        "source_app": "productpage", "source_version": "v1",
        "source_canonical_service": "productpage", "source_canonical_revision": "v1",
    }
    assert (labels["reporter"], labels["destination_workload"], labels["destination_principal"],
            labels["destination_service"], labels["destination_service_name"], labels["connection_security_policy"]) \
        == ("destination", "reviews-v2", REVIEWS_ID, REVIEWS_FQDN, "reviews", "mutual_tls")


def test_a_peer_header_claiming_another_principal_is_not_believed():
    forged = PeerInfo("ratings-v1", "default", "ratings", "v1", "spiffe://cluster.local/ns/default/sa/bookinfo-ratings")
    sink = MetricsSink(inbound_listener())
    sink.request_finished(request(headers={PEER_HEADER: forged.header()},
                                  peer_identity="spiffe://cluster.local/ns/shop/sa/cart"), Response(200))
    (labels,) = count_labels()
    assert (labels["source_workload"], labels["source_app"], labels["source_workload_namespace"],
            labels["source_principal"]) == ("unknown", "unknown", "shop", "spiffe://cluster.local/ns/shop/sa/cart")


def test_without_mtls_the_header_is_taken_but_not_its_principal():
    sink = MetricsSink(inbound_listener())
    sink.request_finished(request(headers={PEER_HEADER: PRODUCTPAGE.header()}), Response(200))
    sink.request_finished(request(), Response(503, flags="UF"))
    sink.request_finished(request(headers={PEER_HEADER: "workload=x;bogus"}), Response(200))
    by_code = {}
    for lbl in count_labels():
        by_code.setdefault(lbl["response_code"], []).append(lbl)
    (with_header, malformed) = sorted(by_code["200"], key=lambda lbl: lbl["source_workload"])
    assert (malformed["source_workload"], with_header["source_workload"]) == ("unknown", "productpage-v1")
    assert with_header["source_principal"] == "unknown" and with_header["connection_security_policy"] == "none"
    (no_header,) = by_code["503"]
    assert {no_header[k] for k in HTTP_LABELS if k.startswith("source_") and k != "source_canonical_revision"} == {"unknown"}
    assert no_header["source_canonical_revision"] == "latest" and no_header["response_flags"] == "UF"


def test_same_labels_share_one_series():
    sink = MetricsSink(outbound_listener())
    for _ in range(3):
        sink.request_finished(request(), outbound_response())
    MetricsSink(outbound_listener()).request_finished(request(), outbound_response())  # a rebuilt listener's sink
    assert one("knotwork_", "knotwork_requests_total")[1] == 4


# ── namings and buckets ─────────────────────────────────────────────────────


def test_istio_naming_has_istios_names_milliseconds_and_envoys_buckets():
    sink = MetricsSink(outbound_listener(naming="istio"))
    sink.request_finished(request(), outbound_response(duration=0.005, bytes_received=0, bytes_sent=1000))
    sink.request_finished(request(), outbound_response(duration=0.0051, bytes_received=3, bytes_sent=7000))
    families = scrape("istio_")
    assert set(families) == {"istio_requests", "istio_request_duration_milliseconds", "istio_request_bytes",
                             "istio_response_bytes"}
    assert families["istio_requests"].type == "counter"
    text = generate_latest(REGISTRY).decode()
    assert "istio_requests_total{" in text
    for name in ("istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"):
        assert families[name].type == "histogram"
        les = [s.labels["le"] for s in families[name].samples if s.name == f"{name}_bucket"]
        assert les == ENVOY_LE, name  # written as Envoy writes them
    def buckets(name):
        return {s.labels["le"]: s.value for s in families[name].samples if s.name == f"{name}_bucket"}
    duration = buckets("istio_request_duration_milliseconds")
    assert (duration["1"], duration["5"], duration["10"], duration["+Inf"]) == (0, 1, 2, 2)  # 5 ms is in le=5
    sent = buckets("istio_response_bytes")
    assert (sent["500"], sent["1000"], sent["5000"], sent["10000"]) == (0, 1, 1, 2)
    received = buckets("istio_request_bytes")
    assert (received["0.5"], received["5"]) == (1, 2)
    (dsum,) = [s.value for s in families["istio_request_duration_milliseconds"].samples if s.name.endswith("_sum")]
    assert dsum == pytest.approx(10.1)


def test_knotwork_naming_uses_seconds_and_bytes():
    sink = MetricsSink(outbound_listener())
    sink.request_finished(request(), outbound_response(duration=0.0042, bytes_sent=295))
    families = scrape()
    assert set(families) == {"knotwork_requests", "knotwork_request_duration_seconds", "knotwork_request_bytes",
                             "knotwork_response_bytes"}
    bounds = [float(s.labels["le"]) for s in families["knotwork_request_duration_seconds"].samples
              if s.name.endswith("_bucket")]
    assert bounds == [b / 1000 for b in ENVOY_DEFAULT_BUCKETS] + [float("inf")]
    sizes = [float(s.labels["le"]) for s in families["knotwork_response_bytes"].samples if s.name.endswith("_bucket")]
    assert sizes == [10.0 ** i for i in range(9)] + [float("inf")]
    le = {float(s.labels["le"]): s.value for s in families["knotwork_request_duration_seconds"].samples
          if s.name.endswith("_bucket")}
    assert (le[0.001], le[0.005]) == (0, 1)


def test_an_unknown_naming_or_reporter_is_refused():
    with pytest.raises(ValueError, match="naming"):
        MetricsSink(outbound_listener(naming="statsd"))
    with pytest.raises(ValueError, match="reporter"):
        MetricsSink(Listener("x", "127.0.0.1", 1, "outbound", observability=Observability("client", PRODUCTPAGE)))


# ── tag overrides ───────────────────────────────────────────────────────────


def test_tag_overrides_remove_upsert_and_add_labels():
    overrides = (
        TagOverride("ALL_METRICS", "source_principal", remove=True),
        TagOverride("REQUEST_COUNT", "destination_version", value="'canary'"),
        TagOverride("REQUEST_COUNT", "tenant", value="request.headers['x-tenant'] | 'none'"),
        TagOverride("REQUEST_COUNT", "method", value="request.method", mode="CLIENT"),
        TagOverride("REQUEST_COUNT", "path", value="request.url_path", mode="SERVER"),  # not this reporter
    )
    sink = MetricsSink(outbound_listener(tag_overrides=overrides))
    sink.request_finished(request(headers={"x-tenant": "acme"}), outbound_response())
    sink.request_finished(request("POST"), outbound_response())
    counts = sorted(count_labels(), key=lambda lbl: lbl["method"])
    assert [(c["tenant"], c["method"], c["destination_version"]) for c in counts] == \
        [("acme", "GET", "canary"), ("none", "POST", "canary")]
    assert all("source_principal" not in c and "path" not in c for c in counts)
    durations = [lbl for n, lbl, _ in samples() if n == "knotwork_request_duration_seconds_count"]
    assert len(durations) == 1  # request-count-only labels do not split the other metrics
    assert "source_principal" not in durations[0] and durations[0]["destination_version"] == "v2"


def test_a_disabled_metric_is_not_exported():
    sink = MetricsSink(outbound_listener(disabled_metrics=("REQUEST_SIZE",)))
    sink.request_finished(request(), outbound_response())
    assert "knotwork_request_bytes" not in scrape() and "knotwork_requests" in scrape()


def test_listeners_without_observability_or_metrics_do_nothing():
    for listener in (Listener("x", "127.0.0.1", 1, "outbound"), outbound_listener(metrics=False)):
        sink = MetricsSink(listener, None)
        sink.request_finished(request(), outbound_response())
        sink.tcp_opened(Tcp())
        sink.tcp_closed(Tcp())
    assert samples() == []


# ── TCP ─────────────────────────────────────────────────────────────────────


def test_tcp_connections_are_counted_on_both_reporters():
    client = MetricsSink(Listener("outbound|tcp|mongo", "127.0.0.1", 27017, "outbound", protocol="tcp",
                                  cluster="outbound|27017||mongo.default.svc.cluster.local",
                                  observability=Observability("source", PRODUCTPAGE)))
    mongo = PeerInfo("mongo-v1", "default", "mongo", "unknown", "spiffe://cluster.local/ns/default/sa/mongo")
    info = Tcp(cluster="outbound|27017||mongo.default.svc.cluster.local", upstream_peer=mongo)
    client.tcp_opened(info)
    info.bytes_received, info.bytes_sent, info.duration = 120, 4096, 1.5
    client.tcp_closed(info)
    server = MetricsSink(Listener("inbound|27017", "127.0.0.1", 15007, "inbound", protocol="tcp", cluster="inbound|27017||",
                                  observability=Observability("destination", mongo,
                                                              service="mongo.default.svc.cluster.local")))
    served = Tcp(connection=make_connection(PRODUCTPAGE_ID), cluster="inbound|27017||", bytes_received=120, bytes_sent=4096)
    server.tcp_opened(served)
    server.tcp_closed(served)
    for reporter in ("source", "destination"):
        labels, opened = one("knotwork_", "knotwork_tcp_connections_opened_total", reporter=reporter)
        assert opened == 1 and list(labels) == sorted(TCP_LABELS) and labels["request_protocol"] == "tcp"
        assert one("knotwork_", "knotwork_tcp_connections_closed_total", reporter=reporter)[1] == 1
        assert one("knotwork_", "knotwork_tcp_sent_bytes_total", reporter=reporter)[1] == 4096
        assert one("knotwork_", "knotwork_tcp_received_bytes_total", reporter=reporter)[1] == 120
    src, _ = one("knotwork_", "knotwork_tcp_connections_opened_total", reporter="source")
    assert (src["destination_workload"], src["destination_service_name"], src["destination_canonical_revision"]) == \
        ("mongo-v1", "mongo", "latest")
    dst, _ = one("knotwork_", "knotwork_tcp_connections_opened_total", reporter="destination")
    # no peer header on TCP: the source is known by its mTLS identity, its namespace from the SPIFFE ID
    assert (dst["source_workload"], dst["source_workload_namespace"], dst["source_principal"],
            dst["connection_security_policy"]) == ("unknown", "default", PRODUCTPAGE_ID, "mutual_tls")


# ── the collector ───────────────────────────────────────────────────────────


def test_the_collector_is_registered_once_and_the_exposition_parses():
    before = len(list(REGISTRY._collector_to_names))  # noqa: SLF001 - counting registrations
    assert store() is store()
    MetricsSink(outbound_listener()).request_finished(request(), outbound_response())
    MetricsSink(inbound_listener(naming="istio")).request_finished(request(), Response(200))
    assert len(list(REGISTRY._collector_to_names)) == before  # noqa: SLF001
    text = generate_latest(REGISTRY).decode()
    assert "# TYPE knotwork_requests_total counter" in text
    assert "# TYPE istio_request_duration_milliseconds histogram" in text
    families = scrape("")
    assert families["knotwork_requests"].samples[0].value == 1
    assert families["istio_requests"].samples[0].labels["reporter"] == "destination"
