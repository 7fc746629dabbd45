"""PostgresItemReader: the core reader contract, 10k rows with resume, and validation."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from flowstone.errors import UsageError
from flowstone.testing.reader_contract import ItemReaderContract
from flowstone_io_postgres import PostgresItemReader

pytestmark = pytest.mark.integration


def _fill(url: str, table: str, rows: Sequence[dict[str, Any]]) -> None:
    async def go() -> None:
        dsn = make_url(url).render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, name text)")
            await conn.copy_records_to_table(
                table, records=[(r["id"], r["name"]) for r in rows], columns=["id", "name"]
            )
        finally:
            await conn.close()

    asyncio.run(go())


class TestPostgresItemReader(ItemReaderContract):
    @pytest.fixture(autouse=True)
    def _url(self, postgres_url: str) -> None:
        self.url = postgres_url
        self.tables: dict[str, str] = {}

    def sample_items(self) -> list[Any]:
        return [{"id": i * 3, "name": f"customer {i}"} for i in range(7)]

    def make_reader(self, items: Sequence[Any], tmp_path: Path) -> PostgresItemReader:
        signature = json.dumps(list(items))
        if signature not in self.tables:
            table = f"items_{uuid.uuid4().hex[:10]}"
            _fill(self.url, table, items)
            self.tables[signature] = table
        return PostgresItemReader(table=self.tables[signature], key_column="id", url=self.url)


def test_ten_thousand_rows_with_a_crash_and_resume(postgres_url: str) -> None:
    table = f"big_{uuid.uuid4().hex[:10]}"
    rows = [{"id": i, "name": f"n{i}"} for i in range(10_000)]
    _fill(postgres_url, table, rows)
    reader = PostgresItemReader(table=f"public.{table}", key_column="id", url=postgres_url,
                                columns=["id", "name"], page_size=700)  # fmt: skip
    reader.init({})
    seen: list[dict[str, Any]] = []
    for _ in range(6):
        seen.extend(reader.read(1000))
    checkpoint = json.loads(json.dumps(reader.checkpoint()))
    assert reader.count() == 10_000
    reader.close()  # "crash": the position survives only in the checkpoint

    resumed = PostgresItemReader(table=table, key_column="id", url=postgres_url, page_size=700)
    resumed.init({})
    resumed.restore(checkpoint)
    while page := resumed.read(1000):
        seen.extend(page)
    resumed.close()
    assert seen == rows


def test_trusted_query_with_bound_parameters(postgres_url: str) -> None:
    table = f"q_{uuid.uuid4().hex[:10]}"
    _fill(postgres_url, table, [{"id": i, "name": "even" if i % 2 == 0 else "odd"}
                                for i in range(20)])  # fmt: skip
    reader = PostgresItemReader(
        f"SELECT id, upper(name) AS label FROM {table} WHERE name = :kind",
        key_column="id", url=postgres_url, params={"kind": "odd"},
    )  # fmt: skip
    reader.init({})
    try:
        items = reader.read(100)
        assert [i["id"] for i in items] == list(range(1, 20, 2))
        assert {i["label"] for i in items} == {"ODD"}
    finally:
        reader.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"table": "t; DROP TABLE x", "key_column": "id"},
        {"table": "items", "key_column": "id) OR (1=1"},
        {"table": "items", "key_column": "id", "columns": ["id", "name; --"]},
        {"table": "items", "key_column": "id", "columns": ["name"]},
        {"query": "DELETE FROM items", "key_column": "id"},
        {"key_column": "id"},
    ],
)
def test_configuration_is_validated(kwargs: dict[str, Any], postgres_url: str) -> None:
    with pytest.raises(UsageError):
        PostgresItemReader(url=postgres_url, **kwargs)
