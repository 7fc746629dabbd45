"""The Postgres side of an unbatched scatter alone: the ceiling a worker cannot pass.

Runs the statements every chunk makes (claim its items, record their results, top the
window up) for a barrier of N trivial items on several connections at once, with no
Celery and no user code, against the real scatter schema in a throwaway database::

    python bench/scatter_ceiling.py [--items 100000] [--chunk 100] [--connections 4]
        [--sql "DROP INDEX ..."]   # try a schema change first (statements split on ';')

Prints one JSON line: items/s and chunks/s. Compare with ``scatter.py`` on the same
machine: the distance between the two is the worker's and the broker's share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Any

from _cluster import PG_ADMIN, log, pg_admin

import flowstone as fs


async def _run(url: str, items: int, chunk: int, connections: int, sql: str) -> dict[str, Any]:
    import asyncpg

    from flowstone_scatter import barrier
    from flowstone_scatter.schema import Tables

    t = Tables.in_schema("flowstone")
    sc = fs.Scatter(items=lambda: [], max_concurrent=2000)
    conns = [await asyncpg.connect(url) for _ in range(connections)]
    try:
        for statement in filter(None, (s.strip() for s in sql.split(";"))):
            await conns[0].execute(statement)
        rows = [(i, i, str(i), str(i)) for i in range(items)]
        bid, _ = await barrier.create(
            conns[0], t, pipeline="p", run_id=uuid.uuid4().hex, asset="a", partition="",
            token="t", rows=rows, units_total=items, max_concurrent=2000, chunk_units=chunk,
            reader_done=True, expected_total=items)
        queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        for r in (await barrier.lock_and_decide(conns[0], t, bid, sc, 60.0)).ranges:
            queue.put_nowait(r)
        done = asyncio.Event()
        chunks = 0

        async def work(conn: Any) -> None:
            nonlocal chunks
            while not done.is_set():
                try:
                    start, end = await asyncio.wait_for(queue.get(), 0.5)
                except TimeoutError:
                    continue
                _, claimed = await barrier.load_chunk(conn, t, bid, start, end, "p",
                                                      uuid.uuid4().hex, 60.0)
                results = [(r.idx, "succeeded", "null", None) for r in claimed]
                claim = await barrier.record(conn, t, bid, sc, results, 60.0)
                chunks += 1
                for r in claim.ranges:
                    queue.put_nowait(r)
                if claim.finishing:
                    done.set()

        began = time.perf_counter()
        await asyncio.gather(*(work(c) for c in conns))
        elapsed = time.perf_counter() - began
    finally:
        for c in conns:
            await c.close()
    return {"bench": "scatter_ceiling", "items": items, "chunk": chunk,
            "connections": connections, "sql": sql, "seconds": round(elapsed, 2),
            "items_per_s": round(items / elapsed, 1), "chunks_per_s": round(chunks / elapsed, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--sql", default="", help="statements to run on the fresh schema first")
    args = parser.parse_args()
    from flowstone_io_postgres import PostgresRunStore

    db = f"flowstone_bench_ceiling_{uuid.uuid4().hex[:8]}"
    pg_admin(f'CREATE DATABASE "{db}"')
    try:
        url = PG_ADMIN.rsplit("/", 1)[0] + "/" + db
        store = PostgresRunStore("postgresql+asyncpg://" + url.split("://", 1)[1],
                                 auto_migrate=True)
        store.list_runs(limit=1)
        store.close()
        out = asyncio.run(_run(url, args.items, args.chunk, args.connections, args.sql))
    finally:
        pg_admin(f'DROP DATABASE "{db}"')
    log(f"{out['items_per_s']:.0f} items/s, {out['chunks_per_s']:.0f} chunks/s")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
