"""The daemon loop: fire schedules, evaluate sensors, expire waits, prune old decisions.

Every decision that must happen once is taken by the run store, never by the daemon:
``claim_tick`` hands each schedule tick and each sensor ``run_key`` to exactly one caller,
and cursors advance with compare-and-set. So any number of daemons may tick the same
store at the same time without firing anything twice.

Firing is at most once: a daemon that dies after claiming a tick and before starting its
run loses that run (no other daemon will fire the tick).

Example:
    >>> import threading
    >>> stop = threading.Event()
    >>> # Daemon([pipeline]).run(interval=30, stop=stop)   # until stop.set() or SIGTERM
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Literal, Protocol

from flowstone.engine.runner import is_infrastructure
from flowstone.errors import DefinitionError, StorageError, UsageError
from flowstone.partitions import PartitionKey
from flowstone.run_store import TicksAndCursors
from flowstone.schedules import Schedule
from flowstone.sensors import Sensor, SensorContext

__all__ = [
    "Daemon",
    "FiredRun",
    "PipelineLike",
    "SkippedTick",
    "TickError",
    "TickReport",
    "TickStore",
    "install_signal_handlers",
]

_log = logging.getLogger(__name__)

Source = Literal["schedule", "sensor", "expire", "prune", "recover"]


class TickStore(TicksAndCursors, Protocol):
    """The roles of :class:`~flowstone.protocols.RunStore` the daemon uses: cursors and
    ticks (:class:`~flowstone.protocols.TicksAndCursors`), and whether a run exists."""

    def get_run(self, run_id: str) -> object | None: ...


class PipelineLike(Protocol):
    """What the daemon needs from a pipeline (:class:`flowstone.Pipeline` has it all)."""

    @property
    def name(self) -> str: ...

    @property
    def store(self) -> TickStore: ...

    @property
    def schedules(self) -> tuple[Schedule, ...]: ...

    @property
    def sensors(self) -> tuple[Sensor, ...]: ...

    def run(
        self,
        targets: str | Sequence[str],
        /,
        *,
        partition: PartitionKey | None = None,
        tags: dict[str, str] | None = None,
        force: bool = False,
        run_id: str | None = None,
    ) -> object:
        """Start a run (in-process: run it to completion or until it waits)."""
        ...

    def expire_due(self, now: datetime | None = None) -> int:
        """Fail approvals and gates whose timeout passed (by the store's clock, or by
        ``now`` if given); return how many."""
        ...

    def prune(self, now: datetime) -> int:
        """Delete route decisions older than the retention; return how many."""
        ...

    def recover(self, now: datetime) -> int:
        """Re-dispatch steps whose message was lost or whose worker died; return how many."""
        ...


@dataclass(frozen=True, slots=True)
class FiredRun:
    """A run this daemon started. ``key`` is the tick (UTC ISO 8601) or the run key."""

    pipeline: str
    source: Literal["schedule", "sensor"]
    name: str
    key: str
    targets: tuple[str, ...]
    partition: PartitionKey | None
    run_id: str | None
    status: str | None


@dataclass(frozen=True, slots=True)
class SkippedTick:
    """Something not fired, and why (claimed by another daemon, dropped by catch-up...)."""

    pipeline: str
    source: Literal["schedule", "sensor"]
    name: str
    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class TickError:
    """A failure the daemon survived: a sensor or a run raised, a store call failed."""

    pipeline: str
    source: Source
    name: str
    key: str | None
    error: str


@dataclass(frozen=True, slots=True)
class TickReport:
    """Everything one :meth:`Daemon.tick` did."""

    now: datetime
    fired: tuple[FiredRun, ...] = ()
    skipped: tuple[SkippedTick, ...] = ()
    errors: tuple[TickError, ...] = ()
    expired: int = 0
    pruned: int = 0
    recovered: int = 0

    @property
    def failed_runs(self) -> tuple[FiredRun, ...]:
        """Fired runs that finished ``failed``."""
        return tuple(f for f in self.fired if f.status == "failed")

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return (
            f"{self.now.isoformat()}: fired {len(self.fired)} "
            f"({len(self.failed_runs)} failed), skipped {len(self.skipped)}, "
            f"errors {len(self.errors)}, expired {self.expired}, pruned {self.pruned}, "
            f"recovered {self.recovered}"
        )


class _Collector:
    __slots__ = ("errors", "expired", "fired", "pruned", "recovered", "skipped")

    def __init__(self) -> None:
        self.fired: list[FiredRun] = []
        self.skipped: list[SkippedTick] = []
        self.errors: list[TickError] = []
        self.expired = 0
        self.pruned = 0
        self.recovered = 0

    def error(self, pipeline: str, source: Source, name: str, key: str | None, exc: object) -> None:
        failure = exc if isinstance(exc, BaseException) else None
        text = f"{type(exc).__name__}: {exc}" if failure else str(exc)
        _log.error(
            "daemon: %s %s:%s %s failed: %s",
            source,
            pipeline,
            name,
            key or "",
            text,
            exc_info=failure,
        )
        self.errors.append(TickError(pipeline, source, name, key, text))


class _Scope:
    """Reports and run starts for one schedule or sensor of one pipeline."""

    __slots__ = ("name", "out", "pipeline", "source")

    def __init__(
        self,
        pipeline: PipelineLike,
        source: Literal["schedule", "sensor"],
        name: str,
        out: _Collector,
    ) -> None:
        self.pipeline, self.source, self.name, self.out = pipeline, source, name, out

    def skip(self, key: str, reason: str) -> None:
        self.out.skipped.append(
            SkippedTick(self.pipeline.name, self.source, self.name, key, reason)
        )

    def error(self, key: str | None, exc: object) -> None:
        self.out.error(self.pipeline.name, self.source, self.name, key, exc)

    def claim(self, claim_name: str, key: str) -> str | None:
        """The run id of firing ``key`` now, or None if it already fired.

        The run id is derived from the tick (or run key), so creating the run is the
        exactly-once point: two daemons firing it at once, or a retry of a fire whose
        start failed, create it once. ``claim_tick`` is the fast path; a claimed key whose
        run does not exist (its start failed on an infrastructure error) is fired again.
        """
        run_id = fire_run_id(self.pipeline.name, claim_name, key)
        store = self.pipeline.store
        if not store.claim_tick(claim_name, key) and store.get_run(run_id) is not None:
            return None
        return run_id

    def fire(
        self,
        key: str,
        targets: tuple[str, ...],
        partition: PartitionKey | None,
        tags: dict[str, str],
        *,
        run_id: str,
        force: bool = False,
    ) -> bool:
        """Start the run; False if it must be tried again (the store failed before the run
        existed). An error that would fail again (a bad partition, say) is reported and
        not retried."""
        target = targets[0] if len(targets) == 1 else targets
        try:
            result = self.pipeline.run(
                target, partition=partition, tags=tags, force=force, run_id=run_id
            )
        except StorageError as exc:
            if self.pipeline.store.get_run(run_id) is None:
                self.error(key, exc)
                return not is_infrastructure(exc)  # retried unless the input was at fault
            self.skip(key, "already fired (its run exists)")  # another daemon, or a retry
            return True
        except Exception as exc:
            self.error(key, exc)
            return True
        started, status = getattr(result, "run_id", None), getattr(result, "status", None)
        fired = FiredRun(
            self.pipeline.name,
            self.source,
            self.name,
            key,
            targets,
            partition,
            None if started is None else str(started),
            None if status is None else str(status),
        )
        _log.info(
            "daemon: %s %s:%s fired %s -> run %s (%s)",
            self.source,
            self.pipeline.name,
            self.name,
            key,
            fired.run_id,
            fired.status,
        )
        self.out.fired.append(fired)
        return True


class Daemon:
    """Ticks the schedules and sensors of some pipelines.

    Args:
        pipelines: the pipelines to serve (names must be unique).
        clock: returns the current aware time; defaults to ``datetime.now(UTC)``.
        misfire_grace: a schedule tick older than this when first seen counts as missed
            (matters for ``catch_up="none"``); keep it above the loop interval.

    Raises:
        DefinitionError: two pipelines share a name, or a pipeline has two schedules
            (or two sensors) with the same name.
    """

    def __init__(
        self,
        pipelines: Sequence[PipelineLike],
        *,
        clock: Callable[[], datetime] | None = None,
        misfire_grace: timedelta = timedelta(minutes=5),
    ) -> None:
        self._pipelines = tuple(pipelines)
        self._clock = clock or _utc_now
        if not isinstance(misfire_grace, timedelta) or misfire_grace < timedelta(0):
            raise UsageError(
                f"misfire_grace must be a non-negative timedelta, got {misfire_grace!r}"
            )
        self._grace = misfire_grace
        _check_unique([p.name for p in self._pipelines], "pipeline", "the daemon")
        for pipeline in self._pipelines:
            where = f"pipeline {pipeline.name!r}"
            _check_unique([s.name for s in pipeline.schedules], "schedule", where)
            _check_unique([s.name for s in pipeline.sensors], "sensor", where)

    @property
    def pipelines(self) -> tuple[PipelineLike, ...]:
        """The pipelines this daemon serves."""
        return self._pipelines

    def tick(self, now: datetime | None = None) -> TickReport:
        """Evaluate everything due at ``now`` (default: the clock) once; never raises for a
        failing sensor, run or store call: those are in the report.

        Raises:
            UsageError: ``now`` is naive.
        """
        at = self._clock() if now is None else now
        own_time = now is not None or self._clock is not _utc_now
        if at.tzinfo is None or at.utcoffset() is None:
            raise UsageError(f"now={at!r} is naive; pass an aware datetime (tzinfo=UTC)")
        at = at.astimezone(UTC)
        out = _Collector()
        for pipeline in self._pipelines:
            for schedule in pipeline.schedules:
                try:
                    self._tick_schedule(pipeline, schedule, at, out)
                except Exception as exc:
                    out.error(pipeline.name, "schedule", schedule.name, None, exc)
            for sensor in pipeline.sensors:
                try:
                    self._tick_sensor(pipeline, sensor, at, out)
                except Exception as exc:
                    out.error(pipeline.name, "sensor", sensor.name, None, exc)
            try:
                # expiry is judged by the store's clock (the database's), unless this tick
                # was given a time or a clock of its own (tests, replays)
                out.expired += pipeline.expire_due(at if own_time else None)
            except Exception as exc:
                out.error(pipeline.name, "expire", pipeline.name, None, exc)
            try:
                out.pruned += pipeline.prune(at)
            except Exception as exc:
                out.error(pipeline.name, "prune", pipeline.name, None, exc)
            try:
                out.recovered += pipeline.recover(at)
            except Exception as exc:
                out.error(pipeline.name, "recover", pipeline.name, None, exc)
        report = TickReport(
            at,
            tuple(out.fired),
            tuple(out.skipped),
            tuple(out.errors),
            out.expired,
            out.pruned,
            out.recovered,
        )
        names = ", ".join(pipeline.name for pipeline in self._pipelines)
        _log.info("daemon tick of %s %s", names or "no pipeline", report.summary())
        return report

    def run(self, interval: float = 30.0, stop: threading.Event | None = None) -> None:
        """Tick every ``interval`` seconds until ``stop`` is set.

        A tick in progress is finished before returning. Pair with
        :func:`install_signal_handlers` to stop on SIGTERM/SIGINT.

        Raises:
            UsageError: ``interval`` is not positive.
        """
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise UsageError(f"interval must be a positive number of seconds, got {interval!r}")
        event = stop if stop is not None else threading.Event()
        while not event.is_set():
            try:
                self.tick()
            except Exception:  # a broken clock must not kill the loop either
                _log.exception("daemon tick failed")
            event.wait(interval)

    # --- schedules -----------------------------------------------------------------------
    def _tick_schedule(
        self, pipeline: PipelineLike, schedule: Schedule, now: datetime, out: _Collector
    ) -> None:
        scope = _Scope(pipeline, "schedule", schedule.name, out)
        store, key = pipeline.store, f"schedule:{pipeline.name}:{schedule.name}"
        raw = store.get_cursor(key)
        if raw is None:
            # First sight: start from now, never backfill history.
            store.set_cursor(key, now.isoformat(), expected=None)
            return
        ticks, dropped = schedule.due_ticks(_parse_time(raw, key), now, grace=self._grace)
        if dropped:
            before = (ticks[0] if ticks else now).astimezone(UTC).isoformat()
            scope.skip(
                f"{dropped} tick(s) before {before}",
                f"missed while no daemon was running; catch_up={schedule.catch_up!r}",
            )
        for tick in ticks:
            tick_key = tick.astimezone(UTC).isoformat()
            try:
                partition = schedule.partition(tick) if schedule.partition else None
            except Exception as exc:
                scope.error(tick_key, exc)
                continue
            run_id = scope.claim(key, tick_key)
            if run_id is None:
                scope.skip(tick_key, "already fired (claimed by another daemon)")
                continue
            tags = {**(schedule.tags or {}), "schedule": schedule.name, "tick": tick_key}
            if not scope.fire(tick_key, schedule.targets, partition, tags, run_id=run_id):
                # the store failed before the run existed: this tick fires on a later tick
                _advance(store, key, tick - timedelta(microseconds=1))
                return
        _advance(store, key, now)

    # --- sensors -------------------------------------------------------------------------
    def _tick_sensor(
        self, pipeline: PipelineLike, sensor: Sensor, now: datetime, out: _Collector
    ) -> None:
        scope = _Scope(pipeline, "sensor", sensor.name, out)
        store, key = pipeline.store, f"sensor:{pipeline.name}:{sensor.name}"
        raw = store.get_cursor(key)
        cursor, last_tick = _decode_sensor_state(raw, key)
        if last_tick is not None and now < last_tick + sensor.interval:
            return
        # Claim this evaluation first, so two daemons never both run the sensor function.
        claimed = _encode_sensor_state(cursor, now)
        if not store.set_cursor(key, claimed, expected=raw):
            scope.skip(now.isoformat(), "evaluated by another daemon")
            return
        try:
            result = sensor.evaluate(
                SensorContext(pipeline.name, sensor.name, now, cursor, last_tick)
            )
        except Exception as exc:
            scope.error(None, exc)
            return
        for request in result.run_requests:
            targets = tuple(request.targets) if request.targets else sensor.targets
            if not targets:
                scope.error(
                    request.run_key,
                    f"run request {request.run_key!r} names no targets and the sensor has "
                    "no target; give Sensor(target=...) or RunRequest(targets=[...])",
                )
                continue
            run_id = scope.claim(key, request.run_key)
            if run_id is None:
                scope.skip(request.run_key, "run key already fired")
                continue
            tags = {**(sensor.tags or {}), **(request.tags or {})}
            tags.update(sensor=sensor.name, run_key=request.run_key)
            if not scope.fire(
                request.run_key, targets, request.partition, tags,
                run_id=run_id, force=request.force,
            ):  # fmt: skip
                # the store failed before the run existed: keep the old cursor, so the next
                # evaluation asks for this run key again (the others are de-duplicated)
                return
        if result.cursor is not None and result.cursor != cursor:
            saved = _encode_sensor_state(result.cursor, now)
            if not store.set_cursor(key, saved, expected=claimed):
                scope.error(
                    None,
                    f"cursor {key!r} changed while the sensor ran; its new cursor "
                    f"{result.cursor!r} was not saved (requests are de-duplicated by run "
                    "key, so the next evaluation is safe)",
                )


def fire_run_id(pipeline: str, claim_name: str, key: str) -> str:
    """The id of the run a schedule tick or sensor run key starts: derived from them, so
    the run store's unique run ids make the start exactly-once."""
    digest = hashlib.sha256(f"{pipeline}\x00{claim_name}\x00{key}".encode()).hexdigest()
    return f"fire-{digest[:40]}"


