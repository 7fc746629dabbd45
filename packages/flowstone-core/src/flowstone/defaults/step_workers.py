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

With ``finish_batch`` > 1 (the default when the store offers
:class:`~flowstone.protocols.BatchFinish`, as the SQLite store does) a worker's finishes
wait in a :class:`~flowstone.engine.FinishBatch` and are recorded together, and what they
claim is shared: a worker takes the ready steps on the queue (up to a batch) and claims
them in one transaction (:meth:`StepRunner.claim_many
<flowstone.engine.runner.StepRunner.claim_many>`), they join the dispatch's *claimed*
steps, and any worker runs claimed steps, its finishes waiting in its batch (a step that
waited there for a third of its lease has it renewed first; if another runner took it over
meanwhile, it is not run here). A worker records its batch when it is full or its oldest
finish is ``batch_seconds`` old (then also while it runs a step, from the batch's watcher
thread) and always before it goes idle; what the finishes made ready joins the queue, and
the dependent each finish claimed joins the claimed steps. A layer of independent steps
thus costs one claim transaction and one finish transaction instead of one of each per
step; a step's own semantics (its claim, attempt, fence, retries) do not change. A step
whose finish waits is still ``running`` under its claim: a process that dies before the
batch is recorded leaves it to recovery (a new attempt), like a step it was running.
When the dispatch ends (finished, cancelled, or an error) the claimed steps no worker
started are given back, ``ready`` again.

Everything shared is guarded by one lock; a worker updates only its own ``since`` and
``step`` without it (the watcher reads them as hints).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable
from datetime import UTC, datetime

from flowstone.engine.batch import FinishBatch
from flowstone.engine.chain import give_back, run_chain
from flowstone.engine.runner import StepResult, StepRunner
from flowstone.records import StepRecord

__all__ = ["StepWorkers"]

