"""Fixtures for end-to-end scenarios: one real mesh per module and engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import REPO, RunningMesh, running_mesh

#: Every scenario runs on each proxy engine.
ENGINES = ["native", "envoy"]


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def bookinfo(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """A Bookinfo mesh of its own for each test module and engine."""
    with running_mesh(REPO / "examples" / "bookinfo", tmp_path_factory.mktemp(f"bookinfo-{engine}"),
                      "--engine", engine) as mesh:
        yield mesh
