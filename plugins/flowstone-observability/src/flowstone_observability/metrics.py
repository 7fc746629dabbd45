"""Every metric this plugin exports, declared once: the observer, the store collector, the
docs' reference table and the dashboard test all read :data:`METRICS`.

Labels are bounded by construction: pipeline and asset names (fixed by the pipeline
definitions), and small closed sets (status, op, kind, role, transport). Partitions and run
ids are never labels: a 10,000-partition backfill adds no series.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["METRICS", "MetricSpec", "Metrics", "exported_names"]

Kind = Literal["counter", "gauge", "histogram"]
Source = Literal["events", "store", "process"]

# seconds: from a 5 ms asset to an hour-long one
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                           60.0, 300.0, 900.0, 3600.0)
LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported metric.

    Attributes:
        name: the metric name (counters are exported with ``_total`` appended).
        kind: counter, gauge or histogram.
        labels: its label names (all bounded).
        help: what it measures.
        source: ``events`` (this process's observer), ``store`` (read from the run store at
            scrape time) or ``process`` (the serving process: sweeps, lineage export).
        mode: the multiprocess mode of a gauge (how worker processes' values combine).
    """

    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str
    source: Source
    mode: str = "livesum"

    def samples(self) -> tuple[str, ...]:
        """The sample names this metric appears as in the exposition."""
        if self.kind == "counter":
            return (f"{self.name}_total",)
        if self.kind == "histogram":
            return tuple(f"{self.name}{s}" for s in ("_bucket", "_sum", "_count"))
        return (self.name,)


_PA = ("pipeline", "asset")

METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec("flowstone_runs_started", "counter", ("pipeline",), "Runs started.", "events"),
    MetricSpec("flowstone_runs_finished", "counter", ("pipeline", "status"),
               "Runs that settled, by final status (succeeded, failed, cancelled).", "events"),
    MetricSpec("flowstone_materializations", "counter", (*_PA, "status"),
               "Asset steps finished, by status (succeeded, failed, skipped).", "events"),
    MetricSpec("flowstone_materialization_duration_seconds", "histogram", _PA,
               "Time from an asset step's start to its recorded outcome.", "events"),
    MetricSpec("flowstone_retries", "counter", _PA,
               "Attempts that failed and were scheduled again (RetryPolicy or Retry()).", "events"),
    MetricSpec("flowstone_lease_takeovers", "counter", _PA,
               "Steps claimed after another owner's lease expired (a worker died).", "events"),
    MetricSpec("flowstone_queue_lag_seconds", "histogram", ("pipeline",),
               "Time from a step becoming ready to a worker claiming it.", "events"),
    MetricSpec("flowstone_io_operations", "counter", (*_PA, "op", "io_manager"),
               "Values stored or loaded by IO managers (op: store, load).", "events"),
    MetricSpec("flowstone_io_duration_seconds", "histogram", ("pipeline", "op"),
               "Time an IO manager took to store or load values.", "events"),
    MetricSpec("flowstone_io_bytes", "counter", (*_PA, "op"),
               "Encoded bytes stored or loaded (when the IO manager reports sizes).", "events"),
    MetricSpec("flowstone_scatter_items", "counter", (*_PA, "state"),
               "Scatter items finished, by state (succeeded, failed); rate() is throughput.",
               "events"),
    MetricSpec("flowstone_scatter_progress_ratio", "gauge", _PA,
               "Barrier progress of the most recent scatter of the asset (done / total).",
               "events", mode="mostrecent"),
    MetricSpec("flowstone_parallel_branches", "counter", (*_PA, "status"),
               "Parallel branch finals finished (asset is the joining asset).", "events"),
    MetricSpec("flowstone_parallel_joins", "counter", (*_PA, "status"),
               "Parallel joins finished.", "events"),
    MetricSpec("flowstone_route_decisions", "counter", (*_PA, "branch"),
               "Router decisions, by chosen branch.", "events"),
    MetricSpec("flowstone_waits_opened", "counter", (*_PA, "kind"),
               "Approvals requested and signal gates opened (kind: approval, gate).", "events"),
    MetricSpec("flowstone_waits_closed", "counter", (*_PA, "kind", "outcome"),
               "Approvals decided and gates signaled or expired.", "events"),
    MetricSpec("flowstone_observer_errors", "counter", ("pipeline", "observer", "kind"),
               "Observer failures reported by the engine (kind: the event that failed).",
               "events"),
    MetricSpec("flowstone_lineage_events", "counter", ("transport", "type"),
               "OpenLineage events delivered (type: START, COMPLETE, FAIL, ABORT).", "process"),
    MetricSpec("flowstone_lineage_errors", "counter", ("transport",),
               "OpenLineage events that could not be built or delivered after retries.",
               "process"),
    MetricSpec("flowstone_lineage_dropped", "counter", ("transport",),
               "OpenLineage events dropped because the bounded buffer was full.", "process"),
    MetricSpec("flowstone_lineage_buffer", "gauge", ("transport",),
               "OpenLineage events waiting in the buffer.", "process"),
    MetricSpec("flowstone_sweeps", "counter", ("pipeline", "role"),
               "Daemon ticks and sweeper passes (role: daemon, sweeper).", "process"),
    MetricSpec("flowstone_recoveries", "counter", ("role",),
               "Steps re-dispatched by recovery (lost messages, dead workers), by the daemon "
               "or a sweeper.", "process"),
    MetricSpec("flowstone_heartbeat_timestamp_seconds", "gauge", ("role",),
               "When this daemon or sweeper last completed a pass (Unix time).", "process",
               mode="mostrecent"),
    MetricSpec("flowstone_asset_last_materialized_timestamp_seconds", "gauge", _PA,
               "When the newest valid succeeded materialization finished (from the store).",
               "store"),
    MetricSpec("flowstone_asset_newest_partition_timestamp_seconds", "gauge", _PA,
               "Time of the newest materialized partition key of a time-partitioned asset.",
               "store"),
    MetricSpec("flowstone_asset_materialized_partitions", "gauge", _PA,
               "Partitions with a valid succeeded materialization (from the store).", "store"),
    MetricSpec("flowstone_asset_missing_partitions", "gauge", _PA,
               "Partitions of the declared set (up to now) with no valid materialization.",
               "store"),
    MetricSpec("flowstone_steps_ready", "gauge", ("pipeline",),
               "Steps ready (and due) but not claimed by a worker yet (from the store).",
               "store"),
    MetricSpec("flowstone_steps_ready_oldest_seconds", "gauge", ("pipeline",),
               "How long the oldest ready step has waited for a worker: queue lag as the "
               "store sees it.", "store"),
    MetricSpec("flowstone_leases_expired", "gauge", ("pipeline",),
               "Running steps whose owner's lease expired (the sweeper will take them over).",
               "store"),
    MetricSpec("flowstone_approvals_pending", "gauge", ("pipeline",),
               "Approvals waiting for a decision (from the store).", "store"),
    MetricSpec("flowstone_store_up", "gauge", ("pipeline",),
               "1 if the last scrape could read the run store, else 0.", "store"),
)


