"""``PrometheusObserver``: turns FlowStone events into Prometheus counters and histograms.

Add it to a pipeline (``Pipeline(..., observers=["prometheus"])`` or an instance), or let
``flowstone worker --metrics-port`` / ``flowstone daemon --metrics-port`` attach it to every
pipeline they serve. Per-asset freshness is not derived from events:
:mod:`flowstone_observability.freshness` reads it from the run store at scrape time.

Events are recorded in batches. ``on_event`` only appends the event to a buffer (the
engine's step threads pay an append, not prometheus-client's locks and label lookups with
cold caches between steps); the buffered events are turned into metric updates, in one
tight loop, when

* the buffer holds ``batch`` events (256 by default),
* a scrape collects a registry holding these metrics (``/metrics``,
  ``registry.get_sample_value``): what a scrape returns includes every event emitted before
  it began,
* :meth:`PrometheusObserver.flush` is called, and at interpreter exit, and
* in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``: a scrape reads files, so it cannot
  flush this process), at most ``FLUSH_SECONDS`` (1 s) after an event, by one background
  thread per process, and when a Celery pool process shuts down.

A failing update is logged and counted in ``flowstone_observer_errors``, never dropped
silently, and never breaks a scrape. A forked child drops the buffer it inherited (the
parent records those events).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from prometheus_client import CollectorRegistry

from flowstone.errors import UsageError
from flowstone.events import Event
from flowstone_observability.metrics import Metrics

__all__ = ["BATCH", "FLUSH_SECONDS", "PrometheusObserver", "attach"]

log = logging.getLogger("flowstone.observability")

BATCH: Final = 256  # buffered events recorded together
FLUSH_SECONDS: Final = 1.0  # multiprocess mode: the longest an event waits to be recorded

# how many (run, asset, partition) scatters' last counts are kept to turn cumulative
# progress into increments; the oldest is forgotten first, so memory stays bounded
_SCATTER_MEMORY: Final = 4096
_CLOSED = {"gate.signaled": ("gate", "signaled"), "gate.expired": ("gate", "expired")}
_FINISHED = {"asset.succeeded": "succeeded", "asset.failed": "failed", "asset.skipped": "skipped"}


class PrometheusObserver:
    """Records every event of the pipelines it observes as Prometheus metrics.

    Args:
        registry: where the metrics live; default: prometheus-client's process-wide
            registry (shared by every observer of the process, and what multiprocess mode
            collects from worker processes).
        pipelines: pipelines to learn parallel branches from (see :meth:`bind`).
        batch: how many buffered events are recorded together (1: each at once; see the
            module docstring for when a smaller batch is recorded).

    Raises:
        UsageError: ``batch`` is not a positive integer.

    Example:
        >>> pipeline = Pipeline("etl", assets, observers=[PrometheusObserver()])
    """

    __slots__ = ("__weakref__", "_batch", "_children", "_finals", "_handlers", "_joins", "_lock",
                 "_pending", "_scatter", "_timed", "event_kinds", "metrics")

    def __init__(
        self, registry: CollectorRegistry | None = None, *, pipelines: Iterable[Any] = (),
        batch: int = BATCH,
    ) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise UsageError(f"PrometheusObserver(batch={batch!r}): batch must be a positive "
                             "integer (how many events are recorded together; 1 records "
                             "each event at once)")
        self._batch = batch
        self._pending: deque[Event] = deque()
        # a scrape in another process cannot flush this one: a timer does
        self._timed = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.metrics = Metrics(registry) if registry is not None else Metrics.shared()
        self._lock = threading.Lock()
        # bound children by (metric, labels): labels() costs a lock and a few lookups per
        # call; label values are bounded (names), so this dict is too
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._scatter: OrderedDict[tuple[str, str, str, str], tuple[int, int]] = OrderedDict()
        self._finals: dict[tuple[str, str], tuple[str, ...]] = {}
        self._joins: set[tuple[str, str]] = set()
        self._handlers: dict[str, Callable[[Event], None]] = {
            "run.started": self._run_started,
            "run.finished": self._run_finished,
            "asset.started": self._asset_started,
            "asset.succeeded": self._asset_finished,
            "asset.failed": self._asset_finished,
            "asset.skipped": self._asset_finished,
            "asset.retrying": self._asset_retrying,
            "io.stored": self._io,
            "io.loaded": self._io,
            "route.decided": self._route,
            "approval.requested": self._wait_opened,
            "gate.opened": self._wait_opened,
            "approval.decided": self._approval_decided,
            "gate.signaled": self._gate_closed,
            "gate.expired": self._gate_closed,
            "scatter.progress": self._scatter_progress,
            "observer.failed": self._observer_failed,
        }
        self.event_kinds = frozenset(self._handlers)  # the engine builds no other events for it
        for pipeline in pipelines:
            self.bind(pipeline)
        self.metrics.flush_before_collect(self.flush)
        _LIVE.add(self)

    def bind(self, pipeline: Any) -> None:
        """Learn ``pipeline``'s parallel branch finals and joins (for the parallel metrics)."""
        for a in pipeline.dag.assets.values():
            if a.parallel is None:
                continue
            self._joins.add((pipeline.name, a.name))
            for final in a.parallel.branches.values():
                known = self._finals.get((pipeline.name, final), ())
                if a.name not in known:
                    self._finals[(pipeline.name, final)] = (*known, a.name)

    def on_event(self, event: Event) -> None:
        pending = self._pending
        pending.append(event)  # atomic: emitting threads need no lock
        if len(pending) >= self._batch:
            self.flush()
        elif self._timed and not _FLUSHER.running:
            _FLUSHER.start()

    @property
    def buffered(self) -> int:
        """How many events wait to be recorded."""
        return len(self._pending)

    def flush(self) -> int:
        """Record every buffered event now (thread-safe); return how many there were."""
        take = self._pending.popleft
        handlers = self._handlers
        count = 0
        while True:
            try:
                event = take()
            except IndexError:
                return count
            count += 1
            handler = handlers.get(event.kind)
            if handler is None:
                continue
            try:
                handler(event)
            except Exception:
                log.exception("recording %s of %s [%s] as metrics failed", event.kind,
                              event.asset, event.pipeline)
                self._child("flowstone_observer_errors", event.pipeline,
                            type(self).__name__, event.kind).inc()

    def _child(self, name: str, *labels: str) -> Any:
        key = (name, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.metrics.by_name[name].labels(*labels)
        return child

    # --- handlers -------------------------------------------------------------------
    def _run_started(self, e: Event) -> None:
        self._child("flowstone_runs_started", e.pipeline).inc()

    def _run_finished(self, e: Event) -> None:
        status = str(e.data.get("status", "unknown"))
        self._child("flowstone_runs_finished", e.pipeline, status).inc()

    def _asset_started(self, e: Event) -> None:
        lag = e.data.get("queued_s")
        if isinstance(lag, int | float) and lag >= 0:
            self._child("flowstone_queue_lag_seconds", e.pipeline).observe(lag)
        if e.data.get("takeover"):
            self._child("flowstone_lease_takeovers", e.pipeline, e.asset).inc()

    def _asset_finished(self, e: Event) -> None:
        status = _FINISHED[e.kind]
        self._child("flowstone_materializations", e.pipeline, e.asset, status).inc()
        duration = e.data.get("duration_s")
        if isinstance(duration, int | float) and status != "skipped":
            self._child("flowstone_materialization_duration_seconds", e.pipeline,
                        e.asset).observe(duration)
        for parallel in self._finals.get((e.pipeline, e.asset), ()):
            self._child("flowstone_parallel_branches", e.pipeline, parallel, status).inc()
        if (e.pipeline, e.asset) in self._joins:
            self._child("flowstone_parallel_joins", e.pipeline, e.asset, status).inc()

    def _asset_retrying(self, e: Event) -> None:
        self._child("flowstone_retries", e.pipeline, e.asset).inc()

    def _io(self, e: Event) -> None:
        op = "store" if e.kind == "io.stored" else "load"
        count = e.data.get("count", 1)
        self._child("flowstone_io_operations", e.pipeline, e.asset, op,
                    str(e.data.get("io_manager", ""))).inc(
            count if isinstance(count, int) and count > 0 else 1)
        duration = e.data.get("duration_s")
        if isinstance(duration, int | float):
            self._child("flowstone_io_duration_seconds", e.pipeline, op).observe(duration)
        size = e.data.get("bytes")
        if isinstance(size, int) and size > 0:
            self._child("flowstone_io_bytes", e.pipeline, e.asset, op).inc(size)

    def _route(self, e: Event) -> None:
        branch = str(e.data.get("branch", ""))
        self._child("flowstone_route_decisions", e.pipeline, e.asset, branch).inc()

    def _wait_opened(self, e: Event) -> None:
        kind = "gate" if e.kind == "gate.opened" else "approval"
        self._child("flowstone_waits_opened", e.pipeline, e.asset, kind).inc()

    def _approval_decided(self, e: Event) -> None:
        outcome = str(e.data.get("status", "decided"))
        self._child("flowstone_waits_closed", e.pipeline, e.asset, "approval", outcome).inc()

    def _gate_closed(self, e: Event) -> None:
        kind, outcome = _CLOSED[e.kind]
        self._child("flowstone_waits_closed", e.pipeline, e.asset, kind, outcome).inc()

    def _scatter_progress(self, e: Event) -> None:
        data = e.data
        done = _int(data.get("done"), _int(data.get("succeeded"), 0) + _int(data.get("failed"), 0))
        failed = _int(data.get("failed"), 0)
        total = _int(data.get("total"), 0)
        key = (e.pipeline, e.run_id, e.asset, e.partition)
        with self._lock:
            before_done, before_failed = self._scatter.pop(key, (0, 0))
            self._scatter[key] = (max(done, before_done), max(failed, before_failed))
            while len(self._scatter) > _SCATTER_MEMORY:
                self._scatter.popitem(last=False)
        new_failed = max(0, failed - before_failed)
        new_ok = max(0, (done - failed) - (before_done - before_failed))
        if new_ok:
            self._child("flowstone_scatter_items", e.pipeline, e.asset, "succeeded").inc(new_ok)
        if new_failed:
            self._child("flowstone_scatter_items", e.pipeline, e.asset, "failed").inc(new_failed)
        if total > 0:
            self._child("flowstone_scatter_progress_ratio", e.pipeline, e.asset).set(
                min(1.0, done / total))

    def _observer_failed(self, e: Event) -> None:
        self._child("flowstone_observer_errors", e.pipeline, str(e.data.get("observer", "")),
                    str(e.data.get("failed_kind", ""))).inc()

    # --- serving and health (what ``flowstone daemon --metrics-port`` and ``flowstone
    # health`` find through the ``prometheus`` entry point) -------------------------
    def serve(self, pipelines: Sequence[Any], *, port: int, host: str = "127.0.0.1",
              role: str = "standalone") -> Any:
        """Attach this observer to ``pipelines`` and serve ``/metrics`` and ``/healthz``
        for them; returns a :class:`~flowstone_observability.serving.Serving`."""
        from flowstone_observability.serving import serve

        return serve(pipelines, port=port, host=host, role=role, observer=self)

    def health(self, pipelines: Sequence[Any]) -> Any:
        """:func:`flowstone_observability.check` of ``pipelines``."""
        from flowstone_observability.health import check

        return check(pipelines)

    def __repr__(self) -> str:
        return "PrometheusObserver()"


# every observer of this process: flushed by the timer, at exit, and emptied after a fork
_LIVE: weakref.WeakSet[PrometheusObserver] = weakref.WeakSet()


def flush_all() -> int:
    """Flush every observer of this process (what the timer, exit and a Celery pool
    process's shutdown do); return how many events were recorded."""
    count = 0
    for observer in list(_LIVE):
        try:
            count += observer.flush()
        except Exception:  # one observer's metrics must not stop the others'
            log.exception("flushing %r failed", observer)
    return count


class _Flusher:
    """The background thread of multiprocess mode: flushes every observer of this process
    every ``FLUSH_SECONDS`` (a daemon thread, started on the first buffered event)."""

    __slots__ = ("_lock", "running")

    def __init__(self) -> None:
        self.running = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self.running:
                return
            self.running = True
        threading.Thread(target=self._loop, name="flowstone-metrics-flush", daemon=True).start()

    def _loop(self) -> None:
        while self.running:
            time.sleep(FLUSH_SECONDS)
            flush_all()

    def forget(self) -> None:
        """In a forked child: the thread was not copied, and the buffers belong to the
        parent (which records them)."""
        self.running = False
        self._lock = threading.Lock()
        for observer in list(_LIVE):
            observer._pending.clear()


_FLUSHER = _Flusher()
os.register_at_fork(after_in_child=_FLUSHER.forget)
atexit.register(flush_all)


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def attach(pipeline: Any, observer: Any) -> None:
    """Add ``observer`` to an already built ``pipeline`` (what ``--metrics-port`` does).

    Idempotent: an observer already attached is not added twice.
    """
    # the pipeline's Emitter (``pipeline.events``) holds the observers
    emitter: Any = getattr(pipeline, "events", None)
    holder: Any = emitter if hasattr(emitter, "observers") else pipeline
    current = tuple(holder.observers)
    if observer not in current:
        holder.observers = (*current, observer)
    if isinstance(observer, PrometheusObserver):
        observer.bind(pipeline)
