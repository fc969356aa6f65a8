"""Istio's traffic-management tasks on Bookinfo, with the YAML from Istio's docs.

https://istio.io/latest/docs/tasks/traffic-management/ — request routing,
traffic shifting, fault injection, request timeouts, mirroring — plus a
refused bad update. One real mesh per engine; every scenario applies its
resources with `knotwork apply -f` and deletes them in a `finally`, so the
next scenario starts from plain round robin. Waits poll behaviour (or the
pushed config) against a deadline; nothing sleeps blindly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from .harness import RunningMesh, wait_for

TRAFFIC = Path(__file__).resolve().parent / "traffic"
SERVED_BY = re.compile(r"Reviews served by:\s*(\S+?)(?:<|\s|$)")
REVIEWS_ERROR = "Sorry, product reviews are currently unavailable for this book."
RATINGS_ERROR = "Ratings service is currently unavailable"
JASON = {"end-user": "jason"}
V1, V2, V3 = "reviews-v1-1", "reviews-v2-1", "reviews-v3-1"


@pytest.fixture(scope="module")
def mesh(bookinfo: RunningMesh) -> RunningMesh:
    """This module's Bookinfo mesh (one per engine)."""
    return bookinfo


# --------------------------------------------------------------------------- helpers

def apply(mesh: RunningMesh, name: str) -> None:
    done = mesh.knotwork("apply", "-f", str(TRAFFIC / name))
    assert done.returncode == 0, (name, done.stdout, done.stderr)


