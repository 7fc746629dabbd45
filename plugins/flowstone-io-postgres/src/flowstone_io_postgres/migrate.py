"""Schema migrations: Alembic, driven in code through SQLAlchemy's async engine.

The migration scripts ship inside the package (``flowstone_io_postgres/migrations``); the
Alembic configuration is built here, so no ``alembic.ini`` is needed. Alembic runs
synchronously on an asyncpg connection through ``AsyncConnection.run_sync``, so no second
database driver is required. The version table lives in the FlowStone schema.

SQLAlchemy is used for migrations only (a short-lived engine per upgrade); everything else
talks to asyncpg directly (:mod:`flowstone_io_postgres._runtime`).

Concurrent upgrades (several workers starting with ``auto_migrate=True``) are serialised by a
transaction-scoped advisory lock; PostgreSQL DDL is transactional, so an upgrade applies
completely or not at all.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from flowstone.errors import StorageError
from flowstone_io_postgres._sql import Db
from flowstone_io_postgres.identifiers import quote_ident, validate_ident

__all__ = [
    "HEAD_REVISION",
    "VERSION_TABLE",
    "alembic_config",
    "check_schema",
    "current_revision",
    "upgrade",
]

HEAD_REVISION = "0004"
"""The newest revision this package ships; the store refuses older (or unknown) schemas."""

VERSION_TABLE = "flowstone_postgres_version"
"""Alembic's version table, inside the FlowStone schema (named per plugin so plugins that
share the schema keep separate histories)."""

_KNOWN = ("0001", "0002", "0003", "0004")


def alembic_config(schema: str) -> Config:
    """An Alembic ``Config`` pointing at the packaged migrations for ``schema``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["flowstone_schema"] = validate_ident(schema, what="schema")
    return cfg


def _run_upgrade(connection: Connection, schema: str, revision: str) -> None:
    cfg = alembic_config(schema)
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def upgrade(url: URL, schema: str, revision: str = "head") -> None:
    """Create or upgrade the FlowStone schema to ``revision`` (idempotent, race-free).

    ``url`` is a normalised ``postgresql+asyncpg`` URL; one connection is opened for the
    upgrade and closed after it.
    """
    quoted = quote_ident(schema, what="schema")
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                {"key": f"flowstone_io_postgres.migrate.{schema}"},
            )
            await conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
            await conn.run_sync(_run_upgrade, schema, revision)
    finally:
        await engine.dispose()


async def current_revision(db: Db, schema: str) -> str | None:
    """The schema's applied revision, or None when it was never migrated."""
    table = f"{quote_ident(schema, what='schema')}.{quote_ident(VERSION_TABLE)}"
    if await db.fetchval("SELECT to_regclass($1)::text", table) is None:
        return None
    value = await db.fetchval(f"SELECT version_num FROM {table}")
    return None if value is None else str(value)


def check_schema(revision: str | None, *, schema: str, where: str) -> None:
    """Raise a StorageError telling the user what to run unless ``revision`` is current."""
    if revision == HEAD_REVISION:
        return
    if revision is None or revision in _KNOWN:
        state = "does not exist" if revision is None else f"is at revision {revision}"
        raise StorageError(
            f"the FlowStone schema {schema!r} at {where} {state}; this version of "
            f"flowstone-io-postgres needs revision {HEAD_REVISION}. Run `flowstone db upgrade` "
            "(or construct the store with auto_migrate=True)."
        )
    raise StorageError(
        f"the FlowStone schema {schema!r} at {where} is at revision {revision!r}, which this "
        "version of flowstone-io-postgres does not know: the database was upgraded by a newer "
        "release. Upgrade flowstone-io-postgres."
    )
