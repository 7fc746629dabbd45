"""A scatter chunk or reader message is checked against its barrier's pipeline (issue 11,
defect 4): with one database shared by two pipelines, a message naming this worker's
pipeline and another pipeline's barrier runs no item and is logged as rejected."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ScatterCluster, load_pipeline

pytestmark = pytest.mark.integration

OTHER = "billing_scatter"  # the pipeline the barriers below belong to


@pytest.fixture
def pipeline(cluster: ScatterCluster) -> Iterator[Any]:
    p = load_pipeline(cluster.queue)
    yield p
    p.close()


def _barrier(db: Any, *, reader_done: bool) -> int:
    """A running barrier of ``OTHER`` with one queued (sent) item of asset ``counted``."""
    from flowstone_scatter import barrier

    rows = [(0, 0, "0", json.dumps(1))]
    bid, created = db.run(lambda c: barrier.create(
        c, db.t, pipeline=OTHER, run_id=f"run-{uuid.uuid4().hex[:12]}", asset="counted",
        partition="", token=uuid.uuid4().hex, rows=rows, units_total=1, max_concurrent=10,
        chunk_units=1, reader_done=reader_done, expected_total=1))
    assert created
    # its item is in flight, as the coordinator leaves it once the chunk message is sent
    db.run(lambda c: c.execute(
        f"UPDATE {db.t.items} SET state = 'queued' WHERE barrier_id = $1", bid))
    return int(bid)


def _drop(db: Any, bid: int) -> None:
    async def go(conn: Any) -> None:
        await conn.execute(f"DELETE FROM {db.t.items} WHERE barrier_id = $1", bid)
        await conn.execute(f"DELETE FROM {db.t.barriers} WHERE id = $1", bid)

    db.run(go)


def test_a_chunk_of_another_pipelines_barrier_runs_nothing(
    pipeline: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from flowstone_scatter import barrier
    from flowstone_scatter.items import run_chunk, run_reader
    from flowstone_scatter.messages import ChunkMessage

    db = pipeline.scatter_coordinator.database(pipeline.runner)
    bid = _barrier(db, reader_done=True)
    reading = _barrier(db, reader_done=False)
    try:
        with caplog.at_level(logging.WARNING, logger="flowstone.scatter"):
            assert run_chunk(pipeline.runner, ChunkMessage(pipeline.name, bid, 0, 1)) == 0
        assert f"rejected a scatter chunk message for barrier {bid}" in caplog.text

        async def attempts(conn: Any) -> list[tuple[str, int]]:
            rows = await conn.fetch(
                f"SELECT state, attempts FROM {db.t.items} WHERE barrier_id = $1", bid)
            return [(r["state"], int(r["attempts"])) for r in rows]

        assert db.run(attempts) == [("queued", 0)]  # never loaded, never run
        # the reader of another pipeline's barrier is not taken either
        assert run_reader(pipeline.runner, ChunkMessage(pipeline.name, reading)) == 0
        held = db.run(lambda c: c.fetchval(
            f"SELECT reader_owner FROM {db.t.barriers} WHERE id = $1", reading))
        assert held is None
        # the barrier's own pipeline does get its chunk and its reader
        b, rows = db.run(lambda c: barrier.load_chunk(c, db.t, bid, 0, 1, OTHER,
                                                          "w", 30.0))
        assert b is not None and [r.idx for r in rows] == [0]
        assert db.run(lambda c: barrier.claim_reader(c, db.t, reading, "w", 30.0, OTHER))
    finally:
        _drop(db, bid)
        _drop(db, reading)
