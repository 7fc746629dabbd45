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
