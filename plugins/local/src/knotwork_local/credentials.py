"""One-time bootstrap credentials: `up` issues them, the control plane redeems them.

Before each spawn of a proxy (first start and every restart) `up` makes a
fresh random credential, hands it to that process alone (environment
variable ``KNOTWORK_CREDENTIAL``) and publishes only its SHA-256 in the state
document, with the node id and SPIFFE ID it was issued for. Inside the
control plane, :class:`~knotwork_local.platform.LocalPlatform` feeds every
state document to a :class:`CredentialBook`; the plugin's
``knotwork_attest_workload`` hook redeems a proxy's credential there, once.

The book's rules:

- Outstanding credentials are exactly those of the latest state document.
  A proxy that exited or was restarted has a new credential (or none), so the
  credential of an older spawn is dead the moment `up` says so.
- A redeemed hash is written to a 0600 file in the state directory before
  the identity is returned: a restarted control plane still refuses it. Only
  hashes still outstanding are kept there, so the file holds at most one per
  proxy.
- Hashes are looked up, never compared byte by byte: a guess must hit the
  SHA-256 of a 256-bit random token.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import structlog

from knotwork.model import Identity

__all__ = ["REDEEMED_FILE", "CredentialBook", "Grant", "attest", "fingerprint", "grants_of", "issue", "registered"]

log = structlog.get_logger("knotwork.local", plugin="local")

#: Where the control plane keeps the hashes of redeemed credentials (in the mesh's state directory).
REDEEMED_FILE = "local-credentials-redeemed.json"
#: How many credentials of exited or restarted proxies are remembered, to refuse them by name.
RETIRED_MAX = 1024


def fingerprint(credential: str) -> str:
    """The SHA-256 (hex) the state document carries for `credential`."""
    return hashlib.sha256(credential.encode()).hexdigest()


def issue() -> tuple[str, str]:
    """A fresh credential and its fingerprint."""
    credential = secrets.token_urlsafe(32)
    return credential, fingerprint(credential)


@attrs.frozen
class Grant:
    """What a credential was issued for."""

    node: str
    identity: str


def grants_of(doc: Mapping[str, Any]) -> dict[str, Grant]:
    """Every credential a state document announces: fingerprint -> grant (sidecars and the gateway)."""
    owners = [(inst, inst.get("sidecar") or {}) for inst in doc.get("instances", ())]
    gateway = doc.get("gateway") or {}
    owners.append((gateway, gateway))
    grants: dict[str, Grant] = {}
    for owner, proc in owners:
        digest = proc.get("credential_sha256")
        if digest:
            grants[str(digest)] = Grant(str(owner["node"]), str(owner["identity"]))
    return grants


class CredentialBook:
    """The outstanding and redeemed bootstrap credentials of one mesh, in the control plane.

    `path`: the file of redeemed hashes (None: memory only, for tests).
    Called from the control plane's event loop; a lock keeps it whole should
    a caller use a worker thread.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._grants: dict[str, Grant] = {}
        self._retired: OrderedDict[str, Grant] = OrderedDict()
        self._redeemed: set[str] = self._load()

    def knows(self, digest: str) -> bool:
        with self._lock:
            return digest in self._grants or digest in self._retired

    def update(self, doc: Mapping[str, Any]) -> None:
        """Take the credentials of the latest state document; earlier ones not in it are dead."""
        grants = grants_of(doc)
        with self._lock:
            for digest, grant in self._grants.items():
                if digest not in grants:
                    self._retired[digest] = grant
                    self._retired.move_to_end(digest)
            while len(self._retired) > RETIRED_MAX:
                self._retired.popitem(last=False)
            self._grants = grants
            kept = self._redeemed & grants.keys()
            if kept != self._redeemed:
                try:
                    self._save(kept)
                except OSError as exc:  # the stale entries only cost space
                    log.warning("cannot prune redeemed credentials", path=str(self.path), error=str(exc))
                self._redeemed = kept

    def redeem(self, credential: str, node_id: str, identity: str) -> Identity:
        """The identity `credential` proves for `node_id`; it cannot be redeemed again.

        Raises ValueError: unknown (or not yet announced) credential, a
        credential of a proxy that has exited or restarted, one already used,
        or one issued for another node or identity (nothing is spent then).
        """
        digest = fingerprint(credential)
        with self._lock:
            grant = self._grants.get(digest)
            if grant is None:
                old = self._retired.get(digest)
                if old is not None:
                    raise ValueError(f"bootstrap credential no longer valid: the proxy it was issued to ({old.node}) "
                                     "has exited or restarted since")
                raise ValueError("unknown bootstrap credential")
            if digest in self._redeemed:
                raise ValueError("bootstrap credential already used")
            if (node_id, identity) != (grant.node, grant.identity):
                raise ValueError(f"bootstrap credential was issued to node {grant.node} as {grant.identity}, "
                                 f"not to node {node_id} as {identity}")
            proven = Identity.parse(grant.identity)
            try:
                self._save(self._redeemed | {digest})
            except OSError as exc:  # refuse rather than hand out a credential a restart would accept again
                raise ValueError(f"cannot record the redeemed bootstrap credential ({exc}); try again") from None
            self._redeemed.add(digest)
        log.info("bootstrap credential redeemed", node=node_id, identity=identity)
        return proven

    # -- the file of redeemed hashes -----------------------------------------
    def _load(self) -> set[str]:
        if self.path is None:
            return set()
        try:
            data = json.loads(self.path.read_text())
            return {str(d) for d in data["redeemed"]}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("cannot read redeemed credentials; starting without", path=str(self.path), error=str(exc))
            return set()

    def _save(self, redeemed: set[str]) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"redeemed": sorted(redeemed)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


# ── from the hook to the running platform's book ────────────────────────────
#
# A pluggy hook implementation is a module-level function called with the
# claim alone, while the book belongs to the LocalPlatform component that the
# kernel built and runs in this control plane: nothing else connects them.
# The component registers its book here while it runs (not at import time)
# and takes it out when it stops. With several books in one process (two
# control planes in a test) each answers only for the credentials it was told of.

_books: list[CredentialBook] = []


@contextlib.contextmanager
def registered(book: CredentialBook) -> Iterator[CredentialBook]:
    """Make `book` answer the attestation hook while the block runs."""
    _books.append(book)
    try:
        yield book
    finally:
        _books.remove(book)


def attest(claim: Any) -> Identity:
    """Redeem a local platform claim (`claim.platform == "local"`) in the book that issued it."""
    if not _books:
        raise ValueError("unknown bootstrap credential "
                         "(the local platform is not running in this control plane)")
    digest = fingerprint(claim.credential)
    book = next((b for b in _books if b.knows(digest)), _books[-1])
    return book.redeem(claim.credential, claim.node_id, claim.identity)
