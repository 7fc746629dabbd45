"""Per-asset freshness read from the run store at scrape time, not from events seen.

A process that just started (or never ran an asset) still exports when each asset was
last materialized, the newest materialized partition key's time, and how many partitions
of the declared set are missing, because :class:`FreshnessCollector` asks the store.

Stores that implement :class:`FreshnessReads` answer with two bounded queries per asset;
any other store is read through ``list_materializations`` (newest :data:`FALLBACK_LIMIT`
records per asset). Results are cached for ``refresh_seconds`` so frequent scrapes do not
load the database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as dtime
from typing import Any, Final, Protocol, runtime_checkable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from flowstone.partitions import decode_partition, encode_partition
from flowstone.protocols import BulkRunReads
from flowstone_observability.metrics import METRICS

__all__ = ["BACKLOG_RUNS", "FALLBACK_LIMIT", "AssetFreshness", "Backlog", "FreshnessCollector",
           "FreshnessReads", "read_backlog", "read_freshness"]

log = logging.getLogger("flowstone.observability")

FALLBACK_LIMIT: Final = 10_000
"""Records per asset read through ``list_materializations`` when the store has no
:class:`FreshnessReads`."""


@runtime_checkable
class FreshnessReads(Protocol):
    """Optional run-store capability: the two bounded reads freshness needs.

    Only succeeded, not invalidated materializations count.
    """

    def last_materialized(self, pipeline: str) -> dict[str, datetime]:
        """``{asset: finished_at}`` of each asset's newest valid materialization."""
        ...

    def materialized_partitions(self, pipeline: str, asset: str) -> list[str]:
        """The distinct encoded partitions of ``asset`` with a valid materialization."""
        ...


@dataclass(frozen=True, slots=True)
class AssetFreshness:
    """What the store says about one asset.

    Attributes:
        asset: the asset name.
        last_materialized: finish time of the newest valid materialization, or None.
        newest_partition: time of the newest materialized time-partition key, or None.
        materialized: number of partitions with a valid materialization (None when the
            asset is not partitioned).
        missing: partitions of the declared set (up to now) without one (None without a
            declared set).
    """

    asset: str
    last_materialized: datetime | None
    newest_partition: datetime | None
    materialized: int | None
    missing: int | None


def read_freshness(pipeline: Any, now: datetime | None = None) -> list[AssetFreshness]:
    """Freshness of every asset of ``pipeline``, read from its store."""
    store = pipeline.store
    at = now or datetime.now(UTC)
    fast = isinstance(store, FreshnessReads)
    last = store.last_materialized(pipeline.name) if fast else None
    out: list[AssetFreshness] = []
    for name in pipeline.dag.order:
        a = pipeline.dag[name]
        partitioned = a.partitions is not None
        if fast:
            assert last is not None
            latest = last.get(name)
            keys = [k for k in store.materialized_partitions(pipeline.name, name) if k]
            partitioned = partitioned or bool(keys)
        else:
            records = [
                m for m in store.list_materializations(pipeline.name, asset=name,
                                                       limit=FALLBACK_LIMIT)
                if m.state == "succeeded" and not m.invalidated
            ]
            stamps = [m.finished_at for m in records if m.finished_at is not None]
            latest = max(stamps) if stamps else None
            keys = sorted({m.partition for m in records if m.partition})
            partitioned = partitioned or bool(keys)
        out.append(_summarise(name, a.partitions, latest, keys if partitioned else None, at))
    return out


@dataclass(frozen=True, slots=True)
class Backlog:
    """Steps waiting for a worker, per pipeline (from ``RunStore.stale_steps``)."""

    ready: int
    oldest_ready_seconds: float
    expired_leases: int


BACKLOG_RUNS: Final = 1000
"""At most this many distinct runs are looked up to attribute waiting steps to pipelines."""


def read_backlog(store: Any, now: datetime | None = None) -> dict[str, Backlog]:
    """``{pipeline: Backlog}`` for every pipeline with waiting steps in ``store``."""
    at = now or datetime.now(UTC)
    steps = store.stale_steps(at, ready_for_seconds=0.0)
    run_ids = list(dict.fromkeys(s.run_id for s in steps))[:BACKLOG_RUNS]
    if isinstance(store, BulkRunReads):
        runs = {r.run_id: r.pipeline for r in store.get_runs(run_ids)}
    else:
        runs = {i: r.pipeline for i in run_ids if (r := store.get_run(i)) is not None}
    ready: dict[str, list[float]] = {}
    expired: dict[str, int] = {}
    for step in steps:
        pipeline = runs.get(step.run_id)
        if pipeline is None:
            continue
        if step.state == "ready":
            since = step.not_before or step.updated_at
            age = (at - since).total_seconds() if since is not None else 0.0
            ready.setdefault(pipeline, []).append(max(0.0, age))
        else:
            expired[pipeline] = expired.get(pipeline, 0) + 1
    return {
        name: Backlog(len(ready.get(name, [])), max(ready.get(name, [0.0])),
                      expired.get(name, 0))
        for name in set(ready) | set(expired)
    }


