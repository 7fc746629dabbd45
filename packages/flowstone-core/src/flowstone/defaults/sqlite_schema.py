"""The SQLite run store's schema and its versioned migrations.

The schema version lives in ``PRAGMA user_version``: a file at version ``n`` has had the
first ``n`` entries of :data:`MIGRATIONS` applied. New versions append a migration (never
edit a shipped one), so any older file upgrades in order, inside one ``BEGIN IMMEDIATE``
transaction that concurrent processes serialise on.

Datetimes are stored as integer microseconds since the Unix epoch (exact, compact and
cheap to compare); inspect them with ``datetime(col / 1e6, 'unixepoch')``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from flowstone.errors import StorageError
from flowstone.records import Approval, Gate, MaterializationRecord, RunRecord, StepRecord

__all__ = ["MIGRATIONS", "migrate"]

_V1 = (
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        pipeline TEXT NOT NULL,
        targets TEXT NOT NULL,
        partition TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        error TEXT,
        tags TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX runs_by_pipeline ON runs (pipeline, created_at)",
    "CREATE INDEX runs_by_status ON runs (status, created_at)",
    """CREATE TABLE steps (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        asset TEXT NOT NULL,
        partition TEXT NOT NULL,
        state TEXT NOT NULL,
        remaining_deps INTEGER NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        lease_expires_at INTEGER,
        not_before INTEGER,
        materialization_id TEXT,
        error TEXT,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (run_id, asset, partition)
    )""",
    # the run-status check after every finish_step looks up a run's steps by state
    "CREATE INDEX steps_by_run_state ON steps (run_id, state)",
    # stale_steps: partial indexes stay tiny and cost nothing for other states
    "CREATE INDEX steps_stale_ready ON steps (updated_at) WHERE state = 'ready'",
    "CREATE INDEX steps_stale_running ON steps (lease_expires_at) WHERE state = 'running'",
    """CREATE TABLE step_deps (
        run_id TEXT NOT NULL,
        asset TEXT NOT NULL,
        partition TEXT NOT NULL,
        dep_asset TEXT NOT NULL,
        dep_partition TEXT NOT NULL,
        PRIMARY KEY (run_id, asset, partition, dep_asset, dep_partition),
        FOREIGN KEY (run_id, asset, partition)
            REFERENCES steps (run_id, asset, partition) ON DELETE CASCADE
    ) WITHOUT ROWID""",
    "CREATE INDEX step_deps_by_dep ON step_deps (run_id, dep_asset, dep_partition)",
    """CREATE TABLE materializations (
        id TEXT PRIMARY KEY,
        pipeline TEXT NOT NULL,
        run_id TEXT NOT NULL,
        asset TEXT NOT NULL,
        partition TEXT NOT NULL,
        state TEXT NOT NULL,
        io_manager TEXT,
        location TEXT,
        attempt INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        error TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        invalidated INTEGER NOT NULL DEFAULT 0,
        UNIQUE (run_id, asset, partition)
    )""",
    """CREATE INDEX materializations_latest
        ON materializations (pipeline, asset, partition, state, finished_at)""",
    """CREATE TABLE lineage (
        downstream_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        upstream_id TEXT NOT NULL,
        PRIMARY KEY (downstream_id, position)
    ) WITHOUT ROWID""",
    "CREATE INDEX lineage_by_upstream ON lineage (upstream_id)",
    """CREATE TABLE approvals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        pipeline TEXT NOT NULL,
        run_id TEXT NOT NULL,
        asset TEXT NOT NULL,
        partition TEXT NOT NULL,
        message TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        io_manager TEXT,
        location TEXT,
        decided_by TEXT,
        decided_at INTEGER,
        reason TEXT,
        metadata TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX approvals_by_step ON approvals (run_id, asset, partition)",
    "CREATE INDEX approvals_due ON approvals (expires_at) WHERE status = 'pending'",
    """CREATE TABLE gates (
        token_hash TEXT PRIMARY KEY,
        pipeline TEXT NOT NULL,
        run_id TEXT NOT NULL,
        asset TEXT NOT NULL,
        partition TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        payload TEXT NOT NULL DEFAULT 'null',
        signaled_at INTEGER,
        metadata TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX gates_due ON gates (expires_at) WHERE status = 'pending'",
    """CREATE TABLE route_decisions (
        run_id TEXT NOT NULL,
        router TEXT NOT NULL,
        partition TEXT NOT NULL,
        branch TEXT NOT NULL,
        decided_at INTEGER NOT NULL,
        PRIMARY KEY (run_id, router, partition)
    ) WITHOUT ROWID""",
    "CREATE INDEX route_decisions_by_age ON route_decisions (decided_at)",
    """CREATE TABLE cursors (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE ticks (
        name TEXT NOT NULL,
        tick TEXT NOT NULL,
        claimed_at INTEGER NOT NULL,
        PRIMARY KEY (name, tick)
    ) WITHOUT ROWID""",
    """CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        asset TEXT,
        partition TEXT,
        detail TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX audit_by_run ON audit (run_id, id)",
    """CREATE TABLE item_results (
        run_id TEXT NOT NULL,
        asset TEXT NOT NULL,
        partition TEXT NOT NULL,
        idx INTEGER NOT NULL,
        key TEXT NOT NULL,
        state TEXT NOT NULL,
        value_json TEXT,
        error TEXT,
        PRIMARY KEY (run_id, asset, partition, idx)
    ) WITHOUT ROWID""",
)

