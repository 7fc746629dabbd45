"""Starting a Celery worker that serves FlowStone pipelines.

:func:`run_worker` is what ``flowstone worker`` calls; ``celery -A
flowstone_celery.worker_app worker`` gets the same behaviour through :class:`FlowstoneStep`,
a worker bootstep that

* loads the pipelines (``FLOWSTONE_PIPELINES``) if none were added yet, in the main process
  before the pool forks, and checks every served pipeline's run store (reachable, schema
  current), so a bad spec, an unreachable database or a missing or old schema stops the
  worker with a message (exit code 2) before it consumes anything;
* runs the sweeper in a thread of the main process (``FLOWSTONE_SWEEPER``);
* with ``FLOWSTONE_METRICS_PORT`` (``--metrics-port``) serves ``/metrics`` and ``/healthz``
  from the main process, summing the pool processes' metrics (flowstone-observability's
  ``WorkerMetrics``, prepared before the pool forks); with ``FLOWSTONE_LOG_FORMAT=json``
  logs JSON lines carrying the step fields (when flowstone-observability is installed);
* at the first SIGTERM stops following continuations: each pool process finishes the step
  it runs and publishes the step that finish claimed (:mod:`flowstone_celery.draining`);
* closes the served pipelines when the worker shuts down (after in-flight steps finished),
  in the main process and in every pool process, so resources are torn down;
* makes a *second* SIGTERM stop immediately: the first one is Celery's warm shutdown (no new
  messages, in-flight steps finish), the second turns it into a cold shutdown that abandons
  the running steps (their messages return to the queue; leases expire and the sweeper
  re-dispatches them).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from celery import bootsteps

from flowstone.errors import FlowStoneError, StorageError, UsageError
from flowstone_celery import draining
from flowstone_celery.app import FlowstoneCelery, make_app
from flowstone_celery.settings import CelerySettings, safe_url
from flowstone_celery.sweeper import SweeperThread

__all__ = ["FlowstoneStep", "check_pipelines", "install_step", "run_worker"]

log = logging.getLogger("flowstone.celery")


class FlowstoneStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: pipelines, sweeper, escalating SIGTERM (see the module docstring)."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        app: FlowstoneCelery = worker.app
        try:
            if not app.pipelines:
                app.load_pipelines(app.flowstone_settings.pipeline_specs)
            check_pipelines(app)
        except FlowStoneError as exc:  # before any consumer or pool process exists
            print(f"flowstone worker: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        self._sweeper: SweeperThread | None = None
        concurrency = getattr(worker, "concurrency", None)
        app.worker_slots = concurrency if isinstance(concurrency, int) and concurrency else None
        _close_pipelines_on_shutdown(app)
        _drain_on_shutdown(app)
        # before the pool forks: pool processes inherit the observers and the metric mode
        self._metrics = _worker_metrics(app)

    def start(self, worker: Any) -> None:
        app: FlowstoneCelery = worker.app
        settings = app.flowstone_settings
        log.info("FlowStone worker: pipelines %s, queue %s, broker %s, sweeper %s",
                 sorted(app.pipelines), settings.queue, safe_url(settings.broker_url),
                 f"every {settings.sweep_interval:g}s" if settings.sweeper else "off")
        _install_escalating_sigterm(worker)
        if self._metrics is not None:
            self._metrics.start()
        if settings.sweeper and self._sweeper is None:
            self._sweeper = SweeperThread(app)
            self._sweeper.start()

    def stop(self, worker: Any) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        if self._metrics is not None:
            self._metrics.stop()


def _worker_metrics(app: FlowstoneCelery) -> Any:
    """flowstone-observability's ``WorkerMetrics`` when a metrics port is set (None
    otherwise); JSON logs when ``FLOWSTONE_LOG_FORMAT=json`` and the plugin is installed."""
    settings = app.flowstone_settings
    try:
        from flowstone_observability.worker import WorkerMetrics, use_json_logs
    except ImportError as exc:
        if settings.metrics_port is not None:
            raise UsageError(
                "--metrics-port (FLOWSTONE_METRICS_PORT) needs flowstone-observability: "
                "pip install flowstone-observability"
            ) from exc
        return None
    use_json_logs(app)
    if settings.metrics_port is None:
        return None
    return WorkerMetrics(app, port=settings.metrics_port, host=settings.metrics_host)


def _close_pipelines_on_shutdown(app: FlowstoneCelery) -> None:
    """Close the served pipelines (their resources' teardown, stores, IO managers) once the
    work is done: in the main process after the pool drained (``worker_shutdown``), and in
    each pool process as it exits (``worker_process_shutdown``), where the resources its
    steps used were built."""
    from celery.signals import worker_process_shutdown, worker_shutdown

    def close(**_: Any) -> None:
        app.close_pipelines()

    for signal in (worker_shutdown, worker_process_shutdown):
        signal.connect(close, weak=False, dispatch_uid=f"flowstone-close-{id(app)}")


def _drain_on_shutdown(app: FlowstoneCelery) -> None:
    """At the first SIGTERM (or SIGINT), before the pool drains: in-flight steps finish but
    take no continuation; the steps their finishes claim are published instead."""
    from celery.signals import worker_shutting_down

    draining.reset()

    def drain(**_: Any) -> None:
        draining.begin()

    worker_shutting_down.connect(drain, weak=False, dispatch_uid=f"flowstone-drain-{id(app)}")


def _install_escalating_sigterm(worker: Any) -> None:
    """First SIGTERM: warm shutdown (drain); the next one: cold shutdown (stop now)."""
    from celery.apps import worker as celery_worker

    if not hasattr(celery_worker, "install_worker_term_handler"):
        return  # a Celery without these helpers keeps its default SIGTERM behaviour

    def escalate(w: Any) -> None:
        log.warning("FlowStone worker draining in-flight steps; send SIGTERM again to stop "
                    "immediately (running steps are then re-queued)")
        celery_worker.install_worker_term_hard_handler(w, sig="SIGTERM")

    celery_worker.install_worker_term_handler(worker, callback=escalate)


def check_pipelines(app: FlowstoneCelery) -> None:
    """Make sure every served pipeline's run store is reachable and its schema current.

    Runs in the main process before the pool forks and before anything is consumed; the
    connection it opens is released again (pool processes open their own).

    Raises:
        StorageError: a store is unreachable, or its schema is missing or behind (the
            message names the pipeline and what to run).
    """
    for name, pipeline in sorted(app.pipelines.items()):
        store = pipeline.store
        try:
            store.ping()
        except FlowStoneError as exc:
            raise StorageError(f"pipeline {name!r} cannot use its run store: {exc}") from exc
        finally:
            store.close()


def install_step(app: FlowstoneCelery) -> FlowstoneCelery:
    """Add :class:`FlowstoneStep` to ``app``'s worker blueprint (once)."""
    if FlowstoneStep not in app.steps["worker"]:
        app.steps["worker"].add(FlowstoneStep)
    return app


def run_worker(
    pipelines: Sequence[str],
    *,
    settings: CelerySettings,
    concurrency: int | None = None,
    queues: Sequence[str] = (),
    pool: str | None = None,
    loglevel: str = "INFO",
    hostname: str | None = None,
    extra_args: Sequence[str] = (),
) -> int:
    """Load ``pipelines`` and run a Celery worker for them until it is shut down.

    Returns the worker's exit code.
    """
    app = install_step(make_app(settings))
    app.load_pipelines(list(pipelines))
    check_pipelines(app)
    argv = ["worker", f"--loglevel={loglevel}", "-Q", ",".join(queues or [settings.queue])]
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    if pool is not None:
        argv.append(f"--pool={pool}")
    if hostname is not None:
        argv.append(f"--hostname={hostname}")
    argv.extend(extra_args)
    try:
        app.worker_main(argv=argv)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int | None) else 1
    return 0
