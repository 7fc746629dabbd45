"""Values written in the step's own transaction, and inputs read in batches, on real Postgres.

When the run store and the IO manager use the same database, the engine stages each value
(``PostgresIOManager.stage``) and ``PostgresRunStore.finish_step`` writes it with the
step's record in one statement. These tests drive the public pipeline API and then look
at the tables and the server's own counters.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

import flowstone as fs
from flowstone.errors import StorageError
from flowstone.protocols import Finish, StorageKey
from flowstone.records import MaterializationRecord, RunRecord, StepOutcome, StepSpec
from flowstone.testing import ParkedExecutor
from flowstone_io_postgres import PostgresIOManager, PostgresRunStore
from flowstone_io_postgres._values_table import StagedWrite

pytestmark = pytest.mark.integration


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(_dsn(url))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _diamond(name: str, store: PostgresRunStore, io: PostgresIOManager) -> fs.Pipeline:
    @fs.asset
    def orders() -> list[dict[str, object]]:
        return [{"id": i, "eur": 10 * i} for i in range(1, 6)]

    @fs.asset
    def revenue(orders: list[dict[str, int]]) -> int:
        return sum(o["eur"] for o in orders)

    @fs.asset
    def count(orders: list[dict[str, int]]) -> int:
        return len(orders)

    @fs.asset
    def report(orders: list[dict[str, int]], revenue: int, count: int) -> dict[str, object]:
        return {"orders": len(orders), "revenue": revenue, "average": revenue / count}

    return fs.Pipeline(
        name, [orders, revenue, count, report], store=store, io_managers={"default": io}
    )


@pytest.fixture
def same_db(migrated_url: str) -> Iterator[tuple[PostgresRunStore, PostgresIOManager]]:
    store, io = PostgresRunStore(migrated_url), PostgresIOManager(migrated_url)
    yield store, io
    io.close()
    store.close()


def test_values_ride_on_finish_step_when_store_and_values_share_a_database(
    same_db: tuple[PostgresRunStore, PostgresIOManager], migrated_url: str
) -> None:
    store, io = same_db
    assert store.accepts_staging(io.staging_target)
    name = f"staged_{uuid.uuid4().hex[:8]}"
    pipeline = _diamond(name, store, io)
    result = pipeline.run("report")
    assert result.status == "succeeded"
    assert result.value == {"orders": 5, "revenue": 150, "average": 30.0}
    rows = asyncio.run(_fetch(
        migrated_url,
        "SELECT m.asset, v.location IS NOT NULL AS stored FROM flowstone.materializations m "
        "LEFT JOIN flowstone.asset_values v ON v.location = m.location WHERE m.run_id = $1",
        result.run_id,
    ))
    assert sorted((r["asset"], r["stored"]) for r in rows) == [
        ("count", True), ("orders", True), ("report", True), ("revenue", True)]
    pipeline.close()


def test_value_and_record_commit_together_or_not_at_all(
    same_db: tuple[PostgresRunStore, PostgresIOManager],
) -> None:
    store, io = same_db
    now = datetime.now(UTC)
    run = RunRecord(f"run-{uuid.uuid4().hex[:8]}", "sales", ("orders",), "", "running", now, now)
    store.create_run(run, [StepSpec("orders", "")])
    assert store.claim_step(run.run_id, "orders", "", owner="w", lease_seconds=60) is not None
    staged = io.stage(StorageKey("sales", "orders", "", run.run_id), [1, 2, 3])
    mat = MaterializationRecord(
        id=uuid.uuid4().hex, pipeline="sales", run_id=run.run_id, asset="orders", partition="",
        state="succeeded", io_manager="postgres", location=staged.location, finished_at=now,
    )
    # a write the database refuses (it breaks the table's CHECK): nothing of the step lands
    write = staged.payload
    assert isinstance(write, StagedWrite)  # the Postgres payload: its upsert and parameters
    broken = replace(
        staged, payload=replace(write, params={**write.params, "value_json": None, "data": None})
    )
    with pytest.raises(StorageError, match="finishing step 'orders'"):
        store.finish_step(run.run_id, "orders", "", StepOutcome("succeeded", mat, staged=(broken,)))
    step = store.get_step(run.run_id, "orders", "")
    assert step is not None and step.state == "running" and step.materialization_id is None
    assert store.get_materialization(mat.id) is None
    assert not io.exists(staged.location)
    # the same finish with the real value: record and value both land
    outcome = StepOutcome("succeeded", mat, staged=(staged,))
    done = store.finish_step(run.run_id, "orders", "", outcome)
    assert done.applied and done.run_status == "succeeded"
    assert io.load(staged.location) == [1, 2, 3]
    recorded = store.get_materialization(mat.id)
    assert recorded is not None and recorded.location == staged.location



def _claimed_run(store: PostgresRunStore, assets: Sequence[str]) -> RunRecord:
    now = datetime.now(UTC)
    run = RunRecord(f"run-{uuid.uuid4().hex[:8]}", "sales", tuple(assets), "", "running",
                    now, now)  # fmt: skip
    store.create_run(run, [StepSpec(a, "") for a in assets])
    for a in assets:
        assert store.claim_step(run.run_id, a, "", owner="w", lease_seconds=60) is not None
    return run


def _staged_finish(
    io: PostgresIOManager, run: RunRecord, asset: str, value: object, *, stage: bool = True,
    attempt: int = 1,
) -> Finish:
    now = datetime.now(UTC)  # each attempt stages its own place, as the engine does
    staged = io.stage(StorageKey("sales", asset, "", run.run_id, attempt=attempt), value)
    mat = MaterializationRecord(
        id=uuid.uuid4().hex, pipeline="sales", run_id=run.run_id, asset=asset, partition="",
        state="succeeded", io_manager="postgres", location=staged.location, finished_at=now,
    )
    return Finish(run.run_id, asset, "", StepOutcome(
        "succeeded", mat, staged=(staged,) if stage else ()))


def test_a_batch_of_one_shape_settles_each_run_even_when_its_last_finish_is_a_duplicate(
    same_db: tuple[PostgresRunStore, PostgresIOManager],
) -> None:
    """A batch whose finishes share one statement (each with one staged value) is one
    pipelined round trip, the calls ordered by run and each run settled by its last call.
    Here run A's last call is a duplicate (refused): A is still settled, its new status
    going to A's last applied finish; run B's to B's; every value lands with its record."""
    store, io = same_db
    run_a, run_b = _claimed_run(store, ("x", "y")), _claimed_run(store, ("z",))
    first_y = _staged_finish(io, run_a, "y", "y-1")
    assert store.finish_step(run_a.run_id, "y", "", first_y.outcome).run_status is None
    batch = [_staged_finish(io, run_b, "z", "z-1"), _staged_finish(io, run_a, "x", "x-1"),
             _staged_finish(io, run_a, "y", "y-again", attempt=2)]  # fmt: skip
    got = store.finish_steps(batch, sources={})
    assert not any(isinstance(g, Exception) for g in got), got
    (z, _), (x, _), (y, _) = got  # type: ignore[misc]
    assert z.applied and z.run_status == "succeeded"
    assert x.applied and x.run_status == "succeeded"
    assert not y.applied and y.run_status is None
    for run in (run_a, run_b):
        recorded = store.get_run(run.run_id)
        assert recorded is not None and recorded.status == "succeeded"
    assert [io.load(f.outcome.staged[0].location) for f in batch[:2]] == ["z-1", "x-1"]
    step = store.get_step(run_a.run_id, "y", "")  # still the first finish's record and value
    assert first_y.outcome.materialization is not None
    assert step is not None and step.materialization_id == first_y.outcome.materialization.id
    assert io.load(first_y.outcome.staged[0].location) == "y-1"


