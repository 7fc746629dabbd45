"""``StepWorkers``: the worker threads of one in-process dispatch, as many as keep it moving.

Workers share one queue of ready steps (and a heap of steps waiting out a retry's
backoff). A worker takes a step, runs it with :func:`~flowstone.engine.run_chain`, which
follows the continuations its finishes claim and hands the other ready steps back to the
queue, then takes the next step itself. The dispatching thread calls :meth:`StepWorkers.
watch`, which sleeps until something needs it and adds a worker (wakes an idle one, or
starts a thread while fewer than ``max_workers`` exist) when steps wait and no worker has
started a step within ``blocked_after`` seconds: all are blocked inside one. A worker
about to take a step goes idle instead when another worker started its step less than
``blocked_after`` ago, so quick steps go back to running on one thread.

Everything shared is guarded by one lock; a worker updates only its own ``since`` and
``step`` without it (the watcher reads them as hints).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable
from datetime import UTC, datetime

from flowstone.engine.chain import run_chain
from flowstone.engine.runner import StepRunner
from flowstone.records import StepRecord

__all__ = ["StepWorkers"]

_monotonic = time.monotonic


class _Worker:
    """One worker thread: the step it is in and when it started it (None: idle)."""

    __slots__ = ("abandoned", "since", "step", "thread")

    def __init__(self) -> None:
        self.since: float | None = None
        self.step: StepRecord | None = None
        self.abandoned: StepRecord | None = None  # a timed-out step it is left running
        self.thread: threading.Thread | None = None

    def started(self, step: StepRecord) -> None:
        self.step = step
        self.since = _monotonic()

    def running(self) -> bool:
        """In a step the dispatch still waits for (not idle, not abandoned)."""
        return self.since is not None and self.abandoned is not self.step


class StepWorkers:
    """The worker threads of one dispatch and the steps they share (see the module)."""

    __slots__ = (
        "_blocked_after", "_delayed", "_idle", "_lock", "_max", "_runner", "_seq", "_wake",
        "_watching", "_work", "_workers", "abandoned", "closed", "error", "ready",
    )  # fmt: skip

    def __init__(self, runner: StepRunner, max_workers: int, blocked_after: float) -> None:
        self._runner = runner
        self._max = max_workers
        self._blocked_after = blocked_after
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # idle workers wait here
        self._wake = threading.Condition(self._lock)  # the watcher waits here
        self.ready: deque[StepRecord] = deque()
        self._delayed: list[tuple[float, int, StepRecord]] = []  # (due, seq, step): a heap
        self._seq = itertools.count()
        self._workers: list[_Worker] = []
        self._idle = 0
        self._watching = False  # the watcher has seen ready steps: add() need not wake it
        self.closed = False
        self.abandoned = False  # a worker was left running: close() does not wait for it
        self.error: BaseException | None = None

    # --- called by the dispatching thread and by workers (hand-off) --------------------
    def add(self, steps: Iterable[StepRecord]) -> None:
        """Queue ``steps``; one whose ``not_before`` is ahead waits in the delayed heap."""
        with self._lock:
            for step in steps:
                wait_s = _seconds_until(step.not_before)
                if wait_s > 0:
                    heapq.heappush(self._delayed, (_monotonic() + wait_s, next(self._seq), step))
                    self._wake.notify()  # the watcher's sleep may have to end sooner
                else:
                    self.ready.append(step)
            if self.ready and not self._watching:
                self._watching = True
                self._wake.notify()

    # --- called by the dispatching thread -----------------------------------------------
    def watch(self, poll: float) -> bool:
        """Sleep until ``poll`` seconds passed (True: the caller checks the run) or nothing
        more can progress (False); meanwhile release delayed steps when due and add a
        worker when every running one is blocked. Raises a worker's error."""
        entered = _monotonic()
        until = entered + poll
        with self._lock:
            while True:
                if self.error is not None:
                    raise self.error
                now = _monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    self.ready.append(heapq.heappop(self._delayed)[2])
                latest = self._latest_start()
                if not self.ready and not self._delayed and latest is None:
                    return False
                if now >= until:
                    return True
                timeout = until - now
                if self._delayed:
                    timeout = min(timeout, self._delayed[0][0] - now)
                # told of no new ready steps while it knows of some: it can add a worker
                # only when one is idle or fewer than max_workers exist (_take tells it)
                self._watching = bool(self.ready)
                if self.ready and (self._idle or len(self._workers) < self._max):
                    # a running worker counts as fresh when this call began: the caller's
                    # own store reads just held it up (they take the GIL and the store)
                    if latest is None or now - max(latest, entered) >= self._blocked_after:
                        self._add_worker()
                        latest = now
                    timeout = min(timeout, max(latest, entered) + self._blocked_after - now)
                self._wake.wait(timeout)

    def _latest_start(self) -> float | None:
        """When the running worker that started its step last started it (None: none runs)."""
        latest = None
        for w in self._workers:
            since, step = w.since, w.step
            if since is not None and w.abandoned is not step and (latest is None or since > latest):
                latest = since
        return latest

    def abandon(self, keys: Collection[tuple[str, str]]) -> None:
        """Stop waiting for the workers in these (asset, partition) steps."""
        if not keys:
            return
        with self._lock:
            for w in self._workers:
                step = w.step
                if w.since is not None and step and (step.asset, step.partition) in keys:
                    w.abandoned = step
                    self.abandoned = True

    def abandon_all(self) -> None:
        with self._lock:
            self.abandoned = self.abandoned or any(w.running() for w in self._workers)

    def close(self) -> None:
        """No step is taken any more; wait for the workers unless one was abandoned."""
        with self._lock:
            self.closed = True
            self._work.notify_all()
            workers = list(self._workers)
        if not self.abandoned:
            for w in workers:
                assert w.thread is not None
                w.thread.join()

    def _add_worker(self) -> None:
        if self._idle:
            self._work.notify()
            return
        w = _Worker()
        w.thread = threading.Thread(
            target=self._serve, args=(w,), name=f"flowstone-{len(self._workers)}"
        )
        self._workers.append(w)
        w.thread.start()

    # --- worker threads -----------------------------------------------------------------
    def _serve(self, me: _Worker) -> None:
        runner, stop = self._runner, self._closing
        try:
            while (step := self._take(me)) is not None:
                run_chain(runner, step, hand_off=self.add, stop=stop, started=me.started)
        except BaseException as exc:  # an infrastructure error: the dispatch raises it
            with self._lock:
                me.since = None
                if self.error is None:
                    self.error = exc
                self.closed = True
                self._wake.notify()

    def _closing(self) -> bool:
        return self.closed

    def _take(self, me: _Worker) -> StepRecord | None:
        """The next ready step for ``me``, or None once the dispatch is closed."""
        with self._lock:
            me.since = me.step = None
            while not self.closed:
                if self.ready and not self._fresh_other(me):
                    step = self.ready.popleft()
                    me.started(step)  # busy before the lock is let go: the watcher sees it
                    return step
                if self.ready or not any(w.running() for w in self._workers):
                    # steps wait for an idle worker (the watcher times when it takes one),
                    # or nothing runs: the watcher decides what next
                    self._wake.notify()
                self._idle += 1
                self._work.wait()
                self._idle -= 1
            return None

    def _fresh_other(self, me: _Worker) -> bool:
        """Another worker started its step less than ``blocked_after`` ago."""
        now = _monotonic()
        for w in self._workers:
            since = w.since
            if (
                w is not me
                and since is not None
                and now - since < self._blocked_after
                and w.abandoned is not w.step
            ):
                return True
        return False


def _seconds_until(when: datetime | None) -> float:
    if when is None:
        return 0.0
    return (when - datetime.now(UTC)).total_seconds()
