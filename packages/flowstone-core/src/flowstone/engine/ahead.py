"""``ClaimedAhead``: the steps of one message, claimed together before the first runs.

A Celery worker that takes a message of several steps (a pack of one run's steps, or
``run_many``'s steps of many runs) used to claim each step just before running it: one
round trip to the store per step, as many as the finishes a :class:`~flowstone.engine.
FinishBatch` saves. :meth:`ClaimedAhead.claim` claims them all at once
(:meth:`StepRunner.claim_many <flowstone.engine.runner.StepRunner.claim_many>`); each is
then run with :meth:`~flowstone.engine.runner.StepRunner.run_claimed` when its turn
comes.

Nothing about a step changes but when its claim is taken: each claim is its own attempt
and lease, fenced as before. Until a step starts, the runner's lease keeper renews its
lease, so a long step ahead of it never lets it expire and be taken over while it waits.
A step that will not run here after all (the worker drains, the message ran out of time,
an error) is given back (:meth:`ClaimedAhead.release`): ``ready`` again, fenced by its
claim, for the caller to publish. A worker killed while holding claims leaves them to
their leases, like a step killed while it ran: the sweeper takes them over (a new
attempt).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence

from flowstone.engine.chain import give_back
from flowstone.engine.runner import StepRunner
from flowstone.records import StepRecord

__all__ = ["ClaimedAhead"]

log = logging.getLogger("flowstone.engine")


class ClaimedAhead:
    """Steps claimed for one caller, waiting for their turn with their leases kept.

    Use :meth:`claim` (or :meth:`hold` for steps claimed already, such as the
    continuations a batch of finishes claimed), then :meth:`take` each step in turn, and
    :meth:`release` what is left when the caller stops early (nothing once every step was
    taken).
    """

    __slots__ = ("_holds", "_steps", "runner")

    def __init__(self, runner: StepRunner, steps: Sequence[StepRecord | None]) -> None:
        self.runner = runner
        self._steps: list[StepRecord | None] = list(steps)
        # index -> (its lease kept, the event set if the lease was lost meanwhile)
        self._holds: dict[int, tuple[contextlib.ExitStack, threading.Event]] = {}

    @classmethod
    def claim(cls, runner: StepRunner, keys: Sequence[tuple[str, str, str]]) -> ClaimedAhead:
        """Claim the steps at ``keys`` (run, asset, partition) for this thread; a step that
        cannot be claimed (a duplicate delivery, a cancelled run) is ``None`` in
        :meth:`take`."""
        return cls.hold(runner, runner.claim_many(keys))

    @classmethod
    def hold(cls, runner: StepRunner, steps: Sequence[StepRecord | None]) -> ClaimedAhead:
        """Keep the leases of ``steps``, claimed for this caller already, until each is
        taken."""
        ahead = cls(runner, steps)
        for index, step in enumerate(ahead._steps):
            if step is not None:
                hold = contextlib.ExitStack()
                lost = hold.enter_context(runner.holding(step))
                ahead._holds[index] = (hold, lost)
        return ahead

    def take(self, index: int) -> StepRecord | None:
        """The ``index``-th step, claimed for this caller (its lease no longer kept here:
        running it keeps it); ``None`` if it could not be claimed, or if its lease was lost
        while it waited (another runner has it now: running it here too would run it
        twice)."""
        hold = self._holds.pop(index, None)
        step, self._steps[index] = self._steps[index], None
        if hold is None:
            return step
        kept, lost = hold
        kept.close()
        if lost.is_set():
            assert step is not None
            log.warning("step %s[%s] of run %s lost its lease while it waited for its turn; "
                        "it runs where it was taken over", step.asset, step.partition,
                        step.run_id)  # fmt: skip
            return None
        return step

    def release(self, *, why: str) -> list[StepRecord]:
        """Give back every step not taken: ``ready`` again (fenced by its claim), returned
        for the caller to publish. Best effort: a step the store cannot release now is
        left to its lease (the sweeper takes it over)."""
        waiting = [step for index, step in enumerate(self._steps)
                   if step is not None and self.take(index) is not None]  # fmt: skip
        return give_back(self.runner, waiting, why=why)
