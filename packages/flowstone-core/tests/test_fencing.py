"""A stale runner cannot commit, and a message cannot run one pipeline's asset in another's
run (issue 11, defects 2 and 4): two runners of one step, on the memory and SQLite stores."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import pytest
from conftest import PipelineFactory, Recorder

import flowstone as fs
from flowstone.engine.leases import LeaseKeeper
from flowstone.records import RunRecord, StepSpec

# generous bound on a wait that ends as soon as the lease keeper's first renewal is refused
_SAFETY_S = 30.0


def _run(p: fs.Pipeline, steps: list[StepSpec]) -> RunRecord:
    """A run of ``p`` created in its store, nothing executed yet."""
    now = datetime.now(UTC)
    run = RunRecord(
        run_id=f"run-{uuid.uuid4().hex[:12]}", pipeline=p.name, targets=(steps[-1].asset,),
        partition="", status="running", created_at=now, updated_at=now,
    )  # fmt: skip
    p.store.create_run(run, steps)
    return run


def test_the_finish_of_a_runner_whose_step_was_taken_over_is_refused(
    make_pipeline: PipelineFactory, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    lease_lost_seen: list[bool] = []

    @fs.asset
    def summary(context: fs.Context) -> str:
        if context.attempt == 1:  # runner A: its claim was taken over before it finished
            lease_lost_seen.append(context.lease_lost.wait(_SAFETY_S))
        return f"written by attempt {context.attempt}"

    @fs.asset
    def report(summary: str) -> str:
        return f"report of: {summary}"

    p = make_pipeline([summary, report], name="reports", observers=[recorder])
    run = _run(p, [StepSpec("summary", ""), StepSpec("report", "", deps=(("summary", ""),))])
    store = p.store
    a = store.claim_step(run.run_id, "summary", "", owner="runner-a", lease_seconds=0)
    b = store.claim_step(run.run_id, "summary", "", owner="runner-b", lease_seconds=60)
    assert a is not None and b is not None and (a.attempt, b.attempt) == (1, 2)

    with caplog.at_level(logging.WARNING, logger="flowstone.engine"):
        first = p.runner.run_claimed(a, lease_seconds=0.15)  # A finishes first
    assert store.find_materialization("reports", "summary", "", run_id=run.run_id) is None
    step = store.get_step(run.run_id, "summary", "")
    assert step is not None and (step.state, step.owner, step.attempt) == ("running", "runner-b", 2)
    assert first.steps == () and first.next is None  # refused: no dependent released
    assert lease_lost_seen == [True]  # the lease keeper told the asset it lost its claim
    assert "lost its lease" in caplog.text and "was refused" in caplog.text

    second = p.runner.run_claimed(b, lease_seconds=60)  # B's finish is the one committed
    assert [s.asset for s in second.steps] == ["report"]
    mat = store.find_materialization("reports", "summary", "", run_id=run.run_id)
    assert mat is not None and mat.attempt == 2
    io = p.io_manager(mat.io_manager)
    assert io.load(mat.location) == "written by attempt 2"
    # A's value went to its own attempt's place: an orphan no record points at
    stored = [e.data["location"] for e in recorder.events if e.kind == "io.stored"]
    assert len(stored) == 2 and stored[1] == mat.location
    assert io.load(stored[0]) == "written by attempt 1" and stored[0] != mat.location
    p.dispatch(run.run_id, second.steps)
    assert p.result(run.run_id).status == "succeeded"
    assert p.result(run.run_id).value == "report of: written by attempt 2"


def test_a_lease_keeper_whose_renewal_is_refused_sets_lease_lost(
    make_pipeline: PipelineFactory,
) -> None:
    @fs.asset
    def summary() -> int:
        return 1

    p = make_pipeline([summary])
    run = _run(p, [StepSpec("summary", "")])
    store = p.store
    assert store.claim_step(run.run_id, "summary", "", owner="a", lease_seconds=0) is not None
    assert store.claim_step(run.run_id, "summary", "", owner="b", lease_seconds=60) is not None
    keeper = LeaseKeeper(store)
    try:
        with keeper.keep(run.run_id, "summary", "", "b", 0.15, 2) as kept:
            with keeper.keep(run.run_id, "summary", "", "a", 0.15, 1) as lost:
                assert lost.wait(_SAFETY_S)
            assert not kept.is_set()  # the holder's renewals go on
    finally:
        keeper.close()
    step = store.get_step(run.run_id, "summary", "")
    assert step is not None and step.owner == "b"


def test_a_message_naming_another_pipeline_runs_nothing_in_this_run(
    make_pipeline: PipelineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    @fs.asset(name="summary")
    def reports_summary() -> str:
        ran.append("reports")
        return "reports"

    @fs.asset(name="summary")
    def billing_summary() -> str:
        ran.append("billing")
        return "billing"

    reports = make_pipeline([reports_summary], name="reports")
    billing = make_pipeline([billing_summary], name="billing", store=reports.store)  # shared
    run = _run(reports, [StepSpec("summary", "")])
    # the message {"pipeline": "billing", "run_id": <a reports run>, "asset": "summary"}
    with caplog.at_level(logging.WARNING, logger="flowstone.engine"):
        result = billing.runner.run_step(run.run_id, "summary", "")
    assert result.steps == () and ran == []
    assert "rejected a message" in caplog.text and "belongs to pipeline 'reports'" in caplog.text
    step = reports.store.get_step(run.run_id, "summary", "")
    assert step is not None and (step.state, step.attempt) == ("ready", 0)
    reports.dispatch(run.run_id, (step,))
    assert reports.result(run.run_id).value == "reports" and ran == ["reports"]


def test_a_stale_runner_whose_asset_fails_cannot_send_the_step_back(
    make_pipeline: PipelineFactory,
) -> None:
    @fs.asset(retry=fs.RetryPolicy(max_attempts=3, base_delay=0, jitter=0))
    def summary(context: fs.Context) -> str:
        if context.attempt == 1:  # runner A, taken over: its retry policy would re-queue it
            raise ConnectionError("upstream API timed out")
        return f"written by attempt {context.attempt}"

    p = make_pipeline([summary], name="reports")
    run = _run(p, [StepSpec("summary", "")])
    store = p.store
    a = store.claim_step(run.run_id, "summary", "", owner="runner-a", lease_seconds=0)
    b = store.claim_step(run.run_id, "summary", "", owner="runner-b", lease_seconds=60)
    assert a is not None and b is not None
    assert p.runner.run_claimed(a, lease_seconds=60).steps == ()  # its retry is refused
    step = store.get_step(run.run_id, "summary", "")
    assert step is not None and (step.state, step.owner, step.attempt) == ("running", "runner-b", 2)
    p.runner.run_claimed(b, lease_seconds=60)
    assert p.result(run.run_id).value == "written by attempt 2"
