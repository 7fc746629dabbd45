"""``PostgresUIQueries``: the UI's reads as SQL on a Postgres run store's connections.

Statements run through :meth:`PostgresRunStore.run_on_connection` (the store's own pool:
the UI opens no connections of its own), each in a read-only transaction with
``SET LOCAL statement_timeout`` (:data:`~flowstone_ui.queries.QUERY_SECONDS`). Table names
are the store's validated, quoted schema; every value is a bound parameter. The indexes
they use are io-postgres migration ``0006`` (runs by pipeline/status and time, the newest
record of an asset, pending waits).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from flowstone.records import (
    Approval,
    AuditEntry,
    Gate,
    ItemResult,
    MaterializationRecord,
    RunRecord,
    StepRecord,
)
from flowstone_io_postgres.identifiers import quote_ident
from flowstone_io_postgres.store import PostgresRunStore
from flowstone_ui.queries import (
    ACTIVE_STEP_STATES,
    MAX_PAGE,
    QUERY_SECONDS,
    RANGE_READ_MIN,
    RunFilter,
    clamp,
    decode_cursor,
    encode_cursor,
    to_us,
)

__all__ = ["PostgresUIQueries"]

_RUN = "run_id, pipeline, targets, partition, status, created_at, updated_at, error, tags"
_STEP = (
    "run_id, asset, partition, state, remaining_deps, attempt, owner, lease_expires_at, "
    "not_before, materialization_id, error, updated_at"
)
_MAT = (
    "id, pipeline, run_id, asset, partition, state, io_manager, location, attempt, "
    "started_at, finished_at, error, upstream, metadata, invalidated"
)
_APPROVAL = (
    "id, pipeline, run_id, asset, partition, message, status, created_at, expires_at, "
    "io_manager, location, decided_by, decided_at, reason, metadata"
)
_GATE = "token_hash, pipeline, run_id, asset, partition, status, created_at, expires_at"


class PostgresUIQueries:
    """:class:`~flowstone_ui.queries.UIQueries` for a :class:`PostgresRunStore`."""

    __slots__ = ("_s", "_seconds", "_store")

    def __init__(self, store: PostgresRunStore, *, seconds: float = QUERY_SECONDS) -> None:
        self._store = store
        self._s = quote_ident(store.schema, what="schema")
        self._seconds = seconds

    def _fetch(self, sql: str, *args: Any) -> list[Any]:
        text = sql.replace("{s}", self._s)

        async def work(conn: Any) -> list[Any]:
            async with conn.transaction(readonly=True):
                await conn.execute(f"SET LOCAL statement_timeout = {int(self._seconds * 1000)}")
                return list(await conn.fetch(text, *args))

        run: Callable[..., Awaitable[Any]] = work
        rows: list[Any] = self._store.run_on_connection(run, action="reading for the UI")
        return rows

    # --- runs ---------------------------------------------------------------------------
    def runs(self, query: RunFilter) -> tuple[list[RunRecord], str | None]:
        limit = clamp(query.limit)
        after = query.run_key()
        found: list[RunRecord] = []
        for pipeline in query.pipelines:  # one index range each, merged below
            where, args = ["pipeline = $1"], [pipeline]
            for clause, value in (
                ("status = ${}", query.status), ("created_at >= ${}", query.since),
                ("created_at < ${}", query.until),
            ):  # fmt: skip
                if value is not None:
                    args.append(value)  # type: ignore[arg-type]
                    where.append(clause.format(len(args)))
            if after is not None:
                args += [after[0], after[1]]  # type: ignore[list-item]
                where.append(f"(created_at, run_id) < (${len(args) - 1}, ${len(args)})")
            if query.asset is not None:
                args.append(query.asset)
                where.append("EXISTS (SELECT 1 FROM {s}.steps st WHERE st.run_id = r.run_id "
                             f"AND st.asset = ${len(args)})")
            rows = self._fetch(
                f"SELECT {_RUN} FROM {{s}}.runs r WHERE {' AND '.join(where)} "
                f"ORDER BY created_at DESC, run_id DESC LIMIT {limit + 1}",
                *args,
            )
            found.extend(_run(r) for r in rows)
        found.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        page = found[:limit]
        more = len(found) > limit
        cursor = encode_cursor(to_us(page[-1].created_at), page[-1].run_id) if more else None
        return page, cursor

    # --- assets and partitions --------------------------------------------------------------
    def latest_materializations(
        self, pipeline: str, assets: Sequence[str]
    ) -> dict[str, MaterializationRecord]:
        rows = self._fetch(
            f"SELECT m.* FROM unnest($2::text[]) AS a(name), LATERAL (SELECT {_MAT} "
            "FROM {s}.materializations WHERE pipeline = $1 AND asset = a.name "
            "ORDER BY seq DESC LIMIT 1) m",
            pipeline, list(assets),
        )  # fmt: skip
        return {str(r["asset"]): _mat(r) for r in rows}

    def active_steps(
        self, pipeline: str, *, asset: str | None = None,
        partitions: Sequence[str] | None = None, limit: int = MAX_PAGE,
    ) -> list[StepRecord]:
        cols = ", ".join(f"st.{c.strip()}" for c in _STEP.split(","))
        sql = (
            f"SELECT {cols} FROM {{s}}.runs r JOIN {{s}}.steps st ON st.run_id = r.run_id "
            "WHERE r.pipeline = $1 AND r.status IN ('running', 'waiting') "
            "AND st.state = ANY($2::text[])"
        )
        args: list[Any] = [pipeline, list(ACTIVE_STEP_STATES)]
        if asset is not None:
            args.append(asset)
            sql += f" AND st.asset = ${len(args)}"
        if partitions is not None:
            args.append(list(partitions))
            sql += f" AND st.partition = ANY(${len(args)}::text[])"
        rows = self._fetch(sql + f" LIMIT {clamp(limit)}", *args)
        return [StepRecord(*(r[i] for i in range(12))) for r in rows]

    def partition_states(
        self, pipeline: str, asset: str, partitions: Sequence[str]
    ) -> dict[str, str]:
        if len(partitions) > RANGE_READ_MIN:
            # a page of a partition set is usually a contiguous run of keys: one index
            # range between its least and greatest key (as the database collates them)
            # instead of a probe per key, about 5x faster at 5,000 keys; bounded: with
            # more partitions in that range than twice the page, probe per key instead
            cap = 2 * len(partitions)
            rows = self._fetch(
                "WITH b AS (SELECT min(k) AS lo, max(k) AS hi FROM unnest($3::text[]) AS k) "
                "SELECT DISTINCT ON (partition) partition, state FROM {s}.materializations, b "
                "WHERE pipeline = $1 AND asset = $2 AND partition BETWEEN b.lo AND b.hi "
                f"AND NOT invalidated ORDER BY partition, seq DESC LIMIT {cap + 1}",
                pipeline, asset, list(partitions),
            )  # fmt: skip
            if len(rows) <= cap:
                wanted = set(partitions)
                return {str(r["partition"]): str(r["state"]) for r in rows
                        if r["partition"] in wanted}  # fmt: skip
        rows = self._fetch(
            "SELECT DISTINCT ON (partition) partition, state FROM {s}.materializations "
            "WHERE pipeline = $1 AND asset = $2 AND partition = ANY($3::text[]) "
            "AND NOT invalidated ORDER BY partition, seq DESC",
            pipeline, asset, list(partitions),
        )  # fmt: skip
        return {str(r["partition"]): str(r["state"]) for r in rows}

    def known_partitions(
        self, pipeline: str, asset: str, *, after: str | None, limit: int
    ) -> list[str]:
        # a loose index scan: one probe per distinct partition, never the whole asset
        rows = self._fetch(
            "WITH RECURSIVE p(k) AS ("
            " (SELECT partition FROM {s}.materializations WHERE pipeline = $1 AND asset = $2"
            "  AND partition > $3 ORDER BY partition LIMIT 1)"
            " UNION ALL SELECT (SELECT partition FROM {s}.materializations WHERE pipeline = $1"
            "  AND asset = $2 AND partition > p.k ORDER BY partition LIMIT 1) FROM p"
            "  WHERE p.k IS NOT NULL)"
            f" SELECT k FROM p WHERE k IS NOT NULL LIMIT {clamp(limit)}",
            pipeline, asset, after if after is not None else "",
        )  # fmt: skip
        return [str(r["k"]) for r in rows]

    def materializations(
        self, pipeline: str, asset: str, *, cursor: str | None, limit: int
    ) -> tuple[list[MaterializationRecord], str | None]:
        seq = None
        if cursor is not None:
            (seq,) = decode_cursor(cursor, 1, what="materializations cursor")
            seq = seq if isinstance(seq, int) else 0
        n = clamp(limit)
        rows = self._fetch(
            f"SELECT seq, {_MAT} FROM {{s}}.materializations WHERE pipeline = $1 AND asset = $2 "
            f"AND ($3::bigint IS NULL OR seq < $3) ORDER BY seq DESC LIMIT {n + 1}",
            pipeline, asset, seq,
        )  # fmt: skip
        page = rows[:n]
        return [_mat(r) for r in page], (
            encode_cursor(int(page[-1]["seq"])) if len(rows) > n else None
        )

    # --- waits --------------------------------------------------------------------------
    def pending_approvals(
        self, pipelines: Sequence[str], *, after: int | None, limit: int
    ) -> list[Approval]:
        found: list[Approval] = []
        for pipeline in pipelines:
            rows = self._fetch(
                f"SELECT {_APPROVAL} FROM {{s}}.approvals WHERE pipeline = $1 AND "
                f"status = 'pending' AND id > $2 ORDER BY id LIMIT {clamp(limit)}",
                pipeline, after if after is not None else -1,
            )  # fmt: skip
            for r in rows:
                d = dict(r.items())
                d["metadata"] = _json(d["metadata"])
                found.append(Approval(**d))
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
            rows = self._fetch(
                f"SELECT {_GATE} FROM {{s}}.gates WHERE pipeline = $1 AND status = 'pending' "
                "AND coalesce(metadata->>'kind', '') <> 'deferred' "
                "AND (created_at, token_hash) > (to_timestamp($2::bigint / 1e6), $3) "
                f"ORDER BY created_at, token_hash LIMIT {n + 1}",
                pipeline, int(at), str(token_hash),
            )  # fmt: skip
            found.extend(Gate(**dict(r.items())) for r in rows)
        found.sort(key=lambda g: (g.created_at, g.token_hash))
        page = found[:n]
        more = len(found) > n
        return page, (
            encode_cursor(to_us(page[-1].created_at), page[-1].token_hash) if more else None
        )

    # --- one run ----------------------------------------------------------------------------
    def audit(self, run_id: str, *, after: int | None, limit: int) -> list[AuditEntry]:
        rows = self._fetch(
            "SELECT id, run_id, at, kind, asset, partition, detail FROM {s}.audit "
            f"WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT {clamp(limit)}",
            run_id, after if after is not None else -1,
        )  # fmt: skip
        return [
            AuditEntry(r["id"], r["run_id"], r["at"], r["kind"], r["asset"], r["partition"],
                       _json(r["detail"]))
            for r in rows
        ]  # fmt: skip

    def item_results(
        self, run_id: str, asset: str, partition: str, *, state: str | None,
        after: int | None, limit: int,
    ) -> list[ItemResult]:
        # a Celery scatter (flowstone-scatter) keeps its items in its own table of this
        # schema, beside its barrier; the inline scatter saves them as item results
        scattered = self._fetch(
            "SELECT to_regclass($1) IS NOT NULL AS ok", f"{self._s}.scatter_barriers"
        )
        if scattered and scattered[0]["ok"]:
            rows = self._fetch(
                "SELECT i.idx, i.key, i.state, i.result, i.error FROM {s}.scatter_barriers b "
                "JOIN {s}.scatter_items i ON i.barrier_id = b.id WHERE b.run_id = $1 "
                "AND b.asset = $2 AND b.partition = $3 AND i.idx > $4 "
                f"AND ($5::text IS NULL OR i.state = $5) ORDER BY i.idx LIMIT {clamp(limit)}",
                run_id, asset, partition, after if after is not None else -1, state,
            )  # fmt: skip
            if rows:
                return [ItemResult(int(r[0]), r[1], r[2], r[3], r[4]) for r in rows]
        rows = self._fetch(
            "SELECT idx, key, state, value_json, error FROM {s}.item_results WHERE run_id = $1 "
            "AND asset = $2 AND partition = $3 AND idx > $4 AND ($5::text IS NULL OR state = $5) "
            f"ORDER BY idx LIMIT {clamp(limit)}",
            run_id, asset, partition, after if after is not None else -1, state,
        )  # fmt: skip
        return [ItemResult(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def item_counts(self, run_id: str, asset: str, partition: str) -> dict[str, int]:
        rows = self._fetch(
            "SELECT state, count(*) AS n FROM {s}.item_results WHERE run_id = $1 AND asset = $2 "
            "AND partition = $3 GROUP BY state",
            run_id, asset, partition,
        )  # fmt: skip
        return {str(r["state"]): int(r["n"]) for r in rows}


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _run(r: Any) -> RunRecord:
    return RunRecord(
        r["run_id"], r["pipeline"], tuple(r["targets"]), r["partition"], r["status"],
        r["created_at"], r["updated_at"], r["error"], _json(r["tags"]),
    )  # fmt: skip


def _mat(r: Any) -> MaterializationRecord:
    return MaterializationRecord(
        r["id"], r["pipeline"], r["run_id"], r["asset"], r["partition"], r["state"],
        r["io_manager"], r["location"], r["attempt"], r["started_at"], r["finished_at"],
        r["error"], tuple(r["upstream"]), _json(r["metadata"]), r["invalidated"],
    )  # fmt: skip
