"""Seed: a health check covering store, broker and workers (seed 001 section 11; DESIGN.md
section 8): the branch where the broker cannot be reached."""

from __future__ import annotations

import socket

import flowstone as fs
from flowstone_celery import CeleryExecutor, CelerySettings


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_seed_health_reports_an_unreachable_broker() -> None:
    """Seed 001 section 11: an unreachable broker makes health fail, saying so."""
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    executor = CeleryExecutor(CelerySettings(broker_url=url, queue="seed-health"))

    @fs.asset
    def one() -> int:
        return 1

    pipeline = fs.Pipeline("seed_health", [one], store="memory://", executor=executor)
    try:
        report = pipeline.health()
        assert report["ok"] is False
        assert report["store"] == "ok"
        broker = report["executor"]["broker"]
        assert broker.startswith("error: ") and "Connection" in broker, broker
        assert report["executor"]["workers"] == 0 and report["executor"]["ok"] is False
    finally:
        pipeline.close()
