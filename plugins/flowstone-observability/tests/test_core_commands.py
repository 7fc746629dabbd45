"""The core commands find the plugin: `flowstone health` and `flowstone daemon --metrics-port`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).parent
SIMPLE = f"{HERE / 'pipelines' / 'simple.py'}:pipeline"


def _env(db: Path) -> dict[str, str]:
    return {**os.environ, "FLOWSTONE_DATABASE_URL": f"sqlite:///{db}"}


def _start(log: Path, db: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``flowstone *args`` and return it with the metrics URL it printed."""
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flowstone", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=_env(db))
    deadline = time.monotonic() + 60
    while True:
        url = next((w.split("/metrics")[0] for w in log.read_text().split()
                    if w.startswith("http://127.0.0.1:")), "")
        if url:
            return proc, url
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(log.read_text())
        time.sleep(0.1)


def test_core_health_gives_the_plugin_report(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "flowstone", "health", SIMPLE, "--json"],
                          capture_output=True, text=True, timeout=120, env=_env(tmp_path / "a.db"))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] is True
    assert [c["name"] for c in doc["checks"]] == [
        "store", "migrations", "broker", "workers", "heartbeat", "resources"]


def test_daemon_serves_metrics_and_writes_its_heartbeat(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    subprocess.run([sys.executable, "-m", "flowstone", "run", SIMPLE, "total"], check=True,
                   capture_output=True, timeout=120, env=_env(db))
    log = tmp_path / "daemon.log"
    proc, url = _start(log, db, "daemon", SIMPLE, "--interval", "0.2", "--metrics-port", "0")
    deadline = time.monotonic() + 60
    try:
        sweeps = ("flowstone_sweeps_total", (("pipeline", "simple"), ("role", "daemon")))
        text, samples = "", {}
        # the family is declared (its HELP line) before the daemon's first sweep counts
        while sweeps not in samples:
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
                text = response.read().decode()
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples[sweeps] >= 1
        stamp = samples[("flowstone_asset_last_materialized_timestamp_seconds",
                         (("asset", "total"), ("pipeline", "simple")))]
        assert 0 < time.time() - stamp < 600
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
            health = json.loads(response.read())
        heartbeat = next(c for c in health["checks"] if c["name"] == "heartbeat")
        assert heartbeat["ok"] and "daemon" in heartbeat.get("data", {})
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()


def test_metrics_serve_exports_store_freshness_until_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    subprocess.run([sys.executable, "-m", "flowstone", "run", SIMPLE, "total"], check=True,
                   capture_output=True, timeout=120, env=_env(db))
    log = tmp_path / "serve.log"
    proc, url = _start(log, db, "metrics", "serve", SIMPLE, "--port", "0")
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            text = response.read().decode()
        names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        assert "flowstone_asset_last_materialized_timestamp_seconds" in names
        assert "flowstone_store_up" in names
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    assert "metrics server stopped" in log.read_text()


def test_daemon_logs_json_with_the_variable(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    env = {**_env(db), "FLOWSTONE_LOG_FORMAT": "json"}
    done = subprocess.run(
        [sys.executable, "-m", "flowstone", "-v", "daemon", SIMPLE, "--once",
         "--metrics-port", "0"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert lines, done.stderr
    assert all({"run_id", "pipeline", "asset", "partition", "attempt"} <= set(doc)
               for doc in lines)


def test_worker_rejects_a_bad_metrics_port(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flowstone", "worker", "--pipeline", SIMPLE,
         "--metrics-port", "70000"], capture_output=True, text=True, timeout=120,
        env=_env(tmp_path / "w.db"))
    assert done.returncode == 2, done.stderr
    assert "FLOWSTONE_METRICS_PORT" in done.stderr
