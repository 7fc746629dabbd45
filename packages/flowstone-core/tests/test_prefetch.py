"""The runner's cache of values a continuation already has (engine/prefetch.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flowstone.engine.prefetch import PrefetchCache
from flowstone.records import MaterializationRecord


class Decoding:
    def decode_prefetched(self, location: str, encoded: object) -> object:
        return ("decoded", location, encoded)


class Plain:  # no decode_prefetched: its values are always loaded
    pass


class FakeValues:
    """The value layer's ``decode_prefetched``: only managers that can decode do."""

    def __init__(self) -> None:
        self.managers: dict[str, Any] = {"pg": Decoding(), "fs": Plain()}

    def decode_prefetched(self, mat: MaterializationRecord, encoded: object) -> tuple[bool, Any]:
        manager = self.managers.get(str(mat.io_manager))
        if not isinstance(manager, Decoding) or mat.location is None:
            return False, None
        return True, manager.decode_prefetched(mat.location, encoded)


def _mat(mid: str, io: str | None, location: str | None) -> MaterializationRecord:
    return MaterializationRecord(
        id=mid, pipeline="p", run_id="r", asset=mid, partition="", state="succeeded",
        io_manager=io, location=location, finished_at=datetime.now(UTC),
    )


def test_values_are_decoded_by_their_manager_and_taken_once() -> None:
    cache, pipeline = PrefetchCache(), FakeValues()
    cache.put({"loc-a": ("json", "1", None), "loc-b": ("json", "2", None)})
    cache.put([("loc-c", ("json", "3", None)), ("loc-none", None)])  # None: nothing to keep
    mats = [_mat("a", "pg", "loc-a"), _mat("c", "fs", "loc-c"), _mat("x", "pg", "loc-x"),
            _mat("n", None, None)]
    got = cache.take(pipeline, mats)  # type: ignore[arg-type]
    # loc-c's manager cannot decode: not returned, so the engine loads it as usual
    assert got == {"a": ("decoded", "loc-a", ("json", "1", None))}
    assert cache.take(pipeline, mats) == {}  # taken once
    assert cache.take(pipeline, [_mat("b", "pg", "loc-b")]) == {  # type: ignore[arg-type]
        "b": ("decoded", "loc-b", ("json", "2", None))}


def test_the_cache_is_bounded() -> None:
    cache, pipeline = PrefetchCache(), FakeValues()
    cache.put((f"loc-{i}", i) for i in range(1000))
    mats = [_mat(str(i), "pg", f"loc-{i}") for i in range(1000)]
    got = cache.take(pipeline, mats)  # type: ignore[arg-type]
    assert 0 < len(got) <= 256 and "999" in got and "0" not in got  # the oldest went first