def test_a_pipelined_batch_applies_all_or_nothing(
    same_db: tuple[PostgresRunStore, PostgresIOManager],
) -> None:
    """One refused write (it breaks the value table's CHECK) in a one-shape batch: the
    batch's other finishes, the dependents' locks and the settle roll back with it."""
    store, io = same_db
    run = _claimed_run(store, ("x", "y"))
    good, bad = _staged_finish(io, run, "x", 1), _staged_finish(io, run, "y", 2)
    staged = bad.outcome.staged[0]
    write = staged.payload
    assert isinstance(write, StagedWrite)
    broken = replace(staged, payload=replace(
        write, params={**write.params, "value_json": None, "data": None}))
    bad_broken = replace(bad, outcome=replace(bad.outcome, staged=(broken,)))
    with pytest.raises(StorageError, match="finishing 2 steps"):
        store.finish_steps([good, bad_broken], sources={})
    for asset in ("x", "y"):
        step = store.get_step(run.run_id, asset, "")
        assert step is not None and step.state == "running"
    assert not io.exists(good.outcome.staged[0].location)
    recorded = store.get_run(run.run_id)
    assert recorded is not None and recorded.status == "running"
    got = store.finish_steps([good, bad], sources={})  # the same batch, repaired
    assert [g[0].applied for g in got if not isinstance(g, Exception)] == [True, True]
    assert got[1][0].run_status == "succeeded"  # type: ignore[index]


