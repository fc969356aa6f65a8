"""Knotwork plugin `local`: the default platform, workloads as processes on loopback.

`knotwork up DIR` supervises the control plane, every workload instance, one
sidecar per instance and an ingress gateway; the platform component inside
the control plane follows `up`'s state and pushes platform snapshots.
"""

from typing import Any

from .settings import LocalSettings

__all__ = ["LocalPlatform", "LocalSettings", "build_snapshot"]


def __getattr__(name: str) -> Any:
    # The platform component is imported on first use: loading the plugin (`_hooks`) must stay cheap.
    if name in ("LocalPlatform", "build_snapshot"):
        from . import platform

        value = getattr(platform, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