def exported_names() -> frozenset[str]:
    """Every sample name a scrape can contain (what dashboards may refer to)."""
    return frozenset(s for spec in METRICS for s in spec.samples())


class Metrics:
    """The prometheus-client objects for the ``events`` and ``process`` metrics.

    One instance per registry; :meth:`shared` gives the process-wide one registered in
    prometheus-client's default registry (what multiprocess mode aggregates).
    """

    __slots__ = ("_flush", "by_name", "registry")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        # registered before the metrics: a registry collects in registration order, so the
        # observers' buffered events are recorded before any of these metrics is read
        self._flush = _FlushFirst()
        self.registry.register(self._flush)
        self.by_name: dict[str, Counter | Gauge | Histogram] = {}
        for spec in METRICS:
            if spec.source == "store":
                continue
            self.by_name[spec.name] = _build(spec, self.registry)

    def flush_before_collect(self, flush: Callable[[], object]) -> None:
        """Call ``flush`` (a bound method of an observer, held weakly) whenever the
        registry is collected."""
        self._flush.add(flush)

    def counter(self, name: str) -> Counter:
        metric = self.by_name[name]
        assert isinstance(metric, Counter)
        return metric

    def gauge(self, name: str) -> Gauge:
        metric = self.by_name[name]
        assert isinstance(metric, Gauge)
        return metric

    def histogram(self, name: str) -> Histogram:
        metric = self.by_name[name]
        assert isinstance(metric, Histogram)
        return metric

    @classmethod
    def shared(cls) -> Metrics:
        """The process-wide metrics (created on first use)."""
        with _SHARED_LOCK:
            if not _SHARED:
                from prometheus_client import REGISTRY

                _SHARED.append(cls(REGISTRY))
            return _SHARED[0]


class _FlushFirst(Collector):
    """Exports nothing; collecting it records the observers' buffered events (see
    :mod:`flowstone_observability.observer`)."""

    def __init__(self) -> None:
        # weakly: an observer no pipeline uses any more is not kept alive by its metrics
        self._flushes: list[weakref.WeakMethod[Callable[[], object]]] = []

    def add(self, flush: Callable[[], object]) -> None:
        self._flushes = [f for f in self._flushes if f() is not None]
        self._flushes.append(weakref.WeakMethod(flush))

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for ref in list(self._flushes):
            flush = ref()
            if flush is not None:
                flush()
        return iter(())


def _build(spec: MetricSpec, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
    if spec.kind == "counter":
        return Counter(spec.name, spec.help, spec.labels, registry=registry)
    if spec.kind == "histogram":
        buckets = LAG_BUCKETS if "lag" in spec.name else DURATION_BUCKETS
        return Histogram(spec.name, spec.help, spec.labels, registry=registry, buckets=buckets)
    return Gauge(spec.name, spec.help, spec.labels, registry=registry,
                 multiprocess_mode=spec.mode)  # type: ignore[arg-type]


# the one process-wide instance (a list so the module holds no rebindable global)
_SHARED: list[Metrics] = []
_SHARED_LOCK = threading.Lock()
