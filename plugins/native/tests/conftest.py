"""Shared fixtures of the native plugin's tests."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run `@pytest.mark.anyio` tests on asyncio (the native engine's loop)."""
    return "asyncio"
