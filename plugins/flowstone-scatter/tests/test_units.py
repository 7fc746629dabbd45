"""Pure parts of flowstone-scatter: rows and batches, key limits, messages, plugin wiring."""

from __future__ import annotations

import pytest

import flowstone as fs
from flowstone.errors import UsageError
from flowstone.registry import PluginRegistry
from flowstone.scatter import MAX_ITEM_KEY_LENGTH
from flowstone_scatter import CeleryScatterCoordinator
from flowstone_scatter.barrier import unit_ranges
from flowstone_scatter.coordinator import CHUNK_SECONDS, MAX_CHUNK_UNITS, build_rows
from flowstone_scatter.items import paced_chunk_units
from flowstone_scatter.messages import ScatterMessageError, parse_chunk, parse_read


def test_rows_dedupe_equal_items_and_number_units_per_item() -> None:
    sc = fs.Scatter(items=lambda: [])
    rows, units = build_rows(sc, "a", [{"b": 1, "a": 2}, {"a": 2, "b": 1}, 3], 0, 0, set())
    assert [(r[0], r[1]) for r in rows] == [(0, 0), (2, 1)]  # key order does not matter
    assert units == 2


def test_batches_respect_max_bytes_and_max_items() -> None:
    sc = fs.Scatter(items=lambda: [], batching=fs.Batching(max_items=3, max_bytes=12))
    rows, units = build_rows(sc, "a", ["aaaa", "bbbb", "c", "d", "e", "f"], 0, 0, set())
    # '"aaaa"' is 6 bytes: two fill 12 bytes; then three 3-byte items hit max_items
    assert [r[1] for r in rows] == [0, 0, 1, 1, 1, 2]
    assert units == 3


def test_oversized_key_is_rejected_naming_item_and_limit() -> None:
    sc = fs.Scatter(items=lambda: [])
    limit = MAX_ITEM_KEY_LENGTH
    with pytest.raises(UsageError, match=rf"item 1 of asset 'pages'.*limit is {limit}"):
        build_rows(sc, "pages", ["ok", "x" * 2000], 0, 0, set())


def test_batches_by_count_alone_cut_every_max_items() -> None:
    sc = fs.Scatter(items=lambda: [], batching=fs.Batching(max_items=2))
    rows, units = build_rows(sc, "a", ["x" * 500, "y" * 500, "z"], 0, 0, set())
    assert [r[1] for r in rows] == [0, 0, 1]
    assert units == 2


def test_default_chunks_adapt_within_bounds_and_fixed_ones_do_not() -> None:
    wide = fs.Scatter(items=lambda: [], max_concurrent=2000)
    coord = CeleryScatterCoordinator()
    assert coord.chunk_units(wide) == 100
    assert coord.chunk_bounds(wide) == (100, 500)  # a window still spans four messages
    assert coord.chunk_bounds(fs.Scatter(items=lambda: [], max_concurrent=40)) == (10, 10)
    huge = fs.Scatter(items=lambda: [], max_concurrent=100_000)
    assert coord.chunk_bounds(huge) == (100, MAX_CHUNK_UNITS)
    assert CeleryScatterCoordinator(chunk_size=7).chunk_bounds(wide) is None
    limited = fs.Scatter(items=lambda: [], max_concurrent=2000, rate_limit="100/s")
    assert coord.chunk_bounds(limited) is None
    # the next chunks take CHUNK_SECONDS at the measured pace, clamped to the bounds
    assert paced_chunk_units((100, 500), 100, 100 * CHUNK_SECONDS / 300) == 300
    assert paced_chunk_units((100, 500), 100, 0.0) == 500  # trivial items: the most
    assert paced_chunk_units((100, 500), 3, 30.0) == 100  # slow items: the least
    assert paced_chunk_units((100, 500), 0, 1.0) is None  # nothing ran: keep the size
    assert paced_chunk_units(None, 100, 1.0) is None


def test_unit_ranges_are_contiguous_and_bounded() -> None:
    assert unit_ranges([5, 1, 2, 3, 9, 10], 2) == ((1, 3), (3, 4), (5, 6), (9, 11))


def test_messages_are_validated_strictly() -> None:
    msg = parse_chunk({"v": 1, "p": "etl", "b": 7, "u": [0, 4]})
    assert (msg.pipeline, msg.barrier, msg.start, msg.end) == ("etl", 7, 0, 4)
    assert parse_chunk(msg.to_json()) == msg
    assert parse_read(msg.read_json()).barrier == 7
    for bad in ({"v": 1, "p": "etl", "b": 7, "u": [4, 4]}, {"v": 2, "p": "e", "b": 1, "u": [0, 1]},
                {"v": 1, "p": "../x", "b": 1, "u": [0, 1]}, {"v": 1, "p": "e", "b": True,
                                                              "u": [0, 1]}, ["not", "a", "dict"]):
        with pytest.raises(ScatterMessageError):
            parse_chunk(bad)


def test_registered_as_the_celery_scatter_coordinator() -> None:
    created = PluginRegistry().create("flowstone.scatter_coordinators", "celery")
    assert isinstance(created, CeleryScatterCoordinator)
    assert created.chunk_units(fs.Scatter(items=lambda: [], max_concurrent=1000)) == 100
    assert created.chunk_units(fs.Scatter(items=lambda: [], max_concurrent=8)) == 2


def test_without_the_celery_executor_the_error_says_how_to_fix() -> None:
    class Plain:
        pass

    class Runtime:
        executor = Plain()

    class Runner:  # what the engine hands over: a runner whose runtime has the executor
        runtime = Runtime()

    with pytest.raises(UsageError, match="needs the Celery executor"):
        CeleryScatterCoordinator().send(Runner(), "t", [{"v": 1}])  # type: ignore[arg-type]
