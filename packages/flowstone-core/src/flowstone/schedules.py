"""Schedules: run targets on a cron schedule, in a time zone, with a catch-up policy.

A :class:`Schedule` is a plain value; the daemon (:mod:`flowstone.daemon`) evaluates it.

Example:
    >>> nightly = Schedule("nightly", "0 2 * * *", "report",
    ...                    timezone="Europe/Paris", partition=previous_day)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flowstone.cron import CronExpression
from flowstone.errors import DefinitionError, UsageError
from flowstone.partitions import PartitionKey

__all__ = ["CatchUp", "Schedule", "previous_day", "previous_hour"]

CatchUp = Literal["latest", "all", "none"]
_CATCH_UP: tuple[str, ...] = ("latest", "all", "none")
# Names end up in store keys such as "schedule:<pipeline>:<name>", so no ':' or spaces.
# Counting dropped ticks is for the report only; stop counting at this many.
_MAX_COUNTED = 1000
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")


@dataclass(frozen=True, slots=True)
class Schedule:
    """Run ``target`` at every tick of ``cron`` in ``timezone``.

    Args:
        name: identifier-like name, unique within the pipeline (letters, digits, ``_.-``).
        cron: a five-field cron expression or macro (see :mod:`flowstone.cron`).
        target: the asset (or assets) each run materializes.
        timezone: IANA time zone the cron fields are read in; DST is handled as described in
            :mod:`flowstone.cron`.
        partition: maps a tick (aware, in ``timezone``) to the run's partition, e.g.
            :func:`previous_day`; ``None`` runs unpartitioned.
        catch_up: what to do with ticks missed while no daemon was running: ``"latest"``
            fires only the most recent one, ``"all"`` fires every one (the most recent
            ``max_catch_up``), ``"none"`` fires none of them and only ticks from now on.
        max_catch_up: bound on the ticks ``"all"`` fires in one daemon tick.
        tags: added to every run the schedule starts.

    Raises:
        DefinitionError: a bad name, cron expression, time zone or catch-up setting.
    """

    name: str
    cron: str
    target: str | Sequence[str]
    timezone: str = "UTC"
    partition: Callable[[datetime], PartitionKey | None] | None = None
    catch_up: CatchUp = "latest"
    max_catch_up: int = 100
    tags: Mapping[str, str] | None = field(default=None, hash=False)
    _expression: CronExpression = field(init=False, repr=False, compare=False)
    _zone: tzinfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"schedule {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise DefinitionError(
                f"invalid schedule name {self.name!r}: use letters, digits, '_', '.' or '-', "
                "starting with a letter or '_' (at most 128 characters), e.g. 'nightly_report'"
            )
        try:
            expression = CronExpression.parse(self.cron)
        except UsageError as exc:
            raise DefinitionError(f"{where}: {exc}") from exc
        object.__setattr__(self, "_expression", expression)
        object.__setattr__(self, "_zone", _zone(self.timezone, where))
        object.__setattr__(self, "target", _targets(self.target, where))
        if self.partition is not None and not callable(self.partition):
            raise DefinitionError(
                f"{where}: partition must be a function of the tick, e.g. "
                f"partition=flowstone.previous_day; got {self.partition!r}"
            )
        if self.catch_up not in _CATCH_UP:
            raise DefinitionError(
                f"{where}: catch_up={self.catch_up!r} is not one of 'latest', 'all', 'none'"
            )
        if (
            isinstance(self.max_catch_up, bool)
            or not isinstance(self.max_catch_up, int)
            or (self.max_catch_up < 1)
        ):
            raise DefinitionError(
                f"{where}: max_catch_up={self.max_catch_up!r} must be a positive integer"
            )
        object.__setattr__(self, "tags", _tags(self.tags, where))

    @property
    def targets(self) -> tuple[str, ...]:
        """The target assets as a tuple."""
        return tuple(self.target)

    @property
    def expression(self) -> CronExpression:
        """The parsed cron expression."""
        return self._expression

    @property
    def zone(self) -> tzinfo:
        """The time zone ticks are computed in."""
        return self._zone

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after ``after`` (aware, in the schedule's time zone)."""
        return self._expression.next_after(after, self._zone)

    def last_tick(self, before: datetime) -> datetime:
        """The last tick strictly before ``before`` (aware, in the schedule's time zone)."""
        return self._expression.previous_before(before, self._zone)

    def ticks_between(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Every tick ``t`` with ``start < t <= end``, in order."""
        return self._expression.ticks_between(start, end, self._zone)

    def due_ticks(
        self, last_evaluated: datetime, now: datetime, *, grace: timedelta
    ) -> tuple[tuple[datetime, ...], int]:
        """The ticks in ``(last_evaluated, now]`` to fire under the catch-up policy.

        A tick older than ``grace`` before ``now`` counts as *missed* (no daemon was running
        when it came due). Work is bounded however long the daemon was down.

        Returns:
            (ticks to fire, oldest first; how many due ticks were dropped by the policy).
        """
        if now <= last_evaluated:
            return (), 0
        recent: list[datetime] = []
        keep = 1 if self.catch_up == "latest" else self.max_catch_up
        cursor = now + timedelta(microseconds=1)  # previous_before is strict; include now
        while len(recent) < keep + 1:
            try:
                tick = self._expression.previous_before(cursor, self._zone)
            except UsageError:
                break  # no tick that far back: nothing more was missed
            if tick <= last_evaluated:
                break
            recent.append(tick)
            cursor = tick
        fire = recent[:keep]
        if self.catch_up == "none":
            fire = [t for t in fire if t >= now - grace]
        due = len(recent)
        if len(recent) > keep:
            # More were due than we looked at: count the older ones, bounded.
            due -= 1
            for _ in self.ticks_between(last_evaluated, recent[-1]):
                due += 1
                if due >= _MAX_COUNTED:
                    break
        return tuple(reversed(fire)), due - len(fire)


def previous_day(tick: datetime) -> date:
    """Partition function: the day before the tick's local date (yesterday's daily partition).

    A schedule firing at ``0 2 * * *`` in ``Europe/Paris`` on 2024-06-02 gets
    ``date(2024, 6, 1)``.
    """
    return tick.date() - timedelta(days=1)


def previous_hour(tick: datetime) -> datetime:
    """Partition function: the hour before the tick's hour, as an aware UTC datetime on the
    hour (the key :class:`~flowstone.partitions.HourlyPartitions` uses).

    A tick at ``10:05`` UTC gets ``09:00`` UTC.
    """
    hour = tick.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return hour - timedelta(hours=1)


def _zone(name: object, where: str) -> tzinfo:
    if name == "UTC":
        return UTC  # needs no tz database
    if isinstance(name, str):
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    raise DefinitionError(
        f"{where}: unknown timezone {name!r}; use an IANA name such as 'UTC' or "
        "'Europe/Paris' (zoneinfo.available_timezones() lists them; install 'tzdata' if it "
        "is empty)"
    )


def _targets(target: object, where: str) -> tuple[str, ...]:
    targets = (target,) if isinstance(target, str) else target
    if (
        not isinstance(targets, Sequence)
        or not targets
        or not all(isinstance(t, str) and t for t in targets)
    ):
        raise DefinitionError(
            f"{where}: target must be an asset name or a non-empty list of asset names, "
            f"got {target!r}"
        )
    return tuple(targets)


def _tags(tags: object, where: str) -> Mapping[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise DefinitionError(f"{where}: tags must map str to str, got {tags!r}")
    return dict(tags)
