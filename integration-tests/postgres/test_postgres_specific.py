"""Postgres-specific behaviour: migrations, the db CLI, multi-process scheduling, safety."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from flowstone.errors import StorageError, UsageError
from flowstone.records import (
    Continuation,
    MaterializationRecord,
    RunRecord,
    StepOutcome,
    StepSpec,
)
from flowstone_io_postgres import PostgresRunStore
from flowstone_io_postgres.cli import register
from flowstone_io_postgres.migrate import HEAD_REVISION

pytestmark = pytest.mark.integration
DAY = "2024-03-01"


def _dsn(url: str) -> str:
    return make_url(url).render_as_string(hide_password=False)


def _fetch(url: str, sql: str) -> list[Any]:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(_dsn(url))
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture
def fresh_db(postgres_url: str) -> Iterator[str]:
    """A brand-new empty database (for migration tests)."""
    name = f"flowstone_mig_{uuid.uuid4().hex[:10]}"
    _fetch(postgres_url, f'CREATE DATABASE "{name}"')
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    _fetch(postgres_url, f'DROP DATABASE "{name}" WITH (FORCE)')


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="flowstone")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


def _run(store: PostgresRunStore, steps: list[StepSpec]) -> RunRecord:
    now = datetime.now(UTC)
    run = RunRecord(f"run-{uuid.uuid4().hex[:10]}", "sales", ("report",), DAY, "running", now, now)
    store.create_run(run, steps)
    return run


def _outcome(run: RunRecord, asset: str) -> StepOutcome:
    mat = MaterializationRecord(
        f"mat-{uuid.uuid4().hex}", run.pipeline, run.run_id, asset, DAY, "succeeded"
    )
    return StepOutcome("succeeded", mat)


DIAMOND = [
    StepSpec("orders", DAY),
    StepSpec("clean", DAY, deps=(("orders", DAY),)),
    StepSpec("enrich", DAY, deps=(("orders", DAY),)),
    StepSpec("report", DAY, deps=(("clean", DAY), ("enrich", DAY))),
]


# --- migrations and the CLI -------------------------------------------------------------
def test_store_without_schema_says_what_to_run(fresh_db: str) -> None:
    store = PostgresRunStore(fresh_db)
    try:
        with pytest.raises(StorageError, match="flowstone db upgrade"):
            store.ping()
    finally:
        store.close()


def test_cli_upgrade_from_empty_is_idempotent(
    fresh_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli("db", "current", "--database-url", fresh_db) == 0
    assert "revision none" in capsys.readouterr().out
    assert _cli("db", "upgrade", "--database-url", fresh_db) == 0
    assert _cli("db", "upgrade", "--database-url", fresh_db) == 0  # re-run: nothing to do
    assert _cli("db", "current", "--database-url", fresh_db) == 0
    assert f"revision {HEAD_REVISION} (head)" in capsys.readouterr().out
    version = _fetch(fresh_db, "SELECT version_num FROM flowstone.flowstone_postgres_version")
    assert version == [(HEAD_REVISION,)]
    store = PostgresRunStore(fresh_db)
    try:
        store.ping()
    finally:
        store.close()


def test_a_schema_at_0001_with_runs_upgrades_and_finishes_them(fresh_db: str) -> None:
    import asyncio as aio

    from flowstone_io_postgres import migrate
    from flowstone_io_postgres.urls import normalize_url

    aio.run(migrate.upgrade(normalize_url(fresh_db), "flowstone", "0001"))
    old = PostgresRunStore(fresh_db)
    try:
        with pytest.raises(StorageError, match="flowstone db upgrade"):
            old.ping()
    finally:
        old.close()
    aio.run(migrate.upgrade(normalize_url(fresh_db), "flowstone"))
    store = PostgresRunStore(fresh_db)
    try:
        run = _run(store, DIAMOND)
        store.claim_step(run.run_id, "orders", DAY, owner="w", lease_seconds=60)
        ready = store.finish_step(run.run_id, "orders", DAY, _outcome(run, "orders")).ready
        assert [s.asset for s in ready] == ["clean", "enrich"]
    finally:
        store.close()


def test_cli_needs_a_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FLOWSTONE_DATABASE_URL", raising=False)
    assert _cli("db", "upgrade") == 2
    assert "FLOWSTONE_DATABASE_URL" in capsys.readouterr().err


def test_concurrent_auto_migrate_in_a_custom_schema(fresh_db: str) -> None:
    stores = [PostgresRunStore(fresh_db, schema="tenant_a", auto_migrate=True) for _ in range(4)]
    errors: list[BaseException] = []

    def start(store: PostgresRunStore) -> None:
        try:
            store.ping()
        except BaseException as exc:
            errors.append(exc)

    import threading

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert errors == []
    tables = _fetch(fresh_db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'tenant_a'")
    assert tables[0][0] >= 13


@pytest.mark.parametrize(
    "schema", ['flowstone"; DROP SCHEMA public CASCADE; --', "a b", "x.y", "", "é"]
)
def test_schema_names_are_validated(schema: str, postgres_url: str) -> None:
    with pytest.raises(UsageError):
        PostgresRunStore(postgres_url, schema=schema)


def test_values_with_sql_are_just_data(shared_store: PostgresRunStore) -> None:
    hostile = "x'); DROP TABLE flowstone.runs; --"
    run = _run(shared_store, [StepSpec(hostile, hostile)])
    assert shared_store.get_step(run.run_id, hostile, hostile) is not None
    assert shared_store.get_run(run.run_id) is not None


def test_passwords_never_appear_in_errors() -> None:
    store = PostgresRunStore("postgresql://flowstone:s3cret-pw@127.0.0.1:1/nowhere")
    try:
        with pytest.raises(StorageError) as caught:
            store.ping()
        assert "s3cret-pw" not in str(caught.value)
        assert "***" in str(caught.value)
    finally:
        store.close()


# --- concurrency: threads and processes ------------------------------------------------
def _finish_in_child(store: PostgresRunStore, run: RunRecord, asset: str, barrier: Any,
                     results: Any) -> None:  # fmt: skip
    # Runs in a forked child that inherited the parent's store (and its loop and pool):
    # the store must notice the new pid and open its own connections.
    barrier.wait()
    claimed = store.claim_step(run.run_id, asset, DAY, owner=f"pid-{asset}", lease_seconds=60)
    transition = store.finish_step(run.run_id, asset, DAY, _outcome(run, asset))
    results.put((asset, claimed is not None, [s.asset for s in transition.ready],
                 transition.run_status))  # fmt: skip


def test_diamond_join_released_once_across_processes(shared_store: PostgresRunStore) -> None:
    ctx = multiprocessing.get_context("fork")
    for _ in range(5):
        run = _run(shared_store, DIAMOND)
        shared_store.claim_step(run.run_id, "orders", DAY, owner="parent", lease_seconds=60)
        shared_store.finish_step(run.run_id, "orders", DAY, _outcome(run, "orders"))
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [
            ctx.Process(target=_finish_in_child, args=(shared_store, run, a, barrier, results))
            for a in ("clean", "enrich")
        ]
        for p in procs:
            p.start()
        got = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        assert all(claimed for _, claimed, _, _ in got)
        assert sorted(a for _, _, ready, _ in got for a in ready) == ["report"]
        # the parent's store still works after its children forked
        final = shared_store.finish_step(run.run_id, "report", DAY, _outcome(run, "report"))
        assert final.run_status == "succeeded"


def test_a_continuation_comes_with_what_it_reads(shared_store: PostgresRunStore) -> None:
    """finish_step_reading (the ContinuationReads capability) returns the claimed step's
    dependencies with their records, as get_step_results reads them, including the step
    it just finished."""
    run = _run(shared_store, DIAMOND)
    for asset in ("orders", "enrich"):
        shared_store.claim_step(run.run_id, asset, DAY, owner="w", lease_seconds=60)
        shared_store.finish_step(run.run_id, asset, DAY, _outcome(run, asset))
    shared_store.claim_step(run.run_id, "clean", DAY, owner="w", lease_seconds=60)
    done, reads = shared_store.finish_step_reading(
        run.run_id, "clean", DAY, _outcome(run, "clean"), then=Continuation("w", 60), sources={}
    )
    assert done.claimed is not None and done.claimed.asset == "report"
    assert reads is not None
    got = sorted(reads.inputs, key=lambda r: r[0].asset)
    expected = sorted(
        shared_store.get_step_results(run.run_id, [("clean", DAY), ("enrich", DAY)]),
        key=lambda r: r[0].asset,
    )
    assert [(s.asset, s.state) for s, _ in got] == [("clean", "succeeded"), ("enrich", "succeeded")]
    assert [m for _, m in got] == [m for _, m in expected]
    assert all(m is not None and m.asset == s.asset for s, m in got)
    # nothing claimed (report still waits for enrich): nothing sent along
    again = _run(shared_store, DIAMOND)
    shared_store.claim_step(again.run_id, "orders", DAY, owner="w", lease_seconds=60)
    shared_store.finish_step(again.run_id, "orders", DAY, _outcome(again, "orders"))
    shared_store.claim_step(again.run_id, "clean", DAY, owner="w", lease_seconds=60)
    plain, nothing = shared_store.finish_step_reading(
        again.run_id, "clean", DAY, _outcome(again, "clean"),
        then=Continuation("w", 60), sources={},
    )
    assert plain.claimed is None and nothing is None


def test_many_threads_run_every_step_exactly_once(shared_store: PostgresRunStore) -> None:
    import queue
    import threading

    layers = [[f"l{layer}_{i}" for i in range(6)] for layer in range(4)]
    plan = [StepSpec(a, DAY) for a in layers[0]]
    for prev, layer in itertools.pairwise(layers):
        plan += [StepSpec(a, DAY, deps=tuple((p, DAY) for p in prev)) for a in layer]
    now = datetime.now(UTC)
    run = RunRecord(f"run-{uuid.uuid4().hex[:10]}", "sales", (), DAY, "running", now, now)
    todo: queue.Queue[str | None] = queue.Queue()
    for step in shared_store.create_run(run, plan):
        todo.put(step.asset)
    executed: list[str] = []
    statuses: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while (asset := todo.get()) is not None:
            if shared_store.claim_step(run.run_id, asset, DAY, owner="t", lease_seconds=60):
                result = shared_store.finish_step(run.run_id, asset, DAY, _outcome(run, asset))
                with lock:
                    executed.append(asset)
                    if result.run_status:
                        statuses.append(result.run_status)
                for step in result.ready:
                    todo.put(step.asset)
                if result.run_status == "succeeded":
                    for _ in range(8):
                        todo.put(None)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(executed) == sorted(s.asset for s in plan)
    assert statuses == ["succeeded"]


CROSSED = [  # two batches whose finishes release the same two joins in opposite orders
    *(StepSpec(a, DAY) for a in ("a1", "a2", "b1", "b2")),
    StepSpec("j1", DAY, deps=(("a2", DAY), ("b1", DAY))),
    StepSpec("j2", DAY, deps=(("a1", DAY), ("b2", DAY))),
]


def _deadlocks(url: str) -> int:
    async def read() -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"))
        finally:
            await conn.close()

    return asyncio.run(read())


def test_concurrent_batches_lock_shared_dependents_in_one_order(
    shared_store: PostgresRunStore, migrated_url: str,
) -> None:
    """finish_steps locks every pending dependent of its batch first, in (run, asset,
    partition) order: batch A finishing a1 (releases j2) then a2 (j1) and batch B finishing
    b1 (j1) then b2 (j2), at the same moment, would otherwise each hold one join and wait
    for the other's. No deadlock (PostgreSQL's own counter), each join released once."""
    import threading

    from flowstone.protocols import Finish

    before = _deadlocks(migrated_url)
    for _ in range(20):
        run = _run(shared_store, CROSSED)
        for a in ("a1", "a2", "b1", "b2"):
            shared_store.claim_step(run.run_id, a, DAY, owner="w", lease_seconds=60)
        barrier = threading.Barrier(2)
        ready: list[str] = []

        def finish(assets: tuple[str, str], run: RunRecord = run,
                   barrier: threading.Barrier = barrier) -> None:  # fmt: skip
            batch = [Finish(run.run_id, a, DAY, _outcome(run, a)) for a in assets]
            barrier.wait()
            for got in shared_store.finish_steps(batch, sources={}):
                assert not isinstance(got, Exception), got
                ready.extend(s.asset for s in got[0].ready)

        threads = [threading.Thread(target=finish, args=(pair,))
                   for pair in (("a1", "a2"), ("b1", "b2"))]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(ready) == ["j1", "j2"]
    assert _deadlocks(migrated_url) == before



def test_concurrent_batches_of_two_runs_settle_them_in_one_order(
    shared_store: PostgresRunStore, migrated_url: str,
) -> None:
    """A one-shape batch settles each run in its last call, the calls ordered by run:
    batch A given (run 2, run 1) and batch B given (run 1, run 2), at the same moment,
    would otherwise each hold one run's row and wait for the other's. No deadlock
    (PostgreSQL's own counter); each run finished once, announced by one batch."""
    import threading

    from flowstone.protocols import Finish

    before = _deadlocks(migrated_url)
    for _ in range(20):
        runs = [_run(shared_store, [StepSpec("x", DAY), StepSpec("y", DAY)]) for _ in range(2)]
        for run in runs:
            for a in ("x", "y"):
                shared_store.claim_step(run.run_id, a, DAY, owner="w", lease_seconds=60)
        barrier = threading.Barrier(2)
        finished: list[str] = []

        def finish(pairs: list[tuple[RunRecord, str]],
                   barrier: threading.Barrier = barrier) -> None:  # fmt: skip
            batch = [Finish(r.run_id, a, DAY, _outcome(r, a)) for r, a in pairs]
            barrier.wait()
            for got in shared_store.finish_steps(batch, sources={}):
                assert not isinstance(got, Exception), got
                if got[0].run_status is not None:
                    finished.append(got[0].run_status)

        orders = ([(runs[1], "x"), (runs[0], "x")], [(runs[0], "y"), (runs[1], "y")])
        threads = [threading.Thread(target=finish, args=(pairs,)) for pairs in orders]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert finished == ["succeeded", "succeeded"]
        for run in runs:
            recorded = shared_store.get_run(run.run_id)
            assert recorded is not None and recorded.status == "succeeded"
    assert _deadlocks(migrated_url) == before

def test_core_selects_this_store_by_url(migrated_url: str) -> None:
    from flowstone.registry import store_from_url

    store = store_from_url(migrated_url)
    try:
        assert isinstance(store, PostgresRunStore)
        store.ping()
    finally:
        store.close()
