"""The sweeper: what keeps a distributed run moving when messages or workers are lost.

Each sweep, per pipeline:

* ``pipeline.recover()`` (through a daemon tick) re-dispatches steps that stayed ``ready``
  longer than ``FLOWSTONE_RECOVER_AFTER`` (lost message, broker restart) and steps whose worker died
  (lease expired), and finishes waiting steps whose approval was decided by a process
  that died before resuming them;
* the same :class:`flowstone.daemon.Daemon` tick fires due schedules and sensors and expires
  approvals and signal gates whose timeout passed.

Any number of workers (or ``celery beat`` plus workers) may sweep the same store: the store's
``claim_tick`` hands each interval of each pipeline to exactly one sweeper, and the daemon's
own ticks are exactly-once too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from flowstone.daemon import Daemon

if TYPE_CHECKING:
    from flowstone_celery.app import FlowstoneCelery

__all__ = ["SweepReport", "Sweeper", "SweeperThread"]

log = logging.getLogger("flowstone.celery")


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one sweep did: pipelines it won the interval for, steps re-dispatched, runs
    fired by schedules and sensors, waits expired, errors (logged, never raised)."""

    swept: tuple[str, ...]
    recovered: int
    fired: int
    expired: int
    errors: int


_BUCKET_RETENTION = timedelta(hours=1)  # a sweep interval's claim, once it is over

class _NonWaiting:
    """A pipeline seen by the daemon: starting a run enqueues it and returns at once
    (the daemon must not block on a run that executes on workers)."""

    __slots__ = ("_p", "_recover_after")

    def __init__(self, pipeline: Any, recover_after: float) -> None:
        self._p = pipeline
        self._recover_after = recover_after

    @property
    def name(self) -> str:
        return str(self._p.name)

    @property
    def store(self) -> Any:
        return self._p.store

    @property
    def schedules(self) -> Any:
        return self._p.schedules

    @property
    def sensors(self) -> Any:
        return self._p.sensors

    def run(self, targets: str | Sequence[str], /, *, partition: Any = None,
            tags: dict[str, str] | None = None, force: bool = False,
            run_id: str | None = None) -> object:
        return self._p.run(targets, partition, tags=tags, force=force, wait=False,
                           run_id=run_id)

    def expire_due(self, now: datetime | None = None) -> int:
        return int(self._p.expire_due(now))

    def prune(self, now: datetime) -> int:
        return int(self._p.prune(now))

    def recover(self, now: datetime) -> int:
        return int(self._p.recover(now, ready_for_seconds=self._recover_after))


class Sweeper:
    """Sweeps the pipelines served by ``app`` (see the module docstring)."""

    __slots__ = ("_app",)

    def __init__(self, app: FlowstoneCelery) -> None:
        self._app = app

    def sweep(self, now: datetime | None = None) -> SweepReport:
        settings = self._app.flowstone_settings
        at = now or datetime.now(UTC)
        bucket = str(int(at.timestamp() // settings.sweep_interval))
        swept: list[str] = []
        recovered = fired = expired = errors = 0
        for pipeline in list(self._app.pipelines.values()):
            try:
                sweep_key = f"celery-sweep:{pipeline.name}"
                if not pipeline.store.claim_tick(sweep_key, bucket):
                    continue  # another sweeper has this interval
            except Exception:
                errors += 1
                log.exception("sweeping pipeline %s failed", pipeline.name)
                continue
            swept.append(pipeline.name)
            try:  # earlier intervals' claims are of no use once the interval is over
                pipeline.store.prune_ticks(at - _BUCKET_RETENTION, prefix=sweep_key)
            except Exception:
                log.warning("pruning old sweep intervals of %s failed", pipeline.name)
            # The daemon tick recovers, expires waits, prunes, fires schedules and sensors;
            # it never raises (failures are in its report).
            report = Daemon([_NonWaiting(pipeline, settings.recover_after)]).tick(at)
            recovered += report.recovered
            for hook in self._app.sweep_hooks:  # plugin recovery (scatter chunks, ...)
                try:
                    recovered += int(hook(pipeline, at))
                except Exception:
                    errors += 1
                    log.exception("sweep hook %r failed for pipeline %s", hook, pipeline.name)
            fired += len(report.fired)
            expired += report.expired
            errors += len(report.errors)
        if recovered or fired or expired or errors:
            log.info("sweep: recovered %d steps, fired %d runs, expired %d waits, %d errors",
                     recovered, fired, expired, errors)
        result = SweepReport(tuple(swept), recovered, fired, expired, errors)
        for listener in self._app.sweep_listeners:  # plugin metrics (observability, ...)
            try:
                listener(result)
            except Exception:
                log.exception("sweep listener %r failed", listener)
        return result


class SweeperThread:
    """Runs :meth:`Sweeper.sweep` every ``FLOWSTONE_SWEEP_INTERVAL`` seconds in a daemon
    thread of the worker's main process, until :meth:`stop`."""

    __slots__ = ("_stop", "_sweeper", "_thread", "interval")

    def __init__(self, app: FlowstoneCelery) -> None:
        self._sweeper = Sweeper(app)
        self.interval = app.flowstone_settings.sweep_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="flowstone-sweeper",
                                            daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sweeper.sweep()
            except Exception:  # never let one bad sweep end recovery for good
                log.exception("flowstone sweep failed")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
