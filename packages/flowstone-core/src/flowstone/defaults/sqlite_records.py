"""``SQLiteRecords``: what the SQLite run store keeps beside its runs and steps.

Materializations and their lineage, approvals and signal gates, route decisions, cursors
and schedule ticks, the audit trail, scatter item results and step notes. The step lifecycle that
writes most of them lives in :mod:`flowstone.defaults.sqlite_store`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from flowstone import store_rules as rules
from flowstone.defaults.sqlite_connection import (
    BATCH,
    STEP_KEY,
    SQLiteConnection,
    filters,
    marks,
)
from flowstone.defaults.sqlite_schema import (
    APPROVAL_COLS,
    GATE_COLS,
    MAT_COLS,
    STEP_COLS,
    approval_row,
    from_micros,
    gate_row,
    mat_row,
    step_row,
    to_micros,
)
from flowstone.errors import ApprovalError, SignalError, StorageError
from flowstone.records import (
    Approval,
    AuditEntry,
    Continuation,
    Gate,
    ItemResult,
    MaterializationRecord,
    StepRecord,
)

__all__ = ["Appends", "SQLiteRecords", "upsert_materialization"]


class SQLiteRecords(SQLiteConnection):
    """The records half of :class:`~flowstone.defaults.sqlite_store.SQLiteRunStore`
    (its base class; not meant to be used on its own).
    """

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
                        f" WHERE downstream_id IN ({marks(len(upstream))})"
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

    def _materializations_by_id(self, ids: Sequence[str]) -> list[MaterializationRecord]:
        unique = list(dict.fromkeys(ids))
        out: list[MaterializationRecord] = []
        for i in range(0, len(unique), BATCH):
            chunk = unique[i : i + BATCH]
            out.extend(
                self._materializations(
                    f"SELECT {MAT_COLS} FROM materializations WHERE id IN ({marks(len(chunk))})",
                    chunk,
                )
            )
        return out

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
                " ORDER BY rowid DESC LIMIT 1",  # the last written (the store's order)
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
        where, params = filters(pipeline=pipeline, asset=asset, partition=partition, run_id=run_id)
        return self._materializations(
            f"SELECT {MAT_COLS} FROM materializations {where} ORDER BY rowid DESC LIMIT ?",
            [*params, limit],
        )

    # freshness reads (the optional FreshnessReads capability of flowstone-observability):
    # both are served by the materializations_latest index
    def last_materialized(self, pipeline: str) -> dict[str, datetime]:
        """``{asset: finished_at}`` of each asset's newest valid succeeded materialization."""
        rows = self._read(
            "SELECT asset, MAX(finished_at) FROM materializations WHERE pipeline = ?"
            " AND state = 'succeeded' AND invalidated = 0 GROUP BY asset",
            (pipeline,),
        )
        return {asset: at for asset, value in rows if (at := from_micros(value)) is not None}

    def materialized_partitions(self, pipeline: str, asset: str) -> list[str]:
        """The distinct partitions of ``asset`` with a valid succeeded materialization."""
        rows = self._read(
            "SELECT DISTINCT partition FROM materializations WHERE pipeline = ? AND asset = ?"
            " AND state = 'succeeded' AND invalidated = 0",
            (pipeline, asset),
        )
        return [str(r[0]) for r in rows]

    def invalidate(self, pipeline: str, asset: str, partition: str | None = None) -> int:
        where, params = filters(pipeline=pipeline, asset=asset, partition=partition)
        with self._write() as c:
            return c.execute(
                f"UPDATE materializations SET invalidated = 1 {where}"
                " AND state = 'succeeded' AND invalidated = 0",
                params,
            ).rowcount

    def referenced_locations(self, io_manager: str, locations: Sequence[str]) -> set[str]:
        found: set[str] = set()
        unique = list(dict.fromkeys(locations))
        for i in range(0, len(unique), BATCH):
            chunk = unique[i : i + BATCH]
            holes = marks(len(chunk))
            rows = self._read(
                f"SELECT location FROM materializations WHERE io_manager = ? AND location IN"
                f" ({holes}) UNION SELECT location FROM approvals WHERE io_manager = ?"
                f" AND location IN ({holes})",
                (io_manager, *chunk, io_manager, *chunk),
            )
            found.update(str(r[0]) for r in rows)
        return found

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
            f"SELECT {APPROVAL_COLS} FROM approvals WHERE {STEP_KEY} ORDER BY id DESC LIMIT 1",
            (run_id, asset, partition),
        )
        return approval_row(rows[0]) if rows else None

    def list_approvals(
        self, *, pipeline: str | None = None, status: str | None = None
    ) -> list[Approval]:
        where, params = filters(pipeline=pipeline, status=status)
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
        now_dt = self.clock()
        now = to_micros(now_dt)
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
                raise rules.approval_not_decidable(
                    approval_id, old[0] if old else None, old[1] if old else None
                )
            approval = approval_row(row)
            if status != "expired" and _past(approval.expires_at, now_dt):
                # raising rolls the decision back: the sweeper expires it
                raise ApprovalError(
                    rules.wait_too_late(f"approval {approval_id}", approval.expires_at)
                )
            kind, detail = rules.decision_audit(approval_id, status, by, reason)
            self._audit(c, approval.run_id, kind, approval.asset, approval.partition, detail, now)
        return approval

    def due_approvals(self, now: datetime | None = None) -> list[Approval]:
        at = self.clock() if now is None else rules.require_utc(now, "now")
        rows = self._read(
            f"SELECT {APPROVAL_COLS} FROM approvals"
            " WHERE status = 'pending' AND expires_at <= ? ORDER BY id",
            (to_micros(at),),
        )
        return [approval_row(r) for r in rows]

    def get_gate(self, token_hash: str) -> Gate | None:
        rows = self._read(f"SELECT {GATE_COLS} FROM gates WHERE token_hash = ?", (token_hash,))
        return gate_row(rows[0]) if rows else None

    def find_gate(self, run_id: str, asset: str, partition: str) -> Gate | None:
        rows = self._read(
            f"SELECT {GATE_COLS} FROM gates WHERE {STEP_KEY} ORDER BY created_at DESC LIMIT 1",
            (run_id, asset, partition),
        )
        return gate_row(rows[0]) if rows else None

    def consume_gate(
        self,
        token_hash: str,
        *,
        payload: Any,
        status: Literal["signaled", "expired"],
        claim: Continuation | None = None,
    ) -> Gate:
        encoded = rules.to_json(payload, "signal payload")
        now_dt = self.clock()
        now = to_micros(now_dt)
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
                raise rules.gate_not_consumable(*(old or (None,)))
            gate = gate_row(row)
            if status == "signaled" and _past(gate.expires_at, now_dt):
                raise SignalError(rules.wait_too_late("this signal gate", gate.expires_at))
            if claim is not None and not _hold(c, gate, claim, now_dt):
                raise rules.gate_not_consumable("finished", gate.run_id, gate.asset)
            self._audit(c, gate.run_id, f"gate_{status}", gate.asset, gate.partition, {}, now)
        return gate

    def due_gates(self, now: datetime | None = None) -> list[Gate]:
        at = self.clock() if now is None else rules.require_utc(now, "now")
        rows = self._read(
            f"SELECT {GATE_COLS} FROM gates WHERE status = 'pending' AND expires_at <= ?",
            (to_micros(at),),
        )
        return [gate_row(r) for r in rows]

    def take_over_wait(
        self, run_id: str, asset: str, partition: str, *, owner: str, lease_seconds: float
    ) -> StepRecord | None:
        now = self.clock()
        with self._write() as c:
            row = c.execute(
                f"SELECT state, owner, lease_expires_at FROM steps WHERE {STEP_KEY}",
                (run_id, asset, partition),
            ).fetchone()
            if row is None or not rules.wait_takeable(
                row[0], row[1], from_micros(row[2]), owner, now
            ):
                return None
            claim = Continuation(owner, lease_seconds)
            return _hold_step(c, (run_id, asset, partition), claim, now)

    # --- routing -----------------------------------------------------------------------
    def record_route_decision(self, run_id: str, router: str, partition: str, branch: str) -> str:
        with self._write() as c:
            c.execute(
                "INSERT OR IGNORE INTO route_decisions VALUES (?, ?, ?, ?, ?)",
                (run_id, router, partition, branch, to_micros(self.clock())),
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
        cutoff = to_micros(rules.require_utc(older_than, "older_than"))
        with self._write() as c:
            return c.execute("DELETE FROM route_decisions WHERE decided_at < ?", (cutoff,)).rowcount

    # --- cursors & ticks ---------------------------------------------------------------
    def get_cursor(self, name: str) -> str | None:
        rows = self._read("SELECT value FROM cursors WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    def set_cursor(self, name: str, value: str, *, expected: str | None = None) -> bool:
        now = to_micros(self.clock())
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
                "INSERT OR IGNORE INTO ticks VALUES (?, ?, ?)",
                (name, tick, to_micros(self.clock())),
            )
            return cur.rowcount == 1

    def prune_ticks(self, older_than: datetime, *, prefix: str) -> int:
        cutoff = to_micros(rules.require_utc(older_than, "older_than"))
        with self._write() as c:
            return c.execute(
                "DELETE FROM ticks WHERE substr(name, 1, ?) = ? AND claimed_at < ?",
                (len(prefix), prefix, cutoff),
            ).rowcount

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
        now = to_micros(self.clock())
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
        later: Appends | None = None,
    ) -> None:
        row = (run_id, at, kind, asset, partition, _COMPACT.encode(detail))
        if later is not None:
            later.audit.append(row)
        else:
            c.execute(_AUDIT, row)

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
            f" WHERE {STEP_KEY} ORDER BY idx",
            (run_id, asset, partition),
        )
        return [ItemResult(*r) for r in rows]


    # --- step notes ------------------------------------------------------------------------
    def add_step_note(self, run_id: str, asset: str, partition: str, kind: str, value: str) -> str:
        rules.check_note(kind, value)
        with self._write() as c:
            c.execute(
                "INSERT OR IGNORE INTO step_notes VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, asset, partition, kind, value, to_micros(self.clock())),
            )
            row = c.execute(
                f"SELECT value FROM step_notes WHERE {STEP_KEY} AND kind = ?",
                (run_id, asset, partition, kind),
            ).fetchone()
        return str(row[0])

    def get_step_note(self, run_id: str, asset: str, partition: str, kind: str) -> str | None:
        rows = self._read(
            f"SELECT value FROM step_notes WHERE {STEP_KEY} AND kind = ?",
            (run_id, asset, partition, kind),
        )
        return str(rows[0][0]) if rows else None


