"""An observer that writes every event to the ``flowstone.events`` logger."""

from __future__ import annotations

import logging

from flowstone.events import Event

__all__ = ["LoggingObserver"]


class LoggingObserver:
    """Logs events as one line each; failures and retries at WARNING, the rest at INFO."""

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self._log = logger or logging.getLogger("flowstone.events")
        self._level = level

    def on_event(self, event: Event) -> None:
        level = (
            logging.WARNING
            if event.kind in ("asset.failed", "asset.retrying", "observer.failed")
            else self._level
        )
        if not self._log.isEnabledFor(level):
            return
        where = f"{event.asset}[{event.partition}]" if event.partition else event.asset
        details = " ".join(f"{k}={v}" for k, v in event.data.items())
        self._log.log(level, "%s run=%s %s %s", event.kind, event.run_id, where, details)
