"""Observability on both engines: Bookinfo under load, seen through metrics, traces and access logs.

The mesh is the shared Bookinfo (see ``conftest.MESH_TELEMETRY``): Istio's metric names (so Kiali's and
Grafana's queries apply), no random sampling (only callers' decisions make traces) and spans sent to the
in-suite OTLP receiver.
"""

from __future__ import annotations

import collections
import json
import secrets
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ..otlp import OtlpReceiver, Span
from .harness import RunningMesh, wait_for
from .test_bookinfo import SERVED_BY

FAULT = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings-fault, namespace: default}
spec:
  hosts: [ratings]
  http:
  - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: ratings}}]
"""


# ── metrics ──────────────────────────────────────────────────────────────────


def scrape(mesh: RunningMesh) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of every proxy's ``/stats/prometheus``."""
    samples = []
    for port in mesh.proxy_admin_ports().values():
        text = httpx.get(f"http://127.0.0.1:{port}/stats/prometheus", timeout=5).text
        for family in text_string_to_metric_families(text):
            samples += [(s.name, s.labels, s.value) for s in family.samples]
    return samples


def total(samples: list, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == want for k, want in labels.items()))


def load(mesh: RunningMesh, pages: int) -> collections.Counter[str]:
    """GET /productpage `pages` times; which reviews version served each."""
    served: collections.Counter[str] = collections.Counter()
    with httpx.Client(timeout=10) as client:
        for _ in range(pages):
            page = client.get(f"{mesh.url}/productpage")
            assert page.status_code == 200, page.text[:500]
            served[SERVED_BY.search(page.text).group(1).removesuffix("-1")] += 1
    return served


def test_counters_per_edge_equal_the_requests_sent(bookinfo: RunningMesh) -> None:
    before = scrape(bookinfo)
    pages = 24
    served = load(bookinfo, pages)
    assert sum(served.values()) == pages and set(served) == {"reviews-v1", "reviews-v2", "reviews-v3"}, served
    edges = [({"source_workload": "ingress", "destination_workload": "productpage-v1",
               "destination_service_name": "productpage", "destination_app": "productpage"}, pages),
             ({"source_workload": "productpage-v1", "source_app": "productpage", "source_version": "v1",
               "destination_workload": "details-v1", "destination_version": "v1"}, pages)]
    for version in ("v1", "v2", "v3"):
        edges.append(({"source_workload": "productpage-v1", "destination_service_name": "reviews",
                       "destination_workload": f"reviews-{version}", "destination_version": version},
                      served[f"reviews-{version}"]))
    for version in ("v2", "v3"):
        edges.append(({"source_workload": f"reviews-{version}", "source_app": "reviews", "source_version": version,
                       "destination_workload": "ratings-v1", "destination_service_name": "ratings"},
                      served[f"reviews-{version}"]))
    wanted = [(reporter, labels, count) for labels, count in edges for reporter in ("source", "destination")]

    def deltas() -> list[float]:
        after = scrape(bookinfo)
        return [total(after, "istio_requests_total", reporter=r, response_code="200", **lab)
                - total(before, "istio_requests_total", reporter=r, response_code="200", **lab) for r, lab, _ in wanted]

    def reached() -> list[float] | None:
        d = deltas()
        return d if all(x >= c for x, (_, _, c) in zip(d, wanted)) else None

    got = wait_for(reached, 20, "every edge's counters to reach the requests sent")
    assert got == [c for _, _, c in wanted], list(zip(got, wanted))

    after = scrape(bookinfo)
    # the destination side knows its caller by its mTLS identity, and says so
    assert total(after, "istio_requests_total", reporter="destination", source_workload="productpage-v1",
                 destination_workload="details-v1", connection_security_policy="mutual_tls",
                 source_principal="spiffe://cluster.local/ns/default/sa/productpage",
                 destination_principal="spiffe://cluster.local/ns/default/sa/details", request_protocol="http") >= pages
    # Istio's names and units: a duration histogram in milliseconds, request and response sizes
    assert total(after, "istio_request_duration_milliseconds_count", reporter="source",
                 source_workload="productpage-v1", destination_workload="details-v1") >= pages
    assert total(after, "istio_response_bytes_sum", reporter="destination", destination_workload="productpage-v1") > 0


# ── traces ───────────────────────────────────────────────────────────────────


