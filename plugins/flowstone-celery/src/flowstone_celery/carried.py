"""Carried finishes: the joins a pack completed, recorded with the next message's finishes.

A pack's steps are finished together (one transaction, see
:class:`~flowstone.engine.FinishBatch`), and that transaction also claims the steps they
made ready, such as a parallel join, which then runs in the same process. Until now the
join's own finish was one more transaction before the message was acknowledged: with one
run per parent, three transactions per message (claim the pack, finish it, finish the
join), the last carrying one row.

A worker busy with packs instead *carries* those last finishes: the message ends with them
waiting, and the next pack of the same pipeline on this process records them in its own
finish transaction (one round trip and one commit fewer per message). If no pack came,
the process's watcher thread records them once they have waited
``FLOWSTONE_FINISH_BATCH_SECONDS`` (:meth:`FinishBatch.record_when_due
<flowstone.engine.FinishBatch.record_when_due>`); if that recording fails (the store is
down), they wait for the next pack, under their claims' leases. A pool process records
them before it exits (:meth:`~flowstone_celery.app.FlowstoneCelery.close_pipelines`).

Nothing about exactly-once changes. A carried finish belongs to a step that is still
``running`` under its claim and lease, exactly like a step whose code has not returned
yet: the store applies it only while that claim holds (it is fenced by owner and attempt),
and a process that dies with it waiting leaves the step to the sweeper, which runs it again
once its lease expires, as for a process that died inside the step. Only messages of a
worker's ``flowstone.run_step`` task carry (``handle_step(..., carry=True)``); a direct
:func:`~flowstone_celery.tasks.handle_step` call records everything before it returns.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowstone.engine import FinishBatch, StepRunner, Watch

__all__ = ["Carried"]


class Carried:
    """The finish batches this process's last packs left waiting, one per runner (one per
    served pipeline), each with its watcher registration. Thread-safe (a ``threads``
    pool runs several messages at once: each takes a batch alone)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[StepRunner, tuple[FinishBatch, Watch]] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def hold(self, batch: FinishBatch) -> bool:
        """Keep ``batch``'s waiting finishes for the next pack of its pipeline, the watcher
        recording them once the oldest is ``batch.seconds`` old. False (nothing held, the
        caller records them now) when none waits or this process already carries a batch
        of that pipeline (another thread's)."""
        with self._lock:
            if batch.runner in self._held:
                return False
            watch = batch.record_when_due()
            if watch is None:
                return False
            self._held[batch.runner] = (batch, watch)
            return True

    def take(self, runner: StepRunner) -> FinishBatch | None:
        """The batch carried for ``runner``'s pipeline, now the caller's (its watcher
        registration stopped, after a recording under way; the finishes the watcher
        recorded are gone from it, those it could not record still wait), or None."""
        with self._lock:
            held = self._held.pop(runner, None)
        if held is None:
            return None
        batch, watch = held
        watch.stop()
        return batch

    def take_all(self) -> list[FinishBatch]:
        """Every carried batch (a pool process about to exit records them)."""
        with self._lock:
            runners = list(self._held)
        return [batch for runner in runners if (batch := self.take(runner)) is not None]
