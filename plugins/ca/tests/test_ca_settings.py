"""The `ca:` section of the mesh file: defaults, strict types, cross-field checks, selection by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from knotwork.config import MeshError
from knotwork.kernel import Hooks, make_plugin_manager
from knotwork.testing import mesh_from_yaml, settings_from_yaml
from knotwork_ca.settings import DAY, CASettings


def test_defaults_are_istios() -> None:
    s = settings_from_yaml("{}", CASettings)
    assert (s.workload_cert_ttl, s.max_workload_cert_ttl, s.rotate_at, s.root_cert_ttl, s.cacerts) == \
        (DAY, 90 * DAY, 0.8, 3650 * DAY, None)


def test_every_field_parses() -> None:
    s = settings_from_yaml("""
        workload_cert_ttl: 20
        max_workload_cert_ttl: 3600.5
        rotate_at: 0.5
        root_cert_ttl: 86400
        cacerts: certs/cluster1
    """, CASettings)
    assert (s.workload_cert_ttl, s.max_workload_cert_ttl, s.rotate_at, s.root_cert_ttl, s.cacerts) == \
        (20, 3600.5, 0.5, 86400, Path("certs/cluster1"))


@pytest.mark.parametrize(("text", "expected"), [
    ("rotate_at: 1.0", "settings.yaml:1: rotate_at: expected a fraction between 0 and 1 (exclusive), got 1"),
    ("rotate_at: 0", "settings.yaml:1: rotate_at: expected a fraction between 0 and 1 (exclusive), got 0"),
    ("workload_cert_ttl: -5", "settings.yaml:1: workload_cert_ttl: expected seconds > 0, got -5"),
    ("workload_cert_ttl: .nan", "settings.yaml:1: workload_cert_ttl: expected seconds > 0, got nan"),
    ("workload_cert_ttl: 24h", "settings.yaml:1: workload_cert_ttl: expected a number, got '24h'"),
    ("root_cert_ttl: 0", "settings.yaml:1: root_cert_ttl: expected seconds > 0, got 0"),
    ("workload_cert_ttl: 7200\nmax_workload_cert_ttl: 3600",
     "settings.yaml:1: workload_cert_ttl: expected seconds ≤ max_workload_cert_ttl (3600), got 7200"),
    ("cacerts: [a]", "settings.yaml:1: cacerts: expected a path, got a list"),
    ("ttl: 5", "settings.yaml:1: ttl: expected one of the keys workload_cert_ttl, max_workload_cert_ttl, rotate_at, "
               "root_cert_ttl, cacerts, got unknown key 'ttl'"),
])
def test_bad_settings_are_one_clear_line(text: str, expected: str) -> None:
    with pytest.raises(MeshError) as info:
        settings_from_yaml(text, CASettings)
    assert info.value.problems == [expected]


def test_a_mesh_file_selects_the_ca_by_name(tmp_path: Path) -> None:
    hooks = Hooks(make_plugin_manager())  # the installed plugins, `ca` from its entry point
    assert hooks.registry()["certificate_authorities"]["ca"].plugin == "ca"
    mesh = mesh_from_yaml(tmp_path, """
        plugins:
          platform: local
          certificate_authority: ca
          config_sources: []
        ca:
          workload_cert_ttl: 3600
          cacerts: cacerts
    """, hooks)
    assert mesh.plugins.certificate_authority == "ca"
    assert mesh.settings["ca"] == CASettings(workload_cert_ttl=3600, cacerts=Path("cacerts"))
