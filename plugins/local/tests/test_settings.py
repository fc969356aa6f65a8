"""The `local:` section: structure, defaults and every cross-field problem, one line each."""

from __future__ import annotations

import pytest

from knotwork.config import MeshError, load_mesh
from knotwork.model import Protocol
from knotwork_local.settings import LocalSettings

GOOD = """
plugins: {platform: local, engine: native}
local:
  drain_timeout: 2.0
  ingress:
    port: 0
    routes:
      - {prefix: /productpage, service: productpage, port: 9080}
      - {exact: /login, service: productpage, port: 9080}
  workloads:
    - name: productpage-v1
      service: productpage
      labels: {version: v1}
      command: [python, apps/productpage.py]
      ports: [{port: 9080, name: http}]
      readiness: {http: /health, period: 0.5}
    - name: reviews-v2
      service: reviews
      service_account: bookinfo-reviews
      labels: {app: reviews, version: v2}
      command: [python, apps/reviews.py]
      env: {SERVICE_VERSION: v2}
      ports: [{port: 9080, name: http, protocol: HTTP}]
      replicas: 2
      upstreams: [{service: mysql, port: 3306}]
      readiness: {tcp: true}
"""


def problems(hooks, mesh_file, text: str) -> list[str]:
    path = mesh_file(text)
    with pytest.raises(MeshError) as info:
        load_mesh(path, hooks)
    prefix = f"{path}:"
    assert all(line.startswith(prefix) for line in info.value.problems), info.value.problems
    return [line[len(prefix):] for line in info.value.problems]


def test_good_mesh_file_and_defaults(local_hooks, mesh_file):
    mesh = load_mesh(mesh_file(GOOD), local_hooks)
    settings = mesh.settings["local"]
    assert isinstance(settings, LocalSettings)
    page, reviews = settings.workloads
    assert page.namespace == "default"
    assert page.resolved_service_account == "productpage"
    assert page.resolved_labels == {"app": "productpage", "version": "v1"}
    assert page.ports[0].resolved_protocol is Protocol.HTTP
    assert page.readiness.http == "/health" and page.readiness.period == 0.5 and not page.readiness.tcp
    assert reviews.resolved_service_account == "bookinfo-reviews"
    assert reviews.instance_names() == ["reviews-v2-1", "reviews-v2-2"]
    assert settings.ingress.routes[1].match == {"exact": "/login"}
    assert settings.problems() == []


def test_empty_section_is_valid(local_hooks, mesh_file):
    mesh = load_mesh(mesh_file("plugins: {platform: local}\n"), local_hooks)
    assert mesh.settings.get("local") in (None, LocalSettings())
    assert LocalSettings().problems() == []


def test_each_cross_field_problem_is_one_line_with_its_path(local_hooks, mesh_file):
    lines = problems(local_hooks, mesh_file, """
        local:
          ingress:
            routes:
              - {prefix: /a, service: nope, port: 9080}
              - {prefix: /b, service: details, port: 9999}
              - {service: details, port: 9080}
          workloads:
            - {name: details, service: details, command: [x], ports: [{port: 9080, name: http}, {port: 9080}]}
            - {name: details, service: other, command: []}
            - name: details-v2
              service: details
              command: [x]
              ports: [{port: 9080, name: tcp-db}]
              readiness: {http: /health, tcp: true}
        """)
    assert sorted(lines) == sorted([
        "4: local.ingress.routes[0].service: expected a service declared by a workload (details, other), got 'nope'",
        "5: local.ingress.routes[1].port: expected a port of service details (9080), got 9999",
        "6: local.ingress.routes[2]: expected exactly one of prefix, exact or regex, got none",
        "8: local.workloads[0].ports[1].port: expected each port once per workload, got 9080 twice",
        "9: local.workloads[1].name: expected a unique workload name, got 'details' again (first at workloads[0])",
        "9: local.workloads[1].command: expected a non-empty command, got []",
        "13: local.workloads[2].ports[0]: expected port 9080 of service details as workload details declares it "
        "(name 'http', HTTP), got name 'tcp-db', TCP",
        "14: local.workloads[2].readiness: expected one of http or tcp, got both",
    ])


def test_replicas_below_zero_is_refused_by_the_validator(local_hooks, mesh_file):
    lines = problems(local_hooks, mesh_file, """
        local:
          workloads:
            - {name: a, service: a, command: [x], replicas: -1}
        """)
    assert lines == ["3: local.workloads[0].replicas: expected an integer ≥ 0, got -1"]


def test_strict_scalars_unknown_keys_and_missing_fields(local_hooks, mesh_file):
    lines = problems(local_hooks, mesh_file, """
        local:
          drain_timeout: 9
          workloads:
            - name: a
              command: [x]
              replicas: "2"
              colour: blue
              ports: [{port: 80, protocol: HTTPX}]
        """)
    assert "4: local.workloads[0].service: expected a value, got nothing (required)" in lines
    assert "6: local.workloads[0].replicas: expected an integer, got '2'" in lines
    assert any(line.startswith("7: local.workloads[0].colour: expected one of the keys name, service") for line in lines)


def test_value_problems(local_hooks, mesh_file):
    lines = problems(local_hooks, mesh_file, """
        local:
          drain_timeout: 9
          workloads:
            - name: A_b
              service: a
              command: [x]
              ports: [{port: 80, protocol: HTTPX}]
              readiness: {http: health}
            - {name: c, service: c, command: [x], readiness: {}}
        """)
    assert sorted(lines) == sorted([
        "2: local.drain_timeout: expected seconds between 0 and 3.0, got 9.0",
        "4: local.workloads[0].name: expected a DNS label (lowercase letters, digits, '-'), got 'A_b'",
        "7: local.workloads[0].ports[0].protocol: expected HTTP, HTTP2, GRPC, TCP or TLS, got 'HTTPX'",
        "8: local.workloads[0].readiness.http: expected a path starting with '/', got 'health'",
        "9: local.workloads[1].readiness: expected http: PATH or tcp: true, got neither",
        "9: local.workloads[1].readiness: expected a workload with a port to probe, got no ports",
    ])


def test_every_field_is_described():
    import attrs

    from knotwork_local import settings as mod

    for cls in (mod.LocalSettings, mod.IngressSettings, mod.IngressRoute, mod.WorkloadSettings,
                mod.PortSettings, mod.UpstreamSettings, mod.ReadinessSettings):
        for field in attrs.fields(cls):
            assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help"


def test_a_section_alone_with_the_kernel_helper():
    from knotwork.testing import settings_from_yaml

    with pytest.raises(MeshError) as info:
        settings_from_yaml("""
            workloads:
              - {name: a, service: a, command: [x], readiness: {http: /h, tcp: true}, ports: [{port: 1}]}
            ingress: {routes: [{prefix: /, service: a, port: 2}]}
            """, LocalSettings)
    assert info.value.problems == [
        "settings.yaml:2: workloads[0].readiness: expected one of http or tcp, got both",
        "settings.yaml:3: ingress.routes[0].port: expected a port of service a (1), got 2",
    ]