def _summarise(asset: str, declared: Any, latest: datetime | None,
               keys: Sequence[str] | None, now: datetime) -> AssetFreshness:
    if keys is None:
        return AssetFreshness(asset, latest, None, None, None)
    newest = max((t for t in (_key_time(k) for k in keys) if t is not None), default=None)
    missing = None
    if declared is not None:
        have = set(keys)
        missing = sum(1 for k in declared.keys(now) if encode_partition(k) not in have)
    return AssetFreshness(asset, latest, newest, len(keys), missing)


def _key_time(encoded: str) -> datetime | None:
    """The time a partition key stands for: a datetime, a date (midnight UTC), or the first
    such element of a multi-dimensional key; None for keys without time."""
    try:
        key = decode_partition(encoded)
    except Exception:
        return None
    parts: Iterable[object] = key if isinstance(key, tuple) else (key,)
    for part in parts:
        if isinstance(part, datetime):
            return part if part.tzinfo else part.replace(tzinfo=UTC)
        if isinstance(part, date):
            return datetime.combine(part, dtime(0), tzinfo=UTC)
    return None


_SPECS = {spec.name: spec for spec in METRICS if spec.source == "store"}


class FreshnessCollector(Collector):
    """A prometheus-client collector exporting the ``store`` metrics of some pipelines.

    Args:
        pipelines: the pipelines whose stores are read.
        refresh_seconds: results are reused for this long between scrapes.
    """

    def __init__(self, pipelines: Sequence[Any], *, refresh_seconds: float = 15.0) -> None:
        self._pipelines = list(pipelines)
        self._refresh = float(refresh_seconds)
        self._lock = threading.Lock()
        self._cached: tuple[float, list[GaugeMetricFamily]] | None = None

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # registering must not read the store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self._refresh:
                self._cached = (now, self._read())
            families = self._cached[1]
        yield from families

    def _family(self, name: str) -> GaugeMetricFamily:
        spec = _SPECS[name]
        return GaugeMetricFamily(name, spec.help, labels=list(spec.labels))

    def _read(self) -> list[GaugeMetricFamily]:
        last = self._family("flowstone_asset_last_materialized_timestamp_seconds")
        newest = self._family("flowstone_asset_newest_partition_timestamp_seconds")
        have = self._family("flowstone_asset_materialized_partitions")
        missing = self._family("flowstone_asset_missing_partitions")
        pending = self._family("flowstone_approvals_pending")
        up = self._family("flowstone_store_up")
        ready = self._family("flowstone_steps_ready")
        oldest = self._family("flowstone_steps_ready_oldest_seconds")
        expired = self._family("flowstone_leases_expired")
        backlogs: dict[int, dict[str, Backlog]] = {}  # one read per store
        for pipeline in self._pipelines:
            try:
                rows = read_freshness(pipeline)
                waiting = len(pipeline.store.list_approvals(pipeline=pipeline.name,
                                                            status="pending"))
                key = id(pipeline.store)
                if key not in backlogs:
                    backlogs[key] = read_backlog(pipeline.store)
                backlog = backlogs[key].get(pipeline.name, Backlog(0, 0.0, 0))
            except Exception as exc:
                log.warning("reading freshness of pipeline %s failed: %s: %s", pipeline.name,
                            type(exc).__name__, exc)
                up.add_metric([pipeline.name], 0.0)
                continue
            up.add_metric([pipeline.name], 1.0)
            pending.add_metric([pipeline.name], float(waiting))
            ready.add_metric([pipeline.name], float(backlog.ready))
            oldest.add_metric([pipeline.name], backlog.oldest_ready_seconds)
            expired.add_metric([pipeline.name], float(backlog.expired_leases))
            for row in rows:
                labels = [pipeline.name, row.asset]
                if row.last_materialized is not None:
                    last.add_metric(labels, row.last_materialized.timestamp())
                if row.newest_partition is not None:
                    newest.add_metric(labels, row.newest_partition.timestamp())
                if row.materialized is not None:
                    have.add_metric(labels, float(row.materialized))
                if row.missing is not None:
                    missing.add_metric(labels, float(row.missing))
        return [last, newest, have, missing, pending, ready, oldest, expired, up]
