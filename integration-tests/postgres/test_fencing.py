"""A stale runner cannot commit, and a message cannot run one pipeline's asset in another
pipeline's run (issue 11, defects 2 and 4), on real Postgres with values staged in the
step's own ``finish_step`` statement."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy.engine import make_url

import flowstone as fs
from flowstone.protocols import StorageKey
from flowstone.records import RunRecord, StepSpec
from flowstone_io_postgres import PostgresIOManager, PostgresRunStore

pytestmark = pytest.mark.integration

# generous bound on a wait that ends as soon as the lease keeper's first renewal is refused
_SAFETY_S = 30.0


@pytest.fixture
def same_db(migrated_url: str) -> Iterator[tuple[PostgresRunStore, PostgresIOManager]]:
    store = PostgresRunStore(migrated_url, pool_size=2, max_overflow=1)
    io = PostgresIOManager(migrated_url, pool_size=2)
    yield store, io
    io.close()
    store.close()


def _run(store: PostgresRunStore, pipeline: str, steps: list[StepSpec]) -> RunRecord:
    now = datetime.now(UTC)
    run = RunRecord(
        run_id=f"run-{uuid.uuid4().hex[:12]}", pipeline=pipeline, targets=(steps[-1].asset,),
        partition="", status="running", created_at=now, updated_at=now,
    )  # fmt: skip
    store.create_run(run, steps)
    return run


def _stored(url: str, location: str) -> bool:
    """Whether the values table has a row at ``location`` (read with a connection of its
    own, not through the IO manager under test)."""

    async def go() -> bool:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            sql = "SELECT count(*) FROM flowstone.asset_values WHERE location = $1"
            return bool(await conn.fetchval(sql, location))
        finally:
            await conn.close()

    return asyncio.run(go())


def test_the_finish_of_a_runner_whose_step_was_taken_over_is_refused(
    same_db: tuple[PostgresRunStore, PostgresIOManager],
    migrated_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, io = same_db
    lease_lost_seen: list[bool] = []

    @fs.asset
    def summary(context: fs.Context) -> str:
        if context.attempt == 1:  # runner A: its claim was taken over before it finished
            lease_lost_seen.append(context.lease_lost.wait(_SAFETY_S))
        return f"written by attempt {context.attempt}"

    @fs.asset
    def report(summary: str) -> str:
        return f"report of: {summary}"

    name = f"reports-{uuid.uuid4().hex[:8]}"
    p = fs.Pipeline(name, [summary, report], store=store, io_managers={"default": io})
    try:
        assert store.accepts_staging(io.staging_target)  # values ride on finish_step
        steps = [StepSpec("summary", ""), StepSpec("report", "", (("summary", ""),))]
        run = _run(store, name, steps)
        a = store.claim_step(run.run_id, "summary", "", owner="runner-a", lease_seconds=0)
        b = store.claim_step(run.run_id, "summary", "", owner="runner-b", lease_seconds=60)
        assert a is not None and b is not None and (a.attempt, b.attempt) == (1, 2)

        with caplog.at_level(logging.WARNING, logger="flowstone.engine"):
            first = p.runner.run_claimed(a, lease_seconds=0.15)  # A finishes first
        assert store.find_materialization(name, "summary", "", run_id=run.run_id) is None
        step = store.get_step(run.run_id, "summary", "")
        assert step is not None and (step.state, step.owner, step.attempt) == (
            "running", "runner-b", 2)  # fmt: skip
        assert first.steps == () and first.next is None
        assert lease_lost_seen == [True]
        assert "was refused" in caplog.text
        assert "step_succeeded" not in [e.kind for e in store.list_audit(run.run_id)]

        second = p.runner.run_claimed(b, lease_seconds=60)  # B's finish is committed
        assert [s.asset for s in second.steps] == ["report"]
        mat = store.find_materialization(name, "summary", "", run_id=run.run_id)
        assert mat is not None and mat.attempt == 2
        assert io.load(mat.location) == "written by attempt 2"
        # A's staged write went to its own attempt's row: an orphan no record points at
        orphan = io.location_for(StorageKey(name, "summary", "", run.run_id, attempt=1))
        assert orphan != mat.location and _stored(migrated_url, orphan)
        assert io.load(orphan) == "written by attempt 1"
        p.dispatch(run.run_id, second.steps)
        assert p.result(run.run_id).value == "report of: written by attempt 2"
    finally:
        p.close()


def test_a_message_naming_another_pipeline_runs_nothing_in_this_run(
    same_db: tuple[PostgresRunStore, PostgresIOManager], caplog: pytest.LogCaptureFixture
) -> None:
    store, io = same_db
    ran: list[str] = []

    @fs.asset(name="summary")
    def reports_summary() -> str:
        ran.append("reports")
        return "reports"

    @fs.asset(name="summary")
    def billing_summary() -> str:
        ran.append("billing")
        return "billing"

    suffix = uuid.uuid4().hex[:8]
    values = {"default": io}  # one store (and values table) for two pipelines
    reports = fs.Pipeline(f"reports-{suffix}", [reports_summary], store=store, io_managers=values)
    billing = fs.Pipeline(f"billing-{suffix}", [billing_summary], store=store, io_managers=values)
    try:
        run = _run(store, reports.name, [StepSpec("summary", "")])
        with caplog.at_level(logging.WARNING, logger="flowstone.engine"):
            result = billing.runner.run_step(run.run_id, "summary", "")
        assert result.steps == () and ran == []
        assert "rejected a message" in caplog.text
        step = store.get_step(run.run_id, "summary", "")
        assert step is not None and (step.state, step.attempt) == ("ready", 0)
        reports.dispatch(run.run_id, (step,))
        assert reports.result(run.run_id).value == "reports" and ran == ["reports"]
    finally:
        billing.close()
        reports.close()
