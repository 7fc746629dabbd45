"""The finishing claim: who runs a barrier's gather, kept alive while it runs.

The transaction that moves a barrier to ``finishing`` takes the claim in the same statement
(``finisher`` = a random token, ``finish_expires`` = the database's ``now()`` plus a lease).
:class:`FinishLease` renews it at a third of the lease while the gather (the user's
``gather=``) and the step's completion run, so a gather longer than a lease on a live worker
is never started a second time by the sweeper; the sweeper takes over only a claim that
expired (its holder died) or was released. Every comparison is against the database's
``now()``, with the lease passed as a duration.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Any

from flowstone_scatter.db import Database

__all__ = ["FinishLease", "claim", "close", "release"]

log = logging.getLogger("flowstone.scatter")


def claim(db: Database, barrier_id: int, finisher: str, lease: float) -> Any:
    """The finishing barrier's row if ``finisher`` holds its claim now (it already held it,
    or the claim was free or expired: then taken); None otherwise."""

    async def go(conn: Any) -> Any:
        return await conn.fetchrow(
            f"UPDATE {db.t.barriers} SET finisher = $2, "
            "finish_expires = now() + make_interval(secs => $3), updated_at = now() "
            "WHERE id = $1 AND state = 'finishing' AND (finisher = $2 OR finisher IS NULL "
            "OR finish_expires IS NULL OR finish_expires < now()) RETURNING *",
            barrier_id,
            finisher,
            lease,
        )

    return db.run(go)


def release(db: Database, barrier_id: int, finisher: str) -> None:
    """Give the claim up now (the finish failed): the next sweep finishes the barrier."""

    async def go(conn: Any) -> Any:
        return await conn.execute(
            f"UPDATE {db.t.barriers} SET finisher = NULL, finish_expires = NULL, "
            "updated_at = now() WHERE id = $1 AND state = 'finishing' AND finisher = $2",
            barrier_id,
            finisher,
        )

    db.run(go)


def close(db: Database, barrier_id: int, finisher: str, state: str, error: str | None) -> bool:
    """Close the barrier (``succeeded``/``failed``/``cancelled``) under the claim."""

    async def go(conn: Any) -> Any:
        return await conn.fetchval(
            f"UPDATE {db.t.barriers} SET state = $3, error = $4, finisher = NULL, "
            "finish_expires = NULL, updated_at = now() WHERE id = $1 AND state = 'finishing' "
            "AND finisher = $2 RETURNING id",
            barrier_id,
            finisher,
            state,
            error,
        )

    return db.run(go) is not None


class FinishLease:
    """Renews a finishing claim from a background thread while the block runs.

    ``lost`` is set when a renewal finds the claim gone (it expired and another process
    took it over); a transient database error is logged and the renewal tried again.
    """

    __slots__ = ("_barrier", "_db", "_finisher", "_lease", "_stop", "_thread", "lost")

    def __init__(self, db: Database, barrier_id: int, finisher: str, lease: float) -> None:
        self._db = db
        self._barrier = barrier_id
        self._finisher = finisher
        self._lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="flowstone-scatter-finish", daemon=True
        )
        self.lost = threading.Event()

    def __enter__(self) -> FinishLease:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=self._lease)

    def _loop(self) -> None:
        while not self._stop.wait(max(self._lease / 3, 0.05)):
            try:
                row = claim(self._db, self._barrier, self._finisher, self._lease)
            except Exception:  # a transient store error must not end the renewals
                log.exception(
                    "renewing the finishing claim of scatter barrier %d failed", self._barrier
                )
                continue
            if row is None:
                self.lost.set()
                log.warning(
                    "scatter barrier %d: the finishing claim was lost (it expired "
                    "and another process took it over, or the barrier was closed)",
                    self._barrier,
                )
                return
