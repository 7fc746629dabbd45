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

Server-side functions are kept as readable ``.sql`` files in ``migrations/sql`` (one file per
released version of a function, never edited afterwards); a revision runs its file through
:func:`function_sql`.

Other plugins keep their tables in the same schema with a history of their own: each ships a
:class:`MigrationSet` (its revision scripts and its own version table) under the entry point
group ``flowstone.postgres_migrations``. ``flowstone db upgrade`` (and ``auto_migrate=True``)
upgrades this package's revisions, then every installed set, in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from flowstone.errors import PluginLoadError, StorageError
from flowstone_io_postgres._sql import Db
from flowstone_io_postgres.identifiers import quote_ident, validate_ident

__all__ = [
    "ENTRY_POINT_GROUP",
    "HEAD_REVISION",
    "VERSION_TABLE",
    "MigrationSet",
    "alembic_config",
    "check_migrations",
    "check_schema",
    "current_revision",
    "function_sql",
    "installed_sets",
    "upgrade",
]

HEAD_REVISION = "0011"
"""The newest revision this package ships; the store refuses older (or unknown) schemas."""

VERSION_TABLE = "flowstone_postgres_version"
"""Alembic's version table, inside the FlowStone schema (named per plugin so plugins that
share the schema keep separate histories)."""

ENTRY_POINT_GROUP = "flowstone.postgres_migrations"
"""Where plugins declare their :class:`MigrationSet` (``name = "package.module:ATTRIBUTE"``)."""

_KNOWN = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010",
          "0011")
_MIGRATIONS = Path(__file__).with_name("migrations")


@dataclass(frozen=True, slots=True)
class MigrationSet:
    """A plugin's tables in the FlowStone schema: Alembic revisions with their own history.

    The revisions run in this package's Alembic environment, which hands each of them the
    schema name as ``context.config.attributes["flowstone_schema"]`` (quote it with
    :func:`~flowstone_io_postgres.identifiers.quote_ident`).

    Args:
        name: the plugin, for messages (e.g. ``"flowstone-scatter"``).
        versions: the directory of the plugin's revision scripts.
        version_table: the table, in the FlowStone schema, that records the set's revision
            (one per plugin, so histories never mix).
        head: the newest revision the plugin ships; :func:`check_migrations` refuses others.

    Example (``flowstone_scatter.schema``)::

        MIGRATIONS = MigrationSet("flowstone-scatter", Path(__file__).with_name("migrations"),
                                  "flowstone_scatter_version", "scatter_0002")
    """

    name: str
    versions: Path
    version_table: str
    head: str

    def __post_init__(self) -> None:
        validate_ident(self.version_table, what="version table")


OWN = MigrationSet("flowstone-io-postgres", _MIGRATIONS / "versions", VERSION_TABLE,
                   HEAD_REVISION)


def function_sql(name: str, schema: str) -> str:
    """The SQL of ``migrations/sql/<name>`` for ``schema``: its leading ``--`` comment lines
    dropped and every ``{schema}`` replaced by the quoted schema name."""
    lines = (_MIGRATIONS / "sql" / name).read_text(encoding="utf-8").splitlines(keepends=True)
    while lines and lines[0].startswith("--"):
        lines.pop(0)
    return "".join(lines).replace("{schema}", quote_ident(schema, what="schema"))


def replace_function(function: str, sql_file: str) -> None:
    """In a revision: drop ``function`` (its one version there is) from the migrated schema
    and create it from ``migrations/sql/<sql_file>`` (see :func:`function_sql`)."""
    from alembic import context, op

    schema = context.config.attributes["flowstone_schema"]
    op.execute(f"DROP FUNCTION IF EXISTS {quote_ident(schema, what='schema')}.{function}")
    op.execute(function_sql(sql_file, schema))


def installed_sets() -> tuple[MigrationSet, ...]:
    """The :class:`MigrationSet` of every installed plugin (entry point group
    ``flowstone.postgres_migrations``), by name.

    Raises:
        PluginLoadError: a plugin's entry point fails to load or is not a MigrationSet.
    """
    found: list[MigrationSet] = []
    for point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        try:
            value = point.load()
        except Exception as exc:
            raise PluginLoadError(
                f"the Postgres migrations of plugin {point.name!r} ({point.value}) failed to "
                f"load: {type(exc).__name__}: {exc}. Reinstall or uninstall that plugin."
            ) from exc
        if not isinstance(value, MigrationSet):
            raise PluginLoadError(
                f"entry point {point.name!r} in {ENTRY_POINT_GROUP} ({point.value}) is a "
                f"{type(value).__name__}, not a flowstone_io_postgres.migrate.MigrationSet"
            )
        found.append(value)
    return tuple(found)


def alembic_config(schema: str, migrations: MigrationSet = OWN) -> Config:
    """An Alembic ``Config`` for ``migrations`` (default: this package's) in ``schema``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("version_locations", str(migrations.versions))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["flowstone_schema"] = validate_ident(schema, what="schema")
    cfg.attributes["flowstone_version_table"] = migrations.version_table
    return cfg


def _run_upgrade(
    connection: Connection, schema: str, revision: str, migrations: MigrationSet
) -> None:
    cfg = alembic_config(schema, migrations)
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def upgrade(
    url: URL, schema: str, revision: str = "head", *, plugins: bool = True
) -> None:
    """Create or upgrade the FlowStone schema to ``revision`` (idempotent, race-free).

    ``url`` is a normalised ``postgresql+asyncpg`` URL; one connection is opened for the
    upgrade and closed after it. Upgrading to ``"head"`` with ``plugins`` also brings every
    installed plugin's :class:`MigrationSet` to its head, in the same transaction.
    """
    extra = installed_sets() if plugins and revision == "head" else ()
    quoted = quote_ident(schema, what="schema")
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                {"key": f"flowstone_io_postgres.migrate.{schema}"},
            )
            await conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
            await conn.run_sync(_run_upgrade, schema, revision, OWN)
            for migrations in extra:
                await conn.run_sync(_run_upgrade, schema, "head", migrations)
    finally:
        await engine.dispose()


async def current_revision(db: Db, schema: str, migrations: MigrationSet = OWN) -> str | None:
    """The applied revision of ``migrations`` (default: this package's) in ``schema``, or
    None when they never ran there."""
    table = f"{quote_ident(schema, what='schema')}.{quote_ident(migrations.version_table)}"
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


def check_migrations(
    revision: str | None, migrations: MigrationSet, *, schema: str, where: str
) -> None:
    """Raise a StorageError telling the user what to run unless a plugin's ``migrations``
    are at their head (``revision`` from :func:`current_revision`)."""
    if revision == migrations.head:
        return
    state = "do not exist" if revision is None else f"are at revision {revision!r}"
    raise StorageError(
        f"the tables of {migrations.name} in schema {schema!r} at {where} {state}; this "
        f"version needs revision {migrations.head!r}. Run `flowstone db upgrade` with "
        f"{migrations.name} installed (or construct the run store with auto_migrate=True)."
    )
