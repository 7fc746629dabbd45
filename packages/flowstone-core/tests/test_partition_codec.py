"""The partition key codec: canonical, unambiguous, round-tripping, length-limited."""

from __future__ import annotations

import enum
import itertools
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from flowstone.errors import PartitionError
from flowstone.partitions import (
    MAX_PARTITION_DEPTH,
    MAX_PARTITION_LENGTH,
    PartitionKey,
    decode_partition,
    encode_partition,
)

BERLIN_WINTER = timezone(timedelta(hours=1))
KOLKATA = timezone(timedelta(hours=5, minutes=30))


def roundtrip(key: PartitionKey | None) -> PartitionKey | None:
    return decode_partition(encode_partition(key))


@pytest.mark.parametrize(
    ("key", "encoded"),
    [
        ("us-east", "us-east"),
        ("customer_42", "customer_42"),
        ("münchen", "münchen"),
        ("🎉", "🎉"),
        (42, "42"),
        (-7, "-7"),
        (0, "0"),
        (date(2024, 1, 5), "2024-01-05"),
        (datetime(2024, 1, 5, 10, 30), "2024-01-05T10:30:00"),
        (datetime(2024, 1, 5, 10, 30, tzinfo=UTC), "2024-01-05T10:30:00Z"),
        (datetime(2024, 1, 5, 10, 0, 0, 5, tzinfo=UTC), "2024-01-05T10:00:00.000005Z"),
        (("us-east", date(2024, 1, 5)), "(us-east,2024-01-05)"),
        (("a",), "(a)"),
        ("42", "'42'"),
        ("2024-01-05", "'2024-01-05'"),
        ("", "''"),
        ("a,b", "'a,b'"),
        ("two words", "'two words'"),
        ("o'brien", "'o\\'brien'"),
        ("line\nbreak", "'line\\nbreak'"),
        ("nul\x00", "'nul\\x00'"),
        (date(1, 1, 1), "0001-01-01"),
    ],
)
def test_encodings_are_readable_and_round_trip(key: PartitionKey, encoded: str) -> None:
    assert encode_partition(key) == encoded
    assert decode_partition(encoded) == key
    assert type(decode_partition(encoded)) is type(key)


def test_none_means_unpartitioned_and_nothing_else_encodes_to_empty() -> None:
    assert encode_partition(None) == ""
    assert decode_partition("") is None
    assert encode_partition("") != ""


def test_seed_partition_codec_is_unambiguous() -> None:
    """Seed 004 §6: keys that print alike must never encode alike."""
    keys: list[PartitionKey] = [
        1,
        "1",
        -1,
        "-1",
        date(2024, 1, 1),
        datetime(2024, 1, 1),
        datetime(2024, 1, 1, tzinfo=UTC),
        "2024-01-01",
        "2024-01-01T00:00:00",
        "2024-01-01T00:00:00Z",
        ("a", "b"),
        "a,b",
        "(a,b)",
        ("a,b",),
        (("a", "b"),),
        ("a", ("b",)),
        "a",
        ("a",),
        "'a'",
        "",
        ("",),
        "a|b",
        ("a|b",),
        "a:b",
        "a/b",
        "\\",
        "'",
        '"',
        "(",
        ")",
        (1, "1"),
        ("1", 1),
        (date(2024, 1, 1), "2024-01-01"),
    ]
    encoded = [encode_partition(key) for key in keys]
    assert len(set(encoded)) == len(keys), sorted(encoded)
    for key, text in zip(keys, encoded, strict=True):
        decoded = decode_partition(text)
        assert decoded == key
        assert type(decoded) is type(key)
    for a, b in itertools.combinations(keys, 2):
        assert encode_partition(a) != encode_partition(b)


def test_equal_keys_encode_equally() -> None:
    instant = datetime(2024, 1, 5, 9, 0, tzinfo=UTC)
    assert encode_partition(instant.astimezone(BERLIN_WINTER)) == encode_partition(instant)
    assert encode_partition(instant.astimezone(KOLKATA)) == "2024-01-05T09:00:00Z"
    assert roundtrip(instant.astimezone(KOLKATA)) == instant

    class Region(enum.StrEnum):
        EU = "eu"

    class Shard(enum.IntEnum):
        ONE = 1

    assert encode_partition(Region.EU) == encode_partition("eu") == "eu"
    assert encode_partition(Shard.ONE) == encode_partition(1) == "1"
    assert type(roundtrip(Region.EU)) is str


def test_naive_and_aware_datetimes_stay_distinct() -> None:
    naive = datetime(2024, 1, 5, 10)
    aware = datetime(2024, 1, 5, 10, tzinfo=UTC)
    assert encode_partition(naive) != encode_partition(aware)
    back = roundtrip(naive)
    assert isinstance(back, datetime) and back.tzinfo is None
    back = roundtrip(aware)
    assert isinstance(back, datetime) and back.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "a",
        "",
        "a b",
        "x" * 100,
        "|:/,()'\"\\\n\r\t\x00",
        "\x7f\x85\u2028\u2029",
        "\ud800 lone surrogate \udfff",
        "\u200d zero width \ufeff",
        "👨‍👩‍👧 family",
        "日本語",
        "-",
        ".hidden",
        "+1",
        "0x1f",
        "1e5",
        "nan",
        "None",
        "\\x41",
        "'quoted'",
    ],
)
def test_any_str_round_trips(text: str) -> None:
    encoded = encode_partition(text)
    assert decode_partition(encoded) == text
    assert "\n" not in encoded and "\x00" not in encoded
    encoded.encode("utf-8")  # storable as UTF-8 even with lone surrogates in the key


