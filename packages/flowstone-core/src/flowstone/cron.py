"""Cron expressions: parsing and DST-correct tick arithmetic.

Five fields, ``minute hour day-of-month month day-of-week``, each a comma list of ``*``,
``N``, ``A-B``, ``*/S``, ``A-B/S`` or ``A/S`` (``A`` to the field's maximum, every ``S``).
Months accept ``JAN``-``DEC``, weekdays ``SUN``-``SAT`` (case-insensitive); Sunday is 0 or
7, but a step never reaches the 7 alias on its own: ``1/2`` and ``*/2`` stop at Saturday
(``1/2`` is Mon/Wed/Fri, as cron and Quartz read it), only a written ``7`` or ``A-7`` adds it.
As in Vixie cron, when *both* day-of-month and day-of-week are restricted (neither field
starts with ``*``) a day matches if *either* matches; otherwise both must match. Macros:
``@yearly``/``@annually``, ``@monthly``, ``@weekly``, ``@daily``/``@midnight``, ``@hourly``.

Ticks are wall-clock times in a time zone, resolved to instants like this:

* a wall-clock time that does not exist (the clock springs forward over it) fires once, at
  the first valid instant after it, i.e. the moment of the transition (``02:30`` on a
  spring-forward night in New York fires at ``03:00`` EDT); several skipped times collapse
  into that one tick;
* a wall-clock time that happens twice (the clock falls back) fires once, at its first
  occurrence.

Example:
    >>> from zoneinfo import ZoneInfo
    >>> from datetime import datetime, UTC
    >>> CronExpression.parse("*/15 9-17 * * MON-FRI").next_after(
    ...     datetime(2024, 1, 5, 17, 50, tzinfo=UTC), ZoneInfo("UTC"))
    datetime.datetime(2024, 1, 8, 9, 0, tzinfo=zoneinfo.ZoneInfo(key='UTC'))
"""

from __future__ import annotations

import bisect
import calendar
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from flowstone.errors import UsageError

__all__ = ["CronExpression"]

_MACROS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = {
    name: i
    for i, name in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
        start=1,
    )
}
_DAY_NAMES = {name: i for i, name in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
_MINUTE = timedelta(minutes=1)
# A schedule that can match at all matches within one 400-year Gregorian cycle.
_SEARCH_YEARS = 401


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]
    hint: str
    # Where ``*`` and ``A/S`` stop: day-of-week accepts 7 (Sunday) when written, but an
    # implied end stops at 6, so ``1/2`` is Mon/Wed/Fri as cron and Quartz read it.
    implied_high: int


_FIELDS = (
    _Field("minute", 0, 59, {}, "0-59", 59),
    _Field("hour", 0, 23, {}, "0-23", 23),
    _Field("day-of-month", 1, 31, {}, "1-31", 31),
    _Field("month", 1, 12, _MONTH_NAMES, "1-12 or JAN-DEC", 12),
    _Field("day-of-week", 0, 7, _DAY_NAMES, "0-7 (0 and 7 are Sunday) or SUN-SAT", 6),
)


