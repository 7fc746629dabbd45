"""PrometheusObserver on real in-process runs: the series and values a user would graph."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from helpers import DAYS, etl, series, value
from prometheus_client import CollectorRegistry

import flowstone as fs
from flowstone.events import Event
from flowstone.records import RunRecord, StepSpec
from flowstone_observability import PrometheusObserver, attach


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_runs_materializations_routes_scatter_parallel(registry: CollectorRegistry) -> None:
    observer = PrometheusObserver(registry)
    pipeline = etl([observer])
    observer.bind(pipeline)
    for target in ("total", "small", "large", "broken", "squares", "joined"):
        pipeline.run(target)
    v = lambda name, **labels: value(registry, name, **labels)  # noqa: E731
    assert v("flowstone_runs_started_total", pipeline="etl") == 6
    assert v("flowstone_runs_finished_total", pipeline="etl", status="succeeded") == 5
    assert v("flowstone_runs_finished_total", pipeline="etl", status="failed") == 1
    ok = {"pipeline": "etl", "status": "succeeded"}
    assert v("flowstone_materializations_total", asset="source", **ok) == 1  # reused later
    assert v("flowstone_materializations_total", asset="large", pipeline="etl",
             status="skipped") == 1
    assert v("flowstone_materializations_total", asset="broken", pipeline="etl",
             status="failed") == 1
    assert v("flowstone_materialization_duration_seconds_count", pipeline="etl",
             asset="total") == 1
    assert v("flowstone_route_decisions_total", pipeline="etl", asset="size",
             branch="small") == 1
    assert v("flowstone_scatter_items_total", pipeline="etl", asset="squares",
             state="succeeded") == 4
    assert v("flowstone_scatter_progress_ratio", pipeline="etl", asset="squares") == 1.0
    assert v("flowstone_parallel_branches_total", pipeline="etl", asset="joined",
             status="succeeded") == 2
    assert v("flowstone_parallel_joins_total", pipeline="etl", asset="joined",
             status="succeeded") == 1
    assert v("flowstone_io_operations_total", pipeline="etl", asset="total", op="store",
             io_manager="default") >= 1


def test_retries_are_counted(registry: CollectorRegistry) -> None:
    calls = []

    @fs.asset(retry=fs.RetryPolicy(max_attempts=3, base_delay=0.0, jitter=0.0))
    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("not yet")
        return 1

    pipeline = fs.Pipeline("retrying", [flaky], store="memory://",
                           observers=[PrometheusObserver(registry)])
    assert pipeline.run("flaky").status == "succeeded"
    assert value(registry, "flowstone_retries_total", pipeline="retrying", asset="flaky") == 2


def test_queue_lag_and_a_real_take_over_are_observed_from_the_engine(
    registry: CollectorRegistry,
) -> None:
    """The engine's claims report how long each step waited and whether it took over an
    expired lease (``asset.started``'s ``queued_s`` and ``takeover``), so the two series
    fill on real runs, not only from hand-made events."""
    observer = PrometheusObserver(registry)

    @fs.asset
    def source() -> int:
        return 1

    @fs.asset
    def doubled(source: int) -> int:
        return source * 2

    pipeline = fs.Pipeline("lagging", [source, doubled], store="memory://",
                           observers=[observer])
    try:
        assert pipeline.run("doubled").status == "succeeded"
        count = value(registry, "flowstone_queue_lag_seconds_count", pipeline="lagging")
        assert count >= 1  # at least the run's first claim
        assert value(registry, "flowstone_lease_takeovers_total", pipeline="lagging",
                     asset="source") == 0
        # a worker claimed `source` and died: its lease (0 s) expired, another takes over
        now = datetime.now(UTC)
        run = RunRecord("run-taken-over", "lagging", ("source",), "", "running", now, now)
        pipeline.store.create_run(run, [StepSpec("source", "")])
        dead = pipeline.store.claim_step(run.run_id, "source", "", owner="dead-worker",
                                         lease_seconds=0)
        assert dead is not None and not dead.took_over
        pipeline.runner.run_step(run.run_id, "source", "", owner="live-worker")
        assert pipeline.result(run.run_id).status == "succeeded"
        assert value(registry, "flowstone_lease_takeovers_total", pipeline="lagging",
                     asset="source") == 1
        assert value(registry, "flowstone_queue_lag_seconds_count",
                     pipeline="lagging") == count  # a take-over has no queue wait
    finally:
        pipeline.close()


def test_engine_data_keys_for_lag_takeover_io_and_observer_failures(
    registry: CollectorRegistry,
) -> None:
    """Keys the engine may add to event data are read when present."""
    observer = PrometheusObserver(registry)
    observer.on_event(Event("asset.started", "p", "r", "a", "", {"attempt": 2, "queued_s": 0.02,
                                                                   "takeover": True}))
    observer.on_event(Event("io.loaded", "p", "r", "a", "", {"io_manager": "fs", "count": 3,
                                                              "duration_s": 0.1, "bytes": 40}))
    observer.on_event(Event("observer.failed", "p", "r", "a", "",
                            {"observer": "Broken", "failed_kind": "asset.started", "error": "x"}))
    observer.on_event(Event("approval.requested", "p", "r", "a"))
    observer.on_event(Event("approval.decided", "p", "r", "a", "", {"status": "approved"}))
    observer.on_event(Event("gate.opened", "p", "r", "b"))
    observer.on_event(Event("gate.expired", "p", "r", "b"))
    assert value(registry, "flowstone_queue_lag_seconds_count", pipeline="p") == 1
    assert value(registry, "flowstone_lease_takeovers_total", pipeline="p", asset="a") == 1
    assert value(registry, "flowstone_io_operations_total", pipeline="p", asset="a", op="load",
                 io_manager="fs") == 3
    assert value(registry, "flowstone_io_bytes_total", pipeline="p", asset="a", op="load") == 40
    assert value(registry, "flowstone_observer_errors_total", pipeline="p", observer="Broken",
                 kind="asset.started") == 1
    assert value(registry, "flowstone_waits_opened_total", pipeline="p", asset="a",
                 kind="approval") == 1
    assert value(registry, "flowstone_waits_closed_total", pipeline="p", asset="a",
                 kind="approval", outcome="approved") == 1
    assert value(registry, "flowstone_waits_closed_total", pipeline="p", asset="b",
                 kind="gate", outcome="expired") == 1


def test_scatter_progress_is_counted_once_however_often_it_is_reported(
    registry: CollectorRegistry,
) -> None:
    observer = PrometheusObserver(registry)
    for done, failed in ((2, 0), (5, 1), (5, 1), (10, 1)):
        observer.on_event(Event("scatter.progress", "p", "r", "s", "",
                                {"done": done, "failed": failed, "total": 10}))
    assert value(registry, "flowstone_scatter_items_total", pipeline="p", asset="s",
                 state="succeeded") == 9
    assert value(registry, "flowstone_scatter_items_total", pipeline="p", asset="s",
                 state="failed") == 1


def test_ten_thousand_partition_backfill_adds_no_series(registry: CollectorRegistry) -> None:
    """Labels are pipeline and asset names only: the series after 10 partitions are the
    series after 10,000."""
    days = fs.DailyPartitions(start=date(2000, 1, 1), end=date(2000, 1, 1) + timedelta(9999))

    @fs.asset(partitions=days)
    def day(context: fs.Context) -> int:
        return context.partition.toordinal()

    pipeline = fs.Pipeline("wide", [day], store="memory://",
                           observers=[PrometheusObserver(registry)])
    keys = days.keys()
    assert len(keys) == 10_000
    first = pipeline.backfill("day", keys[:10], parallel=2)
    assert len(first.succeeded) == 10
    before = series(registry)
    rest = pipeline.backfill("day", keys[10:], parallel=2)
    assert len(rest.succeeded) == 9_990
    after = series(registry)
    assert after == before
    assert value(registry, "flowstone_materializations_total", pipeline="wide", asset="day",
                 status="succeeded") == 10_000
    assert not any(k in ("partition", "run_id") for _, labels in after for k, _ in labels)


def test_attach_adds_an_observer_to_a_built_pipeline_once(registry: CollectorRegistry) -> None:
    pipeline = etl([])
    observer = PrometheusObserver(registry)
    attach(pipeline, observer)
    attach(pipeline, observer)
    pipeline.run("total")
    assert value(registry, "flowstone_materializations_total", pipeline="etl", asset="total",
                 status="succeeded") == 1


def test_daily_asset_is_labelled_by_name_not_partition(registry: CollectorRegistry) -> None:
    pipeline = etl([PrometheusObserver(registry)])
    for day in DAYS.keys()[:3]:
        pipeline.run("daily", partition=day)
    assert value(registry, "flowstone_materializations_total", pipeline="etl", asset="daily",
                 status="succeeded") == 3
