"""Metrics, health and JSON logs inside a Celery worker (``flowstone worker --metrics-port``).

:class:`WorkerMetrics` is built by the worker's bootstep in the main process *before* the
prefork pool forks: it turns on multiprocess mode (a fresh, emptied directory), attaches the
Prometheus observer (and, with ``FLOWSTONE_LOG_FORMAT=json``, the step log context) to every
served pipeline so pool processes inherit them, and removes a dead pool process's live
gauges (after recording the events it still buffers); a pool process records its buffered
events when each task ends. :meth:`WorkerMetrics.start` then serves ``/metrics`` (the sum
over all processes) and ``/healthz`` from the main process; :meth:`WorkerMetrics.stop`
stops it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flowstone_observability.serving import Serving, prepare_multiprocess_dir

__all__ = ["WorkerMetrics", "use_json_logs"]

log = logging.getLogger("flowstone.observability")


class WorkerMetrics:
    """See the module docstring.

    Args:
        app: the worker's ``FlowstoneCelery`` app (pipelines already loaded).
        port: the port to serve on (0: any free port).
        host: the address to bind.
        directory: the multiprocess directory (default: ``$PROMETHEUS_MULTIPROC_DIR`` or a
            new temporary directory); emptied now.
    """

    def __init__(self, app: Any, *, port: int, host: str = "127.0.0.1",
                 directory: str | Path | None = None) -> None:
        self.directory = prepare_multiprocess_dir(directory)
        from flowstone_observability.observer import PrometheusObserver, attach

        self.app = app
        self.port, self.host = port, host
        self.observer = PrometheusObserver()
        for pipeline in app.pipelines.values():
            attach(pipeline, self.observer)
        _connect_process_cleanup()
        self.serving: Serving | None = None

    def start(self) -> Serving:
        """Serve ``/metrics`` and ``/healthz`` (idempotent)."""
        if self.serving is None:
            from flowstone_observability.serving import serve

            self.serving = serve(list(self.app.pipelines.values()), port=self.port,
                                 host=self.host, role="worker", observe=False)
            log.info("FlowStone worker metrics on %s/metrics (multiprocess dir %s)",
                     self.serving.server.url, self.directory)
        return self.serving

    def stop(self) -> None:
        if self.serving is not None:
            self.serving.close()
            self.serving = None


def use_json_logs(app: Any) -> bool:
    """With ``FLOWSTONE_LOG_FORMAT=json``: the step log context on the served pipelines,
    and Celery's log handlers (now and when Celery sets them up) writing JSON."""
    from flowstone_observability.logs import use_json_logs as use

    if not use(app.pipelines.values()):
        return False
    _connect_json_logging()
    return True


def _connect_process_cleanup() -> None:
    from celery.signals import task_postrun, worker_process_shutdown

    worker_process_shutdown.connect(_mark_dead, weak=False, dispatch_uid="flowstone-metrics")
    # a message's steps are in the scrape as soon as its task ends (not a timer tick later)
    task_postrun.connect(_flush, weak=False, dispatch_uid="flowstone-metrics-flush")


def _flush(**_: Any) -> None:
    from flowstone_observability.observer import flush_all

    flush_all()


def _mark_dead(pid: int | None = None, **_: Any) -> None:
    """A pool process is exiting: record its buffered events, then drop its live gauges."""
    import os

    from prometheus_client import multiprocess

    from flowstone_observability.observer import flush_all

    flush_all()

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
            pid if pid is not None else os.getpid())


def _connect_json_logging() -> None:
    from celery.signals import after_setup_logger, after_setup_task_logger

    after_setup_logger.connect(_json_handlers, weak=False, dispatch_uid="flowstone-json-logs")
    after_setup_task_logger.connect(_json_handlers, weak=False,
                                    dispatch_uid="flowstone-json-task-logs")


def _json_handlers(logger: logging.Logger | None = None, **_: Any) -> None:
    from flowstone_observability.logs import configure_logging

    for handler in (logger.handlers if logger is not None else []):
        configure_logging(handler)
