"""Cron parsing, matching and DST-correct tick arithmetic."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from flowstone.cron import CronExpression
from flowstone.errors import UsageError

UTC_ZONE = ZoneInfo("UTC")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ticks(expr: str, start: datetime, end: datetime, tz: ZoneInfo = UTC_ZONE) -> list[str]:
    return [t.isoformat() for t in CronExpression.parse(expr).ticks_between(start, end, tz)]


def brute_force_next(expr: CronExpression, after: datetime) -> datetime:
    """Reference: walk minute by minute in UTC (no DST) and test every field."""
    t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while True:
        weekday = (t.weekday() + 1) % 7
        in_days, in_weekdays = t.day in expr.days, weekday in expr.weekdays
        day_ok = (in_days or in_weekdays) if expr.day_or else (in_days and in_weekdays)
        if t.minute in expr.minutes and t.hour in expr.hours and t.month in expr.months and day_ok:
            return t
        t += timedelta(minutes=1)


class TestParse:
    def test_fields_lists_ranges_and_steps(self) -> None:
        expr = CronExpression.parse("*/15 1-10/3 1,15 * *")
        assert expr.minutes == (0, 15, 30, 45)
        assert expr.hours == (1, 4, 7, 10)
        assert expr.days == (1, 15)

    def test_start_with_step_runs_to_the_field_maximum(self) -> None:
        assert CronExpression.parse("50/5 * * * *").minutes == (50, 55)

    def test_month_and_weekday_names_are_case_insensitive(self) -> None:
        expr = CronExpression.parse("0 0 * jan-Mar mon-FRI")
        assert expr.months == (1, 2, 3)
        assert expr.weekdays == (1, 2, 3, 4, 5)

    def test_sunday_is_zero_or_seven(self) -> None:
        assert CronExpression.parse("0 0 * * 7").weekdays == (0,)
        assert CronExpression.parse("0 0 * * 5-7").weekdays == (0, 5, 6)

    @pytest.mark.parametrize(
        ("text", "weekdays"),
        [
            ("1/2", (1, 3, 5)),  # Mon/Wed/Fri, no Sunday from the 7 alias
            ("MON/2", (1, 3, 5)),
            ("5/2", (5,)),
            ("6/1", (6,)),
            ("*/2", (0, 2, 4, 6)),
            ("*/1", (0, 1, 2, 3, 4, 5, 6)),
            ("5-7/2", (0, 5)),  # a written 7 is still Sunday
        ],
    )
    def test_weekday_steps_never_reach_the_sunday_alias(
        self, text: str, weekdays: tuple[int, ...]
    ) -> None:
        expr = CronExpression.parse(f"0 0 * * {text}")
        assert expr.weekdays == weekdays
        # a week of daily ticks from Monday 2024-01-01: only the listed weekdays fire
        fired = {
            (t.weekday() + 1) % 7
            for t in expr.ticks_between(utc(2023, 12, 31, 1), utc(2024, 1, 7, 1), UTC_ZONE)
        }
        assert fired == set(weekdays)

    @pytest.mark.parametrize(
        ("text", "field"),
        [
            ("\u00b2 * * * *", "minute"),
            ("* 1\u00b3 * * *", "hour"),
            ("*/\u00b2 * * * *", "minute"),
            ("* * * * 1-\u2075", "day-of-week"),
            ("* * \u0661 * *", "day-of-month"),  # Arabic-Indic one: int() accepts, cron does not
        ],
    )
    def test_non_ascii_digits_are_a_usage_error_naming_the_field(
        self, text: str, field: str
    ) -> None:
        with pytest.raises(UsageError, match=field) as info:
            CronExpression.parse(text)
        assert "is not a number" in str(info.value) or "invalid step" in str(info.value)

    @pytest.mark.parametrize(
        ("macro", "equivalent"),
        [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@HOURLY", "0 * * * *"),
        ],
    )
    def test_macros(self, macro: str, equivalent: str) -> None:
        start, end = utc(2023, 12, 30), utc(2025, 1, 2)
        assert ticks(macro, start, utc(2024, 1, 3)) == ticks(equivalent, start, utc(2024, 1, 3))
        assert len(ticks(macro, start, end)) == len(ticks(equivalent, start, end))

    @pytest.mark.parametrize(
        ("text", "fragments"),
        [
            ("61 * * * *", ["minute", "'61'", "0-59"]),
            ("* 24 * * *", ["hour", "'24'", "0-23"]),
            ("* * 0 * *", ["day-of-month", "'0'", "1-31"]),
            ("* * * FOO *", ["month", "'FOO'", "JAN-DEC"]),
            ("* * * * 8", ["day-of-week", "'8'", "SUN-SAT"]),
            ("*/0 * * * *", ["minute", "'*/0'", "step"]),
            ("*/61 * * * *", ["minute", "'*/61'", "step"]),
            ("10-5 * * * *", ["minute", "'10-5'", "reversed"]),
            ("1,,2 * * * *", ["minute", "''"]),
            ("* * * *", ["5 fields", "got 4"]),
            ("@reboot", ["'@reboot'", "@daily"]),
            ("0 0 30 2 *", ["never"]),
        ],
    )
    def test_invalid_text_names_field_token_and_range(
        self, text: str, fragments: list[str]
    ) -> None:
        with pytest.raises(UsageError) as info:
            CronExpression.parse(text)
        for fragment in fragments:
            assert fragment in str(info.value)


class TestNextAfter:
    def test_is_strictly_after(self) -> None:
        expr = CronExpression.parse("0 * * * *")
        assert expr.next_after(utc(2024, 1, 1, 5), UTC_ZONE) == utc(2024, 1, 1, 6)
        assert expr.next_after(utc(2024, 1, 1, 5, 0, 1), UTC_ZONE) == utc(2024, 1, 1, 6)

    def test_result_is_aware_in_the_requested_zone(self) -> None:
        tick = CronExpression.parse("0 9 * * *").next_after(utc(2024, 6, 1), NEW_YORK)
        assert tick.tzinfo is NEW_YORK
        assert tick == datetime(2024, 6, 1, 9, tzinfo=NEW_YORK)

    def test_naive_datetime_is_rejected(self) -> None:
        with pytest.raises(UsageError, match="naive"):
            CronExpression.parse("* * * * *").next_after(datetime(2024, 1, 1), UTC_ZONE)

    def test_vixie_rule_either_day_field_matches_when_both_restricted(self) -> None:
        # 1st of the month OR any Monday.
        got = ticks("0 0 1 * MON", utc(2024, 1, 1), utc(2024, 1, 31))
        assert got == [
            "2024-01-08T00:00:00+00:00",
            "2024-01-15T00:00:00+00:00",
            "2024-01-22T00:00:00+00:00",
            "2024-01-29T00:00:00+00:00",
        ]
        assert ticks("0 0 1 * MON", utc(2024, 1, 31), utc(2024, 2, 2)) == [
            "2024-02-01T00:00:00+00:00"
        ]

    def test_star_step_day_field_is_combined_with_and(self) -> None:
        # Day-of-month starts with '*', so both fields must match (Vixie).
        got = ticks("0 0 */10 * MON", utc(2023, 12, 31), utc(2024, 4, 30))
        assert got == [
            "2024-01-01T00:00:00+00:00",
            "2024-03-11T00:00:00+00:00",
            "2024-04-01T00:00:00+00:00",
        ]

    def test_leap_day_only_schedule_finds_the_next_leap_year(self) -> None:
        expr = CronExpression.parse("0 12 29 2 *")
        assert expr.next_after(utc(2024, 3, 1), UTC_ZONE) == utc(2028, 2, 29, 12)
        assert expr.previous_before(utc(2024, 3, 1), UTC_ZONE) == utc(2024, 2, 29, 12)

    def test_agrees_with_a_brute_force_reference(self) -> None:
        rng = random.Random(7)
        texts = [
            "*/7 3-5 * * *",
            "0 0 1,15 * *",
            "15 10 * * SAT,SUN",
            "0 0 13 * FRI",
            "5 4 * 2 *",
            "59 23 31 * *",
            "0 */6 * * 1-5",
        ]
        for text in texts:
            expr = CronExpression.parse(text)
            for _ in range(4):
                after = utc(2024, 1, 1) + timedelta(minutes=rng.randrange(60 * 24 * 40))
                assert expr.next_after(after, UTC_ZONE) == brute_force_next(expr, after), text

    def test_previous_before_is_the_inverse_of_next_after(self) -> None:
        expr = CronExpression.parse("*/20 8-18 * * MON-FRI")
        tick = expr.next_after(utc(2024, 5, 3, 18, 50), UTC_ZONE)
        assert tick == utc(2024, 5, 6, 8, 0)
        assert expr.previous_before(tick, UTC_ZONE) == utc(2024, 5, 3, 18, 40)

    def test_a_year_of_ticks_is_cheap_to_skip(self) -> None:
        # Jumping field by field, not minute by minute: one call spans a year.
        expr = CronExpression.parse("0 0 1 1 *")
        assert expr.next_after(utc(2024, 1, 1, 0, 1), UTC_ZONE) == utc(2025, 1, 1)


class TestDaylightSaving:
    def test_spring_forward_fires_once_at_the_transition(self) -> None:
        # 2024-03-10: New York clocks jump from 02:00 EST to 03:00 EDT.
        got = ticks(
            "*/15 * * * *",
            datetime(2024, 3, 10, 1, 30, tzinfo=NEW_YORK),
            datetime(2024, 3, 10, 3, 30, tzinfo=NEW_YORK),
            NEW_YORK,
        )
        assert got == [
            "2024-03-10T01:45:00-05:00",
            "2024-03-10T03:00:00-04:00",  # 02:00-02:45 and 03:00 collapse into one tick
            "2024-03-10T03:15:00-04:00",
            "2024-03-10T03:30:00-04:00",
        ]

    def test_daily_tick_in_the_gap_still_fires_that_day(self) -> None:
        got = ticks(
            "30 2 * * *",
            datetime(2024, 3, 9, 12, tzinfo=NEW_YORK),
            datetime(2024, 3, 11, 12, tzinfo=NEW_YORK),
            NEW_YORK,
        )
        assert got == ["2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00"]

    def test_fall_back_fires_a_repeated_time_once_at_its_first_occurrence(self) -> None:
        # 2024-11-03: New York clocks fall back from 02:00 EDT to 01:00 EST.
        got = ticks(
            "30 1 * * *",
            datetime(2024, 11, 2, 12, tzinfo=NEW_YORK),
            datetime(2024, 11, 4, 12, tzinfo=NEW_YORK),
            NEW_YORK,
        )
        assert got == ["2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"]

    def test_hourly_ticks_across_fall_back_do_not_repeat_wall_times(self) -> None:
        got = ticks(
            "0 * * * *",
            datetime(2024, 11, 3, 0, 30, tzinfo=NEW_YORK),
            datetime(2024, 11, 3, 3, 30, tzinfo=NEW_YORK),
            NEW_YORK,
        )
        assert got == [
            "2024-11-03T01:00:00-04:00",
            "2024-11-03T02:00:00-05:00",
            "2024-11-03T03:00:00-05:00",
        ]

    def test_next_after_from_inside_the_second_occurrence(self) -> None:
        expr = CronExpression.parse("*/15 * * * *")
        second_0110 = datetime(2024, 11, 3, 1, 10, fold=1, tzinfo=NEW_YORK)
        # 01:15-01:45 already fired during the first pass through the hour.
        assert expr.next_after(second_0110, NEW_YORK).isoformat() == "2024-11-03T02:00:00-05:00"
        assert expr.previous_before(second_0110, NEW_YORK).isoformat() == (
            "2024-11-03T01:45:00-04:00"
        )

    def test_ticks_are_identical_whatever_the_zone_of_the_bounds(self) -> None:
        start_local = datetime(2024, 3, 9, 20, tzinfo=NEW_YORK)
        end_local = datetime(2024, 3, 10, 6, tzinfo=NEW_YORK)
        local = ticks("0 * * * *", start_local, end_local, NEW_YORK)
        in_utc = ticks(
            "0 * * * *", start_local.astimezone(UTC), end_local.astimezone(UTC), NEW_YORK
        )
        assert local == in_utc
        assert len(local) == 9  # 21:00..06:00 is ten wall hours, one (02:00) never exists
