"""flowstone-ui at scale: request latency over a Postgres store of a million runs.

A database of its own is filled in bulk (``INSERT ... SELECT generate_series``, one
statement per table, then ``ANALYZE``):

* 1,000,000 runs of pipeline ``bench`` (one a second, 2% failed), each with its step and
  materialization of ``report`` and one audit entry;
* 100,000 partitions of the asset ``daily`` (a ``StaticPartitions`` of 100,000 keys), each
  with a materialization (1% failed), so the grid has real states to show.

Then the UI app (``create_app`` with the Postgres store, served in-process through
Starlette's test client: the whole request path, without a network hop) answers, each
``--repeat`` times after a warm-up, and the p50/p95 latency is reported for:

* ``runs_first``: ``/api/runs`` first page (50 runs);
* ``runs_deep``: a page 900,000 runs deep, by keyset cursor;
* ``runs_failed``: the first page of failed runs (a status filter);
* ``run_detail``: ``/api/runs/{id}`` of random runs (steps, audit, waits);
* ``grid``: a 1,000-partition page of the partition grid at a random offset;
* ``grid_5000``: 5,000 partitions aggregated into 500 cells;
* ``graph``: the asset graph with each asset's latest state.

For contrast, the same deep page read the way a UI without keyset reads does it
(``OFFSET 900000``) and a ``count(*)`` of the runs table are timed in the same run
(``offset_deep_ms``, ``count_runs_ms``). Target: p95 under 100 ms for every UI request.
The database is dropped at the end. The last line printed is one JSON object.

Usage::

    python bench/ui.py             # 1,000,000 runs, 100,000 partitions, 40 requests each
    python bench/ui.py --quick     # CI smoke: 100,000 runs, 10,000 partitions, 10 each
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

import flowstone as fs

ADMIN = os.environ.get("FLOWSTONE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
START = datetime(2024, 1, 1, tzinfo=UTC)
TOKEN = "bench-token-" + uuid.uuid4().hex


def _url(database: str) -> str:
    return ADMIN.rsplit("/", 1)[0] + "/" + database


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


FILL = (
    """INSERT INTO flowstone.runs (run_id, pipeline, targets, partition, status, created_at,
         updated_at, error, tags)
       SELECT 'run' || lpad(i::text, 8, '0'), 'bench', ARRAY['report'], '',
              CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'succeeded' END,
              $1::timestamptz + i * interval '1 second',
              $1::timestamptz + i * interval '1 second' + interval '2 seconds',
              CASE WHEN i % 50 = 0 THEN 'report failed' END, '{}'
         FROM generate_series(1, $2::int) AS i""",
    """INSERT INTO flowstone.steps (run_id, asset, partition, ordinal, state, remaining_deps,
         attempt, materialization_id, error, updated_at)
       SELECT 'run' || lpad(i::text, 8, '0'), 'report', '', 0,
              CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'succeeded' END, 0, 1,
              'mat' || lpad(i::text, 8, '0'), CASE WHEN i % 50 = 0 THEN 'boom' END,
              $1::timestamptz + i * interval '1 second' + interval '2 seconds'
         FROM generate_series(1, $2::int) AS i""",
    """INSERT INTO flowstone.materializations (id, pipeline, run_id, asset, partition, state,
         attempt, started_at, finished_at, error, metadata)
       SELECT 'mat' || lpad(i::text, 8, '0'), 'bench', 'run' || lpad(i::text, 8, '0'),
              'report', '', CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'succeeded' END, 1,
              $1::timestamptz + i * interval '1 second',
              $1::timestamptz + i * interval '1 second' + interval '2 seconds',
              CASE WHEN i % 50 = 0 THEN 'boom' END,
              CASE WHEN i % 50 = 0 THEN '{"traceback": "Traceback ...\\nValueError: boom"}'
                   ELSE '{}' END::jsonb
         FROM generate_series(1, $2::int) AS i""",
    """INSERT INTO flowstone.audit (run_id, at, kind, asset, partition, detail)
       SELECT 'run' || lpad(i::text, 8, '0'),
              $1::timestamptz + i * interval '1 second', 'run_created', NULL, NULL,
              '{"steps": 1}'
         FROM generate_series(1, $2::int) AS i""",
)
FILL_PARTITIONS = """
    INSERT INTO flowstone.materializations (id, pipeline, run_id, asset, partition, state,
      attempt, started_at, finished_at, metadata)
    SELECT 'daily' || lpad(i::text, 8, '0'), 'bench', 'run' || lpad((i + 1)::text, 8, '0'),
           'daily', 'p' || lpad(i::text, 6, '0'),
           CASE WHEN i % 100 = 7 THEN 'failed' ELSE 'succeeded' END, 1,
           $1::timestamptz, $1::timestamptz + interval '1 second', '{}'
      FROM generate_series(0, $2::int - 1) AS i"""


async def fill(url: str, runs: int, partitions: int) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(url, timeout=10)
    try:
        for statement in FILL:
            await conn.execute(statement, START, runs)
        await conn.execute(FILL_PARTITIONS, START, partitions)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def timed_sql(url: str, sql: str, repeat: int) -> float:
    """Median milliseconds of ``sql`` on a direct connection (the contrast figures)."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        seconds = []
        for _ in range(repeat):
            t = time.perf_counter()
            await conn.fetch(sql)
            seconds.append(time.perf_counter() - t)
    finally:
        await conn.close()
    return round(statistics.median(seconds) * 1000, 1)


