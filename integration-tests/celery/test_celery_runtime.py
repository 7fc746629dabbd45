"""The distributed runtime end to end: real Celery workers, Postgres, Redis and RabbitMQ."""

from __future__ import annotations

import json
import os
import signal
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from celery_it import PIPELINES, Cluster, cli, load, wait_for

from flowstone.runs import wait_for_run

pytestmark = pytest.mark.integration
BROKERS = pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)


def recorded(pipeline: Any, run_id: str) -> dict[str, list[str]]:
    """{asset: [states of this run's materializations]}."""
    out: dict[str, list[str]] = {}
    for mat in pipeline.store.list_materializations(pipeline.name, run_id=run_id, limit=1000):
        out.setdefault(mat.asset, []).append(mat.state)
    return out


@BROKERS
def test_quickstart_runs_on_workers(broker: Any) -> None:
    pipeline = broker(load("quickstart"))
    assert pipeline.executor.name == "celery" and not pipeline.executor.blocking
    result = pipeline.run("total", force=True, timeout=60)
    assert result.status == "succeeded"
    assert result.value == 30
    assert recorded(pipeline, result.run_id) == {
        "numbers": ["succeeded"], "doubled": ["succeeded"], "total": ["succeeded"]}


@BROKERS
def test_backfill_of_30_partitions(broker: Any) -> None:
    pipeline = broker(load("etl"))
    result = pipeline.backfill("daily_revenue", start=date(2024, 1, 1), end=date(2024, 1, 30),
                               parallel=10, force=True, timeout=120)
    assert len(result.succeeded) == 30, result.summary()
    assert not result.failed
    from etl import expected_revenue  # the pipelines directory is on sys.path once loaded

    for day in (date(2024, 1, 1), date(2024, 1, 17), date(2024, 1, 30)):
        assert pipeline.get("daily_revenue", day)["revenue"] == expected_revenue(day)


