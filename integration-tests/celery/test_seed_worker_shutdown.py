"""Seeds: graceful shutdown (seed 000 section 8) and defaults on the worker path (seed 004,
"default resource injection is effectively disabled"); DESIGN.md section 8.

A real worker runs an asset that ``requires`` a resource; SIGTERM arrives while the step
runs. The step must finish (warm shutdown drains it), the resource must have reached the
step's context in the pool process, and the resource's teardown must run afterwards.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery_it import PIPELINES, Cluster, wait_for

pytestmark = pytest.mark.integration

SPEC = f"{PIPELINES / 'seed_shutdown.py'}:pipeline"


@pytest.fixture
def shutdown_cluster(client_env: str, database_url: str, redis_url: str, state_dir: Path,
                     seed_dir: Path) -> Iterator[Cluster]:
    cluster = Cluster(redis_url, f"fs-it-seed-stop-{uuid.uuid4().hex[:8]}", database_url,
                      state_dir, specs=[SPEC])
    cluster.env["FLOWSTONE_IT_SEED_DIR"] = str(seed_dir)
    try:
        yield cluster
    finally:
        cluster.stop_all()
        cluster.purge()


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_seed_sigterm_drains_the_step_then_tears_resources_down(
    pool: str, shutdown_cluster: Cluster, seed_dir: Path, redis_url: str,
) -> None:
    """Seed 000 section 8 (graceful shutdown) and seed 004 item 2 (resource defaults on
    the worker path)."""
    from flowstone.loading import load_pipeline
    from flowstone_celery import CeleryExecutor, load_settings

    proc = shutdown_cluster.start("w1", concurrency=1, worker_args=("--pool", pool),
                                  FLOWSTONE_SWEEPER="0")
    pipeline = load_pipeline(SPEC)
    pipeline.use_executor(CeleryExecutor(load_settings(broker_url=redis_url,
                                                       queue=shutdown_cluster.queue)))
    try:
        started = pipeline.run("slow_step", wait=False, force=True)
        wait_for(lambda: (seed_dir / "started").exists() or proc.poll() is not None,
                 what="the step to start")
        assert proc.poll() is None, shutdown_cluster.log_of(proc)[-3000:]
        os.kill(proc.pid, signal.SIGTERM)  # warm shutdown while the step runs
        assert proc.wait(timeout=30) == 0, shutdown_cluster.log_of(proc)[-3000:]
        result = pipeline.result(started.run_id)
        assert result.status == "succeeded", (result.error, shutdown_cluster.log_of(proc)[-3000:])
        step_pid = int((seed_dir / "started").read_text())
        # the resource reached the step's context in the process that ran the step
        assert result.value == step_pid
        assert (seed_dir / "finished").exists()
        teardowns = (seed_dir / "teardown").read_text().split("\n") if (
            seed_dir / "teardown").exists() else []
        assert f"pid={step_pid} step_finished=True" in teardowns, (
            teardowns, shutdown_cluster.log_of(proc)[-3000:])
    finally:
        pipeline.close()
