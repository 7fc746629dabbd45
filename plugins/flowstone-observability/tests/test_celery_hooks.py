"""What flowstone-observability adds to every Celery app (kombu's memory transport)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from helpers import etl
from prometheus_client import REGISTRY

from flowstone_celery import CelerySettings, Sweeper, make_app
from flowstone_celery.sweeper import SweepReport
from flowstone_observability.heartbeat import read_heartbeats


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_sweeps_write_heartbeats_and_count_recoveries() -> None:
    app = make_app(CelerySettings(broker_url="memory://", queue=f"t-{uuid.uuid4().hex[:8]}"))
    try:
        pipeline = etl([])
        app.add_pipeline(pipeline)
        before = _count("flowstone_sweeps_total", pipeline="etl", role="sweeper")
        now = datetime.now(UTC)
        report = Sweeper(app).sweep(now)
        assert report.swept == ("etl",)
        assert read_heartbeats(pipeline.store, "etl")["sweeper"] == now
        assert _count("flowstone_sweeps_total", pipeline="etl", role="sweeper") == before + 1
        recovered = _count("flowstone_recoveries_total", role="sweeper")
        for listener in app.sweep_listeners:
            listener(SweepReport(("etl",), 3, 0, 0, 0))
        assert _count("flowstone_recoveries_total", role="sweeper") == recovered + 3
    finally:
        app.close_pipelines()
        app.close()