def test_cli_run_with_celery_executor_waits_and_detaches(redis_cluster: Cluster) -> None:
    spec = f"{PIPELINES / 'quickstart'}.py:pipeline"
    env = {k: v for k, v in os.environ.items() if k != "FLOWSTONE_EXECUTOR"}
    done = cli("run", spec, "total", "--force", "--executor", "celery", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"
    detached = cli("run", spec, "total", "--force", "--executor", "celery", "--detach",
                   "--json", env=env)
    assert detached.returncode == 0, detached.stderr
    run_id = json.loads(detached.stdout)["run_id"]
    run = wait_for_run(load("quickstart").store, run_id, timeout=60)
    assert run.status == "succeeded"


def test_router_decisions_on_workers(redis_cluster: Cluster) -> None:
    pipeline = load("routing")
    small = pipeline.run("fulfilment", "50", force=True, timeout=60)
    large = pipeline.run("fulfilment", "500", force=True, timeout=60)
    assert small.value == {"order": "50", "shipping": "standard"}
    assert large.value == {"order": "500", "shipping": "freight"}
    assert recorded(pipeline, small.run_id)["large"] == ["skipped"]
    assert recorded(pipeline, large.run_id)["small"] == ["skipped"]


def test_approval_resumed_from_another_process(redis_cluster: Cluster) -> None:
    pipeline = load("waits")
    waiting = pipeline.run("booking", force=True, timeout=60)
    assert waiting.status == "waiting"
    spec = f"{PIPELINES / 'waits'}.py:pipeline"
    approved = cli("approve", spec, "--run-id", waiting.run_id, "--asset", "trade", "--by", "it")
    assert approved.returncode == 0, approved.stderr
    run = wait_for_run(pipeline.store, waiting.run_id, timeout=60)
    assert run.status == "succeeded"
    assert pipeline.result(waiting.run_id).value == "booked ACME approved=True"


def test_signal_gate_resumed_by_flowstone_signal(redis_cluster: Cluster) -> None:
    pipeline = load("waits")
    waiting = pipeline.run("after_gate", force=True, timeout=60)
    assert waiting.status == "waiting"
    token = (redis_cluster.state_dir / f"{waiting.run_id}.token").read_text()
    spec = f"{PIPELINES / 'waits'}.py:pipeline"
    signalled = cli("signal", spec, token, "--payload", '{"status": "paid"}')
    assert signalled.returncode == 0, signalled.stderr
    run = wait_for_run(pipeline.store, waiting.run_id, timeout=60)
    assert run.status == "succeeded"
    assert pipeline.result(waiting.run_id).value == "got paid"


def test_flaky_asset_is_retried_on_workers(redis_cluster: Cluster) -> None:
    pipeline = load("faults")
    result = pipeline.run("after_flaky", force=True, timeout=60)
    assert result.status == "succeeded"
    assert result.value == "succeeded on attempt 3"
    (mat,) = pipeline.store.list_materializations("it_faults", asset="flaky",
                                                  run_id=result.run_id)
    assert mat.state == "succeeded" and mat.attempt == 3


def test_worker_killed_mid_asset_run_still_completes(own_cluster: Cluster) -> None:
    from flowstone_celery import CeleryExecutor, load_settings

    pipeline = load("faults")
    original = pipeline.executor
    pipeline.executor = CeleryExecutor(load_settings(queue=own_cluster.queue))
    try:
        victim = own_cluster.start("victim", concurrency=1)
        run = pipeline.run("after_slow", force=True, wait=False)
        marker = own_cluster.state_dir / f"{run.run_id}.1.started"
        wait_for(marker.exists, what="slow to start on the victim")
        os.killpg(victim.pid, signal.SIGKILL)  # the whole worker: main process and pool
        victim.wait()
        own_cluster.start("survivor", concurrency=1)
        final = wait_for_run(pipeline.store, run.run_id, timeout=90)
    finally:
        pipeline.executor.close()
        pipeline.executor = original
    assert final.status == "succeeded"
    assert pipeline.result(run.run_id).value == 84
    assert recorded(pipeline, run.run_id) == {
        "before_slow": ["succeeded"], "slow": ["succeeded"], "after_slow": ["succeeded"]}
    (slow,) = pipeline.store.list_materializations("it_faults", asset="slow",
                                                   run_id=run.run_id)
    assert slow.attempt == 2


def _start_slow(cluster: Cluster, seconds: str) -> tuple[Any, Any, str, Path]:
    from flowstone_celery import CeleryExecutor, load_settings

    worker = cluster.start("drain", concurrency=1, FLOWSTONE_IT_SLOW_SECONDS=seconds,
                           FLOWSTONE_SWEEPER="false")
    pipeline = load("faults")
    executor = CeleryExecutor(load_settings(queue=cluster.queue))
    original, pipeline.executor = pipeline.executor, executor
    try:
        run = pipeline.run("slow", force=True, wait=False)
    finally:
        pipeline.executor = original
        executor.close()
    marker = cluster.state_dir / f"{run.run_id}.1.started"
    wait_for(marker.exists, what="slow to start")
    return worker, pipeline, run.run_id, marker


def test_seed_graceful_shutdown_drains_in_flight_tasks(own_cluster: Cluster) -> None:
    worker, pipeline, run_id, _ = _start_slow(own_cluster, "2")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    step = pipeline.store.get_step(run_id, "slow", "")
    assert step is not None and step.state == "succeeded"
    assert "Warm shutdown" in own_cluster.log_of(worker)


def test_second_sigterm_stops_immediately(own_cluster: Cluster) -> None:
    worker, pipeline, run_id, _ = _start_slow(own_cluster, "60")
    worker.send_signal(signal.SIGTERM)
    wait_for(lambda: "send SIGTERM again" in own_cluster.log_of(worker), what="warm shutdown")
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    step = pipeline.store.get_step(run_id, "slow", "")
    assert step is not None and step.state == "running"  # abandoned, not drained
    assert "Cold shutdown" in own_cluster.log_of(worker)
    pipeline.cancel(run_id)


def test_seed_json_only_task_messages_through_a_real_broker(redis_cluster: Cluster) -> None:
    from flowstone_celery import load_settings, make_app

    app = make_app(load_settings())
    try:
        bogus = {"v": 1, "run_id": "r1", "pipeline": "not_served", "asset": "x",
                 "partition": "", "attempt": 0}
        app.send_task("flowstone.run_step", args=(bogus,), ignore_result=True)
        app.send_task("flowstone.run_step", args=({"v": 1},), ignore_result=True,
                      serializer="pickle")
    finally:
        app.close()

    def logs() -> str:
        return "".join(redis_cluster.log_of(p) for p, _ in redis_cluster.procs)

    wait_for(lambda: "unknown pipeline 'not_served'" in logs(), what="unknown pipeline log")
    wait_for(lambda: "ContentDisallowed" in logs() or "Refusing to deserialize" in logs(),
             what="pickle refused")


def test_seed_health_check_covers_store_broker_workers(redis_cluster: Cluster) -> None:
    report = load("quickstart").health()
    assert report["ok"] is True
    assert report["store"] == "ok"
    assert report["executor"]["broker"] == "ok"
    assert report["executor"]["workers"] >= 2
