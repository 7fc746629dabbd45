"""``CeleryExecutor``: hands ready steps to Celery workers as small JSON messages.

Select it with ``Pipeline(executor="celery")``, ``FLOWSTONE_EXECUTOR=celery`` or
``flowstone run --executor celery``. It is non-blocking: ``dispatch`` returns once the
messages are published, and ``Pipeline.run(wait=True)`` follows the run in the store.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flowstone.errors import StorageError
from flowstone.records import StepRecord
from flowstone_celery.lingering import Linger
from flowstone_celery.messages import StepMessage
from flowstone_celery.packing import BACKLOG_SECONDS, default_slots, pack, pack_size
from flowstone_celery.settings import CelerySettings, load_settings, safe_url

if TYPE_CHECKING:
    from flowstone.engine import StepRunner
    from flowstone_celery.app import FlowstoneCelery

__all__ = ["CeleryExecutor"]

log = logging.getLogger("flowstone.celery")
PING_TIMEOUT = 1.0


def _batched(producer: Any) -> contextlib.AbstractContextManager[Any]:
    """Group the publishes into one broker round trip where the transport can (kombu 5.7's
    ``Producer.batch``: one Redis pipeline; other transports publish one by one)."""
    batch = getattr(producer, "batch", None)
    return batch() if batch is not None else contextlib.nullcontext()


class CeleryExecutor:
    """Publishes ready steps as ``flowstone.run_step`` messages: one per step while the
    workers have a slot for each, several steps of the run per message beyond that
    (``FLOWSTONE_PACK_STEPS``, see :mod:`flowstone_celery.packing`).

    Args:
        settings: defaults to the ``FLOWSTONE_*`` environment, read when this is called.
        app: the Celery app to publish with (default: built lazily from ``settings`` on
            first dispatch; nothing connects before that).

    A batch of steps is published over one pooled producer connection, in one Redis
    pipeline when kombu supports it (5.7+). A step with
    ``not_before`` (a retry waiting for its backoff) is sent with a countdown; a delay longer
    than half the visibility timeout is not sent at all, and the sweeper dispatches the step
    once it is due (a Redis broker would otherwise redeliver the held message early).

    Example:
        >>> pipeline = Pipeline("etl", assets, executor="celery")   # FLOWSTONE_BROKER_URL
    """

    name = "celery"
    blocking = False
    # used when flowstone-scatter / flowstone-parallel are installed; otherwise the
    # pipeline falls back to the in-process coordinators, which run inside the worker
    scatter_coordinator = "celery"
    parallel_coordinator = "celery"

    def __init__(
        self, settings: CelerySettings | None = None, *, app: FlowstoneCelery | None = None
    ) -> None:
        if settings is None:
            settings = app.flowstone_settings if app is not None else load_settings()
        self.settings = settings
        self._app = app
        self._owns_app = app is None
        self._declared = False  # the queue was declared by a message this executor sent
        self._backlog = (-BACKLOG_SECONDS, 0)  # (when read, messages waiting)
        self._linger: Linger | None = None  # built with the first lingering dispatch

    def __repr__(self) -> str:
        return f"CeleryExecutor(broker={safe_url(self.settings.broker_url)!r}, " \
               f"queue={self.settings.queue!r})"

    @property
    def app(self) -> FlowstoneCelery:
        """The Celery app messages are published with."""
        if self._app is None:
            from flowstone_celery.app import make_app

            self._app = make_app(self.settings)
            self._app._flowstone_executor = self
        return self._app

    def messages(
        self, pipeline_name: str, run_id: str, steps: Sequence[StepRecord], *,
        now: datetime | None = None,
    ) -> list[tuple[dict[str, Any], float | None]]:
        """The ``(message, countdown)`` pairs :meth:`dispatch` publishes for ``steps``."""
        at = now or datetime.now(UTC)
        out: list[tuple[dict[str, Any], float | None]] = []
        limit = self.settings.max_countdown
        for step in steps:
            countdown = None
            if step.not_before is not None:
                delay = (step.not_before - at).total_seconds()
                if delay > limit:
                    log.info("retry of %s[%s] in run %s is due in %.0fs; the sweeper will "
                             "dispatch it", step.asset, step.partition, run_id, delay)
                    continue
                countdown = delay if delay > 0 else None
            out.append((StepMessage.for_step(pipeline_name, step, run_id).to_json(), countdown))
        return out

    @property
    def slots(self) -> int:
        """How many steps the workers run at once, as far as packing assumes:
        ``FLOWSTONE_WORKER_SLOTS``, else a worker's own concurrency, else the CPU count."""
        known = self._app.worker_slots if self._app is not None else None
        return self.settings.worker_slots or default_slots(known)

    def packed(
        self, sends: Sequence[tuple[dict[str, Any], float | None]]
    ) -> list[tuple[object, float | None]]:
        """The messages for one run's ``(message, countdown)`` pairs: the steps due now in
        packs of :func:`~flowstone_celery.packing.pack_size` (one step each while there
        are no more than :attr:`slots` and the queue does not already fill them, see
        :meth:`backlog`), delayed steps alone with their countdown."""
        due = [body for body, countdown in sends if countdown is None]
        slots, most = self.slots, self.settings.pack_steps
        size = pack_size(len(due), slots=slots, most=most)
        if size < min(most, len(due)):  # a full queue would pack them further: ask it
            size = pack_size(len(due), slots=slots, most=most, backlog=self.backlog())
        out: list[tuple[object, float | None]] = [(body, None) for body in pack(due, size)]
        out.extend((body, countdown) for body, countdown in sends if countdown is not None)
        return out

    def backlog(self) -> int:
        """How many messages wait in this executor's queue, as the broker said at most
        :data:`~flowstone_celery.packing.BACKLOG_SECONDS` ago (one passive queue
        declaration on a pooled connection); 0 when the queue does not exist or the
        broker cannot say (packing then only follows the run's own ready steps)."""
        now = time.monotonic()
        if now - self._backlog[0] < BACKLOG_SECONDS:
            return self._backlog[1]
        count = 0
        try:
            with self.app.producer_or_acquire() as producer:
                count = int(producer.channel.queue_declare(
                    queue=self.settings.queue, passive=True
                ).message_count)  # fmt: skip
        except Exception as exc:  # no such queue yet (empty), or no answer: assume none
            log.debug("queue length of %r unknown: %s", self.settings.queue, exc)
        self._backlog = (now, count)
        return count

    def dispatch(self, runner: StepRunner, run_id: str, steps: Sequence[StepRecord]) -> None:
        """Publish ``steps`` of ``run_id`` (packed when they outnumber the workers' slots,
        see :meth:`packed`); raise ``StorageError`` if the broker refuses.

        Outside a worker, while the queue holds a message for every slot, the steps due
        now linger instead, up to ``FLOWSTONE_DISPATCH_LINGER_SECONDS``, and go out with
        the next runs' in one message (see :mod:`flowstone_celery.lingering`).

        A step lost here (broker down) stays ``ready`` in the store and the sweeper sends it
        again, so a failed dispatch never loses work.
        """
        sends = self.messages(runner.runtime.name, run_id, steps)
        if self._lingers():
            due = [body for body, countdown in sends if countdown is None]
            if due:
                self._lingering().add(due)
            sends = [(body, countdown) for body, countdown in sends if countdown is not None]
        self._publish(self.packed(sends), what=f"of run {run_id}")

    def _lingers(self) -> bool:
        """Whether a dispatch lingers now: lingering is on, this is not a worker running a
        task, and the queue already holds a message for every slot."""
        return (
            self.settings.dispatch_linger_seconds > 0
            and self.app.current_worker_task is None
            and self.backlog() >= self.slots
        )

    def _lingering(self) -> Linger:
        if self._linger is None:
            self._linger = Linger(
                lambda bodies: self._publish([(bodies, None)], what="of runs started together"),
                seconds=self.settings.dispatch_linger_seconds, most=self.settings.pack_steps,
            )  # fmt: skip
        return self._linger

    def send_back(self, bodies: Sequence[dict[str, Any]]) -> None:
        """Publish step messages one per message: the steps of a pack a worker did not
        start (draining, or the pack ran out of ``FLOWSTONE_PACK_SECONDS``)."""
        self._publish([(body, None) for body in bodies], what="handed back from a pack")

    def dispatch_many(
        self, runner: StepRunner, batches: Sequence[tuple[str, Sequence[StepRecord]]]
    ) -> None:
        """Publish the ready steps of many runs (``Pipeline.run_many``), up to
        ``FLOWSTONE_BATCH_STEPS`` steps of *different* runs per message: the i-th ready
        step of each run goes with the i-th ready steps of other runs, so one run's steps
        still travel in different messages and run on different workers. Delayed steps
        (retries) go alone, with their countdown."""
        lanes: list[list[dict[str, Any]]] = []
        batch: list[tuple[object, float | None]] = []
        name = runner.runtime.name
        for run_id, steps in batches:
            for i, (body, countdown) in enumerate(self.messages(name, run_id, steps)):
                if countdown is not None:
                    batch.append((body, countdown))
                    continue
                if i == len(lanes):
                    lanes.append([])
                lanes[i].append(body)
        for lane in lanes:
            batch.extend((body, None) for body in pack(lane, self.settings.batch_steps))
        self._publish(batch, what=f"of {len(batches)} runs")

    def _publish(self, batch: Sequence[tuple[object, float | None]], *, what: str) -> None:
        if not batch:
            return
        from celery.utils import uuid as task_id

        from flowstone_celery.app import RUN_STEP_TASK

        app = self.app
        amqp = app.amqp
        queue = amqp.queues[self.settings.queue]
        sent_event = app.conf.task_send_sent_event
        # a step published by a worker continues that worker's Celery task tree
        parent = app.current_worker_task
        root_id = parent_id = None
        if parent is not None:
            root_id, parent_id = parent.request.root_id or parent.request.id, parent.request.id
        try:
            with app.producer_or_acquire() as producer, _batched(producer):
                for body, countdown in batch:
                    # What app.send_task does for a task of ours, without its per-call
                    # option merging and routing (the queue is fixed): Celery's own message
                    # builder and sender, so publish signals, retries and task-sent events
                    # behave as usual. argsrepr: the plain repr of a list or dict of
                    # primitives, not Celery's saferepr (which costs more than the rest of
                    # the publish). declare: the queue is declared with the first message
                    # this executor sends (and by every worker consuming it); kombu's
                    # per-message "declared already?" check costs more than the publish.
                    message = amqp.create_task_message(
                        task_id(), RUN_STEP_TASK, (body,), {}, countdown,
                        create_sent_event=sent_event, root_id=root_id, parent_id=parent_id,
                        ignore_result=True, argsrepr=f"({body!r},)", kwargsrepr="{}",
                    )
                    amqp.send_task_message(
                        producer, RUN_STEP_TASK, message, queue=queue,
                        declare=[] if self._declared else None,
                    )
                    self._declared = True
        except Exception as exc:
            raise StorageError(
                f"could not publish {len(batch)} message(s) {what} to "
                f"{safe_url(self.settings.broker_url)} ({type(exc).__name__}: {exc}); is the "
                "broker running? The sweeper re-sends them once it is reachable"
            ) from exc

    def health(self) -> dict[str, Any]:
        """``{"ok", "broker", "workers"}``: the broker answers and at least one worker
        replies to a control ping within a second."""
        report: dict[str, Any] = {"ok": False, "broker": "ok", "workers": 0}
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=PING_TIMEOUT)
        except Exception as exc:
            report["broker"] = f"error: {type(exc).__name__}: {exc}"
            return report
        try:
            replies = self.app.control.ping(timeout=PING_TIMEOUT) or []
        except Exception as exc:
            report["workers"] = f"error: {type(exc).__name__}: {exc}"
            return report
        report["workers"] = len(replies)
        report["ok"] = len(replies) > 0
        return report

    def serving(self, pipeline: str) -> int | None:
        """How many live workers serve ``pipeline`` from this executor's queue (they answer
        the ``flowstone_pipelines`` control command within a second); None when that
        cannot be told. The :class:`~flowstone.protocols.WorkerPresence` capability."""
        from flowstone_celery.presence import workers_serving

        return workers_serving(self.app, pipeline, self.settings.queue, timeout=PING_TIMEOUT)

    def close(self) -> None:
        """Publish the steps lingering for their message, then release broker connections
        (only those of an app this executor built)."""
        if self._linger is not None:
            self._linger.flush()
        if self._owns_app and self._app is not None:
            self._app.close()
            self._app = None
            self._declared = False
