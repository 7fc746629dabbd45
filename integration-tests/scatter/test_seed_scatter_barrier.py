"""Seeds: single-transaction barrier creation and batched enqueue with backpressure
(seed 000 sections 6 and 7; DESIGN.md sections 5 and 8), on real Celery workers and Postgres.

The database itself is the witness: a trigger on the items table makes the item insert fail
after the barrier row was written, and a statement-level trigger counts the statements that
insert items. Both are dropped again by each test.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ScatterCluster, load_pipeline

pytestmark = pytest.mark.integration

SEED_SPEC = f"{Path(__file__).parent / 'pipelines' / 'seed_scatter.py'}:pipeline"
SCHEMA = "flowstone"


class Db:
    """One asyncpg connection to the test database, outside the workers' pools."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("postgresql+asyncpg://", "postgresql://")

    def __call__(self, sql: str, *args: Any) -> list[Any]:
        import asyncpg

        async def go() -> list[Any]:
            conn = await asyncpg.connect(self.url, timeout=5)
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return asyncio.run(go())


@pytest.fixture
def db(database_url: str) -> Db:
    return Db(database_url)


@pytest.fixture
def trigger(db: Db) -> Iterator[Any]:
    """``install(name, body, when, level)``: a trigger on the items table with a sequence of the
    same name (which counts across rollbacks); all dropped at the end."""
    made: list[str] = []

    def install(name: str, body: str, when: str, level: str) -> None:
        made.append(name)
        db(f"CREATE SEQUENCE {SCHEMA}.{name}")
        db(f"CREATE FUNCTION {SCHEMA}.{name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
           f"BEGIN {body} END $$")
        db(f"CREATE TRIGGER {name} {when} ON {SCHEMA}.scatter_items {level} "
           f"EXECUTE FUNCTION {SCHEMA}.{name}()")

    yield install
    for name in made:
        db(f"DROP TRIGGER IF EXISTS {name} ON {SCHEMA}.scatter_items")
        db(f"DROP FUNCTION IF EXISTS {SCHEMA}.{name}()")
        db(f"DROP SEQUENCE IF EXISTS {SCHEMA}.{name}")


@pytest.fixture
def pipeline(cluster: ScatterCluster) -> Iterator[Any]:
    """The seed scatter pipeline as a client of the cluster's queue (closed at the end)."""
    loaded = load_pipeline(cluster.queue, SEED_SPEC)
    yield loaded
    loaded.close()


def _barriers(db: Db, run_id: str, asset: str, partition: str) -> list[Any]:
    from flowstone.partitions import encode_partition

    return db(f"SELECT b.*, (SELECT count(*) FROM {SCHEMA}.scatter_items i WHERE i.barrier_id "
              f"= b.id) AS items FROM {SCHEMA}.scatter_barriers b WHERE b.run_id = $1 AND "
              "b.asset = $2 AND b.partition = $3", run_id, asset, encode_partition(partition))


def _literal(text: str) -> str:
    """``text`` as an SQL string literal (for a trigger body, where nothing can be bound)."""
    return "'" + text.replace("'", "''") + "'"


def _redis() -> Any:
    import redis

    return redis.Redis.from_url(os.environ["FLOWSTONE_BROKER_URL"])


def _key(name: str) -> str:
    """The Redis key ``seed_scatter.key(name)`` (same formula, this session's prefix)."""
    return os.environ.get("FLOWSTONE_IT_KEYS", "fs-it:") + "seed:" + name


def test_seed_barrier_and_items_are_created_in_one_transaction(
    cluster: ScatterCluster, db: Db, trigger: Any, pipeline: Any,
) -> None:
    """Seed 000 section 6: a failure between the barrier row and its items leaves nothing;
    the step's retry (``resume``, same run) builds a fresh barrier and gathers once."""
    from flowstone.partitions import encode_partition

    tag = uuid.uuid4().hex[:8]
    part = f"300-atomic-{tag}"
    trigger(f"seed_refuse_{tag}", (
        f"IF EXISTS (SELECT 1 FROM {SCHEMA}.scatter_barriers b WHERE b.id = NEW.barrier_id "
        f"AND b.asset = 'atomic' AND b.partition = {_literal(encode_partition(part))}) "
        f"AND nextval('{SCHEMA}.seed_refuse_{tag}') = 1 THEN "
        "RAISE EXCEPTION 'seed: the items insert is refused once'; END IF; RETURN NEW;"),
        "BEFORE INSERT", "FOR EACH ROW")
    cluster.start("w1", spec=SEED_SPEC)
    first = pipeline.run("atomic", partition=part, timeout=60)
    text = f"{first.error} " + " ".join(str(s.error) for s in first.steps)
    assert first.status == "failed" and "refused once" in text, text
    assert _barriers(db, first.run_id, "atomic", part) == []  # no barrier row left behind

    resumed = pipeline.resume(first.run_id)
    final = pipeline.wait(resumed.run_id, timeout=60)[0]
    assert final.status == "succeeded", final.error
    assert final.value == sum(range(300))
    [b] = _barriers(db, first.run_id, "atomic", part)
    assert (b["state"], b["total_items"], b["items"], b["succeeded"]) == (
        "succeeded", 300, 300, 300)
    assert int(_redis().get(_key("gathers:300")) or 0) == 1  # gathered exactly once


