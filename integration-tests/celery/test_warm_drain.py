"""Warm shutdown drains the step in hand and takes no continuation (issue 11, defect 7):
the first SIGTERM used to let a worker run up to ``FLOWSTONE_INLINE_STEPS`` more steps of
a chain before it stopped. Now the step its last finish claimed goes back to ``ready`` and
is published, and another worker finishes the run, each step once."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery_it import PIPELINES, Cluster, wait_for

pytestmark = pytest.mark.integration

SPEC = f"{PIPELINES / 'drain.py'}:pipeline"


@pytest.fixture
def drain_dir(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = state_dir / f"drain-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    monkeypatch.setenv("FLOWSTONE_IT_SEED_DIR", str(path))
    return path


@pytest.fixture
def drain_cluster(client_env: str, database_url: str, redis_url: str, state_dir: Path,
                  drain_dir: Path) -> Iterator[Cluster]:
    cluster = Cluster(redis_url, f"fs-it-drain-{uuid.uuid4().hex[:8]}", database_url,
                      state_dir, specs=[SPEC])
    cluster.env["FLOWSTONE_IT_SEED_DIR"] = str(drain_dir)
    try:
        yield cluster
    finally:
        cluster.stop_all()
        cluster.purge()


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_warm_shutdown_takes_no_continuation(
    pool: str, drain_cluster: Cluster, drain_dir: Path, redis_url: str,
) -> None:
    from flowstone.loading import load_pipeline
    from flowstone_celery import CeleryExecutor, load_settings

    ran = drain_dir / "ran"
    first = drain_cluster.start("w1", concurrency=1, worker_args=("--pool", pool),
                                FLOWSTONE_SWEEPER="0", FLOWSTONE_INLINE_STEPS="16")
    pipeline = load_pipeline(SPEC)
    pipeline.use_executor(CeleryExecutor(load_settings(broker_url=redis_url,
                                                       queue=drain_cluster.queue)))
    try:
        run = pipeline.run("s6", wait=False, force=True)
        wait_for(lambda: ran.exists() and "s2" in ran.read_text(), what="s2 to start")
        os.kill(first.pid, signal.SIGTERM)  # warm shutdown while s2 runs
        assert first.wait(timeout=60) == 0, drain_cluster.log_of(first)[-3000:]
        before = ran.read_text().split()
        names = before[::2]
        assert names == ["s1", "s2"], (names, drain_cluster.log_of(first)[-3000:])
        s3 = pipeline.store.get_step(run.run_id, "s3", "")
        # handed back: ready for anyone, not held under a lease by the stopped worker
        assert s3 is not None and s3.state == "ready" and s3.owner is None, s3
        drain_cluster.start("w2", concurrency=1, worker_args=("--pool", pool),
                            FLOWSTONE_SWEEPER="0")
        result = pipeline.wait([run], timeout=120)[0]
        assert result.status == "succeeded" and result.value == 6, result.error
        assert ran.read_text().split()[::2] == ["s1", "s2", "s3", "s4", "s5", "s6"]
    finally:
        pipeline.close()
