"""The sync-to-asyncpg bridge on a real server: callers run the loop themselves.

One thread runs the loop at a time (the leader); other threads queue their statements on
it and wait, and take the loop over when the leader returns before their statement is
done. A thread that already runs an asyncio loop is served from a helper thread.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from flowstone_io_postgres._runtime import AsyncRuntime, Connections, PoolOptions

pytestmark = pytest.mark.integration


def _runtime(url: str, size: int = 8) -> AsyncRuntime:
    return AsyncRuntime(make_url(url), PoolOptions(max_size=size), name="flowstone-test")


def test_concurrent_callers_share_the_loop_and_all_get_their_own_answers(
    postgres_url: str,
) -> None:
    runtime = _runtime(postgres_url)
    results: dict[int, tuple[int, int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def call(i: int) -> None:
        async def work(db: Connections) -> Any:
            # staggered sleeps: leaders return while other statements are still running
            return await db.fetchrow("SELECT $1::int, pg_backend_pid(), pg_sleep($2)",
                                     i, 0.02 * (i % 4))

        barrier.wait()
        try:
            for _ in range(5):
                row = runtime.run(work)
                results[i] = (row[0], row[1])
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    runtime.close()
    assert not errors, errors
    assert {i: v for i, (v, _) in results.items()} == {i: i for i in range(8)}
    # the statements overlapped: several server backends (connections) served them
    assert len({pid for _, pid in results.values()}) > 1


def test_a_thread_running_its_own_asyncio_loop_is_served(postgres_url: str) -> None:
    runtime = _runtime(postgres_url)

    async def work(db: Connections) -> Any:
        return await db.fetchval("SELECT 41 + 1")

    async def app() -> Any:  # e.g. a notebook cell or an async web handler calling sync code
        return runtime.run(work)

    try:
        assert asyncio.run(app()) == 42
        assert runtime.run(work) == 42  # and the plain path still works afterwards
    finally:
        runtime.close()


def test_calling_the_bridge_from_inside_its_own_loop_is_refused(postgres_url: str) -> None:
    runtime = _runtime(postgres_url)

    async def inner(db: Connections) -> Any:
        return await db.fetchval("SELECT 1")

    async def outer(db: Connections) -> Any:
        return runtime.run(inner)  # a coroutine must await, not call back into the bridge

    try:
        with pytest.raises(RuntimeError, match="cannot be called from its own loop"):
            runtime.run(outer)
        assert runtime.run(inner) == 1
    finally:
        runtime.close()


def test_errors_reach_the_caller_and_the_connection_is_reused(postgres_url: str) -> None:
    runtime = _runtime(postgres_url, size=1)

    async def bad(db: Connections) -> Any:
        return await db.fetch("SELECT * FROM no_such_table_here")

    async def pid(db: Connections) -> Any:
        return await db.fetchval("SELECT pg_backend_pid()")

    try:
        first = runtime.run(pid)
        with pytest.raises(Exception, match="no_such_table_here"):
            runtime.run(bad)
        assert runtime.run(pid) == first  # a server-reported error keeps the connection
    finally:
        runtime.close()
