"""Fixtures of the telemetry plugin's tests."""

from __future__ import annotations

import pytest

from knotwork_telemetry.store import store


@pytest.fixture(autouse=True)
def fresh_store():
    """Every test starts from zero: the store is process-wide, as in a proxy."""
    store().clear()
    yield
    store().clear()
