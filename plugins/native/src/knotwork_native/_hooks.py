"""Hook implementations of the `native` plugin."""

from knotwork import hookimpl  # noqa: F401
