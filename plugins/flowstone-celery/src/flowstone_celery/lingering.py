"""Dispatch linger: the ready steps of runs started one after the other share a message
while the queue is backlogged.

A client that starts runs one ``Pipeline.run(wait=False)`` at a time (a fan-in per parent
record, a loop over files) publishes one message per run. Each message costs the worker's
main process about a millisecond whatever it carries, and each one a pool process takes is
one claim and one finish transaction. When the queue already holds a message for every
worker slot, a message published now waits behind those anyway (the rule that packs one
run's steps, see :mod:`flowstone_celery.packing`). So :meth:`CeleryExecutor.dispatch
<flowstone_celery.CeleryExecutor.dispatch>` then *lingers*, as Kafka's producer does with
``linger.ms``: the steps wait here up to ``FLOWSTONE_DISPATCH_LINGER_SECONDS`` (5 ms by
default) for the next runs' steps, and go out together, at most ``FLOWSTONE_PACK_STEPS``
to a message, as soon as that many wait. The worker runs such a message as a pack of
several runs (as for ``run_many``): its steps are claimed together, recorded together,
and each is still claimed, fenced, retried and recorded on its own.

Nothing about durability changes. The run and its ``ready`` steps are committed before
``dispatch`` is called; a lingering message is only not published yet. If the process
dies before it is (SIGKILL; a normal exit publishes it, see :meth:`Linger.flush`), the
steps are still ``ready`` and the sweeper re-sends them after ``FLOWSTONE_RECOVER_AFTER``,
as it does for a message the broker lost. A worker's task never lingers (what its
finishes make ready is published at once; only what the watcher thread records while a
step runs may linger, behind a full queue), nor does anything with a countdown.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from flowstone.errors import StorageError

__all__ = ["Linger"]

log = logging.getLogger("flowstone.celery")


def _flush_at_exit(ref: weakref.ref[Linger]) -> None:
    linger = ref()
    if linger is not None:
        linger.flush()


class Linger:
    """Step messages waiting to be published together: at most ``most`` to a message,
    none longer than ``seconds``.

    Args:
        publish: publishes one message carrying a list of step messages; raises
            ``StorageError`` when the broker refuses.
        seconds: how long a step message waits at most.
        most: how many step messages one message carries at most.

    Thread-safe. A daemon thread, started with the first lingering message, publishes
    what is due; :meth:`flush` (the executor's ``close``, and this process's exit)
    publishes everything now.
    """

    def __init__(
        self, publish: Callable[[list[dict[str, Any]]], None], *, seconds: float, most: int
    ) -> None:
        self._publish = publish
        self.seconds, self.most = seconds, most
        self._cond = threading.Condition()
        self._held: list[dict[str, Any]] = []
        self._due = 0.0
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        atexit.register(_flush_at_exit, weakref.ref(self))

    def __len__(self) -> int:
        with self._cond:
            return len(self._held)

    def add(self, bodies: Sequence[dict[str, Any]]) -> None:
        """Hold ``bodies`` for the next message; publish now (in this thread, raising
        ``StorageError`` like any dispatch) the messages that are full."""
        full: list[list[dict[str, Any]]] = []
        with self._cond:
            if self._pid != os.getpid():  # a forked child: the parent publishes its own
                self._held, self._thread, self._pid = [], None, os.getpid()
            if self._held and len(self._held) + len(bodies) > self.most:
                full.append(self._held)
                self._held = []
            if not self._held:
                self._due = time.monotonic() + self.seconds
            self._held.extend(bodies)
            if len(self._held) >= self.most:
                full.append(self._held)
                self._held = []
            elif self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="flowstone-dispatch-linger", daemon=True
                )
                self._thread.start()
            else:
                self._cond.notify()
        for message in full:
            self._publish(message)

    def flush(self) -> None:
        """Publish what waits, now (best effort: if the broker refuses, the steps are
        ``ready`` in the store and the sweeper re-sends them)."""
        with self._cond:
            held, self._held = self._held, []
            if self._pid != os.getpid():
                return
        self._send(held)

    def _send(self, held: list[dict[str, Any]]) -> None:
        if not held:
            return
        try:
            self._publish(held)
        except StorageError as exc:
            log.warning("%s; the sweeper re-sends those steps", exc)
        except Exception:  # never let the publishing thread die: the steps are ready
            log.exception("publishing %d lingering step(s) failed; the sweeper re-sends "
                          "them", len(held))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._held:
                    self._cond.wait()
                wait = self._due - time.monotonic()
                if wait > 0:
                    self._cond.wait(timeout=wait)
                    continue
                held, self._held = self._held, []
            self._send(held)
