"""Resuming a waiting step is exactly-once even when the resumer dies or its bookkeeping
fails between using the wait and finishing the step (issue: a used gate left its step
``waiting`` forever; a retried signal said "already used"; recover() did nothing).

Each test drives the public API on the memory and the SQLite store.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from conftest import Counter, PipelineFactory

import flowstone as fs
from flowstone.engine.runner import StepRunner
from flowstone.errors import StorageError
from flowstone.records import Continuation, StepOutcome


def _gated(tokens: list[str], counter: Counter, **kwargs: Any) -> list[fs.AssetDef]:
    @fs.asset
    def documents(context: fs.Context) -> list[str]:
        return [f"doc-{context.partition}"]

    def doubled(context: fs.Context, payload: int) -> int:
        counter.hit("on_signal")
        return payload * 2

    @fs.asset(on_signal=doubled, **kwargs)
    def embedded(context: fs.Context, documents: list[str]) -> Any:
        counter.hit("embedded")
        gate = context.signal_gate(timeout=timedelta(hours=1))
        tokens.append(gate.token)
        return gate

    @fs.asset
    def indexed(embedded: Any) -> str:
        counter.hit("indexed")
        return f"indexed {embedded}"

    return [documents, embedded, indexed]


class _Down:
    """Makes ``store.<method>`` fail like a lost connection while ``down`` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, target: Any, method: str) -> None:
        self.down = True
        real = getattr(target, method)

        def flaky(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise StorageError("connection to the database was lost (server closed it)")
            return real(*args, **kwargs)

        monkeypatch.setattr(target, method, flaky)


def test_a_signal_whose_finish_failed_is_completed_by_retrying_it(
    make_pipeline: PipelineFactory, counter: Counter, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens: list[str] = []
    p = make_pipeline(_gated(tokens, counter))
    run = p.run("indexed", "a")
    down = _Down(monkeypatch, p.store, "finish_step")
    with pytest.raises(StorageError, match="connection"):
        p.signal(tokens[0], 21)  # the gate is used, the finish never happened
    assert p.result(run.run_id).status == "waiting"
    down.down = False
    done = p.signal(tokens[0], 99)  # the retry completes the first use, with its payload
    assert done.status == "succeeded" and done.value == "indexed 42"
    assert p.get("embedded", "a") == 42
    record = p.store.find_materialization(p.name, "embedded", "a", run_id=run.run_id)
    assert record is not None and record.state == "succeeded"
    with pytest.raises(fs.SignalError, match="already used"):
        p.signal(tokens[0], 21)
    assert counter.calls["indexed"] == 1 and counter.calls["embedded"] == 1


def test_recover_finishes_a_gate_whose_resolver_died(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    """A process used the gate (its claim is recorded with the payload) and died before
    finishing: the next sweep takes the lapsed claim over and finishes from the payload."""
    tokens: list[str] = []
    p = make_pipeline(_gated(tokens, counter))
    run = p.run("indexed", "b")
    from flowstone.engine.runner import hash_token

    p.store.consume_gate(
        hash_token(tokens[0]), payload=5, status="signaled",
        claim=Continuation("dead-host:1:1", lease_seconds=0.0),
    )  # fmt: skip
    held = p.store.get_step(run.run_id, "embedded", "b")
    assert held is not None and held.state == "waiting" and held.owner == "dead-host:1:1"
    assert p.recover() == 1
    result = p.result(run.run_id)
    assert result.status == "succeeded" and result.value == "indexed 10"
    step = p.store.get_step(run.run_id, "embedded", "b")
    assert step is not None and step.attempt == held.attempt + 1  # the take-over's attempt
    assert p.recover() == 0  # nothing left: finished once


def test_recover_leaves_a_live_resolver_alone(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    tokens: list[str] = []
    p = make_pipeline(_gated(tokens, counter))
    run = p.run("indexed", "c")
    from flowstone.engine.runner import hash_token

    p.store.consume_gate(
        hash_token(tokens[0]), payload=5, status="signaled",
        claim=Continuation("live-host:1:1", lease_seconds=3600.0),
    )  # fmt: skip
    assert p.recover() == 0
    assert p.result(run.run_id).status == "waiting"
    with pytest.raises(fs.SignalError, match="already used"):
        p.signal(tokens[0], 5)


def test_a_stale_resolver_cannot_commit_after_a_take_over(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    tokens: list[str] = []
    p = make_pipeline(_gated(tokens, counter))
    run = p.run("indexed", "d")
    from flowstone.engine.runner import hash_token

    store = p.store
    store.consume_gate(
        hash_token(tokens[0]), payload=1, status="signaled",
        claim=Continuation("slow-host:1:1", lease_seconds=0.0),
    )  # fmt: skip
    stale = store.get_step(run.run_id, "embedded", "d")
    newer = store.take_over_wait(
        run.run_id, "embedded", "d", owner="other-host:2:2", lease_seconds=60.0
    )
    assert stale is not None and newer is not None and newer.attempt == stale.attempt + 1
    outcome = StepOutcome("failed", error="stale")
    assert p.runner.complete(stale, outcome).ready == ()
    assert store.get_step(run.run_id, "embedded", "d").state == "waiting"  # type: ignore[union-attr]
    assert store.take_over_wait(
        run.run_id, "embedded", "d", owner="third:3:3", lease_seconds=60.0
    ) is None  # the newer claim is live


def test_an_infrastructure_error_while_storing_a_resumed_value_is_retried(
    make_pipeline: PipelineFactory, counter: Counter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not recorded as the asset's failure (a scatter whose items all succeeded used to end
    ``failed`` when the gathered value's write hit a dead connection)."""
    tokens: list[str] = []
    p = make_pipeline(_gated(tokens, counter))
    run = p.run("indexed", "e")
    calls = {"n": 0}
    real = p.store.finish_step

    def once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StorageError("connection reset by peer")
        return real(*args, **kwargs)

    monkeypatch.setattr(p.store, "finish_step", once)
    done = p.signal(tokens[0], 4)
    assert done.run_id == run.run_id and done.status == "succeeded"
    assert p.get("embedded", "e") == 8 and calls["n"] >= 2
    assert counter.calls["on_signal"] == 1  # the hook ran once; only bookkeeping was retried


def test_a_late_approval_is_refused_and_expires(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    @fs.asset
    def trade() -> Any:
        return fs.WaitForApproval(message="big", value=1, timeout=timedelta(seconds=0.2))

    @fs.asset
    def booked(trade: int) -> int:
        counter.hit("booked")
        return trade

    p = make_pipeline([trade, booked])
    run = p.run("booked")
    [pending] = p.approvals()
    time.sleep(0.4)
    with pytest.raises(fs.ApprovalError, match="expired"):
        p.approve(pending.id, by="late@example.com")
    result = p.result(run.run_id)
    assert result.status == "failed" and counter.calls.get("booked") is None
    [decided] = [a for a in p.approvals(status=None) if a.id == pending.id]
    assert decided.status == "expired"


def test_cancel_ends_pending_waits_so_old_tokens_cannot_finish_a_rerun(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    tokens: list[str] = []
    p = make_pipeline(_gated(tokens, counter))
    run = p.run("indexed", "f", wait=False)
    assert p.result(run.run_id).status == "waiting"
    p.cancel(run.run_id)
    gate = p.store.find_gate(run.run_id, "embedded", "f")
    assert gate is not None and gate.status == "cancelled"
    p.resume(run.run_id)
    assert len(tokens) == 2 and p.result(run.run_id).status == "waiting"
    with pytest.raises(fs.SignalError, match="cancelled"):
        p.signal(tokens[0], 1)
    assert p.signal(tokens[1], 3).status == "succeeded"
    assert p.get("embedded", "f") == 6


def test_a_materialization_keeps_its_id_when_a_resumed_step_finishes_again(
    make_pipeline: PipelineFactory,
) -> None:
    fail = {"now": True}

    @fs.asset
    def raw() -> int:
        return 1

    @fs.asset
    def model(raw: int) -> int:
        if fail["now"]:
            raise RuntimeError("flaky upstream")
        return raw + 1

    @fs.asset
    def report(model: int) -> str:
        return f"model {model}"

    p = make_pipeline([raw, model, report])
    run = p.run("report")
    assert run.status == "failed"
    first = p.store.find_materialization(p.name, "model", "", run_id=run.run_id)
    assert first is not None and first.state == "failed"
    fail["now"] = False
    resumed = p.resume(run.run_id)
    assert resumed.status == "succeeded"
    again = p.store.find_materialization(p.name, "model", "", run_id=run.run_id)
    assert again is not None and again.id == first.id and again.state == "succeeded"
    rep = p.store.find_materialization(p.name, "report", "", run_id=run.run_id)
    assert rep is not None and rep.upstream == (first.id,)
    assert [m.id for m in p.store.upstream(rep.id)] == [first.id]


def test_a_finish_that_hits_a_dead_connection_is_retried_without_rerunning_the_asset(
    make_pipeline: PipelineFactory, counter: Counter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asset ran and its value is stored; only recording it failed: the finish is
    retried holding the claim, and the asset's code does not run again (a join used to run
    twice when Postgres backends were terminated)."""

    @fs.asset
    def left() -> int:
        return 1

    @fs.asset
    def right() -> int:
        return 2

    @fs.asset
    def join(left: int, right: int) -> int:
        counter.hit("join")
        return left + right

    p = make_pipeline([left, right, join])
    real = StepRunner._finish
    failed: list[str] = []

    def flaky(self: StepRunner, step: Any, *args: Any, **kwargs: Any) -> Any:
        if step.asset == "join" and not failed:
            failed.append(step.asset)
            raise StorageError("terminating connection due to administrator command")
        return real(self, step, *args, **kwargs)

    monkeypatch.setattr(StepRunner, "_finish", flaky)
    result = p.run("join")
    assert result.status == "succeeded" and result.value == 3 and failed == ["join"]
    assert counter.calls == {"join": 1}