def test_a_batch_of_several_shapes_is_one_transaction_too(
    same_db: tuple[PostgresRunStore, PostgresIOManager],
) -> None:
    """Finishes of different shapes (with and without a staged value) in one batch: each
    recorded, the run settled once, its status on the batch's last applied finish."""
    store, io = same_db
    run = _claimed_run(store, ("x", "y", "z"))
    batch = [_staged_finish(io, run, "x", "x-1"), _staged_finish(io, run, "y", "y", stage=False),
             _staged_finish(io, run, "z", "z-1")]  # fmt: skip
    got = store.finish_steps(batch, sources={})
    transitions = [g[0] for g in got if not isinstance(g, Exception)]
    assert [t.applied for t in transitions] == [True, True, True]
    assert [t.run_status for t in transitions] == [None, None, "succeeded"]
    assert [io.load(batch[i].outcome.staged[0].location) for i in (0, 2)] == ["x-1", "z-1"]
    step, mat = store.get_step(run.run_id, "y", ""), batch[1].outcome.materialization
    assert step is not None and mat is not None and step.materialization_id == mat.id

def test_a_value_for_another_database_is_refused(
    same_db: tuple[PostgresRunStore, PostgresIOManager], postgres_url: str
) -> None:
    store, _ = same_db
    other = PostgresIOManager(make_url(postgres_url).set(database="postgres"))
    try:
        assert not store.accepts_staging(other.staging_target)
        staged = other.stage(StorageKey("p", "a", "", "r"), 1)
        with pytest.raises(StorageError, match="store it with its IO manager"):
            store.finish_step("r", "a", "", StepOutcome("skipped", staged=(staged,)))
    finally:
        other.close()


