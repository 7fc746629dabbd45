"""Orphaned values are pruned on Postgres too: a fenced-out attempt's value in the
``asset_values`` table is deleted once older than ``value_retention``; the committed value
and one an approval points at stay (issue 11, defect 2)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import flowstone as fs
from flowstone.protocols import StorageKey
from flowstone_io_postgres import PostgresIOManager, PostgresRunStore

pytestmark = pytest.mark.integration


@pytest.fixture
def parts(migrated_url: str) -> Iterator[tuple[PostgresRunStore, PostgresIOManager]]:
    store = PostgresRunStore(migrated_url, pool_size=2, max_overflow=1)
    io = PostgresIOManager(migrated_url, pool_size=2)
    yield store, io
    io.close()
    store.close()


def test_orphans_are_pruned_and_referenced_values_kept(
    parts: tuple[PostgresRunStore, PostgresIOManager],
) -> None:
    @fs.asset
    def orders() -> list[int]:
        return [1, 2, 3]

    @fs.asset
    def trade(orders: list[int]) -> Any:
        return fs.WaitForApproval(message="big", value=sum(orders), timeout=timedelta(days=9))

    store, io = parts
    name = f"prune_{uuid.uuid4().hex[:8]}"
    p = fs.Pipeline(name, [orders, trade], store=store, io_managers={"default": io})
    try:
        run = p.run("trade")
        committed = store.find_materialization(name, "orders", "", run_id=run.run_id)
        [approval] = p.approvals()
        assert committed is not None and committed.location and approval.location
        orphans = [
            io.store(StorageKey(name, "orders", "", run.run_id, attempt=n), [n])
            for n in range(5, 8)
        ]
        assert p.prune(datetime.now(UTC) + timedelta(days=2)) == 3
        assert not any(io.exists(o) for o in orphans)
        assert io.exists(committed.location) and io.exists(approval.location)
        assert p.get("orders") == [1, 2, 3]
    finally:
        p.close()
