"""Round robin: plain rotation, smooth weights, exclusion, updates."""

from __future__ import annotations

import collections
import tracemalloc

import pytest
from knotwork.protocols import Balancer
from knotwork.proxyconfig import Cluster, LbEndpoint

from knotwork_balancers import roundrobin
from knotwork_balancers.roundrobin import RoundRobin, smooth_weighted_order


def eps(n: int, **kw) -> list[LbEndpoint]:
    return [LbEndpoint(address=f"10.0.0.{i}", port=9080, **kw) for i in range(1, n + 1)]


def picks(balancer: RoundRobin, count: int, exclude=()) -> list[str | None]:
    out = []
    for _ in range(count):
        ep = balancer.pick(None, exclude)
        out.append(None if ep is None else ep.address)
    return out


def make(endpoints) -> RoundRobin:
    rr = RoundRobin(Cluster(name="outbound|9080||reviews.default.svc.cluster.local"), None)
    rr.update(endpoints)
    return rr


def test_is_a_balancer():
    assert isinstance(RoundRobin(), Balancer)


def test_empty_returns_none():
    rr = RoundRobin()
    assert rr.pick(None) is None
    rr.update([])
    assert rr.pick(None) is None


def test_n_consecutive_picks_hit_each_once_in_order():
    endpoints = eps(4)
    rr = make(endpoints)
    for _ in range(3):
        got = picks(rr, 4)
        assert got == [ep.address for ep in endpoints]


def test_single_endpoint():
    rr = make(eps(1))
    assert picks(rr, 3) == ["10.0.0.1"] * 3


def test_unhealthy_endpoints_are_skipped():
    endpoints = eps(3)
    endpoints[1] = LbEndpoint(address="10.0.0.2", port=9080, healthy=False)
    rr = make(endpoints)
    assert picks(rr, 4) == ["10.0.0.1", "10.0.0.3", "10.0.0.1", "10.0.0.3"]


def test_all_unhealthy_returns_none():
    rr = make(eps(3, healthy=False))
    assert rr.pick(None) is None


def test_update_with_same_endpoints_keeps_position():
    endpoints = eps(3)
    rr = make(endpoints)
    assert picks(rr, 2) == ["10.0.0.1", "10.0.0.2"]
    rr.update(list(eps(3)))  # equal, not identical
    assert picks(rr, 2) == ["10.0.0.3", "10.0.0.1"]


def test_update_resumes_at_the_endpoint_that_was_next():
    rr = make(eps(3))
    assert picks(rr, 1) == ["10.0.0.1"]
    rr.update([LbEndpoint("10.0.0.9", 9080), *eps(3)])  # one added in front
    assert picks(rr, 4) == ["10.0.0.2", "10.0.0.3", "10.0.0.9", "10.0.0.1"]


def test_update_when_next_endpoint_removed():
    rr = make(eps(3))
    assert picks(rr, 1) == ["10.0.0.1"]
    rr.update([e for e in eps(3) if e.address != "10.0.0.2"])
    assert picks(rr, 2) == ["10.0.0.3", "10.0.0.1"]


def test_endpoint_becoming_unhealthy_leaves_rotation():
    rr = make(eps(3))
    picks(rr, 1)
    rr.update([*eps(2), LbEndpoint("10.0.0.3", 9080, healthy=False)])
    assert picks(rr, 4) == ["10.0.0.2", "10.0.0.1", "10.0.0.2", "10.0.0.1"]


def test_exclude_skips_for_retries():
    endpoints = eps(3)
    rr = make(endpoints)
    first = rr.pick(None)
    assert first.address == "10.0.0.1"
    retry = rr.pick(None, (first,))
    assert retry.address == "10.0.0.2"
    assert rr.pick(None, (first,)).address == "10.0.0.3"
    assert rr.pick(None, (first,)).address == "10.0.0.2"  # 1 skipped


def test_exclude_compares_by_value():
    rr = make(eps(2))
    assert rr.pick(None, [LbEndpoint("10.0.0.1", 9080)]).address == "10.0.0.2"


def test_exclude_everything_returns_none():
    endpoints = eps(2)
    rr = make(endpoints)
    assert rr.pick(None, endpoints) is None
    assert picks(rr, 2) == ["10.0.0.1", "10.0.0.2"]  # position untouched


def test_equal_weights_other_than_one_are_plain_round_robin():
    rr = make(eps(3, weight=7))
    assert picks(rr, 3) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_smooth_weighted_order_matches_nginx():
    # nginx's documented example: weights a=5, b=1, c=1
    assert smooth_weighted_order([5, 1, 1], 7) == [0, 0, 1, 0, 2, 0, 0]


def test_weighted_round_robin_is_smooth_and_proportional():
    endpoints = [LbEndpoint("a", 1, weight=5), LbEndpoint("b", 1, weight=1), LbEndpoint("c", 1, weight=1)]
    rr = make(endpoints)
    assert picks(rr, 7) == ["a", "a", "b", "a", "c", "a", "a"]
    counts = collections.Counter(picks(rr, 700))
    assert counts == {"a": 500, "b": 100, "c": 100}


def test_weights_are_reduced_by_gcd():
    rr = make([LbEndpoint("a", 1, weight=200), LbEndpoint("b", 1, weight=100)])
    assert picks(rr, 3) == ["a", "b", "a"]


def test_weight_zero_counts_as_one():
    rr = make([LbEndpoint("a", 1, weight=0), LbEndpoint("b", 1, weight=2)])
    assert sorted(picks(rr, 3)) == ["a", "b", "b"]


def test_weighted_exclude():
    endpoints = [LbEndpoint("a", 1, weight=3), LbEndpoint("b", 1, weight=1)]
    rr = make(endpoints)
    assert picks(rr, 8, exclude=(endpoints[0],)) == ["b"] * 8


def test_online_mode_matches_ring(monkeypatch):
    weights = [5, 3, 2, 1]
    endpoints = [LbEndpoint(f"e{i}", 1, weight=w) for i, w in enumerate(weights)]
    ring = make(endpoints)
    monkeypatch.setattr(roundrobin, "MAX_RING_WORK", 0)
    online = make(endpoints)
    assert online._ring == () and online._weights  # really online
    assert picks(online, 44) == picks(ring, 44)


def test_online_mode_exclude(monkeypatch):
    monkeypatch.setattr(roundrobin, "MAX_RING_WORK", 0)
    endpoints = [LbEndpoint("a", 1, weight=3), LbEndpoint("b", 1, weight=1), LbEndpoint("c", 1, weight=1)]
    rr = make(endpoints)
    got = picks(rr, 40, exclude=(endpoints[0],))
    assert collections.Counter(got) == {"b": 20, "c": 20}
    assert rr.pick(None, endpoints) is None


def test_large_weights_use_online_mode_and_stay_proportional():
    endpoints = [LbEndpoint("a", 1, weight=100_003), LbEndpoint("b", 1, weight=99_991)]
    rr = make(endpoints)
    assert rr._ring == ()
    counts = collections.Counter(picks(rr, 1000))
    assert abs(counts["a"] - counts["b"]) <= 2


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (5, 1, 1)])
def test_pick_allocates_nothing(weights):
    rr = make([LbEndpoint(f"e{i}", 1, weight=w) for i, w in enumerate(weights)])
    for _ in range(100):
        rr.pick(None)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(1000):
            rr.pick(None)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = [
        s for s in after.compare_to(before, "filename")
        if s.size_diff > 0 and s.traceback[0].filename == roundrobin.__file__
    ]
    assert not grown
