"""``SQLiteUIQueries``: the UI's reads as SQL against a SQLite run store's file.

Reads go through a read-only connection of the UI's own to the store's file
(:attr:`SQLiteRunStore.path`), so they never queue behind the store's lock; WAL mode lets
them run while workers write. Each statement is bounded by :data:`~flowstone_ui.queries.
QUERY_SECONDS` (a progress handler interrupts it) and answered by the indexes the store's
schema keeps for the UI (schema version 3).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flowstone.defaults.sqlite_schema import (
    APPROVAL_COLS,
    GATE_COLS,
    MAT_COLS,
    RUN_COLS,
    STEP_COLS,
    approval_row,
    gate_row,
    mat_row,
    run_row,
    step_row,
)
from flowstone.defaults.sqlite_store import SQLiteRunStore
from flowstone.errors import StorageError
from flowstone.records import (
    Approval,
    AuditEntry,
    Gate,
    ItemResult,
    MaterializationRecord,
    RunRecord,
    StepRecord,
)
from flowstone_ui.queries import (
    ACTIVE_STEP_STATES,
    MAX_PAGE,
    QUERY_SECONDS,
    RunFilter,
    clamp,
    decode_cursor,
    encode_cursor,
    to_us,
)

__all__ = ["SQLiteUIQueries"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ACTIVE = ", ".join(f"'{s}'" for s in ACTIVE_STEP_STATES)
_CHUNK = 400  # bound parameters per IN list


class SQLiteUIQueries:
    """:class:`~flowstone_ui.queries.UIQueries` for a :class:`SQLiteRunStore` file."""

    __slots__ = ("_path", "_seconds", "_store")

    def __init__(self, store: SQLiteRunStore, *, seconds: float = QUERY_SECONDS) -> None:
        self._store = store
        self._path = Path(store.path).resolve()
        self._seconds = seconds

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self._store.ping()  # the store creates / upgrades the file and its indexes
        deadline = time.monotonic() + self._seconds
        try:
            conn = sqlite3.connect(
                f"{self._path.as_uri()}?mode=ro", uri=True, timeout=self._seconds
            )
        except sqlite3.Error as exc:
            raise StorageError(
                f"cannot read the SQLite run store {str(self._path)!r}: {exc}"
            ) from exc
        try:
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
            return conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(
                f"reading the SQLite run store {str(self._path)!r} for the UI failed "
                f"(time limit {self._seconds:g} s): {exc}"
            ) from exc
        finally:
            conn.close()

    # --- runs ---------------------------------------------------------------------------
    def runs(self, query: RunFilter) -> tuple[list[RunRecord], str | None]:
        limit = clamp(query.limit)
        after = query.run_key()
        found: list[RunRecord] = []
        for pipeline in query.pipelines:  # one index range each, merged below
            where: list[str] = ["pipeline = ?"]
            params: list[Any] = [pipeline]
            if query.status is not None:
                where.append("status = ?")
                params.append(query.status)
            if query.since is not None:
                where.append("created_at >= ?")
                params.append(_micros(query.since))
            if query.until is not None:
                where.append("created_at < ?")
                params.append(_micros(query.until))
            if after is not None:
                where.append("(created_at, run_id) < (?, ?)")
                params += [_micros(after[0]), after[1]]
            if query.asset is not None:
                where.append("EXISTS (SELECT 1 FROM steps s WHERE s.run_id = runs.run_id "
                             "AND s.asset = ?)")
                params.append(query.asset)
            rows = self._read(
                f"SELECT {RUN_COLS} FROM runs WHERE {' AND '.join(where)} "
                "ORDER BY created_at DESC, run_id DESC LIMIT ?",
                [*params, limit + 1],
            )
            found.extend(run_row(r) for r in rows)
        found.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        page = found[:limit]
        more = len(found) > limit
        cursor = encode_cursor(to_us(page[-1].created_at), page[-1].run_id) if more else None
        return page, cursor

    # --- assets and partitions --------------------------------------------------------------
    def latest_materializations(
        self, pipeline: str, assets: Sequence[str]
    ) -> dict[str, MaterializationRecord]:
        out: dict[str, MaterializationRecord] = {}
        for asset in assets:  # newest by insertion: one index probe each
            rows = self._read(
                f"SELECT {MAT_COLS} FROM materializations WHERE pipeline = ? AND asset = ? "
                "ORDER BY rowid DESC LIMIT 1",
                (pipeline, asset),
            )
            if rows:
                out[asset] = mat_row(rows[0], ())
        return out

    def active_steps(
        self, pipeline: str, *, asset: str | None = None,
        partitions: Sequence[str] | None = None, limit: int = MAX_PAGE,
    ) -> list[StepRecord]:
        cols = ", ".join(f"s.{c.strip()}" for c in STEP_COLS.split(","))
        sql = (
            f"SELECT {cols} FROM runs r JOIN steps s ON s.run_id = r.run_id "
            "WHERE r.pipeline = ? AND r.status IN ('running', 'waiting') "
            f"AND s.state IN ({_ACTIVE})"
        )
        params: list[Any] = [pipeline]
        if asset is not None:
            sql += " AND s.asset = ?"
            params.append(asset)
        if partitions is None:
            rows = self._read(sql + " LIMIT ?", [*params, clamp(limit)])
            return [step_row(r) for r in rows]
        out: list[StepRecord] = []
        for chunk in _chunks(partitions):
            rows = self._read(
                sql + f" AND s.partition IN ({', '.join('?' * len(chunk))}) LIMIT ?",
                [*params, *chunk, clamp(limit)],
            )
            out.extend(step_row(r) for r in rows)
        return out[: clamp(limit)]

    def partition_states(
        self, pipeline: str, asset: str, partitions: Sequence[str]
    ) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in _chunks(partitions):
            rows = self._read(
                "SELECT partition, state FROM materializations m WHERE pipeline = ? AND asset = ? "
                f"AND partition IN ({', '.join('?' * len(chunk))}) AND NOT invalidated "
                "AND rowid = (SELECT max(rowid) FROM materializations n WHERE n.pipeline = "
                "m.pipeline AND n.asset = m.asset AND n.partition = m.partition "
                "AND NOT n.invalidated)",
                [pipeline, asset, *chunk],
            )
            out.update((str(p), str(s)) for p, s in rows)
        return out

    def known_partitions(
        self, pipeline: str, asset: str, *, after: str | None, limit: int
    ) -> list[str]:
        rows = self._read(
            "SELECT DISTINCT partition FROM materializations WHERE pipeline = ? AND asset = ? "
            "AND partition > ? ORDER BY partition LIMIT ?",
            (pipeline, asset, after if after is not None else "", clamp(limit)),
        )
        return [str(r[0]) for r in rows if r[0] != "" or after is not None]

    def materializations(
        self, pipeline: str, asset: str, *, cursor: str | None, limit: int
    ) -> tuple[list[MaterializationRecord], str | None]:
        params: list[Any] = [pipeline, asset]
        where = "pipeline = ? AND asset = ?"
        if cursor is not None:
            (rowid,) = decode_cursor(cursor, 1, what="materializations cursor")
            where += " AND rowid < ?"
            params.append(int(rowid) if isinstance(rowid, int) else 0)
        n = clamp(limit)
        rows = self._read(
            f"SELECT rowid, {MAT_COLS} FROM materializations WHERE {where} "
            "ORDER BY rowid DESC LIMIT ?",
            [*params, n + 1],
        )
        page = rows[:n]
        ups = self._upstream([str(r[1]) for r in page])
        recs = [mat_row(r[1:], ups.get(str(r[1]), ())) for r in page]
        return recs, encode_cursor(int(page[-1][0])) if len(rows) > n else None

    def _upstream(self, ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        found: dict[str, list[str]] = {}
        for chunk in _chunks(ids):
            rows = self._read(
                "SELECT downstream_id, upstream_id FROM lineage WHERE downstream_id IN "
                f"({', '.join('?' * len(chunk))}) ORDER BY downstream_id, position",
                chunk,
            )
            for down, up in rows:
                found.setdefault(str(down), []).append(str(up))
        return {k: tuple(v) for k, v in found.items()}

    # --- waits --------------------------------------------------------------------------
    def pending_approvals(
        self, pipelines: Sequence[str], *, after: int | None, limit: int
    ) -> list[Approval]:
        found: list[Approval] = []
        for pipeline in pipelines:
            rows = self._read(
                f"SELECT {APPROVAL_COLS} FROM approvals WHERE pipeline = ? AND status = 'pending' "
                "AND id > ? ORDER BY id LIMIT ?",
                (pipeline, after if after is not None else -1, clamp(limit)),
            )
            found.extend(approval_row(r) for r in rows)
        found.sort(key=lambda a: a.id)
        return found[: clamp(limit)]

    def pending_gates(
        self, pipelines: Sequence[str], *, cursor: str | None, limit: int
    ) -> tuple[list[Gate], str | None]:
        at, token_hash = -1, ""
        if cursor is not None:
            at, token_hash = decode_cursor(cursor, 2, what="gates cursor")
        n = clamp(limit)
        found: list[Gate] = []
        for pipeline in pipelines:
            rows = self._read(
                f"SELECT {GATE_COLS} FROM gates WHERE pipeline = ? AND status = 'pending' "
                "AND json_extract(metadata, '$.kind') IS NOT 'deferred' "
                "AND (created_at, token_hash) > (?, ?) ORDER BY created_at, token_hash LIMIT ?",
                (pipeline, at, token_hash, n + 1),
            )
            found.extend(gate_row(r) for r in rows)
        found.sort(key=lambda g: (g.created_at, g.token_hash))
        page = found[:n]
        more = len(found) > n
        return page, (
            encode_cursor(to_us(page[-1].created_at), page[-1].token_hash) if more else None
        )

    # --- one run ----------------------------------------------------------------------------
    def audit(self, run_id: str, *, after: int | None, limit: int) -> list[AuditEntry]:
        rows = self._read(
            "SELECT id, run_id, at, kind, asset, partition, detail FROM audit "
            "WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?",
            (run_id, after if after is not None else -1, clamp(limit)),
        )
        return [
            AuditEntry(r[0], r[1], _at(r[2]), r[3], r[4], r[5], json.loads(r[6]))
            for r in rows
        ]

    def item_results(
        self, run_id: str, asset: str, partition: str, *, state: str | None,
        after: int | None, limit: int,
    ) -> list[ItemResult]:
        sql = (
            "SELECT idx, key, state, value_json, error FROM item_results WHERE run_id = ? "
            "AND asset = ? AND partition = ? AND idx > ?"
        )
        params: list[Any] = [run_id, asset, partition, after if after is not None else -1]
        if state is not None:
            sql += " AND state = ?"
            params.append(state)
        rows = self._read(sql + " ORDER BY idx LIMIT ?", [*params, clamp(limit)])
        return [ItemResult(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def item_counts(self, run_id: str, asset: str, partition: str) -> dict[str, int]:
        rows = self._read(
            "SELECT state, count(*) FROM item_results WHERE run_id = ? AND asset = ? "
            "AND partition = ? GROUP BY state",
            (run_id, asset, partition),
        )
        return {str(s): int(n) for s, n in rows}


def _chunks(values: Sequence[str]) -> list[list[str]]:
    items = list(values)
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


# --- the store's schema keeps datetimes as integer microseconds since the epoch ---------------
def _micros(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def _at(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)
