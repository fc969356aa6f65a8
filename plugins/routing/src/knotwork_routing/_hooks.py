"""Hook implementations of the `routing` plugin."""

from knotwork import hookimpl  # noqa: F401
