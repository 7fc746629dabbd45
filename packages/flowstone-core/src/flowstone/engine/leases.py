"""Keeps the leases of running steps alive while their assets run.

A worker that dies stops renewing; its steps' leases expire and a sweeper (or a
redelivered message) re-claims them. One background thread per runner renews every
active lease at a third of its length.

A renewal is fenced by the claim's owner and attempt: when the store refuses it (the lease
expired and another runner claimed the step again), the runner has lost the step. The
keeper then stops renewing it and sets the step's ``lease_lost`` event (the asset sees it
as ``context.lease_lost`` and may stop early); its ``finish_step`` is refused by the
store anyway.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowstone.protocols import RunStore

__all__ = ["LeaseKeeper"]

log = logging.getLogger("flowstone.engine")


_Entry = tuple[str, str, str, str, int]  # run, asset, partition, owner, attempt


class LeaseKeeper:
    """Renews the leases of the steps a runner holds (see the module docstring)."""

    __slots__ = ("_active", "_closed", "_cond", "_store", "_thread")

    def __init__(self, store: RunStore) -> None:
        self._store = store
        self._active: dict[_Entry, tuple[float, threading.Event]] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextlib.contextmanager
    def keep(
        self,
        run_id: str,
        asset: str,
        partition: str,
        owner: str,
        lease_seconds: float,
        attempt: int,
    ) -> Iterator[threading.Event]:
        """Renew this claim's lease while the block runs; yields the event set when the
        store refuses a renewal (the claim was lost)."""
        entry = (run_id, asset, partition, owner, attempt)
        lost = threading.Event()
        with self._cond:
            self._active[entry] = (lease_seconds, lost)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._loop, name="flowstone-leases", daemon=True
                )
                self._thread.start()
        try:
            yield lost
        finally:
            with self._cond:
                self._active.pop(entry, None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                period = min((s / 3 for s, _ in self._active.values()), default=30.0)
                self._cond.wait(timeout=max(period, 0.05))
                if self._closed:
                    return
                entries = list(self._active.items())
            for entry, (seconds, lost) in entries:
                run_id, asset, partition, owner, attempt = entry
                try:
                    kept = self._store.renew_lease(
                        run_id, asset, partition,
                        owner=owner, lease_seconds=seconds, attempt=attempt,
                    )  # fmt: skip
                except Exception:  # a transient store error must not kill the renewer
                    log.exception("renewing lease of %s[%s] failed", asset, partition)
                    continue
                if not kept:
                    self._lost(entry, lost)

    def _lost(self, entry: _Entry, lost: threading.Event) -> None:
        run_id, asset, partition, owner, attempt = entry
        with self._cond:
            if self._active.pop(entry, None) is None:
                return  # the step finished meanwhile: nothing was lost
        lost.set()
        log.warning(
            "asset %s [%s] of run %s lost its lease (attempt %d, owner %s): another runner"
            " claimed it again or it was finished; this attempt's result will not be committed",
            asset, partition, run_id, attempt, owner,
        )  # fmt: skip

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
