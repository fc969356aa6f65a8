"""The merged config of the `files` source: accepted config/ files plus applied resources.

Every change is checked against everything else before it is accepted: a
resource defined in two places (two config/ files, or a config/ file and
``knotwork apply``) is refused, naming both; then `check` (the control
plane's trial compile) must find no problem with the whole result. A refused change leaves the
store as it was, so the last good config keeps serving. Applied resources
are persisted (atomic write) in ``.knotwork/applied/resources.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from knotwork.model import Resource, SourceRef

from .parse import ConfigError

__all__ = ["APPLIED_FILE", "Store"]

APPLIED_FILE = "resources.json"
Key = tuple[str, str, str]


def _where(res: Resource, applied: bool) -> str:
    return f"knotwork apply ({res.source})" if applied else str(res.source)


def _merged(files: dict[str, tuple[Resource, ...]], applied: dict[Key, Resource]) -> tuple[Resource, ...]:
    """config/ files in path order, then applied resources in the order they were first applied."""
    return (*(r for name in sorted(files) for r in files[name]), *applied.values())


class Store:
    """Accepted resources by origin; :meth:`resources` is what the snapshot carries."""

    def __init__(self, applied_dir: Path, check: Callable[[tuple[Resource, ...]], list[str]] | None = None) -> None:
        self.applied_dir = applied_dir
        self.files: dict[str, tuple[Resource, ...]] = {}  # config/ file -> its last accepted resources
        self.applied: dict[Key, Resource] = {}
        self.check = check or (lambda resources: [])

    def resources(self) -> tuple[Resource, ...]:
        """config/ files in path order, then applied resources in the order they were first applied."""
        return _merged(self.files, self.applied)

    def _checked(self, files: dict[str, tuple[Resource, ...]], applied: dict[Key, Resource]) -> None:
        problems = self.check(_merged(files, applied))
        if problems:
            raise ConfigError(problems)

    def _owners(self, *, skip_file: str | None = None) -> dict[Key, tuple[Resource, bool]]:
        owners: dict[Key, tuple[Resource, bool]] = {}
        for name, resources in self.files.items():
            if name != skip_file:
                for r in resources:
                    owners[r.key] = (r, False)
        for r in self.applied.values():
            owners.setdefault(r.key, (r, True))
        return owners

    # -- config/ files ----------------------------------------------------------
    def set_file(self, name: str, resources: Iterable[Resource]) -> None:
        """Accept `name`'s new content, or raise ConfigError (the store unchanged)."""
        resources = tuple(resources)
        owners = self._owners(skip_file=name)
        problems = [f"{r.source.file}: {r}: metadata.name: expected each resource in one place, got it defined "
                    f"both in {r.source} and in {_where(*owners[r.key])}" for r in resources if r.key in owners]
        if problems:
            raise ConfigError(problems)
        self._checked({**self.files, name: resources}, self.applied)
        self.files[name] = resources

    def remove_file(self, name: str) -> bool:
        return self.files.pop(name, None) is not None

    # -- knotwork apply / delete --------------------------------------------------
    def apply(self, resources: Iterable[Resource]) -> dict[str, str]:
        """Create or update applied resources; returns ``{"Kind/ns/name": "created"|"configured"|"unchanged"}``."""
        resources = list(resources)
        owners = self._owners()
        problems = [f"{r.source.file}: {r}: metadata.name: expected each resource in one place, got it defined "
                    f"both in {owners[r.key][0].source} and by knotwork apply ({r.source})"
                    for r in resources if r.key in owners and not owners[r.key][1]]
        if problems:
            raise ConfigError(problems)
        outcome: dict[str, str] = {}
        new = dict(self.applied)
        for r in resources:
            old = new.get(r.key)
            outcome[str(r)] = "created" if old is None else "unchanged" if old == r else "configured"
            new[r.key] = r
        if any(v != "unchanged" for v in outcome.values()):
            self._checked(self.files, new)
            self._save(new)
        self.applied = new
        return outcome

    def delete(self, resources: Iterable[Resource]) -> dict[str, str]:
        """Remove applied resources, all or none; returns ``{"Kind/ns/name": "deleted"}``."""
        resources = list(resources)
        owners = self._owners()
        problems = []
        for r in resources:
            owner = owners.get(r.key)
            if owner is None:
                problems.append(f"{r.source.file}: {r}: metadata.name: expected an applied resource, got one "
                                f"that is not applied (not found)")
            elif not owner[1]:
                problems.append(f"{r.source.file}: {r}: metadata.name: expected an applied resource, got one "
                                f"defined in {owner[0].source} (edit or remove that file instead)")
        if problems:
            raise ConfigError(problems)
        new = {k: v for k, v in self.applied.items() if k not in {r.key for r in resources}}
        self._checked(self.files, new)
        self._save(new)
        self.applied = new
        return {str(r): "deleted" for r in resources}

    # -- persistence ------------------------------------------------------------
    def _save(self, applied: dict[Key, Resource]) -> None:
        self.applied_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = [{"apiVersion": r.api_version, "kind": r.kind, "name": r.name, "namespace": r.namespace,
                "labels": dict(r.labels), "spec": r.spec, "source": {"file": r.source.file, "line": r.source.line}}
               for r in applied.values()]
        fd, tmp = tempfile.mkstemp(dir=self.applied_dir, prefix=".resources-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.applied_dir / APPLIED_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_applied(self) -> None:
        """Read the persisted applied resources (missing file: none)."""
        path = self.applied_dir / APPLIED_FILE
        try:
            doc: Any = json.loads(path.read_text())
        except FileNotFoundError:
            return
        self.applied = {}
        for item in doc:
            r = Resource(api_version=item["apiVersion"], kind=item["kind"], name=item["name"],
                         namespace=item["namespace"], spec=item["spec"], labels=item.get("labels") or {},
                         source=SourceRef(**item.get("source", {})))
            self.applied[r.key] = r