def test_nested_tuples_round_trip_up_to_the_depth_limit() -> None:
    key: PartitionKey = "leaf"
    for _ in range(MAX_PARTITION_DEPTH):
        key = (key, 1)
    assert roundtrip(key) == key
    with pytest.raises(PartitionError, match=f"deeper than {MAX_PARTITION_DEPTH}"):
        encode_partition((key,))
    too_deep = "(" * (MAX_PARTITION_DEPTH + 1) + "a" + ")" * (MAX_PARTITION_DEPTH + 1)
    with pytest.raises(PartitionError, match="deeper"):
        decode_partition(too_deep)


@pytest.mark.parametrize(
    ("key", "type_name"),
    [
        (True, "bool"),
        (1.5, "float"),
        (b"bytes", "bytes"),
        (["a"], "list"),
        ({"a": 1}, "dict"),
        (("a", None), "NoneType"),
        (("a", 2.0), "float"),
        ((False,), "bool"),
    ],
)
def test_unsupported_types_are_rejected_with_the_allowed_types(key: object, type_name: str) -> None:
    with pytest.raises(PartitionError) as info:
        encode_partition(key)  # type: ignore[arg-type]
    message = str(info.value)
    assert type_name in message
    assert "str, int, datetime.date, datetime.datetime" in message


def test_empty_tuple_is_rejected_with_a_fix() -> None:
    with pytest.raises(PartitionError, match=r"empty tuple.*None"):
        encode_partition(())


def test_seed_partition_key_length_limit() -> None:
    """Seed 004 §6: very long keys fail clearly instead of breaking storage."""
    assert MAX_PARTITION_LENGTH == 512
    longest = "k" * MAX_PARTITION_LENGTH
    assert decode_partition(encode_partition(longest)) == longest

    with pytest.raises(PartitionError) as info:
        encode_partition("k" * (MAX_PARTITION_LENGTH + 1))
    message = str(info.value)
    assert "513" in message and "512" in message
    assert "hash" in message and "Shorten" in message

    # The limit is on the *encoded* text: escapes and tuple syntax count too.
    with pytest.raises(PartitionError, match="1022 characters"):
        encode_partition("\n" * 510)
    with pytest.raises(PartitionError, match="too long"):
        encode_partition(tuple("x" * 300 for _ in range(2)))
    with pytest.raises(PartitionError, match="too long"):
        encode_partition(10**5000)
    with pytest.raises(PartitionError, match="too long"):
        decode_partition("k" * (MAX_PARTITION_LENGTH + 1))


@pytest.mark.parametrize(
    "text",
    [
        "(",
        "()",
        "(a",
        "(a,)",
        "(,a)",
        "(a))",
        "a,b",
        "a)",
        "'open",
        "'bad \\q escape'",
        "'short \\x4'",
        "'upper \\x4A'",
        "'x'",  # canonical form is bare x
        "a b",
        "01",
        "-0",
        "+1",
        ".5",
        "1.5",
        "2024-13-01",
        "2024-02-30",
        "2024-1-5",
        "2024-01-05T25:00:00",
        "2024-01-05T10:00",
        "2024-01-05T10:00:00+00:00",
        "2024-01-05T10:00:00.000000Z",
        "2024-01-05 10:00:00",
        "'\n'",
    ],
)
def test_malformed_text_is_rejected(text: str) -> None:
    with pytest.raises(PartitionError, match="not a valid encoded partition key"):
        decode_partition(text)


def test_decode_rejects_non_str_input() -> None:
    with pytest.raises(PartitionError, match="must be a str"):
        decode_partition(b"abc")  # type: ignore[arg-type]


def test_aware_datetime_that_overflows_utc_is_rejected() -> None:
    edge = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    with pytest.raises(PartitionError, match="UTC"):
        encode_partition(edge)


# --- properties -------------------------------------------------------------------------

_zones = st.sampled_from([UTC, BERLIN_WINTER, KOLKATA, timezone(timedelta(hours=-8))])
_scalars = st.one_of(
    st.text(max_size=12),
    st.text(alphabet="0123456789-+.,()'|\\: T", max_size=8),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.dates(),
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 1, 1)),
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 1, 1), timezones=_zones),
)
_keys = st.recursive(
    _scalars, lambda inner: st.lists(inner, min_size=1, max_size=3).map(tuple), max_leaves=6
)


def _encode_or_reject(key: PartitionKey) -> str:
    try:
        return encode_partition(key)
    except PartitionError:
        reject()  # only the depth/length limits can refuse a generated key


@settings(max_examples=150, deadline=None)
@given(_keys)
def test_property_every_key_round_trips(key: PartitionKey) -> None:
    encoded = _encode_or_reject(key)
    assert encoded != ""
    decoded = decode_partition(encoded)
    assert decoded == key
    assert encode_partition(decoded) == encoded


@settings(max_examples=150, deadline=None)
@given(_keys, _keys)
def test_property_encoding_is_injective(a: PartitionKey, b: PartitionKey) -> None:
    assert (_encode_or_reject(a) == _encode_or_reject(b)) == (a == b)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ab1-:'\\(),TZ0.", max_size=14))
def test_property_decode_accepts_only_canonical_text(text: str) -> None:
    try:
        key = decode_partition(text)
    except PartitionError:
        return
    assert encode_partition(key) == text
