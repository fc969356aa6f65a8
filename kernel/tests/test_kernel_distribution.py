"""The shared ADS core: AdsSession and SnapshotCache (knotwork.distribution)."""

from __future__ import annotations

import anyio
import pytest

from knotwork.distribution import (
    LATENCY_BUCKETS,
    AdsSession,
    DiscoveryRequest,
    Latency,
    ResourceCache,
    SnapshotCache,
    StreamStatus,
)
from knotwork.proxyconfig import Cluster, EndpointSet, LbEndpoint, Listener, ProxySnapshot, RouteTable


def snapshot(clusters: dict[str, str] | None = None, *, routes: tuple[str, ...] = ("80",), port: int = 41001) -> ProxySnapshot:
    """Clusters (name -> lb), an endpoint set per cluster, one listener per route table."""
    clusters = {"a": "round_robin", "b": "round_robin"} if clusters is None else clusters
    resources: list = []
    for name, lb in clusters.items():
        resources += [Cluster(name, lb=lb), EndpointSet(name, (LbEndpoint("127.0.0.1", port),))]
    for table in routes:
        resources += [RouteTable(table), Listener(f"l{table}", "127.0.0.1", int(table), "inbound", route_table=table)]
    return ProxySnapshot.build(resources)


def subscribe(session: AdsSession, type_key: str, names: tuple[str, ...] = ()) -> str:
    return session.on_request(DiscoveryRequest(type_key, resource_names=names))


def ack(session: AdsSession, push, names: tuple[str, ...] = ()) -> str:
    return session.on_request(DiscoveryRequest(push.type, push.version, push.nonce, names))


def by_type(pushes) -> dict:
    return {p.type: p for p in pushes}


def test_first_request_subscribes_and_is_answered():
    session = AdsSession("sidecar~a")
    assert subscribe(session, "clusters") == "subscribe"
    (push,) = session.plan(snapshot())
    assert (push.type, set(push.resources), push.changed, push.removed) == ("clusters", {"a", "b"}, ("a", "b"), ())
    assert session.status.sent["clusters"] == push.version
    assert session.plan(snapshot()) == []  # nothing owed, nothing changed


def test_ack_records_the_version_and_owes_nothing():
    session = AdsSession("n")
    subscribe(session, "clusters")
    (push,) = session.plan(snapshot())
    assert ack(session, push) == "ack"
    assert session.status.acked == {"clusters": push.version}
    assert session.plan(snapshot()) == []


def test_nack_records_the_detail_until_the_next_ack():
    session = AdsSession("n")
    subscribe(session, "clusters")
    (push,) = session.plan(snapshot())
    verdict = session.on_request(DiscoveryRequest("clusters", "", push.nonce, error_detail="cluster 'a': bad lb"))
    assert verdict == "nack"
    assert session.status.nacked == {"clusters": "cluster 'a': bad lb"}
    assert "clusters" not in session.status.acked
    assert session.plan(snapshot()) == []  # a NACK is not answered with the same config
    (fixed,) = session.plan(snapshot({"a": "random", "b": "round_robin"}))
    assert ack(session, fixed) == "ack"
    assert session.status.nacked == {}
    assert session.status.acked["clusters"] == fixed.version


def test_a_stale_nonce_is_ignored():
    session = AdsSession("n")
    subscribe(session, "clusters")
    (first,) = session.plan(snapshot())
    (second,) = session.plan(snapshot({"a": "random"}))
    assert first.nonce != second.nonce
    assert ack(session, first) == "stale"
    assert session.status.acked == {}
    assert ack(session, second) == "ack"


def test_only_changed_resources_are_listed():
    session = AdsSession("n")
    subscribe(session, "clusters")
    ack(session, session.plan(snapshot())[0])
    (push,) = session.plan(snapshot({"a": "round_robin", "b": "random"}))
    assert push.changed == ("b",)
    assert set(push.resources) == {"a", "b"}  # state of the world: the whole set
    assert push.removed == ()


def test_removals_come_after_changes_in_reverse_order():
    session = AdsSession("n")
    for type_key in ("clusters", "endpoints", "listeners", "routes"):
        subscribe(session, type_key)
    session.plan(snapshot(routes=("80", "81")))
    pushes = session.plan(snapshot({"a": "random"}, routes=("80",)))
    # clusters: 'a' changed ('b' removed too) -> a change; endpoints: 'b' only removed;
    # listeners and routes: only removals -> after the changes, reversed (routes, listeners, endpoints)
    assert [(p.type, p.changed, p.removed) for p in pushes] == [
        ("clusters", ("a",), ("b",)),
        ("routes", (), ("81",)),
        ("listeners", (), ("l81",)),
        ("endpoints", (), ("b",)),
    ]


