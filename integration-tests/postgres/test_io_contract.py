"""PostgresIOManager against the core IOManager contract, plus Postgres-specific cases."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pyarrow as pa
import pytest

from flowstone.errors import StorageError, UsageError, ValueNotFoundError
from flowstone.protocols import StorageKey
from flowstone.testing.io_contract import IOManagerContract
from flowstone_io_postgres import PostgresIOManager

pytestmark = pytest.mark.integration


@pytest.fixture
def user_table_manager(postgres_url: str) -> Iterator[PostgresIOManager]:
    # A user-named table in a schema that does not exist yet: both are created on first use.
    manager = PostgresIOManager(postgres_url, table=f"contract_{uuid.uuid4().hex[:8]}.values")
    yield manager
    manager.close()


class TestPostgresIOManager(IOManagerContract):
    supports_batch_loading = True

    @pytest.fixture
    def io_manager(self, user_table_manager: PostgresIOManager) -> Iterator[PostgresIOManager]:
        yield user_table_manager


def _key(asset: str = "orders", item: int | None = None) -> StorageKey:
    return StorageKey("sales", asset, "2024-03-01", f"run-{uuid.uuid4().hex[:8]}", item)


def test_default_table_comes_from_the_migration(migrated_url: str) -> None:
    manager = PostgresIOManager(migrated_url)
    try:
        location = manager.store(_key(), {"rows": [1, 2]})
        assert location.startswith("postgres:")
        assert manager.load(location) == {"rows": [1, 2]}
    finally:
        manager.close()


def test_url_defaults_to_the_environment(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWSTONE_DATABASE_URL", migrated_url)
    manager = PostgresIOManager()
    try:
        assert manager.load(manager.store(_key(), "hello")) == "hello"
    finally:
        manager.close()


def test_arrow_table_round_trips(user_table_manager: PostgresIOManager) -> None:
    table = pa.table({"id": [1, 2, 3], "name": ["a", "b", None], "price": [1.5, 2.0, 3.25]})
    loaded = user_table_manager.load(user_table_manager.store(_key(), table))
    assert isinstance(loaded, pa.Table)
    assert loaded.equals(table) and loaded.schema == table.schema


def test_pickle_needs_the_opt_in(postgres_url: str) -> None:
    table = f"pickles_{uuid.uuid4().hex[:8]}.values"
    trusting = PostgresIOManager(postgres_url, table=table, allow_pickle=True)
    strict = PostgresIOManager(postgres_url, table=table)
    try:
        location = trusting.store(_key(), complex(1, 2))
        assert trusting.load(location) == complex(1, 2)
        with pytest.raises(StorageError, match="allow_pickle"):
            strict.load(location)
    finally:
        trusting.close()
        strict.close()


def test_json_values_are_queryable_in_sql(user_table_manager: PostgresIOManager) -> None:
    location = user_table_manager.store(_key(), {"b": 1, "a": 1e16})
    assert user_table_manager.load(location) == {"b": 1, "a": 1e16}
    assert list(user_table_manager.load(location)) == ["b", "a"]  # key order kept (json type)


def test_foreign_locations_are_rejected(user_table_manager: PostgresIOManager) -> None:
    for bad in ("postgres:' OR 1=1 --", "s3://bucket/key", "postgres:" + "g" * 32):
        with pytest.raises(ValueNotFoundError):
            user_table_manager.load(bad)
        assert not user_table_manager.exists(bad)


@pytest.mark.parametrize(
    "table",
    ['x"; DROP TABLE flowstone.runs; --', "a.b.c", "public.values table", "1abc", ""],
)
def test_table_names_are_validated(postgres_url: str, table: str) -> None:
    with pytest.raises(UsageError):
        PostgresIOManager(postgres_url, table=table)