log = logging.getLogger("flowstone.engine")
_monotonic = time.monotonic
_FLUSH = object()  # _take_work: record the finishes waiting in the worker's batch first
_Held = tuple[StepRecord, float]
"""A claimed step no worker has started, and when it was claimed (monotonic seconds)."""


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
        "_batch_seconds", "_blocked_after", "_delayed", "_finish_batch", "_idle", "_lock",
        "_max", "_runner", "_seq", "_wake", "_watching", "_work", "_workers", "abandoned",
        "claimed", "closed", "error", "ready",
    )  # fmt: skip

    def __init__(
        self,
        runner: StepRunner,
        max_workers: int,
        blocked_after: float,
        *,
        finish_batch: int = 1,
        batch_seconds: float = 0.05,
    ) -> None:
        self._runner = runner
        self._max = max_workers
        self._blocked_after = blocked_after
        self._finish_batch = finish_batch
        self._batch_seconds = batch_seconds
        # steps claimed for this dispatch that no worker has started: (step, its lease
        # claimed); any worker takes them
        self.claimed: deque[_Held] = deque()
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
                waiting = bool(self.ready or self.claimed)
                if not waiting and not self._delayed and latest is None:
                    return False
                if now >= until:
                    return True
                timeout = until - now
                if self._delayed:
                    timeout = min(timeout, self._delayed[0][0] - now)
                # told of no new ready steps while it knows of some: it can add a worker
                # only when one is idle or fewer than max_workers exist (_take tells it)
                self._watching = waiting
                if waiting and (self._idle or len(self._workers) < self._max):
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
        """No step is taken any more; wait for the workers unless one was abandoned, and
        give back the steps claimed for the dispatch that none started (``ready`` again,
        fenced by their claims: a resumed run takes them at once)."""
        with self._lock:
            self.closed = True
            self._work.notify_all()
            workers = list(self._workers)
        if not self.abandoned:
            for w in workers:
                assert w.thread is not None
                w.thread.join()
        with self._lock:
            left = [step for step, _at in self.claimed]
            self.claimed.clear()
        give_back(self._runner, left, why="the dispatch ended before it ran")

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
            if self._finish_batch > 1:
                batch = FinishBatch(runner, size=self._finish_batch,
                                    seconds=self._batch_seconds, hand_off=self.add)  # fmt: skip
                if batch.batching:
                    self._serve_batched(me, batch)
                    return
            while (step := self._take(me)) is not None:
                run_chain(runner, step, hand_off=self.add, stop=stop, started=me.started)
        except BaseException as exc:  # an infrastructure error: the dispatch raises it
            with self._lock:
                me.since = None
                if self.error is None:
                    self.error = exc
                self.closed = True
                self._wake.notify()

    # --- worker threads, finishes batched -------------------------------------------------
    def _serve_batched(self, me: _Worker, batch: FinishBatch) -> None:
        """A worker whose finishes wait in ``batch`` and are recorded together: it claims
        the ready steps it takes in one transaction, runs claimed steps (any worker may
        take one another claimed), and records its batch when it is full or old (see
        :class:`~flowstone.engine.FinishBatch`) or before it goes idle. What the finishes
        made ready goes on the queue, and the dependents they claimed (one per finish, see
        :class:`~flowstone.records.Continuation`) join the claimed steps: a layer of a DAG
        costs one claim and one finish transaction, not one of each per step."""
        runner = self._runner
        try:
            while (work := self._take_work(me, bool(len(batch)))) is not None:
                if work is _FLUSH:
                    self._settle(batch.flush())
                elif isinstance(work, list):
                    keys = [(s.run_id, s.asset, s.partition) for s in work]
                    self.hold([s for s in runner.claim_many(keys) if s is not None])
                elif isinstance(work, tuple):
                    step = self._unheld(work)
                    if step is None:
                        continue
                    if batch.due():
                        self._settle(batch.flush())
                    with batch.running():  # finishes waiting too long are recorded meanwhile
                        self._settle([runner.run_claimed(step, claim_next=True, batch=batch)])
        finally:
            with self._lock:
                me.since = me.step = None
            self._settle(batch.flush())  # what ran is recorded (an error: the store's, raised)

    def hold(self, steps: Iterable[StepRecord]) -> None:
        """Add ``steps``, claimed for this dispatch, to the claimed steps any worker takes;
        one whose lease may have run low by then is renewed first (see :meth:`_unheld`)."""
        at = _monotonic()
        held = [(step, at) for step in steps]
        if not held:
            return
        with self._lock:
            closed = self.closed
            if not closed:
                self.claimed.extend(held)
                if not self._watching:
                    self._watching = True
                    self._wake.notify()
                if self._idle:
                    self._work.notify()
        if closed:  # (a worker's last flush after close(): no worker takes them any more)
            give_back(self._runner, [step for step, _at in held],
                      why="the dispatch ended before it ran")  # fmt: skip

    def _settle(self, results: list[StepResult]) -> None:
        """Queue what finishes made ready and hold the dependents they claimed."""
        for result in results:
            if result.ready:
                self.add(result.ready)
        self.hold(r.next for r in results if r.next is not None)

    def _unheld(self, held: _Held) -> StepRecord | None:
        """A claimed step a worker took, to run (running it keeps its lease); if it waited
        longer than a third of its lease, the lease is renewed first, and if that is refused
        (another runner took the step over meanwhile: running it here too would run it
        twice) None. Steps wait here for milliseconds unless every worker is blocked."""
        step, at = held
        lease = self._runner.runtime.policies.lease_seconds
        if _monotonic() - at < lease / 3 or step.owner is None:
            return step
        if self._runner.runtime.store.renew_lease(
            step.run_id, step.asset, step.partition, owner=step.owner, lease_seconds=lease,
            attempt=step.attempt,
        ):  # fmt: skip
            return step
        log.warning("step %s[%s] of run %s lost its lease while it waited for a worker; it "
                    "runs where it was taken over", step.asset, step.partition,
                    step.run_id)  # fmt: skip
        return None

    def _take_work(
        self, me: _Worker, pending: bool
    ) -> _Held | list[StepRecord] | object | None:
        """What ``me`` does next: a claimed step to run, ready steps to claim (up to a
        batch), :data:`_FLUSH` (its batch has finishes waiting and there is nothing it may
        take: they are recorded before it goes idle), or None once the dispatch is
        closed."""
        with self._lock:
            me.since = me.step = None
            while not self.closed:
                if (self.claimed or self.ready) and not self._fresh_other(me):
                    if self.claimed:
                        held = self.claimed.popleft()
                        me.started(held[0])
                        return held
                    n = min(len(self.ready), self._finish_batch)
                    me.started(_BOOKKEEPING)
                    return [self.ready.popleft() for _ in range(n)]
                if pending:
                    me.started(_BOOKKEEPING)
                    return _FLUSH
                if self.claimed or self.ready or not any(w.running() for w in self._workers):
                    self._wake.notify()
                self._idle += 1
                self._work.wait()
                self._idle -= 1
            return None

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


_BOOKKEEPING = StepRecord("", "", "", "running", 0)
"""What a worker is "in" while it claims or records for the dispatch (not a step)."""


def _seconds_until(when: datetime | None) -> float:
    if when is None:
        return 0.0
    return (when - datetime.now(UTC)).total_seconds()
