"""The store asks `check` (the control plane's trial compile) before accepting any change."""

from __future__ import annotations

import pytest
from knotwork.model import Resource, SourceRef

from knotwork_config.parse import ConfigError
from knotwork_config.store import APPLIED_FILE, Store


def dr(name: str, simple: str = "ROUND_ROBIN", file: str = "dr.yaml") -> Resource:
    return Resource("networking.istio.io/v1", "DestinationRule", name, "default",
                    {"host": name, "trafficPolicy": {"loadBalancer": {"simple": simple}}}, source=SourceRef(file, 1))


def refuse_passthrough(resources: tuple[Resource, ...]) -> list[str]:
    return [f"{r.source.file}: {r}: spec.trafficPolicy.loadBalancer.simple: not a balancer"
            for r in resources if r.spec["trafficPolicy"]["loadBalancer"]["simple"] == "PASSTHROUGH"]


def test_check_sees_the_whole_candidate_and_a_refusal_changes_nothing(tmp_path):
    seen: list[tuple[str, ...]] = []

    def check(resources: tuple[Resource, ...]) -> list[str]:
        seen.append(tuple(r.name for r in resources))
        return refuse_passthrough(resources)

    store = Store(tmp_path / "applied", check=check)
    store.set_file("config/a.yaml", [dr("a", file="config/a.yaml")])
    store.apply([dr("b")])
    assert seen == [("a",), ("a", "b")]
    saved = (tmp_path / "applied" / APPLIED_FILE).read_text()
    with pytest.raises(ConfigError) as err:
        store.apply([dr("c"), dr("b", "PASSTHROUGH")])
    assert err.value.problems == ["dr.yaml: DestinationRule/default/b: spec.trafficPolicy.loadBalancer.simple: not a balancer"]
    assert [r.name for r in store.resources()] == ["a", "b"]
    assert store.applied[("DestinationRule", "default", "b")].spec["trafficPolicy"]["loadBalancer"]["simple"] == "ROUND_ROBIN"
    assert (tmp_path / "applied" / APPLIED_FILE).read_text() == saved  # nothing persisted
    with pytest.raises(ConfigError):
        store.set_file("config/a.yaml", [dr("a", "PASSTHROUGH", file="config/a.yaml")])
    assert store.files["config/a.yaml"][0].spec["trafficPolicy"]["loadBalancer"]["simple"] == "ROUND_ROBIN"


def test_delete_is_checked_too(tmp_path):
    store = Store(tmp_path / "applied", check=lambda resources: [] if any(r.name == "keep" for r in resources)
                  else ["x: DestinationRule/default/keep: metadata.name: still needed"])
    store.apply([dr("keep"), dr("other")])
    with pytest.raises(ConfigError):
        store.delete([dr("keep")])
    store.delete([dr("other")])
    assert [r.name for r in store.resources()] == ["keep"]
