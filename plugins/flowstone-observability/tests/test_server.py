"""The HTTP endpoint: /metrics parses as Prometheus text, /healthz answers JSON."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from helpers import etl
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from flowstone_observability import PrometheusObserver, serve
from flowstone_observability.server import MetricsServer


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_and_healthz_over_http() -> None:
    registry = CollectorRegistry()
    pipeline = etl([PrometheusObserver(registry)])
    pipeline.run("total")
    with MetricsServer(registry, health=lambda: (False, {"ok": False}), port=0) as server:
        assert server.host == "127.0.0.1"
        status, text = _get(f"{server.url}/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = [s for s in families["flowstone_materializations"].samples
                   if s.name.endswith("_total")]
        assert {"pipeline": "etl", "asset": "total", "status": "succeeded"} in [
            s.labels for s in samples]
        status, body = _get(f"{server.url}/healthz")
        assert (status, json.loads(body)) == (503, {"ok": False})
        assert _get(f"{server.url}/nothing")[0] == 404


def test_serve_attaches_the_observer_and_exports_store_freshness() -> None:
    pipeline = etl([])
    serving = serve([pipeline], port=0, role="daemon")
    try:
        pipeline.run("total")
        status, text = _get(f"{serving.server.url}/metrics")
        assert status == 200
        names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        assert "flowstone_materializations_total" in names
        assert "flowstone_asset_last_materialized_timestamp_seconds" in names
        status, body = _get(f"{serving.server.url}/healthz")
        doc = json.loads(body)
        assert status == 200 and doc["ok"] is True and doc["role"] == "daemon"
        assert {c["name"] for c in doc["checks"]} == {
            "store", "migrations", "broker", "workers", "heartbeat", "resources"}
    finally:
        serving.close()
