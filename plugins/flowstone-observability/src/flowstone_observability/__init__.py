"""FlowStone observability: Prometheus metrics, health checks, JSON logs, OpenLineage export.

Importing this package has no side effects: nothing connects, nothing reads the
environment, and prometheus-client is imported only when one of the names below is first
used (so ``flowstone worker --metrics-port`` can turn on multiprocess mode before any metric
exists). FlowStone finds the observers through the ``prometheus`` and ``openlineage``
entry points in ``flowstone.observers`` and the ``flowstone metrics`` command through
``flowstone.cli``. See ``docs/observability.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flowstone_observability._version import __version__

if TYPE_CHECKING:
    from flowstone_observability.freshness import FreshnessCollector, FreshnessReads
    from flowstone_observability.health import Check, HealthReport, check
    from flowstone_observability.lineage import OpenLineageObserver
    from flowstone_observability.logs import JsonFormatter, StepLogContext, configure_logging
    from flowstone_observability.metrics import METRICS, MetricSpec
    from flowstone_observability.observer import PrometheusObserver, attach
    from flowstone_observability.server import MetricsServer
    from flowstone_observability.serving import Serving, prepare_multiprocess_dir, serve

__all__ = [
    "METRICS",
    "Check",
    "FreshnessCollector",
    "FreshnessReads",
    "HealthReport",
    "JsonFormatter",
    "MetricSpec",
    "MetricsServer",
    "OpenLineageObserver",
    "PrometheusObserver",
    "Serving",
    "StepLogContext",
    "__version__",
    "attach",
    "check",
    "configure_logging",
    "prepare_multiprocess_dir",
    "serve",
]

_HOMES = {
    "METRICS": "metrics", "MetricSpec": "metrics",
    "Check": "health", "HealthReport": "health", "check": "health",
    "FreshnessCollector": "freshness", "FreshnessReads": "freshness",
    "JsonFormatter": "logs", "StepLogContext": "logs", "configure_logging": "logs",
    "MetricsServer": "server",
    "OpenLineageObserver": "lineage",
    "PrometheusObserver": "observer", "attach": "observer",
    "Serving": "serving", "prepare_multiprocess_dir": "serving", "serve": "serving",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'flowstone_observability' has no attribute {name!r}")
    return getattr(importlib.import_module(f"flowstone_observability.{home}"), name)
