"""``UIState``: what the server holds while it runs: the pipelines it shows, the reads of
their store, the auth, the backfills it started, scatter rates and partition keys."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flowstone.defaults.sqlite_store import SQLiteRunStore
from flowstone.errors import RunNotFoundError, UsageError
from flowstone.partitions import PartitionKey, PartitionSet, encode_partition
from flowstone.pipeline import Pipeline
from flowstone.records import RunRecord
from flowstone_ui.auth import Auth
from flowstone_ui.backfills import BackfillJobs
from flowstone_ui.queries import UIQueries, queries_for

__all__ = ["KeyCache", "ScatterRates", "UIState"]

KEYS_TTL = 60.0
"""Seconds a partition set's key list is reused (time-based sets grow with the clock)."""


class ScatterRates:
    """Recent ``(time, done)`` samples per scatter, for its rate and ETA (bounded)."""

    def __init__(self, *, keep: int = 1000, samples: int = 30) -> None:
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, str, str], deque[tuple[float, int]]] = OrderedDict()
        self._keep, self._samples = keep, samples

    def observe(self, key: tuple[str, str, str], done: int) -> float | None:
        """Record ``done`` items now; the items per second since the oldest sample kept."""
        now = time.monotonic()
        with self._lock:
            seen = self._seen.pop(key, None) or deque(maxlen=self._samples)
            if not seen or seen[-1][1] != done or now - seen[-1][0] > 1.0:
                seen.append((now, done))
            self._seen[key] = seen
            while len(self._seen) > self._keep:
                self._seen.popitem(last=False)
            (t0, d0), (t1, d1) = seen[0], seen[-1]
        if t1 - t0 < 0.5 or d1 <= d0:
            return None
        return (d1 - d0) / (t1 - t0)


class KeyCache:
    """A partition set's keys (and their encodings), listed at most every ``KEYS_TTL``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[float, list[PartitionKey], list[str]]] = {}

    def keys(self, parts: PartitionSet) -> tuple[list[PartitionKey], list[str]]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(id(parts))
        if hit is not None and now - hit[0] < KEYS_TTL:
            return hit[1], hit[2]
        keys = parts.keys()
        encoded = [encode_partition(k) for k in keys]
        with self._lock:
            self._cache[id(parts)] = (now, keys, encoded)
        return keys, encoded


@dataclass(slots=True)
class UIState:
    """The server's state (built by :func:`~flowstone_ui.app.create_app`)."""

    pipelines: dict[str, Pipeline]
    queries: UIQueries
    auth: Auth
    backfills: BackfillJobs = field(default_factory=BackfillJobs)
    rates: ScatterRates = field(default_factory=ScatterRates)
    keys: KeyCache = field(default_factory=KeyCache)

    @classmethod
    def build(cls, pipelines: Sequence[Pipeline], auth: Auth) -> UIState:
        """Check that the pipelines share one store and index them by name.

        Raises:
            UsageError: no pipelines, two with one name, or pipelines on different stores.
        """
        if not pipelines:
            raise UsageError("flowstone ui needs at least one pipeline (FILE.py:PIPELINE)")
        by_name: dict[str, Pipeline] = {}
        for p in pipelines:
            if not isinstance(p, Pipeline):
                raise UsageError(f"expected flowstone Pipelines, got {type(p).__name__}")
            if p.name in by_name:
                raise UsageError(f"two pipelines are named {p.name!r}; names must be unique")
            by_name[p.name] = p
        first = pipelines[0]
        where = {_store_identity(p) for p in pipelines}
        if len(where) > 1:
            raise UsageError(
                "the pipelines use different run stores "
                f"({', '.join(sorted(where))}); start one `flowstone ui` per store"
            )
        return cls(by_name, queries_for(first.store), auth)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.pipelines)

    def pipeline(self, name: str) -> Pipeline:
        """The pipeline called ``name``.

        Raises:
            RunNotFoundError: this server does not show a pipeline of that name.
        """
        found = self.pipelines.get(name)
        if found is None:
            raise RunNotFoundError(
                f"no pipeline {name!r} here; this server shows {', '.join(self.pipelines)}"
            )
        return found

    def run(self, run_id: str) -> tuple[Pipeline, RunRecord]:
        """A run of one of the pipelines, and its pipeline.

        Raises:
            RunNotFoundError: no such run, or it belongs to a pipeline not shown here.
        """
        if len(run_id) > 200:
            raise RunNotFoundError("run ids are at most 200 characters")
        record = next(iter(self.pipelines.values())).store.get_run(run_id)
        if record is None or record.pipeline not in self.pipelines:
            raise RunNotFoundError(f"no run {run_id!r} of the pipelines shown here")
        return self.pipelines[record.pipeline], record


def _store_identity(p: Pipeline) -> str:
    if isinstance(p.store, SQLiteRunStore) and p.store.path != ":memory:":
        return f"sqlite:{Path(p.store.path).resolve()}"
    if p.store_url is not None and not p.store_url.startswith(("memory:", "sqlite:///:memory:")):
        return p.store_url
    return f"{p.store!r} at {id(p.store):#x}"  # private to this object
