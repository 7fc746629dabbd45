"""The lossless JSON value codec shared by every IO manager."""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import threading
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from flowstone.codec import (
    TAG_KEY,
    Codec,
    EncodedValue,
    JsonCodec,
    decode_from_storage,
    decode_value,
    encode_for_storage,
    encode_value,
    from_jsonable,
    to_jsonable,
)
from flowstone.errors import EncodingError, StorageError
from flowstone.testing.io_contract import assert_same_value, rich_values


def round_trip(value: object) -> object:
    return decode_value(encode_value(value, asset="a"))


def strict_json(data: bytes) -> object:
    """Parse as standard JSON: NaN/Infinity literals are not allowed."""

    def refuse(literal: str) -> object:
        raise AssertionError(f"non-standard JSON literal {literal}")

    return json.loads(data, parse_constant=refuse)


@pytest.mark.parametrize(("case", "value"), rich_values(), ids=[c for c, _ in rich_values()])
def test_rich_values_round_trip_with_exact_types(case: str, value: object) -> None:
    data = encode_value(value, asset="a")
    strict_json(data)  # always standard JSON, readable by other tools
    assert_same_value(decode_value(data), value)


def test_plain_json_is_stored_as_plain_json() -> None:
    value = {"name": "Zoë", "rows": [1, 2.5, None, True], "nested": {"k": []}}
    data = encode_value(value, asset="a")
    assert json.loads(data) == value
    assert data == '{"name":"Zoë","rows":[1,2.5,null,true],"nested":{"k":[]}}'.encode()


def test_zoneinfo_datetimes_keep_their_zone_and_fold() -> None:
    ambiguous = datetime(2021, 11, 7, 1, 30, tzinfo=ZoneInfo("America/New_York"), fold=1)
    back = round_trip([ambiguous, time(9, 0, tzinfo=ZoneInfo("Europe/Paris"))])
    assert isinstance(back, list)
    assert back[0].tzinfo == ZoneInfo("America/New_York")
    assert back[0].fold == 1
    assert back[0].utcoffset() == timedelta(hours=-5)
    assert back[1] == time(9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    assert back[1].tzinfo == ZoneInfo("Europe/Paris")


def test_other_tzinfo_comes_back_as_equivalent_fixed_offset() -> None:
    class Plus2(tzinfo):
        def utcoffset(self, dt: datetime | None) -> timedelta:
            return timedelta(hours=2)

        def dst(self, dt: datetime | None) -> timedelta:
            return timedelta(0)

        def tzname(self, dt: datetime | None) -> str:
            return "PLUS2"

    value = datetime(2024, 5, 1, 12, tzinfo=Plus2())
    back = round_trip(value)
    assert back == value
    assert isinstance(back, datetime)
    assert back.tzinfo == timezone(timedelta(hours=2))


def test_user_dicts_using_the_tag_key_are_not_mistaken_for_tags() -> None:
    for lookalike in [
        {TAG_KEY: "date", "v": "2024-01-01"},
        {TAG_KEY: "nope"},
        {"outer": {TAG_KEY: "tuple", "v": [1]}},
    ]:
        assert_same_value(round_trip(lookalike), lookalike)


def test_non_str_keys_keep_their_types() -> None:
    value = {1: "a", "1": "b", (1, 2): "c", date(2024, 1, 1): "d", frozenset({1}): "e"}
    back = round_trip(value)
    assert_same_value(back, value)
    assert isinstance(back, dict)
    assert list(back) == list(value)  # insertion order preserved


def test_set_encoding_is_deterministic() -> None:
    first = encode_value({"tags": {"b", "a", "c", 3, (1, 2)}}, asset="a")
    second = encode_value({"tags": {(1, 2), 3, "c", "a", "b"}}, asset="a")
    assert first == second


def test_non_finite_floats_round_trip_through_strict_json() -> None:
    data = encode_value([float("nan"), float("inf"), float("-inf")], asset="a")
    strict_json(data)
    assert_same_value(decode_value(data), [float("nan"), float("inf"), float("-inf")])


def test_lone_surrogates_produce_valid_ascii_json() -> None:
    data = encode_value({"bad": "x\ud800y", "ok": "é"}, asset="a")
    data.decode("ascii")
    assert decode_value(data) == {"bad": "x\ud800y", "ok": "é"}


class Color(enum.IntEnum):
    RED = 1


@dataclasses.dataclass
class Row:
    id: int


@pytest.mark.parametrize(
    ("value", "path", "type_name", "hint"),
    [
        (
            {"rows": [{}, {}, {}, {"callback": print}]},
            "value['rows'][3]['callback']",
            "builtin",
            "",
        ),
        (lambda: 1, "value is", "function", "JSON-able"),
        ([1, (2, object())], "value[1][1]", "object", "JSON-able"),
        ({(1, threading.Lock()): 1}, "value<dict key[1]>", "lock", ""),
        (
            {"s": {1, 2, frozenset({object()})}},
            "value['s']<set element<set element>>",
            "object",
            "",
        ),
        ({1: [Row(1)]}, "value[1][0]", "Row", "dataclasses.asdict()"),
        ({"c": Color.RED}, "value['c']", "Color", ".value"),
        ([collections.OrderedDict()], "value[0]", "OrderedDict", "dict(value)"),
        ({"d": collections.defaultdict(list)}, "value['d']", "defaultdict", "subclass of dict"),
        ({"g": (x for x in [1])}, "value['g']", "generator", "allow_pickle=True"),
    ],
)
def test_unencodable_values_name_asset_type_path_and_fix(
    value: object, path: str, type_name: str, hint: str
) -> None:
    with pytest.raises(EncodingError) as caught:
        encode_value(value, asset="orders")
    message = str(caught.value)
    assert message.startswith("cannot store the value of asset 'orders': ")
    assert path in message
    assert type_name in message
    assert hint in message


def test_cycles_are_rejected_with_their_path() -> None:
    parent: dict[str, object] = {"name": "p"}
    parent["children"] = [{"parent": parent}]
    with pytest.raises(EncodingError, match=r"value\['children'\]\[0\]\['parent'\].*cycle"):
        encode_value(parent, asset="tree")


def test_shared_references_are_not_cycles() -> None:
    shared = [1, 2]
    assert round_trip({"a": shared, "b": shared, "c": (shared, shared)}) == {
        "a": [1, 2],
        "b": [1, 2],
        "c": ([1, 2], [1, 2]),
    }


def test_too_deep_nesting_is_an_encoding_error() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(EncodingError, match="nested too deeply"):
        encode_value(deep, asset="deep")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"{not json", "not valid FlowStone JSON"),
        (b'{"$fs": "hologram", "v": 1}', "unknown tag 'hologram'.*upgrade"),
        (b'{"$fs": "date", "v": "yesterday"}', "malformed tagged object"),
        (b'{"$fs": "tuple"}', "malformed tagged object"),
        (b'{"$fs": "datetime", "v": "2024-01-01T00:00:00", "tz": "Mars/Olympus"}', "Mars"),
    ],
)
def test_corrupt_data_raises_storage_error(data: bytes, match: str) -> None:
    with pytest.raises(StorageError, match=match):
        decode_value(data)


