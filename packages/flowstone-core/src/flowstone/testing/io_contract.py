"""The behaviour every :class:`~flowstone.protocols.IOManager` must have, as a pytest suite.

An IO manager package proves it honours the contract by subclassing
:class:`IOManagerContract` in its tests. Either override
:meth:`~IOManagerContract.make_io_manager`::

    from flowstone.testing.io_contract import IOManagerContract
    from flowstone_io_s3 import S3IOManager

    class TestS3IOManager(IOManagerContract):
        def make_io_manager(self, tmp_path):
            return S3IOManager(bucket="test", prefix=f"contract/{tmp_path.name}")

or, when building the manager needs other fixtures (a database, a server), override the
``io_manager`` fixture itself -- a fixture defined in the subclass replaces the suite's::

    class TestPostgresIOManager(IOManagerContract):
        @pytest.fixture
        def io_manager(self, postgres_url):
            manager = PostgresIOManager(postgres_url, schema="contract")
            yield manager
            manager.close()

Capabilities are explicit flags (``supports_batch_loading = True``), checked against what
the manager declares. The class name must start with ``Test`` for pytest to collect it. The
suite expects the manager in its default configuration (pickle *not* allowed) and a fresh,
empty store per test. This module imports pytest, so import it from tests only.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from flowstone.errors import EncodingError, UnsafeKeyError, ValueNotFoundError
from flowstone.protocols import BatchLoading, IOManager, StorageKey

__all__ = ["IOManagerContract", "assert_same_value", "rich_values"]


def rich_values() -> list[tuple[str, object]]:
    """``(case id, value)`` pairs every IO manager must round-trip exactly (type and value)."""
    utc_plus_5 = timezone(timedelta(hours=5, minutes=30))
    return [
        ("json", {"a": [1, -2, 2.5, None, True, False, "x"], "n": {"b": {"c": [], "d": {}}}}),
        ("unicode", {"ключ": "値 🚀", "": "empty key", "lone": "\ud800"}),
        ("scalar-int", 42),
        ("scalar-str", "just a string"),
        ("scalar-none", None),
        ("empty", [[], {}, (), set(), frozenset(), "", b""]),
        ("floats", [float("nan"), float("inf"), float("-inf"), -0.0, 1e308, 5e-324]),
        ("big-int", [2**64, -(10**5000)]),
        (
            "temporal",
            [
                date(2024, 2, 29),
                datetime(2024, 1, 1, 12, 30, 45, 123456),
                datetime(2024, 1, 1, 12, 30, 45, 1, tzinfo=utc_plus_5),
                datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
                time(23, 59, 59, 999999),
                time(1, 2, 3, tzinfo=utc_plus_5),
                timedelta(days=-3, seconds=5, microseconds=7),
            ],
        ),
        ("decimal", [Decimal("1.10"), Decimal("-0"), Decimal("NaN"), Decimal("1E+100")]),
        ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
        ("binary-nested", {"blob": b"\x00\xff\x80", "mutable": bytearray(b"ab")}),
        ("tuples-sets", [(1, (2, "3")), {1, "a", (2, 3)}, frozenset({date(2024, 1, 1)})]),
        (
            "non-str-keys",
            {1: "int", (1, "a"): "tuple", date(2024, 1, 1): "date", None: "none", 2.5: "f"},
        ),
        ("tag-lookalike", {"$fs": "tuple", "v": [1, 2]}),
        (
            "deep",
            {"rows": [{"id": i, "tags": {f"t{i}"}, "on": date(2024, 1, 1 + i)} for i in range(5)]},
        ),
    ]


def assert_same_value(actual: object, expected: object) -> None:
    """Assert ``actual`` equals ``expected`` with the same types all the way down.

    Plain ``==`` is not enough: ``1 == 1.0 == True``, ``(1,) != [1]`` but ``{1} == frozenset({1})``,
    and ``nan != nan``.
    """
    assert _canonical(actual) == _canonical(expected), f"{actual!r} != {expected!r}"


def _canonical(value: object) -> Any:
    t = type(value)
    if t is float:
        return (t, "nan" if math.isnan(value) else repr(value))  # type: ignore[arg-type]
    if t is Decimal:
        return (t, str(value))
    if t in (datetime, time):
        return (t, value.isoformat(), str(value.tzinfo), value.fold)  # type: ignore[attr-defined]
    if t in (list, tuple):
        return (t, tuple(_canonical(v) for v in value))  # type: ignore[attr-defined]
    if t in (set, frozenset):
        return (t, frozenset(_canonical(v) for v in value))  # type: ignore[attr-defined]
    if t is dict:
        return (t, tuple((_canonical(k), _canonical(v)) for k, v in value.items()))  # type: ignore[attr-defined]
    return (t, value)


def _key(
    asset: str = "orders",
    *,
    pipeline: str = "contract",
    partition: str = "",
    run_id: str = "run-1",
    item: int | None = None,
) -> StorageKey:
    return StorageKey(pipeline, asset, partition, run_id, item)


_HOSTILE = [
    "../../etc",
    "/abs",
    "a/../../b",
    "..",
    ".",
    "with\x00nul",
    "C:\\evil",
    "..\\..\\windows",
    "\\\\server\\share",
    "CON",
    "nul.txt",
    "~",
    "%2e%2e%2f",
    "a" * 1000,
]


class IOManagerContract:
    """The IO manager contract suite; see the module docstring for how to subclass it.

    Capability flags: set ``supports_batch_loading = True`` on the subclass for a manager
    that declares :class:`~flowstone.protocols.BatchLoading`; the suite checks the flag
    matches what the manager declares, then tests the capability.
    """

    supports_batch_loading: bool = False

    def make_io_manager(self, tmp_path: Path) -> IOManager:
        """Return a fresh, empty IO manager for one test (``tmp_path`` is pytest's)."""
        raise NotImplementedError(
            f"{type(self).__name__} must override make_io_manager(self, tmp_path) or define "
            "an 'io_manager' pytest fixture (see flowstone.testing.io_contract)."
        )

    @pytest.fixture
    def io_manager(self, tmp_path: Path) -> Iterator[IOManager]:
        yield self.make_io_manager(tmp_path)

    def test_satisfies_protocol(self, io_manager: IOManager) -> None:
        assert isinstance(io_manager, IOManager)
        assert isinstance(io_manager.name, str) and io_manager.name

    @pytest.mark.parametrize(("case", "value"), rich_values(), ids=[c for c, _ in rich_values()])
    def test_round_trips_rich_values(self, io_manager: IOManager, case: str, value: object) -> None:
        location = io_manager.store(_key(case), value)
        assert isinstance(location, str)
        assert_same_value(io_manager.load(location), value)

    def test_bytes_pass_through_unchanged(self, io_manager: IOManager) -> None:
        payload = bytes(range(256)) * 4
        loaded = io_manager.load(io_manager.store(_key("blob"), payload))
        assert type(loaded) is bytes
        assert loaded == payload

    @pytest.mark.parametrize(
        ("value", "type_name", "path"),
        [
            (
                {"rows": [0, 1, {"callback": None}, {"callback": lambda: None}]},
                "function",
                "['rows'][3]['callback']",
            ),
            ([object()], "object", "[0]"),
            ({"gen": (i for i in range(3))}, "generator", "['gen']"),
            ({"lock": threading.Lock()}, "lock", "['lock']"),
        ],
        ids=["function", "object", "generator", "lock"],
    )
    def test_unencodable_value_raises_and_stores_nothing(
        self, io_manager: IOManager, value: object, type_name: str, path: str
    ) -> None:
        key = _key("report")
        with pytest.raises(EncodingError) as caught:
            io_manager.store(key, value)
        message = str(caught.value)
        assert "'report'" in message
        assert type_name in message
        assert path in message
        # Nothing half-written: the same key still stores and loads a good value cleanly.
        location = io_manager.store(key, {"ok": True})
        assert io_manager.load(location) == {"ok": True}

    def test_cycle_raises_encoding_error(self, io_manager: IOManager) -> None:
        cyclic: list[object] = [1]
        cyclic.append({"again": cyclic})
        with pytest.raises(EncodingError, match="cycle"):
            io_manager.store(_key("loop"), cyclic)

    def test_run_scoped_keys_do_not_overwrite(self, io_manager: IOManager) -> None:
        first = io_manager.store(_key(partition="2024-01-01", run_id="run-a"), "from a")
        second = io_manager.store(_key(partition="2024-01-01", run_id="run-b"), "from b")
        assert first != second
        assert io_manager.load(first) == "from a"
        assert io_manager.load(second) == "from b"

    def test_storing_same_key_again_replaces_in_place(self, io_manager: IOManager) -> None:
        first = io_manager.store(_key(), [1])
        second = io_manager.store(_key(), [2])
        assert first == second
        assert io_manager.load(second) == [2]

    def test_item_keys_are_distinct(self, io_manager: IOManager) -> None:
        locations = {
            item: io_manager.store(_key("page", item=item), f"item {item}")
            for item in (None, 0, 1, 2, 10)
        }
        assert len(set(locations.values())) == len(locations)
        for item, location in locations.items():
            assert io_manager.load(location) == f"item {item}"

    def test_unicode_and_odd_partitions_are_distinct(self, io_manager: IOManager) -> None:
        partitions = [
            "", "2024-01-01", "région=île-de-france", "a|b", "a/b", "a\\b", " spaced ", "日本",
            "🚀", "Orders", "orders", "ORDERS", "%41", "A", "a", "x" * 500, "x" * 501, "\ud800",
        ]  # fmt: skip
        locations = [io_manager.store(_key(partition=p), {"p": p}) for p in partitions]
        assert len(set(locations)) == len(partitions)
        for partition, location in zip(partitions, locations, strict=True):
            assert io_manager.load(location) == {"p": partition}

    @pytest.mark.parametrize("field", ["pipeline", "asset", "partition", "run_id"])
    def test_hostile_names_never_collide_or_escape(self, io_manager: IOManager, field: str) -> None:
        stored: dict[str, str] = {}
        for hostile in [*_HOSTILE, "b", "etc", "abs"]:
            try:
                change: dict[str, Any] = {field: hostile}
                key = dataclasses.replace(_key(), **change)
                stored[hostile] = io_manager.store(key, {"name": hostile})
            except UnsafeKeyError:
                continue  # refusing a hostile name is allowed; storing it outside is not
        assert len(set(stored.values())) == len(stored)
        for hostile, location in stored.items():
            assert io_manager.load(location) == {"name": hostile}

    def test_exists_and_delete(self, io_manager: IOManager) -> None:
        location = io_manager.store(_key(), {"n": 1})
        assert io_manager.exists(location)
        io_manager.delete(location)
        assert not io_manager.exists(location)
        io_manager.delete(location)  # deleting again is not an error
        assert not io_manager.exists(location)

    def test_load_missing_raises_value_not_found_naming_location(
        self, io_manager: IOManager
    ) -> None:
        location = io_manager.store(_key(), {"n": 1})
        io_manager.delete(location)
        with pytest.raises(ValueNotFoundError) as caught:
            io_manager.load(location)
        assert location in str(caught.value)

    def test_every_attempt_writes_its_own_location(self, io_manager: IOManager) -> None:
        """A losing duplicate attempt can never replace the value under a committed record:
        the same key with another attempt is another location, and writing it leaves the
        first value as it was."""
        first = io_manager.store(dataclasses.replace(_key("fenced"), attempt=1), {"by": 1})
        second = io_manager.store(dataclasses.replace(_key("fenced"), attempt=2), {"by": 2})
        assert first != second
        assert io_manager.load(first) == {"by": 1}
        assert io_manager.load(second) == {"by": 2}
        io_manager.delete(second)  # pruning the loser's orphan leaves the winner
        assert io_manager.load(first) == {"by": 1}

    def test_load_many_matches_load(self, io_manager: IOManager) -> None:
        """``load_many`` (the optional BatchLoading capability, ``supports_batch_loading``)
        must agree with ``load``."""
        assert isinstance(io_manager, BatchLoading) == self.supports_batch_loading, (
            f"{type(io_manager).__name__}: set supports_batch_loading = "
            f"{isinstance(io_manager, BatchLoading)} on the contract subclass"
        )
        if not isinstance(io_manager, BatchLoading):
            pytest.skip(f"{type(io_manager).__name__} does not declare BatchLoading")
        load_many = io_manager.load_many
        values = [{"n": i, "tags": ["a", i]} for i in range(5)]
        locations = [io_manager.store(_key(f"batch-{i}"), v) for i, v in enumerate(values)]
        order = [3, 0, 4, 0, 1]
        assert load_many([locations[i] for i in order]) == [values[i] for i in order]
        assert load_many([]) == []
        io_manager.delete(locations[2])
        with pytest.raises(ValueNotFoundError) as caught:
            load_many([locations[0], locations[2]])
        assert locations[2] in str(caught.value)

    def test_concurrent_stores_from_threads(self, io_manager: IOManager) -> None:
        shared: set[str] = set()

        def work(worker: int) -> list[tuple[str, object]]:
            out: list[tuple[str, object]] = []
            for n in range(20):
                value = {"worker": worker, "n": n, "at": date(2024, 1, 1 + n)}
                out.append((io_manager.store(_key(run_id=f"w{worker}", item=n), value), value))
                # Every thread also hammers one shared key.
                shared.add(io_manager.store(_key("shared"), {"worker": worker, "n": n}))
            return out

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = [pair for chunk in pool.map(work, range(8)) for pair in chunk]
        assert len({location for location, _ in results}) == 8 * 20
        for location, value in results:
            assert io_manager.load(location) == value
        # The globally last write is some thread's last write (n=19), whole and untorn.
        (shared_location,) = shared
        last = io_manager.load(shared_location)
        assert isinstance(last, dict)
        assert last["n"] == 19
        assert last["worker"] in range(8)
