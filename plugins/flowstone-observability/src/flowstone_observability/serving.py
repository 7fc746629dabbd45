"""Serving metrics and health for a set of pipelines, in one process or many.

:func:`serve` is what ``flowstone daemon --metrics-port``, ``flowstone worker
--metrics-port`` and ``flowstone metrics serve`` call. In a multi-process Celery worker
(prefork pool) every process writes its metric values to files in one directory, and the
server sums them (prometheus-client's multiprocess mode): :func:`prepare_multiprocess_dir`
creates that directory, or empties one left by an earlier run, before any metric exists.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from flowstone.errors import UsageError
from flowstone_observability.freshness import FreshnessCollector
from flowstone_observability.health import DEFAULT_HEARTBEAT_MAX_AGE, check
from flowstone_observability.heartbeat import write_heartbeat
from flowstone_observability.logs import use_json_logs
from flowstone_observability.metrics import Metrics
from flowstone_observability.observer import PrometheusObserver, attach
from flowstone_observability.server import DEFAULT_HOST, MetricsServer

__all__ = ["MULTIPROC_ENV", "Serving", "multiprocess_dir", "prepare_multiprocess_dir", "serve"]

log = logging.getLogger("flowstone.observability")

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(path: str | Path | None = None) -> Path:
    """Turn on multiprocess mode for this process and the ones it forks.

    ``path`` (default: ``$PROMETHEUS_MULTIPROC_DIR``, else a new temporary directory) is
    created, or emptied of the ``*.db`` files an earlier run left (their values would
    otherwise be summed into this run's), and exported as ``PROMETHEUS_MULTIPROC_DIR``.
    Call it before the worker pool forks.

    Raises:
        UsageError: ``path`` exists and is not a directory.
    """
    chosen = path or os.environ.get(MULTIPROC_ENV)
    target = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="flowstone-metrics-"))
    if target.exists() and not target.is_dir():
        raise UsageError(f"{MULTIPROC_ENV}={target} is not a directory; point it at an "
                         "empty directory the worker may manage")
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(target)
    values = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported before the variable was set: switch for new values
        values.ValueClass = values.MultiProcessValue()  # type: ignore[attr-defined]
    return target


def multiprocess_dir() -> Path | None:
    """The multiprocess directory in effect, if any."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


class _Forward(Collector):
    """Exports another registry's metrics through this one."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._source.collect()


class Serving:
    """A running metrics endpoint for some pipelines; :meth:`close` stops it.

    Attributes:
        server: the HTTP server (``server.url``, ``server.port``).
        observer: the observer attached to the pipelines (None for ``metrics serve``).
    """

    __slots__ = ("_pipelines", "_role", "observer", "server")

    def __init__(self, server: MetricsServer, observer: PrometheusObserver | None,
                 pipelines: Sequence[Any], role: str) -> None:
        self.server = server
        self.observer = observer
        self._pipelines = list(pipelines)
        self._role = role

    @property
    def url(self) -> str:
        """``http://host:port`` of the server."""
        return self.server.url

    def tick(self, report: Any) -> None:
        """Record one daemon tick: heartbeat in the store, sweep and recovery counters."""
        metrics = Metrics.shared()
        for p in self._pipelines:
            try:
                write_heartbeat(p.store, p.name, "daemon", report.now)
            except Exception as exc:
                log.warning("writing the daemon heartbeat of %s failed: %s", p.name, exc)
            metrics.counter("flowstone_sweeps").labels(p.name, "daemon").inc()
        if report.recovered:  # one total per tick, whatever the pipelines
            metrics.counter("flowstone_recoveries").labels("daemon").inc(report.recovered)
        metrics.gauge("flowstone_heartbeat_timestamp_seconds").labels("daemon").set(
            report.now.timestamp())

    def close(self) -> None:
        self.server.close()


def serve(
    pipelines: Sequence[Any],
    *,
    port: int,
    host: str = DEFAULT_HOST,
    role: str = "standalone",
    observe: bool = True,
    heartbeat_max_age: float = DEFAULT_HEARTBEAT_MAX_AGE,
    refresh_seconds: float = 15.0,
    observer: PrometheusObserver | None = None,
) -> Serving:
    """Serve ``/metrics`` and ``/healthz`` for ``pipelines`` until ``close()``.

    With ``observe``, ``observer`` (default: a new :class:`PrometheusObserver` on the
    process-wide metrics) is attached to every pipeline (runs in this process, or in
    processes it forks, are counted). In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``)
    the values of every process writing to that directory are summed.
    """
    registry = CollectorRegistry(auto_describe=False)
    directory = multiprocess_dir()
    if directory is not None:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(FreshnessCollector(pipelines, refresh_seconds=refresh_seconds))
    if observe:
        observer = observer or PrometheusObserver()
        for p in pipelines:
            attach(p, observer)
    else:
        Metrics.shared()  # the process metrics exist even before their first event

    use_json_logs(pipelines)  # FLOWSTONE_LOG_FORMAT=json

    def health() -> tuple[bool, dict[str, Any]]:
        report = check(pipelines, heartbeat_max_age=heartbeat_max_age)
        return report.ok, {**report.to_json(), "role": role}

    server = MetricsServer(registry, health=health, host=host, port=port)
    return Serving(server, observer, pipelines, role)
