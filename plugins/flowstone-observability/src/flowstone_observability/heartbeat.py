"""Daemon and sweeper heartbeats, kept in the run store so any process can check them.

A heartbeat is the run-store cursor ``flowstone.heartbeat:<role>:<pipeline>`` holding the
ISO time of the last completed pass. Celery sweepers write theirs through the
``flowstone.celery_tasks`` entry point of this plugin (:func:`register_sweep_hook`, which
also teaches workers the ``flowstone_pipelines`` control command that ``flowstone health``
uses to ask which pipelines each worker serves); ``flowstone daemon --metrics-port``
writes the daemon's after every tick.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["HEARTBEAT_ROLES", "read_heartbeats", "register_sweep_hook", "write_heartbeat"]

log = logging.getLogger("flowstone.observability")

HEARTBEAT_ROLES: Final = ("daemon", "sweeper")
_PREFIX: Final = "flowstone.heartbeat"


def _cursor(role: str, pipeline: str) -> str:
    return f"{_PREFIX}:{role}:{pipeline}"


def write_heartbeat(store: Any, pipeline: str, role: str, now: datetime | None = None) -> None:
    """Record that ``role`` (daemon or sweeper) completed a pass for ``pipeline`` now."""
    if role not in HEARTBEAT_ROLES:
        raise ValueError(f"heartbeat role must be one of {HEARTBEAT_ROLES}, got {role!r}")
    at = (now or datetime.now(UTC)).astimezone(UTC)
    name = _cursor(role, pipeline)
    # cursors are compare-and-set: losing the race means another process wrote a
    # heartbeat a moment ago, which is just as fresh
    for _ in range(2):
        if store.set_cursor(name, at.isoformat(), expected=store.get_cursor(name)):
            return


def read_heartbeats(store: Any, pipeline: str) -> dict[str, datetime]:
    """``{role: time}`` of the heartbeats ever written for ``pipeline``."""
    out: dict[str, datetime] = {}
    for role in HEARTBEAT_ROLES:
        value = store.get_cursor(_cursor(role, pipeline))
        if not value:
            continue
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            log.warning("ignoring unreadable %s heartbeat of %s: %r", role, pipeline, value[:40])
            continue
        out[role] = at if at.tzinfo else at.replace(tzinfo=UTC)
    return out


def register_sweep_hook(app: Any) -> None:
    """``flowstone.celery_tasks`` entry point: every sweep writes the sweeper heartbeat and
    counts itself and the steps it recovered; workers answer ``flowstone_pipelines`` with
    the pipelines they serve."""

    def heartbeat(pipeline: Any, now: datetime) -> int:
        write_heartbeat(pipeline.store, pipeline.name, "sweeper", now)
        from flowstone_observability.metrics import Metrics

        metrics = Metrics.shared()
        metrics.counter("flowstone_sweeps").labels(pipeline.name, "sweeper").inc()
        metrics.gauge("flowstone_heartbeat_timestamp_seconds").labels("sweeper").set(
            now.timestamp())
        return 0  # recovers nothing itself

    def recoveries(report: Any) -> None:
        if report.recovered:
            from flowstone_observability.metrics import Metrics

            Metrics.shared().counter("flowstone_recoveries").labels("sweeper").inc(
                report.recovered)

    app.sweep_hooks.append(heartbeat)
    app.sweep_listeners.append(recoveries)
    _register_control_command()


def _register_control_command() -> None:
    # the command lives in flowstone-celery (every worker answers it; `flowstone run` asks it)
    from flowstone_celery.presence import register_control_command

    register_control_command()
