"""Fixtures for end-to-end scenarios: one real mesh per module and engine."""

from __future__ import annotations

import pytest

from .harness import REPO, RunningMesh

#: Every scenario runs on each proxy engine.
ENGINES = ["native", "envoy"]


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def bookinfo(engine: str, tmp_path_factory: pytest.TempPathFactory):
    mesh = RunningMesh(REPO / "examples" / "bookinfo", tmp_path_factory.mktemp(f"bookinfo-{engine}"), "--engine", engine)
    try:
        mesh.wait_ready()
        yield mesh
        mesh.stop()
    finally:
        mesh.kill_everything()
