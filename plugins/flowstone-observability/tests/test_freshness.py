"""Freshness comes from the run store: a fresh process (no events seen) exports it."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from helpers import DAYS, etl, value
from prometheus_client import CollectorRegistry

from flowstone_observability.freshness import FreshnessCollector, FreshnessReads, read_freshness


def _scrape(pipelines: list[Any]) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(FreshnessCollector(pipelines, refresh_seconds=0.001))
    return registry


def test_a_process_that_saw_no_event_reads_freshness_from_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    writer = etl([], store=url)
    writer.run("total")
    for day in (date(2024, 1, 2), date(2024, 1, 5)):
        writer.run("daily", partition=day)
    writer.close()

    reader = etl([], store=url)  # another process would see the same file
    registry = _scrape([reader])
    labels = {"pipeline": "etl", "asset": "total"}
    stamp = value(registry, "flowstone_asset_last_materialized_timestamp_seconds", **labels)
    assert 0 < datetime.now(UTC).timestamp() - stamp < 600
    daily = {"pipeline": "etl", "asset": "daily"}
    assert value(registry, "flowstone_asset_newest_partition_timestamp_seconds", **daily) == (
        datetime(2024, 1, 5, tzinfo=UTC).timestamp())
    assert value(registry, "flowstone_asset_materialized_partitions", **daily) == 2
    assert value(registry, "flowstone_asset_missing_partitions", **daily) == len(DAYS.keys()) - 2
    assert value(registry, "flowstone_store_up", pipeline="etl") == 1
    # never materialized: no timestamp series at all (not a misleading 0)
    assert registry.get_sample_value("flowstone_asset_last_materialized_timestamp_seconds",
                                     {"pipeline": "etl", "asset": "broken"}) is None
    reader.close()


def test_invalidated_values_do_not_count_as_fresh() -> None:
    pipeline = etl([])
    pipeline.run("daily", partition=date(2024, 1, 3))
    pipeline.invalidate("daily", partition=date(2024, 1, 3))
    rows = {r.asset: r for r in read_freshness(pipeline)}
    assert rows["daily"].last_materialized is None
    assert rows["daily"].missing == len(DAYS.keys())


class _CountingStore:
    """A store with the FreshnessReads capability, answering from another store's data."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def last_materialized(self, pipeline: str) -> dict[str, datetime]:
        self.calls.append("last")
        out: dict[str, datetime] = {}
        for m in self.inner.list_materializations(pipeline, limit=1000):
            if m.state == "succeeded" and not m.invalidated and m.finished_at is not None:
                out[m.asset] = max(out.get(m.asset, m.finished_at), m.finished_at)
        return out

    def materialized_partitions(self, pipeline: str, asset: str) -> list[str]:
        self.calls.append(asset)
        return sorted({m.partition for m in self.inner.list_materializations(
            pipeline, asset=asset, limit=1000) if m.state == "succeeded" and not m.invalidated})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_stores_with_the_capability_answer_through_it() -> None:
    pipeline = etl([])
    pipeline.run("daily", partition=date(2024, 1, 4))
    fast = _CountingStore(pipeline.store)
    assert isinstance(fast, FreshnessReads)

    class View:
        name = pipeline.name
        dag = pipeline.dag
        store = fast

    rows = {r.asset: r for r in read_freshness(View())}
    assert fast.calls[0] == "last" and "daily" in fast.calls
    assert rows["daily"].materialized == 1
    assert rows["daily"].newest_partition == datetime(2024, 1, 4, tzinfo=UTC)
    assert rows == {r.asset: r for r in read_freshness(pipeline)}  # same as the fallback


def test_an_unreachable_store_reports_store_up_zero_and_keeps_serving(tmp_path: Path) -> None:
    pipeline = etl([])

    class Broken:
        name = "etl"
        dag = pipeline.dag

        class store:
            @staticmethod
            def list_materializations(*args: Any, **kwargs: Any) -> list[Any]:
                raise ConnectionError("database is down")

    registry = _scrape([Broken()])
    assert value(registry, "flowstone_store_up", pipeline="etl") == 0


def test_the_sqlite_store_answers_with_the_capability_like_the_fallback(
    tmp_path: Path,
) -> None:
    pipeline = etl([], store=f"sqlite:///{tmp_path / 'runs.db'}")
    assert isinstance(pipeline.store, FreshnessReads)
    pipeline.run("total")
    for day in (date(2024, 1, 2), date(2024, 1, 7)):
        pipeline.run("daily", partition=day)
    pipeline.invalidate("daily", partition=date(2024, 1, 7))

    class Plain:  # only the reads every RunStore has
        def __init__(self, inner: Any) -> None:
            self.list_materializations = inner.list_materializations

    class View:
        name = pipeline.name
        dag = pipeline.dag
        store = Plain(pipeline.store)

    assert not isinstance(View.store, FreshnessReads)
    fast = {r.asset: r for r in read_freshness(pipeline)}
    slow = {r.asset: r for r in read_freshness(View())}
    assert fast == slow
    assert fast["daily"].materialized == 1
    assert fast["daily"].newest_partition == datetime(2024, 1, 2, tzinfo=UTC)
    assert fast["total"].last_materialized is not None
    pipeline.close()


def test_steps_waiting_for_a_worker_are_read_from_the_store() -> None:
    """Queue lag as the store sees it: a parked executor never runs the ready steps."""
    from flowstone.testing import ParkedExecutor

    pipeline = etl([], executor=ParkedExecutor())
    pipeline.run("total", wait=False)
    registry = _scrape([pipeline])
    assert value(registry, "flowstone_steps_ready", pipeline="etl") == 1  # source is ready
    assert value(registry, "flowstone_steps_ready_oldest_seconds", pipeline="etl") >= 0
    assert value(registry, "flowstone_leases_expired", pipeline="etl") == 0
