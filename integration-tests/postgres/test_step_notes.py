"""Step notes on Postgres: migration 0005 moves the parallel clocks and failed-join records
that earlier versions kept as cursors, and the store reads them where they now live."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from flowstone_io_postgres import PostgresRunStore, migrate
from flowstone_io_postgres.urls import normalize_url
from flowstone_parallel import JOIN_NOTE, join_record

pytestmark = pytest.mark.integration

JOIN = '{"v":1,"mode":"all_or_nothing","outcome":"failed","error":"branch maps failed",' \
    '"recorded_at":"2024-03-01T10:00:00+00:00","branches":[]}'


@pytest.fixture
def schema(shared_store: PostgresRunStore) -> Iterator[str]:
    name = f"notes_{uuid.uuid4().hex[:10]}"
    yield name
    shared_store.run_on_connection(
        lambda conn: conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'), action="cleanup"
    )


def test_0005_moves_parallel_cursors_to_step_notes(
    migrated_url: str, shared_store: PostgresRunStore, schema: str
) -> None:
    url = normalize_url(migrated_url)
    asyncio.run(migrate.upgrade(url, schema, "0004", plugins=False))
    shared_store.run_on_connection(  # cursors as a FlowStone before step notes wrote them
        lambda conn: conn.execute(
            f'INSERT INTO "{schema}".cursors (name, value, updated_at) VALUES '
            "('parallel-start:run-1:enrich', '2024-03-01T10:00:00+00:00', now()), "
            "('flowstone.parallel.join:run-1:briefing:2024-03-01:eu', $1, now()), "
            "('sensor:news:inbox', 'offset=7', now())",
            JOIN,
        ),
        action="writing old cursors",
    )
    asyncio.run(migrate.upgrade(url, schema))
    store = PostgresRunStore(migrated_url, schema=schema, pool_size=1, max_overflow=0)
    try:
        assert store.get_step_note("run-1", "enrich", "", "parallel.started") == (
            "2024-03-01T10:00:00+00:00"
        )
        assert store.get_step_note("run-1", "briefing", "2024-03-01:eu", JOIN_NOTE) == JOIN
        record = join_record(store, "run-1", "briefing", "2024-03-01:eu")
        assert record is not None and (record.outcome, record.error) == (
            "failed", "branch maps failed")  # fmt: skip
        # the sensor's cursor is the daemon's and stays; the moved ones are gone
        assert store.get_cursor("sensor:news:inbox") == "offset=7"
        assert store.get_cursor("parallel-start:run-1:enrich") is None
        assert store.add_step_note("run-1", "enrich", "", "parallel.started", "later") == (
            "2024-03-01T10:00:00+00:00"
        )
    finally:
        store.close()
