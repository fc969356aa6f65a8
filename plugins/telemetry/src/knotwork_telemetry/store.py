"""The process-wide metric store and its ``prometheus_client`` collector.

Series are plain lists, found once per label set and then incremented in
place by the sinks: a counter is ``[value]``; a histogram is
``[count, sum, n_0, …, n_k]`` with ``n_i`` the observations in bucket *i*
(not cumulative; the last one is ``+Inf``), so recording is two additions
and a :func:`bisect.bisect_left` on the precomputed bounds (a value equal to
a bound lands in that bound's bucket: ``le``). The collector turns them into
Prometheus families at scrape time; engines render
``prometheus_client.generate_latest(REGISTRY)`` — the only contract between
them and this plugin.

Series outlive configs: a listener's sinks are rebuilt on every push, the
counters they found stay. Label sets may differ between series of one family
(tag overrides per listener), which the text format allows.

Sinks record, they do not compute, per request: ``request_finished`` appends
one tuple of the raw values it needs to the process's :data:`PENDING` list
(its first item: the function that digests it) and :func:`flush` digests the
pending tuples — counter updates, access lines — in one tight loop, where the
code and the caches it reads stay warm (in a busy proxy the same work done
once between two requests took about five times as long). Flushes happen
:data:`FLUSH_DELAY` seconds after a tuple is queued on an event loop, when
:data:`PENDING_MAX` tuples wait, before every scrape (the collector flushes
first, so a scrape sees every request finished before it), and at exit.
Outside a running event loop (tests, tools) a tuple is digested at once.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

__all__ = ["FLUSH_DELAY", "PENDING", "PENDING_MAX", "Family", "Store", "after_flush", "flush", "queued", "store"]

#: seconds a queued tuple may wait for others before the pending tuples are digested
FLUSH_DELAY = 0.1
#: tuples waiting that are digested at once
PENDING_MAX = 4096
#: the process's pending tuples: ``(digest, *values)``, digested by ``digest(entry)`` in order
PENDING: list[tuple[Any, ...]] = []
_AFTER: list[Any] = []  # called after each flush (the access log writes its lines)


class _Timer:
    handle: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop | None = None


_timer = _Timer()
_flush_lock = threading.RLock()
#: tuples whose digest raised (a sink must never break the data path; counted, as the engines count sink errors)
errors = [0]


def queued() -> None:
    """Called by a sink after it appended to :data:`PENDING` the first tuple, or :data:`PENDING_MAX` of them:
    a flush soon (a timer on the running event loop), or now."""
    if len(PENDING) >= PENDING_MAX:
        flush()
        return
    timer = _timer
    if timer.handle is None or timer.loop.is_closed():  # type: ignore[union-attr]  # (set with the handle)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop here: nothing would come back to flush
            flush()
            return
        timer.handle, timer.loop = loop.call_later(FLUSH_DELAY, _timed), loop


def _timed() -> None:
    _timer.handle = None
    flush()


@atexit.register
def flush() -> None:
    """Digest every pending tuple now (in order), then let the outputs write what they queued."""
    with _flush_lock:  # scrapes may come from another thread; appends need no lock
        while PENDING:
            batch = PENDING[:]
            del PENDING[:len(batch)]  # (what was appended meanwhile stays)
            for entry in batch:
                try:
                    entry[0](entry)
                except Exception:  # noqa: BLE001 - one bad tuple must not lose the others
                    errors[0] += 1
        for after in _AFTER:
            after()


def after_flush(fn: Any) -> None:
    """Have `fn()` called at the end of every flush (once per `fn`)."""
    if fn not in _AFTER:
        _AFTER.append(fn)

LabelItems = tuple[tuple[str, str], ...]


@attrs.define(eq=False)
class Family:
    """One metric: its name (``_total`` excluded for counters), kind, help and series by label items."""

    name: str
    kind: str  # "counter" | "histogram"
    help: str
    bounds: tuple[float, ...] = ()
    le: tuple[str, ...] = ()  # the bounds as the `le` label writes them, then "+Inf"
    series: dict[LabelItems, list[float]] = attrs.field(factory=dict)

    def get(self, items: LabelItems) -> list[float]:
        """The series of a label set, created at zero."""
        found = self.series.get(items)
        if found is None:
            size = 1 if self.kind == "counter" else 3 + len(self.bounds)
            found = self.series.setdefault(items, [0] * size)
        return found

    def metric(self) -> Metric:
        metric = Metric(self.name, self.help, self.kind)
        for items, values in list(self.series.items()):
            labels = dict(items)
            if self.kind == "counter":
                metric.add_sample(self.name + "_total", labels, values[0])
                continue
            cumulative = 0
            for le, n in zip(self.le, values[2:], strict=True):
                cumulative += n
                metric.add_sample(self.name + "_bucket", {**labels, "le": le}, cumulative)
            metric.add_sample(self.name + "_count", labels, values[0])
            metric.add_sample(self.name + "_sum", labels, values[1])
        return metric


class Store:
    """Every family of this process, by name."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        self._lock = threading.Lock()

    def counter(self, name: str, help: str) -> Family:
        return self._family(name, "counter", help, (), None)

    def histogram(self, name: str, help: str, bounds: Sequence[float], le: Sequence[str] | None = None) -> Family:
        """A histogram; `le` writes the bounds (default: prometheus_client's float style)."""
        return self._family(name, "histogram", help, tuple(bounds), tuple(le) if le is not None else None)

    def _family(self, name: str, kind: str, help: str, bounds: tuple[float, ...], le: tuple[str, ...] | None) -> Family:
        with self._lock:
            found = self.families.get(name)
            if found is None:
                labels = le if le is not None else tuple(floatToGoString(b) for b in bounds)
                found = self.families[name] = Family(name, kind, help, bounds, (*labels, "+Inf") if bounds else ())
            elif found.kind != kind or found.bounds != bounds:
                raise ValueError(f"metric {name!r} is already a {found.kind} with other buckets")
            return found

    def clear(self) -> None:
        """Forget every series (tests)."""
        flush()
        for family in list(self.families.values()):
            family.series.clear()


class _Collector:
    """A ``prometheus_client`` custom collector over a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def describe(self) -> list[Any]:
        return []  # names vary with the naming in use; nothing to reserve at registration

    def collect(self) -> Iterator[Metric]:
        flush()  # every request finished so far is counted
        for family in list(self._store.families.values()):
            if family.series:
                yield family.metric()


_STORE: Store | None = None
_STORE_LOCK = threading.Lock()


def store() -> Store:
    """The process's store, registered in ``prometheus_client.REGISTRY`` on first use."""
    global _STORE
    if _STORE is None:
        with _STORE_LOCK:
            if _STORE is None:
                created = Store()
                REGISTRY.register(_Collector(created))
                _STORE = created
    return _STORE
