"""``FinishBatch``: the finishes of steps one caller ran one after the other, recorded in one
store transaction.

A Celery worker runs a pack's steps one after the other (see ``flowstone_celery.packing``);
each step's finish used to be a transaction of its own, committed synchronously, and the
last of a run's finishes to leave nothing runnable locked the run's row to recompute its
status. With a batch, the worker claims and runs each step as before, and its finish waits
here; :meth:`FinishBatch.flush` records them together (one commit, one status update per
run) through the store's :class:`~flowstone.protocols.BatchFinish`, then hands each result
back like :meth:`StepRunner.run <flowstone.engine.runner.StepRunner.run>` would have.

Nothing else changes for a step: it is claimed on its own, fenced by its attempt, and its
finish applies at most once. A step whose finish is waiting is still ``running`` under its
claim: a worker that dies before the flush leaves it to the sweeper, which runs it again,
exactly as for a worker that dies before a single finish. A finish waits at most
``seconds``: the caller flushes before the next step once the oldest finish is that old
(:meth:`FinishBatch.due`), and while a step runs (:meth:`FinishBatch.running`) the
process's watcher thread records the waiting finishes when they reach that age and
publishes what they made ready, so a long step does not hold back the steps that ran
before it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator

from flowstone.engine.chain import release_step
from flowstone.engine.runner import PendingFinish, StepResult, StepRunner, describe_error
from flowstone.records import StepRecord

__all__ = ["FinishBatch", "Watch"]

log = logging.getLogger("flowstone.engine")


class FinishBatch:
    """Finishes waiting to be recorded together: at most ``size`` of them, none for longer
    than ``seconds``.

    Args:
        runner: the runner of the steps whose finishes it holds (one pipeline).
        size: the most finishes per transaction; ``1`` (or a store without
            :class:`~flowstone.protocols.BatchFinish`) records each finish at once.
        seconds: how long a finish may wait for the next steps of the batch.
        hand_off: where the steps that finishes recorded while a step runs made ready
            go (see :meth:`running`); by default the runner's executor dispatches them.

    Thread-safe: the watcher thread may record the waiting finishes while the caller runs
    a step (see :meth:`running`).
    """

    __slots__ = ("_first", "_hand_off", "_lock", "_pending", "runner", "seconds", "size")

    def __init__(
        self,
        runner: StepRunner,
        *,
        size: int,
        seconds: float,
        hand_off: Callable[[tuple[StepRecord, ...]], None] | None = None,
    ) -> None:
        self.runner = runner
        self._hand_off = hand_off or (lambda ready: runner.dispatch(ready[0].run_id, ready))
        self.size = size if runner.runtime.capabilities.batch_finish is not None else 1
        self.seconds = seconds
        self._pending: list[PendingFinish] = []
        self._first = 0.0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def batching(self) -> bool:
        """Whether finishes wait here at all (else each is recorded when its step ends)."""
        return self.size > 1

    def add(self, pending: PendingFinish) -> None:
        """Hold ``pending`` (a step's outcome, not recorded yet) until :meth:`flush`."""
        with self._lock:
            if not self._pending:
                self._first = time.monotonic()
            self._pending.append(pending)

    def due(self) -> bool:
        """Whether to flush before the next step: the batch is full, or its oldest finish
        has waited ``seconds``. A batch may hold the finishes of many runs (a pack of
        ``run_many``'s steps, the joins they complete): the store takes its locks in one
        global order and settles each run once, last (see
        :class:`~flowstone.protocols.BatchFinish`)."""
        with self._lock:
            if not self._pending:
                return False
            full = len(self._pending) >= self.size
            return full or time.monotonic() - self._first >= self.seconds

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Around a step the caller runs while finishes wait here: once the oldest of them
        is ``seconds`` old, the process's watcher thread records them (without claiming
        continuations: what they made ready is published) so they do not wait for the
        step to end."""
        watch = self.record_when_due()
        if watch is None:
            yield
            return
        try:
            yield
        finally:
            watch.stop()  # a flush under way completes before the caller goes on

    def record_when_due(self) -> Watch | None:
        """Have the process's watcher thread record the waiting finishes once the oldest of
        them is ``seconds`` old, as while a step runs (see :meth:`running`); None when
        none waits. The registration's :meth:`~Watch.stop` cancels it, or waits for a
        recording under way, after which the batch is the caller's again. A recording that
        fails leaves the finishes waiting here, for the next :meth:`flush`."""
        with self._lock:
            due = self._first + self.seconds if self._pending else None
        return None if due is None else _watcher().watch(due, self._flush_meanwhile)

    def flush(self) -> list[StepResult]:
        """Record every waiting finish (see :meth:`StepRunner.complete_many
        <flowstone.engine.runner.StepRunner.complete_many>`) and return what each left to
        do, in the order they were added (those the watcher recorded meanwhile are not among
        them: it published what they made ready, see :meth:`running`). If they cannot be
        recorded, their steps are put back to ``ready`` (best effort: the sweeper takes
        over where the store is down) and the error is raised (a Celery task then retries
        its message, which runs them again)."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return []
        try:
            return self.runner.complete_many(pending)
        except Exception as exc:
            self._release(pending, exc)
            raise

    def _flush_meanwhile(self) -> None:
        """The watcher's flush: record the waiting finishes and publish what they made
        ready; if they cannot be recorded they wait again, for the caller's
        :meth:`flush`."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            results = self.runner.complete_many(
                [dataclasses.replace(p, then=None) for p in pending]
            )
        except Exception as exc:
            log.warning("recording %d finishes while a step runs failed (%s); they are "
                        "recorded after it", len(pending), describe_error(exc))  # fmt: skip
            with self._lock:
                self._pending[:0] = pending
                self._first = time.monotonic()
            return
        for result in results:
            if not result.ready:
                continue
            try:
                self._hand_off(result.ready)
            except Exception as exc:  # they are ready in the store: the sweeper re-sends them
                log.warning("could not dispatch %d ready step(s) of run %s: %s",
                            len(result.ready), result.ready[0].run_id, describe_error(exc))

    def _release(self, pending: list[PendingFinish], exc: Exception) -> None:
        for p in pending:
            try:
                release_step(self.runner, p.step, None,
                             why=f"its outcome could not be recorded: {describe_error(exc)}")
            except Exception:
                log.warning(
                    "could not put step %s[%s] of run %s back to ready; the sweeper runs it "
                    "again once its lease expires", p.step.asset, p.step.partition, p.step.run_id,
                )  # fmt: skip


class Watch:
    """One :meth:`FinishBatch.record_when_due` registration: ``action`` runs on the watcher thread
    at ``due`` unless :meth:`stop` came first; :meth:`stop` waits for it if it started."""

    __slots__ = ("_state", "action", "due", "watcher")

    def __init__(self, watcher: _Watcher, due: float, action: Callable[[], None]) -> None:
        self.watcher, self.due, self.action = watcher, due, action
        self._state = "waiting"  # -> "running" -> "done", or "stopped"

    def stop(self) -> None:
        with self.watcher.cond:
            if self._state == "waiting":
                self._state = "stopped"
                return
            while self._state == "running":
                self.watcher.cond.wait()


class _Watcher:
    """A daemon thread per process that runs :class:`Watch` actions when they are due
    (one thread however many steps run, instead of a timer thread per step)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._watches: list[Watch] = []
        # when the thread wakes up next on its own (-inf while it is awake: it looks at
        # every watch before it sleeps again); a watch due later needs no wake-up call,
        # so a step that starts while others' finishes wait costs no thread switch
        self._until = -math.inf
        self.pid = os.getpid()
        threading.Thread(target=self._loop, name="flowstone-finish-batch", daemon=True).start()

    def watch(self, due: float, action: Callable[[], None]) -> Watch:
        watch = Watch(self, due, action)
        with self.cond:
            self._watches.append(watch)
            if due < self._until:
                self.cond.notify_all()
        return watch

    def _loop(self) -> None:
        while True:
            with self.cond:
                self._watches = [w for w in self._watches if w._state == "waiting"]
                now = time.monotonic()
                ready = next((w for w in self._watches if w.due <= now), None)
                if ready is None:
                    wait = max(0.001, min((w.due for w in self._watches), default=now + 3600) - now)
                    self._until = now + wait
                    self.cond.wait(timeout=wait)
                    self._until = -math.inf
                    continue
                ready._state = "running"
            try:
                ready.action()
            except Exception:  # the action logs its own failures; never kill the thread
                log.exception("a finish batch's watcher action failed")
            finally:
                with self.cond:
                    ready._state = "done"
                    self.cond.notify_all()


_WATCHER: _Watcher | None = None
_WATCHER_LOCK = threading.Lock()


def _watcher() -> _Watcher:
    """This process's watcher (a forked child starts its own)."""
    global _WATCHER
    with _WATCHER_LOCK:
        if _WATCHER is None or _WATCHER.pid != os.getpid():
            _WATCHER = _Watcher()
        return _WATCHER
