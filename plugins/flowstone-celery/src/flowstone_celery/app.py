"""The Celery application FlowStone's executor publishes to and its workers consume from.

:func:`make_app` builds a JSON-only app (pickle is never accepted) with late acks, so a
message is acknowledged only after its step was recorded in the run store, and returned to
the queue if the worker process dies. Results are not stored in Celery: the run store holds
them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from celery import Celery

from flowstone.errors import UsageError
from flowstone_celery.carried import Carried
from flowstone_celery.presence import register_control_command
from flowstone_celery.settings import CelerySettings, load_settings, safe_url

if TYPE_CHECKING:
    from flowstone.pipeline import Pipeline
    from flowstone.protocols import RunStore
    from flowstone_celery.executor import CeleryExecutor
    from flowstone_celery.sweeper import SweepReport

__all__ = ["RUN_STEP_TASK", "SWEEP_TASK", "TASKS_GROUP", "FlowstoneCelery", "make_app",
           "register_plugin_tasks"]

TASKS_GROUP = "flowstone.celery_tasks"
RUN_STEP_TASK = "flowstone.run_step"
SWEEP_TASK = "flowstone.sweep"
log = logging.getLogger("flowstone.celery")


class FlowstoneCelery(Celery):  # type: ignore[misc]
    """A Celery app that knows the FlowStone pipelines its worker serves.

    Attributes:
        flowstone_settings: the settings the app was built from.
        pipelines: ``{name: Pipeline}`` served by this process (empty on a pure client).
        sweep_hooks: ``hook(pipeline, now) -> int`` callables the sweeper runs for each
            pipeline whose interval it won (plugins add theirs in ``register(app)``).
        sweep_listeners: ``listener(report)`` callables told each
            :class:`~flowstone_celery.sweeper.SweepReport` (e.g. to count recoveries).
    """

    flowstone_settings: CelerySettings
    pipelines: dict[str, Pipeline]

    def __init__(self, settings: CelerySettings, **kwargs: Any) -> None:
        super().__init__("flowstone", set_as_current=False, **kwargs)
        self.flowstone_settings = settings
        self.pipelines = {}
        self.sweep_hooks: list[Callable[[Pipeline, datetime], int]] = []
        self.sweep_listeners: list[Callable[[SweepReport], None]] = []
        # {store URL: the store} shared by the served pipelines built from that URL
        self._stores: dict[str, RunStore] = {}
        self._flowstone_executor: CeleryExecutor | None = None
        # the concurrency of the worker this app runs (set by the worker bootstep before
        # the pool forks): the slot count packing assumes without FLOWSTONE_WORKER_SLOTS
        self.worker_slots: int | None = None
        # the finishes this process's last packs left waiting (see flowstone_celery.carried)
        self.carried = Carried()

    @property
    def executor(self) -> CeleryExecutor:
        """The executor bound to this app (what workers dispatch follow-up steps with)."""
        if self._flowstone_executor is None:
            from flowstone_celery.executor import CeleryExecutor

            self._flowstone_executor = CeleryExecutor(self.flowstone_settings, app=self)
        return self._flowstone_executor

    def add_pipeline(self, pipeline: Pipeline) -> None:
        """Serve ``pipeline`` from this worker.

        Its executor is replaced by this app's :class:`CeleryExecutor`, so everything the
        worker does for it (follow-up steps, recovery, resumed approvals) goes back to the
        queue instead of running in the worker's own process. Pipelines whose store was
        built from the same URL share one store (and so one connection budget per
        process); the app closes it in :meth:`close_pipelines`. A store object passed to
        ``Pipeline(store=...)`` is left as it is (pass the same object to share it).

        Raises:
            UsageError: another pipeline with the same name is already served.
        """
        known = self.pipelines.get(pipeline.name)
        if known is not None and known is not pipeline:
            raise UsageError(
                f"two pipelines are named {pipeline.name!r}; a worker needs unique names "
                "(rename one with Pipeline(name=...))"
            )
        old = pipeline.executor
        lease = self.flowstone_settings.lease_seconds
        if old is not self.executor or lease is not None:
            pipeline.use_executor(self.executor, lease_seconds=lease)
        if old is not self.executor:
            try:
                old.close()
            except Exception:  # the replaced executor was never used; do not fail startup
                log.debug("closing the replaced executor of %s failed", pipeline.name,
                          exc_info=True)
        if pipeline.store_url is not None:
            shared = self._stores.setdefault(pipeline.store_url, pipeline.store)
            pipeline.use_store(shared, owned=False)
        self.pipelines[pipeline.name] = pipeline

    def load_pipelines(self, specs: list[str]) -> None:
        """Load ``FILE.py:ATTR`` / ``MODULE:ATTR`` specs and serve them."""
        from flowstone.loading import load_pipeline

        if not specs:
            raise UsageError(
                "a FlowStone worker needs at least one pipeline: pass --pipeline FILE.py:ATTR "
                "or set FLOWSTONE_PIPELINES=FILE.py:ATTR[,MODULE:ATTR...]"
            )
        for spec in specs:
            self.add_pipeline(load_pipeline(spec))

    def close_pipelines(self) -> None:
        """Record the finishes this process carries (see :mod:`flowstone_celery.carried`),
        then close every served pipeline (resources, lease renewal, ...), then the stores
        they share."""
        from flowstone_celery.tasks import record_carried

        record_carried(self)
        for pipeline in list(self.pipelines.values()):
            try:
                pipeline.close()
            except Exception:
                log.exception("closing pipeline %s failed", pipeline.name)
        for url, store in self._stores.items():
            try:
                store.close()
            except Exception:
                log.exception("closing the run store %s failed", safe_url(url))


def make_app(settings: CelerySettings | None = None) -> FlowstoneCelery:
    """Build the Celery app for ``settings`` (default: read ``FLOWSTONE_*`` now).

    The app accepts JSON only, acknowledges late, re-queues the messages of a worker that
    died, stores no results, and registers the ``flowstone.run_step`` and
    ``flowstone.sweep`` tasks (the latter scheduled for Celery beat) and the
    ``flowstone_pipelines`` control command (:mod:`flowstone_celery.presence`).
    """
    from flowstone_celery import tasks

    settings = settings or load_settings()
    app = FlowstoneCelery(settings)
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=None,
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_default_queue=settings.queue,
        task_create_missing_queues=True,
        worker_prefetch_multiplier=settings.prefetch,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        beat_schedule={
            "flowstone-sweep": {
                "task": SWEEP_TASK,
                "schedule": settings.sweep_interval,
                "options": {"queue": settings.queue, "expires": settings.sweep_interval},
            }
        },
        timezone="UTC",
        enable_utc=True,
    )
    tasks.register(app)
    register_control_command()
    register_plugin_tasks(app)
    log.debug("FlowStone Celery app for broker %s, queue %s", safe_url(settings.broker_url),
              settings.queue)
    return app


def register_plugin_tasks(app: FlowstoneCelery) -> None:
    """Call ``register(app)`` of every ``flowstone.celery_tasks`` entry point.

    Plugins (flowstone-scatter, ...) add their tasks and sweep hooks this way; a plugin
    that fails to load is an error naming it, not a silently missing task.
    """
    for ep in sorted(entry_points(group=TASKS_GROUP), key=lambda e: e.name):
        try:
            register = ep.load()
            register(app)
        except Exception as exc:
            raise UsageError(
                f"Celery task plugin {ep.name!r} ({ep.value}) failed to register: "
                f"{type(exc).__name__}: {exc}; reinstall it or uninstall it"
            ) from exc
