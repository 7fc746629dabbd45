"""The in-process executor: a bounded thread pool in the calling process."""

from __future__ import annotations

import heapq
import itertools
import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any

from flowstone.errors import UsageError
from flowstone.records import StepRecord

__all__ = ["InProcessExecutor"]


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

    def dispatch(self, pipeline: Any, run_id: str, steps: Sequence[StepRecord]) -> None:
        runner = pipeline.runner
        ready: deque[StepRecord] = deque(steps)
        delayed: list[tuple[float, int, StepRecord]] = []
        seq = itertools.count()
        running: dict[Future[tuple[StepRecord, ...]], StepRecord] = {}
        with ThreadPoolExecutor(self.max_workers, thread_name_prefix="flowstone") as pool:
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
                    fut = pool.submit(runner.run_step, step.run_id or run_id, step.asset,
                                      step.partition)
                    running[fut] = step
                timeout = max(0.0, delayed[0][0] - time.monotonic()) if delayed else None
                if not running:
                    if timeout:
                        time.sleep(timeout)
                    continue
                done, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
                for fut in done:
                    running.pop(fut)
                    ready.extend(fut.result())

    def close(self) -> None:
        return None

    def health(self) -> str:
        return "ok"


def _seconds_until(when: datetime | None) -> float:
    if when is None:
        return 0.0
    return (when - datetime.now(UTC)).total_seconds()
