"""The migrations' SQL files: readable, one per version of a function, never patched."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowstone.errors import PluginLoadError, UsageError
from flowstone_io_postgres import migrate

VERSIONS = Path(migrate.__file__).with_name("migrations") / "versions"
SQL = Path(migrate.__file__).with_name("migrations") / "sql"


def test_function_sql_substitutes_the_quoted_schema_and_drops_the_header() -> None:
    text = migrate.function_sql("0003_finish_step.sql", "tenant_a")
    assert text.startswith('CREATE FUNCTION "tenant_a".finish_step(')
    assert "{schema}" not in text and "--" not in text.splitlines()[0]
    assert "'{}'" in text  # SQL literals with braces are left alone
    with pytest.raises(UsageError):
        migrate.function_sql("0003_finish_step.sql", 'x"; DROP SCHEMA public; --')


def test_every_sql_file_is_run_by_a_revision_and_no_revision_loads_another() -> None:
    scripts = "".join(p.read_text() for p in VERSIONS.glob("*.py"))
    for sql in SQL.glob("*.sql"):
        assert f'"{sql.name}"' in scripts, sql.name
    assert "spec_from_file_location" not in scripts and ".replace(" not in scripts


def test_each_finish_step_file_is_a_whole_function() -> None:
    for name in ("0002_finish_step.sql", "0003_finish_step.sql"):
        text = (SQL / name).read_text()
        body = text.split("$fn$")
        assert len(body) == 3 and body[1].strip().endswith("END"), name
    assert "p_claim_owner" in (SQL / "0003_finish_step.sql").read_text()
    assert "p_claim_owner" not in (SQL / "0002_finish_step.sql").read_text()


def test_a_broken_plugin_migration_set_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    point = metadata.EntryPoint("broken", "json:dumps", migrate.ENTRY_POINT_GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [point])
    with pytest.raises(PluginLoadError, match=r"broken.*not a flowstone_io_postgres\.migrate"):
        migrate.installed_sets()