def _advance(store: TickStore, key: str, now: datetime) -> None:
    """Move a schedule cursor forward to ``now``; never backwards, safe against races."""
    for _ in range(5):
        raw = store.get_cursor(key)
        if raw is not None and _parse_time(raw, key) >= now:
            return
        if store.set_cursor(key, now.isoformat(), expected=raw):
            return


def _parse_time(raw: str, key: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise UsageError(
            f"store cursor {key!r} holds {raw!r}, not an aware ISO 8601 time; "
            "delete that cursor to restart the schedule from now"
        )
    return value.astimezone(UTC)


def _decode_sensor_state(raw: str | None, key: str) -> tuple[str | None, datetime | None]:
    if raw is None:
        return None, None
    try:
        state = json.loads(raw)
        cursor, last = state["cursor"], state["last_tick"]
        if not (cursor is None or isinstance(cursor, str)) or not isinstance(last, str):
            raise TypeError(raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"store cursor {key!r} holds {raw!r}, not sensor state; delete that cursor to "
            "restart the sensor"
        ) from exc
    return cursor, _parse_time(last, key)


def _encode_sensor_state(cursor: str | None, last_tick: datetime) -> str:
    return json.dumps({"cursor": cursor, "last_tick": last_tick.isoformat()}, sort_keys=True)


def _check_unique(names: list[str], what: str, where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DefinitionError(
                f"{where} has two {what}s named {name!r}; give each {what} a unique name"
            )
        seen.add(name)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    """Make SIGTERM and SIGINT set ``stop`` (so :meth:`Daemon.run` finishes its tick and
    returns). Call from the main thread; returns a function that restores the previous
    handlers.

    Raises:
        UsageError: not called from the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        raise UsageError("install_signal_handlers must be called from the main thread")

    def handle(signum: int, frame: FrameType | None) -> None:
        _log.info(
            "daemon: received %s, stopping after the current tick", signal.Signals(signum).name
        )
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
