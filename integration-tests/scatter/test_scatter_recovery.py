"""Scatter recovery on real Celery workers and Postgres (issue 11 §1, §7): the barrier closes
only when the step really finished, a slow gather keeps its claim, lost broker messages are
re-sent within the recover interval (not after a lease), finished barriers are pruned.

The workers run with the Celery suite's short settings (1 s sweeps, 4 s lease, 10 s
recover interval) unless a test says otherwise.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from celery_it import wait_for
from conftest import ScatterCluster, load_pipeline

pytestmark = pytest.mark.integration

FLUSHED_REDIS = os.environ.get("FLOWSTONE_IT_REDIS_SCATTER", "redis://127.0.0.1:6379/15")
"""A Redis database of this module's own: the lost-message test flushes it."""


def _counter(name: str) -> int:
    r = redis.Redis.from_url(os.environ["FLOWSTONE_BROKER_URL"])
    return int(r.get(os.environ.get("FLOWSTONE_IT_KEYS", "fs-it:") + name) or 0)


def _barrier(pipeline: Any, run_id: str, asset: str) -> Any:
    db = pipeline.scatter_coordinator.database(pipeline.runner)
    return db.run(
        lambda c: c.fetchrow(
            f"SELECT * FROM {db.t.barriers} WHERE run_id = $1 AND asset = $2", run_id, asset
        )
    )


def test_a_completion_not_applied_leaves_the_barrier_open_until_the_step_finishes(
    cluster: ScatterCluster,
) -> None:
    # The first completion of the step is not applied. Before the fix finalize closed the
    # barrier as succeeded anyway: the gathered value was lost and the run stayed waiting.
    cluster.start("w1", FLOWSTONE_IT_UNAPPLIED_ONCE="1")
    pipeline = load_pipeline(cluster.queue)
    try:
        result = pipeline.run("gathered", partition="30-unapplied", timeout=90)
        assert result.status == "succeeded", result.error
        assert result.value == sum(i + 1 for i in range(30))
        b = _barrier(pipeline, result.run_id, "gathered")
        assert b["state"] == "succeeded" and b["finisher"] is None
        step = pipeline.store.get_step(result.run_id, "gathered", b["partition"])
        assert step is not None and step.state == "succeeded"
        # the sweeper finished it again: the gather ran once per completion attempt
        assert _counter("gather:30") == 2
        log = cluster.log_of(cluster.procs[0][0])
        assert "the barrier stays finishing" in log
    finally:
        pipeline.close()


def _slow_run(cluster: ScatterCluster, slow: dict[str, str], asset: str,
              partition: str | None) -> tuple[Any, Any]:
    """Run ``asset`` on two workers whose slow step (``slow``: env) takes three 4 s leases;
    return the pipeline (close it) and the succeeded result."""
    cluster.start("w1", **slow)
    cluster.start("w2", **slow)
    pipeline = load_pipeline(cluster.queue)
    result = pipeline.run(asset, partition=partition, timeout=180)
    assert result.status == "succeeded", result.error
    return pipeline, result


def test_a_gather_longer_than_the_lease_runs_once(cluster: ScatterCluster) -> None:
    # Before the fix the sweeper saw the finishing barrier idle for a lease and ran
    # finalize (and the gather) again: 3 times.
    pipeline, result = _slow_run(cluster, {"FLOWSTONE_IT_GATHER_S": "12"}, "gathered",
                                 "40-slow-gather")
    try:
        assert result.value == sum(i + 1 for i in range(40))
        assert _counter("gather:40") == 1
        assert _barrier(pipeline, result.run_id, "gathered")["state"] == "succeeded"
    finally:
        pipeline.close()


def test_an_item_longer_than_the_lease_on_a_live_worker_runs_once(cluster: ScatterCluster) -> None:
    # Before the fix the item's claim was renewed only between units, so the sweeper took
    # it for a dead runner's and other workers ran it again: 3 times.
    pipeline, result = _slow_run(cluster, {"FLOWSTONE_IT_ITEM_S": "12"}, "one_slow_item",
                                 "3-slow-item")
    try:
        assert result.value == [0, 1, 2]
        assert _counter(f"exec:{result.run_id}") == 3  # each item ran once
    finally:
        pipeline.close()


def test_a_page_read_longer_than_the_lease_on_a_live_worker_is_read_once(
    cluster: ScatterCluster, state_dir: Any,
) -> None:
    # Before the fix the reader beat only per page, so the sweeper re-sent the reader and
    # another worker read page 2 again.
    (state_dir / "slow-items.jsonl").write_text("".join(f'{{"n": {i}}}\n' for i in range(150)))
    pipeline, result = _slow_run(cluster, {"FLOWSTONE_IT_READ_S": "12"}, "slow_read_items",
                                 None)
    try:
        assert result.value == list(range(150))
        assert _counter("reads:slow-reader") == 4  # pages of 50, 50, 50 and the empty end
    finally:
        pipeline.close()