# v2: step notes, the named home of the parallel branch clocks and failed-join records
# that v1 kept as cursors (moved over, keys parsed: run ids and asset names have no ':').
_V2 = (
    """CREATE TABLE step_notes (
        run_id TEXT NOT NULL,
        asset TEXT NOT NULL,
        partition TEXT NOT NULL,
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (run_id, asset, partition, kind)
    ) WITHOUT ROWID""",
    """INSERT OR IGNORE INTO step_notes
        SELECT substr(rest, 1, instr(rest, ':') - 1), substr(rest, instr(rest, ':') + 1), '',
               'parallel.started', value, updated_at
        FROM (SELECT substr(name, 16) AS rest, value, updated_at FROM cursors
              WHERE name LIKE 'parallel-start:%' AND instr(substr(name, 16), ':') > 0)""",
    """INSERT OR IGNORE INTO step_notes
        SELECT run_id, substr(rest, 1, instr(rest, ':') - 1), substr(rest, instr(rest, ':') + 1),
               'flowstone.parallel.join', value, updated_at
        FROM (SELECT substr(tail, 1, instr(tail, ':') - 1) AS run_id,
                     substr(tail, instr(tail, ':') + 1) AS rest, value, updated_at
              FROM (SELECT substr(name, 25) AS tail, value, updated_at FROM cursors
                    WHERE name LIKE 'flowstone.parallel.join:%'))
        WHERE instr(rest, ':') > 0""",
    "DELETE FROM cursors WHERE name LIKE 'parallel-start:%'"
    " OR name LIKE 'flowstone.parallel.join:%'",
)

# v3: indexes for flowstone-ui's keyset pages (runs newest first per pipeline and status,
# an asset's records newest first by rowid, pending waits per pipeline)
_V3 = (
    "CREATE INDEX runs_ui_by_pipeline ON runs (pipeline, created_at, run_id)",
    "CREATE INDEX runs_ui_by_status ON runs (pipeline, status, created_at, run_id)",
    "CREATE INDEX materializations_ui_by_asset ON materializations (pipeline, asset)",
    "CREATE INDEX approvals_ui_pending ON approvals (pipeline, id) WHERE status = 'pending'",
    """CREATE INDEX gates_ui_pending ON gates (pipeline, created_at, token_hash)
        WHERE status = 'pending'""",
)