def caller_headers(style: str, trace_id: str, span_id: str, sampled: bool) -> dict[str, str]:
    if style == "w3c":
        return {"traceparent": f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"}
    if style == "b3":
        return {"b3": f"{trace_id}-{span_id}-{'1' if sampled else '0'}"}
    return {"x-b3-traceid": trace_id, "x-b3-spanid": span_id, "x-b3-sampled": "1" if sampled else "0"}


def traced_page(mesh: RunningMesh, style: str, sampled: bool = True, want_ratings: bool = True) -> tuple[str, str]:
    """A page fetched with a caller's trace context, served (if `want_ratings`) by a reviews version
    that calls ratings; returns (trace id, caller span id)."""
    with httpx.Client(timeout=10) as client:
        for _ in range(6):
            trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
            page = client.get(f"{mesh.url}/productpage", headers=caller_headers(style, trace_id, span_id, sampled))
            assert page.status_code == 200
            if not want_ratings or SERVED_BY.search(page.text).group(1) != "reviews-v1-1":
                return trace_id, span_id
    raise AssertionError("six pages in a row were served by reviews-v1")


def one(spans: list[Span], what: str, pred) -> Span:
    found = [s for s in spans if pred(s)]
    assert len(found) == 1, f"{what}: {len(found)} spans in {[(s.service, s.kind, s.name) for s in spans]}"
    return found[0]


def to(service: str):
    return lambda s: service in str(s.attributes.get("upstream_cluster", ""))


@pytest.mark.parametrize("style", ["w3c", "b3", "b3multi"])
def test_one_trace_across_productpage_reviews_ratings(bookinfo: RunningMesh, otlp: OtlpReceiver, style: str) -> None:
    trace_id, caller = traced_page(bookinfo, style)

    def complete() -> list[Span] | None:  # each proxy exports in its own batches: wait for all of them
        spans = otlp.trace(trace_id)
        kinds = {(s.service.split(".")[0], s.kind) for s in spans}
        return spans if any(s.parent_id == caller for s in spans) and kinds >= {
            ("productpage", "SERVER"), ("productpage", "CLIENT"), ("details", "SERVER"), ("reviews", "SERVER"),
            ("reviews", "CLIENT"), ("ratings", "SERVER")} else None

    spans = wait_for(complete, 20, f"the spans of trace {trace_id} from every proxy on its way")
    by_id = {s.span_id: s for s in spans}
    assert len(by_id) == len(spans), "span ids are unique"
    ingress = one(spans, "the ingress's span", lambda s: s.parent_id == caller)
    assert ingress.kind == "CLIENT" and to("productpage")(ingress)
    pp_server = one(spans, "productpage's server span", lambda s: s.kind == "SERVER" and s.service.startswith("productpage"))
    pp_reviews = one(spans, "productpage → reviews", lambda s: s.kind == "CLIENT" and s.service.startswith("productpage") and to("reviews")(s))
    reviews_server = one(spans, "reviews' server span", lambda s: s.kind == "SERVER" and s.service.startswith("reviews"))
    reviews_ratings = one(spans, "reviews → ratings", lambda s: s.kind == "CLIENT" and s.service.startswith("reviews") and to("ratings")(s))
    ratings_server = one(spans, "ratings' server span", lambda s: s.kind == "SERVER" and s.service.startswith("ratings"))
    chain = [ingress, pp_server, pp_reviews, reviews_server, reviews_ratings, ratings_server]
    assert [s.parent_id for s in chain[1:]] == [s.span_id for s in chain[:-1]], [(s.service, s.kind) for s in chain]
    assert ratings_server.attributes.get("http.status_code") in ("200", 200)
    # the details hop hangs off productpage's server span too
    pp_details = one(spans, "productpage → details", lambda s: s.kind == "CLIENT" and to("details")(s))
    assert pp_details.parent_id == pp_server.span_id
    # every span's parent is in the trace, or is the caller's span
    assert all(s.parent_id in by_id or s.parent_id == caller for s in spans)


def test_a_caller_that_does_not_sample_makes_no_spans(bookinfo: RunningMesh, otlp: OtlpReceiver) -> None:
    quiet, _ = traced_page(bookinfo, "w3c", sampled=False, want_ratings=False)
    loud, _ = traced_page(bookinfo, "b3multi", sampled=True, want_ratings=False)
    wait_for(lambda: {s.service.split(".")[0] for s in otlp.trace(loud) if s.kind == "SERVER"} >= {"productpage", "details", "reviews"},
             20, "the sampled trace sent after the unsampled one")
    assert otlp.trace(quiet) == []


# ── a fault, in metrics and access logs ──────────────────────────────────────


def access_lines(mesh: RunningMesh, workload: str) -> list[dict]:
    done = mesh.knotwork("logs", workload, "--access")
    assert done.returncode == 0, done.stderr
    return [json.loads(line[line.index("{"):]) for line in done.stdout.splitlines() if "{" in line]


def test_an_injected_fault_shows_flag_fi_in_metrics_and_access_log(bookinfo: RunningMesh, tmp_path: Path) -> None:
    fault = tmp_path / "fault.yaml"
    fault.write_text(FAULT)
    done = bookinfo.knotwork("apply", "-f", str(fault))
    assert done.returncode == 0, done.stderr
    try:
        def aborted() -> bool:
            with httpx.Client(timeout=10) as client:
                page = client.get(f"{bookinfo.url}/productpage").text
            return "Ratings service is currently unavailable" in page
        wait_for(aborted, 20, "ratings calls to be aborted by the fault")
        before = scrape(bookinfo)
        served = load(bookinfo, 9)
    finally:
        bookinfo.knotwork("delete", "-f", str(fault))
    calls = served["reviews-v2"] + served["reviews-v3"]
    fi = {"reporter": "source", "destination_service_name": "ratings", "response_code": "418", "response_flags": "FI"}

    def faults() -> float:
        return total(scrape(bookinfo), "istio_requests_total", **fi) - total(before, "istio_requests_total", **fi)
    got = wait_for(lambda: n if (n := faults()) >= calls else None, 20, "FI-flagged requests in reviews' metrics")
    assert got == calls and calls > 0
    # the ratings sidecar never saw them
    assert total(scrape(bookinfo), "istio_requests_total", reporter="destination", response_code="418") == 0

    def fi_lines() -> list[dict]:
        return [line for w in ("reviews-v2", "reviews-v3") for line in access_lines(bookinfo, w)
                if line.get("response_flags") == "FI"]
    lines = wait_for(fi_lines, 20, "FI in the access log of reviews-v2 or v3")
    line = lines[-1]
    assert line["response_code"] == 418 and line["method"] == "GET" and line["path"].startswith("/ratings/")
    assert "ratings" in line["upstream_cluster"] and line["x_request_id"]


def test_access_log_follows_one_request_across_hops(bookinfo: RunningMesh) -> None:
    trace_id, _ = traced_page(bookinfo, "w3c", want_ratings=False)

    def hops() -> dict[str, dict] | None:
        found = {}
        for workload in ("ingress", "productpage-v1", "details-v1"):
            mine = [line for line in access_lines(bookinfo, workload) if line.get("trace_id") == trace_id]
            if not mine:
                return None
            found[workload] = mine[0]
        return found
    found = wait_for(hops, 20, "the traced request in the access logs of ingress, productpage and details")
    for line in found.values():
        for field in ("start_time", "method", "path", "protocol", "response_code", "response_flags", "bytes_received",
                      "bytes_sent", "duration", "upstream_host", "upstream_cluster", "x_request_id", "trace_id"):
            assert field in line, (field, line)
    # one request id from the edge on
    assert found["ingress"]["x_request_id"] == found["productpage-v1"]["x_request_id"] == found["details-v1"]["x_request_id"]


# ── scrape configuration and the control plane's own metrics ────────────────


def test_prometheus_config_scrapes_every_proxy_and_the_control_plane(bookinfo: RunningMesh) -> None:
    done = bookinfo.knotwork("prometheus-config")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    targets = {(job["job_name"], job.get("metrics_path", "/metrics"), t)
               for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert len(targets) == len(bookinfo.proxy_admin_ports()) + 1
    texts = {}
    for job, path, target in targets:
        response = httpx.get(f"http://{target}{path}", timeout=5)
        assert response.status_code == 200, (job, target)
        texts[target] = response.text
    assert sum("istio_requests_total{" in t for t in texts.values()) == len(bookinfo.proxy_admin_ports())
    control = next(t for t in texts.values() if "knotwork_control_" in t)
    families = {f.name: f for f in text_string_to_metric_families(control)}
    connected = families["knotwork_control_connected_proxies"]
    assert sum(s.value for s in connected.samples) == len(bookinfo.proxy_admin_ports())


# ── the Telemetry API ────────────────────────────────────────────────────────

TELEMETRY = """apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: details, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  accessLogging: [{disabled: true}]
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT, mode: SERVER}
      tagOverrides:
        request_operation: {value: request.method}
        source_principal: {operation: REMOVE}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ingress, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  tracing: [{randomSamplingPercentage: 100}]
"""


def test_telemetry_resources_override_logging_labels_and_sampling_per_workload(
        bookinfo: RunningMesh, otlp: OtlpReceiver, tmp_path: Path) -> None:
    policy = tmp_path / "telemetry.yaml"
    policy.write_text(TELEMETRY)
    bad = tmp_path / "bad.yaml"
    bad.write_text(TELEMETRY.replace("randomSamplingPercentage: 100", "randomSamplingPercentage: 150"))
    refused = bookinfo.knotwork("apply", "-f", str(bad))
    assert refused.returncode != 0 and "spec.tracing[0].randomSamplingPercentage" in refused.stderr + refused.stdout
    assert "Traceback" not in refused.stderr
    done = bookinfo.knotwork("apply", "-f", str(policy))
    assert done.returncode == 0, done.stderr
    try:
        def details_series() -> float:
            return total(scrape(bookinfo), "istio_requests_total", reporter="destination",
                         destination_workload="details-v1", request_operation="GET")
        with httpx.Client(timeout=10) as client:
            def relabelled() -> bool:  # the new config reaches details' sidecar
                assert client.get(f"{bookinfo.url}/productpage").status_code == 200
                return details_series() > 0
            wait_for(relabelled, 20, "details' request counts to carry request_operation")
            before = details_series()
            ids = [client.get(f"{bookinfo.url}/productpage").status_code for _ in range(3)]
        assert ids == [200, 200, 200]
        assert wait_for(lambda: details_series() - before == 3 or None, 20, "three more GETs counted by details")
        after = scrape(bookinfo)
        labelled = [lab for n, lab, _ in after if n == "istio_requests_total" and lab.get("request_operation") == "GET"]
        assert all("source_principal" not in lab and lab["destination_workload"] == "details-v1" for lab in labelled)
        # the client side and the other metrics are unchanged
        assert total(after, "istio_requests_total", reporter="source", destination_workload="details-v1",
                     source_principal="spiffe://cluster.local/ns/default/sa/productpage") > 0
        # 100 % sampling at the ingress: requests without a caller's decision start traces there
        wait_for(lambda: any(s.kind == "CLIENT" and not s.parent_id and to("productpage")(s) for s in otlp),
                 20, "a trace started by the ingress's own sampling")
        # no access log on details any more: the last line it wrote predates the policy
        quiet = access_lines(bookinfo, "details-v1")
        assert quiet == access_lines(bookinfo, "details-v1")
        with httpx.Client(timeout=10) as client:
            assert client.get(f"{bookinfo.url}/productpage").status_code == 200
        wait_for(lambda: details_series() - before == 4 or None, 20, "the fourth GET counted by details")
        assert access_lines(bookinfo, "details-v1") == quiet
    finally:
        bookinfo.knotwork("delete", "-f", str(policy))


# ── response flags of the proxies' own replies ──────────────────────────────

NO_ENDPOINTS = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-v9, namespace: default}
spec:
  host: reviews
  subsets: [{name: v9, labels: {version: v9}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-v9, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: flagtest}}}]
    route: [{destination: {host: reviews, subset: v9}}]
  - route: [{destination: {host: reviews}}]
