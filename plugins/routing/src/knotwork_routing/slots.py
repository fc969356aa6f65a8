"""The slots of the ``networking`` compiler, in a module of their own: the
compiler's record needs them at start-up, long before (or without) any
compile, and :mod:`knotwork_routing.compile` is slow to import (Gateway TLS
needs ``cryptography``)."""

from __future__ import annotations

__all__ = ["SLOTS"]

#: The resource types this compiler creates (secrets: a Gateway's certificates, read from files).
SLOTS = frozenset({"listeners", "routes", "clusters", "endpoints", "secrets"})
