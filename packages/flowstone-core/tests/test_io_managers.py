"""The in-process IO managers: the shared contract plus what is specific to each."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from flowstone.defaults.filesystem_io import FilesystemIOManager
from flowstone.defaults.memory_io import MemoryIOManager
from flowstone.errors import EncodingError, StorageError, UnsafeKeyError, ValueNotFoundError
from flowstone.protocols import StorageKey
from flowstone.testing.io_contract import IOManagerContract


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


class Point:
    """A plain class the JSON codec cannot encode, but pickle can."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.x == self.x

    __hash__ = None  # type: ignore[assignment]


class TestMemoryIOManager(IOManagerContract):
    def make_io_manager(self, tmp_path: Path) -> MemoryIOManager:
        return MemoryIOManager()


class TestFilesystemIOManager(IOManagerContract):
    def make_io_manager(self, tmp_path: Path) -> FilesystemIOManager:
        return FilesystemIOManager(tmp_path / "storage")


class TestContractFixtureOverride(IOManagerContract):
    """The documented alternative: define the ``io_manager`` fixture directly."""

    @pytest.fixture
    def io_manager(self, tmp_path: Path) -> FilesystemIOManager:
        return FilesystemIOManager(tmp_path, name="fixture-built")


# --- seed defects ----------------------------------------------------------------------