"""


def test_local_replies_carry_envoys_flags_in_reply_metrics_and_access_log(bookinfo: RunningMesh, tmp_path: Path) -> None:
    """The same failure gives the same flag on both engines: NR for no route, UH for a subset without endpoints."""
    policy = tmp_path / "v9.yaml"
    policy.write_text(NO_ENDPOINTS)
    before = scrape(bookinfo)
    done = bookinfo.knotwork("apply", "-f", str(policy))
    assert done.returncode == 0, done.stderr
    try:
        with httpx.Client(timeout=10) as client:
            def unavailable() -> bool:
                page = client.get(f"{bookinfo.url}/productpage", headers={"end-user": "flagtest"})
                return page.status_code == 200 and "reviews are currently unavailable" in page.text
            wait_for(unavailable, 20, "reviews v9 (no endpoints) to be routed to")
            missing = client.get(f"{bookinfo.url}/nope")
        assert (missing.status_code, missing.headers.get("x-knotwork-response-flags")) == (404, "NR")
    finally:
        bookinfo.knotwork("delete", "-f", str(policy))

    def flagged(workload: str, flags: str, code: int) -> list[dict]:
        return [line for line in access_lines(bookinfo, workload)
                if line.get("response_flags") == flags and line.get("response_code") == code]
    nr = wait_for(lambda: flagged("ingress", "NR", 404), 20, "the NR reply in the ingress's access log")
    assert nr[-1]["path"] == "/nope" and nr[-1]["upstream_host"] is None
    uh = wait_for(lambda: flagged("productpage-v1", "UH", 503), 20, "the UH reply in productpage's access log")
    assert uh[-1]["upstream_cluster"] == "outbound|9080|v9|reviews.default.svc.cluster.local"

    def delta(**labels: str) -> float:
        return total(scrape(bookinfo), "istio_requests_total", **labels) - total(before, "istio_requests_total", **labels)
    wait_for(lambda: delta(reporter="source", source_workload="ingress", response_code="404", response_flags="NR") >= 1,
             20, "NR in the ingress's metrics")
    wait_for(lambda: delta(reporter="source", source_workload="productpage-v1", destination_service_name="reviews",
                           destination_workload="unknown", response_code="503", response_flags="UH") >= 1,
             20, "UH in productpage's metrics")
