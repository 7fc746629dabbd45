"""The SQLite IO manager: the IO manager contract plus its own guarantees."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowstone.defaults.sqlite_io import SQLiteIOManager
from flowstone.errors import StorageError, UnsafeKeyError
from flowstone.protocols import StorageKey
from flowstone.testing.io_contract import IOManagerContract


class TestSQLiteIOManagerContract(IOManagerContract):
    supports_batch_loading = True

    def make_io_manager(self, tmp_path: Path) -> SQLiteIOManager:
        return SQLiteIOManager(tmp_path / "values.db")


def test_values_survive_a_new_instance(tmp_path: Path) -> None:
    key = StorageKey("shop", "orders", "2024-01-05", "run-1")
    location = SQLiteIOManager(tmp_path / "v.db").store(key, {"n": 1, "t": (1, 2)})
    assert SQLiteIOManager(tmp_path / "v.db").load(location) == {"n": 1, "t": (1, 2)}


def test_foreign_locations_are_rejected(tmp_path: Path) -> None:
    io = SQLiteIOManager(tmp_path / "v.db")
    with pytest.raises(UnsafeKeyError):
        io.load("/etc/passwd")
    with pytest.raises(UnsafeKeyError):
        io.exists("memory:shop/orders")


class Row:
    def __init__(self, n: int) -> None:
        self.n = n


def test_pickle_needs_opt_in_on_load(tmp_path: Path) -> None:
    key = StorageKey("shop", "orders", "", "run-1")
    location = SQLiteIOManager(tmp_path / "v.db", allow_pickle=True).store(key, Row(3))
    with pytest.raises(StorageError, match="pickle"):
        SQLiteIOManager(tmp_path / "v.db").load(location)


def test_construction_has_no_side_effects(tmp_path: Path) -> None:
    SQLiteIOManager(tmp_path / "deep" / "v.db")
    assert not (tmp_path / "deep").exists()


def test_a_missing_input_is_named_even_when_read_in_a_batch(tmp_path: Path) -> None:
    """Pipeline.load_materializations reads with load_many; when one value is gone it
    reads them one by one, so the error names the record that lost its value."""
    import flowstone as fs
    from flowstone.errors import ValueNotFoundError

    @fs.asset
    def left() -> int:
        return 1

    @fs.asset
    def right() -> int:
        return 2

    io = SQLiteIOManager(tmp_path / "values.db")
    p = fs.Pipeline("batch", [left, right], store="memory://", io_managers={"default": io})
    result = p.run()
    mats = sorted(result.materializations, key=lambda m: m.asset)
    assert p.load_materializations(mats) == [1, 2]
    assert mats[1].location is not None
    io.delete(mats[1].location)
    with pytest.raises(ValueNotFoundError, match="cannot load 'right'"):
        p.load_materializations(mats)
    p.close()


def test_readers_of_a_value_just_written_each_get_their_own_copy(tmp_path: Path) -> None:
    """The manager reads the values it wrote last from memory; each load decodes its own
    copy, so a reader that changes its input cannot change what the next one reads."""
    io = SQLiteIOManager(tmp_path / "v.db")
    location = io.store(StorageKey("shop", "orders", "", "run-1"), {"rows": [1, 2]})
    first = io.load(location)
    assert isinstance(first, dict)
    first["rows"].append(3)
    [second, third] = io.load_many([location, location])
    assert second == third == {"rows": [1, 2]} and second is not third
    assert SQLiteIOManager(tmp_path / "v.db").load(location) == {"rows": [1, 2]}


def test_a_deleted_value_is_gone_for_the_manager_that_wrote_it(tmp_path: Path) -> None:
    from flowstone.errors import ValueNotFoundError

    io = SQLiteIOManager(tmp_path / "v.db")
    location = io.store(StorageKey("shop", "orders", "", "run-1"), [1])
    io.delete(location)
    assert not io.exists(location)
    with pytest.raises(ValueNotFoundError):
        io.load(location)
    with pytest.raises(ValueNotFoundError):
        io.load_many([location])


def test_large_and_small_values_load_together(tmp_path: Path) -> None:
    io = SQLiteIOManager(tmp_path / "v.db")
    big = "x" * 200_000  # kept only in the table
    locations = [
        io.store(StorageKey("shop", name, "", "run-1"), value)
        for name, value in (("big", big), ("small", 7))
    ]
    assert io.load_many(locations) == [big, 7]
    assert io.load(locations[0]) == big


def test_locations_quote_exactly_the_parts_that_need_it(tmp_path: Path) -> None:
    from urllib.parse import quote

    io = SQLiteIOManager(tmp_path / "v.db")
    key = StorageKey("shop", "orders", "region=eu/west ü", "run-1", attempt=2)
    location = io.store(key, 1)
    part = quote("region=eu/west ü", safe="")
    assert location == f"sqlite:shop/orders/{part}/run-1/a2"
    assert io.store(StorageKey("shop", "orders", "2024-01-05", "r_1.x~y-z"), 2) == (
        "sqlite:shop/orders/2024-01-05/r_1.x~y-z"
    )
    assert SQLiteIOManager(tmp_path / "v.db").load(location) == 1


def test_the_background_checkpoints_end_with_the_manager(tmp_path: Path) -> None:
    import threading

    def checkpointers() -> int:
        return sum(t.name == "flowstone-checkpoint" for t in threading.enumerate())

    before = checkpointers()  # (other tests' stores may still be open)
    io = SQLiteIOManager(tmp_path / "v.db")
    locations = [io.store(StorageKey("shop", "orders", "", f"run-{i}"), i) for i in range(100)]
    assert checkpointers() == before + 1
    io.close()
    assert checkpointers() == before
    assert SQLiteIOManager(tmp_path / "v.db").load_many(locations) == list(range(100))
