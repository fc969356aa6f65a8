"""Hook implementations of the `balancers` plugin."""

from knotwork import hookimpl  # noqa: F401
