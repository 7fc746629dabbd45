"""``SQLiteRunStore``: the durable in-process run store (stdlib ``sqlite3``).

One file holds every run, so a daemon and a ``flowstone approve`` in another process share
state safely: the file is in WAL mode, every write is one ``BEGIN IMMEDIATE`` transaction
(processes queue on the write lock for up to ``busy_timeout`` seconds), and the schema is
versioned (:mod:`flowstone.defaults.sqlite_schema`).

The connection handling is in :mod:`flowstone.defaults.sqlite_connection`; materializations,
approvals, gates and the other records beside runs and steps are in
:mod:`flowstone.defaults.sqlite_records`. This module holds the scheduling: runs and steps.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flowstone import store_rules as rules
from flowstone.defaults.sqlite_connection import BATCH, STEP_KEY, filters, marks
from flowstone.defaults.sqlite_io import STAGING_TARGET, SQLiteIOManager, write_staged
from flowstone.defaults.sqlite_records import Appends, SQLiteRecords, upsert_materialization
from flowstone.defaults.sqlite_schema import (
    GATE_COLS,
    RUN_COLS,
    STEP_COLS,
    from_micros,
    run_row,
    step_row,
    to_micros,
)
from flowstone.errors import RunNotFoundError, StorageError, UsageError
from flowstone.protocols import ClaimedReads, Finish
from flowstone.records import (
    TERMINAL_STEP_STATES,
    Continuation,
    Fence,
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


class SQLiteRunStore(SQLiteRecords):
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

    def __repr__(self) -> str:
        return f"SQLiteRunStore({self._path!r})"

    def accepts_staging(self, target: str) -> bool:
        """Values a :class:`SQLiteIOManager` staged: written (one transaction per manager
        and batch of finishes) just before the transaction that records their steps."""
        return target == STAGING_TARGET

    def default_io_manager(self) -> SQLiteIOManager:
        """Values beside the store's file: ``<dir>/<stem>.values.db`` (a private
        in-memory database for ``":memory:"``)."""
        if self._path == ":memory:":
            return SQLiteIOManager(":memory:")
        db = Path(self._path)
        return SQLiteIOManager(db.with_name(db.stem + ".values.db"))

    # --- runs ------------------------------------------------------------------------
    def create_run(self, run: RunRecord, steps: Sequence[StepSpec]) -> tuple[StepRecord, ...]:
        run_id = run.run_id
        planned = rules.plan_steps(run_id, steps)
        tags = rules.to_json(dict(run.tags), f"tags of run {run_id!r}")
        created = to_micros(rules.require_utc(run.created_at, "RunRecord.created_at"))
        now_dt = self.clock()
        now = to_micros(now_dt)
        step_rows: list[tuple[Any, ...]] = []
        dep_rows: list[tuple[str, ...]] = []
        ready: list[StepRecord] = []
        for p in planned:
            spec, state, mat_id = p.spec, p.state, p.spec.reused_materialization_id
            step_rows.append(
                (run_id, spec.asset, spec.partition, state, p.remaining_deps, mat_id, now)
            )
            dep_rows.extend((run_id, spec.asset, spec.partition, *d) for d in p.deps)
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
                raise rules.duplicate_run(run_id)
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

    def get_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """The runs with these ids (unknown ids left out), in one read."""
        ids = list(dict.fromkeys(run_ids))
        rows = []
        for i in range(0, len(ids), BATCH):
            chunk = ids[i : i + BATCH]
            rows += self._read(
                f"SELECT {RUN_COLS} FROM runs WHERE run_id IN ({marks(len(chunk))})", chunk
            )
        return [run_row(r) for r in rows]

    def list_runs(
        self,
        *,
        pipeline: str | None = None,
        status: RunStatus | None = None,
        limit: int = 50,
        offset: int = 0,
        after: rules.RunKey | None = None,
    ) -> list[RunRecord]:
        start = rules.check_run_keyset(after, offset)
        where, params = filters(pipeline=pipeline, status=status)
        args: list[Any] = [*params]
        if start is not None:
            where += " AND (created_at, run_id) < (?, ?)"
            args += [to_micros(start[0]), start[1]]
        rows = self._read(
            f"SELECT {RUN_COLS} FROM runs {where} ORDER BY created_at DESC, run_id DESC"
            " LIMIT ? OFFSET ?",
            [*args, limit, offset],
        )
        return [run_row(r) for r in rows]

    def set_run_status(self, run_id: str, status: RunStatus, *, error: str | None = None) -> None:
        with self._write() as c:
            cur = c.execute(
                "UPDATE runs SET status = ?, error = ?, updated_at = ? WHERE run_id = ?",
                (status, error, to_micros(self.clock()), run_id),
            )
            if cur.rowcount == 0:
                raise _run_not_found(run_id)

    def cancel_run(self, run_id: str) -> bool:
        now = to_micros(self.clock())
        with self._write() as c:
            if _run_status(c, run_id) in rules.TERMINAL_RUN_STATUSES:
                return False
            c.execute(
                "UPDATE steps SET state = 'cancelled', owner = NULL, lease_expires_at = NULL,"
                " updated_at = ?"
                f" WHERE run_id = ? AND state NOT IN ({_TERMINAL_SQL})",
                (now, run_id),
            )
            c.execute(
                "UPDATE runs SET status = 'cancelled', updated_at = ? WHERE run_id = ?",
                (now, run_id),
            )
            for table in ("approvals", "gates"):  # an old token cannot finish a re-run step
                c.execute(
                    f"UPDATE {table} SET status = 'cancelled'"
                    " WHERE run_id = ? AND status = 'pending'",
                    (run_id,),
                )
            self._audit(c, run_id, "run_cancelled", None, None, {}, now)
            return True

    def reopen_run(self, run_id: str) -> tuple[StepRecord, ...]:
        now = to_micros(self.clock())
        with self._write() as c:
            if _run_status(c, run_id) not in ("failed", "cancelled"):
                return ()
            reopened = c.execute(
                "UPDATE steps SET state = 'pending', attempt = 0, owner = NULL,"
                " lease_expires_at = NULL, not_before = NULL, materialization_id = NULL,"
                " error = NULL, updated_at = ?, resent_at = NULL, resends = 0"
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
            f"SELECT {STEP_COLS} FROM steps WHERE {STEP_KEY}", (run_id, asset, partition)
        )
        return step_row(rows[0]) if rows else None

    def get_step_results(
        self, run_id: str, keys: Sequence[tuple[str, str]]
    ) -> list[tuple[StepRecord, MaterializationRecord | None]]:
        unique = list(dict.fromkeys(keys))
        steps: list[StepRecord] = []
        for i in range(0, len(unique), BATCH):
            chunk = unique[i : i + BATCH]
            rows = self._read(
                f"SELECT {STEP_COLS} FROM steps WHERE run_id = ? AND (asset, partition) IN "
                f"(VALUES {', '.join(['(?, ?)'] * len(chunk))})",
                (run_id, *(v for k in chunk for v in k)),
            )
            steps.extend(step_row(r) for r in rows)
        mats = {
            m.id: m
            for m in self._materializations_by_id(
                [s.materialization_id for s in steps if s.materialization_id is not None]
            )
        }
        return [
            (s, None if s.materialization_id is None else mats.get(s.materialization_id))
            for s in steps
        ]

    def list_steps(self, run_id: str) -> list[StepRecord]:
        rows = self._read(
            f"SELECT {STEP_COLS} FROM steps WHERE run_id = ? ORDER BY rowid", (run_id,)
        )
        return [step_row(r) for r in rows]

    def claim_step(
        self,
        run_id: str,
        asset: str,
        partition: str,
        *,
        owner: str,
        lease_seconds: float,
        pipeline: str | None = None,
    ) -> StepRecord | None:
        key = (run_id, asset, partition)
        with self._write() as c:
            return _claim(c, key, owner, lease_seconds, self.clock(), pipeline)

    def renew_lease(
        self,
        run_id: str,
        asset: str,
        partition: str,
        *,
        owner: str,
        lease_seconds: float,
        attempt: int | None = None,
    ) -> bool:
        now_dt = self.clock()
        with self._write() as c:
            cur = c.execute(  # the fence (store_rules.fence_holds) in the write itself
                "UPDATE steps SET lease_expires_at = ?, updated_at = ?"
                f" WHERE {STEP_KEY} AND state = 'running' AND owner = ?"
                " AND (? IS NULL OR attempt = ?)",
                (
                    to_micros(now_dt + timedelta(seconds=lease_seconds)),
                    to_micros(now_dt),
                    run_id,
                    asset,
                    partition,
                    owner,
                    attempt,
                    attempt,
                ),
            )
            return cur.rowcount == 1

    def retry_step(
        self,
        run_id: str,
        asset: str,
        partition: str,
        *,
        delay_seconds: float,
        error: str,
        fence: Fence | None = None,
    ) -> StepRecord | None:
        now_dt = self.clock()
        now = to_micros(now_dt)
        not_before = now_dt + timedelta(seconds=delay_seconds)
        # the fence (store_rules.fence_holds) in the write itself
        owner = None if fence is None else fence.owner
        held = (owner, owner, None if fence is None else fence.attempt)
        with self._write() as c:
            row = c.execute(
                "UPDATE steps SET state = 'ready', owner = NULL, lease_expires_at = NULL,"
                " not_before = ?, error = ?, updated_at = ?"
                f" WHERE {STEP_KEY} AND state = 'running'"
                f" AND (? IS NULL OR (owner = ? AND attempt = ?)) RETURNING {STEP_COLS}",
                (to_micros(not_before), error, now, run_id, asset, partition, *held),
            ).fetchone()
            if row is None:
                return None
            step = step_row(row)
            detail = rules.retry_detail(step.attempt, error, not_before)
            self._audit(c, run_id, "step_retry", asset, partition, detail, now)
            return step

    def finish_step(
        self,
        run_id: str,
        asset: str,
        partition: str,
        outcome: StepOutcome,
        *,
        then: Continuation | None = None,
        fence: Fence | None = None,
    ) -> StepTransition:
        got = self._finish_all([Finish(run_id, asset, partition, outcome, then, fence)],
                               "finish_step")[0]  # fmt: skip
        if isinstance(got, Exception):
            raise got
        return got

    def finish_steps(
        self, finishes: Sequence[Finish], *, sources: Mapping[str, str]
    ) -> list[tuple[StepTransition, ClaimedReads | None] | Exception]:
        """Several :meth:`finish_step` s in one transaction (see
        :class:`~flowstone.protocols.BatchFinish`): one commit instead of one each, and the
        pages the finishes share (their run's steps, the indexes they touch) written once.
        If the rules refuse a finish (or a fenced finish finds its step not held), the
        transaction starts over with each finish in a savepoint of its own, so the refused
        one comes back as its error (or goes the full way, as in :meth:`finish_step`) and
        leaves nothing behind. ``sources`` is not used (this store sends no values
        along)."""
        return [got if isinstance(got, Exception) else (got, None)
                for got in self._finish_all(finishes, "finish_steps")]  # fmt: skip

    def _finish_all(
        self, finishes: Sequence[Finish], call: str
    ) -> list[StepTransition | Exception]:
        """:meth:`finish_steps` (and :meth:`finish_step`, a batch of one); ``call`` names
        the method in error messages. A fenced finish (a runner finishing what it holds)
        has its fence checked by the step's update itself, no read first."""
        bound: list[rules.BoundOutcome | Exception] = []
        for f in finishes:
            try:  # bound and JSON-encoded before the transaction: a bad value must not half write
                bound.append(rules.bind_outcome(f.run_id, f.asset, f.partition, f.outcome,
                                                _where(call, f)))  # fmt: skip
            except (StorageError, UsageError) as exc:
                bound.append(exc)
        # every value first, in one transaction per IO manager, then the records
        write_staged(v for f, b in zip(finishes, bound, strict=True)
                     if not isinstance(b, Exception) for v in f.outcome.staged)  # fmt: skip
        with self._write() as c:
            try:  # usually every finish applies as it is: no savepoint needed
                later = Appends()
                done: list[StepTransition | Exception] = [
                    b if isinstance(b, Exception) else
                    self._finish(c, (f.run_id, f.asset, f.partition), f.outcome, b,
                                 _where(call, f), f.then, f.fence, f.fence, later)
                    for f, b in zip(finishes, bound, strict=True)
                ]  # fmt: skip
                later.write(c)
                return done
            except (_NotHeld, StorageError, UsageError):
                # one did not: start over, each finish in a savepoint of its own
                c.execute("ROLLBACK")
                c.execute("BEGIN IMMEDIATE")
            out: list[StepTransition | Exception] = []
            for f, b in zip(finishes, bound, strict=True):
                if isinstance(b, Exception):
                    out.append(b)
                    continue
                try:
                    key = (f.run_id, f.asset, f.partition)
                    out.append(self._finish_saved(c, key, f, b, _where(call, f)))
                except (StorageError, UsageError) as exc:
                    out.append(exc)
        return out

    def _finish_saved(
        self,
        c: sqlite3.Connection,
        key: tuple[str, str, str],
        f: Finish,
        bound: rules.BoundOutcome,
        where: str,
    ) -> StepTransition:
        """One finish of :meth:`finish_steps` in a savepoint: rolled back to it when the
        rules refuse it (or a fenced finish finds its step not held, which then goes the
        full way, as in :meth:`finish_step`)."""
        for held in ((f.fence, None) if f.fence is not None else (None,)):
            c.execute("SAVEPOINT finish")
            try:
                transition = self._finish(c, key, f.outcome, bound, where, f.then, held, f.fence)
            except (_NotHeld, StorageError, UsageError) as exc:
                c.execute("ROLLBACK TO finish")
                c.execute("RELEASE finish")
                if isinstance(exc, _NotHeld):
                    continue
                raise
            c.execute("RELEASE finish")
            return transition
        raise AssertionError("unreachable: the full way never raises _NotHeld")

    def claim_steps(
        self,
        keys: Sequence[tuple[str, str, str]],
        *,
        owner: str,
        lease_seconds: float,
        pipeline: str | None = None,
    ) -> list[StepRecord | None]:
        """Several :meth:`claim_step` s in one transaction (see
        :class:`~flowstone.protocols.BulkClaim`), in key order."""
        now_dt = self.clock()
        wanted = sorted({(r, a, p) for r, a, p in keys})
        with self._write() as c:
            # the steps as they are before the claims (for the claims' facts), in one read
            was: dict[tuple[str, str, str], tuple[Any, ...]] = {}
            for i in range(0, len(wanted), BATCH // 3):
                chunk = wanted[i : i + BATCH // 3]
                rows = c.execute(  # (a join: "(...) IN (VALUES ...)" would scan the table)
                    f"WITH k(r, a, p) AS (VALUES {', '.join(['(?, ?, ?)'] * len(chunk))})"
                    " SELECT s.run_id, s.asset, s.partition, s.state, s.owner, s.updated_at,"
                    " s.not_before FROM k JOIN steps s"
                    " ON s.run_id = k.r AND s.asset = k.a AND s.partition = k.p",
                    [part for key in chunk for part in key],
                ).fetchall()
                was.update(((r[0], r[1], r[2]), (r[3], r[4], from_micros(r[5]),
                                                  from_micros(r[6]))) for r in rows)  # fmt: skip
            claimed = {
                key: _claim(c, key, owner, lease_seconds, now_dt, pipeline, before=was[key])
                for key in wanted
                if key in was  # (no such step: nothing to claim)
            }
        out: list[StepRecord | None] = []
        for r, a, p in keys:  # a key given twice is claimed once, as claim_step twice would
            out.append(claimed.pop((r, a, p), None))
        return out

    def _finish(
        self,
        c: sqlite3.Connection,
        key: tuple[str, str, str],
        outcome: StepOutcome,
        bound: rules.BoundOutcome,
        where: str,
        then: Continuation | None,
        held: Fence | None,
        fence: Fence | None = None,
        later: Appends | None = None,
    ) -> StepTransition:
        """``finish_step`` in the write transaction ``c``; with ``held``, only if the step is
        held under that fence (else :class:`_NotHeld`, for the caller to roll back),
        without reading it first; the rows it only appends go to ``later`` if given."""
        run_id, asset, partition = key
        now_dt = self.clock()
        now = to_micros(now_dt)
        claimed = None
        attempt, previous = 0, None
        if held is None:
            row = c.execute(
                f"SELECT state, attempt, owner FROM steps WHERE {STEP_KEY}", key
            ).fetchone()
            if not rules.finish_applies(
                row and row[0], outcome, run_id, asset, partition,
                fence=fence, owner=row and row[2], attempt=row[1] if row else 0,
            ):  # fmt: skip
                return StepTransition(applied=False)
            attempt = row[1]
        try:
            mat_id, approval_id = self._write_records(c, bound, key, where, later)
        except StorageError as exc:
            if held is not None:  # the full way says whether it applies at all first
                raise _NotHeld from exc
            raise
        if held is None:
            c.execute(_FINISH, (outcome.state, mat_id, outcome.error, now, *key))
        else:
            states = _HELD_STATES[outcome.state == "waiting"]
            got = c.execute(
                _FINISH_HELD[len(states)],
                (outcome.state, mat_id, outcome.error, now, *key, *states, held.owner,
                 held.attempt),
            ).fetchone()  # fmt: skip
            if got is None:
                raise _NotHeld
            attempt, previous = got
        detail = rules.finish_detail(attempt, outcome)
        if approval_id is not None:
            detail["approval_id"] = approval_id
        ready: list[StepRecord] = []
        if outcome.state != "waiting":
            # dependents of a non-terminal step are all pending; the guard keeps a
            # count from ever going below zero
            rows = c.execute(_RELEASE_DEPENDENTS, (now, *key)).fetchall()
            ready = [step_row(r) for r in rows if r[3] == "ready"]
        pick = rules.continuation_key(ready, now_dt) if then else None
        if then is not None and pick is not None:
            # the step as it was before the claim is the one the update just returned
            was = next(r for r in ready if (r.asset, r.partition) == pick)
            claimed = _claim(c, (run_id, *pick), then.owner, then.lease_seconds, now_dt,
                             before=(was.state, was.owner, was.updated_at, was.not_before))
            ready = [r for r in ready if r is not was]
        if previous is None:  # (nothing in this transaction writes the run before here)
            previous = _run_status(c, run_id)
        status = rules.next_run_status(
            previous, "running" if ready or claimed else _compute_status(c, run_id)
        )
        if status != previous:
            c.execute(
                "UPDATE runs SET status = ?, updated_at = ? WHERE run_id = ?",
                (status, now, run_id),
            )
        self._audit(c, run_id, f"step_{outcome.state}", asset, partition, detail, now, later)
        if status != previous:
            self._audit(c, run_id, f"run_{status}", None, None, {}, now, later)
        return StepTransition(
            applied=True,
            ready=tuple(ready),
            run_status=rules.reported_status(previous, status),
            claimed=claimed,
        )

    def _write_records(
        self,
        c: sqlite3.Connection,
        bound: rules.BoundOutcome,
        key: tuple[str, str, str],
        where: str,
        later: Appends | None = None,
    ) -> tuple[str | None, int | None]:
        """A finish's materialization, approval or gate; returns (materialization id,
        approval id)."""
        run_id, asset, partition = key
        mat_id = approval_id = None
        if (mat := bound.materialization) is not None:
            mat_id = upsert_materialization(
                c, mat, bound.materialization_metadata_json, where, later
            )
        if (a := bound.approval) is not None:
            approval_id = c.execute(
                "INSERT INTO approvals (pipeline, run_id, asset, partition, message, status,"
                " created_at, expires_at, io_manager, location, metadata)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (a.pipeline, run_id, asset, partition, a.message, a.status,
                 to_micros(a.created_at), to_micros(a.expires_at), a.io_manager, a.location,
                 bound.approval_metadata_json),
            ).lastrowid  # fmt: skip
        if (g := bound.gate) is not None:
            taken = c.execute("SELECT 1 FROM gates WHERE token_hash = ?", (g.token_hash,))
            if taken.fetchone():
                raise StorageError(f"{where}: a gate with this token hash already exists")
            c.execute(
                f"INSERT INTO gates ({GATE_COLS}) VALUES ({marks(11)})",
                (g.token_hash, g.pipeline, run_id, asset, partition, g.status,
                 to_micros(g.created_at), to_micros(g.expires_at), bound.gate_payload_json,
                 None, bound.gate_metadata_json),
            )  # fmt: skip
        return mat_id, approval_id

    def resend_steps(
        self,
        *,
        ready_for_seconds: float,
        pipeline: str | None = None,
        limit: int = rules.RESEND_BATCH,
    ) -> list[StepRecord]:
        now = to_micros(self.clock())
        ready_for = round(ready_for_seconds * 1_000_000)
        # store_rules.resend_due, selected and stamped in one write
        with self._write() as c:
            rows = c.execute(
                "UPDATE steps SET resent_at = ?, resends = resends + 1"
                " WHERE (run_id, asset, partition) IN (SELECT s.run_id, s.asset, s.partition"
                "  FROM steps s JOIN runs r ON r.run_id = s.run_id AND r.status = 'running'"
                "   AND (? IS NULL OR r.pipeline = ?)"
                "  WHERE ((s.state = 'ready'"
                "    AND MAX(s.updated_at, COALESCE(s.not_before, s.updated_at)) <= ? - ?"
                "    AND (s.not_before IS NULL OR s.not_before <= ?))"
                "   OR (s.state = 'running' AND s.lease_expires_at <= ?))"
                "  AND (s.resent_at IS NULL"
                "   OR s.resent_at <= ? - ? * (1 << MIN(s.resends, ?)))"
                "  ORDER BY s.resent_at IS NOT NULL, COALESCE(s.resent_at, s.updated_at)"
                "  LIMIT ?)"
                f" RETURNING {STEP_COLS}",
                (now, pipeline, pipeline, now, ready_for, now, now, now, ready_for,
                 rules.RESEND_BACKOFF_DOUBLINGS, max(0, limit)),
            ).fetchall()  # fmt: skip
        return [step_row(r) for r in rows]

    def stale_steps(self, now: datetime, *, ready_for_seconds: float) -> list[StepRecord]:
        now = rules.require_utc(now, "now")
        cutoff = to_micros(now - timedelta(seconds=ready_for_seconds))
        cols = ", ".join(f"s.{c.strip()}" for c in STEP_COLS.split(","))
        rows = self._read(
            f"SELECT {cols} FROM steps s JOIN runs r ON r.run_id = s.run_id"
            " WHERE s.state = 'ready' AND s.updated_at <= ?"
            " AND (s.not_before IS NULL OR s.not_before <= ?) AND r.status = 'running'"
            f" UNION ALL SELECT {cols} FROM steps s JOIN runs r ON r.run_id = s.run_id"
            " WHERE s.state = 'running' AND s.lease_expires_at <= ? AND r.status = 'running'",
            (cutoff, cutoff, to_micros(now)),
        )
        return [step_row(r) for r in rows]


# --- helpers (run inside a transaction) ---------------------------------------------------
def _claim(
    c: sqlite3.Connection,
    key: tuple[str, str, str],
    owner: str,
    lease_seconds: float,
    now_dt: datetime,
    pipeline: str | None = None,
    *,
    before: tuple[str, str | None, datetime | None, datetime | None] | None = None,
) -> StepRecord | None:
    """Claim the step at ``key``; ``before``: its (state, owner, updated_at, not_before),
    when the transaction has just read them (else they are read here)."""
    now = to_micros(now_dt)
    expires = to_micros(now_dt + timedelta(seconds=lease_seconds))
    if before is None:
        was = c.execute(
            f"SELECT state, owner, updated_at, not_before FROM steps WHERE {STEP_KEY}", key
        ).fetchone()
        before = (was[0], was[1], from_micros(was[2]), from_micros(was[3])) if was else None
    row = c.execute(
        "UPDATE steps SET state = 'running', attempt = attempt + 1, owner = ?,"
        " lease_expires_at = ?, not_before = NULL, updated_at = ?, resent_at = NULL,"
        " resends = 0"
        f" WHERE {STEP_KEY}"
        " AND ((state = 'ready' AND (not_before IS NULL OR not_before <= ?))"
        "  OR (state = 'running' AND lease_expires_at <= ?))"
        # not in a cancelled run, nor in a run of another pipeline (store_rules.claimable_by)
        " AND EXISTS (SELECT 1 FROM runs WHERE run_id = steps.run_id"
        "  AND status != 'cancelled' AND (? IS NULL OR pipeline = ?))"
        f" RETURNING {STEP_COLS}",
        (owner, expires, now, *key, now, now, pipeline, pipeline),
    ).fetchone()
    if row is None or before is None:
        return None
    queued_s, took_over = rules.claim_facts(*before, claimer=owner, now=now_dt)
    return step_row(row, queued_s, took_over)


_RELEASE_DEPENDENTS = (
    "UPDATE steps SET remaining_deps = remaining_deps - 1,"
    " state = CASE WHEN remaining_deps = 1 THEN 'ready' ELSE state END, updated_at = ?"
    # driven by the primary key: one lookup per dependent, not a scan of the run's
    # pending steps
    " WHERE (run_id, asset, partition) IN (SELECT run_id, asset, partition"
    "  FROM step_deps WHERE run_id = ? AND dep_asset = ? AND dep_partition = ?)"
    f" AND state = 'pending' AND remaining_deps > 0 RETURNING {STEP_COLS}"
)
_FINISH = (
    "UPDATE steps SET state = ?, materialization_id = COALESCE(?, materialization_id),"
    f" error = ?, owner = NULL, lease_expires_at = NULL, updated_at = ? WHERE {STEP_KEY}"
)
# store_rules.finish_applies for a fenced finish, in the write itself: the step is held
# under the fence (fence_holds) in a state the outcome is accepted from (accepted_states:
# a 'waiting' outcome applies to a running step only, not to one waiting already)
_HELD_STATES = {
    waiting: tuple(sorted(rules.accepted_states(StepOutcome("waiting" if waiting else "failed"))
                          & {"running", "waiting"}))
    for waiting in (False, True)
}  # fmt: skip
_FINISH_HELD = {
    n: f"{_FINISH} AND state IN ({marks(n)}) AND owner = ? AND attempt = ?"
    # and the run's status, read here instead of by a statement of its own
    " RETURNING attempt, (SELECT status FROM runs WHERE run_id = steps.run_id)"
    for n in {len(states) for states in _HELD_STATES.values()}
}


def _where(call: str, f: Finish) -> str:
    return f"{call}(run {f.run_id!r}, asset {f.asset!r}, partition {f.partition!r})"


class _NotHeld(Exception):
    """A fenced finish found its step not held under the fence (rolled back)."""


def _run_not_found(run_id: str) -> RunNotFoundError:
    return rules.run_not_found(run_id, "SQLite run store")


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
