"""The SQLite IO manager: the IO manager contract plus its own guarantees."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from flowstone.defaults.sqlite_io import SQLiteIOManager
from flowstone.defaults.sqlite_store import SQLiteRunStore
from flowstone.errors import StorageError, UnsafeKeyError
from flowstone.protocols import Finish, StorageKey
from flowstone.records import Fence, StagedValue, StepOutcome, StepSpec
from flowstone.testing._store_helpers import DAY, _create, _mat
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


# --- staged values: written by the SQLite run store, just before their records ------------
def _staged_finish(tmp_path: Path) -> tuple[Any, Any, Any, SQLiteIOManager, StagedValue]:
    """A SQLite store with one claimed step and a value staged for it."""
    store = SQLiteRunStore(tmp_path / "fs.db")
    io = store.default_io_manager()
    run, _ = _create(store, [StepSpec("orders", DAY)])
    step = store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60)
    assert step is not None
    key = StorageKey(run.pipeline, "orders", DAY, run.run_id, attempt=step.attempt)
    staged = io.stage(key, {"rows": [1, 2, 3]})
    return store, run, step, io, staged


def test_a_staged_value_is_written_by_the_store_with_its_step(tmp_path: Path) -> None:
    store, run, step, io, staged = _staged_finish(tmp_path)
    assert store.accepts_staging(io.staging_target)
    assert not io.exists(staged.location)  # staging writes nothing
    mat = replace(_mat(run, "orders"), io_manager="sqlite", location=staged.location)
    done = store.finish_step(run.run_id, "orders", DAY,
                             StepOutcome("succeeded", mat, staged=(staged,)),
                             fence=Fence("w1", step.attempt))  # fmt: skip
    assert done.applied
    assert SQLiteIOManager(io._path).load(staged.location) == {"rows": [1, 2, 3]}
    assert io.decode_prefetched(staged.location, staged.encoded) == {"rows": [1, 2, 3]}


def test_a_staged_value_that_cannot_be_written_leaves_its_step_unrecorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Value first, record second: a values file that fails the write means no record."""
    store, run, step, _io, staged = _staged_finish(tmp_path)

    def full(self: SQLiteIOManager, values: Any) -> None:
        raise StorageError("database or disk is full")

    monkeypatch.setattr(SQLiteIOManager, "write_staged", full)
    mat = replace(_mat(run, "orders"), io_manager="sqlite", location=staged.location)
    with pytest.raises(StorageError, match="disk is full"):
        store.finish_steps([Finish(run.run_id, "orders", DAY,
                                   StepOutcome("succeeded", mat, staged=(staged,)),
                                   fence=Fence("w1", step.attempt))], sources={})  # fmt: skip
    got = store.get_step(run.run_id, "orders", DAY)
    assert got is not None and got.state == "running" and got.materialization_id is None
    assert store.list_materializations(run.pipeline, run_id=run.run_id, limit=5) == []


def test_the_store_refuses_values_another_manager_staged(tmp_path: Path) -> None:
    store, run, step, _io, staged = _staged_finish(tmp_path)
    foreign = replace(staged, target="postgres:db1", payload=b"INSERT ...")
    mat = replace(_mat(run, "orders"), io_manager="sqlite", location=staged.location)
    assert not store.accepts_staging("postgres:db1")
    with pytest.raises(StorageError, match="not staged by a SQLiteIOManager"):
        store.finish_step(run.run_id, "orders", DAY,
                          StepOutcome("succeeded", mat, staged=(foreign,)),
                          fence=Fence("w1", step.attempt))  # fmt: skip


def test_a_pipeline_on_the_sqlite_defaults_stages_its_values(tmp_path: Path) -> None:
    """The embedded default: values staged, written with their steps, read back."""
    import flowstone as fs

    @fs.asset
    def orders() -> list[int]:
        return [3, 4]

    @fs.asset
    def total(orders: list[int]) -> int:
        return sum(orders)

    p = fs.Pipeline("shop", [orders, total], store=f"sqlite:///{tmp_path}/fs.db")
    try:
        assert "default" in p.runtime.capabilities.staging
        result = p.run()
        assert result.status == "succeeded" and p.get("total") == 7 and p.get("orders") == [3, 4]
    finally:
        p.close()