def test_eds_is_owed_after_a_cds_change():
    session = AdsSession("n")
    subscribe(session, "clusters")
    subscribe(session, "endpoints", ("a", "b"))
    first = by_type(session.plan(snapshot()))
    assert set(first) == {"clusters", "endpoints"}
    ack(session, first["clusters"])
    ack(session, first["endpoints"], ("a", "b"))

    # a cluster changes, its endpoints do not: Envoy warms the cluster and
    # re-requests EDS, which must be answered even though nothing changed there
    pushes = session.plan(snapshot({"a": "random", "b": "round_robin"}), types=["clusters"])
    assert [p.type for p in pushes] == ["clusters"]
    ack(session, pushes[0])
    assert session.on_request(DiscoveryRequest("endpoints", first["endpoints"].version, first["endpoints"].nonce,
                                               ("a", "b"))) == "subscribe"
    (eds,) = session.plan(snapshot({"a": "random", "b": "round_robin"}))
    assert (eds.type, eds.changed) == ("endpoints", ())


def test_changed_resource_names_for_routes_get_a_reply():
    session = AdsSession("n")
    subscribe(session, "routes", ("80",))
    snap = snapshot(routes=("80", "81"))
    (push,) = session.plan(snap)
    assert set(push.resources) == {"80"}
    assert ack(session, push, ("80",)) == "ack"
    assert ack(session, push, ("80", "81")) == "subscribe"  # new names: a reply is owed
    (reply,) = session.plan(snap)
    assert (set(reply.resources), reply.changed) == ({"80", "81"}, ("81",))


def test_wildcard_types_ignore_names():
    session = AdsSession("n")
    subscribe(session, "listeners")
    (push,) = session.plan(snapshot(routes=("80", "81")))
    assert ack(session, push, ("l80",)) == "ack"  # names on a wildcard type do not matter


def test_reconnect_with_a_version_counts_as_acked():
    session = AdsSession("n")
    verdict = session.on_request(DiscoveryRequest("clusters", version_info="v-old"))
    assert verdict == "subscribe"
    assert session.status.acked == {"clusters": "v-old"}


def test_stream_status_counts_pushes_nacks_and_the_latency_to_each_ack():
    cache = SnapshotCache()
    cache.set("n", snapshot())
    status = cache.status.setdefault("n", StreamStatus())  # as an engine's server does: the one set() made
    assert status.changed_at > 0
    session = AdsSession("n", status)
    subscribe(session, "clusters")
    (push,) = session.plan(cache.get("n"))
    assert status.pushes == {"clusters": 1} and sum(status.latency.counts) == 0
    ack(session, push)
    assert sum(status.latency.counts) == 1 and status.latency.counts[-1] == 0  # well under 30 s
    ack(session, push)  # the same ACK again: no second observation
    assert sum(status.latency.counts) == 1
    cache.set("n", snapshot({"a": "random"}))
    (push,) = session.plan(cache.get("n"))
    assert session.on_request(DiscoveryRequest("clusters", "", push.nonce, error_detail="no")) == "nack"
    assert status.pushes == {"clusters": 2} and status.nacks == {"clusters": 1}
    assert sum(status.latency.counts) == 1


def test_latency_buckets_are_upper_bounds():
    latency = Latency()
    for seconds in (0.001, 0.0011, 30.0, 31.0):
        latency.observe(seconds)
    assert latency.counts[0] == 1 and latency.counts[1] == 1
    assert latency.counts[LATENCY_BUCKETS.index(30.0)] == 1 and latency.counts[-1] == 1
    assert latency.sum == pytest.approx(61.0021)


def test_resource_cache_encodes_once():
    cache, calls = ResourceCache(limit=2), []

    def encode(value):
        return lambda: calls.append(value) or value

    assert cache.get(("clusters", "a", "1"), encode("A")) == "A"
    assert cache.get(("clusters", "a", "1"), encode("other")) == "A"
    cache.get(("clusters", "b", "1"), encode("B"))
    cache.get(("clusters", "c", "1"), encode("C"))  # over the limit: starts afresh
    assert calls == ["A", "B", "C"]


def test_snapshot_cache_set_reports_changes():
    cache = SnapshotCache()
    assert cache.set("n", snapshot())
    assert not cache.set("n", snapshot())  # same content, same version
    assert cache.set("n", snapshot({"a": "random"}))
    assert cache.nodes() == ["n"]
    assert cache.get("other") is None


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_wait_change_returns_at_once_when_the_version_differs():
    cache = SnapshotCache()
    cache.set("n", snapshot())
    with anyio.fail_after(1):
        assert (await cache.wait_change("n", None)).version == snapshot().version


@pytest.mark.anyio
async def test_wait_change_wakes_on_notify_for_its_node_only():
    cache = SnapshotCache()
    first = snapshot()
    cache.set("n", first)
    got = []

    async def waiter():
        got.append(await cache.wait_change("n", first.version))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        cache.set("other", snapshot({"z": "random"}))
        cache.notify()  # another node changed: keep waiting
        await anyio.wait_all_tasks_blocked()
        assert got == []
        second = snapshot({"a": "random"})
        cache.set("n", second)
        cache.notify()
        with anyio.fail_after(1):
            while not got:
                await anyio.sleep(0)
    assert got == [second]


@pytest.mark.anyio
async def test_wait_change_for_a_node_not_yet_compiled():
    cache = SnapshotCache()
    with anyio.move_on_after(0.05) as scope:
        await cache.wait_change("new", None)
    assert scope.cancelled_caught
