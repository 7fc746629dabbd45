"""Metrics, health and JSON logs with real Celery workers, Postgres and Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from celery_it import wait_for
from conftest import SPEC, MetricsCluster
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(f"{url}/metrics", timeout=15) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def load() -> Any:
    from flowstone.loading import load_pipeline

    return load_pipeline(SPEC)


def health(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "flowstone", "health", SPEC, "--json"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def checks(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["checks"]}


def test_no_worker_running_is_unhealthy(
    client_env: str, database_url: str, redis_url: str,
) -> None:
    """Runs first, before the suite starts its worker; the suite's Redis database is its
    own, so no other suite's worker answers the ping."""
    assert not _workers_alive(redis_url), "a worker answers on this suite's Redis database"
    env = {"FLOWSTONE_EXECUTOR": "celery", "FLOWSTONE_DATABASE_URL": database_url,
           "FLOWSTONE_BROKER_URL": redis_url, "FLOWSTONE_QUEUE": client_env}
    code, doc = health(env)
    found = checks(doc)
    assert code == 1 and doc["ok"] is False
    assert found["broker"]["ok"] and found["store"]["ok"]
    assert not found["workers"]["ok"] and "no worker replied" in found["workers"]["detail"]


def test_worker_metrics_after_a_dag_a_scatter_and_a_failure(
    cluster: MetricsCluster, multiproc_dir: Path,
) -> None:
    assert not (multiproc_dir / "counter_99999.db").exists()  # cleaned on start
    pipeline = load()
    try:
        assert pipeline.run("report").status == "succeeded"
        assert pipeline.run("squares").status == "succeeded"
        assert pipeline.run("explode").status == "failed"
    finally:
        pipeline.close()
    url = cluster.urls["m1"]
    ok = {"pipeline": "obs_it", "status": "succeeded"}

    def settled() -> Samples | None:
        # the pool processes record their events as their tasks end: wait for all
        got = scrape(url)
        done = sample(got, "flowstone_materializations_total", asset="explode",
                      pipeline="obs_it", status="failed")
        counted = all(sample(got, "flowstone_materializations_total", asset=asset, **ok)
                      for asset in ("raw", "cleaned", "report", "squares"))
        return got if done == 1 and counted else None

    samples = wait_for(settled, what="the failure to be counted")
    for asset in ("raw", "cleaned", "report", "squares"):
        assert sample(samples, "flowstone_materializations_total", asset=asset, **ok) == 1, asset
    assert sample(samples, "flowstone_runs_finished_total", pipeline="obs_it",
                  status="succeeded") == 2
    assert sample(samples, "flowstone_runs_finished_total", pipeline="obs_it",
                  status="failed") == 1
    assert sample(samples, "flowstone_scatter_items_total", pipeline="obs_it",
                  asset="squares", state="succeeded") == 5
    assert sample(samples, "flowstone_materialization_duration_seconds_count",
                  pipeline="obs_it", asset="report") == 1
    stamp = sample(samples, "flowstone_asset_last_materialized_timestamp_seconds",
                   pipeline="obs_it", asset="report")
    assert stamp is not None and 0 < time.time() - stamp < 600
    assert sample(samples, "flowstone_store_up", pipeline="obs_it") == 1
    # bounded labels: no run id or partition anywhere
    assert not any(k in ("run_id", "partition") for _, labels in samples for k, _ in labels)
    with urllib.request.urlopen(f"{url}/healthz", timeout=30) as response:
        doc = json.loads(response.read())
    assert doc["role"] == "worker"
    workers = checks(doc)["workers"]
    assert workers["ok"], doc
    assert any("obs_it" in (w["pipelines"] or []) for w in workers["data"]["workers"])


