"""Schedules and sensors under contention: every sweeper and daemon evaluates them, each
tick and each sensor ``run_key`` must fire one run.

* ``every_minute``: ``* * * * *`` with ``catch_up="all"``; a test sets its cursor ten
  minutes back, so ten ticks are due at once. Its partition function (user code, called by
  every evaluator before it claims a tick) audits each call.
* ``five_keys``: returns the same five run keys at every evaluation; its 10 ms interval
  makes it due at every tick of every sweeper and daemon (each ticks once a second), so
  all of them contend for the keys. Each evaluation is audited.
* ``fired``: the target; each execution is audited with its run id.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fault_dag import AUDIT

import flowstone as fs

KEYS = [f"key{i}" for i in range(5)]


@fs.asset
def fired(context: fs.Context) -> dict[str, Any]:
    eid = AUDIT.write(context.run_id, "fired", str(context.partition), "asset", context.attempt)
    return {"eid": eid}


def tick_partition(tick: datetime) -> str:
    AUDIT.write("-", "every_minute", tick.isoformat(), "schedule_eval")
    return f"tick-{tick:%H%M}"


@fs.sensor(target="fired", interval=timedelta(milliseconds=10))
def five_keys(context: Any) -> list[fs.RunRequest]:
    AUDIT.write("-", "five_keys", "", "sensor_eval")
    return [fs.RunRequest(run_key=k, partition=f"sensor-{k}") for k in KEYS]


every_minute = fs.Schedule("every_minute", "* * * * *", "fired", catch_up="all",
                           partition=tick_partition)


def make_pipeline() -> fs.Pipeline:
    """A new pipeline object, configured from the environment as it is now."""
    return fs.Pipeline("faults_daemons", [fired], schedules=[every_minute],
                       sensors=[five_keys])


_built: list[fs.Pipeline] = []


def __getattr__(name: str) -> Any:
    """``pipeline``, built on first use: workers load it by its spec, while tests build
    their own with :func:`make_pipeline` (so importing this module opens nothing)."""
    if name == "pipeline":
        if not _built:
            _built.append(make_pipeline())
        return _built[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
