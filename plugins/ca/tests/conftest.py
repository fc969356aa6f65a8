"""Fixtures of the `ca` plugin's tests (helpers that make certificates are in ca_helpers)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib runs on asyncio only
