"""Keeps the leases of running steps alive while their assets run.

A worker that dies stops renewing; its steps' leases expire and a sweeper (or a
redelivered message) re-claims them. One background thread per runner renews every
active lease at a third of its length.
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


class LeaseKeeper:
    __slots__ = ("_active", "_closed", "_cond", "_store", "_thread")

    def __init__(self, store: RunStore) -> None:
        self._store = store
        self._active: dict[tuple[str, str, str, str], float] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextlib.contextmanager
    def keep(
        self, run_id: str, asset: str, partition: str, owner: str, lease_seconds: float
    ) -> Iterator[None]:
        entry = (run_id, asset, partition, owner)
        with self._cond:
            self._active[entry] = lease_seconds
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._loop, name="flowstone-leases", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._cond:
                self._active.pop(entry, None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                period = min((s / 3 for s in self._active.values()), default=30.0)
                self._cond.wait(timeout=max(period, 0.05))
                if self._closed:
                    return
                entries = list(self._active.items())
            for (run_id, asset, partition, owner), seconds in entries:
                try:
                    self._store.renew_lease(
                        run_id, asset, partition, owner=owner, lease_seconds=seconds
                    )
                except Exception:  # a transient store error must not kill the renewer
                    log.exception("renewing lease of %s[%s] failed", asset, partition)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
