"""Alembic environment for flowstone-io-postgres.

Migrations run only through :func:`flowstone_io_postgres.migrate.upgrade` (used by
``flowstone db upgrade`` and ``auto_migrate=True``), which hands over an open connection and
the schema name in ``config.attributes``; the version table is this package's, or a plugin's
(see :class:`flowstone_io_postgres.migrate.MigrationSet`).
"""

from __future__ import annotations

from alembic import context

from flowstone_io_postgres.migrate import VERSION_TABLE

config = context.config
connection = config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "flowstone-io-postgres migrations run through `flowstone db upgrade`, "
        "not through the alembic command line"
    )

context.configure(
    connection=connection,
    version_table=config.attributes.get("flowstone_version_table", VERSION_TABLE),
    version_table_schema=config.attributes["flowstone_schema"],
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
