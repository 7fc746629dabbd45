"""The run store contract for the in-process stores, plus SQLite-specific behaviour."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import flowstone as fs
from flowstone.defaults.memory_io import MemoryIOManager
from flowstone.defaults.memory_store import MemoryRunStore
from flowstone.defaults.sqlite_schema import MIGRATIONS, migrate
from flowstone.defaults.sqlite_store import SQLiteRunStore
from flowstone.errors import DefinitionError, StorageError, UsageError
from flowstone.protocols import RunStore, StorageKey
from flowstone.records import Continuation, RunRecord, StepOutcome, StepSpec
from flowstone.testing.store_contract import RunStoreContract


class TestMemoryRunStore(RunStoreContract):
    supports_get_runs = True
    supports_continuation_reads = True

    def make_store(self, tmp_path: Path) -> RunStore:
        return MemoryRunStore()


class TestSQLiteRunStore(RunStoreContract):
    supports_get_runs = True
    supports_continuation_reads = False  # the engine reads a continuation's inputs itself
    supports_batch_finish = True
    supports_bulk_claim = True

    def make_store(self, tmp_path: Path) -> RunStore:
        return SQLiteRunStore(tmp_path / "state" / "flowstone.db")


def _run(run_id: str) -> RunRecord:
    now = datetime.now(UTC)
    return RunRecord(run_id, "sales", ("orders",), "", "running", now, now)


def test_stores_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(MemoryRunStore(), RunStore)
    assert isinstance(SQLiteRunStore(tmp_path / "f.db"), RunStore)
    assert (MemoryRunStore.name, SQLiteRunStore.name) == ("memory", "sqlite")


def test_construction_has_no_side_effects(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "flowstone.db"
    store = SQLiteRunStore(path)
    assert not path.parent.exists()
    store.ping()
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_from_url(tmp_path: Path) -> None:
    absolute = SQLiteRunStore.from_url(f"sqlite:///{tmp_path}/a.db")
    assert absolute.path == f"{tmp_path}/a.db"
    assert SQLiteRunStore.from_url("sqlite:///.flowstone/x.db").path == ".flowstone/x.db"
    memory = SQLiteRunStore.from_url("sqlite:///:memory:")
    memory.create_run(_run("r1"), [StepSpec("orders", "")])
    assert memory.get_run("r1") is not None
    for bad in ("postgresql://db/x", "sqlite://", "sqlite:///"):
        with pytest.raises(UsageError, match="sqlite:///"):
            SQLiteRunStore.from_url(bad)


def test_two_instances_on_one_file_share_state(tmp_path: Path) -> None:
    daemon, cli = SQLiteRunStore(tmp_path / "f.db"), SQLiteRunStore(tmp_path / "f.db")
    daemon.create_run(_run("r1"), [StepSpec("orders", "")])
    assert cli.claim_step("r1", "orders", "", owner="cli", lease_seconds=60) is not None
    assert daemon.claim_step("r1", "orders", "", owner="daemon", lease_seconds=60) is None
    done = daemon.finish_step("r1", "orders", "", StepOutcome("succeeded"))
    assert done.run_status == "succeeded"
    saved = cli.get_run("r1")
    assert saved is not None and saved.status == "succeeded"
    assert daemon.claim_tick("hourly", "2024-03-01T10:00")
    assert not cli.claim_tick("hourly", "2024-03-01T10:00")


def _claim_ticks(path: str, ticks: int, results: multiprocessing.Queue[int]) -> None:
    store = SQLiteRunStore(path, busy_timeout=60)
    results.put(sum(store.claim_tick("hourly", f"t{i}") for i in range(ticks)))
    store.close()


def test_processes_claim_each_tick_exactly_once(tmp_path: Path) -> None:
    path, ticks = str(tmp_path / "f.db"), 50
    SQLiteRunStore(path).ping()  # the parent's open connection must not leak into children
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=_claim_ticks, args=(path, ticks, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sum(results.get(timeout=5) for _ in procs) == ticks


def test_old_schema_version_upgrades_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    SQLiteRunStore(path).create_run(_run("r1"), [StepSpec("orders", "")])
    # pretend a later FlowStone adds a column: the file at the current version upgrades
    upgrade = (*MIGRATIONS, ("ALTER TABLE runs ADD COLUMN owner_team TEXT",))
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, upgrade) == len(MIGRATIONS) + 1
    assert conn.execute("SELECT run_id, owner_team FROM runs").fetchall() == [("r1", None)]
    conn.close()
    # and a FlowStone that does not know that version refuses the file instead of guessing
    with pytest.raises(StorageError, match="upgrade flowstone-core"):
        SQLiteRunStore(path).ping()


def test_empty_file_gets_the_full_schema(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    sqlite3.connect(path).close()
    store = SQLiteRunStore(path)
    store.create_run(_run("r1"), [StepSpec("orders", "")])
    assert [s.state for s in store.list_steps("r1")] == ["ready"]


def test_close_then_reuse_reopens(tmp_path: Path) -> None:
    store = SQLiteRunStore(tmp_path / "f.db")
    store.create_run(_run("r1"), [StepSpec("orders", "")])
    store.close()
    assert store.get_run("r1") is not None


def test_schema_v2_moves_parallel_cursors_to_step_notes(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, MIGRATIONS[:1]) == 1  # a file written before step notes existed
    conn.executemany(
        "INSERT INTO cursors VALUES (?, ?, 0)",
        [
            ("parallel-start:run-1:enrich", "2024-03-01T10:00:00+00:00"),
            ("flowstone.parallel.join:run-1:briefing:2024-03-01:eu", '{"v": 1}'),
            ("sensor:news:inbox", "offset=7"),
        ],
    )
    conn.close()
    store = SQLiteRunStore(path)
    assert store.get_step_note("run-1", "enrich", "", "parallel.started") == (
        "2024-03-01T10:00:00+00:00"
    )
    assert store.get_step_note("run-1", "briefing", "2024-03-01:eu", "flowstone.parallel.join") == (
        '{"v": 1}'
    )
    assert store.get_cursor("sensor:news:inbox") == "offset=7"
    assert store.get_cursor("parallel-start:run-1:enrich") is None
    store.close()


def test_schema_v4_upgrades_a_v3_file_with_a_ready_backlog(tmp_path: Path) -> None:
    """A file written before re-sends were recorded (v3) upgrades in place: its ready steps
    count as never re-sent, are re-sent once, then back off."""
    path = tmp_path / "f.db"
    old = SQLiteRunStore(path)
    old.create_run(_run("r-v3"), [StepSpec("orders", "")])
    old.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("ALTER TABLE steps DROP COLUMN resends")  # back to the v3 table
    conn.execute("ALTER TABLE steps DROP COLUMN resent_at")
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    store = SQLiteRunStore(path)
    later = datetime.now(UTC) + timedelta(minutes=5)
    store.clock = lambda: later
    assert [s.asset for s in store.resend_steps(ready_for_seconds=60)] == ["orders"]
    assert store.resend_steps(ready_for_seconds=60) == []  # backing off
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 4
        assert check.execute("SELECT resends FROM steps").fetchone()[0] == 1
    store.close()


def test_default_io_manager_keeps_values_beside_the_file(tmp_path: Path) -> None:
    store = SQLiteRunStore(tmp_path / "state" / "runs.db")
    manager = store.default_io_manager()
    manager.store(StorageKey("sales", "orders", "", "r1"), [1, 2])
    assert (tmp_path / "state" / "runs.values.db").exists()
    assert isinstance(MemoryRunStore().default_io_manager(), MemoryIOManager)


def test_a_store_missing_a_role_is_refused_naming_what_is_missing() -> None:
    class WithoutNotes(MemoryRunStore):
        add_step_note = None  # type: ignore[assignment]  # a store from before StepNotes

    with pytest.raises(DefinitionError, match="missing methods add_step_note") as info:
        fs.Pipeline("sales", [], store=WithoutNotes())
    assert "flowstone.protocols.RunStore" in str(info.value)


def _chain_run(store: RunStore) -> RunRecord:
    """extract -> load, one run of it created in ``store``."""
    now = datetime.now(UTC)
    run = RunRecord("r-chain", "sales", ("load",), "", "running", now, now)
    store.create_run(run, [StepSpec("extract", ""), StepSpec("load", "", deps=(("extract", ""),))])
    return run


def _record(run: RunRecord, asset: str, mat_id: str) -> fs.MaterializationRecord:
    now = datetime.now(UTC)
    return fs.MaterializationRecord(
        mat_id, run.pipeline, run.run_id, asset, "", "succeeded", "fs", f"/{asset}", 1, now, now
    )


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_continuation_reports_its_claim_like_claim_step(kind: str, tmp_path: Path) -> None:
    """The step a finish claims for its caller became ready in that finish and is taken
    over from no one: ``queued_s`` (about 0) and ``took_over`` False are reported, as
    claim_step reports them."""
    store: RunStore = MemoryRunStore() if kind == "memory" else SQLiteRunStore(tmp_path / "s.db")
    run = _chain_run(store)
    assert store.claim_step(run.run_id, "extract", "", owner="w1", lease_seconds=60)
    done = store.finish_step(
        run.run_id, "extract", "", StepOutcome("succeeded", _record(run, "extract", "m1")),
        then=Continuation("w1", 60),
    )  # fmt: skip
    claimed = done.claimed
    assert claimed is not None and (claimed.asset, claimed.state, claimed.attempt) == (
        "load", "running", 1)  # fmt: skip
    assert claimed.queued_s is not None and claimed.queued_s >= 0 and not claimed.took_over
    assert store.get_step(run.run_id, "load", "") == replace(claimed, queued_s=None)


def test_sqlite_refuses_a_materialization_id_another_step_recorded(tmp_path: Path) -> None:
    store = SQLiteRunStore(tmp_path / "s.db")
    run = _chain_run(store)
    store.claim_step(run.run_id, "extract", "", owner="w1", lease_seconds=60)
    store.finish_step(
        run.run_id, "extract", "", StepOutcome("succeeded", _record(run, "extract", "m1"))
    )
    store.claim_step(run.run_id, "load", "", owner="w1", lease_seconds=60)
    with pytest.raises(StorageError, match="'m1' is already used by run 'r-chain' asset 'extract'"):
        store.finish_step(
            run.run_id, "load", "", StepOutcome("succeeded", _record(run, "load", "m1"))
        )
    step = store.get_step(run.run_id, "load", "")
    assert step is not None and step.state == "running"  # nothing of the finish was written
    # the failed transaction let go of the store: the next write goes through
    done = store.finish_step(
        run.run_id, "load", "", StepOutcome("succeeded", _record(run, "load", "m2"))
    )
    assert done.applied and done.run_status == "succeeded"


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "flowstone-checkpoint"]


def test_the_background_checkpoints_end_with_the_store(tmp_path: Path) -> None:
    """Busy stores copy their write-ahead log into the file from a thread of their own;
    closing the store ends it, and nothing written is lost."""
    before = len(_checkpoint_threads())  # (other tests' stores may still be open)
    store = SQLiteRunStore(tmp_path / "s.db")
    for i in range(200):
        assert store.set_cursor("offset", str(i), expected=None if i == 0 else str(i - 1))
    assert len(_checkpoint_threads()) == before + 1
    store.close()
    assert len(_checkpoint_threads()) == before
    reopened = SQLiteRunStore(tmp_path / "s.db")
    assert reopened.get_cursor("offset") == "199"
    reopened.close()
    memory = SQLiteRunStore(":memory:")  # no file, no log: nothing to copy
    for i in range(200):
        memory.set_cursor("offset", str(i))
    assert len(_checkpoint_threads()) == before
    memory.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_fenced_out_finish_writes_nothing_even_with_a_clashing_record(
    kind: str, tmp_path: Path
) -> None:
    """A runner whose claim was taken over cannot commit, whatever it carries: its finish
    is refused (not an error), and no record, lineage or audit entry of it is written."""
    from flowstone.records import Fence

    store: RunStore = MemoryRunStore() if kind == "memory" else SQLiteRunStore(tmp_path / "s.db")
    run = _chain_run(store)
    store.claim_step(run.run_id, "extract", "", owner="w1", lease_seconds=60)
    store.finish_step(
        run.run_id, "extract", "", StepOutcome("succeeded", _record(run, "extract", "m1"))
    )
    first = store.claim_step(run.run_id, "load", "", owner="w1", lease_seconds=60)
    assert first is not None
    store.retry_step(run.run_id, "load", "", delay_seconds=0, error="lost", fence=None)
    second = store.claim_step(run.run_id, "load", "", owner="w2", lease_seconds=60)
    assert second is not None and second.attempt == first.attempt + 1
    audit = len(store.list_audit(run.run_id))
    for mat_id in ("m1", "m-stale"):  # an id another record has, and a fresh one
        stale = store.finish_step(
            run.run_id, "load", "", StepOutcome("succeeded", _record(run, "load", mat_id)),
            fence=Fence("w1", first.attempt),
        )  # fmt: skip
        assert not stale.applied
    assert store.get_materialization("m-stale") is None
    assert len(store.list_audit(run.run_id)) == audit
    done = store.finish_step(
        run.run_id, "load", "", StepOutcome("succeeded", _record(run, "load", "m2")),
        fence=Fence("w2", second.attempt),
    )  # fmt: skip
    assert done.applied and done.run_status == "succeeded"
    assert store.list_audit(run.run_id)[-2].detail["attempt"] == second.attempt
