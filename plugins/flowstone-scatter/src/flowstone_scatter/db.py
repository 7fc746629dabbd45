"""A private asyncio loop in a daemon thread owning an asyncpg pool, bridged to sync code.

Scatter bookkeeping runs inside Celery pool children (sync code). Each call submits a
coroutine to the loop thread and blocks on its result. Fork safety: a child never touches
the parent's loop or sockets; on a pid change a fresh loop and pool are created (the
inherited ones are kept referenced and never closed, so no finaliser writes to a socket
the parent still uses).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from flowstone.errors import UsageError

__all__ = ["Database", "asyncpg_dsn"]

T = TypeVar("T")


def asyncpg_dsn(url: str) -> str:
    """``postgresql+asyncpg://...`` (SQLAlchemy style) -> ``postgresql://...`` (libpq style)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith(("postgresql", "postgres")):
        raise UsageError(
            "flowstone-scatter needs a PostgreSQL FLOWSTONE_DATABASE_URL "
            "(postgresql+asyncpg://user@host/db); the scatter barrier lives in Postgres"
        )
    return "postgresql://" + rest


class _Loop:
    __slots__ = ("loop", "pid", "pool", "thread")

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.pool: asyncpg.Pool | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever,
                                       name="flowstone-scatter-db", daemon=True)
        self.thread.start()


class Database:
    """Sync facade: ``db.run(lambda conn: coroutine)`` on a pooled connection."""

    __slots__ = ("_abandoned", "_current", "_lock", "dsn", "max_size")

    def __init__(self, url: str, *, max_size: int = 4) -> None:
        self.dsn = asyncpg_dsn(url)
        self.max_size = max_size
        self._lock = threading.Lock()
        self._current: _Loop | None = None
        self._abandoned: list[_Loop] = []

    def _loop(self) -> _Loop:
        current = self._current
        if current is not None and current.pid == os.getpid():
            return current
        with self._lock:
            current = self._current
            if current is None or current.pid != os.getpid():
                if current is not None:
                    self._abandoned.append(current)
                current = self._current = _Loop()
            return current

    async def _pool(self, lp: _Loop) -> asyncpg.Pool:
        if lp.pool is None:
            lp.pool = await asyncpg.create_pool(
                self.dsn, min_size=0, max_size=self.max_size, statement_cache_size=256,
                server_settings={"application_name": "flowstone-scatter"},
            )
        return lp.pool

    def run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], timeout: float = 600) -> T:
        """Run ``fn(conn)`` on a pooled connection and return its result."""
        lp = self._loop()

        async def go() -> T:
            pool = await self._pool(lp)
            async with pool.acquire() as conn:
                return await fn(conn)

        return asyncio.run_coroutine_threadsafe(go(), lp.loop).result(timeout)

    def close(self) -> None:
        """Close this process's pool and stop its loop thread."""
        lp = self._current
        if lp is None or lp.pid != os.getpid():
            return
        self._current = None

        async def shut() -> None:
            if lp.pool is not None:
                await lp.pool.close()

        try:
            asyncio.run_coroutine_threadsafe(shut(), lp.loop).result(30)
        finally:
            lp.loop.call_soon_threadsafe(lp.loop.stop)
            lp.thread.join(10)
