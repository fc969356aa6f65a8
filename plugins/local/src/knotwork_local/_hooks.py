"""Hook implementations of the `local` plugin."""

from knotwork import hookimpl  # noqa: F401
