"""Scatter leases and the rate limiter run on the database's clock (issue 11, defect 3).

A runner whose process clock is 400 s fast is simulated in this process: ``time.time`` and
the sweeper's ``now`` run 400 s ahead while that runner (B) works, and ``time.sleep`` only
records what it was asked to wait. Runner A holds live claims on two items and on a
reader. B must not run A's items, take A's reader or have its sweep re-send A's items, and
it must keep the barrier's rate (1 item/s): it waits for its second item's slot.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import ScatterCluster, load_pipeline

pytestmark = pytest.mark.integration

SKEW_S = 400.0


@pytest.fixture
def pipeline(cluster: ScatterCluster) -> Iterator[Any]:
    p = load_pipeline(cluster.queue)
    yield p
    p.close()


def _barrier(p: Any, run_id: str, asset: str, partition: str, *, reader_done: bool) -> int:
    """A running barrier of 8 items (one per unit): units 0-3 sent (queued), 4-7 pending."""
    from flowstone_scatter import barrier

    db = p.scatter_coordinator.database(p.runner)
    rows = [(i, i, str(i), json.dumps(i)) for i in range(8)]
    bid, created = db.run(
        lambda c: barrier.create(
            c,
            db.t,
            pipeline=p.name,
            run_id=run_id,
            asset=asset,
            partition=partition,
            token=uuid.uuid4().hex,
            rows=rows,
            units_total=8,
            max_concurrent=4,
            chunk_units=4,
            reader_done=reader_done,
            expected_total=8,
        )
    )
    assert created

    async def send(conn: Any) -> None:
        await conn.execute(
            f"UPDATE {db.t.items} SET state = 'queued', queued_at = now() "
            "WHERE barrier_id = $1 AND unit < 4",
            bid,
        )
        await conn.execute(
            f"UPDATE {db.t.barriers} SET next_unit = 4, inflight = 4 WHERE id = $1", bid
        )

    db.run(send)
    return int(bid)


def _items(db: Any, bid: int) -> dict[int, tuple[str, str | None, int]]:
    rows = db.run(
        lambda c: c.fetch(
            f"SELECT idx, state, claimed_by, attempts FROM {db.t.items} WHERE barrier_id = $1", bid
        )
    )
    return {int(r["idx"]): (r["state"], r["claimed_by"], int(r["attempts"])) for r in rows}


def test_a_fast_runner_takes_no_live_claim_and_keeps_the_rate(
    cluster: ScatterCluster,
    pipeline: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flowstone.partitions import encode_partition
    from flowstone_scatter import barrier
    from flowstone_scatter.items import run_chunk, run_reader
    from flowstone_scatter.messages import ChunkMessage
    from flowstone_scatter.tasks import sweep

    cluster.start("w1")
    numbers = pipeline.run("numbers", partition="8-skew", timeout=120)
    assert numbers.status == "succeeded", numbers.error
    cluster.stop_all()  # from here on, only this process's two "runners" act
    db = pipeline.scatter_coordinator.database(pipeline.runner)
    partition = encode_partition("8-skew")
    bid = _barrier(pipeline, numbers.run_id, "one_per_second", partition, reader_done=True)
    reading = _barrier(
        pipeline, f"run-{uuid.uuid4().hex[:12]}", "read_items", "", reader_done=False
    )
    lease = float(pipeline.runner.runtime.policies.lease_seconds)
    try:
        # runner A (a right clock) claims units 0-1 and the reader: live claims
        _, held = db.run(
            lambda c: barrier.load_chunk(c, db.t, bid, 0, 2, pipeline.name, "runner-a", lease)
        )
        assert [r.idx for r in held] == [0, 1]
        assert db.run(
            lambda c: barrier.claim_reader(c, db.t, reading, "runner-a", lease, pipeline.name)
        )
        waits: list[float] = []
        real_time = time.time
        with monkeypatch.context() as m:
            m.setattr(time, "time", lambda: real_time() + SKEW_S)
            m.setattr(time, "sleep", waits.append)
            # runner B, 400 s fast, gets the message for units 0-3
            ran = run_chunk(
                pipeline.runner, ChunkMessage(pipeline.name, bid, 0, 4), owner="runner-b"
            )
            taken = run_reader(pipeline.runner, ChunkMessage(pipeline.name, reading))
            sweep(pipeline, datetime.now(UTC) + timedelta(seconds=SKEW_S), recover_after=1.0)
        assert ran == 2  # only the unclaimed units 2 and 3
        items = _items(db, bid)
        assert items[0] == items[1] == ("queued", "runner-a", 1)  # A's, untouched
        assert items[2][0] == items[3][0] == "succeeded"
        assert taken == 0  # A's reader stays A's
        assert (
            db.run(
                lambda c: c.fetchval(
                    f"SELECT reader_owner FROM {db.t.barriers} WHERE id = $1", reading
                )
            )
            == "runner-a"
        )
        # B reserved two slots of the 1/s bucket in database time and waited for the second
        # one (before the fix it compared the database's epoch with its fast time.time()
        # and waited for nothing)
        assert len(waits) == 1 and 0 < waits[0] <= 1.0
    finally:
        for b in (bid, reading):
            db.run(lambda c, b=b: c.execute(f"DELETE FROM {db.t.items} WHERE barrier_id = $1", b))
            db.run(lambda c, b=b: c.execute(f"DELETE FROM {db.t.barriers} WHERE id = $1", b))
