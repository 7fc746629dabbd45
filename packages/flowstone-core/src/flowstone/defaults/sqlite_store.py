"""``SQLiteRunStore``: the durable in-process run store (stdlib ``sqlite3``).

One file holds every run, so a daemon and a ``flowstone approve`` in another process share
state safely: the file is in WAL mode, every write is one ``BEGIN IMMEDIATE`` transaction
(processes queue on the write lock for up to ``busy_timeout`` seconds), and the schema is
versioned (:mod:`flowstone.defaults.sqlite_schema`).

Within a process the store uses one connection guarded by a lock. Measured against one
connection per thread, the lock hands the connection over without SQLite's sleep-and-retry
busy handler, which is what makes a thread pool of workers fast; SQLite serialises writers
anyway. After ``fork`` the child opens its own connection (an inherited one must not be used).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from flowstone.defaults import _run_store_rules as rules
from flowstone.defaults.sqlite_schema import (
    APPROVAL_COLS,
    GATE_COLS,
    MAT_COLS,
    RUN_COLS,
    STEP_COLS,
    approval_row,
    dt,
    gate_row,
    mat_row,
    migrate,
    run_row,
    step_row,
    us,
)
from flowstone.errors import (
    ApprovalError,
    RunNotFoundError,
    SignalError,
    StorageError,
    UsageError,
)
from flowstone.records import (
    TERMINAL_STEP_STATES,
    Approval,
    AuditEntry,
    Gate,
    ItemResult,
    MaterializationRecord,
    RunRecord,
    RunStatus,
    StepOutcome,
    StepRecord,
    StepSpec,
    StepTransition,
)

__all__ = ["SQLiteRunStore"]

_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STEP_STATES))
_STEP_KEY = "run_id = ? AND asset = ? AND partition = ?"


class SQLiteRunStore:
    """A run store in one SQLite file; durable and shareable between local processes.

    Nothing happens at construction: the parent directory, the file and the schema are
    created (or upgraded) on first use.

    Args:
        path: the database file, or ``":memory:"`` for a private in-memory database.
        busy_timeout: seconds a write waits for another process's transaction to finish.

    Example:
        >>> store = SQLiteRunStore(".flowstone/flowstone.db")
        >>> store.name
        'sqlite'
    """

    name = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str] = ".flowstone/flowstone.db",
        *,
        busy_timeout: float = 30.0,
    ) -> None:
        self._path = os.fspath(path)
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        # connections inherited through fork: closing them would disturb the parent's locks
        self._inherited: list[sqlite3.Connection] = []

    @classmethod
    def from_url(cls, url: str) -> SQLiteRunStore:
        """Build a store from ``sqlite:///relative/path``, ``sqlite:////absolute/path``
        or ``sqlite:///:memory:``.

        Raises:
            UsageError: the URL is not a ``sqlite://`` URL with a path.
        """
        prefix = "sqlite:///"
        if not url.startswith(prefix) or len(url) == len(prefix):
            raise UsageError(
                f"invalid SQLite run store URL {url!r}; use sqlite:///relative/path.db, "
                "sqlite:////absolute/path.db or sqlite:///:memory:"
            )
        return cls(url[len(prefix) :])

    @property
    def path(self) -> str:
        """The database file this store uses."""
        return self._path

    def __repr__(self) -> str:
        return f"SQLiteRunStore({self._path!r})"

    # --- connection ------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        """The process's connection, opened (and the schema migrated) on first use."""
        conn = self._conn
        if conn is not None and self._pid == os.getpid():
            return conn
        if conn is not None:
            self._inherited.append(conn)
            self._conn = None
        try:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            # switching a new file to WAL takes an exclusive lock that does not wait on
            # busy_timeout: two processes opening one fresh file at once must retry
            _retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"), self._busy_timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            _retry_locked(lambda: migrate(conn), self._busy_timeout)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(
                f"cannot open the SQLite run store at {self._path!r}: {exc}; check that the "
                "directory is writable and the file is a FlowStone database"
            ) from exc
        self._conn, self._pid = conn, os.getpid()
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, serialised with other threads and processes."""
        with self._lock:
            conn = self._db()
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc) from exc
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> StorageError:
        return StorageError(f"SQLite run store {self._path!r} failed: {exc}")

    def ping(self) -> None:
        self._read("SELECT 1")

    def close(self) -> None:
        """Close the connection; a later call reopens it."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # --- runs ------------------------------------------------------------------------
    def create_run(self, run: RunRecord, steps: Sequence[StepSpec]) -> tuple[StepRecord, ...]:
        run_id = run.run_id
        remaining = rules.plan_remaining(run_id, steps)
        tags = rules.to_json(dict(run.tags), f"tags of run {run_id!r}")
        created = us(rules.require_utc(run.created_at, "RunRecord.created_at"))
        now_dt = rules.utc_now()
        now = us(now_dt)
        step_rows: list[tuple[Any, ...]] = []
        dep_rows: list[tuple[str, ...]] = []
        ready: list[StepRecord] = []
        for spec, count in zip(steps, remaining, strict=True):
            if spec.state == "succeeded":
                state = "succeeded"
            else:
                state = "ready" if count == 0 else "pending"
            mat_id = spec.reused_materialization_id
            step_rows.append((run_id, spec.asset, spec.partition, state, count, mat_id, now))
            dep_rows.extend(
                (run_id, spec.asset, spec.partition, *d) for d in dict.fromkeys(spec.deps)
            )
            if state == "ready":
                ready.append(
                    StepRecord(
                        run_id,
                        spec.asset,
                        spec.partition,
                        "ready",
                        0,
                        materialization_id=mat_id,
                        updated_at=now_dt,
                    )
                )
        status = rules.run_status_from({row[3] for row in step_rows})
        with self._write() as c:
            if c.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise StorageError(
                    f"run {run_id!r} already exists; run ids must be unique "
                    "(generate a new one for a new run)"
                )
            c.execute(
                f"INSERT INTO runs ({RUN_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    run.pipeline,
                    json.dumps(list(run.targets)),
                    run.partition,
                    status,
                    created,
                    now,
                    run.error,
                    tags,
                ),
            )
            c.executemany(
                "INSERT INTO steps (run_id, asset, partition, state, remaining_deps,"
                " materialization_id, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                step_rows,
            )
            c.executemany("INSERT INTO step_deps VALUES (?, ?, ?, ?, ?)", dep_rows)
            self._audit(c, run_id, "run_created", None, None, {"steps": len(steps)}, now)
        return tuple(ready)

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._read(f"SELECT {RUN_COLS} FROM runs WHERE run_id = ?", (run_id,))
        return run_row(rows[0]) if rows else None

    def list_runs(
        self, *, pipeline: str | None = None, status: RunStatus | None = None, limit: int = 50
    ) -> list[RunRecord]:
        where, params = _filters(pipeline=pipeline, status=status)
        rows = self._read(
            f"SELECT {RUN_COLS} FROM runs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            [*params, limit],
        )
        return [run_row(r) for r in rows]

    def set_run_status(self, run_id: str, status: RunStatus, *, error: str | None = None) -> None:
        with self._write() as c:
            cur = c.execute(
                "UPDATE runs SET status = ?, error = ?, updated_at = ? WHERE run_id = ?",
                (status, error, us(rules.utc_now()), run_id),
            )
            if cur.rowcount == 0:
                raise _run_not_found(run_id)

    def cancel_run(self, run_id: str) -> bool:
        now = us(rules.utc_now())
        with self._write() as c:
            if _run_status(c, run_id) in rules.TERMINAL_RUN_STATUSES:
                return False
            c.execute(
                "UPDATE steps SET state = 'cancelled', lease_expires_at = NULL, updated_at = ?"
                f" WHERE run_id = ? AND state NOT IN ({_TERMINAL_SQL})",
                (now, run_id),
            )
            c.execute(
                "UPDATE runs SET status = 'cancelled', updated_at = ? WHERE run_id = ?",
                (now, run_id),
            )
            self._audit(c, run_id, "run_cancelled", None, None, {}, now)
            return True

    def reopen_run(self, run_id: str) -> tuple[StepRecord, ...]:
        now = us(rules.utc_now())
        with self._write() as c:
            if _run_status(c, run_id) not in ("failed", "cancelled"):
                return ()
            reopened = c.execute(
                "UPDATE steps SET state = 'pending', attempt = 0, owner = NULL,"
                " lease_expires_at = NULL, not_before = NULL, materialization_id = NULL,"
                " error = NULL, updated_at = ?"
                " WHERE run_id = ? AND state IN ('failed', 'upstream_failed', 'cancelled')",
                (now, run_id),
            ).rowcount
            # a dep is satisfied when its step is terminal (succeeded or skipped by now)
            c.execute(
                "UPDATE steps SET remaining_deps = (SELECT count(*) FROM step_deps d"
                " JOIN steps s ON s.run_id = d.run_id AND s.asset = d.dep_asset"
                " AND s.partition = d.dep_partition"
                " WHERE d.run_id = steps.run_id AND d.asset = steps.asset"
                f" AND d.partition = steps.partition AND s.state NOT IN ({_TERMINAL_SQL}))"
                " WHERE run_id = ? AND state = 'pending'",
                (run_id,),
            )
            ready = c.execute(
                "UPDATE steps SET state = 'ready' WHERE run_id = ? AND state = 'pending'"
                f" AND remaining_deps = 0 RETURNING {STEP_COLS}",
                (run_id,),
            ).fetchall()
            status = "running" if ready else _compute_status(c, run_id)
            c.execute(
                "UPDATE runs SET status = ?, error = NULL, updated_at = ? WHERE run_id = ?",
                (status, now, run_id),
            )
            self._audit(c, run_id, "run_reopened", None, None, {"steps": reopened}, now)
        return tuple(step_row(r) for r in ready)

    # --- steps -----------------------------------------------------------------------
    def get_step(self, run_id: str, asset: str, partition: str) -> StepRecord | None:
        rows = self._read(
            f"SELECT {STEP_COLS} FROM steps WHERE {_STEP_KEY}", (run_id, asset, partition)
        )
        return step_row(rows[0]) if rows else None

    def list_steps(self, run_id: str) -> list[StepRecord]:
        rows = self._read(
            f"SELECT {STEP_COLS} FROM steps WHERE run_id = ? ORDER BY rowid", (run_id,)
        )
        return [step_row(r) for r in rows]

    def claim_step(
        self, run_id: str, asset: str, partition: str, *, owner: str, lease_seconds: float
    ) -> StepRecord | None:
        now_dt = rules.utc_now()
        now = us(now_dt)
        lease = us(now_dt + timedelta(seconds=lease_seconds))
        with self._write() as c:
            row = c.execute(
                "UPDATE steps SET state = 'running', attempt = attempt + 1, owner = ?,"
                " lease_expires_at = ?, updated_at = ?"
                f" WHERE {_STEP_KEY}"
                " AND ((state = 'ready' AND (not_before IS NULL OR not_before <= ?))"
                "  OR (state = 'running' AND lease_expires_at <= ?))"
                " AND (SELECT status FROM runs WHERE run_id = steps.run_id) != 'cancelled'"
                f" RETURNING {STEP_COLS}",
                (owner, lease, now, run_id, asset, partition, now, now),
            ).fetchone()
        return None if row is None else step_row(row)

    def renew_lease(
        self, run_id: str, asset: str, partition: str, *, owner: str, lease_seconds: float
    ) -> bool:
        now_dt = rules.utc_now()
        with self._write() as c:
            cur = c.execute(
                "UPDATE steps SET lease_expires_at = ?, updated_at = ?"
                f" WHERE {_STEP_KEY} AND state = 'running' AND owner = ?",
                (
                    us(now_dt + timedelta(seconds=lease_seconds)),
                    us(now_dt),
                    run_id,
                    asset,
                    partition,
                    owner,
                ),
            )
            return cur.rowcount == 1

    def retry_step(
        self, run_id: str, asset: str, partition: str, *, not_before: datetime, error: str
    ) -> bool:
        not_before = rules.require_utc(not_before, "not_before")
        now = us(rules.utc_now())
        with self._write() as c:
            row = c.execute(
                "UPDATE steps SET state = 'ready', owner = NULL, lease_expires_at = NULL,"
                " not_before = ?, error = ?, updated_at = ?"
                f" WHERE {_STEP_KEY} AND state = 'running' RETURNING attempt",
                (us(not_before), error, now, run_id, asset, partition),
            ).fetchone()
            if row is None:
                return False
            detail = {"attempt": row[0], "error": error, "not_before": not_before.isoformat()}
            self._audit(c, run_id, "step_retry", asset, partition, detail, now)
            return True

    def finish_step(
        self, run_id: str, asset: str, partition: str, outcome: StepOutcome
    ) -> StepTransition:
        where = f"finish_step(run {run_id!r}, asset {asset!r}, partition {partition!r})"
        rules.check_outcome(outcome, where)
        mat = outcome.materialization
        mat_values: tuple[Any, ...] | None = None
        if mat is not None:
            # JSON-encode before the transaction: a bad value must not leave a half write
            mat_values = (
                mat.id,
                mat.pipeline,
                run_id,
                asset,
                partition,
                mat.state,
                mat.io_manager,
                mat.location,
                mat.attempt,
                us(mat.started_at),
                us(mat.finished_at),
                mat.error,
                rules.to_json(dict(mat.metadata), f"metadata of materialization {mat.id!r}"),
                int(mat.invalidated),
            )
        approval_values = gate_values = None
        if outcome.approval is not None:
            a = outcome.approval
            approval_values = (
                a.pipeline,
                run_id,
                asset,
                partition,
                a.message,
                "pending",
                us(a.created_at),
                us(a.expires_at),
                a.io_manager,
                a.location,
                rules.to_json(dict(a.metadata), f"metadata of approval for {asset!r}"),
            )
        if outcome.gate is not None:
            g = outcome.gate
            gate_values = (
                g.token_hash,
                g.pipeline,
                run_id,
                asset,
                partition,
                "pending",
                us(g.created_at),
                us(g.expires_at),
                rules.to_json(g.payload, f"payload of gate for {asset!r}"),
                None,
                rules.to_json(dict(g.metadata), f"metadata of gate for {asset!r}"),
            )
        now = us(rules.utc_now())
        key = (run_id, asset, partition)
        with self._write() as c:
            row = c.execute(f"SELECT state, attempt FROM steps WHERE {_STEP_KEY}", key).fetchone()
            if row is None:
                raise rules.step_not_found(run_id, asset, partition)
            state, attempt = row
            if rules.is_unchanged(state, outcome):
                return StepTransition(applied=False)
            if state not in rules.FINISHABLE_STEP_STATES:
                raise rules.not_finishable(run_id, asset, partition, state)
            detail: dict[str, Any] = {"attempt": attempt}
            if outcome.error is not None:
                detail["error"] = outcome.error
            if mat is not None and mat_values is not None:
                _upsert_materialization(c, mat.id, key, mat_values, mat.upstream, where)
                detail["materialization_id"] = mat.id
            if approval_values is not None:
                detail["approval_id"] = c.execute(
                    "INSERT INTO approvals (pipeline, run_id, asset, partition, message, status,"
                    " created_at, expires_at, io_manager, location, metadata)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    approval_values,
                ).lastrowid
            if gate_values is not None:
                if c.execute(
                    "SELECT 1 FROM gates WHERE token_hash = ?", gate_values[:1]
                ).fetchone():
                    raise StorageError(f"{where}: a gate with this token hash already exists")
                c.execute(f"INSERT INTO gates ({GATE_COLS}) VALUES ({_marks(11)})", gate_values)
            c.execute(
                "UPDATE steps SET state = ?, materialization_id = COALESCE(?, materialization_id),"
                f" error = ?, lease_expires_at = NULL, updated_at = ? WHERE {_STEP_KEY}",
                (outcome.state, None if mat is None else mat.id, outcome.error, now, *key),
            )
            ready: list[Any] = []
            if outcome.state != "waiting":
                # dependents of a non-terminal step are all pending; the guard keeps a
                # count from ever going below zero
                rows = c.execute(
                    "UPDATE steps SET remaining_deps = remaining_deps - 1,"
                    " state = CASE WHEN remaining_deps = 1 THEN 'ready' ELSE state END,"
                    " updated_at = ?"
                    # driven by the primary key: one lookup per dependent, not a scan of
                    # the run's pending steps
                    " WHERE (run_id, asset, partition) IN (SELECT run_id, asset, partition"
                    "  FROM step_deps WHERE run_id = ? AND dep_asset = ? AND dep_partition = ?)"
                    " AND state = 'pending' AND remaining_deps > 0"
                    f" RETURNING {STEP_COLS}",
                    (now, *key),
                ).fetchall()
                ready = [r for r in rows if r[3] == "ready"]
            status = "running" if ready else _compute_status(c, run_id)
            previous = _run_status(c, run_id)
            if status != previous:
                c.execute(
                    "UPDATE runs SET status = ?, updated_at = ? WHERE run_id = ?",
                    (status, now, run_id),
                )
            self._audit(c, run_id, f"step_{outcome.state}", asset, partition, detail, now)
            if status != previous:
                self._audit(c, run_id, f"run_{status}", None, None, {}, now)
        changed = status != previous or status != "running"
        return StepTransition(
            applied=True,
            ready=tuple(step_row(r) for r in ready),
            run_status=status if changed else None,
        )

    def stale_steps(self, now: datetime, *, ready_for_seconds: float) -> list[StepRecord]:
        now = rules.require_utc(now, "now")
        cutoff = us(now - timedelta(seconds=ready_for_seconds))
        cols = ", ".join(f"s.{c.strip()}" for c in STEP_COLS.split(","))
        rows = self._read(
            f"SELECT {cols} FROM steps s JOIN runs r ON r.run_id = s.run_id"
            " WHERE s.state = 'ready' AND s.updated_at <= ?"
            " AND (s.not_before IS NULL OR s.not_before <= ?) AND r.status = 'running'"
            f" UNION ALL SELECT {cols} FROM steps s JOIN runs r ON r.run_id = s.run_id"
            " WHERE s.state = 'running' AND s.lease_expires_at <= ? AND r.status = 'running'",
            (cutoff, cutoff, us(now)),
        )
        return [step_row(r) for r in rows]

    # --- materializations & lineage ----------------------------------------------------
    def _materializations(self, sql: str, params: Sequence[Any]) -> list[MaterializationRecord]:
        with self._lock:
            try:
                c = self._db()
                rows = c.execute(sql, params).fetchall()
                upstream: dict[str, list[str]] = {r[0]: [] for r in rows}
                if rows:
                    for down, up in c.execute(
                        "SELECT downstream_id, upstream_id FROM lineage"
                        f" WHERE downstream_id IN ({_marks(len(upstream))})"
                        " ORDER BY downstream_id, position",
                        list(upstream),
                    ):
                        upstream[down].append(up)
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
        return [mat_row(r, tuple(upstream[r[0]])) for r in rows]

    def get_materialization(self, materialization_id: str) -> MaterializationRecord | None:
        found = self._materializations(
            f"SELECT {MAT_COLS} FROM materializations WHERE id = ?", (materialization_id,)
        )
        return found[0] if found else None

    def find_materialization(
        self, pipeline: str, asset: str, partition: str, *, run_id: str | None = None
    ) -> MaterializationRecord | None:
        if run_id is not None:
            found = self._materializations(
                f"SELECT {MAT_COLS} FROM materializations"
                " WHERE run_id = ? AND asset = ? AND partition = ? AND pipeline = ?",
                (run_id, asset, partition, pipeline),
            )
        else:
            found = self._materializations(
                f"SELECT {MAT_COLS} FROM materializations WHERE pipeline = ? AND asset = ?"
                " AND partition = ? AND state = 'succeeded' AND invalidated = 0"
                " ORDER BY finished_at DESC, rowid DESC LIMIT 1",
                (pipeline, asset, partition),
            )
        return found[0] if found else None

    def list_materializations(
        self,
        pipeline: str,
        *,
        asset: str | None = None,
        partition: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[MaterializationRecord]:
        where, params = _filters(pipeline=pipeline, asset=asset, partition=partition, run_id=run_id)
        return self._materializations(
            f"SELECT {MAT_COLS} FROM materializations {where} ORDER BY rowid DESC LIMIT ?",
            [*params, limit],
        )

    def invalidate(self, pipeline: str, asset: str, partition: str | None = None) -> int:
        where, params = _filters(pipeline=pipeline, asset=asset, partition=partition)
        with self._write() as c:
            return c.execute(
                f"UPDATE materializations SET invalidated = 1 {where}"
                " AND state = 'succeeded' AND invalidated = 0",
                params,
            ).rowcount

    def upstream(self, materialization_id: str) -> list[MaterializationRecord]:
        return self._materializations(
            f"SELECT {', '.join('m.' + c.strip() for c in MAT_COLS.split(','))}"
            " FROM lineage l JOIN materializations m ON m.id = l.upstream_id"
            " WHERE l.downstream_id = ? ORDER BY l.position",
            (materialization_id,),
        )

    def downstream(self, materialization_id: str) -> list[MaterializationRecord]:
        return self._materializations(
            f"SELECT {', '.join('m.' + c.strip() for c in MAT_COLS.split(','))}"
            " FROM lineage l JOIN materializations m ON m.id = l.downstream_id"
            " WHERE l.upstream_id = ? ORDER BY m.rowid",
            (materialization_id,),
        )

    # --- approvals & gates -------------------------------------------------------------
    def get_approval(self, approval_id: int) -> Approval | None:
        rows = self._read(f"SELECT {APPROVAL_COLS} FROM approvals WHERE id = ?", (approval_id,))
        return approval_row(rows[0]) if rows else None

    def find_approval(self, run_id: str, asset: str, partition: str) -> Approval | None:
        rows = self._read(
            f"SELECT {APPROVAL_COLS} FROM approvals WHERE {_STEP_KEY} ORDER BY id DESC LIMIT 1",
            (run_id, asset, partition),
        )
        return approval_row(rows[0]) if rows else None

    def list_approvals(
        self, *, pipeline: str | None = None, status: str | None = None
    ) -> list[Approval]:
        where, params = _filters(pipeline=pipeline, status=status)
        rows = self._read(f"SELECT {APPROVAL_COLS} FROM approvals {where} ORDER BY id", params)
        return [approval_row(r) for r in rows]

    def decide_approval(
        self,
        approval_id: int,
        status: Literal["approved", "rejected", "expired"],
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> Approval:
        now = us(rules.utc_now())
        with self._write() as c:
            row = c.execute(
                "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?, reason = ?"
                f" WHERE id = ? AND status = 'pending' RETURNING {APPROVAL_COLS}",
                (status, by, now, reason, approval_id),
            ).fetchone()
            if row is None:
                old = c.execute(
                    "SELECT status, decided_by FROM approvals WHERE id = ?", (approval_id,)
                ).fetchone()
                if old is None:
                    raise ApprovalError(
                        f"approval {approval_id} does not exist; list pending approvals with "
                        "`flowstone approvals` to find the right id"
                    )
                raise ApprovalError(
                    f"approval {approval_id} was already {old[0]}"
                    f"{f' by {old[1]}' if old[1] else ''}; an approval can be decided only once"
                )
            approval = approval_row(row)
            detail = {"approval_id": approval_id, "by": by, "reason": reason}
            self._audit(
                c,
                approval.run_id,
                f"approval_{status}",
                approval.asset,
                approval.partition,
                detail,
                now,
            )
        return approval

    def due_approvals(self, now: datetime) -> list[Approval]:
        rows = self._read(
            f"SELECT {APPROVAL_COLS} FROM approvals"
            " WHERE status = 'pending' AND expires_at <= ? ORDER BY id",
            (us(rules.require_utc(now, "now")),),
        )
        return [approval_row(r) for r in rows]

    def get_gate(self, token_hash: str) -> Gate | None:
        rows = self._read(f"SELECT {GATE_COLS} FROM gates WHERE token_hash = ?", (token_hash,))
        return gate_row(rows[0]) if rows else None

    def consume_gate(
        self, token_hash: str, *, payload: Any, status: Literal["signaled", "expired"]
    ) -> Gate:
        encoded = rules.to_json(payload, "signal payload")
        now = us(rules.utc_now())
        with self._write() as c:
            row = c.execute(
                "UPDATE gates SET status = ?, payload = ?, signaled_at = ?"
                f" WHERE token_hash = ? AND status = 'pending' RETURNING {GATE_COLS}",
                (status, encoded, now, token_hash),
            ).fetchone()
            if row is None:
                old = c.execute(
                    "SELECT status, run_id, asset FROM gates WHERE token_hash = ?", (token_hash,)
                ).fetchone()
                if old is None:
                    raise SignalError(
                        "unknown signal token; check that the token was copied whole and "
                        "belongs to this pipeline's store"
                    )
                raise SignalError(
                    f"signal gate of run {old[1]!r} asset {old[2]!r} is already {old[0]}; "
                    "a token works only once"
                )
            gate = gate_row(row)
            self._audit(c, gate.run_id, f"gate_{status}", gate.asset, gate.partition, {}, now)
        return gate

    def due_gates(self, now: datetime) -> list[Gate]:
        rows = self._read(
            f"SELECT {GATE_COLS} FROM gates WHERE status = 'pending' AND expires_at <= ?",
            (us(rules.require_utc(now, "now")),),
        )
        return [gate_row(r) for r in rows]

    # --- routing -----------------------------------------------------------------------
    def record_route_decision(self, run_id: str, router: str, partition: str, branch: str) -> str:
        with self._write() as c:
            c.execute(
                "INSERT OR IGNORE INTO route_decisions VALUES (?, ?, ?, ?, ?)",
                (run_id, router, partition, branch, us(rules.utc_now())),
            )
            row = c.execute(
                "SELECT branch FROM route_decisions WHERE run_id = ? AND router = ?"
                " AND partition = ?",
                (run_id, router, partition),
            ).fetchone()
        return str(row[0])

    def get_route_decision(self, run_id: str, router: str, partition: str) -> str | None:
        rows = self._read(
            "SELECT branch FROM route_decisions WHERE run_id = ? AND router = ? AND partition = ?",
            (run_id, router, partition),
        )
        return str(rows[0][0]) if rows else None

    def prune_route_decisions(self, older_than: datetime) -> int:
        cutoff = us(rules.require_utc(older_than, "older_than"))
        with self._write() as c:
            return c.execute("DELETE FROM route_decisions WHERE decided_at < ?", (cutoff,)).rowcount

    # --- cursors & ticks ---------------------------------------------------------------
    def get_cursor(self, name: str) -> str | None:
        rows = self._read("SELECT value FROM cursors WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    def set_cursor(self, name: str, value: str, *, expected: str | None = None) -> bool:
        now = us(rules.utc_now())
        with self._write() as c:
            if expected is None:
                cur = c.execute(
                    "INSERT OR IGNORE INTO cursors VALUES (?, ?, ?)", (name, value, now)
                )
            else:
                cur = c.execute(
                    "UPDATE cursors SET value = ?, updated_at = ? WHERE name = ? AND value = ?",
                    (value, now, name, expected),
                )
            return cur.rowcount == 1

    def claim_tick(self, name: str, tick: str) -> bool:
        with self._write() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO ticks VALUES (?, ?, ?)", (name, tick, us(rules.utc_now()))
            )
            return cur.rowcount == 1

    # --- audit -------------------------------------------------------------------------
    def append_audit(
        self,
        run_id: str,
        kind: str,
        *,
        asset: str | None = None,
        partition: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        encoded = dict(detail or {})
        rules.to_json(encoded, f"audit detail of {kind!r}")
        now = us(rules.utc_now())
        with self._write() as c:
            self._audit(c, run_id, kind, asset, partition, encoded, now)

    def list_audit(self, run_id: str) -> list[AuditEntry]:
        rows = self._read(
            "SELECT id, run_id, at, kind, asset, partition, detail FROM audit"
            " WHERE run_id = ? ORDER BY id",
            (run_id,),
        )
        return [AuditEntry(r[0], r[1], _at(r[2]), r[3], r[4], r[5], json.loads(r[6])) for r in rows]

    def _audit(
        self,
        c: sqlite3.Connection,
        run_id: str,
        kind: str,
        asset: str | None,
        partition: str | None,
        detail: Mapping[str, Any],
        at: int | None,
    ) -> None:
        c.execute(
            "INSERT INTO audit (run_id, at, kind, asset, partition, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, at, kind, asset, partition, json.dumps(detail, separators=(",", ":"))),
        )

    # --- scatter item results ------------------------------------------------------------
    def save_item_results(
        self, run_id: str, asset: str, partition: str, results: Sequence[ItemResult]
    ) -> None:
        with self._write() as c:
            c.executemany(
                "INSERT INTO item_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id, asset, partition, idx) DO UPDATE SET key = excluded.key,"
                " state = excluded.state, value_json = excluded.value_json,"
                " error = excluded.error",
                [
                    (run_id, asset, partition, r.index, r.key, r.state, r.value_json, r.error)
                    for r in results
                ],
            )

    def load_item_results(self, run_id: str, asset: str, partition: str) -> list[ItemResult]:
        rows = self._read(
            "SELECT idx, key, state, value_json, error FROM item_results"
            f" WHERE {_STEP_KEY} ORDER BY idx",
            (run_id, asset, partition),
        )
        return [ItemResult(*r) for r in rows]


# --- helpers (run inside a transaction) ---------------------------------------------------
def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _at(value: int) -> datetime:
    found = dt(value)
    assert found is not None
    return found


def _filters(**values: str | None) -> tuple[str, list[str]]:
    """A WHERE clause from keyword=value pairs (None = no filter). Keys are our column names."""
    used = {k: v for k, v in values.items() if v is not None}
    if not used:
        return "WHERE 1 = 1", []
    return "WHERE " + " AND ".join(f"{k} = ?" for k in used), list(used.values())


def _run_not_found(run_id: str) -> RunNotFoundError:
    return RunNotFoundError(
        f"no run {run_id!r} in the SQLite run store; list runs with `flowstone runs`"
    )


def _run_status(c: sqlite3.Connection, run_id: str) -> str:
    row = c.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        raise _run_not_found(run_id)
    return str(row[0])


def _compute_status(c: sqlite3.Connection, run_id: str) -> RunStatus:
    if c.execute(
        "SELECT 1 FROM steps WHERE run_id = ? AND state IN ('ready', 'queued', 'running') LIMIT 1",
        (run_id,),
    ).fetchone():
        return "running"
    states = {
        r[0] for r in c.execute("SELECT DISTINCT state FROM steps WHERE run_id = ?", (run_id,))
    }
    return rules.run_status_from(states)


def _upsert_materialization(
    c: sqlite3.Connection,
    mat_id: str,
    key: tuple[str, str, str],
    values: tuple[Any, ...],
    upstream: Sequence[str],
    where: str,
) -> None:
    """One record per (run, asset, partition); the last write wins, including its id."""
    old = c.execute(
        "SELECT id FROM materializations WHERE run_id = ? AND asset = ? AND partition = ?", key
    ).fetchone()
    clash = c.execute(
        "SELECT run_id, asset FROM materializations WHERE id = ?", (mat_id,)
    ).fetchone()
    if clash is not None and (old is None or old[0] != mat_id):
        raise StorageError(
            f"{where}: materialization id {mat_id!r} is already used by run {clash[0]!r} "
            f"asset {clash[1]!r}; ids must be unique"
        )
    if old is None:
        c.execute(f"INSERT INTO materializations ({MAT_COLS}) VALUES ({_marks(14)})", values)
    else:
        c.execute("DELETE FROM lineage WHERE downstream_id = ?", (old[0],))
        c.execute(
            "UPDATE materializations SET id = ?, pipeline = ?, run_id = ?, asset = ?,"
            " partition = ?, state = ?, io_manager = ?, location = ?, attempt = ?,"
            " started_at = ?, finished_at = ?, error = ?, metadata = ?, invalidated = ?"
            " WHERE id = ?",
            (*values, old[0]),
        )
        if old[0] != mat_id:
            c.execute("UPDATE lineage SET upstream_id = ? WHERE upstream_id = ?", (mat_id, old[0]))
    c.executemany(
        "INSERT INTO lineage VALUES (?, ?, ?)",
        [(mat_id, i, up) for i, up in enumerate(dict.fromkeys(upstream))],
    )


def _retry_locked(action: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            action()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
