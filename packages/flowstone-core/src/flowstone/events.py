"""Events FlowStone emits to observers: frozen, primitive-only, safe to ship anywhere.

Every event has ``kind`` (a dotted name), ``at`` (UTC), ``pipeline``, ``run_id``,
``asset`` and ``partition`` (encoded; "" when unpartitioned or not about an asset) and a
``data`` mapping of JSON-able details. Kinds:

``run.started`` ``run.finished`` ``asset.started`` ``asset.succeeded`` ``asset.failed``
``asset.skipped`` ``asset.retrying`` ``asset.waiting`` ``io.stored`` ``io.loaded``
``route.decided`` ``approval.requested`` ``approval.decided`` ``gate.opened``
``gate.signaled`` ``gate.expired`` ``scatter.progress`` ``lineage.recorded``
``observer.failed``
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["EVENT_KINDS", "Event"]

EVENT_KINDS = frozenset(
    {
        "run.started",
        "run.finished",
        "asset.started",
        "asset.succeeded",
        "asset.failed",
        "asset.skipped",
        "asset.retrying",
        "asset.waiting",
        "io.stored",
        "io.loaded",
        "route.decided",
        "approval.requested",
        "approval.decided",
        "gate.opened",
        "gate.signaled",
        "gate.expired",
        "scatter.progress",
        "lineage.recorded",
        "observer.failed",
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened. ``data`` holds kind-specific JSON-able details
    (e.g. ``duration_s``, ``error``, ``upstream``, ``branch``, ``done``/``total``)."""

    kind: str
    pipeline: str
    run_id: str
    asset: str = ""
    partition: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
