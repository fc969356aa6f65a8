"""Knotwork plugin `local`: the default platform, workloads as processes on loopback.

`knotwork up DIR` supervises the control plane, every workload instance, one
sidecar per instance and an ingress gateway; the platform component inside
the control plane follows `up`'s state and pushes platform snapshots.
"""

from .platform import LocalPlatform, build_snapshot
from .settings import LocalSettings

__all__ = ["LocalPlatform", "LocalSettings", "build_snapshot"]
