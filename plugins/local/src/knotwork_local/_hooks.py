"""Hook implementations of the `local` plugin."""

from __future__ import annotations

from knotwork import Component, hookimpl

from .commands import COMMANDS
from .platform import LocalPlatform
from .settings import LocalSettings


@hookimpl
def knotwork_platforms():
    return [Component(
        name="local", factory=LocalPlatform, settings=LocalSettings,
        description="workloads as processes on this machine (`knotwork up`), discovered from up's state socket",
    )]


@hookimpl
def knotwork_cli_commands():
    return COMMANDS
