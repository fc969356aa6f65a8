"""Hook implementations of the `config` plugin: the `files` config source and `apply`/`delete`.

The source (grpclib's server, the YAML parser and the Istio schemas) is
imported when the control plane builds it, not whenever the plugin loads.
"""

from __future__ import annotations

from knotwork import Component, hookimpl, lazy

from .commands import COMMANDS
from .settings import FilesSettings


@hookimpl
def knotwork_config_sources():
    return [Component(
        name="files", factory=lazy("knotwork_config.source:FilesSource"), settings=FilesSettings,
        description="Istio resources from the mesh's config/ folder (watched) and `knotwork apply`",
    )]


@hookimpl
def knotwork_cli_commands():
    return COMMANDS
