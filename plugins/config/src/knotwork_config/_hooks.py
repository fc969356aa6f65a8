"""Hook implementations of the `config` plugin: the `files` config source and `apply`/`delete`."""

from __future__ import annotations

from knotwork import Component, hookimpl

from .commands import COMMANDS
from .settings import FilesSettings
from .source import FilesSource


@hookimpl
def knotwork_config_sources():
    return [Component(
        name="files", factory=FilesSource, settings=FilesSettings,
        description="Istio resources from the mesh's config/ folder (watched) and `knotwork apply`",
    )]


@hookimpl
def knotwork_cli_commands():
    return COMMANDS
