"""A selection of the data plane tests again, on uvloop (the production loop)."""

from __future__ import annotations

from typing import Any

import pytest

from test_dataplane import (  # noqa: F401 - re-collected here with the uvloop backend
    test_config_swap_keeps_listener_connections_and_balancer,
    test_connect_tunnel,
    test_drain_finishes_in_flight_requests,
    test_http_proxy_absolute_form,
    test_routes_by_host_over_one_keepalive_connection,
    test_streams_a_large_response_with_flow_control,
    test_streams_a_large_upload,
    test_tcp_passthrough_with_half_close,
    test_upload_flow_control_pauses_the_client,
)
from test_dataplane_errors import (  # noqa: F401
    _clear_records,
    test_connection_failure_names_cluster_and_endpoint,
    test_per_try_timeout_retries_on_another_endpoint,
    test_reset_mid_response_is_ur,
    test_stale_pooled_connection_is_retried_transparently,
    test_upstream_reset_before_response_is_503_uc,
)

pytestmark = pytest.mark.anyio
uvloop = pytest.importorskip("uvloop")


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("asyncio", {"use_uvloop": True})
