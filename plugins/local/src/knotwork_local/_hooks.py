"""Hook implementations of the `local` plugin.

The platform component is imported when the control plane builds it, and each
command's implementation when it runs: every `knotwork` command loads this module.
"""

from __future__ import annotations

from knotwork import Component, hookimpl, lazy

from .commands import COMMANDS
from .settings import LocalSettings


@hookimpl
def knotwork_platforms():
    return [Component(
        name="local", factory=lazy("knotwork_local.platform:LocalPlatform"), settings=LocalSettings,
        description="workloads as processes on this machine (`knotwork up`), discovered from up's state socket",
    )]


@hookimpl
def knotwork_cli_commands():
    return COMMANDS
