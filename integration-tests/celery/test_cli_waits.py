"""``flowstone approve`` / ``signal`` on Celery wait for the resumed run, as the docs show."""

from __future__ import annotations

import json

import pytest
from celery_it import PIPELINES, Cluster, cli, load

pytestmark = pytest.mark.integration
SPEC = f"{PIPELINES / 'waits'}.py:pipeline"


def test_approve_waits_for_the_run_to_settle_on_the_workers(redis_cluster: Cluster) -> None:
    waiting = load("waits").run("booking", force=True, timeout=60)
    assert waiting.status == "waiting"
    done = cli("approve", SPEC, "--run-id", waiting.run_id, "--asset", "trade", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded"  # not `running`: the command waited
    assert result["value"] == "booked ACME approved=True"
    text = cli("runs", SPEC, "--status", "succeeded", "--limit", "50")
    assert waiting.run_id in text.stdout


def test_approve_no_wait_returns_while_the_workers_carry_on(redis_cluster: Cluster) -> None:
    pipeline = load("waits")
    waiting = pipeline.run("booking", force=True, timeout=60)
    done = cli(
        "approve", SPEC, "--run-id", waiting.run_id, "--asset", "trade", "--no-wait", "--json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] in ("running", "succeeded")
    [settled] = pipeline.wait(waiting.run_id, timeout=60)
    assert settled.status == "succeeded"


def test_signal_waits_for_the_run_to_settle(redis_cluster: Cluster) -> None:
    waiting = load("waits").run("after_gate", force=True, timeout=60)
    assert waiting.status == "waiting"
    token = (redis_cluster.state_dir / f"{waiting.run_id}.token").read_text()
    done = cli("signal", SPEC, token, "--payload", '{"status": "paid"}')
    assert done.returncode == 0, done.stderr
    assert f"run {waiting.run_id} succeeded" in done.stdout
    assert "value: got paid" in done.stdout