def build_pipeline(url: str, partitions: int) -> Any:
    from flowstone_io_postgres import PostgresRunStore

    @fs.asset
    def source() -> int:
        return 1

    @fs.asset
    def report(source: int) -> int:
        return source

    @fs.asset(partitions=fs.StaticPartitions([f"p{i:06d}" for i in range(partitions)]))
    def daily(context: fs.Context, source: int) -> int:
        return source

    store = PostgresRunStore(url, pool_size=2, max_overflow=0)
    return fs.Pipeline("bench", [source, report, daily], store=store)


def latencies(call: Callable[[], Any], repeat: int) -> dict[str, float]:
    for _ in range(3):  # warm-up: connections, partition keys, code paths
        call()
    seconds = []
    for _ in range(repeat):
        t = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - t)
    seconds.sort()
    p95 = seconds[min(len(seconds) - 1, round(0.95 * (len(seconds) - 1)))]
    return {"p50_ms": round(statistics.median(seconds) * 1000, 1),
            "p95_ms": round(p95 * 1000, 1)}  # fmt: skip


def measure(pipeline: Any, runs: int, partitions: int, repeat: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from flowstone_ui import create_app
    from flowstone_ui.queries import encode_cursor

    app = create_app([pipeline], token=TOKEN)
    client = TestClient(app)
    rng = random.Random(7)

    def get(path: str, **params: Any) -> Callable[[], Any]:
        def call() -> Any:
            response = client.get(path, params=params)
            if response.status_code != 200:
                raise SystemExit(f"{path} {params} -> {response.status_code}: {response.text}")
            return response.json()

        return call

    deep = runs - int(runs * 0.9)  # 90% of the way down the newest-first list
    at = START + timedelta(seconds=deep)
    cursor = encode_cursor(round(at.timestamp() * 1e6), f"run{deep:08d}")
    page = get("/api/runs", limit=50, cursor=cursor)()
    assert page["runs"][0]["run_id"] == f"run{deep - 1:08d}", page["runs"][0]

    def detail() -> Any:
        run_id = f"run{rng.randrange(1, runs + 1):08d}"
        return get(f"/api/runs/{run_id}")()

    def grid() -> Any:
        start = rng.randrange(0, partitions - 1000)
        return get("/api/pipelines/bench/assets/daily/partitions", start=start, limit=1000)()

    cases: dict[str, Callable[[], Any]] = {
        "runs_first": get("/api/runs", limit=50),
        "runs_deep": get("/api/runs", limit=50, cursor=cursor),
        "runs_failed": get("/api/runs", limit=50, status="failed"),
        "run_detail": detail,
        "grid": grid,
        "grid_5000": get("/api/pipelines/bench/assets/daily/partitions", limit=5000),
        "graph": get("/api/pipelines/bench/graph"),
    }
    out: dict[str, Any] = {}
    for name, call in cases.items():
        out[name] = latencies(call, repeat)
        print(f"{name:12s} p50 {out[name]['p50_ms']:7.1f} ms  p95 {out[name]['p95_ms']:7.1f} ms",
              file=sys.stderr)  # fmt: skip
    graph = cases["graph"]()
    states = {n["name"]: n["state"] for n in graph["nodes"]}
    newest = "failed" if runs % 50 == 0 else "succeeded"
    assert states["report"] == newest and states["daily"] == "succeeded", states
    cells = cases["grid_5000"]()
    assert len(cells["cells"]) == 500 and cells["total"] == partitions, cells["total"]
    client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: a tenth of the data")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--partitions", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    runs = args.runs or (100_000 if args.quick else 1_000_000)
    partitions = args.partitions or (10_000 if args.quick else 100_000)
    repeat = args.repeat or (10 if args.quick else 40)
    name = f"flowstone_bench_ui_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    pipeline = None
    try:
        from flowstone_io_postgres import PostgresRunStore

        url = _url(name)
        migrator = PostgresRunStore(url, auto_migrate=True, pool_size=1, max_overflow=0)
        migrator.ping()
        migrator.close()
        fill_s = asyncio.run(fill(url, runs, partitions))
        print(f"filled {runs:,} runs and {partitions:,} partitions in {fill_s:.1f} s",
              file=sys.stderr)
        pipeline = build_pipeline(url, partitions)
        results = measure(pipeline, runs, partitions, repeat)
        offset = asyncio.run(timed_sql(
            url, "SELECT run_id FROM flowstone.runs WHERE pipeline = 'bench' ORDER BY "
            f"created_at DESC, run_id DESC OFFSET {int(runs * 0.9)} LIMIT 50", 3))
        count = asyncio.run(timed_sql(url, "SELECT count(*) FROM flowstone.runs", 3))
    finally:
        if pipeline is not None:
            pipeline.close()
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    worst = max(r["p95_ms"] for r in results.values())
    print(json.dumps({
        "bench": "ui", "runs": runs, "partitions": partitions, "repeat": repeat,
        "fill_s": round(fill_s, 1), **{k: v for k, v in results.items()},
        "worst_p95_ms": worst, "target_p95_ms": 100.0, "meets_target": worst < 100.0,
        "offset_deep_ms": offset, "count_runs_ms": count,
        "keyset_vs_offset_deep": round(offset / max(results["runs_deep"]["p50_ms"], 0.1), 1),
    }))


if __name__ == "__main__":
    main()
