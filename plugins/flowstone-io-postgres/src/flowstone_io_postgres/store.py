"""PostgresRunStore: the durable :class:`~flowstone.protocols.RunStore` on PostgreSQL.

Built on asyncpg (prepared statements, a small connection set), run on a private event loop
that the calling threads run themselves (:mod:`flowstone_io_postgres._runtime`), so the
synchronous protocol can be called from any thread and from forked Celery workers. Every
hot-path call is one statement in autocommit mode: one round trip. ``finish_step`` is a
server-side function (migration 0002) doing its whole transaction in that one statement; the
cold multi-statement calls (``cancel_run``, ``reopen_run``) run in one READ COMMITTED
transaction. Both are retried if PostgreSQL chooses them as a deadlock victim. See
:mod:`flowstone_io_postgres._scheduling` for the concurrency argument.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import asyncpg
from sqlalchemy.engine import URL

from flowstone import store_rules as rules
from flowstone.errors import StorageError, UsageError
from flowstone.protocols import ClaimedReads, Finish
from flowstone.records import (
    Approval,
    AuditEntry,
    Continuation,
    Fence,
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
from flowstone_io_postgres import _records as records
from flowstone_io_postgres import _scheduling as scheduling
from flowstone_io_postgres import migrate
from flowstone_io_postgres._rows import (
    APPROVAL_COLS,
    GATE_COLS,
    MAT_COLS,
    MAT_COLS_AS_M,
    RUN_COLS,
    STEP_COL_COUNT,
    STEP_COLS,
    to_approval,
    to_materialization,
    to_prefixed_materialization,
    to_run,
    to_step,
)
from flowstone_io_postgres._runtime import AsyncRuntime, Connections, PoolOptions
from flowstone_io_postgres._sql import (
    RETRYABLE,
    TX_ATTEMPTS,
    Db,
    Sql,
    call,
    run_tx,
    sqlstate,
)
from flowstone_io_postgres._values_table import PREFETCH_PREFIX
from flowstone_io_postgres.identifiers import parse_qualified_name, quote_ident, validate_ident
from flowstone_io_postgres.io_manager import PostgresIOManager
from flowstone_io_postgres.urls import database_identity, resolve_url, safe_url

__all__ = ["PostgresRunStore", "from_url"]

T = TypeVar("T")
Work = Callable[[Db], Awaitable[T]]


def _now() -> datetime:
    return datetime.now(UTC)


_STEP_COLS_S = ", ".join(f"s.{c.strip()}" for c in STEP_COLS.split(","))


# The runs of an array of ids (``wait`` reads 16 at a time): one primary-key probe per id,
# whatever plan the prepared statement caches (a generic plan made while the table was
# young scans it, ~1 ms a read at 10,000 runs).
_GET_RUNS = (
    "SELECT r.* FROM unnest(CAST(:r AS text[])) AS k(id), LATERAL "
    "(SELECT " + RUN_COLS + " FROM {s}.runs WHERE run_id = k.id OFFSET 0) AS r"
)


class PostgresRunStore:
    """The FlowStone run store on PostgreSQL.

    Args:
        url: ``postgresql://``, ``postgres://`` or ``postgresql+asyncpg://`` URL; None reads
            ``FLOWSTONE_DATABASE_URL`` now (at construction).
        schema: the schema holding FlowStone's tables (validated, then quoted).
        auto_migrate: run ``flowstone db upgrade`` on first use (serialised across processes
            by an advisory lock). Without it, a missing or old schema makes the first call
            raise :class:`~flowstone.errors.StorageError` saying what to run.
        pool_size: connections per process (opened as needed, kept while the store lives).
        max_overflow: extra connections allowed under load: at most
            ``pool_size + max_overflow`` are open at once.
        statement_timeout: seconds before the server cancels one statement.

    Nothing connects until the first call. Example::

        store = PostgresRunStore("postgresql://postgres@127.0.0.1/flowstone", auto_migrate=True)
        store.ping()
    """

    name = "postgres"

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        schema: str = "flowstone",
        auto_migrate: bool = False,
        pool_size: int = 5,
        max_overflow: int = 5,
        statement_timeout: float = 60.0,
    ) -> None:
        self._url = resolve_url(url)
        self.schema = validate_ident(schema, what="schema")
        self._where = safe_url(self._url)
        self._sql = Sql(quote_ident(self.schema, what="schema"))
        self._auto_migrate = auto_migrate
        self._runtime = AsyncRuntime(
            self._url,
            PoolOptions(
                max_size=max(1, pool_size + max_overflow),
                statement_timeout_ms=int(statement_timeout * 1000),
                application_name="flowstone-run-store",
            ),
            name="flowstone-postgres-store",
        )
        self._identity = database_identity(self._url)
        self._checked = False
        self._check_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresRunStore({self._where!r}, schema={self.schema!r})"

    # --- plumbing ----------------------------------------------------------------------
    def _ensure_schema(self) -> None:
        if self._checked:
            return
        with self._check_lock:
            if self._checked:
                return

            async def check(db: Connections) -> None:
                if self._auto_migrate:
                    await migrate.upgrade(self._url, self.schema)
                revision = await migrate.current_revision(db, self.schema)
                migrate.check_schema(revision, schema=self.schema, where=self._where)

            self._bridge(check, action="checking the FlowStone schema")
            self._checked = True

    def _bridge(self, work: Callable[[Connections], Awaitable[T]], *, action: str) -> T:
        return call(self._runtime, work, action=action, where=self._where)

    def _auto(self, action: str, work: Callable[[Connections], Awaitable[T]]) -> T:
        """Statements in autocommit mode (one round trip each), retried if a deadlock victim."""
        self._ensure_schema()

        async def go(db: Connections) -> T:
            attempt = 0
            while True:
                attempt += 1
                try:
                    return await work(db)
                except asyncpg.PostgresError as exc:
                    if sqlstate(exc) in RETRYABLE and attempt < TX_ATTEMPTS:
                        continue
                    raise

        return self._bridge(go, action=action)

    def _tx(self, action: str, work: Work[T]) -> T:
        """Several statements in one transaction (retried on deadlock)."""
        self._ensure_schema()

        async def go(db: Connections) -> T:
            return await run_tx(db, work)

        return self._bridge(go, action=action)

    def _rows(self, action: str, sql: str, params: Mapping[str, Any]) -> list[Any]:
        stmt = self._sql(sql)
        return self._auto(action, lambda db: stmt.fetch(db, params))

    @staticmethod
    def _key(run_id: str, asset: str, partition: str) -> dict[str, str]:
        return {"r": run_id, "a": asset, "p": partition}

    # --- lifecycle ---------------------------------------------------------------------
    def ping(self) -> None:
        """Raise ``StorageError`` if the database is unreachable or the schema not current."""
        self._rows("ping", "SELECT 1", {})

    def clock(self) -> datetime:
        """The database's current time (``now()``, aware UTC): the one clock every worker
        sharing this store agrees on (the memory and SQLite stores' ``clock`` is the
        process's). Engine code that must compare with a stored time reads this."""
        rows = self._rows("reading the database clock", "SELECT now()", {})
        return rules.require_utc(rows[0][0], "now()")

    # --- for plugins with tables in this schema (flowstone-scatter) ----------------------
    @property
    def runtime(self) -> AsyncRuntime:
        """The asyncpg runtime (event loop and connections) this store runs on.

        Plugins that keep tables in the store's database run their statements on it rather
        than opening connections of their own, so a process holds one connection budget
        (``pool_size + max_overflow``) for the store and its plugins. Prefer
        :meth:`run_on_connection`, which also checks the schema and translates errors.
        """
        return self._runtime

    def run_on_connection(
        self, work: Callable[[asyncpg.Connection], Awaitable[T]], *, action: str
    ) -> T:
        """Run ``work(connection)`` on one of the store's connections and return its result.

        For plugins with tables in :attr:`schema` (their names quoted with
        :func:`~flowstone_io_postgres.identifiers.quote_ident`). ``work`` may open a
        transaction, COPY or use a cursor on the connection.

        Raises:
            StorageError: the database failed; the message names ``action``.
        """
        self._ensure_schema()
        return self._bridge(lambda db: _on_connection(db, work), action=action)

    def require_migrations(self, migrations: migrate.MigrationSet) -> None:
        """Make sure a plugin's tables are at their head in this store's schema.

        With ``auto_migrate`` they are upgraded (with the rest of the schema) when they are
        not; otherwise a StorageError says to run ``flowstone db upgrade``.
        """
        self._ensure_schema()

        async def check(db: Connections) -> None:
            revision = await migrate.current_revision(db, self.schema, migrations)
            if revision != migrations.head and self._auto_migrate:
                await migrate.upgrade(self._url, self.schema)
                revision = await migrate.current_revision(db, self.schema, migrations)
            migrate.check_migrations(revision, migrations, schema=self.schema, where=self._where)

        self._bridge(check, action=f"checking the tables of {migrations.name}")

    def close(self) -> None:
        """Close the store's connections and its event loop (a later call reopens them)."""
        self._runtime.close()

    def default_io_manager(self) -> PostgresIOManager:
        """Values in the same database, in this schema's ``asset_values`` table (created by
        the migrations), so a staged value commits with its record. It runs on this
        store's connections: one connection budget for the run state and the values."""
        url = self._url.render_as_string(hide_password=False)
        return PostgresIOManager(url, table=f"{self.schema}.asset_values", runtime=self._runtime)

    # --- runs ----------------------------------------------------------------------------
    def create_run(self, run: RunRecord, steps: Sequence[StepSpec]) -> tuple[StepRecord, ...]:
        return self._auto(
            f"creating run {run.run_id!r}",
            lambda c: scheduling.create_run(c, self._sql, run, steps),
        )

    def create_runs(
        self, runs: Sequence[tuple[RunRecord, Sequence[StepSpec]]]
    ) -> list[tuple[StepRecord, ...]]:
        """Each ``create_run`` in one transaction (one commit for all of them; all or
        none), see :class:`~flowstone.protocols.BulkRunCreation`."""

        async def work(conn: asyncpg.Connection) -> list[tuple[StepRecord, ...]]:
            return [await scheduling.create_run(conn, self._sql, run, steps) for run, steps in runs]

        return self._tx(f"creating {len(runs)} runs", work)

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._rows(
            "reading a run", "SELECT " + RUN_COLS + " FROM {s}.runs WHERE run_id = :r",
            {"r": run_id},
        )  # fmt: skip
        return to_run(rows[0]) if rows else None

    def get_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """The runs with these ids (unknown ids left out), in one read."""
        ids = list(dict.fromkeys(run_ids))
        if not ids:
            return []
        rows = self._rows("reading runs", _GET_RUNS, {"r": ids})
        return [to_run(r) for r in rows]

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
        params: dict[str, Any] = {"pl": pipeline, "st": status, "n": limit, "off": offset}
        # a row comparison in its own statement (no "IS NULL OR"), in the runs_ui_* order
        keyset = ""
        if start is not None:
            keyset = "AND (created_at, run_id) < (:at, :rid) "
            params |= {"at": start[0], "rid": start[1]}
        rows = self._rows(
            "listing runs",
            "SELECT " + RUN_COLS + " FROM {s}.runs WHERE (CAST(:pl AS text) IS NULL OR "
            "pipeline = :pl) AND (CAST(:st AS text) IS NULL OR status = :st) " + keyset
            + "ORDER BY created_at DESC, run_id DESC LIMIT :n OFFSET :off",
            params,
        )  # fmt: skip
        return [to_run(r) for r in rows]

    def set_run_status(self, run_id: str, status: RunStatus, *, error: str | None = None) -> None:
        rows = self._rows(
            "setting a run's status",
            "UPDATE {s}.runs SET status = :st, error = :err, updated_at = now() "
            "WHERE run_id = :r RETURNING 1",
            {"r": run_id, "st": status, "err": error},
        )
        if not rows:
            raise rules.run_not_found(run_id, "Postgres run store")

    def cancel_run(self, run_id: str) -> bool:
        return self._tx(
            f"cancelling run {run_id!r}",
            lambda c: scheduling.cancel_run(c, self._sql, run_id),
        )

    def reopen_run(self, run_id: str) -> tuple[StepRecord, ...]:
        return self._tx(
            f"reopening run {run_id!r}",
            lambda c: scheduling.reopen_run(c, self._sql, run_id),
        )

    # --- steps ---------------------------------------------------------------------------
    def get_step(self, run_id: str, asset: str, partition: str) -> StepRecord | None:
        rows = self._rows(
            "reading a step",
            "SELECT " + STEP_COLS + " FROM {s}.steps WHERE run_id = :r AND asset = :a "
            "AND partition = :p",
            self._key(run_id, asset, partition),
        )
        return to_step(rows[0]) if rows else None

    def get_step_results(
        self, run_id: str, keys: Sequence[tuple[str, str]]
    ) -> list[tuple[StepRecord, MaterializationRecord | None]]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return []
        rows = self._rows(
            "reading steps and their materializations",
            # the primary key (run_id, asset, partition) drives it, whatever plan the
            # prepared statement caches; ANY x ANY may over-match pairs, filtered below
            "SELECT " + _STEP_COLS_S + ", " + MAT_COLS_AS_M + " FROM {s}.steps s "
            "LEFT JOIN {s}.materializations m ON m.id = s.materialization_id "
            "WHERE s.run_id = :r AND s.asset = ANY(CAST(:as AS text[])) "
            "AND s.partition = ANY(CAST(:ps AS text[]))",
            {"r": run_id, "as": list({k[0] for k in unique}), "ps": list({k[1] for k in unique})},
        )
        wanted = set(unique)
        return [
            (to_step(r, limit=STEP_COL_COUNT), to_prefixed_materialization(r))
            for r in rows
            if (r["asset"], r["partition"]) in wanted
        ]

    def list_steps(self, run_id: str) -> list[StepRecord]:
        rows = self._rows(
            "listing steps",
            "SELECT " + STEP_COLS + " FROM {s}.steps WHERE run_id = :r ORDER BY ordinal",
            {"r": run_id},
        )
        return [to_step(r) for r in rows]

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
        key = self._key(run_id, asset, partition)
        return self._auto(
            "claiming a step",
            lambda c: scheduling.claim_step(c, self._sql, key, owner, lease_seconds, pipeline),
        )

    def claim_steps(
        self,
        keys: Sequence[tuple[str, str, str]],
        *,
        owner: str,
        lease_seconds: float,
        pipeline: str | None = None,
    ) -> list[StepRecord | None]:
        """Several ``claim_step`` in one round trip (see :class:`~flowstone.protocols.
        BulkClaim`)."""
        keyed = [self._key(*key) for key in keys]
        return self._auto(
            "claiming steps",
            lambda c: scheduling.claim_steps(c, self._sql, keyed, owner, lease_seconds, pipeline),
        )

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
        key = self._key(run_id, asset, partition)
        return self._auto(
            "renewing a lease",
            lambda c: scheduling.renew_lease(c, self._sql, key, owner, lease_seconds, attempt),
        )

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
        key = self._key(run_id, asset, partition)
        return self._auto(
            "scheduling a retry",
            lambda c: scheduling.retry_step(c, self._sql, key, delay_seconds, error, fence),
        )

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
        """See the protocol. Staged values (:meth:`accepts_staging`) are written by the same
        statement, so value and record commit together; so is the claim of ``then``."""
        return self._finish(run_id, asset, partition, outcome, then, {}, fence)[0]

    def finish_step_reading(
        self,
        run_id: str,
        asset: str,
        partition: str,
        outcome: StepOutcome,
        *,
        then: Continuation,
        sources: Mapping[str, str],
        fence: Fence | None = None,
    ) -> tuple[StepTransition, ClaimedReads | None]:
        """``finish_step`` that also reads, in the same statement, the claimed
        continuation's dependency records and its input values stored in the value tables
        of ``sources`` (see :class:`~flowstone.protocols.ContinuationReads`)."""
        return self._finish(run_id, asset, partition, outcome, then, sources, fence)

    def _finish(
        self,
        run_id: str,
        asset: str,
        partition: str,
        outcome: StepOutcome,
        then: Continuation | None,
        sources: Mapping[str, str],
        fence: Fence | None = None,
    ) -> tuple[StepTransition, ClaimedReads | None]:
        prefetch = self._prefetch(sources) if then is not None else {}
        item = self._finish_item(Finish(run_id, asset, partition, outcome, then, fence), _now(),
                                 prefetch)  # fmt: skip
        return self._auto(
            f"finishing step {asset!r} of run {run_id!r}",
            lambda c: scheduling.finish_step(
                c, self._sql, item.key, item.params, item.staged, item.prefetch
            ),
        )

    def _finish_item(
        self, f: Finish, now: datetime, prefetch: Mapping[str, Sequence[str]]
    ) -> scheduling.BatchItem:
        """The arguments of one ``finish_step`` statement for ``f`` (its staged values
        checked: only this store's database can write them)."""
        for staged in f.outcome.staged:
            if not self.accepts_staging(staged.target):
                raise StorageError(
                    f"a value staged for {staged.target} cannot be written by the run store "
                    f"at {self._where}; store it with its IO manager instead"
                )
        key = self._key(f.run_id, f.asset, f.partition)
        return scheduling.BatchItem(
            key, scheduling.finish_params(key, f.outcome, now, f.then, f.fence), f.outcome.staged,
            prefetch if f.then is not None else {},
        )  # fmt: skip

    def finish_steps(
        self, finishes: Sequence[Finish], *, sources: Mapping[str, str]
    ) -> list[tuple[StepTransition, ClaimedReads | None] | Exception]:
        """Several ``finish_step`` (``finish_step_reading`` for those with ``then``) in
        one transaction, each run's status settled once before the commit (see
        :class:`~flowstone.protocols.BatchFinish`); one round trip when the finishes share
        a statement shape (a pack's); retried whole if PostgreSQL picks it as a deadlock
        victim."""
        now, prefetch = _now(), self._prefetch(sources)
        items = [self._finish_item(f, now, prefetch) for f in finishes]
        return self._auto(
            f"finishing {len(items)} steps",
            lambda db: scheduling.finish_steps(db, self._sql, items),
        )

    def _prefetch(self, sources: Mapping[str, str]) -> dict[str, list[str]]:
        """``sources`` as {quoted value table: IO manager names}. Only sources of
        :class:`~flowstone_io_postgres.PostgresIOManager` (``PREFETCH_PREFIX`` and its
        ``schema.table``) are read; the engine loads any other value as usual."""
        tables: dict[str, list[str]] = {}
        for manager, source in sources.items():
            table = _value_table(source)
            if table is not None:
                tables.setdefault(table, []).append(manager)
        return tables

    def accepts_staging(self, target: str) -> bool:
        """True for values staged for this store's own database (see
        :class:`~flowstone.records.StagedValue`)."""
        return target == self._identity

    def resend_steps(
        self,
        *,
        ready_for_seconds: float,
        pipeline: str | None = None,
        limit: int = rules.RESEND_BATCH,
    ) -> list[StepRecord]:
        return self._auto(
            "finding steps to send again",
            lambda c: scheduling.resend_steps(c, self._sql, ready_for_seconds, pipeline, limit),
        )

    def stale_steps(self, now: datetime, *, ready_for_seconds: float) -> list[StepRecord]:
        return self._auto(
            "finding stale steps",
            lambda c: scheduling.stale_steps(
                c, self._sql, rules.require_utc(now, "now"), ready_for_seconds
            ),
        )

    # --- materializations & lineage ----------------------------------------------------------
    def get_materialization(self, materialization_id: str) -> MaterializationRecord | None:
        rows = self._rows(
            "reading a materialization",
            "SELECT " + MAT_COLS + " FROM {s}.materializations WHERE id = :id",
            {"id": materialization_id},
        )
        return to_materialization(rows[0]) if rows else None

    def find_materialization(
        self, pipeline: str, asset: str, partition: str, *, run_id: str | None = None
    ) -> MaterializationRecord | None:
        params = {"pl": pipeline, "a": asset, "p": partition}
        if run_id is not None:
            sql = (
                "SELECT " + MAT_COLS + " FROM {s}.materializations WHERE run_id = :r "
                "AND asset = :a AND partition = :p AND pipeline = :pl"
            )
            params["r"] = run_id
        else:
            sql = (
                "SELECT " + MAT_COLS + " FROM {s}.materializations WHERE pipeline = :pl "
                "AND asset = :a AND partition = :p AND state = 'succeeded' "
                "AND NOT invalidated ORDER BY seq DESC LIMIT 1"
            )
        rows = self._rows("finding a materialization", sql, params)
        return to_materialization(rows[0]) if rows else None

    def list_materializations(
        self,
        pipeline: str,
        *,
        asset: str | None = None,
        partition: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[MaterializationRecord]:
        return self._auto(
            "listing materializations",
            lambda c: records.list_materializations(
                c, self._sql, pipeline, asset, partition, run_id, limit
            ),
        )

    # freshness reads (the optional FreshnessReads capability of flowstone-observability,
    # read at most every scrape interval): one statement each
    def last_materialized(self, pipeline: str) -> dict[str, datetime]:
        """``{asset: finished_at}`` of each asset's newest valid succeeded materialization."""
        rows = self._rows(
            "reading the newest materializations",
            "SELECT asset, max(finished_at) AS at FROM {s}.materializations "
            "WHERE pipeline = :pl AND state = 'succeeded' AND NOT invalidated GROUP BY asset",
            {"pl": pipeline},
        )
        return {str(r["asset"]): r["at"] for r in rows if r["at"] is not None}

    def materialized_partitions(self, pipeline: str, asset: str) -> list[str]:
        """The distinct partitions of ``asset`` with a valid succeeded materialization."""
        rows = self._rows(
            "reading materialized partitions",
            "SELECT DISTINCT partition FROM {s}.materializations WHERE pipeline = :pl "
            "AND asset = :a AND state = 'succeeded' AND NOT invalidated",
            {"pl": pipeline, "a": asset},
        )
        return [str(r["partition"]) for r in rows]

    def invalidate(self, pipeline: str, asset: str, partition: str | None = None) -> int:
        rows = self._rows(
            "invalidating materializations",
            "UPDATE {s}.materializations SET invalidated = true WHERE pipeline = :pl "
            "AND asset = :a AND (CAST(:p AS text) IS NULL OR partition = :p) "
            "AND state = 'succeeded' AND NOT invalidated RETURNING 1",
            {"pl": pipeline, "a": asset, "p": partition},
        )
        return len(rows)

    def referenced_locations(self, io_manager: str, locations: Sequence[str]) -> set[str]:
        rows = self._rows(
            "finding referenced values",
            "SELECT location FROM {s}.materializations WHERE io_manager = :io "
            "AND location = ANY(CAST(:locs AS text[])) UNION SELECT location FROM "
            "{s}.approvals WHERE io_manager = :io AND location = ANY(CAST(:locs AS text[]))",
            {"io": io_manager, "locs": list(locations)},
        )
        return {str(r[0]) for r in rows}

    def upstream(self, materialization_id: str) -> list[MaterializationRecord]:
        rows = self._rows("reading lineage", records.UPSTREAM, {"id": materialization_id})
        return [to_materialization(r) for r in rows]

    def downstream(self, materialization_id: str) -> list[MaterializationRecord]:
        rows = self._rows("reading lineage", records.DOWNSTREAM, {"id": materialization_id})
        return [to_materialization(r) for r in rows]

    # --- approvals & gates ---------------------------------------------------------------------
    def get_approval(self, approval_id: int) -> Approval | None:
        rows = self._rows(
            "reading an approval",
            "SELECT " + APPROVAL_COLS + " FROM {s}.approvals WHERE id = :id",
            {"id": approval_id},
        )
        return to_approval(rows[0]) if rows else None

    def find_approval(self, run_id: str, asset: str, partition: str) -> Approval | None:
        rows = self._rows(
            "finding an approval",
            "SELECT " + APPROVAL_COLS + " FROM {s}.approvals WHERE run_id = :r AND asset = :a "
            "AND partition = :p ORDER BY id DESC LIMIT 1",
            self._key(run_id, asset, partition),
        )
        return to_approval(rows[0]) if rows else None

    def list_approvals(
        self, *, pipeline: str | None = None, status: str | None = None
    ) -> list[Approval]:
        rows = self._rows(
            "listing approvals",
            "SELECT " + APPROVAL_COLS + " FROM {s}.approvals WHERE (CAST(:pl AS text) IS NULL "
            "OR pipeline = :pl) AND (CAST(:st AS text) IS NULL OR status = :st) ORDER BY id",
            {"pl": pipeline, "st": status},
        )
        return [to_approval(r) for r in rows]

    def decide_approval(
        self,
        approval_id: int,
        status: Literal["approved", "rejected", "expired"],
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> Approval:
        return self._tx(
            f"deciding approval {approval_id}",
            lambda c: records.decide_approval(c, self._sql, approval_id, status, by, reason),
        )

    def due_approvals(self, now: datetime | None = None) -> list[Approval]:
        rows = self._rows(
            "finding due approvals",
            "SELECT " + APPROVAL_COLS + " FROM {s}.approvals WHERE status = 'pending' "
            "AND expires_at <= COALESCE(CAST(:now AS timestamptz), now()) "
            "ORDER BY expires_at, id",
            {"now": None if now is None else rules.require_utc(now, "now")},
        )
        return [to_approval(r) for r in rows]

    def get_gate(self, token_hash: str) -> Gate | None:
        gates = self._auto(
            "reading a gate",
            lambda c: records.fetch_gates(
                c, self._sql, "SELECT " + GATE_COLS + " FROM {s}.gates WHERE token_hash = :th",
                th=token_hash,
            ),
        )  # fmt: skip
        return gates[0] if gates else None

    def find_gate(self, run_id: str, asset: str, partition: str) -> Gate | None:
        gates = self._auto(
            "finding a gate",
            lambda c: records.fetch_gates(
                c, self._sql,
                "SELECT " + GATE_COLS + " FROM {s}.gates WHERE run_id = :r AND asset = :a "
                "AND partition = :p ORDER BY created_at DESC LIMIT 1",
                **self._key(run_id, asset, partition),
            ),
        )  # fmt: skip
        return gates[0] if gates else None

    def consume_gate(
        self,
        token_hash: str,
        *,
        payload: Any,
        status: Literal["signaled", "expired"],
        claim: Continuation | None = None,
    ) -> Gate:
        return self._tx(
            "consuming a signal gate",
            lambda c: records.consume_gate(c, self._sql, token_hash, payload, status, claim),
        )

    def take_over_wait(
        self, run_id: str, asset: str, partition: str, *, owner: str, lease_seconds: float
    ) -> StepRecord | None:
        claim = Continuation(owner, lease_seconds)
        key = self._key(run_id, asset, partition)
        return self._auto(
            "taking over a waiting step",
            lambda c: records.hold_wait(c, self._sql, key, claim, waiting_only=False),
        )

    def due_gates(self, now: datetime | None = None) -> list[Gate]:
        at = None if now is None else rules.require_utc(now, "now")
        return self._auto(
            "finding due gates",
            lambda c: records.fetch_gates(
                c, self._sql,
                "SELECT " + GATE_COLS + " FROM {s}.gates WHERE status = 'pending' "
                "AND expires_at <= COALESCE(CAST(:now AS timestamptz), now()) "
                "ORDER BY expires_at, token_hash",
                now=at,
            ),
        )  # fmt: skip

    # --- routing --------------------------------------------------------------------------------
    def record_route_decision(self, run_id: str, router: str, partition: str, branch: str) -> str:
        key = {"r": run_id, "router": router, "p": partition}
        return self._auto(
            "recording a route decision",
            lambda c: records.record_route_decision(c, self._sql, key, branch, _now()),
        )

    def get_route_decision(self, run_id: str, router: str, partition: str) -> str | None:
        rows = self._rows(
            "reading a route decision",
            "SELECT branch FROM {s}.route_decisions WHERE run_id = :r AND router = :router "
            "AND partition = :p",
            {"r": run_id, "router": router, "p": partition},
        )
        return str(rows[0][0]) if rows else None

    def prune_route_decisions(self, older_than: datetime) -> int:
        rows = self._rows(
            "pruning route decisions",
            "DELETE FROM {s}.route_decisions WHERE decided_at < :t RETURNING 1",
            {"t": rules.require_utc(older_than, "older_than")},
        )
        return len(rows)

    # --- cursors & ticks ---------------------------------------------------------------------
    def get_cursor(self, name: str) -> str | None:
        rows = self._rows(
            "reading a cursor", "SELECT value FROM {s}.cursors WHERE name = :n", {"n": name}
        )
        return str(rows[0][0]) if rows else None

    def set_cursor(self, name: str, value: str, *, expected: str | None = None) -> bool:
        return self._auto(
            "setting a cursor",
            lambda c: records.set_cursor(c, self._sql, name, value, expected, _now()),
        )

    def claim_tick(self, name: str, tick: str) -> bool:
        return self._auto(
            "claiming a tick", lambda c: records.claim_tick(c, self._sql, name, tick, _now())
        )

    def prune_ticks(self, older_than: datetime, *, prefix: str) -> int:
        rows = self._rows(
            "pruning ticks",
            "WITH d AS (DELETE FROM {s}.ticks WHERE left(name, :n) = :prefix "
            "AND claimed_at < :cutoff RETURNING 1) SELECT count(*) FROM d",
            {"n": len(prefix), "prefix": prefix,
             "cutoff": rules.require_utc(older_than, "older_than")},
        )  # fmt: skip
        return int(rows[0][0])

    # --- audit ---------------------------------------------------------------------------------
    def append_audit(
        self,
        run_id: str,
        kind: str,
        *,
        asset: str | None = None,
        partition: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        self._auto(
            "appending to the audit log",
            lambda c: records.append_audit(c, self._sql, run_id, kind, asset, partition, detail,
                                       _now()),
        )  # fmt: skip

    def list_audit(self, run_id: str) -> list[AuditEntry]:
        return self._auto(
            "reading the audit log", lambda c: records.list_audit(c, self._sql, run_id)
        )

    # --- scatter item results ----------------------------------------------------------------
    def save_item_results(
        self, run_id: str, asset: str, partition: str, results: Sequence[ItemResult]
    ) -> None:
        if not results:
            return
        key = self._key(run_id, asset, partition)
        self._auto(
            "saving item results",
            lambda c: records.save_item_results(c, self._sql, key, results),
        )

    def load_item_results(self, run_id: str, asset: str, partition: str) -> list[ItemResult]:
        key = self._key(run_id, asset, partition)
        return self._auto(
            "loading item results", lambda c: records.load_item_results(c, self._sql, key)
        )

    # --- step notes --------------------------------------------------------------------------
    def add_step_note(self, run_id: str, asset: str, partition: str, kind: str, value: str) -> str:
        rules.check_note(kind, value)
        key = self._key(run_id, asset, partition)
        return self._auto(
            "adding a step note",
            lambda c: records.add_step_note(c, self._sql, key, kind, value, _now()),
        )

    def get_step_note(self, run_id: str, asset: str, partition: str, kind: str) -> str | None:
        key = self._key(run_id, asset, partition)
        return self._auto(
            "reading a step note", lambda c: records.get_step_note(c, self._sql, key, kind)
        )


async def _on_connection(db: Connections, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async with db.connection() as conn:
        return await work(conn)


def from_url(url: str) -> PostgresRunStore:
    """Entry point for ``flowstone.run_stores``: a store for ``url`` in the default schema.

    Query options are not interpreted; use :class:`PostgresRunStore` directly for a custom
    schema or ``auto_migrate``.
    """
    return PostgresRunStore(url)


@functools.lru_cache(maxsize=64)
def _value_table(source: str) -> str | None:
    """The quoted table a ``prefetch_source`` names, or None if it is not one of
    :class:`~flowstone_io_postgres.PostgresIOManager`'s (parsed once per source: every
    finish with a continuation asks)."""
    if not source.startswith(PREFETCH_PREFIX):
        return None
    try:
        return parse_qualified_name(source[len(PREFETCH_PREFIX):]).sql
    except UsageError:
        return None
