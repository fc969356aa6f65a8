"""Hook implementations of the `config` plugin: the `files` config source and `apply`/`delete`.

The source (grpclib's server, the YAML parser and the Istio schemas) is
imported when the control plane builds it, not whenever the plugin loads.
"""

from __future__ import annotations

from typing import Any

from knotwork import Component, ComponentContext, hookimpl

from .commands import COMMANDS
from .settings import FilesSettings


def files_source(ctx: ComponentContext) -> Any:
    from .source import FilesSource

    return FilesSource(ctx)


@hookimpl
def knotwork_config_sources():
    return [Component(
        name="files", factory=files_source, settings=FilesSettings,
        description="Istio resources from the mesh's config/ folder (watched) and `knotwork apply`",
    )]


@hookimpl
def knotwork_cli_commands():
    return COMMANDS
