"""One worker serving five pipelines on one database holds one connection budget
(issue 14 item 17), counted in ``pg_stat_activity`` of a database of its own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery_it import PIPELINES, Cluster, cli

pytestmark = pytest.mark.integration

ADMIN = os.environ.get("FLOWSTONE_IT_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SPECS = [f"{PIPELINES / 'shared_db'}.py:p{i}" for i in range(1, 6)]
CONCURRENCY = 2


def _admin(sql: str, *args: object) -> object:
    import asyncpg

    async def go() -> object:
        conn = await asyncpg.connect(ADMIN.replace("+asyncpg", ""), timeout=5)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture
def own_database(database_url: str) -> Iterator[tuple[str, str]]:
    """(name, URL) of a fresh database with the FlowStone schema, dropped afterwards."""
    name = f"flowstone_it_conn_{uuid.uuid4().hex[:8]}"
    _admin(f'CREATE DATABASE "{name}"')
    url = "postgresql+asyncpg://" + ADMIN.split("://", 1)[1].rsplit("/", 1)[0] + "/" + name
    from flowstone_io_postgres import PostgresRunStore

    store = PostgresRunStore(url, auto_migrate=True)
    try:
        store.ping()
    finally:
        store.close()
    try:
        yield name, url
    finally:
        with contextlib.suppress(Exception):
            _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_five_pipelines_on_one_database_share_one_connection_budget(
    client_env: str, own_database: tuple[str, str], redis_url: str, state_dir: Path
) -> None:
    name, url = own_database
    queue = f"{client_env}-conn-{uuid.uuid4().hex[:6]}"
    cluster = Cluster(redis_url, queue, url, state_dir, specs=SPECS)
    try:
        cluster.start("c1", concurrency=CONCURRENCY)
        env = {"FLOWSTONE_QUEUE": queue, "FLOWSTONE_DATABASE_URL": url}
        for _ in range(2):  # every pool process gets to use every pipeline's store
            for spec in SPECS:
                done = cli("run", spec, "--force", "--timeout", "60", env=env)
                assert done.returncode == 0, done.stdout + done.stderr
        # the client processes have exited: every backend left is the worker's
        held = _admin("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name)
        # one store per process for the five pipelines: a pool process uses at most two
        # connections at once (its step and the step's lease renewal), the main process
        # the sweeper's (and the start-up check's); five stores held 15 here
        assert isinstance(held, int) and 1 <= held <= 2 * (CONCURRENCY + 1), held
    finally:
        cluster.stop_all()
        cluster.purge()
