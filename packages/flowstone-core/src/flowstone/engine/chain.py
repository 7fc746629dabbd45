"""``run_chain``: run a step, then the continuations its finishes claim for this caller.

Both executors follow a chain of steps in one place without a claim or a hand-off per
step (``finish_step`` claims the next step in its own transaction, see
:class:`~flowstone.records.Continuation`). They differ only in what they do with the
other ready steps and how far they go, which are this function's parameters:

* in-process: ``hand_off`` puts the other ready steps on the dispatch's queue, where
  idle worker threads take them; no budget; ``started`` tells the dispatcher which step a
  worker is in and since when (it adds a thread when every worker is blocked in one),
  ``stop`` ends the chain once the dispatch has returned (a cancelled run).
* Celery: ``hand_off`` publishes the other ready steps at once, ``budget`` is
  ``FLOWSTONE_INLINE_STEPS`` (then the chain goes back to the broker), and a continuation
  that cannot run here is handed back (made ready and published) before the error
  propagates, so it never waits for its lease to expire.

Without ``hand_off`` the chain stops as soon as a step makes more than one step ready
and returns them all (the claimed one ``running``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flowstone.engine.runner import StepRunner, describe_error
from flowstone.records import Fence, StepRecord

__all__ = ["give_back", "release_step", "run_chain"]

log = logging.getLogger("flowstone.engine")


def run_chain(
    runner: StepRunner,
    step: StepRecord,
    *,
    budget: int | None = None,
    hand_off: Callable[[tuple[StepRecord, ...]], None] | None = None,
    hand_back: bool = False,
    stop: Callable[[], bool] | None = None,
    started: Callable[[StepRecord], object] | None = None,
) -> tuple[StepRecord, ...]:
    """Run ``step`` (ready, or already claimed for this caller) and follow its chain.

    Args:
        budget: at most this many continuations after ``step`` (None: no limit); the
            last one runs without claiming a next one.
        hand_off: called with the other ready steps as they appear; without it the chain
            stops at the first step that makes more than one step ready.
        hand_back: put a continuation that raised back to ``ready`` and hand it off
            before re-raising (needs ``hand_off``).
        stop: asked before each continuation; once it says True (the worker is shutting
            down) the claimed continuation is put back to ``ready`` and handed off (or
            returned, without ``hand_off``) instead of run here.
        started: called with ``step`` and with each continuation just before it runs.

    Returns:
        The steps left for the caller to dispatch (empty with ``hand_off``). A claimed
        continuation among them is in state ``running``: run it with
        :meth:`StepRunner.run` (or :func:`run_chain`), never dispatch it elsewhere.
    """
    left = budget
    if started is not None:
        started(step)
    result = runner.run(step, claim_next=left is None or left > 0)
    while True:
        if hand_off is None:
            if result.ready or result.next is None:
                return result.steps
        elif result.ready:
            hand_off(result.ready)
        following = result.next
        if following is None:
            return ()
        if stop is not None and stop():
            return release_step(runner, following, hand_off)
        if left is not None:
            left -= 1
        if started is not None:
            started(following)
        try:
            result = runner.run_claimed(following, claim_next=left is None or left > 0)
        except Exception as exc:
            if hand_back and hand_off is not None:
                _hand_back(runner, following, exc, hand_off)
            raise


def release_step(
    runner: StepRunner,
    step: StepRecord,
    hand_off: Callable[[tuple[StepRecord, ...]], None] | None,
    *,
    why: str = "the worker is shutting down",
) -> tuple[StepRecord, ...]:
    """Give a claimed continuation back (ready, fenced by its claim) instead of running it:
    handed off, or returned without ``hand_off``."""
    released = runner.runtime.store.retry_step(
        step.run_id, step.asset, step.partition, delay_seconds=0.0,
        error=f"handed back: {why}", fence=_fence(step),
    )  # fmt: skip
    if not released:
        return ()
    if hand_off is None:
        return (released,)
    hand_off((released,))
    return ()


def give_back(runner: StepRunner, steps: list[StepRecord], *, why: str) -> list[StepRecord]:
    """:func:`release_step` each of ``steps`` (claimed, not started), best effort: one the
    store cannot release now is left to its lease (recovery takes it over); returns those
    released, ``ready`` again."""
    released: list[StepRecord] = []
    for step in steps:
        try:
            released += release_step(runner, step, None, why=why)
        except Exception as exc:
            log.warning("could not give back step %s[%s] of run %s (%s); it is taken over "
                        "once its lease expires", step.asset, step.partition, step.run_id,
                        describe_error(exc))  # fmt: skip
    return released


def _fence(step: StepRecord) -> Fence | None:
    return None if step.owner is None else Fence(step.owner, step.attempt)


def _hand_back(
    runner: StepRunner,
    step: StepRecord,
    exc: Exception,
    hand_off: Callable[[tuple[StepRecord, ...]], None],
) -> None:
    """Best effort: make a continuation that failed to run ready again and hand it off."""
    try:
        retried = runner.runtime.store.retry_step(
            step.run_id, step.asset, step.partition, delay_seconds=0.0,
            error=f"continuation could not run here: {type(exc).__name__}: {exc}",
            fence=_fence(step),
        )  # fmt: skip
        if retried:
            hand_off((retried,))
    except Exception:  # the store or broker is down too: the lease expires, the sweeper acts
        log.warning(
            "could not hand back step %s[%s] of run %s; the sweeper will re-send it once its "
            "lease expires", step.asset, step.partition, step.run_id,
        )  # fmt: skip