@dataclass(frozen=True, slots=True)
class CronExpression:
    """A parsed cron expression. Build one with :meth:`parse`.

    Attributes:
        text: the expression as written (macros kept as written).
        minutes, hours, days, months, weekdays: the sorted values each field allows
            (weekdays 0-6, Sunday = 0).
        day_or: True when both day fields are restricted, so either may match (Vixie rule).
    """

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]
    day_or: bool

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """Parse a five-field cron expression or a macro.

        Raises:
            UsageError: the text is not a valid expression; the message names the field,
                the bad token and the valid range.
        """
        if not isinstance(text, str):
            raise UsageError(f"cron expression must be a string, got {type(text).__name__}")
        stripped = text.strip()
        expanded = stripped
        if stripped.startswith("@"):
            macro = stripped.lower()
            if macro not in _MACROS:
                raise UsageError(
                    f"invalid cron expression {text!r}: unknown macro {stripped!r}; "
                    f"use one of {', '.join(sorted(_MACROS))} or five fields"
                )
            expanded = _MACROS[macro]
        parts = expanded.split()
        if len(parts) != 5:
            raise UsageError(
                f"invalid cron expression {text!r}: expected 5 fields "
                "(minute hour day-of-month month day-of-week), got "
                f"{len(parts)}; example: '*/15 * * * *'"
            )
        values = [_parse_field(text, spec, part) for spec, part in zip(_FIELDS, parts, strict=True)]
        weekdays = tuple(sorted({d % 7 for d in values[4]}))
        day_or = not parts[2].startswith("*") and not parts[4].startswith("*")
        expr = cls(
            text=stripped,
            minutes=tuple(sorted(values[0])),
            hours=tuple(sorted(values[1])),
            days=tuple(sorted(values[2])),
            months=tuple(sorted(values[3])),
            weekdays=weekdays,
            day_or=day_or,
        )
        if not day_or and not any(d <= _max_days(m) for m in expr.months for d in expr.days):
            raise UsageError(
                f"invalid cron expression {text!r}: day-of-month {parts[2]!r} never occurs "
                f"in month {parts[3]!r}, so it would never fire; pick a day that exists"
            )
        return expr

    # --- matching ------------------------------------------------------------------------
    def _day_matches(self, year: int, month: int, day: int) -> bool:
        weekday = (calendar.weekday(year, month, day) + 1) % 7  # cron: Sunday = 0
        in_days = day in self.days
        in_weekdays = weekday in self.weekdays
        return (in_days or in_weekdays) if self.day_or else (in_days and in_weekdays)

    def _match_forward(self, wall: datetime) -> datetime:
        """The first matching wall-clock minute at or after ``wall`` (naive)."""
        limit = wall.year + _SEARCH_YEARS
        w = wall
        while w.year <= limit:
            if w.month not in self.months:
                i = bisect.bisect_right(self.months, w.month)
                if i < len(self.months):
                    w = datetime(w.year, self.months[i], 1)
                else:
                    w = datetime(w.year + 1, self.months[0], 1)
                continue
            if not self._day_matches(w.year, w.month, w.day):
                w = datetime(w.year, w.month, w.day) + timedelta(days=1)
                continue
            i = bisect.bisect_left(self.hours, w.hour)
            if i == len(self.hours):
                w = datetime(w.year, w.month, w.day) + timedelta(days=1)
                continue
            if self.hours[i] != w.hour:
                w = w.replace(hour=self.hours[i], minute=0)
            j = bisect.bisect_left(self.minutes, w.minute)
            if j == len(self.minutes):
                w = w.replace(minute=0) + timedelta(hours=1)
                continue
            return w.replace(minute=self.minutes[j])
        raise UsageError(f"cron expression {self.text!r} never fires")  # pragma: no cover

    def _match_backward(self, wall: datetime) -> datetime:
        """The last matching wall-clock minute at or before ``wall`` (naive)."""
        limit = wall.year - _SEARCH_YEARS
        w = wall
        while w.year >= max(limit, 2):
            if w.month not in self.months:
                i = bisect.bisect_left(self.months, w.month)
                if i > 0:
                    month, year = self.months[i - 1], w.year
                else:
                    month, year = self.months[-1], w.year - 1
                w = datetime(year, month, _days_in(year, month), 23, 59)
                continue
            if not self._day_matches(w.year, w.month, w.day):
                w = datetime(w.year, w.month, w.day, 23, 59) - timedelta(days=1)
                continue
            i = bisect.bisect_right(self.hours, w.hour)
            if i == 0:
                w = datetime(w.year, w.month, w.day, 23, 59) - timedelta(days=1)
                continue
            if self.hours[i - 1] != w.hour:
                w = w.replace(hour=self.hours[i - 1], minute=59)
            j = bisect.bisect_right(self.minutes, w.minute)
            if j == 0:
                w = w.replace(minute=59) - timedelta(hours=1)
                continue
            return w.replace(minute=self.minutes[j - 1])
        raise UsageError(f"cron expression {self.text!r} has no tick before {wall}")

    # --- ticks ---------------------------------------------------------------------------
    def next_after(self, dt: datetime, tz: tzinfo) -> datetime:
        """The first tick strictly after ``dt``, as an aware datetime in ``tz``.

        Raises:
            UsageError: ``dt`` is naive.
        """
        instant = _utc(dt)
        # resolve() is monotone in wall time, so no wall time at or before dt's own can
        # resolve to an instant after dt: start one minute past it.
        wall = instant.astimezone(tz).replace(tzinfo=None, fold=0)
        candidate = wall.replace(second=0, microsecond=0) + _MINUTE
        while True:
            candidate = self._match_forward(candidate)
            tick = _resolve(candidate, tz)
            if tick > instant:
                return tick.astimezone(tz)
            candidate += _MINUTE

    def previous_before(self, dt: datetime, tz: tzinfo) -> datetime:
        """The last tick strictly before ``dt``, as an aware datetime in ``tz``.

        Raises:
            UsageError: ``dt`` is naive.
        """
        instant = _utc(dt)
        local = instant.astimezone(tz)
        wall = local.replace(tzinfo=None, fold=0)
        # Inside a repeated hour, wall times later than dt's may still resolve (to their
        # first occurrence) before dt: start the search past the whole fold.
        first = wall.replace(tzinfo=tz, fold=0).utcoffset() or timedelta(0)
        second = wall.replace(tzinfo=tz, fold=1).utcoffset() or timedelta(0)
        candidate = (wall + max(first - second, timedelta(0))).replace(second=0, microsecond=0)
        while True:
            candidate = self._match_backward(candidate)
            tick = _resolve(candidate, tz)
            if tick < instant:
                return tick.astimezone(tz)
            candidate -= _MINUTE

    def ticks_between(self, start: datetime, end: datetime, tz: tzinfo) -> Iterator[datetime]:
        """Yield every tick ``t`` with ``start < t <= end``, in order, aware in ``tz``."""
        end_utc = _utc(end)
        tick = self.next_after(start, tz)
        while tick <= end_utc:
            yield tick
            tick = self.next_after(tick, tz)

    def __str__(self) -> str:
        return self.text


