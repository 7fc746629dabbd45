"""The scatter tables' names and Alembic history (no database needed)."""

from __future__ import annotations

import pytest
from alembic.script import ScriptDirectory

from flowstone.errors import UsageError
from flowstone_io_postgres import migrate
from flowstone_scatter.schema import MIGRATIONS, Tables


def test_head_matches_the_shipped_revisions() -> None:
    script = ScriptDirectory.from_config(migrate.alembic_config("flowstone", MIGRATIONS))
    assert script.get_current_head() == MIGRATIONS.head
    # a history of its own: never mixed with flowstone-io-postgres's revisions
    assert {r.revision for r in script.walk_revisions()} == {
        "scatter_0001", "scatter_0002", "scatter_0003", "scatter_0004", "scatter_0005"}
    assert MIGRATIONS.version_table != migrate.VERSION_TABLE


def test_flowstone_db_upgrade_finds_the_scatter_tables() -> None:
    assert MIGRATIONS in migrate.installed_sets()


def test_tables_follow_the_schema_quoted() -> None:
    t = Tables.in_schema("tenant_a")
    assert (t.schema, t.barriers, t.items) == (
        "tenant_a", '"tenant_a".scatter_barriers', '"tenant_a".scatter_items')
    with pytest.raises(UsageError):
        Tables.in_schema('a"; DROP TABLE x; --')
