"""Partition sets, partition mappings and CLI parsing of partition keys."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from flowstone.errors import PartitionError, UsageError
from flowstone.partitions import (
    AllPartitions,
    DailyPartitions,
    HourlyPartitions,
    IdentityMapping,
    MultiPartitions,
    PartitionMapping,
    PartitionSet,
    StaticPartitions,
    TimeWindowOffset,
    Unpartitioned,
    decode_partition,
    encode_partition,
    parse_partition,
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- DailyPartitions --------------------------------------------------------------------


def test_daily_keys_are_dates_inclusive_of_end() -> None:
    days = DailyPartitions("2024-01-30", date(2024, 2, 2))
    assert days.keys() == [date(2024, 1, 30), date(2024, 1, 31), date(2024, 2, 1), date(2024, 2, 2)]
    assert DailyPartitions("2024-01-30") == DailyPartitions(date(2024, 1, 30))


def test_daily_open_end_stops_at_the_last_complete_day() -> None:
    days = DailyPartitions("2024-01-01")
    assert days.keys(now=utc(2024, 1, 4, 10))[-1] == date(2024, 1, 3)
    assert days.keys(now=utc(2024, 1, 4, 10)) == days.keys_between("2024-01-01", "2024-01-03")
    assert days.keys(now=utc(2024, 1, 1, 23)) == []  # the first day is not complete yet
    with pytest.raises(UsageError, match="naive"):
        days.keys(now=datetime(2024, 1, 4))


def test_daily_last_complete_day_follows_the_timezone() -> None:
    # 23:30 UTC on 30 March is already 00:30 on 31 March in Berlin (CET, +1).
    now = utc(2024, 3, 30, 23, 30)
    assert DailyPartitions("2024-03-01").keys(now=now)[-1] == date(2024, 3, 29)
    assert DailyPartitions("2024-03-01", timezone="Europe/Berlin").keys(now=now)[-1] == date(
        2024, 3, 30
    )
    # 05:00 UTC is still the previous evening in Los Angeles.
    la = DailyPartitions("2024-01-01", timezone="America/Los_Angeles")
    assert la.keys(now=utc(2024, 1, 5, 5))[-1] == date(2024, 1, 3)
    assert la.keys(now=utc(2024, 1, 5, 9))[-1] == date(2024, 1, 4)


def test_daily_time_windows_follow_dst() -> None:
    berlin = DailyPartitions("2024-01-01", timezone="Europe/Berlin")
    start, end = berlin.time_window(date(2024, 1, 5))
    assert (start, end) == (utc(2024, 1, 4, 23), utc(2024, 1, 5, 23))
    start, end = berlin.time_window(date(2024, 3, 31))  # clocks go forward: 23 hours
    assert end - start == timedelta(hours=23)
    start, end = berlin.time_window(date(2024, 10, 27))  # clocks go back: 25 hours
    assert end - start == timedelta(hours=25)
    assert start == utc(2024, 10, 26, 22)
    assert DailyPartitions("2024-01-01").time_window(date(2024, 3, 31))[0] == utc(2024, 3, 31)


def test_daily_contains_and_validate() -> None:
    days = DailyPartitions("2024-01-01", "2024-01-31")
    assert days.contains(date(2024, 1, 15))
    assert not days.contains(date(2024, 2, 1))
    assert not days.contains(datetime(2024, 1, 15))  # a datetime is not a day
    assert not days.contains("2024-01-15")
    assert days.validate(date(2024, 1, 15)) == date(2024, 1, 15)
    with pytest.raises(PartitionError) as info:
        days.validate(date(2024, 2, 1))
    message = str(info.value)
    assert "2024-01-01 .. 2024-01-31" in message and "DailyPartitions" in message
    assert "YYYY-MM-DD" in message
    with pytest.raises(PartitionError, match="not a date"):
        days.validate(datetime(2024, 1, 15))


def test_daily_parse_turns_cli_text_into_a_date() -> None:
    days = DailyPartitions("2024-01-01")
    key = days.parse("2024-01-05")
    assert key == date(2024, 1, 5) and type(key) is date
    for bad in ["2024-1-5", "05/01/2024", "2024-02-30", "tomorrow"]:
        with pytest.raises(PartitionError, match=r"2024-01-05|YYYY-MM-DD"):
            days.parse(bad)
    with pytest.raises(PartitionError, match="2024-01-01"):
        days.parse("2023-12-31")


def test_daily_keys_between_for_backfills() -> None:
    days = DailyPartitions("2024-01-01")
    assert days.keys_between("2024-01-02", date(2024, 1, 4)) == [
        date(2024, 1, 2),
        date(2024, 1, 3),
        date(2024, 1, 4),
    ]
    assert days.keys_between("2024-01-02", "2024-01-02") == [date(2024, 1, 2)]
    with pytest.raises(PartitionError, match="start is after end"):
        days.keys_between("2024-01-04", "2024-01-02")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": "2024-02-01", "end": "2024-01-01"}, "after end"),
        ({"start": "2024-01-01", "timezone": "Europe/Berln"}, "IANA"),
        ({"start": "2024-01-01", "timezone": "../etc/passwd"}, "IANA"),
        ({"start": "yesterday"}, "YYYY-MM-DD"),
        ({"start": datetime(2024, 1, 1)}, "not a day"),
    ],
)
def test_daily_rejects_bad_arguments_with_a_fix(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        DailyPartitions(**kwargs)  # type: ignore[arg-type]


# --- HourlyPartitions -------------------------------------------------------------------


def test_hourly_keys_are_aware_utc_hours() -> None:
    hours = HourlyPartitions("2024-01-05T22:00Z", "2024-01-06T01:00Z")
    assert hours.keys() == [
        utc(2024, 1, 5, 22),
        utc(2024, 1, 5, 23),
        utc(2024, 1, 6),
        utc(2024, 1, 6, 1),
    ]
    keys = hours.keys()
    assert all(isinstance(k, datetime) and k.tzinfo is UTC for k in keys)
    open_ended = HourlyPartitions(utc(2024, 1, 5))
    assert open_ended.keys(now=utc(2024, 1, 5, 3, 59))[-1] == utc(2024, 1, 5, 2)


def test_hourly_reads_naive_text_in_its_timezone() -> None:
    berlin = HourlyPartitions("2024-01-05T10:00", timezone="Europe/Berlin")
    assert berlin.start == utc(2024, 1, 5, 9)
    assert berlin.parse("2024-01-05T12") == utc(2024, 1, 5, 11)
    assert berlin.parse("2024-01-05T12:00Z") == utc(2024, 1, 5, 12)
    assert berlin.parse("2024-01-05T17:00+05:00") == utc(2024, 1, 5, 12)


def test_hourly_refuses_local_times_dst_skips_or_repeats() -> None:
    berlin = HourlyPartitions("2024-01-01T00:00Z", timezone="Europe/Berlin")
    with pytest.raises(PartitionError, match=r"does not exist.*explicit offset"):
        berlin.parse("2024-03-31T02:00")
    with pytest.raises(PartitionError, match=r"ambiguous.*explicit offset"):
        berlin.parse("2024-10-27T02:00")
    assert berlin.parse("2024-10-27T02:00+01:00") == utc(2024, 10, 27, 1)
    assert berlin.parse("2024-10-27T02:00+02:00") == utc(2024, 10, 27)


def test_hourly_keys_between_spans_the_25_hour_day() -> None:
    berlin = HourlyPartitions("2024-10-01T00:00", timezone="Europe/Berlin")
    keys = berlin.keys_between("2024-10-27T00:00", "2024-10-27T23:00")
    assert len(keys) == 25
    assert keys[0] == utc(2024, 10, 26, 22) and keys[-1] == utc(2024, 10, 27, 22)


def test_hourly_validate_normalises_and_explains() -> None:
    hours = HourlyPartitions("2024-01-05T00:00Z", "2024-01-05T23:00Z")
    plus_two = timezone(timedelta(hours=2))
    key = hours.validate(datetime(2024, 1, 5, 12, tzinfo=plus_two))
    assert key == utc(2024, 1, 5, 10)
    assert encode_partition(key) == "2024-01-05T10:00:00Z"
    for bad in [
        datetime(2024, 1, 5, 10),
        utc(2024, 1, 5, 10, 30),
        utc(2024, 1, 6),
        date(2024, 1, 5),
    ]:
        with pytest.raises(PartitionError, match=r"on the hour.*tzinfo=UTC"):
            hours.validate(bad)
    with pytest.raises(PartitionError, match="2024-01-05T10:00Z"):
        hours.parse("2024-01-05")


@pytest.mark.parametrize(
    ("zone", "offset"),
    [
        ("Asia/Kolkata", timedelta(hours=5, minutes=30)),
        ("America/St_Johns", timedelta(hours=-3, minutes=-30)),
        ("Asia/Kathmandu", timedelta(hours=5, minutes=45)),
    ],
)
def test_hourly_partitions_are_local_hours_in_zones_with_fractional_offsets(
    zone: str, offset: timedelta
) -> None:
    hours = HourlyPartitions("2024-01-05T10:00", "2024-01-05T12:00", timezone=zone)
    local = timezone(offset)
    expected = [datetime(2024, 1, 5, h, tzinfo=local) for h in (10, 11, 12)]
    keys = hours.keys()
    assert keys == expected  # the same instants: every aware key is kept in UTC
    assert all(k.tzinfo is UTC for k in keys)  # type: ignore[union-attr]
    # shown in local time, the wall clock reads 10:00, 11:00, 12:00
    local = [hours.local_time(k).isoformat() for k in keys]  # type: ignore[arg-type]
    assert local == [e.isoformat() for e in expected]
    assert hours.parse("2024-01-05T11") == expected[1]
    assert hours.parse(local[1]) == expected[1]
    assert hours.time_window(expected[0]) == (expected[0], expected[1])
    open_ended = HourlyPartitions("2024-01-05T10:00", timezone=zone)
    assert open_ended.keys(now=expected[2] + timedelta(minutes=59)) == expected[:2]
    with pytest.raises(PartitionError, match="on the hour"):
        hours.validate(utc(2024, 1, 5, 5))  # on the UTC hour, not on the local one


def test_errors_show_keys_as_the_cli_takes_them_and_the_nearest_valid_key() -> None:
    days = DailyPartitions("2024-04-01", "2024-04-30")
    with pytest.raises(PartitionError) as info:
        days.validate(date(2024, 5, 3))
    message = str(info.value)
    assert message.startswith("'2024-05-03' is not a partition of DailyPartitions(2024-04-01")
    assert "The nearest partition is '2024-04-30'" in message
    assert "datetime.date(" not in message
    with pytest.raises(PartitionError, match="nearest partition is '2024-04-01'"):
        days.parse("2024-01-01")
    hours = HourlyPartitions("2024-01-05T10:00", "2024-01-05T12:00", timezone="Asia/Kolkata")
    with pytest.raises(PartitionError) as info:
        hours.parse("2024-01-05T13")
    message = str(info.value)
    assert message.startswith("'2024-01-05T13:00+05:30' is not a partition of")
    assert "nearest partition is '2024-01-05T12:00+05:30'" in message
    assert hours.parse("2024-01-05T12:00+05:30") == hours.end
    regions = StaticPartitions(["us-east", "us-west", "eu-central"])
    with pytest.raises(PartitionError, match="nearest partition is 'us-east'"):
        regions.parse("us-esat")
    with pytest.raises(PartitionError) as info:
        regions.parse("antarctica")
    assert "nearest" not in str(info.value)
    both = MultiPartitions({"day": days, "region": regions})
    with pytest.raises(PartitionError) as info:
        both.validate((date(2024, 4, 2), "eu-centrl"))
    message = str(info.value)
    assert "dimension 'region' of '2024-04-02|eu-centrl'" in message
    assert "nearest partition is 'eu-central'" in message


def test_hourly_dst_follows_the_local_clock_like_daily_partitions() -> None:
    new_york = HourlyPartitions("2024-03-10T00:00", "2024-03-10T23:00", timezone="America/New_York")
    spring = new_york.keys()
    assert len(spring) == 23  # 02:00 does not exist that night
    assert [new_york.local_time(k).hour for k in spring[:3]] == [0, 1, 3]  # type: ignore[arg-type]
    fall = HourlyPartitions("2024-11-03T00:00", "2024-11-03T23:00", timezone="America/New_York")
    keys = fall.keys()
    assert len(keys) == 25  # 01:00 happens twice: one partition per offset
    assert [fall.local_time(k).isoformat() for k in keys[1:3]] == [  # type: ignore[arg-type]
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:00:00-05:00",
    ]
    assert len({encode_partition(k) for k in keys}) == 25
    # the hours of a day partition the day's time window exactly, as DailyPartitions says
    day = DailyPartitions("2024-11-03", timezone="America/New_York").time_window(date(2024, 11, 3))
    windows = [fall.time_window(k) for k in keys]  # type: ignore[arg-type]
    assert windows[0][0] == day[0] and windows[-1][1] == day[1]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))
    # Lord Howe moves its clock back 30 minutes (02:00+11:00 -> 01:30+10:30): hours still
    # follow the local clock, and 01:00+11:00 lasts 90 minutes
    howe = HourlyPartitions(
        "2024-04-07T00:00+11:00", "2024-04-07T03:00+10:30", "Australia/Lord_Howe"
    )
    howe_keys = howe.keys()
    assert [howe.local_time(k).isoformat()[11:] for k in howe_keys] == [  # type: ignore[arg-type]
        "00:00:00+11:00",
        "01:00:00+11:00",
        "02:00:00+10:30",
        "03:00:00+10:30",
    ]
    start, end = howe.time_window(howe_keys[1])  # type: ignore[arg-type]
    assert end - start == timedelta(minutes=90)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("2024-01-05T10:30Z",), "not on the hour"),
        (("2024-01-05T10:00Z", None, "Asia/Kolkata"), r"not on the hour.*15:30.*e\.g\. .*15:00"),
        (("2024-01-05T10:00Z", "2024-01-05T09:00Z"), "after end"),
        ((utc(2024, 1, 5), None, "Mars/Olympus"), "IANA"),
        ((12,), "not a datetime"),
        (("2024-10-27T02:00", None, "Europe/Berlin"), "start: .*ambiguous"),
        (("5 o'clock",), "ISO text"),
    ],
)
def test_hourly_rejects_bad_arguments(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        HourlyPartitions(*args)  # type: ignore[arg-type]


# --- StaticPartitions -------------------------------------------------------------------


def test_static_keeps_order_and_distinguishes_int_from_str() -> None:
    parts = StaticPartitions(["us", "eu", 3, "3"])
    assert parts.keys() == ["us", "eu", 3, "3"]
    assert parts.contains(3) and parts.contains("3") and not parts.contains(True)
    assert parts.parse("eu") == "eu"
    assert parts.parse("3") == "3"  # a str key spelled exactly like the text wins
    assert StaticPartitions([1, 2]).parse("2") == 2
    with pytest.raises(PartitionError, match="allowed keys are 1, 2"):
        StaticPartitions([1, 2]).parse("9" * 5000)
    assert parts.keys_between("eu", 3) == ["eu", 3]
    with pytest.raises(PartitionError, match="start is after end"):
        parts.keys_between(3, "us")


def test_static_validate_lists_allowed_keys() -> None:
    parts = StaticPartitions(["us", "eu"])
    with pytest.raises(PartitionError, match=r"allowed keys are 'us', 'eu'\. Use one of them"):
        parts.validate("asia")
    with pytest.raises(PartitionError, match="'us', 'eu'"):
        parts.parse("asia")
    many = StaticPartitions([f"k{n}" for n in range(50)])
    with pytest.raises(PartitionError, match=r"'k19', \.\.\."):
        many.validate("nope")


@pytest.mark.parametrize(
    ("keys", "error", "match"),
    [
        (["us", "eu", "us"], UsageError, "listed twice"),
        ([1, 2, 1], UsageError, "listed twice"),
        ([], UsageError, "at least one"),
        ("usa", UsageError, "list of str/int"),
        ([True], UsageError, "bool"),
        ([1.5], UsageError, "float"),
        (["x" * 600], PartitionError, "too long"),
    ],
)
def test_static_rejects_bad_keys(keys: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        StaticPartitions(keys)  # type: ignore[arg-type]


# --- MultiPartitions --------------------------------------------------------------------


def multi() -> MultiPartitions:
    return MultiPartitions(
        {
            "day": DailyPartitions("2024-01-01", "2024-01-02"),
            "region": StaticPartitions(["us", "eu"]),
            "shard": StaticPartitions([1, 2]),
        }
    )


def test_multi_keys_are_tuples_in_dimension_order() -> None:
    parts = multi()
    assert parts.dimension_names == ("day", "region", "shard")
    keys = parts.keys()
    assert len(keys) == 8
    assert keys[0] == (date(2024, 1, 1), "us", 1)
    assert keys[1] == (date(2024, 1, 1), "us", 2)
    assert keys[-1] == (date(2024, 1, 2), "eu", 2)
    assert encode_partition(keys[0]) == "(2024-01-01,us,1)"
    assert decode_partition("(2024-01-01,us,1)") == keys[0]


def test_multi_parse_accepts_pipe_json_and_encoded_forms() -> None:
    parts = multi()
    expected = (date(2024, 1, 2), "eu", 2)
    assert parts.parse("2024-01-02|eu|2") == expected
    assert parts.parse('["2024-01-02", "eu", 2]') == expected
    assert parts.parse('["2024-01-02", "eu", "2"]') == expected
    assert parts.parse("(2024-01-02,eu,2)") == expected
    with pytest.raises(PartitionError, match=r"one part per dimension.*JSON array"):
        parts.parse("2024-01-02|eu")
    with pytest.raises(PartitionError, match=r"dimension 'region'.*'us', 'eu'"):
        parts.parse("2024-01-02|asia|2")
    with pytest.raises(PartitionError, match="JSON"):
        parts.parse("[2024")


def test_multi_contains_validate_and_keys_between() -> None:
    parts = multi()
    assert parts.contains((date(2024, 1, 1), "us", 1))
    assert not parts.contains((date(2024, 1, 1), "us"))
    assert not parts.contains("2024-01-01|us|1")
    with pytest.raises(PartitionError, match="dimension 'shard'"):
        parts.validate((date(2024, 1, 1), "us", 3))
    with pytest.raises(PartitionError, match="tuples of 3 parts"):
        parts.validate("us")
    box = parts.keys_between("2024-01-01|us|2", (date(2024, 1, 2), "eu", 2))
    assert box == [
        (date(2024, 1, 1), "us", 2),
        (date(2024, 1, 1), "eu", 2),
        (date(2024, 1, 2), "us", 2),
        (date(2024, 1, 2), "eu", 2),
    ]


def test_multi_with_hourly_dimension_normalises_to_utc() -> None:
    parts = MultiPartitions(
        {"hour": HourlyPartitions("2024-01-01T00:00Z"), "kind": StaticPartitions(["a"])}
    )
    key = parts.validate((datetime(2024, 1, 5, 12, tzinfo=timezone(timedelta(hours=2))), "a"))
    assert key == (utc(2024, 1, 5, 10), "a")
    assert parts.parse("2024-01-05T10:00Z|a") == key


@pytest.mark.parametrize(
    "dimensions",
    [
        {},
        {"": StaticPartitions(["a"])},
        {"x": ["a"]},
        {"x": MultiPartitions({"y": StaticPartitions(["a"])})},
    ],
)
def test_multi_rejects_bad_dimensions(dimensions: object) -> None:
    with pytest.raises(UsageError, match="MultiPartitions"):
        MultiPartitions(dimensions)  # type: ignore[arg-type]


# --- shared behaviour -------------------------------------------------------------------


SETS: list[PartitionSet] = [
    DailyPartitions("2024-01-01", "2024-01-03"),
    HourlyPartitions("2024-01-01T00:00Z", "2024-01-01T02:00Z"),
    StaticPartitions(["a", 1]),
    multi(),
]


@pytest.mark.parametrize("parts", SETS, ids=lambda p: type(p).__name__)
def test_every_set_is_a_frozen_partition_set_whose_keys_round_trip(parts: PartitionSet) -> None:
    assert isinstance(parts, PartitionSet)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(parts, dataclasses.fields(parts)[0].name, None)  # type: ignore[arg-type]
    hash(parts)
    keys = parts.keys()
    assert keys
    for key in keys:
        assert parts.contains(key)
        assert parts.validate(key) == key
        assert decode_partition(encode_partition(key)) == key


# --- mappings ---------------------------------------------------------------------------


def test_identity_mapping() -> None:
    days = DailyPartitions("2024-01-01")
    identity = IdentityMapping()
    assert isinstance(identity, PartitionMapping)
    assert identity.upstream_keys(date(2024, 1, 5), days) == [date(2024, 1, 5)]
    assert identity.upstream_keys("anything", None) == ["anything"]
    assert identity.upstream_keys(None, None) == [None]
    with pytest.raises(PartitionError, match="AllPartitions"):
        identity.upstream_keys(None, days)
    with pytest.raises(PartitionError, match="2024-01-01"):
        identity.upstream_keys(date(2023, 1, 1), days)


def test_time_window_offset_shifts_days_and_hours() -> None:
    days = DailyPartitions("2024-01-01")
    hours = HourlyPartitions("2024-01-01T00:00Z")
    previous = TimeWindowOffset()
    assert previous.upstream_keys(date(2024, 1, 5), days) == [date(2024, 1, 4)]
    assert previous.upstream_keys(date(2024, 1, 1), days) == []  # nothing before the start
    assert previous.upstream_keys(utc(2024, 1, 5, 0), hours) == [utc(2024, 1, 4, 23)]
    assert TimeWindowOffset(2).upstream_keys(date(2024, 2, 28), None) == [date(2024, 3, 1)]
    assert TimeWindowOffset(-3).upstream_keys(datetime(2024, 1, 1, 1), None) == [
        datetime(2023, 12, 31, 22)
    ]


def test_time_window_offset_errors_name_the_fix() -> None:
    previous = TimeWindowOffset(-1)
    with pytest.raises(PartitionError, match=r"date or datetime.*DailyPartitions"):
        previous.upstream_keys("us", None)
    with pytest.raises(PartitionError, match="date or datetime"):
        previous.upstream_keys(None, None)
    with pytest.raises(PartitionError, match="Daily or Hourly upstream"):
        previous.upstream_keys(date(2024, 1, 5), StaticPartitions(["a"]))
    with pytest.raises(PartitionError, match="not a date"):
        previous.upstream_keys(utc(2024, 1, 5, 3), DailyPartitions("2024-01-01"))
    with pytest.raises(PartitionError, match="on the hour"):
        previous.upstream_keys(date(2024, 1, 5), HourlyPartitions("2024-01-01T00:00Z"))
    with pytest.raises(UsageError, match="offset must be an int"):
        TimeWindowOffset(True)
    with pytest.raises(UsageError, match="offset must be an int"):
        TimeWindowOffset(1.5)  # type: ignore[arg-type]


def test_all_partitions_and_unpartitioned() -> None:
    regions = StaticPartitions(["us", "eu"])
    assert AllPartitions().upstream_keys(None, regions) == ["us", "eu"]
    assert AllPartitions().upstream_keys("summary", regions) == ["us", "eu"]
    with pytest.raises(PartitionError, match=r"declare a partition set.*partitions="):
        AllPartitions().upstream_keys(None, None)
    assert Unpartitioned().upstream_keys(date(2024, 1, 5), None) == [None]
    assert Unpartitioned().upstream_keys(date(2024, 1, 5), regions) == [None]


# --- parse_partition --------------------------------------------------------------------


def test_parse_partition_with_and_without_a_set() -> None:
    assert parse_partition("2024-01-05", DailyPartitions("2024-01-01")) == date(2024, 1, 5)
    assert parse_partition("2024-01-05", None) == "2024-01-05"  # no set: the text is a str key
    assert parse_partition("42", None) == "42"
    assert parse_partition("a|b", None) == "a|b"
    with pytest.raises(PartitionError, match="omit the partition"):
        parse_partition("", None)
    with pytest.raises(PartitionError, match="too long"):
        parse_partition("x" * 1000, None)