def test_jsonable_tree_round_trip_for_native_json_stores() -> None:
    value = {"when": date(2024, 1, 1), 7: {Decimal("1.5")}}
    tree = to_jsonable(value, asset="a")
    assert json.loads(json.dumps(tree)) == tree  # plain JSON types only
    assert_same_value(from_jsonable(json.loads(json.dumps(tree))), value)
    with pytest.raises(EncodingError, match="'x'"):
        to_jsonable({"f": len}, asset="x")


def test_json_codec_object_satisfies_the_codec_protocol() -> None:
    codec = JsonCodec()
    assert isinstance(codec, Codec)
    assert codec.decode(codec.encode((1, "a"), asset="a")) == (1, "a")


def test_storage_encoding_passes_bytes_through_raw() -> None:
    assert encode_for_storage(b"\x00raw", asset="a") == EncodedValue("bin", b"\x00raw")
    assert encode_for_storage(bytearray(b"x"), asset="a").format == "json"
    assert decode_from_storage(EncodedValue("bin", b"\x00raw")) == b"\x00raw"


def test_storage_encoding_pickles_only_with_opt_in_and_only_when_needed() -> None:
    assert encode_for_storage({"a": 1}, asset="a", allow_pickle=True).format == "json"
    with pytest.raises(EncodingError):
        encode_for_storage(Row(1), asset="a")
    encoded = encode_for_storage(Row(1), asset="a", allow_pickle=True)
    assert encoded.format == "pickle"
    assert decode_from_storage(encoded, allow_pickle=True) == Row(1)
    with pytest.raises(StorageError, match=r"at 'loc'.*allow_pickle=True"):
        decode_from_storage(encoded, location="loc")
    with pytest.raises(StorageError, match="unknown storage format"):
        decode_from_storage(EncodedValue("xml", b""))  # type: ignore[arg-type]


def test_parallel_branch_markers_round_trip() -> None:
    import flowstone as fs

    joined = {
        "maps": [1],
        "news": fs.BranchFailed("news", "timeout"),
        "weather": fs.BranchSkipped("weather", "not selected"),
    }
    assert decode_value(encode_value(joined, asset="enrich")) == joined
