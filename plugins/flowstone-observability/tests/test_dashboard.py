"""The Grafana dashboard in docs/ graphs only metrics this plugin exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flowstone_observability.metrics import METRICS, exported_names

DASHBOARD = Path(__file__).parents[3] / "docs" / "grafana" / "flowstone.json"
NAME = re.compile(r"\bflowstone_[a-z0-9_]+\b")


def _queries(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _queries(item)


def test_every_expression_names_an_exported_metric() -> None:
    doc = json.loads(DASHBOARD.read_text())
    queries = [q for q in _queries(doc) if "flowstone_" in q]
    assert len(queries) >= 20
    exported = exported_names()
    used = {name for q in queries for name in NAME.findall(q)}
    assert used, "no metric named"
    assert used <= exported, sorted(used - exported)
    # the panels the issue asks for are there
    titles = " ".join(p["title"].lower() for p in doc["panels"])
    for word in ("throughput", "failures", "freshness", "queue lag", "scatter"):
        assert word in titles, word


def test_every_exported_metric_is_on_the_dashboard() -> None:
    text = DASHBOARD.read_text()
    missing = [m.name for m in METRICS if not any(s in text for s in m.samples())]
    assert not missing, missing