def test_messages_lost_in_a_broker_flush_are_resent_within_the_recover_interval(
    client_env: str,
    database_url: str,
    redis_url: str,
    state_dir: Any,
) -> None:
    """The broker (a Redis database of this test's own) is flushed while a window of
    messages waits in the queue. The lease is 300 s, the recover interval 2 s: the lost
    items are re-sent as lost (never claimed), not as dead runners' (claim older than a
    lease), and the scatter finishes."""
    from flowstone_celery import CeleryExecutor, load_settings

    broker = redis.Redis.from_url(FLUSHED_REDIS)
    try:
        broker.ping()
    except Exception as exc:  # the same rule as the suite's other services
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis {FLUSHED_REDIS} is not reachable: {exc}")
        pytest.skip(f"Redis {FLUSHED_REDIS} is not reachable: {exc}")
    cluster = ScatterCluster(
        FLUSHED_REDIS, f"fs-it-scatter-lost-{os.getpid()}", database_url, state_dir
    )
    pipeline = load_pipeline(cluster.queue)
    pipeline.use_executor(
        CeleryExecutor(load_settings(broker_url=FLUSHED_REDIS, queue=cluster.queue))
    )
    try:
        proc = cluster.start(
            "w1",
            concurrency=1,
            FLOWSTONE_LEASE_SECONDS="300",
            FLOWSTONE_RECOVER_AFTER="2",
            FLOWSTONE_PREFETCH="1",
            FLOWSTONE_IT_COUNTS=redis_url,
        )
        started = pipeline.run("slow_items", partition="200-lost", wait=False)
        run_id = started.run_id
        # one chunk of 2 items runs, a few are prefetched, the rest of the window's 20
        # messages wait in the broker's queue: flush them away
        wait_for(lambda: _counter(f"exec:{run_id}") >= 5, timeout=120, what="items to start")
        broker.flushdb()
        result = pipeline.wait(run_id, timeout=120)[0]  # the lease is 300 s
        assert result.status == "succeeded", result.error
        assert result.value == [i * 3 for i in range(200)]
        log = cluster.log_of(proc)
        resent = [line for line in log.splitlines() if "lost items (queued, never claimed" in line]
        assert resent, log[-3000:]
        assert all(" and 0 items of dead runners" in line for line in resent)
        b = _barrier(pipeline, run_id, "slow_items")
        assert (b["state"], b["succeeded"], b["failed"]) == ("succeeded", 200, 0)
    finally:
        pipeline.close()
        cluster.stop_all()
        broker.flushdb()


def test_barriers_finished_longer_ago_than_the_retention_are_pruned(
    cluster: ScatterCluster,
) -> None:
    from flowstone_scatter.tasks import prune

    cluster.start("w1")
    pipeline = load_pipeline(cluster.queue)
    try:
        old = pipeline.run("squares", partition="20-prune-old", timeout=120)
        new = pipeline.run("squares", partition="20-prune-new", timeout=120)
        assert old.status == new.status == "succeeded"
        db = pipeline.scatter_coordinator.database(pipeline.runner)
        aged = _barrier(pipeline, old.run_id, "squares")["id"]
        kept = _barrier(pipeline, new.run_id, "squares")["id"]
        # the old barrier finished 31 days ago (database time): past the 30-day retention
        db.run(
            lambda c: c.execute(
                f"UPDATE {db.t.barriers} SET updated_at = now() - interval '31 days' WHERE id = $1",
                aged,
            )
        )
        retention = pipeline.runner.runtime.policies.route_retention
        assert prune(db, pipeline.name, retention) == 1

        def count(bid: int) -> tuple[int, int]:
            async def go(conn: Any) -> tuple[int, int]:
                b = await conn.fetchval(f"SELECT count(*) FROM {db.t.barriers} WHERE id = $1", bid)
                i = await conn.fetchval(
                    f"SELECT count(*) FROM {db.t.items} WHERE barrier_id = $1", bid
                )
                return int(b), int(i)

            return db.run(go)

        assert count(aged) == (0, 0)  # the barrier and its 20 items (and results) are gone
        assert count(kept) == (1, 20)
        assert prune(db, pipeline.name, retention) == 0
    finally:
        pipeline.close()


def test_a_barrier_whose_wait_is_gone_is_closed_as_failed_not_retried_forever(
    cluster: ScatterCluster,
) -> None:
    """A finishing barrier whose step's deferred wait does not exist (pruned, or never
    made) cannot complete: it is closed as failed with the reason, instead of being
    released to the next sweep (which would run the gather again every sweep)."""
    import uuid

    from flowstone_scatter import barrier, finish

    pipeline = load_pipeline(cluster.queue)
    db = pipeline.scatter_coordinator.database(pipeline.runner)
    bid, _ = db.run(
        lambda c: barrier.create(
            c, db.t, pipeline=pipeline.name, run_id=f"run-{uuid.uuid4().hex[:12]}",
            asset="gathered", partition="", token=uuid.uuid4().hex, rows=[], units_total=0,
            max_concurrent=1, chunk_units=1, reader_done=True, expected_total=0,
        )
    )  # fmt: skip
    try:
        db.run(lambda c: c.execute(
            f"UPDATE {db.t.barriers} SET state = 'finishing', outcome = 'gather' "
            "WHERE id = $1", bid))  # fmt: skip
        pipeline.scatter_coordinator.finalize(pipeline.runner, bid)
        b = db.run(lambda c: c.fetchrow(f"SELECT * FROM {db.t.barriers} WHERE id = $1", bid))
        assert b["state"] == "failed" and b["finisher"] is None
        assert "unknown deferred-step token" in b["error"]
        assert finish.claim(db, bid, "someone", 10.0) is None  # nothing left to finish
    finally:
        db.run(lambda c: c.execute(f"DELETE FROM {db.t.barriers} WHERE id = $1", bid))
        pipeline.close()