def _parse_field(text: str, spec: _Field, part: str) -> set[int]:
    values: set[int] = set()
    for token in part.split(","):
        values.update(_parse_token(text, spec, token))
    return values


def _parse_token(text: str, spec: _Field, token: str) -> range:
    def bad(why: str) -> UsageError:
        return UsageError(
            f"invalid cron expression {text!r}: {spec.name} token {token!r} {why}; "
            f"valid values are {spec.hint}"
        )

    base, slash, step_text = token.partition("/")
    step = 1
    if slash:
        if not _is_number(step_text) or int(step_text) < 1:
            raise bad("has an invalid step (use a positive number after '/')")
        step = int(step_text)
    if base == "*":
        low, high = spec.low, spec.implied_high
    elif "-" in base:
        first, _, last = base.partition("-")
        low, high = _value(first, spec, bad), _value(last, spec, bad)
        if low > high:
            raise bad("is a reversed range; write ranges low-high (split a wrap-around with ',')")
    else:
        low = _value(base, spec, bad)
        high = max(low, spec.implied_high) if slash else low
    if step > spec.implied_high - spec.low + 1:
        raise bad(f"has a step larger than the field ({spec.implied_high - spec.low + 1} values)")
    return range(low, high + 1, step)


def _value(text: str, spec: _Field, bad: Callable[[str], UsageError]) -> int:
    key = text.upper()
    if key in spec.names:
        return spec.names[key]
    if not _is_number(text):
        raise bad("is not a number" + (" or a name" if spec.names else ""))
    number = int(text)
    if not spec.low <= number <= spec.high:
        raise bad("is out of range")
    return number


def _is_number(text: str) -> bool:
    # str.isdigit() also accepts digits int() rejects (superscripts such as '²'): ASCII only.
    return text.isascii() and text.isdigit()


def _max_days(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def _days_in(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise UsageError(
            f"naive datetime {dt.isoformat()} given; pass an aware datetime, "
            "e.g. datetime.now(UTC) or dt.replace(tzinfo=ZoneInfo('Europe/Paris'))"
        )
    return dt.astimezone(UTC)


def _resolve(wall: datetime, tz: tzinfo) -> datetime:
    """The UTC instant a wall-clock tick fires at (see the module docstring)."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first  # exists; fold=0 is the first occurrence of a repeated time
    # In a gap fold=1 applies the post-transition offset, giving an instant before the
    # transition; fold=0 one after it. Bisect (to the second) for the transition itself:
    # the first instant whose wall time is not before ``wall``.
    low = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    high = first
    while high - low > timedelta(seconds=1):
        mid = low + (high - low) // 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(tz).replace(tzinfo=None) >= wall:
            high = mid
        else:
            low = mid
    return high