def test_health_reports_each_failing_dependency(
    cluster: MetricsCluster, database_url: str, redis_url: str, queue: str,
) -> None:
    base = {"FLOWSTONE_EXECUTOR": "celery", "FLOWSTONE_DATABASE_URL": database_url,
            "FLOWSTONE_BROKER_URL": redis_url, "FLOWSTONE_QUEUE": queue}
    # all fine: a worker serves the pipeline and its sweeper wrote a heartbeat
    code, doc = wait_for(lambda: (lambda r: r if r[0] == 0 else None)(health(base)),
                         timeout=60, what="a healthy report")
    assert doc["ok"] is True and checks(doc)["heartbeat"]["ok"]
    served = checks(doc)["workers"]["data"]["workers"]
    assert any("obs_it" in (w["pipelines"] or []) for w in served), served
    assert checks(doc)["migrations"]["data"]["revision"] == checks(doc)["migrations"][
        "data"]["head"]

    # Postgres unreachable (wrong port)
    bad_pg = database_url.replace(":5432/", ":1/") if ":5432/" in database_url else \
        "postgresql+asyncpg://postgres@127.0.0.1:1/nothing"
    code, doc = health({**base, "FLOWSTONE_DATABASE_URL": bad_pg})
    assert code == 1 and doc["ok"] is False
    found = checks(doc)
    assert not found["store"]["ok"] and not found["migrations"]["ok"]
    assert found["broker"]["ok"]

    # Redis unreachable
    code, doc = health({**base, "FLOWSTONE_BROKER_URL": "redis://127.0.0.1:1/0"})
    assert code == 1 and doc["ok"] is False
    found = checks(doc)
    assert not found["broker"]["ok"] and "unreachable" in found["broker"]["detail"]
    assert not found["workers"]["ok"] and found["store"]["ok"]


def _workers_alive(redis_url: str) -> bool:
    from celery import Celery

    app = Celery("probe", broker=redis_url, set_as_current=False)
    try:
        return bool(app.control.ping(timeout=1.0))
    finally:
        app.close()


def test_worker_logs_are_json_lines_with_the_step_fields(cluster: MetricsCluster) -> None:
    pipeline = load()
    try:
        run = pipeline.run("cleaned", force=True)
        assert run.status == "succeeded"
    finally:
        pipeline.close()
    proc = cluster.procs[0][0]

    def logged() -> list[dict[str, Any]]:
        lines = []
        for raw in cluster.log_of(proc).splitlines():
            if raw.startswith("{"):
                lines.append(json.loads(raw))
        return [line for line in lines if line["message"] == "cleaning 5 rows"
                and line["run_id"] == run.run_id]

    found = wait_for(logged, what="the asset's log line")
    line = found[0]
    assert (line["pipeline"], line["asset"], line["partition"], line["attempt"]) == (
        "obs_it", "cleaned", "", 1)
    assert line["logger"] == "flowstone.asset.cleaned" and line["level"] == "INFO"
    engine = [json.loads(raw) for raw in cluster.log_of(proc).splitlines()
              if raw.startswith("{") and '"flowstone.' in raw]
    assert engine and all(set(doc) >= {"run_id", "pipeline", "asset", "partition", "attempt"}
                          for doc in engine)



def test_queue_lag_and_a_worker_take_over_are_scraped(cluster: MetricsCluster) -> None:
    """The worker's claims report how long steps waited and whether they took over an
    expired lease: the queue-lag histogram has observations, and a step whose worker died
    (its lease expired), re-sent by ``recover()``, counts one take-over on the worker that
    takes it."""
    from datetime import UTC, datetime

    from flowstone.records import RunRecord, StepSpec

    url = cluster.urls["m1"]
    before = sample(scrape(url), "flowstone_lease_takeovers_total", pipeline="obs_it",
                    asset="raw") or 0.0
    pipeline = load()
    try:
        assert pipeline.run("cleaned", force=True).status == "succeeded"
        now = datetime.now(UTC)
        run = RunRecord(f"run-takeover-{os.getpid()}-{time.monotonic_ns()}", "obs_it", ("raw",),
                        "", "running", now, now)
        pipeline.store.create_run(run, [StepSpec("raw", "")])
        dead = pipeline.store.claim_step(run.run_id, "raw", "", owner="worker-that-died",
                                         lease_seconds=0)
        assert dead is not None and dead.attempt == 1
        assert pipeline.recover(ready_for_seconds=30) >= 1  # the expired lease is re-sent
        [done] = pipeline.wait([run.run_id], timeout=120)
        assert done.status == "succeeded"
        step = pipeline.store.get_step(run.run_id, "raw", "")
        assert step is not None and step.attempt == 2
    finally:
        pipeline.close()

    def counted() -> Samples | None:
        got = scrape(url)
        taken = sample(got, "flowstone_lease_takeovers_total", pipeline="obs_it", asset="raw")
        return got if taken == before + 1 else None

    samples = wait_for(counted, what="the take-over to be counted")
    lag = sample(samples, "flowstone_queue_lag_seconds_count", pipeline="obs_it")
    assert lag is not None and lag >= 1
    total = sample(samples, "flowstone_queue_lag_seconds_sum", pipeline="obs_it")
    assert total is not None and total >= 0
