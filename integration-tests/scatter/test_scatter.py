"""Scatter on real Celery workers and Postgres: exactly-once recording, the window, the
gather, thresholds, killed workers and readers, duplicate deliveries, batching, rate limit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import SPEC, ScatterCluster, load_pipeline

pytestmark = pytest.mark.integration


def item_rows(pipeline: Any, run_id: str, asset: str, key: str) -> list[Any]:
    from flowstone.partitions import encode_partition

    coord = pipeline.scatter_coordinator
    partition = encode_partition(key)

    async def q(conn: Any) -> list[Any]:
        return list(await conn.fetch(
            "SELECT i.idx, i.state, i.attempts FROM flowstone.scatter_items i JOIN "
            "flowstone.scatter_barriers b ON b.id = i.barrier_id WHERE b.run_id = $1 AND "
            "b.asset = $2 AND b.partition = $3", run_id, asset, partition))

    return coord.database(pipeline.runner).run(q)


def executions(run_id: str) -> int:
    import redis

    return int(redis.Redis.from_url(os.environ["FLOWSTONE_BROKER_URL"]).get(
        os.environ.get("FLOWSTONE_IT_KEYS", "fs-it:") + f"exec:{run_id}") or 0)


def test_ten_thousand_items_gather_once(cluster: ScatterCluster) -> None:
    cluster.start("w1", concurrency=2)
    cluster.start("w2", concurrency=2)
    pipeline = load_pipeline(cluster.queue)
    from flowstone_scatter import CeleryScatterCoordinator, scatter_status

    assert isinstance(pipeline.scatter_coordinator, CeleryScatterCoordinator)
    result = pipeline.run("total", partition="10000", timeout=120)
    assert result.status == "succeeded", result.error
    assert result.value == sum(i * i for i in range(10_000))
    assert pipeline.get("squares", partition="10000")[:4] == [0, 1, 4, 9]
    status = scatter_status(pipeline, result.run_id, "squares", "10000")
    assert (status.state, status.succeeded, status.failed, status.pending, status.running) == (
        "succeeded", 10_000, 0, 0, 0)


def test_trivial_items_travel_in_grown_chunks_each_recorded_once(
    cluster: ScatterCluster,
) -> None:
    """Default chunks adapt to the items' pace: trivial items end up many to a message
    (the barrier's chunk size grew past its first 100 units, within max_concurrent // 4),
    and every item still ran once and was recorded once."""
    cluster.start("w1", concurrency=2)
    pipeline = load_pipeline(cluster.queue)
    result = pipeline.run("wide_squares", partition="30000", timeout=180)
    assert result.status == "succeeded", result.error
    assert result.value == [i * i for i in range(30_000)]
    rows = item_rows(pipeline, result.run_id, "wide_squares", "30000")
    assert len(rows) == 30_000
    assert {(r["state"], r["attempts"]) for r in rows} == {("succeeded", 1)}

    async def chunk(conn: Any) -> Any:
        return await conn.fetchval(
            "SELECT chunk_units FROM flowstone.scatter_barriers WHERE run_id = $1",
            result.run_id)

    grown = pipeline.scatter_coordinator.database(pipeline.runner).run(chunk)
    assert 100 < grown <= 1000, grown
    pipeline.close()


def test_threshold_stops_the_scatter_and_fails_the_asset(cluster: ScatterCluster) -> None:
    cluster.start("w1")
    pipeline = load_pipeline(cluster.queue)
    result = pipeline.run("flaky", partition="2000", timeout=120)
    assert result.status == "failed"
    text = " ".join(str(s.error) for s in result.steps) + str(result.error)
    assert "failure threshold of 5.0%" in text and "multiple of five" in text
    rows = item_rows(pipeline, result.run_id, "flaky", "2000")
    started = sum(1 for r in rows if r["state"] in ("succeeded", "failed"))
    assert started < 2000  # the remaining items were never run


def test_sigkilled_worker_every_item_recorded_once(cluster: ScatterCluster) -> None:
    victim = cluster.start("victim", concurrency=2, FLOWSTONE_IT_SLOW="1")
    cluster.start("survivor", concurrency=2, FLOWSTONE_IT_SLOW="1")
    pipeline = load_pipeline(cluster.queue)
    result = pipeline.run("counted", partition="3000-kill", wait=False)
    from celery_it import wait_for

    wait_for(lambda: executions(result.run_id) > 300, what="items to start")
    os.killpg(victim.pid, signal.SIGKILL)
    final = wait_for(lambda: pipeline.result(result.run_id).status in ("succeeded", "failed")
                     and pipeline.result(result.run_id), timeout=120, what="the run to finish")
    assert final.status == "succeeded", final.error
    assert final.value == [i + 1 for i in range(3000)]
    rows = item_rows(pipeline, result.run_id, "counted", "3000-kill")
    assert len(rows) == 3000 and all(r["state"] == "succeeded" for r in rows)
    assert Counter(r["idx"] for r in rows).most_common(1)[0][1] == 1


def test_every_message_delivered_twice_counts_once(cluster: ScatterCluster) -> None:
    cluster.start("w1", FLOWSTONE_IT_DUPLICATE="1")
    cluster.start("w2", FLOWSTONE_IT_DUPLICATE="1")
    pipeline = load_pipeline(cluster.queue)
    result = pipeline.run("counted", partition="1500-dup", timeout=120)
    assert result.status == "succeeded", result.error
    assert result.value == [i + 1 for i in range(1500)]
    status = __import__("flowstone_scatter").scatter_status(
        pipeline, result.run_id, "counted", "1500-dup")
    assert status.succeeded == 1500 and status.failed == 0
    # each message's twin found its items claimed by a live runner and ran none of them
    # (before the item claims, the twins ran them again: executions > 1500)
    assert executions(result.run_id) == 1500
    rows = item_rows(pipeline, result.run_id, "counted", "1500-dup")
    assert {r["attempts"] for r in rows} == {1}


def test_reader_resumes_after_being_killed(cluster: ScatterCluster, state_dir: Path) -> None:
    (state_dir / "reader-killed").unlink(missing_ok=True)
    with (state_dir / "items.jsonl").open("w") as f:
        for n in range(500):
            f.write(json.dumps({"n": n}) + "\n")
    cluster.start("w1")
    pipeline = load_pipeline(cluster.queue)
    result = pipeline.run("read_items", partition="reader", timeout=120)
    assert (state_dir / "reader-killed").exists()  # the reader really died mid-stream
    assert result.status == "succeeded", result.error
    assert result.value == [n * 10 for n in range(500)]
    rows = item_rows(pipeline, result.run_id, "read_items", "reader")
    assert sorted(r["idx"] for r in rows) == list(range(500))


def test_batching_by_bytes(cluster: ScatterCluster) -> None:
    cluster.start("w1")
    pipeline = load_pipeline(cluster.queue)
    result = pipeline.run("by_bytes", partition="60", timeout=60)
    assert result.status == "succeeded", result.error
    value = result.value
    assert [v["len"] for v in value] == [1, 2, 3, 4, 5, 6, 7]  # equal items run once
    batches = {v["batch"]: v["bytes"] for v in value}
    assert len(batches) > 1 and all(size <= 40 for size in batches.values())


def test_rate_limit_is_shared_by_two_worker_processes(cluster: ScatterCluster) -> None:
    cluster.start("w1", concurrency=2)
    cluster.start("w2", concurrency=2)
    pipeline = load_pipeline(cluster.queue)
    result = pipeline.run("limited", partition="60", timeout=120)
    assert result.status == "succeeded", result.error
    starts = sorted(t for t, _ in result.value)
    assert len({pid for _, pid in result.value}) >= 2  # more than one process ran items
    # 20/s across all workers (a limit per process would allow 40/s here): any second of
    # the items' own clocks holds at most 20 starts, +1 for the boundary and +3 for the
    # scheduling delay between the database granting a start and the item reading its
    # clock (a loaded machine delays some items more than others)
    for i, t in enumerate(starts):
        assert sum(1 for s in starts[i:] if s < t + 1.0) <= 24


def test_cli_status_reports_counts(cluster: ScatterCluster) -> None:
    cluster.start("w1")
    pipeline = load_pipeline(cluster.queue)
    result = pipeline.run("squares", partition="300-cli", timeout=60)
    assert result.status == "succeeded"
    out = subprocess.run(
        [sys.executable, "-m", "flowstone", "scatter", "status", SPEC, result.run_id, "squares",
         "--partition", "300-cli", "--json"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "FLOWSTONE_QUEUE": cluster.queue})
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["succeeded"], data["failed"], data["pending"], data["state"]) == (
        300, 0, 0, "succeeded")


def test_retry_failed_items_of_a_succeeded_scatter(cluster: ScatterCluster) -> None:
    cluster.start("w1")
    pipeline = load_pipeline(cluster.queue)
    key = f"200-retry-{os.getpid()}"
    first = pipeline.run("once_flaky", partition=key, timeout=60)
    assert first.status == "succeeded", first.error
    flaky = [i for i in range(200) if i % 25 == 3]
    assert [i for i, v in enumerate(first.value) if v is None] == flaky
    assert executions(first.run_id) == 200

    retry = pipeline.retry_failed_items(first.run_id, "once_flaky", key)

    assert retry.status == "succeeded", retry.error
    assert retry.value == [i * 2 for i in range(200)]
    assert executions(retry.run_id) == len(flaky)  # only the failed items ran again
    rows = item_rows(pipeline, retry.run_id, "once_flaky", key)
    assert len(rows) == 200 and all(r["state"] == "succeeded" for r in rows)
    assert sorted(r["idx"] for r in rows if r["attempts"]) == flaky
    earlier = next(m for m in pipeline.result(first.run_id).materializations
                   if m.asset == "once_flaky")
    assert pipeline.load_materialization(earlier) == first.value  # unchanged

    # the CLI does the same for a succeeded run; nothing failed in the retry run
    out = subprocess.run(
        [sys.executable, "-m", "flowstone", "scatter", "retry-failed", SPEC, retry.run_id,
         "--partition", key, "--asset", "once_flaky", "--json"], capture_output=True,
        text=True, timeout=60, env={**os.environ, "FLOWSTONE_QUEUE": cluster.queue})
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["status"], data["retry_of"]) == ("succeeded", retry.run_id)
    assert data["run_id"] != retry.run_id and executions(data["run_id"]) == 0
