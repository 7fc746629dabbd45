"""The finishing claim: who runs a barrier's gather, kept alive while it runs.

The transaction that moves a barrier to ``finishing`` takes the claim in the same statement
(``finisher`` = a random token, ``finish_expires`` = the database's ``now()`` plus a lease).
:func:`finish_lease` (a :class:`Heartbeat`) renews it at a third of the lease while the
gather (the user's ``gather=``) and the step's completion run, so a gather longer than a
lease on a live worker is never started a second time by the sweeper; the sweeper takes
over only a claim that expired (its holder died) or was released. Every comparison is
against the database's ``now()``, with the lease passed as a duration. The same
:class:`Heartbeat` keeps a chunk's item claims and a reader's lease while they run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from flowstone_scatter.db import Database

__all__ = ["Heartbeat", "claim", "close", "finish_lease", "release"]

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


class Heartbeat:
    """Calls ``renew`` every third of ``lease`` seconds from a background thread while the
    block runs: the finishing claim during a gather, an item claim during a chunk, the
    reader lease during a page.

    ``renew`` returns False when the claim is gone (it expired and another process took it
    over); ``lost`` is then set and renewing stops. A transient database error is logged
    and the renewal tried again at the next beat.
    """

    __slots__ = ("_lease", "_renew", "_stop", "_thread", "_what", "lost")

    def __init__(self, renew: Callable[[], bool], lease: float, what: str) -> None:
        self._renew = renew
        self._lease = lease
        self._what = what
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="flowstone-scatter-heartbeat", daemon=True
        )
        self.lost = threading.Event()

    def __enter__(self) -> Heartbeat:
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
                kept = self._renew()
            except Exception:  # a transient store error must not end the renewals
                log.exception("renewing %s failed", self._what)
                continue
            if not kept:
                self.lost.set()
                log.warning("%s was lost (it expired and another process took it over, or "
                            "it ended)", self._what)
                return


def finish_lease(db: Database, barrier_id: int, finisher: str, lease: float) -> Heartbeat:
    """The heartbeat of a finishing claim (:func:`claim` again, by its holder)."""
    return Heartbeat(lambda: claim(db, barrier_id, finisher, lease) is not None, lease,
                     f"the finishing claim of scatter barrier {barrier_id}")
