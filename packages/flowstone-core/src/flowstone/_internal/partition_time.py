"""Time-based partition sets: :class:`DailyPartitions` and :class:`HourlyPartitions`.

Public through :mod:`flowstone.partitions` (import them from there). Also here: reading
days and hours from constructor arguments and CLI text, with timezones and DST.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flowstone._internal.partition_codec import PartitionKey, check_key
from flowstone._internal.partition_set_rules import coerce, ordered, range_error
from flowstone.errors import PartitionError, UsageError

__all__ = ["HOUR", "DailyPartitions", "HourlyPartitions"]

_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
HOUR = timedelta(hours=1)
_QUARTER = timedelta(minutes=15)


def _zone(name: str) -> tzinfo:
    if name == "UTC":
        return UTC  # needs no tz database
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UsageError(
            f"unknown timezone {name!r}; use an IANA name such as 'UTC' or 'Europe/Berlin' "
            "(zoneinfo.available_timezones() lists them; install 'tzdata' if it is empty)."
        ) from exc


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.utcoffset() is None:
        raise UsageError(f"now={now!r} is naive; pass an aware datetime, e.g. with tzinfo=UTC.")
    return now


def _day(value: object, what: str, owner: str) -> date:
    if isinstance(value, str) and _DAY.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    elif isinstance(value, date) and not isinstance(value, datetime):
        return date(value.year, value.month, value.day)
    raise UsageError(f"{owner}: {what}={value!r} is not a day; pass a date or 'YYYY-MM-DD'.")


def _hour(value: object, zone: tzinfo, what: str, owner: str) -> datetime:
    if not isinstance(value, str | datetime):
        raise UsageError(f"{owner}: {what}={value!r} is not a datetime or ISO text.")
    try:
        if isinstance(value, str):
            value = _parse_datetime(value, zone, owner)
        elif value.utcoffset() is None:
            value = _localize(value, zone, owner)
    except PartitionError as exc:  # a constructor argument, not a key: a usage error
        raise UsageError(f"{what}: {exc}") from exc
    local = local_time(value, zone)
    if not on_the_hour(local):
        raise UsageError(
            f"{owner}: {what}={value.isoformat()} is not on the hour in the set's timezone "
            f"(it is {local.isoformat()} there); an hour partition starts at minute 0 of a "
            f"local hour, e.g. {local.replace(minute=0, second=0, microsecond=0).isoformat()}."
        )
    return value.astimezone(UTC)


def local_time(instant: datetime, zone: tzinfo) -> datetime:
    """``instant`` as wall time in ``zone``, with that moment's fixed UTC offset as tzinfo.

    A fixed offset (not the zone) keeps the two 01:00s of a fall-back night distinct keys:
    aware datetimes sharing one ``ZoneInfo`` compare by wall time and ignore ``fold``.
    """
    local = instant.astimezone(zone)
    offset = local.utcoffset()
    assert offset is not None  # instant is aware, zone is a tzinfo
    return local.replace(tzinfo=timezone(offset), fold=0)


def on_the_hour(local: datetime) -> bool:
    """Whether a local wall time is minute 0 of its hour."""
    return not (local.minute or local.second or local.microsecond)


def next_local_hour(hour: datetime, zone: tzinfo) -> datetime:
    """The first instant after ``hour`` that is on the hour in ``zone``, in UTC.

    Without a change of offset in between, that is one hour later. Across a change (DST,
    or a zone moving its offset) the hours follow the local clock: a skipped hour has no
    partition, a repeated one has two (one per offset). Offsets are whole quarter hours, so
    stepping 15 minutes finds it.
    """
    utc = hour.astimezone(UTC)
    candidate = utc + HOUR
    if candidate.astimezone(zone).utcoffset() == utc.astimezone(zone).utcoffset():
        return candidate
    candidate = utc + _QUARTER
    while not on_the_hour(candidate.astimezone(zone)):
        candidate += _QUARTER
    return candidate


def _parse_datetime(text: str, zone: tzinfo, owner: str) -> datetime:
    try:
        if "T" not in text and " " not in text:
            raise ValueError("no time part")
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise PartitionError(
            f"{text!r} is not an hour of {owner}; use ISO text such as '2024-01-05T10:00' "
            "(read in the set's timezone) or '2024-01-05T10:00Z'."
        ) from exc
    return parsed if parsed.utcoffset() is not None else _localize(parsed, zone, owner)


def _localize(naive: datetime, zone: tzinfo, owner: str) -> datetime:
    """Attach ``zone`` to a naive local time, refusing times DST skips or repeats."""
    first = naive.replace(tzinfo=zone, fold=0)
    second = naive.replace(tzinfo=zone, fold=1)
    fix = "give an explicit offset, e.g. '2024-10-27T02:00+01:00', or a time in UTC with 'Z'"
    if first.utcoffset() != second.utcoffset():
        skipped = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive
        problem = "does not exist (skipped by DST)" if skipped else "is ambiguous (DST repeats it)"
        raise PartitionError(f"{naive.isoformat()} {problem} in the timezone of {owner}; {fix}.")
    return first


@dataclass(frozen=True, slots=True, init=False)
class DailyPartitions:
    """One partition per calendar day in ``timezone``; keys are ``date`` objects.

    Args:
        start: the first day (a ``date`` or ``"YYYY-MM-DD"``).
        end: the last day, inclusive; ``None`` means up to the last *complete* day in
            ``timezone`` at the time ``keys()`` is asked.
        timezone: an IANA timezone name deciding when a day is complete.

    Example:
        >>> DailyPartitions("2024-01-01", "2024-01-03").keys()
        [datetime.date(2024, 1, 1), datetime.date(2024, 1, 2), datetime.date(2024, 1, 3)]
    """

    # the public name is flowstone.partitions.DailyPartitions: keep it in reprs of the type,
    # in pickles and in error messages that name the type
    __module__ = "flowstone.partitions"

    start: date
    end: date | None = None
    timezone: str = "UTC"

    def __init__(
        self, start: date | str, end: date | str | None = None, timezone: str = "UTC"
    ) -> None:
        _zone(timezone)
        first = _day(start, "start", "DailyPartitions")
        last = None if end is None else _day(end, "end", "DailyPartitions")
        if last is not None and last < first:
            raise UsageError(f"DailyPartitions: start {first} is after end {last}; swap them.")
        object.__setattr__(self, "start", first)
        object.__setattr__(self, "end", last)
        object.__setattr__(self, "timezone", timezone)

    def keys(self, now: datetime | None = None) -> list[PartitionKey]:
        """Every day from ``start`` to ``end`` (or the last complete day at ``now``)."""
        last = self.end
        if last is None:
            last = _now(now).astimezone(_zone(self.timezone)).date() - timedelta(days=1)
        return self._days(self.start, last)

    def contains(self, key: object) -> bool:
        """Whether ``key`` is a ``date`` within ``start``..``end`` (open-ended if no end)."""
        if not isinstance(key, date) or isinstance(key, datetime):
            return False
        return self.start <= key and (self.end is None or key <= self.end)

    def validate(self, key: object) -> PartitionKey:
        """Return ``key`` as a plain ``date`` if it is in the set, else raise ``PartitionError``."""
        if self.contains(key):
            return check_key(key)
        is_date = isinstance(key, date) and not isinstance(key, datetime)
        raise range_error(
            self,
            key,
            "that day is outside the set" if is_date else "it is not a date",
            "Pass a datetime.date inside the range (CLI: YYYY-MM-DD).",
            self._nearest(key),
        )

    def _nearest(self, key: object) -> date | None:
        if isinstance(key, datetime):
            key = key.date()
        if not isinstance(key, date):
            return None
        if key < self.start:
            return self.start
        return self.end if self.end is not None and key > self.end else None

    def parse(self, text: str) -> PartitionKey:
        """Parse ``"YYYY-MM-DD"`` into a ``date`` of this set."""
        try:
            day = _day(text, "partition", repr(self))
        except UsageError as exc:
            raise PartitionError(
                f"{text!r} is not a day of {self!r}; use YYYY-MM-DD, e.g. '2024-01-05'."
            ) from exc
        return self.validate(day)

    def keys_between(self, start: PartitionKey, end: PartitionKey) -> list[PartitionKey]:
        """The days from ``start`` to ``end`` inclusive (dates or ``YYYY-MM-DD`` text)."""
        first, last = coerce(self, start), coerce(self, end)
        assert isinstance(first, date) and isinstance(last, date)
        if last < first:
            ordered(self, start, end)
        return self._days(first, last)

    @staticmethod
    def _days(first: date, last: date) -> list[PartitionKey]:
        return [first + timedelta(days=n) for n in range((last - first).days + 1)]

    def time_window(self, key: date) -> tuple[datetime, datetime]:
        """The UTC instants where day ``key`` starts and ends in ``timezone`` (DST-aware)."""
        day = self.validate(key)
        assert isinstance(day, date)
        zone = _zone(self.timezone)
        bounds = (
            datetime.combine(d, datetime.min.time(), zone) for d in (day, day + timedelta(days=1))
        )
        start, end = (b.astimezone(UTC) for b in bounds)
        return start, end


@dataclass(frozen=True, slots=True, init=False)
class HourlyPartitions:
    """One partition per local hour of ``timezone``; keys are aware UTC ``datetime`` objects.

    Args:
        start: the first hour (aware ``datetime``, or naive / ISO text read in ``timezone``).
        end: the last hour, inclusive; ``None`` means up to the last *complete* hour.
        timezone: the IANA timezone whose hours are the partitions, and in which naive
            datetimes and CLI text are read.

    Hours follow the local clock, in any zone (also Asia/Kolkata's +05:30 or
    Asia/Kathmandu's +05:45): a partition starts at minute 0 of a local hour. A key is that
    instant, as every aware partition key is, in UTC (``2024-01-05T04:30Z`` is 10:00 in
    Kolkata); the CLI reads and shows keys in local time (``2024-01-05T10:00+05:30``, see
    :meth:`local_time`). Across DST, as for :class:`DailyPartitions`, the hour the clock
    skips has no partition and the hour it repeats has two (``01:00-04:00`` and
    ``01:00-05:00`` in New York).
    """

    # the public name is flowstone.partitions.HourlyPartitions: keep it in reprs of the type,
    # in pickles and in error messages that name the type
    __module__ = "flowstone.partitions"

    start: datetime
    end: datetime | None = None
    timezone: str = "UTC"

    def __init__(
        self, start: datetime | str, end: datetime | str | None = None, timezone: str = "UTC"
    ) -> None:
        zone = _zone(timezone)
        first = _hour(start, zone, "start", "HourlyPartitions")
        last = None if end is None else _hour(end, zone, "end", "HourlyPartitions")
        if last is not None and last < first:
            raise UsageError(
                f"HourlyPartitions: start {first.isoformat()} is after end "
                f"{last.isoformat()}; swap them."
            )
        object.__setattr__(self, "start", first)
        object.__setattr__(self, "end", last)
        object.__setattr__(self, "timezone", timezone)

    def local_time(self, key: datetime) -> datetime:
        """``key`` as wall time in the set's timezone, with that moment's fixed UTC offset.

        How the CLI shows an hour: ``2024-01-05T10:00+05:30`` rather than its UTC instant.
        """
        return local_time(key, _zone(self.timezone))

    def keys(self, now: datetime | None = None) -> list[PartitionKey]:
        """Every hour from ``start`` to ``end`` (or the last complete hour at ``now``)."""
        if self.end is not None:
            return self._hours(self.start, self.end)
        moment = _now(now)
        zone = _zone(self.timezone)
        keys: list[PartitionKey] = []
        hour = self.start
        while (following := next_local_hour(hour, zone)) <= moment:
            keys.append(hour)
            hour = following
        return keys

    def contains(self, key: object) -> bool:
        """Whether ``key`` is an aware datetime on a local hour within ``start``..``end``."""
        if not isinstance(key, datetime) or key.utcoffset() is None:
            return False
        on_hour = on_the_hour(key.astimezone(_zone(self.timezone)))
        return on_hour and self.start <= key and (self.end is None or key <= self.end)

    def validate(self, key: object) -> PartitionKey:
        """Return ``key`` in UTC if it is in the set, else raise ``PartitionError``."""
        if self.contains(key):
            return check_key(key)
        raise range_error(
            self,
            key,
            f"the set is the aware datetimes on the hour in {self.timezone} within its range",
            "Pass e.g. datetime(2024, 1, 5, 10, tzinfo=UTC) (CLI: 2024-01-05T10:00Z, or "
            "2024-01-05T10 read in the set's timezone).",
            self._nearest(key),
        )

    def _nearest(self, key: object) -> datetime | None:
        if not isinstance(key, datetime) or key.utcoffset() is None:
            return None
        zone = _zone(self.timezone)
        local = local_time(key, zone)
        hour = local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
        if hour < self.start:
            return self.start
        if self.end is not None and hour > self.end:
            return self.end
        return hour if on_the_hour(hour.astimezone(zone)) else None

    def parse(self, text: str) -> PartitionKey:
        """Parse ISO text (``2024-01-05T10``, ``...T10:00Z``, ``...T10:00+02:00``) into a key.

        Text without an offset is read in the set's timezone; a local time that DST skips
        or repeats is refused with a message asking for an explicit offset.
        """
        return self.validate(_parse_datetime(text, _zone(self.timezone), repr(self)))

    def keys_between(self, start: PartitionKey, end: PartitionKey) -> list[PartitionKey]:
        """The hours from ``start`` to ``end`` inclusive (datetimes or ISO text)."""
        first, last = coerce(self, start), coerce(self, end)
        assert isinstance(first, datetime) and isinstance(last, datetime)
        if last < first:
            ordered(self, start, end)
        return self._hours(first, last)

    def _hours(self, first: datetime, last: datetime) -> list[PartitionKey]:
        zone = _zone(self.timezone)
        keys: list[PartitionKey] = []
        hour = first
        while hour <= last:
            keys.append(hour)
            hour = next_local_hour(hour, zone)
        return keys

    def time_window(self, key: datetime) -> tuple[datetime, datetime]:
        """The UTC instants where hour ``key`` starts and ends (the next local hour)."""
        hour = self.validate(key)
        assert isinstance(hour, datetime)
        return hour, next_local_hour(hour, _zone(self.timezone))