# --- helpers (run inside a transaction) ---------------------------------------------------
def _at(value: int) -> datetime:
    found = from_micros(value)
    assert found is not None
    return found


def upsert_materialization(
    c: sqlite3.Connection,
    mat: MaterializationRecord,
    metadata_json: str | None,
    where: str,
    later: Appends | None = None,
) -> str:
    """One record per (run, asset, partition); the last write wins, but the record keeps
    the id it was first written with (a step finished again, in a resumed run: lineage and
    join records keep naming it), and is the newest record again (a new rowid, as Postgres
    gives it a new ``seq``). Returns the id the record has.

    ``mat`` is bound to its step (:func:`flowstone.store_rules.bind_outcome`) and
    ``metadata_json`` its encoded metadata; its lineage rows go to ``later`` if given.
    """
    insert = f"INSERT INTO materializations ({MAT_COLS}) VALUES ({marks(14)})"
    mat_id = mat.id
    try:  # the usual case: the step's first record, a new id (one statement)
        c.execute(insert, _mat_values(mat, mat_id, metadata_json))
    except sqlite3.IntegrityError:  # (the failed statement wrote nothing)
        key = (mat.run_id, mat.asset, mat.partition)
        # this step's record, and whichever record has the id already: one statement
        found = c.execute(
            "SELECT id, run_id, asset, partition FROM materializations"
            " WHERE (run_id = ? AND asset = ? AND partition = ?) OR id = ?",
            (*key, mat.id),
        ).fetchall()
        old = next((r for r in found if tuple(r[1:]) == key), None)
        if old is None:
            clash = found[0] if found else None  # not this step's: another record's id
            if clash is not None:
                raise StorageError(
                    f"{where}: materialization id {mat_id!r} is already used by run "
                    f"{clash[1]!r} asset {clash[2]!r}; ids must be unique"
                ) from None
            raise  # another constraint: the error says which
        mat_id = str(old[0])
        c.execute("DELETE FROM lineage WHERE downstream_id = ?", (mat_id,))
        c.execute("DELETE FROM materializations WHERE id = ?", (mat_id,))
        c.execute(insert, _mat_values(mat, mat_id, metadata_json))
    rows = [(mat_id, i, up) for i, up in enumerate(mat.upstream)]
    if later is not None:
        later.lineage += rows
    elif rows:
        c.executemany(_LINEAGE, rows)
    return mat_id


