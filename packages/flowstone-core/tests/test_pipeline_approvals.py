"""Approvals and signal gates: runs pause without holding a worker and resume durably."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Counter, PipelineFactory

import flowstone as fs


def _trading(counter: Counter) -> list[fs.AssetDef]:
    @fs.asset
    def quote() -> dict[str, Any]:
        return {"symbol": "ACME", "qty": 5000}

    @fs.asset
    def trade(quote: dict[str, Any]) -> Any:
        counter.hit("trade")
        return fs.WaitForApproval(
            message=f"large trade of {quote['qty']}", value=quote, timeout=timedelta(hours=24)
        )

    @fs.asset
    def confirmation(trade: dict[str, Any]) -> str:
        counter.hit("confirmation")
        return f"booked {trade['qty']} {trade['symbol']}"

    return [quote, trade, confirmation]


def test_approval_pauses_then_approve_stores_value_and_resumes(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    p = make_pipeline(_trading(counter))
    run = p.run("confirmation")
    assert run.status == "waiting"
    with pytest.raises(fs.ExecutionError, match="waiting for approvals"):
        _ = run.value
    [pending] = p.approvals()
    assert pending.message == "large trade of 5000" and pending.asset == "trade"
    assert [a.id for a in run.approvals()] == [pending.id]
    assert run.to_dict()["approvals"][0]["id"] == pending.id
    assert "confirmation" not in counter.calls

    done = p.approve(pending.id, by="alice")
    assert done.status == "succeeded" and done.value == "booked 5000 ACME"
    assert p.get("trade") == {"symbol": "ACME", "qty": 5000}
    assert counter.calls == {"trade": 1, "confirmation": 1}  # the asset is not re-run
    assert p.approvals() == []
    assert p.approvals(status="approved")[0].decided_by == "alice"
    with pytest.raises(fs.ApprovalError):
        p.approve(pending.id, by="bob")


def test_reject_fails_the_asset(make_pipeline: PipelineFactory, counter: Counter) -> None:
    p = make_pipeline(_trading(counter))
    run = p.run("confirmation")
    result = p.reject(run_id=run.run_id, asset="trade", by="carol", reason="too big")
    assert result.status == "failed"
    assert "rejected by carol: too big" in (result.error or "")
    assert p.status("trade") == "failed" and not p.exists("trade")
    with pytest.raises(fs.ApprovalError):
        p.reject(run_id=run.run_id, asset="trade")


def test_approve_by_run_and_asset(make_pipeline: PipelineFactory, counter: Counter) -> None:
    p = make_pipeline(_trading(counter))
    run = p.run("confirmation")
    assert p.approve(run_id=run.run_id, asset="trade", by="dave").value == "booked 5000 ACME"
    with pytest.raises(fs.UsageError):
        p.approve()
    with pytest.raises(fs.ApprovalError):
        p.approve(9999)


def test_approval_timeout_expires_and_fails(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    p = make_pipeline(_trading(counter))
    run = p.run("confirmation")
    assert p.expire_due(datetime.now(UTC)) == 0
    assert p.expire_due(datetime.now(UTC) + timedelta(hours=25)) == 1
    result = p.result(run.run_id)
    assert result.status == "failed" and "expired" in (result.error or "")
    assert p.approvals() == []


def test_approval_is_durable_across_processes(tmp_path: Path, counter: Counter) -> None:
    url = f"sqlite:///{tmp_path}/trades.db"
    first = fs.Pipeline("trading", _trading(counter), store=url)
    run = first.run("confirmation")
    assert run.status == "waiting"
    first.close()  # the process that started the run is gone

    restarted = fs.Pipeline("trading", _trading(counter), store=url)
    [pending] = restarted.approvals()
    result = restarted.approve(pending.id, by="alice")
    assert result.run_id == run.run_id and result.status == "succeeded"
    assert result.value == "booked 5000 ACME"
    restarted.close()


# --- signal gates ---------------------------------------------------------------------------


def _embedding(tokens: list[str], counter: Counter, **kwargs: Any) -> list[fs.AssetDef]:
    @fs.asset
    def documents(context: fs.Context) -> list[str]:
        return [f"doc-{context.partition}"]

    @fs.asset(**kwargs)
    def embedded(context: fs.Context, documents: list[str]) -> Any:
        counter.hit("embedded")
        gate = context.signal_gate(timeout=timedelta(hours=1))
        tokens.append(gate.token)  # start_external_job(documents, callback_token=gate.token)
        return gate

    @fs.asset
    def indexed(embedded: Any) -> str:
        return f"indexed {embedded}"

    return [documents, embedded, indexed]


def test_signal_resumes_through_on_signal(make_pipeline: PipelineFactory, counter: Counter) -> None:
    tokens: list[str] = []
    p = make_pipeline(
        _embedding(tokens, counter, on_signal=lambda context, payload: payload["vectors"])
    )
    run = p.run("indexed", "batch-1")
    assert run.status == "waiting"
    [token] = tokens
    assert token.startswith("fsg_") and len(token) - 4 >= 22  # >= 128 bits of base64
    assert token not in repr(fs.SignalGate(token, None))

    done = p.signal(token, {"vectors": [0.1, 0.2]})
    assert done.run_id == run.run_id and done.status == "succeeded"
    assert p.get("embedded", "batch-1") == [0.1, 0.2]
    assert done.value == "indexed [0.1, 0.2]"
    assert counter.calls == {"embedded": 1}
    with pytest.raises(fs.SignalError, match="already used"):
        p.signal(token, {"vectors": []})


def test_signal_token_is_bound_to_its_run_and_pipeline(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    tokens: list[str] = []
    p = make_pipeline(_embedding(tokens, counter))
    other = make_pipeline(_embedding([], counter), name="other")
    a = p.run("indexed", "a")
    b = p.run("indexed", "b")
    assert len(set(tokens)) == 2
    with pytest.raises(fs.SignalError, match="unknown signal token"):
        other.signal(tokens[0], {})
    with pytest.raises(fs.SignalError):
        p.signal("fsg_" + "A" * 43, {})
    with pytest.raises(fs.SignalError):
        p.signal("not-a-token", {})
    # signalling b's token finishes b only
    p.signal(tokens[1], "vectors-b")
    assert p.result(b.run_id).status == "succeeded"
    assert p.result(a.run_id).status == "waiting"
    assert p.get("embedded", "b") == "vectors-b" and not p.exists("embedded", "a")


def test_gate_expiry_runs_on_timeout(make_pipeline: PipelineFactory, counter: Counter) -> None:
    tokens: list[str] = []
    p = make_pipeline(_embedding(tokens, counter, on_timeout=lambda context: ["fallback"]))
    run = p.run("indexed", "x")
    assert p.expire_due(datetime.now(UTC) + timedelta(hours=2)) == 1
    result = p.result(run.run_id)
    assert result.status == "succeeded" and p.get("embedded", "x") == ["fallback"]
    with pytest.raises(fs.SignalError):
        p.signal(tokens[0], {})


def test_gate_expiry_without_on_timeout_fails(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    tokens: list[str] = []
    p = make_pipeline(_embedding(tokens, counter))
    run = p.run("indexed", "y")
    p.expire_due(datetime.now(UTC) + timedelta(hours=2))
    result = p.result(run.run_id)
    assert result.status == "failed" and "expired" in (result.error or "")


def test_recover_finishes_an_approval_whose_approver_died(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    """The approving process decided in the store, then died before resuming the step:
    the next sweep (pipeline.recover, run by the daemon) finishes the step and the run."""
    p = make_pipeline(_trading(counter))
    run = p.run("confirmation")
    [pending] = p.approvals()
    p.store.decide_approval(pending.id, "approved", by="erin")  # ...and then the process died
    assert p.result(run.run_id).status == "waiting"
    assert p.recover() == 1
    done = p.result(run.run_id)
    assert done.status == "succeeded" and done.value == "booked 5000 ACME"
    assert counter.calls == {"trade": 1, "confirmation": 1}
    assert p.recover() == 0  # nothing left to finish


def test_on_token_delivers_the_token_once_the_gate_is_recorded(
    make_pipeline: PipelineFactory,
) -> None:
    """An external system that calls back at once must find the gate (handing the token
    out from inside the asset raced with the gate's record: "unknown token")."""
    import threading

    answers: list[str] = []
    callers: list[threading.Thread] = []
    holder: dict[str, fs.Pipeline] = {}

    def submit(token: str) -> None:  # the "external service": answers immediately
        def call_back() -> None:
            answers.append(holder["p"].signal(token, {"rows": 7}).status)

        callers.append(threading.Thread(target=call_back))
        callers[-1].start()

    @fs.asset(on_signal=lambda context, payload: payload["rows"])
    def export(context: fs.Context) -> Any:
        return context.signal_gate(timedelta(minutes=5), on_token=submit)

    p = holder["p"] = make_pipeline([export])
    p.run("export")
    for caller in callers:
        caller.join(10)
    assert answers == ["succeeded"]
    assert p.get("export") == 7


def test_a_failing_on_token_expires_the_gate_naming_the_error(
    make_pipeline: PipelineFactory,
) -> None:
    def submit(token: str) -> None:
        raise ConnectionError("job queue unreachable")

    @fs.asset(on_signal=lambda context, payload: payload)
    def export(context: fs.Context) -> Any:
        return context.signal_gate(on_token=submit)

    p = make_pipeline([export])
    result = p.run("export")
    assert result.status == "failed"
    assert "on_token failed" in (result.error or "")
    assert "job queue unreachable" in (result.error or "")


def test_on_token_must_be_callable(make_pipeline: PipelineFactory) -> None:
    @fs.asset
    def bad(context: fs.Context) -> Any:
        return context.signal_gate(on_token="not a function")  # type: ignore[arg-type]

    result = make_pipeline([bad]).run("bad")
    assert result.status == "failed"
    assert "signal_gate(on_token=...) must be callable" in (result.error or "")
