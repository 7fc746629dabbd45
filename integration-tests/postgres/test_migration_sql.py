"""The server-side functions are the ``.sql`` files shipped in the package, verbatim."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from flowstone_io_postgres import migrate
from flowstone_io_postgres.urls import normalize_url

pytestmark = pytest.mark.integration


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _fetch(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    async def go() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(_dsn(url))
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(go())


def _body(url: str, schema: str, function: str) -> str:
    rows = _fetch(
        url,
        "SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = $1 AND p.proname = $2",
        schema,
        function,
    )
    assert len(rows) == 1, rows  # exactly one version of the function
    return str(rows[0][0])


def _file_body(name: str, schema: str) -> str:
    return migrate.function_sql(name, schema).split("$fn$")[1]


@pytest.fixture
def empty_db(postgres_url: str) -> Iterator[str]:
    name = f"flowstone_sql_{uuid.uuid4().hex[:10]}"
    _fetch(postgres_url, f'CREATE DATABASE "{name}"')
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    _fetch(postgres_url, f'DROP DATABASE "{name}" WITH (FORCE)')


def test_functions_at_head_are_the_shipped_sql_files(migrated_url: str) -> None:
    assert _body(migrated_url, "flowstone", "finish_step") == _file_body(
        "0011_finish_step.sql", "flowstone"
    )
    assert _body(migrated_url, "flowstone", "settle_run") == _file_body(
        "0010_settle_run.sql", "flowstone"
    )
    assert _body(migrated_url, "flowstone", "read_values") == _file_body(
        "0004_read_values.sql", "flowstone"
    )


def test_each_revision_creates_its_own_file_in_a_custom_schema(empty_db: str) -> None:
    url = normalize_url(empty_db)
    asyncio.run(migrate.upgrade(url, "tenant_sql", "0002"))
    at_0002 = _body(empty_db, "tenant_sql", "finish_step")
    assert at_0002 == _file_body("0002_finish_step.sql", "tenant_sql")
    assert '"tenant_sql".steps' in at_0002 and "{schema}" not in at_0002
    asyncio.run(migrate.upgrade(url, "tenant_sql", "0003"))
    at_0003 = _body(empty_db, "tenant_sql", "finish_step")
    assert at_0003 == _file_body("0003_finish_step.sql", "tenant_sql")
    asyncio.run(migrate.upgrade(url, "tenant_sql", "0007"))
    at_0007 = _body(empty_db, "tenant_sql", "finish_step")
    assert at_0007 == _file_body("0007_finish_step.sql", "tenant_sql")
    asyncio.run(migrate.upgrade(url, "tenant_sql", "0009"))
    at_0009 = _body(empty_db, "tenant_sql", "finish_step")
    assert at_0009 == _file_body("0008_finish_step.sql", "tenant_sql")
    asyncio.run(migrate.upgrade(url, "tenant_sql", "0010"))
    at_0010 = _body(empty_db, "tenant_sql", "finish_step")
    assert at_0010 == _file_body("0010_finish_step.sql", "tenant_sql")
    asyncio.run(migrate.upgrade(url, "tenant_sql"))
    assert _body(empty_db, "tenant_sql", "finish_step") == _file_body(
        "0011_finish_step.sql", "tenant_sql"
    )
    assert _body(empty_db, "tenant_sql", "settle_run") == _file_body(
        "0010_settle_run.sql", "tenant_sql"
    )
    # the files differ only by the continuation claim: 0003 is not 0002 patched at run time;
    # and only by the fence: 0007 is not 0003 patched at run time
    assert "p_claim_owner" not in at_0002
    assert "p_fence_owner" not in at_0003
    # and 0008 anchors time at the database's clock: 0007 wrote the caller's timestamps
    assert "v_now" not in at_0007
    # and 0010 leaves settling the run to the caller that asks: 0008 always settled
    assert "p_settle" not in at_0009
    # and 0011 lets a batch's calls lock and settle: 0010 left both to separate statements
    assert "p_settle_run" not in at_0010 and "p_lock_runs" not in at_0010


def test_downgrade_restores_the_earlier_file(empty_db: str) -> None:
    from alembic import command
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    url = normalize_url(empty_db)
    asyncio.run(migrate.upgrade(url, "flowstone"))

    def down(connection: Connection) -> None:
        cfg = migrate.alembic_config("flowstone")
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0002")

    async def go() -> None:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(down)
        finally:
            await engine.dispose()

    asyncio.run(go())
    assert _body(empty_db, "flowstone", "finish_step") == _file_body(
        "0002_finish_step.sql", "flowstone"
    )
    assert _fetch(  # 0010's settle_run went with its revision
        empty_db, "SELECT 1 FROM pg_proc WHERE proname = 'settle_run'"
    ) == []
