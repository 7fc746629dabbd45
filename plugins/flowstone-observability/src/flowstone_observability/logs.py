"""Structured JSON logs (opt-in: ``FLOWSTONE_LOG_FORMAT=json``).

Every line is one JSON object with ``ts``, ``level``, ``logger``, ``message`` and the step
fields ``run_id``, ``pipeline``, ``asset``, ``partition`` and ``attempt`` (null when the line
is not about a step). ``context.log`` lines carry them from the context's logger adapter;
FlowStone's own lines get them from :class:`StepLogContext`, an observer that remembers, per
thread, the step that thread is running (the engine emits a step's events in the thread
that runs it). ``flowstone worker``, ``flowstone daemon --metrics-port`` and
``flowstone metrics serve`` set it all up when the variable says ``json``
(:func:`use_json_logs`); other processes call :func:`configure_logging` and add the
observer.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

from flowstone.errors import UsageError
from flowstone.events import Event

__all__ = ["FIELDS", "LOG_FORMAT_ENV", "JsonFormatter", "StepContextFilter", "StepLogContext",
           "configure_logging", "json_logs_requested", "use_json_logs"]

LOG_FORMAT_ENV: Final = "FLOWSTONE_LOG_FORMAT"
FIELDS: Final = ("run_id", "pipeline", "asset", "partition", "attempt")

_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "flowstone_step", default=None)
_ENDS: Final = frozenset({"asset.succeeded", "asset.failed", "asset.skipped", "asset.retrying",
                          "approval.requested", "gate.opened", "asset.waiting"})


def json_logs_requested() -> bool:
    """Whether ``FLOWSTONE_LOG_FORMAT`` asks for JSON.

    Raises:
        UsageError: the variable holds something other than ``json`` or ``text``.
    """
    value = os.environ.get(LOG_FORMAT_ENV, "text").strip().lower()
    if value not in ("json", "text", ""):
        raise UsageError(f"{LOG_FORMAT_ENV} must be 'json' or 'text', got {value[:20]!r}")
    return value == "json"


class StepLogContext:
    """Observer that makes the running step's fields available to log records."""

    __slots__ = ()
    event_kinds: Final = frozenset({"asset.started", *_ENDS})

    def on_event(self, event: Event) -> None:
        if event.kind == "asset.started":
            _current.set({"run_id": event.run_id, "pipeline": event.pipeline,
                          "asset": event.asset, "partition": event.partition,
                          "attempt": event.data.get("attempt")})
        elif event.kind in _ENDS:
            step = _current.get()
            if step is not None and step["asset"] == event.asset:
                _current.set(None)

    def __repr__(self) -> str:
        return "StepLogContext()"


class StepContextFilter(logging.Filter):
    """Puts the step fields on every record: from ``extra`` (``context.log``) first, then
    from the step the current thread runs, else None."""

    def filter(self, record: logging.LogRecord) -> bool:
        step = _current.get()
        for name in FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, step.get(name) if step is not None else None)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            doc[name] = getattr(record, name, None)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def use_json_logs(pipelines: Iterable[Any]) -> bool:
    """With ``FLOWSTONE_LOG_FORMAT=json``: attach :class:`StepLogContext` to ``pipelines``
    and make the handlers already on the root and ``flowstone`` loggers write JSON (a
    stderr handler is added when there are none). Returns whether it did."""
    if not json_logs_requested():
        return False
    from flowstone_observability.observer import attach

    context = StepLogContext()
    for pipeline in pipelines:
        attach(pipeline, context)
    handlers = [*logging.getLogger().handlers, *logging.getLogger("flowstone").handlers]
    for handler in handlers:
        configure_logging(handler)
    if not handlers:
        configure_logging()
    return True


def configure_logging(handler: logging.Handler | None = None, *, level: int | None = None,
                      ) -> logging.Handler:
    """Send log lines as JSON through ``handler`` (default: a new stderr handler on the root
    logger) with the step fields filled in. Returns the handler (remove it to undo)."""
    target = handler or logging.StreamHandler()
    target.setFormatter(JsonFormatter())
    if not any(isinstance(f, StepContextFilter) for f in target.filters):
        target.addFilter(StepContextFilter())
    if handler is None:
        logging.getLogger().addHandler(target)
    if level is not None:
        logging.getLogger().setLevel(level)
    return target
