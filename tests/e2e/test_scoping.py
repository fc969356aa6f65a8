"""Scoping what each proxy receives: a Sidecar's egress hosts on Bookinfo, on both engines.

Istio's Sidecar resource for Bookinfo's namespace lists productpage, details
and reviews but not ratings (tests/e2e/scoping/). Once applied, the reviews
sidecars are pushed a smaller config — no ratings route, cluster or endpoint
— and reviews v2/v3 can no longer reach ratings (the Sidecar also sets
REGISTRY_ONLY: 502 NR, never a pass-through lookup), so their reviews say
"Ratings service is currently unavailable", while productpage → details and
productpage → reviews keep working. Deleting the Sidecar brings ratings back.
Waits poll the pushed config and behaviour against a deadline.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from .harness import RunningMesh, wait_for

SCOPING = Path(__file__).resolve().parent / "scoping"
SIDECAR = SCOPING / "sidecar-default-without-ratings.yaml"
RATINGS_ERROR = "Ratings service is currently unavailable"
DETAILS_ERROR = "Sorry, product details are currently unavailable for this book."
BOOKINFO = {f"{name}.default.svc.cluster.local" for name in ("productpage", "details", "reviews", "ratings")}
RATINGS = "ratings.default.svc.cluster.local"
#: An outbound cluster name as both engines show it: outbound|<port>|<subset>|<host>
OUTBOUND_CLUSTER = re.compile(r"outbound\|\d+\|[^|\"]*\|([a-z0-9.-]+)")


def outbound_hosts(mesh: RunningMesh, workload: str) -> set[str]:
    """The hosts of the outbound clusters in `workload`'s proxy config (either engine's dump)."""
    done = mesh.knotwork("proxy-config", workload, "--output", "json")
    assert done.returncode == 0, done.stderr
    return set(OUTBOUND_CLUSTER.findall(done.stdout))


def synced(mesh: RunningMesh) -> bool:
    rows = mesh.knotwork_json("proxy-status")
    return bool(rows) and all(t["acked"] == t["latest"] for row in rows for t in row["types"].values() if t["latest"])


def ratings_in_reviews(client: httpx.Client, mesh: RunningMesh, n: int = 12) -> list[bool]:
    """For `n` reviews answers from v2/v3 (the versions calling ratings): did each carry stars?"""
    seen: list[bool] = []
    for _ in range(n * 6):
        response = client.get(f"{mesh.url}/api/v1/products/0/reviews")
        assert response.status_code == 200, response.text[:500]
        body = response.json()
        if body["podname"] == "reviews-v1-1":
            assert all("rating" not in r for r in body["reviews"])
            continue
        ratings = [r["rating"] for r in body["reviews"]]
        assert all(("stars" in r) != (r.get("error") == RATINGS_ERROR) for r in ratings), ratings
        seen.append(all("stars" in r for r in ratings))
        if len(seen) == n:
            return seen
    raise AssertionError(f"only {len(seen)} answers from reviews v2/v3 in {n * 6} requests")


def through_sidecar(mesh: RunningMesh, instance: str, url: str) -> httpx.Response:
    """A request sent through `instance`'s sidecar, as its app sends them (HTTP_PROXY)."""
    port = mesh.instance(instance)["ports"]["http_proxy"]
    with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=10) as client:
        return client.get(url)


def test_sidecar_egress_hosts_leave_ratings_out_then_delete_restores(bookinfo: RunningMesh, engine: str) -> None:
    mesh = bookinfo
    with httpx.Client(timeout=10) as client:
        # before: every sidecar knows all of Bookinfo; reviews v2/v3 show stars
        wait_for(lambda: outbound_hosts(mesh, "reviews-v2") >= BOOKINFO, 20, "Bookinfo in the reviews-v2 config")
        wait_for(lambda: all(ratings_in_reviews(client, mesh, 4)), 20, "stars from reviews v2/v3")
        assert through_sidecar(mesh, "reviews-v2-1", "http://ratings:9080/ratings/0").status_code == 200

        done = mesh.knotwork("apply", "-f", str(SIDECAR))
        assert done.returncode == 0, (done.stdout, done.stderr)
        try:
            applied_at = time.monotonic()
            wanted = BOOKINFO - {RATINGS}
            wait_for(lambda: outbound_hosts(mesh, "reviews-v2") == wanted, 20, "reviews-v2's config without ratings")
            # (a figure including the `knotwork proxy-config` calls that poll for it)
            print(f"\n[{engine}] Sidecar applied -> ratings gone from reviews-v2's config within "
                  f"{(time.monotonic() - applied_at) * 1000:.0f} ms")
            for workload in ("reviews-v3", "productpage-v1"):
                wait_for(lambda w=workload: outbound_hosts(mesh, w) == wanted, 20,
                         f"{workload}'s config without ratings")
            wait_for(lambda: synced(mesh), 20, "every proxy synced")
            # the gateway is never scoped by a Sidecar (and lives in the root namespace anyway)
            assert RATINGS in outbound_hosts(mesh, "ingress")

            # behaviour: reviews v2/v3 cannot reach ratings; details and reviews still answer
            assert not any(ratings_in_reviews(client, mesh)), "ratings still reached"
            page = client.get(f"{mesh.url}/productpage")
            assert page.status_code == 200 and "William Shakespeare" in page.text and DETAILS_ERROR not in page.text
            blocked = through_sidecar(mesh, "reviews-v2-1", "http://ratings:9080/ratings/0")
            print(f"[{engine}] ratings through the reviews-v2 sidecar: {blocked.status_code} "
                  f"{blocked.headers.get('x-knotwork-response-flags')}")
            assert (blocked.status_code, blocked.headers.get("x-knotwork-response-flags")) == (502, "NR"), blocked.text
            assert through_sidecar(mesh, "reviews-v2-1", "http://details:9080/details/0").status_code == 200
        finally:
            deleted = mesh.knotwork("delete", "-f", str(SIDECAR))
            assert deleted.returncode == 0, (deleted.stdout, deleted.stderr)

        # after the delete: ratings back in the config and in the answers
        wait_for(lambda: outbound_hosts(mesh, "reviews-v2") >= BOOKINFO, 20, "ratings back in the reviews-v2 config")
        wait_for(lambda: all(ratings_in_reviews(client, mesh, 4)), 20, "stars from reviews v2/v3 again")
        assert through_sidecar(mesh, "reviews-v2-1", "http://ratings:9080/ratings/0").status_code == 200
