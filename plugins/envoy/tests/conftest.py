"""Shared fixtures of the envoy plugin's tests."""

import warnings

import pytest

# envoy_data_plane's generated types trip pydantic deprecation warnings at import: import them once, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import envoy_data_plane.envoy.config.bootstrap.v3  # noqa: F401
    import envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections.v3  # noqa: F401
    import envoy_data_plane.envoy.service.discovery.v3  # noqa: F401
    import knotwork_envoy.server  # noqa: F401
    import knotwork_envoy.translate  # noqa: F401


@pytest.fixture
def anyio_backend() -> str:
    """Run `@pytest.mark.anyio` tests on asyncio (grpclib's loop)."""
    return "asyncio"
