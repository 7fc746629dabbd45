"""check(): each failing dependency is named, with what to do; no services needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from helpers import etl

import flowstone as fs
from flowstone_observability import check
from flowstone_observability.heartbeat import read_heartbeats, write_heartbeat

HERE = Path(__file__).parent
SIMPLE = f"{HERE / 'pipelines' / 'simple.py'}:pipeline"


def _by_name(report: object) -> dict[str, object]:
    return {c.name: c for c in report.checks}  # type: ignore[attr-defined]


def test_an_in_process_pipeline_with_a_working_store_is_healthy() -> None:
    report = check([etl([])])
    assert report.ok, report.to_text()
    checks = _by_name(report)
    assert set(checks) == {"store", "migrations", "broker", "workers", "heartbeat", "resources"}
    assert "not used" in checks["broker"].detail  # type: ignore[attr-defined]
    doc = report.to_json()
    assert doc["ok"] is True and len(doc["checks"]) == 6


def test_a_failing_resource_is_reported() -> None:
    @fs.asset(requires=["db"])
    def uses(context: fs.Context) -> int:
        return 1

    resource = fs.Resource(setup=lambda: object(), health=lambda _: False)
    pipeline = fs.Pipeline("res", [uses], store="memory://", resources={"db": resource})
    pipeline.run("uses")
    report = check([pipeline])
    failing = report.failing()
    assert [c.name for c in failing] == ["resources"]
    assert "db: error: health check returned False" in failing[0].detail


def test_an_unreachable_broker_fails_broker_and_workers() -> None:
    from flowstone_celery import CeleryExecutor, load_settings

    @fs.asset
    def one() -> int:
        return 1

    executor = CeleryExecutor(load_settings(broker_url="redis://127.0.0.1:1/0", queue="hc"))
    pipeline = fs.Pipeline("remote", [one], store="memory://", executor=executor)
    try:
        report = check([pipeline])
    finally:
        executor.close()
    checks = _by_name(report)
    assert not report.ok
    assert not checks["broker"].ok  # type: ignore[attr-defined]
    assert "FLOWSTONE_BROKER_URL" in checks["broker"].detail  # type: ignore[attr-defined]
    assert not checks["workers"].ok  # type: ignore[attr-defined]
    assert checks["store"].ok  # type: ignore[attr-defined]


def test_heartbeats_must_be_fresh_when_a_daemon_is_needed() -> None:
    schedule = fs.Schedule("nightly", "0 3 * * *", target="total")
    pipeline = etl([], schedules=[schedule])
    now = datetime.now(UTC)
    heartbeat = _by_name(check([pipeline], now=now))["heartbeat"]
    assert not heartbeat.ok  # type: ignore[attr-defined]
    assert "flowstone daemon" in heartbeat.detail  # type: ignore[attr-defined]
    write_heartbeat(pipeline.store, "etl", "daemon", now - timedelta(seconds=30))
    assert _by_name(check([pipeline], now=now))["heartbeat"].ok  # type: ignore[attr-defined]
    later = now + timedelta(minutes=10)
    stale = _by_name(check([pipeline], now=later, heartbeat_max_age=60))["heartbeat"]
    assert not stale.ok and "old" in stale.detail  # type: ignore[attr-defined]
    write_heartbeat(pipeline.store, "etl", "sweeper", later)  # a second writer: CAS loop
    assert set(read_heartbeats(pipeline.store, "etl")) == {"daemon", "sweeper"}


def _cli(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLOWSTONE_DATABASE_URL": f"sqlite:///{db}"}
    return subprocess.run([sys.executable, "-m", "flowstone", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_cli_health_json_and_exit_codes(tmp_path: Path) -> None:
    done = _cli("metrics", "health", SIMPLE, "--json", db=tmp_path / "ok.db")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] is True and {c["name"] for c in doc["checks"]} >= {"store", "heartbeat"}



def test_cli_lists_every_metric() -> None:
    done = subprocess.run([sys.executable, "-m", "flowstone", "metrics", "list", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    names = {m["name"] for m in json.loads(done.stdout)["metrics"]}
    assert "flowstone_asset_missing_partitions" in names