class CountingIO(PostgresIOManager):
    """A PostgresIOManager that notes every location it loads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loaded: list[str] = []

    def load(self, location: str) -> object:
        self.loaded.append(location)
        return super().load(location)

    def load_many(self, locations: Sequence[str]) -> list[object]:
        self.loaded.extend(locations)
        return super().load_many(locations)


def test_a_continuation_reads_its_inputs_from_the_finish_that_claimed_it(
    migrated_url: str,
) -> None:
    """The join claimed by the last branch's finish gets every input value from that same
    statement (the other branches' from their tables, its own from memory): no load, and
    the values decode exactly as a load would."""
    store = PostgresRunStore(migrated_url)
    values = CountingIO(migrated_url)
    others = CountingIO(migrated_url, table="flowstone.asset_values_other", name="other")

    @fs.asset
    def blob() -> bytes:
        return b"\x00\x01parquet"

    @fs.asset(io_manager="other")
    def pair() -> tuple[int, int]:
        return (1, 2)

    @fs.asset
    def count() -> int:
        return 3

    @fs.asset
    def joined(blob: bytes, pair: tuple[int, int], count: int) -> dict[str, object]:
        return {"blob": blob.hex(), "pair": pair, "count": count}

    parked = ParkedExecutor()
    pipeline = fs.Pipeline(
        f"prefetch_{uuid.uuid4().hex[:8]}", [blob, pair, count, joined], store=store,
        io_managers={"default": values, "other": others}, executor=parked,
    )
    try:
        run = pipeline.run("joined", wait=False)
        first, second, last = sorted(parked.sent, key=lambda s: s.asset)  # blob, count, pair
        runner = pipeline.runner
        for step in (first, second):
            done = runner.run_step(run.run_id, step.asset, step.partition, claim_next=True)
            assert done.steps == ()
        (claimed,) = runner.run_step(run.run_id, last.asset, last.partition, claim_next=True).steps
        assert (claimed.asset, claimed.state) == ("joined", "running")
        values.loaded.clear()
        others.loaded.clear()
        assert runner.run_claimed(claimed).steps == ()
        assert values.loaded == [] and others.loaded == []  # nothing loaded
        result = pipeline.result(run.run_id)
        assert result.status == "succeeded"
        # decoded exactly as a load decodes them (the codec keeps a tuple a tuple)
        assert result.value == {"blob": "0001" + b"parquet".hex(), "pair": (1, 2), "count": 3}
        assert pipeline.get("pair") == (1, 2) and pipeline.get("blob") == b"\x00\x01parquet"
    finally:
        pipeline.close()
        for closing in (values, others, store):
            closing.close()


def test_values_the_finish_did_not_send_are_loaded(migrated_url: str) -> None:
    """A manager that offers no prefetch source (here: not a PostgresIOManager's) is read
    the usual way; the continuation still runs, with the right values."""
    store = PostgresRunStore(migrated_url)
    values = CountingIO(migrated_url)
    values_source = values.prefetch_source

    class Foreign(CountingIO):
        @property
        def prefetch_source(self) -> str | None:  # not one a PostgresRunStore reads
            return None if values_source is None else "elsewhere:" + str(self.table)

    foreign = Foreign(migrated_url, name="foreign")

    @fs.asset(io_manager="foreign")
    def left() -> int:
        return 20

    @fs.asset
    def right() -> int:
        return 22

    @fs.asset
    def total(left: int, right: int) -> int:
        return left + right

    parked = ParkedExecutor()
    pipeline = fs.Pipeline(
        f"prefetch_{uuid.uuid4().hex[:8]}", [left, right, total], store=store,
        io_managers={"default": values, "foreign": foreign}, executor=parked,
    )
    try:
        run = pipeline.run("total", wait=False)
        first, last = sorted(parked.sent, key=lambda s: s.asset)  # left, right
        assert pipeline.runner.run_step(run.run_id, first.asset, "", claim_next=True).steps == ()
        (claimed,) = pipeline.runner.run_step(run.run_id, last.asset, "", claim_next=True).steps
        foreign.loaded.clear()
        pipeline.runner.run_claimed(claimed)
        assert len(foreign.loaded) == 1 and values.loaded == []
        assert pipeline.get("total") == 42
    finally:
        pipeline.close()
        for closing in (values, foreign, store):
            closing.close()


def test_racing_branches_join_without_reading_their_values(migrated_url: str) -> None:
    """Three branches finish at the same moment from three threads, twenty times over: the
    finisher whose claim waited for the others still gets their values (read after the
    claim, not from the statement's older snapshot), so no join loads anything."""
    store = PostgresRunStore(migrated_url)
    values = CountingIO(migrated_url)

    def branch(k: int) -> fs.AssetDef:
        def fn() -> int:
            return k

        return fs.asset(name=f"b{k}")(fn)

    @fs.asset
    def total(b1: int, b2: int, b3: int) -> int:
        return 100 * b1 + 10 * b2 + b3

    parked = ParkedExecutor()
    pipeline = fs.Pipeline(
        f"race_{uuid.uuid4().hex[:8]}", [branch(1), branch(2), branch(3), total], store=store,
        io_managers={"default": values}, executor=parked,
    )
    runner = pipeline.runner
    try:
        values.exists("postgres:" + "0" * 32)  # the table is known to exist (prefetch_source)
        for _ in range(20):
            parked.sent.clear()
            run = pipeline.run("total", force=True, wait=False)
            start = threading.Barrier(3)
            claimed: list[Any] = []

            def finish(step: Any, run_id: str = run.run_id, gate: Any = start) -> None:
                gate.wait()
                claimed.extend(runner.run_step(run_id, step.asset, step.partition,
                                               claim_next=True).steps)

            threads = [threading.Thread(target=finish, args=(s,)) for s in parked.sent]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            (join,) = claimed
            values.loaded.clear()
            runner.run_claimed(join)
            assert values.loaded == []
            assert pipeline.result(run.run_id).value == 123
    finally:
        pipeline.close()
        values.close()
        store.close()


def test_prefetch_reads_only_tables_it_can(migrated_url: str) -> None:
    """No prefetch source before this process knows the table exists, and the store's
    ``read_values`` reads nothing from a table that is not there (never an error)."""
    fresh = PostgresIOManager(migrated_url, table=f"flowstone.values_{uuid.uuid4().hex[:8]}")
    try:
        assert fresh.prefetch_source is None
        fresh.exists("postgres:" + "0" * 32)  # first use creates the table
        assert fresh.prefetch_source == f"flowstone-io-postgres:{fresh.table}"
    finally:
        fresh.close()
    rows = asyncio.run(_fetch(
        migrated_url,
        "SELECT * FROM flowstone.read_values(to_regclass('flowstone.no_such_values'), $1)",
        ["postgres:" + "0" * 32],
    ))
    assert rows == []
