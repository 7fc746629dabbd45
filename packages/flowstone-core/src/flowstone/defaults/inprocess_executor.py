"""The in-process executor: steps run on as few threads as keep them moving.

The dispatch contract: :meth:`InProcessExecutor.dispatch` returns when nothing more of the
run can progress in this process: every step finished, or the rest waits for an approval,
a signal or a coordinator. A retry waits out its backoff (``not_before``) on the
dispatching thread's clock, holding no worker. At least every 0.1 s the dispatching thread
checks whether the run was cancelled (it then returns at once: Python cannot stop the
running assets, so they finish in the background, unrecorded) and enforces parallel
branch timeouts (a worker stuck in a timed-out step is abandoned: the run goes on without
it, and its finish is refused by the store's fence). An error a worker cannot record (the
store is down) ends the dispatch and is raised from it. At most ``max_workers`` threads
run steps.

How (:mod:`flowstone.defaults.step_workers`): a dispatch starts one worker thread; a worker
runs a step and the chain of continuations its finishes claim
(:func:`~flowstone.engine.run_chain`), puts the other steps they made ready on the
dispatch's queue and takes the next itself, with no trip through the dispatching thread.
Another thread joins only while steps wait and every worker has been inside its current
step for longer than ``blocked_after`` (it waits on I/O, sleeps, or computes for long),
the way Go's runtime monitor hands a blocked thread's work to another; a worker that
finishes while another has just started a step goes idle instead of competing for the
GIL. Trivial steps therefore run one after another on one thread, and slow ones side by
side.

Measured (``bench/inprocess.py``, 500 trivial assets, 2 vCPUs), the thread pool this
replaced cost 874 µs/asset with six threads, 630 with one, against 545 with every step on
the calling thread: six threads running trivial steps contend for the GIL (SQLite and
file writes release it, so they ping-pong), and each step crossed to the dispatcher and
back. See ``docs/performance.md`` (In-process) for the figures of this design.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from flowstone.defaults.step_workers import StepWorkers
from flowstone.engine.runner import StepRunner
from flowstone.engine.timeouts import enforce_parallel_timeouts
from flowstone.errors import UsageError
from flowstone.records import StepRecord

__all__ = ["InProcessExecutor"]

_CANCEL_POLL_S = 0.1  # how often a dispatch checks for cancellation and branch timeouts
BLOCKED_AFTER_S = 0.002
"""Default ``blocked_after``: a step running longer counts as blocked (see the module)."""
FINISH_BATCH = 32
"""Default ``finish_batch``: the most step finishes a worker records in one transaction."""


class InProcessExecutor:
    """Runs a run's steps in this process, on at most ``max_workers`` threads: one while
    steps are quick, more while running steps block (I/O, sleeps), so independent slow
    assets run side by side.

    ``dispatch`` returns when nothing more of the run can progress in this process: every
    step finished, or the rest waits for an approval or a signal. Retries wait for their
    backoff without holding a thread.

    Args:
        max_workers: the most threads that run steps at once (default ``min(32, CPUs + 4)``).
        blocked_after: seconds after which a running step counts as blocked: when steps
            wait and every worker is inside a step older than this, another thread
            starts (up to ``max_workers``).
    """

    name = "inprocess"
    blocking = True

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        blocked_after: float = BLOCKED_AFTER_S,
        finish_batch: int = FINISH_BATCH,
    ) -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise UsageError(f"InProcessExecutor(max_workers={max_workers!r}) must be an int >= 1")
        if (
            isinstance(blocked_after, bool)
            or not isinstance(blocked_after, int | float)
            or not math.isfinite(blocked_after)
            or blocked_after <= 0
        ):
            raise UsageError(
                f"InProcessExecutor(blocked_after={blocked_after!r}) must be a number of "
                "seconds > 0"
            )
        if isinstance(finish_batch, bool) or not isinstance(finish_batch, int) or finish_batch < 1:
            raise UsageError(
                f"InProcessExecutor(finish_batch={finish_batch!r}) must be an int >= 1 "
                "(1 records each step's finish on its own)"
            )
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self.blocked_after = float(blocked_after)
        self.finish_batch = finish_batch

    def dispatch(self, runner: StepRunner, run_id: str, steps: Sequence[StepRecord]) -> None:
        """Run ``steps`` and everything they make ready; return when nothing more of the run
        can progress here (see the module for the contract)."""
        workers = StepWorkers(
            runner, self.max_workers, self.blocked_after, finish_batch=self.finish_batch
        )
        workers.add(steps)
        try:
            while workers.watch(_CANCEL_POLL_S):
                if runner.runtime.branch_index:
                    more, timed_out = enforce_parallel_timeouts(runner, run_id)
                    workers.abandon(timed_out)  # their threads finish unrecorded
                    workers.add(more)
                if _cancelled(runner, run_id):
                    # Python cannot stop the running assets: they finish in the
                    # background, unrecorded
                    workers.abandon_all()
                    return
        finally:
            workers.close()

    def close(self) -> None:
        return None

    def health(self) -> str:
        return "ok"


def _cancelled(runner: StepRunner, run_id: str) -> bool:
    run = runner.runtime.store.get_run(run_id)
    return run is not None and run.status == "cancelled"