def resources(path: Path) -> list[tuple[tuple[str, str], dict]]:
    """The documents of a file, keyed by (kind, name)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return [((d["kind"], d["metadata"]["name"]), d) for d in docs]


@contextlib.contextmanager
def applied(mesh: RunningMesh, *names: str) -> Iterator[Callable[[str], None]]:
    """Apply `names` in order; on the way out delete what they applied, whatever happens.

    Yields a function applying one more file, cleaned up likewise.

    A later file may redefine a resource of an earlier one (Istio's docs apply
    virtual-service-reviews-test-v2.yaml over virtual-service-all-v1.yaml);
    deleting the later file removes it, so the earlier one is then deleted
    without it (`delete` refuses a file naming a resource that is not applied).
    """
    done: list[str] = []

    def more(name: str) -> None:
        apply(mesh, name)
        done.append(name)

    try:
        for name in names:
            more(name)
        yield more
    finally:
        gone: set[tuple[str, str]] = set()
        errors = []
        for name in reversed(done):
            docs = [(key, doc) for key, doc in resources(TRAFFIC / name) if key not in gone]
            gone.update(key for key, _ in docs)
            if not docs:
                continue
            target = TRAFFIC / name
            if len(docs) < len(resources(target)):
                target = mesh.dir.parent / f"rest-of-{name}"
                target.write_text(yaml.safe_dump_all([doc for _, doc in docs]))
            done_ = mesh.knotwork("delete", "-f", str(target))
            if done_.returncode != 0:  # keep deleting the rest
                errors.append(f"delete {target}: {done_.stderr}")
        assert not errors, errors


def page(client: httpx.Client, mesh: RunningMesh, headers: dict | None = None) -> str:
    response = client.get(f"{mesh.url}/productpage", headers=headers)
    assert response.status_code == 200, response.text[:500]
    return response.text


def served_by(text: str) -> str | None:
    found = SERVED_BY.search(text)
    return found.group(1) if found else None


def api_podname(client: httpx.Client, mesh: RunningMesh, headers: dict | None = None) -> str | None:
    response = client.get(f"{mesh.url}/api/v1/products/0/reviews", headers=headers)
    return response.json().get("podname") if response.status_code == 200 else None


def wait_streak(client: httpx.Client, mesh: RunningMesh, want: str, n: int = 20, timeout: float = 15,
                headers: dict | None = None, since: float | None = None) -> float:
    """Request /productpage until `n` in a row are served by `want`; return when the streak began."""
    started = time.monotonic() if since is None else since
    streak_start: float | None = None
    count = 0
    while time.monotonic() - started < timeout:
        sent = time.monotonic()
        if served_by(page(client, mesh, headers)) == want:
            if count == 0:
                streak_start = sent
            count += 1
            if count == n:
                return streak_start
        else:
            count = 0
    raise AssertionError(f"no streak of {n} requests served by {want} within {timeout}s")


def wait_config(mesh: RunningMesh, workload: str, *needles: str, timeout: float = 15) -> None:
    """Wait until `workload`'s proxy config holds one of `needles` (the engines dump their
    own formats) and every proxy acked the latest config."""
    def pushed() -> bool:
        done = mesh.knotwork("proxy-config", workload, "--output", "json")
        return done.returncode == 0 and any(needle in done.stdout for needle in needles)

    def synced() -> bool:
        rows = mesh.knotwork_json("proxy-status")
        return bool(rows) and all(t["acked"] == t["latest"] for row in rows
                                  for t in row["types"].values() if t["latest"])

    wait_for(pushed, timeout, f"one of {needles} in the config of {workload}", interval=0.1)
    wait_for(synced, timeout, "every proxy synced", interval=0.1)


async def _podnames(url: str, n: int, concurrency: int = 32) -> collections.Counter:
    counts: collections.Counter[str] = collections.Counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=15, limits=limits) as client:
        async def one() -> None:
            async with sem:
                r = await client.get(url)
                counts[r.json().get("podname") if r.status_code == 200 else f"status {r.status_code}"] += 1

        await asyncio.gather(*(one() for _ in range(n)))
    return counts


def podnames(mesh: RunningMesh, n: int) -> collections.Counter:
    return asyncio.run(_podnames(f"{mesh.url}/api/v1/products/0/reviews", n))


def round_robin_window(client: httpx.Client, mesh: RunningMesh) -> bool:
    counts = collections.Counter(served_by(page(client, mesh)) for _ in range(30))
    return set(counts) == {V1, V2, V3} and max(counts.values()) - min(counts.values()) <= 1


# --------------------------------------------------------------------------- 1. request routing

def test_request_routing_all_v1_then_jason_to_v2(mesh: RunningMesh, engine: str) -> None:
    with httpx.Client(timeout=10) as client, applied(mesh, "destination-rule-all.yaml") as more:
        wait_for(lambda: round_robin_window(client, mesh), 15, "round robin before any VirtualService")
        started = time.monotonic()  # `knotwork apply` as a user runs it: a new process
        more("virtual-service-all-v1.yaml")
        returned = time.monotonic()
        streak = wait_streak(client, mesh, V1, since=started)
        effect = streak - started
        print(f"\n[{engine}] apply all-v1 -> first of 20 v1-only pages: {effect * 1000:.0f} ms after `knotwork apply` "
              f"started ({(streak - returned) * 1000:.0f} ms after it returned; the command took "
              f"{(returned - started) * 1000:.0f} ms)")
        assert effect < 5, effect

        more("virtual-service-reviews-test-v2.yaml")
        wait_streak(client, mesh, V2, n=10, headers=JASON)
        for _ in range(10):
            jason = page(client, mesh, JASON)
            assert served_by(jason) == V2
            assert 'style="color: black"' in jason  # v2: black stars
            assert served_by(page(client, mesh)) == V1
            # the cookie productpage's /login sets works the same way
            assert served_by(page(client, mesh, {"Cookie": "user=jason"})) == V2
            assert served_by(page(client, mesh, {"end-user": "mary"})) == V1
    with httpx.Client(timeout=10) as client:
        wait_for(lambda: round_robin_window(client, mesh), 15, "round robin after the deletes")


# --------------------------------------------------------------------------- 2. traffic shifting

@pytest.mark.parametrize(("file", "want"), [
    ("virtual-service-reviews-50-v3.yaml", {V1: 50, V3: 50}),
    ("virtual-service-reviews-80-20.yaml", {V1: 80, V2: 20}),
])
def test_traffic_shifting(mesh: RunningMesh, engine: str, file: str, want: dict[str, int]) -> None:
    with httpx.Client(timeout=10) as client, applied(mesh, "destination-rule-all.yaml", file):
        unwanted = {V1, V2, V3} - set(want)
        # in force once 30 requests in a row avoid the version that gets no weight
        wait_for(lambda: all(api_podname(client, mesh) in want for _ in range(30)), 15,
                 f"only {sorted(want)} serving reviews")
        counts = podnames(mesh, 1000)
        shares = {pod: 100 * counts[pod] / 1000 for pod in want}
        print(f"\n[{engine}] {file}: {dict(counts)} -> {shares}")
        assert sum(counts.values()) == 1000
        assert not any(counts[pod] for pod in unwanted), counts
        assert set(counts) <= set(want), counts  # no errors either
        for pod, weight in want.items():
            assert abs(shares[pod] - weight) <= 5, (pod, shares, want)


# --------------------------------------------------------------------------- 3. fault injection

def test_fault_injection_delay_for_jason(mesh: RunningMesh, engine: str) -> None:
    with httpx.Client(timeout=15) as client, applied(
            mesh, "destination-rule-all.yaml", "virtual-service-all-v1.yaml",
            "virtual-service-reviews-test-v2.yaml", "virtual-service-ratings-test-delay.yaml"):
        wait_config(mesh, "productpage-v1", "jason")  # reviews: jason -> v2
        wait_config(mesh, "reviews-v2", '"delay": 7.0', '"fixed_delay": "7s"')  # ratings: jason delayed 7 s
        started = time.monotonic()
        jason = page(client, mesh, JASON)
        elapsed = time.monotonic() - started
        print(f"\n[{engine}] jason's page with a 7s ratings delay: {elapsed:.2f}s")
        # productpage gives reviews 3 s, twice; reviews v2 waits the 7 s for ratings: too late
        assert REVIEWS_ERROR in jason, jason[:2000]
        assert 5.5 <= elapsed <= 10, elapsed
        # everybody else is unaffected and fast
        started = time.monotonic()
        other = page(client, mesh)
        assert served_by(other) == V1 and time.monotonic() - started < 2


def test_fault_injection_abort_for_jason(mesh: RunningMesh, engine: str) -> None:
    with httpx.Client(timeout=15) as client, applied(
            mesh, "destination-rule-all.yaml", "virtual-service-all-v1.yaml",
            "virtual-service-reviews-test-v2.yaml", "virtual-service-ratings-test-abort.yaml"):
        def unavailable() -> str | None:
            text = page(client, mesh, JASON)
            return text if RATINGS_ERROR in text else None

        jason = wait_for(unavailable, 15, "jason's page to say ratings are unavailable")
        assert served_by(jason) == V2 and REVIEWS_ERROR not in jason
        for _ in range(5):
            text = page(client, mesh, JASON)
            assert RATINGS_ERROR in text and served_by(text) == V2
            other = page(client, mesh)
            assert served_by(other) == V1 and RATINGS_ERROR not in other
        # productpage's own call to ratings gets the injected 500 too (its body is not JSON:
        # productpage answers 503 with its ratings message); others get the ratings
        ratings = client.get(f"{mesh.url}/api/v1/products/0/ratings", headers=JASON)
        assert ratings.status_code == 503 and "ratings are currently unavailable" in ratings.text
        assert client.get(f"{mesh.url}/api/v1/products/0/ratings").status_code == 200


# --------------------------------------------------------------------------- 4. request timeout

def test_route_timeout_on_slow_upstream_is_504_ut(mesh: RunningMesh, engine: str) -> None:
    slow = {"Host": "slow.example.com"}
    url = f"{mesh.url}/api/v1/products/0/ratings"
    with httpx.Client(timeout=15) as client, applied(mesh, "gateway-timeout.yaml"):
        wait_config(mesh, "productpage-v1", '"delay": 2.0', '"fixed_delay": "2s"')
        wait_for(lambda: client.get(url, headers=slow).status_code == 504, 20,
                 "the slow.example.com route to time out")
        figures = []
        for _ in range(3):
            started = time.monotonic()
            response = client.get(url, headers=slow)
            elapsed = time.monotonic() - started
            figures.append(elapsed)
            assert response.status_code == 504, response.text
            assert response.headers["x-knotwork-response-flags"] == "UT"
            assert abs(elapsed - 0.5) <= 0.2, elapsed
        print(f"\n[{engine}] 0.5s route timeout: 504 UT after {', '.join(f'{f:.3f}s' for f in figures)}")
        # the same path on the default host has no timeout: the 2 s delay, then the ratings
        started = time.monotonic()
        response = client.get(url)
        elapsed = time.monotonic() - started
        assert response.status_code == 200 and "ratings" in response.json(), response.text
        assert 1.8 <= elapsed <= 3, elapsed


# --------------------------------------------------------------------------- 5. retries

RATINGS_API = "/api/v1/products/0/ratings"


def ratings_attempts(mesh: RunningMesh, rids: set[str]) -> collections.Counter:
    """How many times ratings saw each request id (its own log: one line per request)."""
    seen = re.findall(r'"GET /ratings/0" \d+ .*?rid=(\S+)', mesh.knotwork("logs", "ratings-v1").stdout)
    return collections.Counter(rid for rid in seen if rid in rids)


def test_retries_hide_a_failing_first_attempt(mesh: RunningMesh, engine: str) -> None:
    tag = f"retry-{engine}-{uuid.uuid4().hex[:8]}"
    knob = {"x-bookinfo-fail": "first-attempt:503"}
    with httpx.Client(timeout=15) as client:
        def status(rid: str) -> int:
            return client.get(f"{mesh.url}{RATINGS_API}", headers={**knob, "x-request-id": rid}).status_code

        # without a retry policy every first attempt fails and the client sees it
        plain = [f"{tag}-plain-{i}" for i in range(5)]
        assert [status(rid) for rid in plain] == [503] * 5
        with applied(mesh, "destination-rule-all.yaml", "virtual-service-ratings-retries.yaml"):
            probes = iter(range(1_000_000))
            wait_for(lambda: status(f"{tag}-probe-{next(probes)}") == 200, 15, "the ratings retry policy")
            rids = [f"{tag}-{i}" for i in range(100)]
            results = collections.Counter(status(rid) for rid in rids)
            print(f"\n[{engine}] first attempt fails for every request id, retries on: {dict(results)}")
            assert results == {200: 100}
            # every request id was tried exactly twice: the injected 503, then the retry
            wait_for(lambda: ratings_attempts(mesh, set(rids)) == {rid: 2 for rid in rids}, 10,
                     "ratings to log two attempts per request id")


def test_retry_on_5xx_does_not_retry_a_404(mesh: RunningMesh, engine: str) -> None:
    tag = f"retry404-{engine}-{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=15) as client, applied(
            mesh, "destination-rule-all.yaml", "virtual-service-ratings-retry-5xx.yaml"):
        def status(rid: str, knob: str) -> int:
            headers = {"x-bookinfo-fail": knob, "x-request-id": rid}
            return client.get(f"{mesh.url}{RATINGS_API}", headers=headers).status_code

        probes = iter(range(1_000_000))
        wait_for(lambda: status(f"{tag}-probe-{next(probes)}", "first-attempt:500") == 200, 15,
                 "the ratings retryOn 5xx policy")
        # the policy is live: a 500 every time is tried 1 + 3 times ...
        always_500 = [f"{tag}-500-{i}" for i in range(5)]
        assert [status(rid, "always:500") for rid in always_500] == [500] * 5
        wait_for(lambda: ratings_attempts(mesh, set(always_500)) == {rid: 4 for rid in always_500}, 10,
                 "four attempts per request id answered 500")
        # ... while a 404 is not a 5xx: one attempt, and the client sees it
        not_found = [f"{tag}-404-{i}" for i in range(5)]
        assert [status(rid, "always:404") for rid in not_found] == [404] * 5
        wait_for(lambda: set(ratings_attempts(mesh, set(not_found))) == set(not_found), 10,
                 "ratings to log the 404s")
        assert ratings_attempts(mesh, set(not_found)) == {rid: 1 for rid in not_found}


# --------------------------------------------------------------------------- 6. mirroring

def test_mirroring_reviews_v1_to_v2(mesh: RunningMesh, engine: str) -> None:
    tag = f"mirror-{engine}-{uuid.uuid4().hex[:8]}"
    ids = [f"{tag}-{i}" for i in range(20)]
    with httpx.Client(timeout=10) as client, applied(
            mesh, "destination-rule-all.yaml", "virtual-service-reviews-mirror.yaml"):
        wait_for(lambda: all(api_podname(client, mesh) == V1 for _ in range(20)), 15, "reviews v1 only")
        for rid in ids:
            assert api_podname(client, mesh, {"x-request-id": rid}) == V1  # clients only see v1

        def logged(workload: str) -> set[str]:
            return set(re.findall(r"rid=(\S+)", mesh.knotwork("logs", workload).stdout)) & set(ids)

        wait_for(lambda: logged("reviews-v2") == set(ids), 10, "every request mirrored to reviews v2")
        assert logged("reviews-v1") == set(ids)
        assert not logged("reviews-v3")


def test_mirror_errors_never_reach_the_client(mesh: RunningMesh, engine: str) -> None:
    tag = f"mirror-err-{engine}-{uuid.uuid4().hex[:8]}"
    ids = [f"{tag}-{i}" for i in range(20)]
    with httpx.Client(timeout=10) as client, applied(
            mesh, "destination-rule-all.yaml", "virtual-service-reviews-mirror-to-ratings.yaml"):
        wait_for(lambda: all(api_podname(client, mesh) == V1 for _ in range(20)), 15, "reviews v1 only")
        for rid in ids:
            assert api_podname(client, mesh, {"x-request-id": rid}) == V1  # 200 from v1, every time

        def mirrored_404s() -> set[str]:
            lines = re.findall(r'"GET /reviews/0" 404 .*?rid=(\S+)', mesh.knotwork("logs", "ratings-v1").stdout)
            return set(lines) & set(ids)

        # ratings got every copy and answered each with 404; none of it reached the client
        wait_for(lambda: mirrored_404s() == set(ids), 10, "every copy answered 404 by ratings")


# --------------------------------------------------------------------------- 7. refused update

def test_bad_update_is_refused_and_routing_stays(mesh: RunningMesh) -> None:
    bad = TRAFFIC / "virtual-service-reviews-bad-weight.yaml"
    with httpx.Client(timeout=10) as client:
        with applied(mesh, "destination-rule-all.yaml", "virtual-service-all-v1.yaml"):
            wait_streak(client, mesh, V1)
            done = mesh.knotwork("apply", "-f", str(bad))
            assert done.returncode == 2, (done.stdout, done.stderr)
            assert "Traceback" not in done.stderr
            assert re.search(rf"^{re.escape(str(bad))}: VirtualService/default/reviews: "
                             r"spec\.http\[0\]\.route\[0\]\.weight: .+", done.stderr, re.M), done.stderr
            # a change only a compiler can find wrong is refused the same way, before any proxy sees it
            bad_lb = TRAFFIC / "destination-rule-reviews-bad-lb.yaml"
            done = mesh.knotwork("apply", "-f", str(bad_lb))
            assert done.returncode == 2, (done.stdout, done.stderr)
            assert "Traceback" not in done.stderr
            assert re.search(rf"^{re.escape(str(bad_lb))}: DestinationRule/default/reviews: "
                             r"spec\.trafficPolicy\.loadBalancer\.simple: expected one of ROUND_ROBIN.+got 'PASSTHROUGH'",
                             done.stderr, re.M), done.stderr
            # exactly as it was: every request still v1
            for _ in range(30):
                assert served_by(page(client, mesh)) == V1
        # the last VirtualService (and the rules) deleted: round robin over v1/v2/v3 again
        wait_for(lambda: round_robin_window(client, mesh), 15, "round robin after deleting the VirtualServices")
