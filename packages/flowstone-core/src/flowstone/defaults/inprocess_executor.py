"""The in-process executor: a bounded thread pool in the calling process."""

from __future__ import annotations

import heapq
import itertools
import os
import queue
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime

from flowstone.engine.chain import run_chain
from flowstone.engine.runner import StepRunner
from flowstone.engine.timeouts import enforce_parallel_timeouts
from flowstone.errors import UsageError
from flowstone.records import StepRecord

__all__ = ["InProcessExecutor"]

_CANCEL_POLL_S = 0.1  # how often a dispatch blocked on running assets checks for cancellation


class InProcessExecutor:
    """Runs independent assets concurrently on at most ``max_workers`` threads.

    ``dispatch`` returns when nothing more of the run can progress in this process: every
    step finished, or the rest waits for an approval or a signal. Retries wait for their
    backoff without holding a thread.
    """

    name = "inprocess"
    blocking = True

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise UsageError(f"InProcessExecutor(max_workers={max_workers!r}) must be an int >= 1")
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) + 4)

    def dispatch(self, runner: StepRunner, run_id: str, steps: Sequence[StepRecord]) -> None:
        """Run ``steps`` and everything they make ready, on the pool; return when nothing
        more of the run can progress here (a chain of single successors runs on in one
        thread, see :func:`~flowstone.engine.run_chain`)."""
        ready: deque[StepRecord] = deque(steps)
        delayed: list[tuple[float, int, StepRecord]] = []
        seq = itertools.count()
        running: dict[Future[tuple[StepRecord, ...]], StepRecord] = {}
        # finished futures arrive here (one cheap queue, instead of concurrent.futures.wait
        # installing a waiter on every running future each time round)
        finished: queue.SimpleQueue[Future[tuple[StepRecord, ...]]] = queue.SimpleQueue()
        pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="flowstone")
        abandoned = False
        try:
            while ready or running or delayed:
                now = time.monotonic()
                while delayed and delayed[0][0] <= now:
                    ready.append(heapq.heappop(delayed)[2])
                while ready:
                    step = ready.popleft()
                    wait_s = _seconds_until(step.not_before)
                    if wait_s > 0:
                        heapq.heappush(delayed, (now + wait_s, next(seq), step))
                        continue
                    fut = pool.submit(run_chain, runner, step)
                    running[fut] = step
                    fut.add_done_callback(finished.put)
                timeout = max(0.0, delayed[0][0] - time.monotonic()) if delayed else None
                if not running:
                    if timeout:
                        time.sleep(timeout)
                    continue
                poll = _CANCEL_POLL_S if timeout is None else min(timeout, _CANCEL_POLL_S)
                done = _finished(finished, poll)
                for fut in done:
                    if running.pop(fut, None) is not None:  # else: abandoned, timed out
                        ready.extend(fut.result())
                if not done and runner.runtime.branch_index:
                    more, timed_out = enforce_parallel_timeouts(runner, run_id)
                    ready.extend(more)
                    for fut, step in list(running.items()):
                        if (step.asset, step.partition) in timed_out:
                            running.pop(fut)  # its thread finishes unrecorded
                            abandoned = True
                if not done and _cancelled(runner, run_id):
                    # a cancelled (or timed-out) run returns now: Python cannot stop the
                    # running assets, so they finish in the background, unrecorded
                    abandoned = True
                    return
        finally:
            pool.shutdown(wait=not abandoned, cancel_futures=True)

    def close(self) -> None:
        return None

    def health(self) -> str:
        return "ok"


def _finished(
    finished: queue.SimpleQueue[Future[tuple[StepRecord, ...]]], timeout: float
) -> list[Future[tuple[StepRecord, ...]]]:
    """The futures that finished: waits up to ``timeout`` for the first, takes the rest
    that are there already."""
    try:
        done = [finished.get(timeout=timeout)]
    except queue.Empty:
        return []
    while True:
        try:
            done.append(finished.get_nowait())
        except queue.Empty:
            return done


def _cancelled(runner: StepRunner, run_id: str) -> bool:
    run = runner.runtime.store.get_run(run_id)
    return run is not None and run.status == "cancelled"


def _seconds_until(when: datetime | None) -> float:
    if when is None:
        return 0.0
    return (when - datetime.now(UTC)).total_seconds()
