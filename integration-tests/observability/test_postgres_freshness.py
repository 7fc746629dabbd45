"""The Postgres run store answers freshness through the FreshnessReads capability, with the
same result as the list_materializations fallback."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

import flowstone as fs
from flowstone_observability.freshness import FreshnessReads, read_backlog, read_freshness

pytestmark = pytest.mark.integration

DAYS = fs.DailyPartitions(start=date(2024, 3, 1), end=date(2024, 3, 5))


def test_postgres_freshness_matches_the_fallback(database_url: str) -> None:
    @fs.asset
    def plain() -> int:
        return 1

    @fs.asset(partitions=DAYS)
    def daily(context: fs.Context) -> str:
        return str(context.partition)

    pipeline = fs.Pipeline("obs_fresh", [plain, daily], store=database_url, executor="inprocess")
    try:
        assert isinstance(pipeline.store, FreshnessReads)
        pipeline.run("plain")
        for day in (date(2024, 3, 2), date(2024, 3, 4), date(2024, 3, 5)):
            pipeline.run("daily", partition=day)
        pipeline.invalidate("daily", partition=date(2024, 3, 5))

        class Plain:
            def __init__(self, inner: Any) -> None:
                self.list_materializations = inner.list_materializations

        class View:
            name = pipeline.name
            dag = pipeline.dag
            store = Plain(pipeline.store)

        fast = {r.asset: r for r in read_freshness(pipeline)}
        slow = {r.asset: r for r in read_freshness(View())}
        assert fast == slow
        assert fast["daily"].materialized == 2 and fast["daily"].missing == 3
        assert fast["daily"].newest_partition == datetime(2024, 3, 4, tzinfo=UTC)
        assert fast["plain"].last_materialized is not None
        assert read_backlog(pipeline.store).get("obs_fresh") is None  # nothing waiting
    finally:
        pipeline.close()