_AUDIT = "INSERT INTO audit (run_id, at, kind, asset, partition, detail) VALUES (?, ?, ?, ?, ?, ?)"
_LINEAGE = "INSERT INTO lineage VALUES (?, ?, ?)"


class Appends:
    """The rows a batch of finishes only appends (lineage, audit), written together once
    every finish of the batch is in (one statement each instead of one per finish), in
    the order they were added: the audit log reads exactly as if written one by one."""

    __slots__ = ("audit", "lineage")

    def __init__(self) -> None:
        self.audit: list[tuple[Any, ...]] = []
        self.lineage: list[tuple[str, int, str]] = []

    def write(self, c: sqlite3.Connection) -> None:
        if self.lineage:
            c.executemany(_LINEAGE, self.lineage)
        if self.audit:
            c.executemany(_AUDIT, self.audit)


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # json.dumps(..., separators) makes one per call


def _mat_values(
    mat: MaterializationRecord, mat_id: str, metadata_json: str | None
) -> tuple[Any, ...]:
    return (
        mat_id, mat.pipeline, mat.run_id, mat.asset, mat.partition, mat.state, mat.io_manager,
        mat.location, mat.attempt, to_micros(mat.started_at), to_micros(mat.finished_at), mat.error,
        metadata_json or "{}", int(mat.invalidated),
    )  # fmt: skip


def _past(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and expires_at <= now


def _hold(c: sqlite3.Connection, gate: Gate, claim: Continuation, now: datetime) -> bool:
    """Hold the gate's waiting step for its resolver (the next attempt); False if the step
    is not waiting."""
    key = (gate.run_id, gate.asset, gate.partition)
    return _hold_step(c, key, claim, now) is not None


def _hold_step(
    c: sqlite3.Connection,
    key: tuple[str, str, str],
    claim: Continuation,
    now: datetime,
) -> StepRecord | None:
    row = c.execute(
        "UPDATE steps SET attempt = attempt + 1, owner = ?, lease_expires_at = ?,"
        f" updated_at = ? WHERE {STEP_KEY} AND state = 'waiting' RETURNING {STEP_COLS}",
        (
            claim.owner,
            to_micros(now + timedelta(seconds=claim.lease_seconds)),
            to_micros(now),
            *key,
        ),
    ).fetchone()
    return None if row is None else step_row(row)
