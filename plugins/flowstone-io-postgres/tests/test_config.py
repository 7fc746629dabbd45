"""Unit tests that need no database: URLs, identifiers, settings, packaging."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
from alembic.script import ScriptDirectory

import flowstone_io_postgres
from flowstone.errors import UsageError
from flowstone_io_postgres import PostgresIOManager, PostgresItemReader, PostgresRunStore
from flowstone_io_postgres.identifiers import parse_qualified_name, quote_ident
from flowstone_io_postgres.migrate import HEAD_REVISION, alembic_config
from flowstone_io_postgres.urls import normalize_url, resolve_url, safe_url


def test_public_api_is_pinned() -> None:
    assert flowstone_io_postgres.__all__ == [
        "PostgresIOManager",
        "PostgresItemReader",
        "PostgresRunStore",
        "__version__",
    ]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pw@db:5432/fs",
        "postgres://u:pw@db:5432/fs",
        "postgresql+asyncpg://u:pw@db:5432/fs",
        "postgresql+psycopg://u:pw@db:5432/fs",
    ],
)
def test_accepted_urls_are_normalised_to_asyncpg(url: str) -> None:
    parsed = normalize_url(url)
    assert parsed.drivername == "postgresql+asyncpg"
    assert (parsed.host, parsed.port, parsed.database) == ("db", 5432, "fs")


@pytest.mark.parametrize("url", ["sqlite:///x.db", "mysql://u@h/db", "mssql+pyodbc://h/d"])
def test_other_databases_are_refused(url: str) -> None:
    with pytest.raises(UsageError, match="postgresql://"):
        normalize_url(url)


def test_password_is_masked() -> None:
    shown = safe_url(normalize_url("postgresql://alice:hunter2@db/fs"))
    assert "hunter2" not in shown and "***" in shown


def test_url_comes_from_the_environment_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWSTONE_DATABASE_URL", "postgres://env@db/fs")
    assert resolve_url(None).username == "env"
    monkeypatch.delenv("FLOWSTONE_DATABASE_URL")
    with pytest.raises(UsageError, match="FLOWSTONE_DATABASE_URL"):
        resolve_url(None)


def test_constructors_do_not_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 1 is closed: constructing must still succeed, because nothing connects yet.
    url = "postgresql://u@127.0.0.1:1/none"
    PostgresRunStore(url).close()
    PostgresIOManager(url, table="my_schema.values").close()
    PostgresItemReader(table="items", key_column="id", url=url).close()


@pytest.mark.parametrize(
    "name",
    ['x"; DROP TABLE y; --', "a b", "1abc", "", "a" * 64, "naïve", "a-b", "a.b", "a\x00"],
)
def test_identifiers_reject_anything_but_plain_names(name: str) -> None:
    with pytest.raises(UsageError):
        quote_ident(name)


def test_qualified_names_parse_strictly() -> None:
    assert parse_qualified_name("flowstone.asset_values").sql == '"flowstone"."asset_values"'
    assert str(parse_qualified_name("values")) == "public.values"
    for bad in ("a.b.c", "a.", ".b", '"a".b'):
        with pytest.raises(UsageError):
            parse_qualified_name(bad)


def test_head_revision_matches_the_shipped_migrations() -> None:
    assert ScriptDirectory.from_config(alembic_config("flowstone")).get_current_head() == (
        HEAD_REVISION
    )


def test_entry_points_are_declared() -> None:
    eps = importlib.metadata.entry_points()
    found = {
        (group, ep.name, ep.value)
        for group in ("flowstone.run_stores", "flowstone.io_managers",
                      "flowstone.item_readers", "flowstone.cli")
        for ep in eps.select(group=group)
        if ep.value.startswith("flowstone_io_postgres")
    }  # fmt: skip
    assert found == {
        ("flowstone.run_stores", "postgres", "flowstone_io_postgres.store:from_url"),
        ("flowstone.io_managers", "postgres", "flowstone_io_postgres.io_manager:PostgresIOManager"),
        ("flowstone.item_readers", "postgres", "flowstone_io_postgres.reader:PostgresItemReader"),
        ("flowstone.cli", "db", "flowstone_io_postgres.cli:register"),
    }


def test_import_has_no_side_effects() -> None:
    code = (
        "import os, threading, flowstone_io_postgres as m; "
        "assert threading.active_count() == 1; print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PATH": "", "FLOWSTONE_DATABASE_URL": "not a url"},
    )  # fmt: skip
    assert out.stdout.strip() == "ok"
