"""Fixtures for the PostgreSQL integration tests.

A throwaway database ``flowstone_test_<random>`` is created on the server named by
``FLOWSTONE_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
used only to create and drop it) and dropped at the end of the session. If the server is
unreachable the tests are skipped, or fail when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from flowstone_io_postgres import PostgresRunStore

ADMIN_URL = os.environ.get(
    "FLOWSTONE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

pytestmark = pytest.mark.integration


def _admin_dsn() -> str:
    return make_url(ADMIN_URL).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(_admin_dsn(), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty database (no FlowStone schema yet)."""
    name = f"flowstone_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        where = make_url(ADMIN_URL).render_as_string(hide_password=True)
        message = (
            f"PostgreSQL not reachable at {where} ({type(exc).__name__}: {exc}); start it with "
            "`docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:15` or "
            "point FLOWSTONE_TEST_POSTGRES_URL at a server where you may create databases"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    url = make_url(ADMIN_URL).set(drivername="postgresql", database=name)
    yield url.render_as_string(hide_password=False)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def migrated_url(postgres_url: str) -> Iterator[str]:
    """The test database with the FlowStone schema at head."""
    store = PostgresRunStore(postgres_url, auto_migrate=True)
    store.ping()
    store.close()
    yield postgres_url


@pytest.fixture(scope="session")
def shared_store(migrated_url: str) -> Iterator[PostgresRunStore]:
    store = PostgresRunStore(migrated_url, pool_size=8)
    yield store
    store.close()
