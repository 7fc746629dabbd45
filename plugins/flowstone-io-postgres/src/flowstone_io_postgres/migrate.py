"""Schema migrations: Alembic, driven in code through the async engine.

The migration scripts ship inside the package (``flowstone_io_postgres/migrations``); the
Alembic configuration is built here, so no ``alembic.ini`` is needed. Alembic runs
synchronously on the asyncpg connection through ``AsyncConnection.run_sync``, so no second
database driver is required. The version table lives in the FlowStone schema.

Concurrent upgrades (several workers starting with ``auto_migrate=True``) are serialised by a
transaction-scoped advisory lock; PostgreSQL DDL is transactional, so an upgrade applies
completely or not at all.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from flowstone.errors import StorageError
from flowstone_io_postgres.identifiers import quote_ident, validate_ident

__all__ = [
    "HEAD_REVISION",
    "VERSION_TABLE",
    "alembic_config",
    "check_schema",
    "current_revision",
    "upgrade",
]

HEAD_REVISION = "0001"
"""The newest revision this package ships; the store refuses older (or unknown) schemas."""

VERSION_TABLE = "flowstone_postgres_version"
"""Alembic's version table, inside the FlowStone schema (named per plugin so plugins that
share the schema keep separate histories)."""

_KNOWN = ("0001",)


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


async def upgrade(engine: AsyncEngine, schema: str, revision: str = "head") -> None:
    """Create or upgrade the FlowStone schema to ``revision`` (idempotent, race-free)."""
    quoted = quote_ident(schema, what="schema")
    async with engine.begin() as conn:
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
            {"key": f"flowstone_io_postgres.migrate.{schema}"},
        )
        await conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
        await conn.run_sync(_run_upgrade, schema, revision)


async def current_revision(engine: AsyncEngine, schema: str) -> str | None:
    """The schema's applied revision, or None when it was never migrated."""
    table = f"{quote_ident(schema, what='schema')}.{quote_ident(VERSION_TABLE)}"
    async with engine.connect() as conn:
        exists = await conn.scalar(text("SELECT to_regclass(:t)"), {"t": table})
        if exists is None:
            return None
        value = await conn.scalar(text(f"SELECT version_num FROM {table}"))
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
