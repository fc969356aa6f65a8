"""Fixtures for end-to-end scenarios: real meshes, one per engine.

`engine` is package-scoped, so pytest runs every scenario of one engine before
the other's, and the Bookinfo mesh the read-mostly modules share
(`test_bookinfo`, `test_observability`, `test_scoping`: each applies and
deletes its own resources) starts once per engine. Modules that reshape a
mesh start their own, module-scoped.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from ..otlp import OtlpReceiver
from .harness import REPO, RunningMesh, running_mesh

#: Every scenario runs on each proxy engine.
ENGINES = ["native", "envoy"]

#: Bookinfo as the e2e suite runs it: Istio's metric names (Kiali's and Grafana's queries apply), no random
#: sampling (only callers' decisions make traces), spans to the in-suite OTLP receiver.
MESH_TELEMETRY = """
mesh:
  telemetry:
    metric_names: istio
    tracing_sampling: 0
    tracing_endpoint: {endpoint}
"""


@pytest.fixture(scope="package", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="package")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="package")
def bookinfo(engine: str, otlp: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """One Bookinfo mesh per engine (with :data:`MESH_TELEMETRY`), shared by the modules that use it."""
    source = tmp_path_factory.mktemp(f"bookinfo-src-{engine}") / "bookinfo"
    shutil.copytree(REPO / "examples" / "bookinfo", source, ignore=shutil.ignore_patterns(".knotwork", "tests", "__pycache__"))
    with (source / "knotwork.yaml").open("a") as f:
        f.write(MESH_TELEMETRY.format(endpoint=otlp.endpoint))
    with running_mesh(source, tmp_path_factory.mktemp(f"bookinfo-{engine}"), "--engine", engine) as mesh:
        yield mesh
