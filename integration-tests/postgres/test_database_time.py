"""Leases, retries and re-sends run on the database's clock, not a worker's (issue 11,
defect 3), and a sweep re-sends a backlog with backoff (defect 5), on real Postgres.

A worker whose clock is off is simulated in this process: the clock functions of the
engine and of the store module (everything that could stamp a time in a worker) are
patched to read 400 s ahead (or behind) while that "worker" runs. Nothing the database
decides may change.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy.engine import make_url

import flowstone as fs
from flowstone import store_rules
from flowstone.engine import runner as engine_runner
from flowstone.records import RunRecord, StepRecord, StepSpec
from flowstone_io_postgres import PostgresRunStore
from flowstone_io_postgres import store as store_module

pytestmark = pytest.mark.integration

SKEW_S = 400.0


@pytest.fixture
def store(migrated_url: str) -> Iterator[PostgresRunStore]:
    s = PostgresRunStore(migrated_url, pool_size=2, max_overflow=1)
    yield s
    s.close()


def _skew(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """This process's clocks (engine, store rules, the Postgres store module) run
    ``seconds`` off from the real time, as on a worker with a wrong clock."""

    def skewed() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=seconds)

    monkeypatch.setattr(store_module, "_now", skewed)
    monkeypatch.setattr(store_rules, "utc_now", skewed)
    monkeypatch.setattr(engine_runner, "_now", skewed)


def _run(store: PostgresRunStore, pipeline: str, asset: str) -> RunRecord:
    now = datetime.now(UTC)
    run = RunRecord(
        run_id=f"run-{uuid.uuid4().hex[:12]}", pipeline=pipeline, targets=(asset,),
        partition="", status="running", created_at=now, updated_at=now,
    )  # fmt: skip
    store.create_run(run, [StepSpec(asset, "")])
    return run


def _database_now(url: str) -> datetime:
    async def go() -> datetime:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval("SELECT now()")  # type: ignore[no-any-return]
        finally:
            await conn.close()

    return asyncio.run(go())


def test_a_worker_400s_fast_does_not_take_over_a_live_lease(
    store: PostgresRunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []

    @fs.asset
    def summary() -> str:
        ran.append("fast worker")
        return "summary"

    name = f"skew-{uuid.uuid4().hex[:8]}"
    p = fs.Pipeline(name, [summary], store=store)
    try:
        run = _run(store, name, "summary")
        held = store.claim_step(run.run_id, "summary", "", owner="runner-a", lease_seconds=60)
        assert held is not None and held.attempt == 1
        _skew(monkeypatch, +SKEW_S)  # runner B's clock: A's lease looks 340 s expired
        result = p.runner.run_step(run.run_id, "summary", "", owner="runner-b")
        assert ran == []  # B did not take the step over: nothing ran
        assert result.steps == () and result.next is None
        assert (
            store.claim_step(run.run_id, "summary", "", owner="runner-b", lease_seconds=60) is None
        )
        assert store.resend_steps(ready_for_seconds=30, pipeline=name) == []  # not expired
        assert not store.renew_lease(
            run.run_id, "summary", "", owner="runner-b", lease_seconds=60, attempt=1
        )
        monkeypatch.undo()
        assert ran == []
        step = store.get_step(run.run_id, "summary", "")
        assert step is not None and (step.state, step.owner, step.attempt) == (
            "running", "runner-a", 1)  # fmt: skip
        assert store.renew_lease(
            run.run_id, "summary", "", owner="runner-a", lease_seconds=60, attempt=1
        )
    finally:
        p.close()


def test_a_retry_from_a_worker_400s_slow_waits_by_the_database_clock(
    store: PostgresRunStore, migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[int] = []

    @fs.asset
    def summary(context: fs.Context) -> fs.Retry | str:
        attempts.append(context.attempt)
        return fs.Retry(after=60, reason="the API said 503") if context.attempt == 1 else "ok"

    name = f"skew-{uuid.uuid4().hex[:8]}"
    p = fs.Pipeline(name, [summary], store=store)
    try:
        run = _run(store, name, "summary")
        _skew(monkeypatch, -SKEW_S)  # on this worker the retry's 60 s end 340 s ago
        before = _database_now(migrated_url)
        result = p.runner.run_step(run.run_id, "summary", "", owner="slow-worker")
        monkeypatch.undo()
        assert attempts == [1]
        [retried] = result.steps
        assert retried.state == "ready" and retried.not_before is not None
        # the store set not_before: the database's now plus the delay
        assert retried.not_before >= before + timedelta(seconds=60)
        assert retried.not_before - timedelta(seconds=60) <= _database_now(migrated_url)
        step = store.get_step(run.run_id, "summary", "")
        assert step is not None and step.not_before == retried.not_before
        # the retry is not due yet, whoever asks
        assert store.claim_step(run.run_id, "summary", "", owner="other", lease_seconds=60) is None
        assert p.runner.run_step(run.run_id, "summary", "").steps == ()
        assert attempts == [1]
    finally:
        p.close()


class _LostMessages:
    """An executor whose messages never arrive: it only counts what it was handed."""

    name = "lost"
    blocking = False

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def dispatch(self, runner: object, run_id: str, steps: Sequence[StepRecord]) -> None:
        self.sent.extend((s.run_id, s.asset, s.partition) for s in steps)

    def close(self) -> None:
        pass


def _age(url: str, run_id: str, seconds: float) -> None:
    """Let ``seconds`` pass for the steps of ``run_id`` (the database's clock cannot be
    moved, so their timestamps move back)."""

    async def go() -> None:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "UPDATE flowstone.steps SET updated_at = updated_at - $2 * interval '1 second', "
                "resent_at = resent_at - $2 * interval '1 second' WHERE run_id = $1",
                run_id, seconds,
            )  # fmt: skip
        finally:
            await conn.close()

    asyncio.run(go())


def test_a_backlog_swept_8_times_is_resent_a_bounded_number_of_times(
    store: PostgresRunStore, migrated_url: str
) -> None:
    """200 ready steps no worker takes (their messages are lost) and 8 sweeps of the
    pipeline's ``recover()``, one recover interval apart: each step is re-sent 3 times
    (after 1, 3 and 7 intervals), 600 messages; every sweep used to re-send all 200
    (1,600)."""

    @fs.asset
    def backlog() -> int:
        return 1

    lost = _LostMessages()
    name = f"backlog-{uuid.uuid4().hex[:8]}"
    p = fs.Pipeline(name, [backlog], store=store, executor=lost)
    try:
        now = datetime.now(UTC)
        run = RunRecord(
            run_id=f"run-{uuid.uuid4().hex[:12]}", pipeline=name, targets=("backlog",),
            partition="", status="running", created_at=now, updated_at=now,
        )  # fmt: skip
        store.create_run(run, [StepSpec("backlog", f"p{i:03d}") for i in range(200)])
        per_sweep = []
        for _ in range(8):
            _age(migrated_url, run.run_id, 30)
            before = len(lost.sent)
            p.recover(ready_for_seconds=30)
            per_sweep.append(len(lost.sent) - before)
        counts = Counter(lost.sent)
        assert len(counts) == 200 and set(counts.values()) == {3}
        assert per_sweep == [200, 0, 200, 0, 0, 0, 200, 0]
        assert len(lost.sent) == 600
    finally:
        p.close()
