"""A step message is checked against its run's pipeline on real workers (issue 11, defect 4):
with one store serving two pipelines that share asset names, a message
``{"pipeline": "it_quickstart_twin", "run_id": <an it_quickstart run>, "asset": "numbers"}``
is rejected and logged; nothing runs and the run's step stays ready for its own message."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery_it import PIPELINES, Cluster, load, wait_for

from flowstone.records import RunRecord, StepSpec
from flowstone.runs import wait_for_run

pytestmark = pytest.mark.integration


@pytest.fixture
def twin_cluster(client_env: str, database_url: str, redis_url: str,
                 state_dir: Path) -> Any:
    """One worker serving it_quickstart and it_quickstart_twin, on a queue of its own."""
    specs = [f"{PIPELINES / name}.py:pipeline" for name in ("quickstart", "quickstart_twin")]
    cluster = Cluster(redis_url, f"fs-it-twin-{uuid.uuid4().hex[:8]}", database_url, state_dir,
                      specs=specs)
    try:
        yield cluster
    finally:
        cluster.stop_all()
        cluster.purge()


def test_a_message_naming_another_pipelines_run_is_rejected(twin_cluster: Cluster) -> None:
    worker = twin_cluster.start("twin", concurrency=1)
    pipeline = load("quickstart")
    try:
        _reject_then_run(twin_cluster, worker, pipeline)
    finally:
        pipeline.close()


def _reject_then_run(cluster: Cluster, worker: Any, pipeline: Any) -> None:
    from flowstone_celery import CeleryExecutor, load_settings, make_app

    now = datetime.now(UTC)
    run = RunRecord(run_id=f"run-{uuid.uuid4().hex[:12]}", pipeline=pipeline.name,
                    targets=("total",), partition="", status="running", created_at=now,
                    updated_at=now)
    pipeline.store.create_run(run, [
        StepSpec("numbers", ""), StepSpec("doubled", "", (("numbers", ""),)),
        StepSpec("total", "", (("doubled", ""),))])
    forged = {"v": 1, "run_id": run.run_id, "pipeline": "it_quickstart_twin",
              "asset": "numbers", "partition": "", "attempt": 0}
    app = make_app(load_settings(queue=cluster.queue))
    try:
        app.send_task("flowstone.run_step", args=(forged,), ignore_result=True)
    finally:
        app.close()
    wait_for(lambda: "rejected a message" in cluster.log_of(worker),
             what="the rejected message in the worker's log")
    assert f"run {run.run_id} belongs to pipeline 'it_quickstart'" in cluster.log_of(worker)
    assert not (cluster.state_dir / f"twin-numbers-{run.run_id}").exists()
    step = pipeline.store.get_step(run.run_id, "numbers", "")
    assert step is not None and (step.state, step.attempt) == ("ready", 0)
    assert pipeline.store.list_materializations("it_quickstart", run_id=run.run_id) == []

    # the run's own message runs it, on the same worker
    original = pipeline.executor
    pipeline.executor = CeleryExecutor(load_settings(queue=cluster.queue))
    try:
        pipeline.dispatch(run.run_id, (step,))
        final = wait_for_run(pipeline.store, run.run_id, timeout=60)
    finally:
        pipeline.executor.close()
        pipeline.executor = original
    assert final.status == "succeeded" and pipeline.result(run.run_id).value == 30
    assert not (cluster.state_dir / f"twin-numbers-{run.run_id}").exists()
