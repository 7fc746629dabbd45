"""The scatter tables: where they live, and the Alembic history that creates them.

They live in the run store's schema (``PostgresRunStore(schema=...)``, ``flowstone`` by
default) and are created by ``flowstone db upgrade`` (or the store's ``auto_migrate``):
flowstone-io-postgres upgrades every installed :class:`~flowstone_io_postgres.migrate.MigrationSet`
with its own schema, and this plugin declares :data:`MIGRATIONS` under the entry point group
``flowstone.postgres_migrations``. Their revision is recorded in the schema's
``flowstone_scatter_version`` table, apart from flowstone-io-postgres's own history.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from flowstone_io_postgres.identifiers import quote_ident
from flowstone_io_postgres.migrate import MigrationSet

__all__ = ["MIGRATIONS", "Tables"]

MIGRATIONS: Final = MigrationSet(
    name="flowstone-scatter",
    versions=Path(__file__).with_name("migrations"),
    version_table="flowstone_scatter_version",
    head="scatter_0005",
)


@dataclass(frozen=True, slots=True)
class Tables:
    """The quoted names of the scatter tables in one schema."""

    schema: str
    barriers: str
    items: str

    @classmethod
    def in_schema(cls, schema: str) -> Tables:
        """The tables in ``schema`` (validated and quoted)."""
        q = quote_ident(schema, what="schema")
        return cls(schema, f"{q}.scatter_barriers", f"{q}.scatter_items")