def test_lost_items_are_resent_with_backoff_and_a_claim_resets_it(
    cluster: ScatterCluster,
) -> None:
    """Items queued and never claimed are re-sent after the recover interval, then after
    twice that, and so on (a window waiting in a backlogged queue is not re-sent every
    interval); a claim resets the count. Ages are set in the database, nothing waits."""
    import uuid

    from flowstone_scatter import barrier
    from flowstone_scatter.tasks import sweep

    pipeline = load_pipeline(cluster.queue)
    db = pipeline.scatter_coordinator.database(pipeline.runner)
    rows = [(i, i, str(i), str(i)) for i in range(2)]
    bid, _ = db.run(
        lambda c: barrier.create(
            c, db.t, pipeline=pipeline.name, run_id=f"run-{uuid.uuid4().hex[:12]}",
            asset="counted", partition="", token=uuid.uuid4().hex, rows=rows, units_total=2,
            max_concurrent=2, chunk_units=2, reader_done=True, expected_total=2,
        )
    )  # fmt: skip

    def age(seconds: float) -> None:  # the items were (re-)sent that long ago, unclaimed
        db.run(lambda c: c.execute(
            f"UPDATE {db.t.items} SET state = 'queued', queued_at = now() - "
            "make_interval(secs => $2) WHERE barrier_id = $1", bid, seconds))  # fmt: skip

    def resends() -> list[int]:
        sql = f"SELECT resends FROM {db.t.items} WHERE barrier_id = $1 ORDER BY idx"
        got = db.run(lambda c: c.fetch(sql, bid))
        return [int(r["resends"]) for r in got]

    def swept() -> None:
        sweep(pipeline, datetime.now(UTC), recover_after=10.0)

    try:
        db.run(lambda c: c.execute(
            f"UPDATE {db.t.barriers} SET next_unit = 2, inflight = 2, updated_at = now() "
            "WHERE id = $1", bid))  # fmt: skip
        age(15)
        swept()
        assert resends() == [1, 1]  # lost for 15 s > 10 s: re-sent
        age(15)
        swept()
        assert resends() == [1, 1]  # 15 s < 20 s: the second re-send waits twice as long
        age(25)
        swept()
        assert resends() == [2, 2]
        lease = float(pipeline.runner.runtime.policies.lease_seconds)
        db.run(lambda c: barrier.load_chunk(c, db.t, bid, 0, 2, pipeline.name, "r", lease))
        assert resends() == [0, 0]  # claimed: the count starts again
    finally:
        db.run(lambda c: c.execute(f"DELETE FROM {db.t.items} WHERE barrier_id = $1", bid))
        db.run(lambda c: c.execute(f"DELETE FROM {db.t.barriers} WHERE id = $1", bid))
        pipeline.close()


def test_a_reader_message_never_claimed_is_resent_after_the_recover_interval(
    cluster: ScatterCluster,
) -> None:
    """A reader nobody ever claimed (its message was lost) is re-sent once the recover
    interval passed, not after a lease (300 s here), and once per interval only."""
    import uuid

    from flowstone_scatter import barrier
    from flowstone_scatter.tasks import sweep

    pipeline = load_pipeline(cluster.queue)
    db = pipeline.scatter_coordinator.database(pipeline.runner)
    assert pipeline.runner.runtime.policies.lease_seconds == 300
    bid, _ = db.run(
        lambda c: barrier.create(
            c, db.t, pipeline=pipeline.name, run_id=f"run-{uuid.uuid4().hex[:12]}",
            asset="read_items", partition="", token=uuid.uuid4().hex, rows=[], units_total=0,
            max_concurrent=4, chunk_units=1, reader_done=False, expected_total=None,
        )
    )  # fmt: skip

    def sent() -> Any:
        sql = f"SELECT read_sent_at FROM {db.t.barriers} WHERE id = $1"
        return db.run(lambda c: c.fetchval(sql, bid))

    try:
        db.run(lambda c: c.execute(
            f"UPDATE {db.t.barriers} SET created_at = now() - interval '15 seconds', "
            "updated_at = now() WHERE id = $1", bid))  # fmt: skip
        sweep(pipeline, datetime.now(UTC), recover_after=10.0)
        first = sent()
        assert first is not None  # 15 s unclaimed > 10 s: the reader message was re-sent
        sweep(pipeline, datetime.now(UTC), recover_after=10.0)
        assert sent() == first  # not again within the interval
    finally:
        db.run(lambda c: c.execute(f"DELETE FROM {db.t.barriers} WHERE id = $1", bid))
        pipeline.close()