@pytest.mark.parametrize("make", [MemoryIOManager, FilesystemIOManager], ids=["memory", "fs"])
def test_seed_unencodable_value_rejected_clearly(
    make: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed: an asset returning ``{callback: fn}`` crashed deep in the JSON encoder."""
    monkeypatch.chdir(tmp_path)
    io = make()
    value = {"rows": [{"id": 1}, {"id": 2, "callback": lambda row: row}]}
    with pytest.raises(EncodingError) as caught:
        io.store(StorageKey("shop", "enriched_orders", "", "r1"), value)
    message = str(caught.value)
    assert "'enriched_orders'" in message  # the asset
    assert "function" in message  # the offending type
    assert "value['rows'][1]['callback']" in message  # where it is
    assert "allow_pickle=True" in message and "JSON-able" in message  # how to fix it
    assert isinstance(caught.value, TypeError)  # also catchable as the stdlib error
    assert not (tmp_path / ".flowstone").exists()  # filesystem: not even the root


def test_seed_storage_keys_cannot_escape_prefix(tmp_path: Path) -> None:
    """Seed: storage paths built from names/partitions must stay inside their prefix."""
    root = tmp_path / "root"
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    io = FilesystemIOManager(root)
    hostile = ["../../etc", "/abs", "a/../../b", "..", "x\x00y", "C:\\x", "..\\..\\y", "CON"]
    for name in hostile:
        location = io.store(StorageKey(name, name, name, name), {"name": name})
        assert io.load(location) == {"name": name}
        assert (root / location).resolve().is_relative_to(root.resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == [*outside_before, "root"]
    assert all(p.resolve().is_relative_to(root.resolve()) for p in files_under(tmp_path))
    # Locations handed back (e.g. read from a database) are validated too.
    (tmp_path / "secret.json").write_text('"secret"')
    for tampered in [
        "../secret.json",
        str(tmp_path / "secret.json"),
        "a/b/c/../../../../secret.json",
        "p/a/@/r.json/../../../../../secret.json",
        "p/a/@/r.txt",
        "p\\a\\@\\r.json",
        "",
    ]:
        with pytest.raises(UnsafeKeyError):
            io.load(tampered)
        with pytest.raises(UnsafeKeyError):
            io.exists(tampered)
        with pytest.raises(UnsafeKeyError):
            io.delete(tampered)
    assert (tmp_path / "secret.json").exists()


# --- memory --------------------------------------------------------------------------------


def test_memory_stored_values_cannot_be_mutated_by_callers() -> None:
    io = MemoryIOManager()
    value = {"rows": [1, 2]}
    location = io.store(StorageKey("p", "a", "", "r"), value)
    value["rows"].append(3)
    loaded = io.load(location)
    assert isinstance(loaded, dict)
    assert loaded == {"rows": [1, 2]}
    loaded["rows"].append(4)
    assert io.load(location) == {"rows": [1, 2]}


def test_memory_copy_false_keeps_references_and_any_object() -> None:
    io = MemoryIOManager(copy=False)
    thing = Point(1)
    rows = [thing]
    location = io.store(StorageKey("p", "a", "", "r"), rows)
    assert io.load(location) is rows
    fn_location = io.store(StorageKey("p", "fn", "", "r"), len)
    assert io.load(fn_location) is len


def test_memory_values_are_per_instance() -> None:
    location = MemoryIOManager().store(StorageKey("p", "a", "", "r"), 1)
    with pytest.raises(ValueNotFoundError, match="memory IO manager"):
        MemoryIOManager().load(location)


@pytest.mark.parametrize("item", [-1, True])
def test_invalid_item_numbers_are_rejected(item: int, tmp_path: Path) -> None:
    for io in (MemoryIOManager(), FilesystemIOManager(tmp_path)):
        with pytest.raises(UnsafeKeyError, match="non-negative int"):
            io.store(StorageKey("p", "a", "", "r", item=item), 1)


# --- filesystem ----------------------------------------------------------------------------


def test_filesystem_layout_and_formats(tmp_path: Path) -> None:
    io = FilesystemIOManager(tmp_path)
    assert io.store(StorageKey("shop", "orders", "2024-01-01", "run1"), [1]) == (
        "shop/orders/2024-01-01/run1.json"
    )
    assert io.store(StorageKey("shop", "orders", "", "run1", item=7), b"\x00") == (
        "shop/orders/@/run1.item-7.bin"
    )
    assert (tmp_path / "shop/orders/@/run1.item-7.bin").read_bytes() == b"\x00"
    assert (tmp_path / "shop/orders/2024-01-01/run1.json").read_bytes() == b"[1]"
    # Unsafe bytes, dots and uppercase are percent-encoded; Windows device names escaped.
    assert io.store(StorageKey("Shop", "a.b", "eu/west", "con"), 1) == (
        "%53hop/a%2Eb/eu%2Fwest/%63on.json"
    )


def test_filesystem_long_names_are_hashed_and_kept_apart(tmp_path: Path) -> None:
    io = FilesystemIOManager(tmp_path)
    first = io.store(StorageKey("p", "a", "x" * 300 + "1", "r"), 1)
    second = io.store(StorageKey("p", "a", "x" * 300 + "2", "r"), 2)
    assert first != second
    assert all(len(part) <= 120 for part in first.split("/"))
    assert (io.load(first), io.load(second)) == (1, 2)


def test_filesystem_root_is_created_lazily(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "root"
    io = FilesystemIOManager(root)
    assert not root.exists()
    assert io.root == root
    io.store(StorageKey("p", "a", "", "r"), 1)
    assert root.is_dir()


def test_filesystem_default_root_is_relative_to_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    io = FilesystemIOManager()
    io.store(StorageKey("p", "a", "", "r"), 1)
    assert (tmp_path / ".flowstone/storage/p/a/@/r.json").is_file()


def test_filesystem_pickle_is_opt_in(tmp_path: Path) -> None:
    key = StorageKey("p", "points", "", "r")
    with pytest.raises(EncodingError, match="allow_pickle=True"):
        FilesystemIOManager(tmp_path).store(key, [Point(1)])

    trusting = FilesystemIOManager(tmp_path, allow_pickle=True)
    location = trusting.store(key, [Point(1)])
    assert location.endswith(".pickle")
    assert trusting.load(location) == [Point(1)]
    # JSON-able values still go to JSON even when pickle is allowed.
    assert trusting.store(StorageKey("p", "n", "", "r"), {"n": 1}).endswith(".json")

    with pytest.raises(StorageError, match="allow_pickle=True") as caught:
        FilesystemIOManager(tmp_path).load(location)
    assert "arbitrary code" in str(caught.value)


def test_filesystem_pickle_failure_still_names_the_asset(tmp_path: Path) -> None:
    io = FilesystemIOManager(tmp_path, allow_pickle=True)
    with pytest.raises(EncodingError, match=r"'gen'.*generator.*pickle") as caught:
        io.store(StorageKey("p", "gen", "", "r"), (i for i in range(2)))
    assert "Pickle was allowed but failed" in str(caught.value)
    assert files_under(tmp_path) == []


def test_filesystem_restore_in_another_format_replaces_the_old_file(tmp_path: Path) -> None:
    io = FilesystemIOManager(tmp_path, allow_pickle=True)
    key = StorageKey("p", "a", "", "r")
    old = io.store(key, {"n": 1})
    new = io.store(key, b"raw")
    assert new != old
    assert not io.exists(old)
    assert [p.name for p in files_under(tmp_path)] == ["r.bin"]


def test_filesystem_another_attempt_in_another_format_leaves_the_committed_file(
    tmp_path: Path,
) -> None:
    """Issue 11: a losing attempt that returned another format deleted the committed
    attempt's file. Attempts write their own stems, so only a re-store of the very same
    key (same run, same attempt) replaces a file."""
    io = FilesystemIOManager(tmp_path, allow_pickle=True)
    committed = io.store(StorageKey("p", "a", "", "r", attempt=1), {"n": 1})
    loser = io.store(StorageKey("p", "a", "", "r", attempt=2), b"raw")
    assert committed != loser and io.exists(committed) and io.load(committed) == {"n": 1}


def test_filesystem_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = FilesystemIOManager(tmp_path)
    key = StorageKey("p", "a", "", "r")
    location = io.store(key, {"version": 1})

    def failing_replace(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageError, match="disk on fire"):
        io.store(key, {"version": 2})
    with pytest.raises(StorageError):
        io.store(StorageKey("p", "new", "", "r"), {"version": 1})
    monkeypatch.undo()
    assert io.load(location) == {"version": 1}  # the old value is intact
    assert [p.name for p in files_under(tmp_path)] == ["r.json"]  # no temp file left


def test_filesystem_corrupt_file_is_a_storage_error(tmp_path: Path) -> None:
    io = FilesystemIOManager(tmp_path)
    location = io.store(StorageKey("p", "a", "", "r"), {"n": 1})
    (tmp_path / location).write_bytes(b'{"n": 1')
    with pytest.raises(StorageError, match="not valid FlowStone JSON"):
        io.load(location)


def test_filesystem_symlink_out_of_root_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "p").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "p" / "a").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    io = FilesystemIOManager(root)
    with pytest.raises(UnsafeKeyError, match="outside the IO manager root"):
        io.store(StorageKey("p", "a", "", "r"), 1)
    assert list((tmp_path / "elsewhere").iterdir()) == []
    with pytest.raises(UnsafeKeyError):
        io.load("p/a/@/r.json")


def test_filesystem_missing_value_names_location(tmp_path: Path) -> None:
    io = FilesystemIOManager(tmp_path)
    with pytest.raises(ValueNotFoundError, match=r"p/a/@/r\.json"):
        io.load("p/a/@/r.json")
    assert not io.exists("p/a/@/r.json")


def test_pickle_values_written_by_pickle_module_load_only_with_opt_in(tmp_path: Path) -> None:
    target = tmp_path / "p/a/@/r.pickle"
    target.parent.mkdir(parents=True)
    target.write_bytes(pickle.dumps({"n": 1}))
    assert FilesystemIOManager(tmp_path, allow_pickle=True).load("p/a/@/r.pickle") == {"n": 1}
    with pytest.raises(StorageError, match="does not allow pickle"):
        FilesystemIOManager(tmp_path).load("p/a/@/r.pickle")
