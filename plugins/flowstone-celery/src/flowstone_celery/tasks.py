"""The two Celery tasks: ``flowstone.run_step`` (one step) and ``flowstone.sweep``.

``run_step`` is idempotent: the run store's ``claim_step`` lets only one delivery of a step
run it and ``finish_step`` records it once, so a redelivered message changes nothing.
Malformed messages and unknown pipelines or assets are logged and acknowledged (retrying
them could never succeed). Infrastructure failures (store or broker unreachable) are retried
with exponential backoff; after ``FLOWSTONE_INFRA_RETRIES`` the sweeper takes over.

A step that makes other steps ready hands one of them straight back to the worker that ran
it (up to ``FLOWSTONE_INLINE_STEPS`` in a row) and publishes the rest: a chain or a
parallel join continues without a round trip through the broker, and without a claim
round trip to the store (``finish_step`` claims it in the same transaction). The
continuation is as durable as a published step: it is claimed under a lease in the
transaction that made it runnable, and the sweeper re-dispatches it if the worker dies.

A message may carry several steps (a pack of one run's steps, or steps of many runs,
see :mod:`flowstone_celery.packing`); they run one after the other, each claimed and
recorded on its own. A draining worker, or one that has spent ``FLOWSTONE_PACK_SECONDS``
on the message, publishes the steps it has not started instead (one message each). The
finishes of the continuations a pack ran last (its joins) may wait for the next pack's
finish transaction (see :mod:`flowstone_celery.carried`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from flowstone.engine import (
    ClaimedAhead,
    FinishBatch,
    StepResult,
    StepRunner,
    release_step,
    run_chain,
)
from flowstone.errors import StorageError
from flowstone.records import StepRecord
from flowstone_celery import draining
from flowstone_celery.messages import MessageError, StepMessage, parse_batch, parse_message
from flowstone_celery.packing import unstarted

if TYPE_CHECKING:
    from celery import Task

    from flowstone.pipeline import Pipeline
    from flowstone_celery.app import FlowstoneCelery

__all__ = [
    "flush", "hand_back", "handle_step", "record_carried", "register", "run_pack", "run_steps",
]

log = logging.getLogger("flowstone.celery")
MAX_BACKOFF_SECONDS = 60.0


def resolve(app: FlowstoneCelery, body: object) -> tuple[Pipeline, StepMessage] | None:
    """Validate ``body`` and find its pipeline; log and return None if it cannot run here."""
    try:
        message = parse_message(body)
    except MessageError as exc:
        log.error("dropping malformed FlowStone step message: %s", exc)
        return None
    pipeline = app.pipelines.get(message.pipeline)
    if pipeline is None:
        log.error(
            "dropping step message for unknown pipeline %r (this worker serves %s); start the "
            "worker with --pipeline for it", message.pipeline, sorted(app.pipelines) or "none",
        )
        return None
    if message.asset not in pipeline.dag.assets:
        log.error("dropping step message for unknown asset %r of pipeline %r",
                  message.asset, message.pipeline)
        return None
    return pipeline, message


def handle_step(app: FlowstoneCelery, body: object, *, carry: bool = False) -> int:
    """Run the step ``body`` names (or each step of a batch, one after the other) and
    dispatch the steps that became ready.

    A batch of one pipeline's steps, on a store that records finishes together, is a pack
    (see :func:`run_pack`): its steps are claimed together and their finishes recorded
    together. Otherwise each step is claimed and recorded on its own (:func:`run_steps`).
    With ``carry`` (the worker's task), a pack's last finishes may be left waiting for the
    next pack of the pipeline in this process, at most ``FLOWSTONE_FINISH_BATCH_SECONDS``
    (see :mod:`flowstone_celery.carried`), and a pack records the finishes carried from
    the one before with its own; without it, everything is recorded before this returns.
    Before each step of a batch after the first, a draining worker (or one that has
    spent ``FLOWSTONE_PACK_SECONDS`` on this message) publishes the steps it has not
    started, one message each, and stops: they are ``ready`` and unclaimed, so any worker
    can take them (and the sweeper re-sends them if that publish fails).

    Returns how many steps were dispatched (follow-ups and handed-back ones; 0 for a
    dropped or duplicate message). Infrastructure errors propagate so the caller can
    retry; a retried batch skips the steps it already ran (their claims fail like any
    duplicate delivery's).
    """
    try:
        bodies = parse_batch(body)
    except MessageError as exc:
        log.error("dropping malformed FlowStone step message: %s", exc)
        return 0
    settings = app.flowstone_settings
    found = [resolve(app, item) for item in bodies]
    runners = {f[0].runner for f in found if f is not None}
    if len(bodies) > 1 and len(runners) == 1:
        runner = runners.pop()
        carried = app.carried.take(runner) if carry else None
        batch = carried if carried is not None else FinishBatch(
            runner, size=settings.finish_batch, seconds=settings.finish_batch_seconds
        )
        if batch.batching:
            return run_pack(app, batch, bodies, [f and f[1] for f in found], carry=carry)
    published = 0
    started = time.monotonic()
    for index, step in enumerate(found):
        if index and (draining.requested() or time.monotonic() - started >= settings.pack_seconds):
            return published + hand_back(app, bodies[index:])
        if step is not None:
            pipeline, message = step
            published += run_steps(
                pipeline.runner, message.run_id, message.asset, message.partition,
                inline=settings.inline_steps,
            )  # fmt: skip
    return published


def run_pack(
    app: FlowstoneCelery,
    batch: FinishBatch,
    bodies: list[object],
    messages: list[StepMessage | None],
    *,
    carry: bool = False,
) -> int:
    """Run the steps of a pack (``messages``, ``None`` for a dropped one) one after the
    other: claimed together first (:class:`~flowstone.engine.ClaimedAhead`, their leases
    kept until each starts), their finishes recorded together, up to
    ``FLOWSTONE_FINISH_BATCH`` per transaction (see :class:`~flowstone.engine.FinishBatch`)
    and what those made ready dispatched, the continuations they claimed run here (see
    :func:`flush`). A draining worker, or one that has spent ``FLOWSTONE_PACK_SECONDS``
    on the pack, gives back the steps it has not started (``ready`` again) and publishes
    them, one message each. On an error, the finishes waiting are recorded and the steps
    not started given back before it propagates. ``batch`` may hold finishes carried
    from an earlier pack (recorded with this one's); with ``carry``, the finishes of the
    continuations run last may be left in it for the next (see
    :mod:`flowstone_celery.carried`)."""
    settings = app.flowstone_settings
    runner = batch.runner
    taken = [index for index, message in enumerate(messages) if message is not None]
    try:
        ahead = ClaimedAhead.claim(
            runner, [(m.run_id, m.asset, m.partition) for m in messages if m is not None]
        )
    except Exception:
        _record_quietly(batch)  # what an earlier pack left waiting is not lost with it
        raise
    published = 0
    started = time.monotonic()
    try:
        for n, index in enumerate(taken):
            late = time.monotonic() - started >= settings.pack_seconds
            if n and (draining.requested() or late):
                why = "the worker is draining" if draining.requested() else "the pack took too long"
                ahead.release(why=why)
                published += flush(batch, inline=settings.inline_steps)
                return published + hand_back(app, bodies[index:])
            if batch.due():
                published += flush(batch, inline=settings.inline_steps)
            # (a step of the message: the message's retry runs it again, no need to publish)
            _run_batched(
                batch, ahead.take(n), claim_next=settings.inline_steps > 0, publish=lambda _: None
            )
        published += flush(
            batch, inline=settings.inline_steps, carry=app.carried.hold if carry else None
        )
    except Exception:
        # what ran is recorded and what did not is given back, not left to the leases
        ahead.release(why="an earlier step of its message failed")
        _record_quietly(batch)
        raise
    return published


class _Published:
    """Publishes ready steps through the runner's executor (a ``hand_off``), counting
    them."""

    def __init__(self, runner: StepRunner) -> None:
        self.runner, self.count = runner, 0

    def __call__(self, steps: tuple[StepRecord, ...]) -> None:
        if steps:
            self.runner.dispatch(steps[0].run_id, steps)
            self.count += len(steps)


def _record_quietly(batch: FinishBatch) -> None:
    """After an error: record ``batch``'s waiting finishes, publish what they made ready
    and give back the continuations they claimed (nothing more runs here); where that
    fails too, the steps are left to the sweeper (see :meth:`FinishBatch.flush`)."""
    runner = batch.runner
    try:
        results = batch.flush()
    except Exception as exc:
        log.warning("could not record %s's waiting finishes after an error: %s",
                    runner.runtime.name, exc)
        return
    _give_back(runner, results, [], _Published(runner), why="its message failed")


def _give_back(
    runner: StepRunner,
    results: list[StepResult],
    steps: list[StepRecord],
    publish: _Published,
    *,
    why: str,
) -> None:
    """After an error, nothing runs here any more: publish what ``results`` made ready and
    give back ``steps`` and the continuations ``results`` claimed (best effort: where the
    store or broker is down too, the sweeper re-sends them)."""
    for result in results:
        try:
            publish(result.ready)
        except Exception as exc:  # they are ready in the store: the sweeper re-sends them
            log.warning("could not publish the steps a finish made ready: %s", exc)
    claimed = [result.next for result in results if result.next is not None]
    _release_all(runner, steps + claimed, publish, why=why)


def flush(
    batch: FinishBatch, *, inline: int, carry: Callable[[FinishBatch], bool] | None = None
) -> int:
    """Record ``batch``'s finishes, dispatch what they made ready and run the
    continuations they claimed; returns how many steps were published.

    The continuations run here one after the other, their finishes waiting in ``batch``
    in turn (the joins that a pack of many runs' branches completes are recorded in one
    transaction, not one each), level after level: a continuation of level ``n`` claims
    its own only while ``n < inline`` (``FLOWSTONE_INLINE_STEPS``, as for a chain of one
    step, see :func:`run_steps`). A draining worker gives the claimed continuations back
    instead (ready, published). If one of them fails, it and those not started yet are
    given back before the error propagates (the caller records the finishes waiting, see
    :func:`_record_quietly`).

    ``carry`` (:meth:`Carried.hold <flowstone_celery.carried.Carried.hold>`) may take
    the finishes of the last level's continuations instead of recording them here: they
    then wait for the next pack (or the watcher thread), and what they make ready is
    dispatched by whoever records them. Not while draining, nor when finishes recorded
    during the level still have work to hand out."""
    runner = batch.runner
    publish = _Published(runner)
    results = batch.flush()
    level = 1
    while True:
        for result in results:
            publish(result.ready)
        claimed = [result.next for result in results if result.next is not None]
        if not claimed:
            return publish.count
        ahead = ClaimedAhead.hold(runner, claimed)  # their leases kept until their turn
        results = []
        for index in range(len(claimed)):
            try:
                if draining.requested():
                    _publish_each(publish, ahead.release(why="the worker is shutting down"))
                    break
                if batch.due():
                    results += batch.flush()
                _run_batched(batch, ahead.take(index), claim_next=level < inline, publish=publish)
            except Exception:
                # nothing claimed waits for its lease: the rest of this level and what
                # the finishes recorded meanwhile claimed go back to the broker
                why = "it or an earlier step of its message failed"
                _publish_each(publish, ahead.release(why=why))
                _give_back(runner, results, [], publish, why=why)
                raise
        if carry is not None and not results and not draining.requested() and carry(batch):
            return publish.count
        results += batch.flush()
        level += 1


def _run_batched(
    batch: FinishBatch,
    step: StepRecord | None,
    *,
    claim_next: bool,
    publish: Callable[[tuple[StepRecord, ...]], None],
) -> None:
    """Run ``step`` (claimed for this caller; ``None``: nothing to run, it could not be
    claimed or lost its lease while it waited), its finish waiting in ``batch``. If it
    fails to run here (the store failed), it is given back (and handed to ``publish``)
    before the error propagates."""
    if step is None:
        return
    try:
        with batch.running():  # finishes waiting too long are recorded meanwhile
            batch.runner.run_claimed(step, claim_next=claim_next, batch=batch)
    except Exception:
        _release_all(batch.runner, [step], publish, why="it failed to run here")
        raise


def _publish_each(publish: _Published, steps: list[StepRecord]) -> None:
    """Publish steps given back (one message each: they may be of different runs)."""
    for step in steps:
        publish((step,))


def _release_all(
    runner: StepRunner,
    steps: list[StepRecord],
    publish: Callable[[tuple[StepRecord, ...]], None],
    *,
    why: str,
) -> None:
    """Put claimed continuations back to ``ready`` and publish them (best effort: where the
    store or broker is down, the sweeper re-sends them once their leases expire)."""
    for step in steps:
        try:
            release_step(runner, step, publish, why=why)
        except Exception as exc:
            log.warning("could not hand back step %s[%s] of run %s (%s); the sweeper re-sends "
                        "it once its lease expires", step.asset, step.partition, step.run_id, exc)


def record_carried(app: FlowstoneCelery) -> None:
    """Record the finishes this process carries (see :mod:`flowstone_celery.carried`),
    publish what they made ready and give back the continuations they claimed: a pool
    process about to exit. Where the store is down, the steps are left to the sweeper."""
    for batch in app.carried.take_all():
        _record_quietly(batch)


def hand_back(app: FlowstoneCelery, bodies: list[object]) -> int:
    """Publish the not-started steps of a batch, one message each; returns how many.
    If the broker refuses, they stay ``ready`` and the sweeper re-sends them after
    ``FLOWSTONE_RECOVER_AFTER``."""
    steps = unstarted(bodies)
    if not steps:
        return 0
    why = "the worker is draining" if draining.requested() else "the message took too long"
    try:
        app.executor.send_back(steps)
    except StorageError as exc:
        log.warning("could not hand back %d step(s) of a batch (%s): %s; the sweeper re-sends "
                    "them", len(steps), why, exc)
        return 0
    log.info("handed %d step(s) of a batch back to the broker: %s", len(steps), why)
    return len(steps)


def run_steps(runner: StepRunner, run_id: str, asset: str, partition: str, *, inline: int) -> int:
    """Run one step, then up to ``inline`` of the steps it made ready, one after the other
    (see :func:`flowstone.engine.run_chain`): each finish also claims, in its own
    transaction, the first step it made ready; that one runs here next, every other one is
    published at once. Returns how many steps were published. A continuation that cannot
    run here (the store failed) is put back to ``ready`` and published before the error
    propagates, so it does not wait for its lease to expire.
    """
    publish = _Published(runner)
    step = StepRecord(run_id, asset, partition, "ready", 0)
    run_chain(
        runner, step, budget=inline, hand_off=publish, hand_back=True, stop=draining.requested
    )
    return publish.count


def register(app: FlowstoneCelery) -> None:
    """Add the FlowStone tasks to ``app``."""
    from flowstone_celery.app import RUN_STEP_TASK, SWEEP_TASK

    # shared=False: Celery would otherwise register these closures on every app built
    # later in the process, and each app must run steps against its own pipelines.
    @app.task(  # type: ignore[untyped-decorator]
        name=RUN_STEP_TASK, bind=True, shared=False, acks_late=True,
        reject_on_worker_lost=True, ignore_result=True, max_retries=None,
    )
    def run_step(self: Task, message: object) -> int:
        try:
            return handle_step(app, message, carry=True)
        except Exception as exc:
            limit = app.flowstone_settings.infra_retries
            if self.request.retries >= limit:
                log.error("giving up on step message %r after %d retries (%s); the sweeper "
                          "re-dispatches it once the store is reachable", message, limit, exc)
                return 0
            delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** self.request.retries)
            log.warning("step message %r failed (%s: %s); retrying in %.1fs", message,
                        type(exc).__name__, exc, delay)
            raise self.retry(exc=exc, countdown=delay) from exc

    @app.task(  # type: ignore[untyped-decorator]
        name=SWEEP_TASK, shared=False, ignore_result=True, acks_late=True)
    def sweep() -> int:
        from flowstone_celery.sweeper import Sweeper

        if not app.pipelines:
            log.warning("flowstone.sweep ran on a worker that serves no pipelines")
            return 0
        return Sweeper(app).sweep().recovered
