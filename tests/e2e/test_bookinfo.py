"""The first mesh on one machine: Bookinfo through the ingress, as a user runs it."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import time

import httpx

from .harness import RunningMesh, wait_for

SERVED_BY = re.compile(r"Reviews served by:\s*(\S+?)(?:<|\s|$)")


def test_productpage_has_details_and_reviews(bookinfo: RunningMesh) -> None:
    response = httpx.get(f"{bookinfo.url}/productpage", timeout=10)
    assert response.status_code == 200
    page = response.text
    assert "William Shakespeare" in page and "1234567890" in page  # details
    assert SERVED_BY.search(page), page[:2000]  # reviews
    assert "currently unavailable" not in page


def test_round_robin_over_reviews_versions(bookinfo: RunningMesh) -> None:
    counts: collections.Counter[str] = collections.Counter()
    with httpx.Client(timeout=10) as client:  # keep-alive
        for _ in range(30):
            page = client.get(f"{bookinfo.url}/productpage").text
            counts[SERVED_BY.search(page).group(1)] += 1
    assert set(counts) == {"reviews-v1-1", "reviews-v2-1", "reviews-v3-1"}, counts
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_bookinfo_keeps_working_under_mesh_wide_strict_mtls(bookinfo: RunningMesh, tmp_path) -> None:
    """Every hop between sidecars is mTLS by default; a mesh-wide STRICT policy refuses plaintext and
    Bookinfo does not notice."""
    policy = tmp_path / "strict.yaml"
    policy.write_text("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
                      "metadata: {name: default, namespace: knotwork-system}\nspec: {mtls: {mode: STRICT}}\n")
    ratings = next(i for i in bookinfo.instances() if i["instance"] == "ratings-v1-1")["ports"]["inbound:9080"]

    def plaintext_refused() -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{ratings}/ratings/0", timeout=5)
        except httpx.TransportError:
            return True
        return False

    done = bookinfo.knotwork("apply", "-f", str(policy))
    assert done.returncode == 0, done.stderr
    try:
        wait_for(plaintext_refused, 15, "plaintext to ratings' sidecar to be refused")
        with httpx.Client(timeout=10) as client:
            for _ in range(6):
                page = client.get(f"{bookinfo.url}/productpage").text
                assert "William Shakespeare" in page and SERVED_BY.search(page), page[:2000]
                assert "currently unavailable" not in page
    finally:
        done = bookinfo.knotwork("delete", "-f", str(policy))
        assert done.returncode == 0, done.stderr


def test_unknown_path_is_a_flagged_404(bookinfo: RunningMesh) -> None:
    response = httpx.get(f"{bookinfo.url}/no-such-page", timeout=10)
    assert response.status_code == 404
    assert response.headers["x-knotwork-response-flags"] == "NR"
    assert "no-such-page" in response.text


def _cluster_counts(mesh: RunningMesh) -> dict[str, dict]:
    return {node: mesh.admin(port, "/status") for node, port in mesh.proxy_admin_ports().items()}


async def _constant_load(url: str, rate: float, seconds: float, results: list) -> None:
    """Open-loop load: one request every 1/rate s, whatever the latency."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=15, limits=limits) as client:
        async def one() -> None:
            try:
                r = await client.get(url)
                results.append((r.status_code, r.headers.get("x-knotwork-response-flags"), r.text[:200]))
            except httpx.HTTPError as exc:
                results.append((None, None, repr(exc)))

        tasks = []
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)


#: 3 s of steady load, the kills, then load on while `up` restarts both (about a second each)
LOAD_SECONDS = 9


def test_control_plane_and_instance_die_under_load(bookinfo: RunningMesh) -> None:
    before = _cluster_counts(bookinfo)
    state = bookinfo.state()
    old_control = state["control"]["pid"]
    victim = bookinfo.instance("reviews-v2-1")
    results: list = []

    async def scenario() -> None:
        load = asyncio.create_task(_constant_load(f"{bookinfo.url}/productpage", 200, LOAD_SECONDS, results))
        await asyncio.sleep(3)  # steady load first: this is the scenario's timeline, not a race guard
        os.kill(old_control, signal.SIGKILL)
        os.kill(victim["pid"], signal.SIGKILL)
        await load

    asyncio.run(scenario())
    # the control plane came back (restarted by `up`) and every instance is ready again
    wait_for(lambda: bookinfo.state()["control"]["pid"] not in (None, old_control)
             and bookinfo.state()["control"]["ready"], 30, "a restarted control plane")
    wait_for(lambda: all(i["ready"] for i in bookinfo.instances()), 30, "every instance ready again")
    assert bookinfo.instance("reviews-v2-1")["restarts"] >= 1

    failures = [r for r in results if r[0] != 200]
    unexplained = [r for r in failures if not r[1]]
    assert len(results) == 200 * LOAD_SECONDS
    assert not unexplained, unexplained[:5]
    assert len(failures) <= len(results) * 0.01, failures[:5]

    def synced() -> bool:
        rows = bookinfo.knotwork_json("proxy-status")
        return bool(rows) and all(
            t["acked"] == t["latest"] for row in rows for t in row["types"].values() if t["latest"]
        ) and len({row["version"] for row in rows if row["node"].startswith("sidecar~reviews")}) >= 1

    wait_for(synced, 20, "every proxy synced to the latest config")
    after = _cluster_counts(bookinfo)
    for node, status in after.items():
        assert status["min_clusters_since_ready"] >= before[node]["clusters"], (node, before[node], status)


def test_proxy_config_and_status_commands(bookinfo: RunningMesh) -> None:
    dumps = bookinfo.knotwork_json("proxy-config", "reviews-v1")
    assert list(dumps) == ["sidecar~reviews-v1-1"]
    text = str(dumps)
    assert "ratings.default.svc.cluster.local" in text and "inbound|9080" in text
    table = bookinfo.knotwork("proxy-config", "productpage-v1")
    assert table.returncode == 0 and "outbound|9080||reviews.default.svc.cluster.local" in table.stdout
    status = bookinfo.knotwork("proxy-status")
    assert status.returncode == 0 and "gateway~ingress" in status.stdout and "SYNCED" in status.stdout
    unknown = bookinfo.knotwork("proxy-config", "nope")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