def test_seed_backpressure_holds_during_a_real_scatter(
    cluster: ScatterCluster, db: Db, pipeline: Any,
) -> None:
    """Seed 000 section 7: items released to the workers (queued or running) never exceed
    ``max_concurrent``, sampled from the barrier's items while two workers run them."""
    from flowstone.partitions import encode_partition

    window, chunk = 20, 5  # seed_scatter.WINDOW; the default chunk is max_concurrent // 4
    part = f"600-window-{uuid.uuid4().hex[:8]}"
    cluster.start("w1", concurrency=2, spec=SEED_SPEC)
    cluster.start("w2", concurrency=2, spec=SEED_SPEC)
    started = pipeline.run("windowed", partition=part, wait=False)
    released: list[int] = []
    deadline = time.monotonic() + 90
    while (pipeline.result(started.run_id).status in ("running", "waiting")
           and time.monotonic() < deadline):
        rows = db(f"SELECT count(*) FILTER (WHERE i.state = 'queued') AS released FROM "
                  f"{SCHEMA}.scatter_items i JOIN {SCHEMA}.scatter_barriers b ON b.id = "
                  "i.barrier_id WHERE b.run_id = $1 AND b.asset = 'windowed' AND "
                  "b.partition = $2", started.run_id, encode_partition(part))
        released.append(int(rows[0]["released"]))
        time.sleep(0.02)
    final = pipeline.result(started.run_id)
    assert final.status == "succeeded", final.error
    assert final.value == list(range(600))
    running = [int(v) for v in _redis().lrange(_key(f"peaks:{started.run_id}"), 0, -1)]
    assert len(running) >= 600  # every item ran (a redelivered chunk may run one again)
    # the window was really used (not a vacuous sample) and never overshot
    assert max(released) >= chunk, released
    assert max(released) <= window + chunk - 1, released  # chunk rounding allowed
    assert max(running) <= window + chunk - 1, running
    _redis().delete(_key(f"peaks:{started.run_id}"), _key(f"running:{started.run_id}"))


def test_seed_hundred_thousand_items_cost_a_bounded_number_of_statements(
    cluster: ScatterCluster, db: Db, trigger: Any, pipeline: Any,
) -> None:
    """Seed 000 section 7 (batched enqueue): creating 100,000 items is a bulk insert (COPY
    or multi-row), counted by a statement-level trigger, not one statement per item."""
    from flowstone.partitions import encode_partition

    tag = uuid.uuid4().hex[:8]
    part = f"100000-bulk-{tag}"
    counter = f"seed_count_{tag}"
    trigger(counter, (
        f"IF EXISTS (SELECT 1 FROM new_rows n JOIN {SCHEMA}.scatter_barriers b ON b.id = "
        f"n.barrier_id WHERE b.asset = 'bulk' AND b.partition = "
        f"{_literal(encode_partition(part))}) THEN PERFORM nextval('{SCHEMA}.{counter}'); "
        "END IF; RETURN NULL;"),
        "AFTER INSERT", "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT")
    cluster.start("w1", concurrency=1, spec=SEED_SPEC)
    started = pipeline.run("bulk", partition=part, wait=False)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            found = _barriers(db, started.run_id, "bulk", part)
            if found and found[0]["items"] == 100_000:
                break
            assert pipeline.result(started.run_id).status in ("running", "waiting")
            time.sleep(0.2)
        [b] = _barriers(db, started.run_id, "bulk", part)
        assert (b["total_items"], b["items"]) == (100_000, 100_000)
        [seq] = db(f"SELECT last_value, is_called FROM {SCHEMA}.{counter}")
        statements = int(seq["last_value"]) if seq["is_called"] else 0
        assert 1 <= statements <= 4, statements
        # backpressure from the first moment: max_concurrent=1 releases one item at a time
        [released] = db(f"SELECT count(*) AS n FROM {SCHEMA}.scatter_items WHERE barrier_id "
                        "= $1 AND state = 'queued'", b["id"])
        assert released["n"] <= 1
    finally:
        pipeline.cancel(started.run_id)
