"""Hot statements keep their index plans in the generic plan a prepared statement caches.

asyncpg prepares every statement once per connection, and after five executions Postgres
may switch it to a generic plan, kept for the life of the connection. Planned while the
tables are young and unanalyzed (a new database, or a server with autovacuum off), a join
of an array of keys with a table comes out as a scan of the table; the plan is kept as the
table grows, so each call reads every row. Measured before the fix in ``bench/parallel.py``
(1,000 joins of 3, one run per parent): locking a batch's dependents took 0.8 ms a call at
3,000 edges and 3.5 ms at 9,000, and reading 16 runs for ``wait`` ~1 ms. Each statement
here is planned generic on young tables that hold rows, and must look its keys up
through an index.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest

from flowstone_io_postgres import PostgresRunStore
from flowstone_io_postgres._scheduling import _LOCK_DEPENDENTS
from flowstone_io_postgres._sql import Sql
from flowstone_io_postgres.store import _GET_RUNS

pytestmark = pytest.mark.integration

RUNS = 40  # enough rows that a scan and a probe differ; the tables stay unanalyzed


def _young_schema(url: str) -> str:
    schema = f"plans_{uuid.uuid4().hex[:8]}"
    store = PostgresRunStore(url, schema=schema, auto_migrate=True)
    store.ping()
    store.close()
    return schema


async def _fill(conn: asyncpg.Connection, s: str) -> None:
    """RUNS runs of a join of three branches: the branches done, the join pending."""
    await conn.execute(f"""
        INSERT INTO {s}.runs (run_id, pipeline, targets, partition, status, created_at,
                              updated_at, tags)
        SELECT 'r' || g, 'p', ARRAY['join'], g::text, 'running', now(), now(), '{{}}'::jsonb
          FROM generate_series(1, {RUNS}) g;
        INSERT INTO {s}.steps (run_id, asset, partition, ordinal, state, remaining_deps,
                               updated_at)
        SELECT 'r' || g, a, g::text, o, CASE WHEN a = 'join' THEN 'pending'
               ELSE 'succeeded' END, CASE WHEN a = 'join' THEN 3 ELSE 0 END, now()
          FROM generate_series(1, {RUNS}) g,
               (VALUES ('b1', 0), ('b2', 1), ('b3', 2), ('join', 3)) v(a, o);
        INSERT INTO {s}.edges
        SELECT 'r' || g, b, g::text, 'join', g::text
          FROM generate_series(1, {RUNS}) g, unnest(ARRAY['b1', 'b2', 'b3']) b;
    """)


def _literal(value: Any) -> str:
    """A text[] literal for EXECUTE (the test's own values only)."""
    return "'" + json.dumps(value).replace("[", "{").replace("]", "}") + "'"


async def _generic_plan(url: str, statement: str, types: str, args: list[Any]) -> str:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    tx = conn.transaction()  # FOR UPDATE needs one; rolled back
    await tx.start()
    try:
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE probe({types}) AS {statement}")
        rows = await conn.fetch(
            "EXPLAIN (COSTS OFF) EXECUTE probe(" + ", ".join(_literal(a) for a in args) + ")"
        )
        return "\n".join(r[0] for r in rows)
    finally:
        await tx.rollback()
        await conn.close()


@pytest.fixture
def young(postgres_url: str) -> tuple[str, str]:
    schema = _young_schema(postgres_url)

    async def fill() -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await _fill(conn, f'"{schema}"')
        finally:
            await conn.close()

    asyncio.run(fill())
    return postgres_url, f'"{schema}"'


def test_locking_a_batchs_dependents_probes_the_edges_and_steps_indexes(
    young: tuple[str, str],
) -> None:
    url, schema = young
    stmt = Sql(schema)(_LOCK_DEPENDENTS)
    plan = asyncio.run(_generic_plan(
        url, stmt.sql, "text[], text[], text[]",
        [["r7", "r7", "r7", "r9"], ["b1", "b2", "b3", "b1"], ["7", "7", "7", "9"]],
    ))
    assert "Seq Scan" not in plan, plan
    assert "edges_pkey" in plan and "on steps" in plan, plan


def test_reading_runs_for_wait_probes_the_primary_key(young: tuple[str, str]) -> None:
    url, schema = young
    store = PostgresRunStore(url, schema=schema.strip('"'))
    try:
        # what get_runs sends (through the store, so the statement is the one it uses)
        found = store.get_runs([f"r{i}" for i in range(1, 17)] + ["missing"])
        assert sorted(r.run_id for r in found) == sorted(f"r{i}" for i in range(1, 17))
    finally:
        store.close()
    statement = Sql(schema)(_GET_RUNS).sql
    plan = asyncio.run(_generic_plan(url, statement, "text[]", [["r1", "r2", "r3"]]))
    assert "Seq Scan" not in plan and "runs_pkey" in plan, plan


async def _nested_plans(url: str, schema: str, call: str) -> list[str]:
    """The plans of the statements ``call`` runs inside server-side functions, planned
    generic (auto_explain, loaded for this session only, sends each as a notice)."""
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    plans: list[str] = []
    conn.add_log_listener(lambda _c, message: plans.append(str(message)))
    tx = conn.transaction()  # rolled back: nothing the call does stays
    await tx.start()
    try:
        await conn.execute("LOAD 'auto_explain'")
        for setting in ("auto_explain.log_min_duration = 0",
                        "auto_explain.log_nested_statements = on",
                        "auto_explain.log_level = notice",
                        "plan_cache_mode = force_generic_plan"):  # fmt: skip
            await conn.execute(f"SET LOCAL {setting}")
        await conn.execute(call.format(s=schema))
        return plans
    finally:
        await tx.rollback()
        await conn.close()


def test_a_batchs_first_finish_locks_the_dependents_through_the_indexes(
    young: tuple[str, str],
) -> None:
    """The lock a one-shape batch takes in its first ``finish_step`` call (migration
    0011) is PL/pgSQL's cached statement, generic after five calls: the same per-key
    probes as the batch statement above."""
    url, schema = young
    call = (
        "SELECT {s}.finish_step('r7', 'b1', '7', 'succeeded', NULL, ARRAY['succeeded'], "
        "'{{}}', now(), " + ", ".join(["NULL"] * 26) + ", NULL, NULL, NULL, NULL, false, "
        "ARRAY['r7', 'r7', 'r9'], ARRAY['b1', 'b2', 'b1'], ARRAY['7', '7', '9'], true)"
    )
    plans = asyncio.run(_nested_plans(url, schema, call))
    lock = [p for p in plans if "FOR UPDATE" in p and "unnest" in p]
    assert lock, plans  # the lock ran, and its plan was reported
    assert all("Seq Scan" not in p for p in lock), lock
    assert "edges_pkey" in lock[0] and "on steps" in lock[0], lock[0]
