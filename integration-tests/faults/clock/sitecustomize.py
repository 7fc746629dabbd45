"""Skew this process's wall clock by ``FLOWSTONE_FAULTS_CLOCK_SKEW`` seconds (the fault
suite puts this directory first on a worker's ``PYTHONPATH``; Python imports
``sitecustomize`` at start-up, before any FlowStone or Celery module).

FlowStone has no clock hook of its own and LD_PRELOAD tricks are not available, so this
patches the two places Python code reads the wall clock from: ``time.time`` /
``time.time_ns`` and ``datetime.datetime.now`` / ``utcnow`` (``datetime.datetime`` is
replaced by a subclass, which every later ``from datetime import datetime`` gets).
``time.monotonic`` is left alone: it measures durations, not the time of day. Timestamps
Postgres computes (``now()``) are not affected: they are the database's clock.
"""

import datetime as _datetime
import os
import sys
import time as _time

_SKEW = float(os.environ.get("FLOWSTONE_FAULTS_CLOCK_SKEW", "0") or 0)

if _SKEW:
    _real_time, _real_time_ns = _time.time, _time.time_ns
    _delta = _datetime.timedelta(seconds=_SKEW)

    def _time_skewed() -> float:
        return _real_time() + _SKEW

    def _time_ns_skewed() -> int:
        return _real_time_ns() + int(_SKEW * 1e9)

    class _SkewedDatetime(_datetime.datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def]
            return super().now(tz) + _delta

        @classmethod
        def utcnow(cls):  # type: ignore[no-untyped-def]
            return super().now(_datetime.UTC).replace(tzinfo=None) + _delta

    _time.time = _time_skewed
    _time.time_ns = _time_ns_skewed
    _datetime.datetime = _SkewedDatetime  # type: ignore[misc]
    print(f"faults clock: this process's clock is skewed by {_SKEW:+g} s", file=sys.stderr,
          flush=True)
