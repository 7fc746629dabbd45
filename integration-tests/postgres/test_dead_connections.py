"""Connections the server closed while they sat idle are replaced before use (issue 11 §6).

``pg_terminate_backend`` (an operator, a failover, an idle timeout) closes a pooled
connection while no statement runs on it. asyncpg only notices when the loop next reads
that socket, so ``conn.is_closed()`` still says False when the connection is taken from the
idle stack, and the statement sent on it fails. The bridge polls an idle connection's
socket before use and opens a fresh connection in its place.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from flowstone_io_postgres import PostgresRunStore
from flowstone_io_postgres._runtime import Connections

pytestmark = pytest.mark.integration

POOL = 4


def _admin(url: str, sql: str, *args: Any) -> list[Any]:
    async def go() -> list[Any]:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def _fill_pool(store: PostgresRunStore) -> set[int]:
    """Open POOL connections at once (held together by a barrier), leave them idle; return
    their backend pids."""
    pids: set[int] = set()
    gate = threading.Barrier(POOL)
    lock = threading.Lock()

    async def work(db: Connections) -> Any:
        async with db.connection() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await asyncio.get_running_loop().run_in_executor(None, gate.wait)
            return pid

    def call() -> None:
        pid = store.runtime.run(work)
        with lock:
            pids.add(int(pid))

    threads = [threading.Thread(target=call) for _ in range(POOL)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return pids


def test_every_backend_terminated_while_idle_then_every_next_call_succeeds(
    migrated_url: str,
) -> None:
    store = PostgresRunStore(migrated_url, pool_size=POOL, max_overflow=0)
    try:
        idle = _fill_pool(store)
        assert len(idle) == POOL  # four idle connections in the store's stack
        database = make_url(migrated_url).database
        killed = _admin(
            migrated_url,
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 "
            "AND pid <> pg_backend_pid()",
            database,
        )
        assert idle <= {int(r["pid"]) for r in killed}
        # wait until the server has really ended them (their goodbye is then on the sockets)
        while _admin(
            migrated_url,
            "SELECT 1 FROM pg_stat_activity WHERE pid = ANY($1::int[])",
            sorted(idle),
        ):
            pass

        # each of these calls takes the top idle connection; before the fix every one of
        # them failed once (ConnectionDoesNotExistError) on a dead connection
        served: set[int] = set()
        for _ in range(POOL * 2):
            assert store.list_runs(limit=1) is not None
            served.add(int(store.runtime.run(lambda db: db.fetchval("SELECT pg_backend_pid()"))))
        assert not served & idle  # nothing ran on a terminated backend
    finally:
        store.close()
