"""Packs through a real broker and worker: a run with more ready steps than the workers
have slots travels several steps to a message (``FLOWSTONE_PACK_STEPS``), completes with
every step recorded once and its user code run once, and the same packs delivered again
change nothing."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery_it import PIPELINES, Cluster, wait_for

pytestmark = pytest.mark.integration

SPEC = f"{PIPELINES / 'pack.py'}:pipeline"
N = 24


@pytest.fixture
def pack_cluster(
    client_env: str, database_url: str, redis_url: str, state_dir: Path, seed_dir: Path
) -> Iterator[Cluster]:
    cluster = Cluster(
        redis_url, f"fs-it-pack-{uuid.uuid4().hex[:8]}", database_url, state_dir, specs=[SPEC]
    )
    cluster.env["FLOWSTONE_IT_SEED_DIR"] = str(seed_dir)
    try:
        yield cluster
    finally:
        cluster.stop_all()
        cluster.purge()


def tasks(log: str, what: str) -> int:
    """How many ``flowstone.run_step`` messages the worker log says were ``what``."""
    return sum(
        1 for line in log.splitlines() if "flowstone.run_step[" in line and f"] {what}" in line
    )


def test_a_packed_run_records_each_step_once_and_a_redelivered_pack_changes_nothing(
    pack_cluster: Cluster,
    seed_dir: Path,
    redis_url: str,
) -> None:
    from flowstone.loading import load_pipeline
    from flowstone.records import StepRecord
    from flowstone_celery import CeleryExecutor, load_settings

    worker = pack_cluster.start("w1", concurrency=2)
    pipeline = load_pipeline(SPEC)
    # the client knows the workers have 2 slots: 24 ready steps go 8 to a message
    pipeline.use_executor(
        CeleryExecutor(
            load_settings(
                broker_url=redis_url, queue=pack_cluster.queue, worker_slots=2, pack_steps=8
            )
        )
    )
    try:
        result = pipeline.run(force=True, timeout=120)
        assert result.status == "succeeded", result.error
        names = [f"p{i:02d}" for i in range(N)]
        ran = (seed_dir / "ran").read_text().split("\n")[:-1]
        assert Counter(line.split()[0] for line in ran) == dict.fromkeys(names, 1)
        assert {line.split()[1] for line in ran} == {"1"}
        steps = pipeline.store.list_steps(result.run_id)
        assert sorted((s.asset, s.state, s.attempt) for s in steps) == [
            (name, "succeeded", 1) for name in names
        ]
        mats = pipeline.store.list_materializations("it_pack", run_id=result.run_id, limit=100)
        assert sorted(m.asset for m in mats) == names
        log = wait_for(
            lambda: tasks(text := pack_cluster.log_of(worker), "succeeded") == 3 and text,
            what="the three packs to be acknowledged",
        )
        assert tasks(log, "received") == 3, log[-3000:]  # 3 messages for 24 steps

        # the broker delivers the same three packs again (as after a lost acknowledgement)
        again = [StepRecord(result.run_id, name, "", "ready", 0) for name in names]
        pipeline.executor.dispatch(pipeline.runner, result.run_id, again)
        wait_for(
            lambda: tasks(pack_cluster.log_of(worker), "succeeded") == 6,
            what="the redelivered packs to be handled",
        )
        assert (seed_dir / "ran").read_text().split("\n")[:-1] == ran  # nothing ran again
        after = pipeline.store.list_steps(result.run_id)
        assert sorted((s.asset, s.state, s.attempt) for s in after) == sorted(
            (s.asset, s.state, s.attempt) for s in steps
        )
        assert (
            len(pipeline.store.list_materializations("it_pack", run_id=result.run_id, limit=100))
            == N
        )
        assert pipeline.result(result.run_id).status == "succeeded"
    finally:
        pipeline.close()


def test_a_warm_shutdown_mid_pack_hands_the_rest_back_and_nothing_runs_twice(
    pack_cluster: Cluster,
    seed_dir: Path,
    redis_url: str,
) -> None:
    """The first SIGTERM lands while a worker runs a pack: it finishes the step in hand,
    gives back the pack's steps it did not start (claimed with the pack: ready again) and
    publishes them (one message each) and exits 0; another worker finishes the run, each
    step run and recorded once."""
    import os
    import signal

    from flowstone.loading import load_pipeline
    from flowstone_celery import CeleryExecutor, load_settings

    first = pack_cluster.start(
        "w1",
        concurrency=1,
        FLOWSTONE_SWEEPER="0",
        FLOWSTONE_PACK_SECONDS="600",
        FLOWSTONE_IT_PACK_SLEEP="0.3",
    )
    pipeline = load_pipeline(SPEC)
    pipeline.use_executor(
        CeleryExecutor(
            load_settings(
                broker_url=redis_url, queue=pack_cluster.queue, worker_slots=2, pack_steps=8
            )
        )
    )
    ran = seed_dir / "ran"
    try:
        run = pipeline.run(force=True, wait=False)
        wait_for(
            lambda: ran.exists() and len(ran.read_text().split("\n")) > 2,
            what="the second step of the first pack to start",
        )
        os.kill(first.pid, signal.SIGTERM)  # warm shutdown in the middle of the pack
        assert first.wait(timeout=60) == 0, pack_cluster.log_of(first)[-3000:]
        log = pack_cluster.log_of(first)
        assert "step(s) of a batch back to the broker: the worker is draining" in log, log[-3000:]
        started = len(ran.read_text().split("\n")[:-1])
        assert started < N  # it stopped in the middle: the rest is left for others
        pack_cluster.start("w2", concurrency=2, FLOWSTONE_SWEEPER="0")
        result = pipeline.wait([run], timeout=120)[0]
        assert result.status == "succeeded", result.error
        lines = ran.read_text().split("\n")[:-1]
        names = [f"p{i:02d}" for i in range(N)]
        assert Counter(line.split()[0] for line in lines) == dict.fromkeys(names, 1)
        steps = pipeline.store.list_steps(run.run_id)
        assert {s.state for s in steps} == {"succeeded"}
        # w1 claimed its pack when it took the message: the steps of it that it gave back
        # are on their second claim (attempt 2), the rest, w1's own and those of packs it
        # never started, on their first; no step was claimed more than twice
        by_w1 = {line.split()[0] for line in lines[:started]}
        again = {s.asset for s in steps if s.attempt == 2}
        assert {s.attempt for s in steps} <= {1, 2} and again and not again & by_w1, steps
    finally:
        pipeline.close()


@pytest.mark.parametrize(("finish_batch", "commits"), [("16", 3), ("1", N)])
def test_a_packs_finishes_commit_together(
    pack_cluster: Cluster, seed_dir: Path, redis_url: str, database_url: str,
    finish_batch: str, commits: int,
) -> None:
    """Batched finishes on a real worker: the 24 steps come in 3 packs of 8 and each pack's
    finishes are one transaction (each step row's ``xmin`` names the transaction that
    wrote it last: its finish; the transactions' ``now()`` would not do, two packs' batches
    starting in the same microsecond on two pool processes share it); with
    ``FLOWSTONE_FINISH_BATCH=1`` every finish is a transaction of its own. Either way each
    step ran once and is recorded once."""
    import asyncio

    import asyncpg

    from flowstone.loading import load_pipeline
    from flowstone_celery import CeleryExecutor, load_settings

    pack_cluster.start(
        "w1", concurrency=2, FLOWSTONE_FINISH_BATCH=finish_batch,
        FLOWSTONE_FINISH_BATCH_SECONDS="60",
    )  # fmt: skip
    pipeline = load_pipeline(SPEC)
    pipeline.use_executor(
        CeleryExecutor(
            load_settings(
                broker_url=redis_url, queue=pack_cluster.queue, worker_slots=2, pack_steps=8
            )
        )
    )
    try:
        result = pipeline.run(force=True, timeout=120)
        assert result.status == "succeeded", result.error
        names = [f"p{i:02d}" for i in range(N)]
        ran = (seed_dir / "ran").read_text().split("\n")[:-1]
        assert Counter(line.split()[0] for line in ran) == dict.fromkeys(names, 1)
        mats = pipeline.store.list_materializations("it_pack", run_id=result.run_id, limit=100)
        assert sorted(m.asset for m in mats) == names

        async def stamps() -> int:
            conn = await asyncpg.connect(database_url.replace("+asyncpg", ""), timeout=10)
            try:
                return int(await conn.fetchval(
                    "SELECT count(DISTINCT xmin::text) FROM flowstone.steps WHERE run_id = $1",
                    result.run_id,
                ))  # fmt: skip
            finally:
                await conn.close()

        assert asyncio.run(stamps()) == commits
    finally:
        pipeline.close()
