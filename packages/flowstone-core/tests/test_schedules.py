"""Schedule definitions, partition helpers, catch-up policy; sensor definitions."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from flowstone.errors import DefinitionError, UsageError
from flowstone.schedules import Schedule, previous_day, previous_hour
from flowstone.sensors import RunRequest, Sensor, SensorContext, SensorResult, sensor

PARIS = ZoneInfo("Europe/Paris")
GRACE = timedelta(minutes=5)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class TestScheduleDefinition:
    def test_valid_schedule_normalizes_target_and_tags(self) -> None:
        schedule = Schedule("nightly", "0 2 * * *", "report", timezone="Europe/Paris")
        assert schedule.targets == ("report",)
        assert schedule.tags == {}
        assert Schedule("two", "@daily", ["a", "b"]).targets == ("a", "b")

    @pytest.mark.parametrize(
        ("kwargs", "fragment"),
        [
            ({"name": "has space"}, "invalid schedule name 'has space'"),
            ({"name": "a:b"}, "invalid schedule name"),
            ({"cron": "0 25 * * *"}, "schedule 'nightly': invalid cron expression"),
            ({"timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
            ({"catch_up": "some"}, "catch_up='some'"),
            ({"max_catch_up": 0}, "max_catch_up=0"),
            ({"target": []}, "target must be"),
            ({"tags": {"a": 1}}, "tags must map str to str"),
            ({"partition": "yesterday"}, "partition must be a function"),
        ],
    )
    def test_invalid_definition_says_what_and_where(
        self, kwargs: dict[str, object], fragment: str
    ) -> None:
        args: dict[str, object] = {"name": "nightly", "cron": "0 2 * * *", "target": "report"}
        args.update(kwargs)
        with pytest.raises(DefinitionError) as info:
            Schedule(**args)  # type: ignore[arg-type]
        assert fragment in str(info.value)

    def test_cron_error_keeps_the_parse_error_as_cause(self) -> None:
        with pytest.raises(DefinitionError) as info:
            Schedule("bad", "* * * * 9", "report")
        assert isinstance(info.value.__cause__, UsageError)
        assert "day-of-week" in str(info.value)

    def test_ticks_are_in_the_schedule_timezone(self) -> None:
        schedule = Schedule("nightly", "0 2 * * *", "report", timezone="Europe/Paris")
        tick = schedule.next_tick(utc(2024, 6, 1, 12))
        assert tick == datetime(2024, 6, 2, 2, tzinfo=PARIS)
        assert tick.utcoffset() == timedelta(hours=2)


class TestPartitionHelpers:
    def test_previous_day_uses_the_local_date_of_the_tick(self) -> None:
        # 00:30 in Paris on June 2nd is still June 1st in UTC: the local date counts.
        tick = datetime(2024, 6, 2, 0, 30, tzinfo=PARIS)
        assert previous_day(tick) == date(2024, 6, 1)

    def test_previous_hour_is_the_hour_before_on_the_hour_in_utc(self) -> None:
        assert previous_hour(utc(2024, 6, 2, 10, 5)) == utc(2024, 6, 2, 9)
        assert previous_hour(datetime(2024, 6, 2, 0, 0, tzinfo=PARIS)) == utc(2024, 6, 1, 21)

    def test_schedule_partition_function_is_applied_to_the_tick(self) -> None:
        schedule = Schedule("nightly", "0 2 * * *", "report", partition=previous_day)
        assert schedule.partition is not None
        assert schedule.partition(schedule.next_tick(utc(2024, 6, 1, 12))) == date(2024, 6, 1)


class TestCatchUp:
    def test_on_time_tick_fires_under_every_policy(self) -> None:
        for policy in ("latest", "all", "none"):
            schedule = Schedule("s", "0 * * * *", "a", catch_up=policy)  # type: ignore[arg-type]
            fire, dropped = schedule.due_ticks(
                utc(2024, 1, 1, 9, 59), utc(2024, 1, 1, 10, 0, 20), grace=GRACE
            )
            assert fire == (utc(2024, 1, 1, 10),), policy
            assert dropped == 0

    def test_latest_fires_only_the_most_recent_missed_tick(self) -> None:
        schedule = Schedule("s", "0 * * * *", "a", catch_up="latest")
        fire, dropped = schedule.due_ticks(
            utc(2024, 1, 1, 0, 30), utc(2024, 1, 1, 5, 30), grace=GRACE
        )
        assert fire == (utc(2024, 1, 1, 5),)
        assert dropped == 4

    def test_all_fires_every_missed_tick_oldest_first(self) -> None:
        schedule = Schedule("s", "0 * * * *", "a", catch_up="all")
        fire, dropped = schedule.due_ticks(
            utc(2024, 1, 1, 0, 30), utc(2024, 1, 1, 3, 30), grace=GRACE
        )
        assert fire == (utc(2024, 1, 1, 1), utc(2024, 1, 1, 2), utc(2024, 1, 1, 3))
        assert dropped == 0

    def test_all_is_bounded_by_max_catch_up_keeping_the_most_recent(self) -> None:
        schedule = Schedule("s", "0 * * * *", "a", catch_up="all", max_catch_up=2)
        fire, dropped = schedule.due_ticks(
            utc(2024, 1, 1, 0, 30), utc(2024, 1, 1, 5, 30), grace=GRACE
        )
        assert fire == (utc(2024, 1, 1, 4), utc(2024, 1, 1, 5))
        assert dropped == 3

    def test_none_skips_missed_ticks(self) -> None:
        schedule = Schedule("s", "0 * * * *", "a", catch_up="none")
        fire, dropped = schedule.due_ticks(
            utc(2024, 1, 1, 0, 30), utc(2024, 1, 1, 5, 30), grace=GRACE
        )
        assert fire == ()
        assert dropped == 5

    def test_none_still_fires_a_tick_within_the_grace(self) -> None:
        schedule = Schedule("s", "0 * * * *", "a", catch_up="none")
        fire, dropped = schedule.due_ticks(
            utc(2024, 1, 1, 0, 30), utc(2024, 1, 1, 5, 2), grace=GRACE
        )
        assert fire == (utc(2024, 1, 1, 5),)
        assert dropped == 4

    def test_a_year_of_downtime_on_a_minutely_schedule_is_cheap(self) -> None:
        schedule = Schedule("s", "* * * * *", "a", catch_up="latest")
        fire, dropped = schedule.due_ticks(utc(2023, 1, 1), utc(2024, 1, 1), grace=GRACE)
        assert fire == (utc(2024, 1, 1),)
        assert dropped >= 999  # counting stops early; the report says "at least"

    def test_nothing_due_when_now_is_not_after_the_cursor(self) -> None:
        schedule = Schedule("s", "* * * * *", "a")
        assert schedule.due_ticks(utc(2024, 1, 1, 1), utc(2024, 1, 1, 1), grace=GRACE) == ((), 0)


class TestSensorDefinition:
    def test_decorator_bare_and_called(self) -> None:
        @sensor
        def bare(context: SensorContext) -> None:
            return None

        @sensor(target=["a", "b"], interval=timedelta(minutes=2), name="renamed", tags={"t": "1"})
        def called(context: SensorContext) -> None:
            return None

        assert (bare.name, bare.target, bare.interval) == ("bare", None, timedelta(seconds=30))
        assert (called.name, called.targets, called.interval) == (
            "renamed",
            ("a", "b"),
            timedelta(minutes=2),
        )
        assert called.fn(SensorContext("p", "renamed", utc(2024, 1, 1))) is None

    @pytest.mark.parametrize(
        ("kwargs", "fragment"),
        [
            ({"name": "no good"}, "invalid sensor name"),
            ({"fn": 3}, "fn must be callable"),
            ({"interval": timedelta(0)}, "interval must be a positive timedelta"),
            ({"target": [""]}, "target must be"),
        ],
    )
    def test_invalid_sensor(self, kwargs: dict[str, object], fragment: str) -> None:
        args: dict[str, object] = {"name": "s", "fn": lambda c: None}
        args.update(kwargs)
        with pytest.raises(DefinitionError) as info:
            Sensor(**args)  # type: ignore[arg-type]
        assert fragment in str(info.value)

    def test_run_request_validation(self) -> None:
        with pytest.raises(UsageError, match="run_key"):
            RunRequest(run_key="")
        with pytest.raises(UsageError, match="targets"):
            RunRequest(run_key="k", targets=[1])  # type: ignore[list-item]
        assert RunRequest(run_key="k", targets="a").targets == ("a",)

    def test_evaluate_accepts_generators_results_and_none(self) -> None:
        ctx = SensorContext("p", "s", utc(2024, 1, 1))

        def gen(context: SensorContext):  # type: ignore[no-untyped-def]
            yield RunRequest("a")
            yield RunRequest("b")

        assert [r.run_key for r in Sensor("s", gen).evaluate(ctx).run_requests] == ["a", "b"]
        assert Sensor("s", lambda c: None).evaluate(ctx) == SensorResult()
        result = SensorResult([RunRequest("x")], cursor="c1")
        assert Sensor("s", lambda c: result).evaluate(ctx) is result

    def test_evaluate_rejects_wrong_return_types_clearly(self) -> None:
        ctx = SensorContext("p", "s", utc(2024, 1, 1))
        with pytest.raises(UsageError, match="returned RunRequest"):
            Sensor("s", lambda c: RunRequest("a")).evaluate(ctx)  # type: ignore[arg-type,return-value]
        with pytest.raises(UsageError, match="'nope' among its run requests"):
            Sensor("s", lambda c: ["nope"]).evaluate(ctx)  # type: ignore[arg-type,return-value]
