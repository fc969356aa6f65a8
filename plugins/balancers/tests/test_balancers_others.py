"""least_request, random, and the plugin's registration hook."""

from __future__ import annotations

import collections
import random

from knotwork import Strategy
from knotwork.protocols import Balancer
from knotwork.proxyconfig import Cluster, LbEndpoint

from knotwork_balancers import _hooks
from knotwork_balancers.others import LeastRequest, Random
from knotwork_balancers.roundrobin import RoundRobin


def eps(n: int) -> list[LbEndpoint]:
    return [LbEndpoint(address=f"10.0.0.{i}", port=80) for i in range(1, n + 1)]


# ── registration ────────────────────────────────────────────────────────────


def test_hook_returns_the_three_strategies():
    records = _hooks.knotwork_load_balancers()
    assert all(isinstance(r, Strategy) for r in records)
    by_name = {r.name: r for r in records}
    assert set(by_name) == {"round_robin", "least_request", "random"}
    assert by_name["round_robin"].factory is RoundRobin
    for record in records:
        assert record.engines == frozenset({"native", "envoy"})
        assert record.settings is None
        assert record.description
        balancer = record.factory(Cluster(name="c"), None)
        assert isinstance(balancer, Balancer)


# ── random ──────────────────────────────────────────────────────────────────


def test_random_empty_and_unhealthy():
    rnd = Random(rng=random.Random(1))
    assert rnd.pick(None) is None
    rnd.update([LbEndpoint("a", 1, healthy=False)])
    assert rnd.pick(None) is None


def test_random_spreads_over_healthy_endpoints():
    rnd = Random(rng=random.Random(7))
    rnd.update([*eps(3), LbEndpoint("sick", 80, healthy=False)])
    counts = collections.Counter(rnd.pick(None).address for _ in range(3000))
    assert set(counts) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert min(counts.values()) > 800


def test_random_exclude():
    endpoints = eps(3)
    rnd = Random(rng=random.Random(3))
    rnd.update(endpoints)
    for _ in range(100):
        assert rnd.pick(None, endpoints[:2]).address == "10.0.0.3"
    assert rnd.pick(None, endpoints) is None


# ── least request ───────────────────────────────────────────────────────────


def test_least_request_empty():
    lr = LeastRequest(rng=random.Random(1))
    assert lr.pick(None) is None


def test_least_request_single_endpoint_counts():
    lr = LeastRequest(rng=random.Random(1))
    (ep,) = eps(1)
    lr.update([ep])
    assert lr.pick(None) == ep
    assert lr.pick(None) == ep
    assert lr.active(ep) == 2
    lr.release(ep)
    lr.release(ep)
    lr.release(ep)  # never below zero
    assert lr.active(ep) == 0


def test_least_request_prefers_the_idle_endpoint():
    endpoints = eps(2)
    lr = LeastRequest(rng=random.Random(5))
    lr.update(endpoints)
    busy = lr.pick(None)
    # with two endpoints both are always sampled: the idle one wins until they tie
    other = lr.pick(None)
    assert other != busy
    lr.release(other)
    assert lr.pick(None) == other


def test_least_request_balances_in_flight_load():
    endpoints = eps(5)
    lr = LeastRequest(rng=random.Random(11))
    lr.update(endpoints)
    for _ in range(500):
        lr.pick(None)
    loads = [lr.active(ep) for ep in endpoints]
    assert sum(loads) == 500
    assert max(loads) - min(loads) <= 3  # two choices keep the spread tiny


def test_least_request_exclude_takes_least_loaded_other():
    endpoints = eps(3)
    lr = LeastRequest(rng=random.Random(2))
    lr.update(endpoints)
    lr.pick(None, (endpoints[1], endpoints[2]))  # loads 1 on .1
    chosen = lr.pick(None, (endpoints[2],))
    assert chosen == endpoints[1]
    assert lr.pick(None, endpoints) is None


def test_least_request_update_keeps_counts_and_release_after_update():
    endpoints = eps(2)
    lr = LeastRequest(rng=random.Random(4))
    lr.update(endpoints)
    first = lr.pick(None)
    lr.update([LbEndpoint("10.0.0.9", 80), *eps(2)])
    assert lr.active(first) == 1
    lr.release(first)  # the object picked before the update
    assert lr.active(first) == 0


def test_least_request_release_of_unknown_endpoint_is_ignored():
    lr = LeastRequest(rng=random.Random(4))
    lr.update(eps(1))
    lr.release(LbEndpoint("192.0.2.1", 80))


def test_least_request_skips_unhealthy():
    lr = LeastRequest(rng=random.Random(4))
    lr.update([LbEndpoint("sick", 80, healthy=False), *eps(1)])
    assert {lr.pick(None).address for _ in range(20)} == {"10.0.0.1"}
