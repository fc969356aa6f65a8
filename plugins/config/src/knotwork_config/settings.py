"""Settings of the `files` config source: the `files:` section of the mesh file."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["FilesSettings"]


def _positive(_: Any, __: Any, value: float) -> None:
    if not value > 0:
        raise ValueError(f"expected a number > 0, got {value}")


@attrs.frozen
class FilesSettings:
    """Where Istio resources are read from, and how often the folder is polled."""

    directory: str = attrs.field(
        default="config", metadata={"help": "folder of *.yaml/*.yml Istio resources, relative to the mesh directory"})
    poll_interval: float = attrs.field(
        default=0.2, validator=_positive, metadata={"help": "seconds between two scans of the folder's files"})
