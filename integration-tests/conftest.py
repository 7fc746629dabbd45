"""What every integration suite shares: a PostgreSQL connection-headroom check at start.

The suites share one server with whoever else uses it. A server near ``max_connections``
makes them fail deep inside a test with ``TooManyConnectionsError``; this check says so at
the start instead, naming the numbers, after waiting up to ``FLOWSTONE_IT_PG_WAIT`` seconds
(default 60) for other users to free connections. A suite needs at most
``FLOWSTONE_IT_PG_HEADROOM`` connections (default 20: a client pool, two workers with
their pools, admin connections). An unreachable server is left to each suite's fixtures,
which skip or, with ``CI=true``, fail with how to start it.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

PG_ADMIN = os.environ.get(
    "FLOWSTONE_IT_PG",
    os.environ.get("FLOWSTONE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
)
HEADROOM = int(os.environ.get("FLOWSTONE_IT_PG_HEADROOM", "20"))
WAIT_SECONDS = float(os.environ.get("FLOWSTONE_IT_PG_WAIT", "60"))

_FREE_SQL = """
SELECT current_setting('max_connections')::int
       - current_setting('superuser_reserved_connections')::int AS usable,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS used
"""


def connection_headroom() -> tuple[int, int] | None:
    """(usable, used) client connections of the server, or None if it is unreachable."""
    try:
        import asyncpg
    except ImportError:  # a suite without the Postgres plugin installed
        return None

    async def read() -> tuple[int, int]:
        conn = await asyncpg.connect(PG_ADMIN.replace("+asyncpg", ""), timeout=5)
        try:
            row = await conn.fetchrow(_FREE_SQL)
            return int(row["usable"]), int(row["used"])
        finally:
            await conn.close()

    try:
        return asyncio.run(read())
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return None


def pytest_sessionstart(session: pytest.Session) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        numbers = connection_headroom()
        if numbers is None:
            return
        usable, used = numbers
        if usable - used >= HEADROOM:
            return
        if time.monotonic() >= deadline:
            pytest.exit(
                f"PostgreSQL at {PG_ADMIN.split('@')[-1]} has {usable - used} free connections "
                f"({used} of {usable} in use) but the integration tests need {HEADROOM}; "
                f"waited {WAIT_SECONDS:.0f} s for them. Close other clients, raise "
                "max_connections, or set FLOWSTONE_IT_PG_HEADROOM / FLOWSTONE_IT_PG_WAIT.",
                returncode=1,
            )
        time.sleep(2)