# v4: a sweeper's re-sends of a step (``resend_steps``): when the last one was and how many
# since the step was last claimed, so a backlog is re-sent with backoff, not every sweep
_V4 = (
    "ALTER TABLE steps ADD COLUMN resent_at INTEGER",
    "ALTER TABLE steps ADD COLUMN resends INTEGER NOT NULL DEFAULT 0",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3, _V4)
"""Ordered migrations; entry ``i`` upgrades a file from version ``i`` to ``i + 1``."""


def migrate(conn: sqlite3.Connection, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Bring the database on ``conn`` up to ``len(migrations)``; return the final version.

    ``conn`` must be in autocommit mode (``isolation_level=None``). Safe to call from many
    processes at once: the version is re-read after taking the write lock.

    Raises:
        StorageError: the file was written by a newer FlowStone (its version is higher
            than any migration known here), or a migration failed (nothing is applied).
    """
    target = len(migrations)
    if _version(conn) == target:
        return target
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = _version(conn)
        if current > target:
            raise StorageError(
                f"the SQLite run store file has schema version {current}, newer than this "
                f"FlowStone understands ({target}); upgrade flowstone-core"
            )
        for script in migrations[current:]:
            for statement in script:
                conn.execute(statement)
        # PRAGMA takes no bound parameters; target is an int we computed
        conn.execute(f"PRAGMA user_version = {int(target)}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return target


def _version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


# --- rows <-> records ------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)

RUN_COLS = "run_id, pipeline, targets, partition, status, created_at, updated_at, error, tags"
STEP_COLS = (
    "run_id, asset, partition, state, remaining_deps, attempt, owner, lease_expires_at,"
    " not_before, materialization_id, error, updated_at"
)
MAT_COLS = (
    "id, pipeline, run_id, asset, partition, state, io_manager, location, attempt,"
    " started_at, finished_at, error, metadata, invalidated"
)
APPROVAL_COLS = (
    "id, pipeline, run_id, asset, partition, message, status, created_at, expires_at,"
    " io_manager, location, decided_by, decided_at, reason, metadata"
)
GATE_COLS = (
    "token_hash, pipeline, run_id, asset, partition, status, created_at, expires_at,"
    " payload, signaled_at, metadata"
)


def to_micros(value: datetime | None) -> int | None:
    """Aware datetime -> integer microseconds since the epoch (exact)."""
    return None if value is None else (value - _EPOCH) // _MICRO


def from_micros(value: int | None) -> datetime | None:
    """Integer microseconds since the epoch -> aware UTC datetime."""
    return None if value is None else _EPOCH + timedelta(microseconds=value)


def run_row(r: Sequence[Any]) -> RunRecord:
    return RunRecord(
        r[0],
        r[1],
        tuple(json.loads(r[2])),
        r[3],
        r[4],
        _dt(r[5]),
        _dt(r[6]),
        r[7],
        json.loads(r[8]),
    )


def step_row(
    r: Sequence[Any], queued_s: float | None = None, took_over: bool = False
) -> StepRecord:
    """A step read back; a claim passes what it reports beside it (``queued_s``,
    ``took_over``)."""
    return StepRecord(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], from_micros(r[7]), from_micros(r[8]), r[9],
        r[10], from_micros(r[11]), queued_s, took_over,
    )


def mat_row(r: Sequence[Any], upstream: tuple[str, ...]) -> MaterializationRecord:
    return MaterializationRecord(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        from_micros(r[9]),
        from_micros(r[10]),
        r[11],
        upstream,
        json.loads(r[12]),
        bool(r[13]),
    )


def approval_row(r: Sequence[Any]) -> Approval:
    return Approval(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        _dt(r[7]),
        from_micros(r[8]),
        r[9],
        r[10],
        r[11],
        from_micros(r[12]),
        r[13],
        json.loads(r[14]),
    )


def gate_row(r: Sequence[Any]) -> Gate:
    return Gate(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        _dt(r[6]),
        from_micros(r[7]),
        json.loads(r[8]),
        from_micros(r[9]),
        json.loads(r[10]),
    )


def _dt(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)
