"""``UIQueries``: the bounded, keyset-paginated reads the UI makes, as one small protocol.

The :class:`~flowstone.protocols.RunStore` protocol answers "the newest N runs"; a UI over a
million runs needs "the next page after this one", filtered, without ever counting or
sorting a whole table. Those reads are declared here and implemented once per store:

* :class:`~flowstone_ui.queries_sqlite.SQLiteUIQueries`: SQL against the SQLite store's file;
* :class:`~flowstone_ui.queries_postgres.PostgresUIQueries`: SQL on the Postgres store's
  connections (needs ``flowstone-io-postgres``);
* :class:`~flowstone_ui.queries_fallback.StoreUIQueries`: through the ``RunStore`` protocol
  only, for the memory store and any other store (it reads at most
  :data:`~flowstone_ui.queries_fallback.SCAN_LIMIT` records per call).

Every method reads at most ``limit`` (capped at :data:`MAX_PAGE`) rows, each SQL statement
has a time limit, and a page ends with an opaque cursor for the next one (None at the end).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from flowstone.errors import UsageError
from flowstone.protocols import RunStore
from flowstone.records import (
    Approval,
    AuditEntry,
    Gate,
    ItemResult,
    MaterializationRecord,
    RunRecord,
    StepRecord,
)

__all__ = [
    "ACTIVE_STEP_STATES",
    "MAX_PAGE",
    "QUERY_SECONDS",
    "RunFilter",
    "UIQueries",
    "decode_cursor",
    "encode_cursor",
    "queries_for",
]

MAX_PAGE = 500
"""The most rows any one list call returns."""
QUERY_SECONDS = 5.0
"""The time limit of one UI statement (Postgres ``statement_timeout``, SQLite progress
handler): a read the indexes cannot answer fails instead of loading the database."""
ACTIVE_STEP_STATES = ("ready", "queued", "running", "waiting")
RANGE_READ_MIN = 50
"""Partition pages longer than this are read as one key range (see the Postgres reads)."""


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs to list: newest first, after ``cursor`` (from the previous page).

    ``since``/``until`` bound ``created_at`` (``until`` exclusive); ``asset`` keeps runs
    that planned a step of that asset.
    """

    pipelines: tuple[str, ...]
    status: str | None = None
    asset: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    cursor: str | None = None
    limit: int = 50

    def run_key(self) -> tuple[datetime, str] | None:
        """The ``(created_at, run_id)`` the page starts after, decoded from ``cursor``."""
        if self.cursor is None:
            return None
        at, run_id = decode_cursor(self.cursor, 2, what="runs cursor")
        if not isinstance(at, int) or not isinstance(run_id, str):
            raise UsageError("runs cursor is not valid; use the next_cursor of a runs page")
        return datetime.fromtimestamp(at / 1e6, UTC), run_id


@runtime_checkable
class UIQueries(Protocol):
    """The reads behind the UI's pages (see the module docstring)."""

    def runs(self, query: RunFilter) -> tuple[list[RunRecord], str | None]:
        """A page of runs, newest first, and the cursor of the next page."""
        ...

    def latest_materializations(
        self, pipeline: str, assets: Sequence[str]
    ) -> dict[str, MaterializationRecord]:
        """The newest record of each asset (any partition, any state)."""
        ...

    def active_steps(
        self, pipeline: str, *, asset: str | None = None,
        partitions: Sequence[str] | None = None, limit: int = MAX_PAGE,
    ) -> list[StepRecord]:
        """Steps ready, queued, running or waiting in the pipeline's unfinished runs."""
        ...

    def partition_states(
        self, pipeline: str, asset: str, partitions: Sequence[str]
    ) -> dict[str, str]:
        """The state of the newest valid record of each of these partitions (absent: none)."""
        ...

    def known_partitions(
        self, pipeline: str, asset: str, *, after: str | None, limit: int
    ) -> list[str]:
        """Partitions of ``asset`` that have records, in key order, after ``after``."""
        ...

    def materializations(
        self, pipeline: str, asset: str, *, cursor: str | None, limit: int
    ) -> tuple[list[MaterializationRecord], str | None]:
        """A page of the asset's records, newest first."""
        ...

    def pending_approvals(
        self, pipelines: Sequence[str], *, after: int | None, limit: int
    ) -> list[Approval]:
        """Pending approvals, oldest first, with ids above ``after``."""
        ...

    def pending_gates(
        self, pipelines: Sequence[str], *, cursor: str | None, limit: int
    ) -> tuple[list[Gate], str | None]:
        """Pending signal gates, oldest first (not the engine's own ``deferred`` gates, which
        stand for a scatter or parallel step under way, not for an outside signal)."""
        ...

    def audit(self, run_id: str, *, after: int | None, limit: int) -> list[AuditEntry]:
        """The run's audit entries with ids above ``after``, oldest first."""
        ...

    def item_results(
        self, run_id: str, asset: str, partition: str, *, state: str | None,
        after: int | None, limit: int,
    ) -> list[ItemResult]:
        """A scatter step's saved item results (of ``state``), by index after ``after``."""
        ...

    def item_counts(self, run_id: str, asset: str, partition: str) -> dict[str, int]:
        """How many item results one scatter step has saved, by state (one key range)."""
        ...


def queries_for(store: RunStore) -> UIQueries:
    """The fastest :class:`UIQueries` for ``store``: SQL for the SQLite and Postgres stores
    (a SQLite ``:memory:`` database is private to its connection: fallback), else the
    ``RunStore`` fallback."""
    from flowstone.defaults.sqlite_store import SQLiteRunStore

    if isinstance(store, SQLiteRunStore) and store.path != ":memory:":
        from flowstone_ui.queries_sqlite import SQLiteUIQueries

        return SQLiteUIQueries(store)
    if type(store).__name__ == "PostgresRunStore":
        try:
            from flowstone_io_postgres.store import PostgresRunStore
        except ImportError:  # pragma: no cover - the store came from that package
            PostgresRunStore = None  # type: ignore[assignment,misc]
        if PostgresRunStore is not None and isinstance(store, PostgresRunStore):
            from flowstone_ui.queries_postgres import PostgresUIQueries

            return PostgresUIQueries(store)
    from flowstone_ui.queries_fallback import StoreUIQueries

    return StoreUIQueries(store)


def encode_cursor(*parts: Any) -> str:
    """An opaque, URL-safe cursor holding ``parts`` (JSON primitives)."""
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, size: int, *, what: str) -> list[Any]:
    """The parts of a cursor made by :func:`encode_cursor`.

    Raises:
        UsageError: ``cursor`` is not one (it names ``what`` and how to get a valid one).
    """
    try:
        if len(cursor) > 2048:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        parts = None
    if not isinstance(parts, list) or len(parts) != size:
        raise UsageError(
            f"{what} {cursor[:40]!r} is not valid; use the next_cursor a page returned"
        )
    return parts


def clamp(limit: int) -> int:
    """``limit`` within 1..:data:`MAX_PAGE`."""
    return max(1, min(int(limit), MAX_PAGE))


def to_us(at: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (the runs cursor's unit)."""
    return round(at.timestamp() * 1e6)

