"""Port allocation: distinct, free, below the ephemeral range, explicit ingress honoured."""

from __future__ import annotations

import random
import socket

import pytest

from knotwork_local.ports import PortAllocator, ephemeral_range, plan_ports, port_is_free
from knotwork_local.settings import IngressSettings, LocalSettings, PortSettings, UpstreamSettings, WorkloadSettings

SETTINGS = LocalSettings(workloads=(
    WorkloadSettings(name="web", service="web", command=("x",), replicas=2,
                     ports=(PortSettings(8080, "http"), PortSettings(9090, "grpc"))),
    WorkloadSettings(name="db-client", service="client", command=("x",),
                     upstreams=(UpstreamSettings("mysql", 3306), UpstreamSettings("cache.infra.svc.example.org", 6379))),
    WorkloadSettings(name="idle", service="idle", command=("x",), replicas=0),
))


def test_plan_has_every_role_and_distinct_free_ports():
    plan = plan_ports(SETTINGS, domain="example.org")
    assert set(plan.instances) == {"web-1", "web-2", "db-client-1"}
    assert set(plan.instances["web-1"]) == {"admin", "http_proxy", "inbound:8080", "app:8080", "inbound:9090", "app:9090"}
    assert set(plan.instances["db-client-1"]) == {
        "admin", "http_proxy", "tcp:mysql.default.svc.example.org:3306", "tcp:cache.infra.svc.example.org:6379"}
    assert set(plan.gateway) == {"gateway:80", "gateway:443", "admin"}
    ports = [plan.control, plan.ca, plan.metrics, *plan.gateway.values(),
             *(p for i in plan.instances.values() for p in i.values())]
    assert len(ports) == len(set(ports)) == 3 + 3 + 2 * 6 + 4
    low, _ = ephemeral_range()
    assert all(p < low and port_is_free(p) for p in ports)


def test_ports_are_taken_from_a_random_start_and_wrap_around():
    alloc = PortAllocator(40000, 40010, rng=random.Random(7))
    taken = [alloc.take() for _ in range(10)]
    assert sorted(taken) == list(range(40000, 40010)) or len(set(taken)) == 10


def test_busy_ports_are_skipped_and_an_explicit_busy_port_is_refused():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        alloc = PortAllocator(port, port + 2, rng=random.Random(0))
        assert alloc.take() != port
        with pytest.raises(ValueError, match=f"expected a free port on 127.0.0.1, got {port} \\(in use\\)"):
            plan_ports(SETTINGS, ingress_port=port)


def test_explicit_ingress_port_from_cli_or_settings():
    free = PortAllocator().take()
    assert plan_ports(SETTINGS, ingress_port=free).ingress == free
    settings = LocalSettings(ingress=IngressSettings(port=free), workloads=SETTINGS.workloads)
    assert plan_ports(settings).ingress == free


def test_falls_back_to_kernel_ports_without_a_range():
    alloc = PortAllocator(5000, 5000)
    assert alloc.take() != alloc.take()
