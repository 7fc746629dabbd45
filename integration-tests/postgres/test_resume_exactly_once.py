"""Resuming a waiting step is exactly-once on Postgres (issue 11, defects 1, 6 and 7):
using a gate claims its step for the user (migration 0008's fence holds a waiting step),
so a resolver that died or whose bookkeeping failed is taken over from the payload the
gate recorded; late approvals are refused by the database's clock; cancelling ends the
run's pending waits; a record keeps its id when its step finishes again.

Values are staged into the step's own ``finish_step`` (PostgresIOManager on the same
database), the path where the value and the record commit together.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

import flowstone as fs
from flowstone.engine.runner import hash_token
from flowstone.errors import StorageError
from flowstone.protocols import StorageKey
from flowstone.records import Continuation, Fence, StepOutcome
from flowstone_io_postgres import PostgresIOManager, PostgresRunStore

pytestmark = pytest.mark.integration


@pytest.fixture
def parts(migrated_url: str) -> Iterator[tuple[PostgresRunStore, PostgresIOManager]]:
    store = PostgresRunStore(migrated_url, pool_size=2, max_overflow=1)
    io = PostgresIOManager(migrated_url, pool_size=2)
    yield store, io
    io.close()
    store.close()


def _pipeline(
    parts: tuple[PostgresRunStore, PostgresIOManager], tokens: list[str], hooks: list[int]
) -> fs.Pipeline:
    def doubled(context: fs.Context, payload: int) -> int:
        hooks.append(payload)
        return payload * 2

    @fs.asset(on_signal=doubled)
    def embedded(context: fs.Context) -> Any:
        gate = context.signal_gate(timeout=timedelta(hours=1))
        tokens.append(gate.token)
        return gate

    @fs.asset
    def indexed(embedded: int) -> str:
        return f"indexed {embedded}"

    store, io = parts
    name = f"resume_{uuid.uuid4().hex[:8]}"
    return fs.Pipeline(name, [embedded, indexed], store=store, io_managers={"default": io})


def test_a_used_gate_whose_finish_failed_is_finished_by_a_retry_and_by_recover(
    parts: tuple[PostgresRunStore, PostgresIOManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens: list[str] = []
    hooks: list[int] = []
    p = _pipeline(parts, tokens, hooks)
    try:
        run = p.run("indexed", "a")
        real = p.store.finish_step
        down = {"on": True}

        def lost(*args: Any, **kwargs: Any) -> Any:
            if down["on"]:
                raise StorageError("connection was closed in the middle of operation")
            return real(*args, **kwargs)

        monkeypatch.setattr(p.store, "finish_step", lost)
        with pytest.raises(StorageError):
            p.signal(tokens[0], 21)
        assert p.result(run.run_id).status == "waiting"
        down["on"] = False
        done = p.signal(tokens[0], 0)  # completes the first use, with its payload
        assert done.status == "succeeded" and done.value == "indexed 42"
        assert hooks == [21, 21]  # the hook is at-least-once; the record is once
        with pytest.raises(fs.SignalError, match="already used"):
            p.signal(tokens[0], 21)

        # a resolver that died after using the gate: the sweep takes its claim over
        second = p.run("indexed", "b")
        p.store.consume_gate(
            hash_token(tokens[1]), payload=5, status="signaled",
            claim=Continuation("dead-host:1:1", lease_seconds=0.0),
        )  # fmt: skip
        assert p.recover() == 1
        result = p.result(second.run_id)
        assert result.status == "succeeded" and result.value == "indexed 10"
        record = p.store.find_materialization(p.name, "embedded", "b", run_id=second.run_id)
        step = p.store.get_step(second.run_id, "embedded", "b")
        assert record is not None and step is not None and record.attempt == step.attempt
        # the value is at the take-over attempt's own location (Postgres hashes the key)
        key = StorageKey(p.name, "embedded", "b", second.run_id, attempt=step.attempt)
        assert record.location == PostgresIOManager.location_for(key)
        assert p.recover() == 0
    finally:
        p.close()


def test_a_stale_resolver_is_fenced_out_on_postgres(
    parts: tuple[PostgresRunStore, PostgresIOManager],
) -> None:
    tokens: list[str] = []
    p = _pipeline(parts, tokens, [])
    try:
        run = p.run("indexed", "c")
        store = p.store
        store.consume_gate(
            hash_token(tokens[0]), payload=1, status="signaled",
            claim=Continuation("slow-host:1:1", lease_seconds=0.0),
        )  # fmt: skip
        stale = store.get_step(run.run_id, "embedded", "c")
        newer = store.take_over_wait(
            run.run_id, "embedded", "c", owner="other-host:2:2", lease_seconds=60.0
        )
        assert stale is not None and newer is not None and newer.attempt == stale.attempt + 1
        refused = store.finish_step(
            run.run_id, "embedded", "c", StepOutcome("failed", error="stale"),
            fence=Fence(stale.owner or "", stale.attempt),
        )  # fmt: skip
        assert not refused.applied
        assert store.take_over_wait(
            run.run_id, "embedded", "c", owner="third:3:3", lease_seconds=60.0
        ) is None  # the newer claim is live
    finally:
        p.close()


def test_late_approvals_cancelled_waits_and_stable_ids_on_postgres(
    parts: tuple[PostgresRunStore, PostgresIOManager],
) -> None:
    store, io = parts
    fail = {"now": True}

    @fs.asset
    def trade() -> Any:
        return fs.WaitForApproval(message="big", value=1, timeout=timedelta(seconds=0.2))

    @fs.asset
    def model() -> int:
        if fail["now"]:
            raise RuntimeError("flaky upstream")
        return 2

    @fs.asset
    def report(model: int) -> str:
        return f"model {model}"

    name = f"late_{uuid.uuid4().hex[:8]}"
    p = fs.Pipeline(name, [trade, model, report], store=store, io_managers={"default": io})
    try:
        run = p.run("trade")
        [pending] = p.approvals()
        time.sleep(0.5)
        with pytest.raises(fs.ApprovalError, match="expired"):
            p.approve(pending.id, by="late@example.com")
        assert p.result(run.run_id).status == "failed"
        assert store.get_approval(pending.id).status == "expired"  # type: ignore[union-attr]

        failed = p.run("report")
        first = store.find_materialization(name, "model", "", run_id=failed.run_id)
        assert failed.status == "failed" and first is not None
        fail["now"] = False
        assert p.resume(failed.run_id).status == "succeeded"
        again = store.find_materialization(name, "model", "", run_id=failed.run_id)
        rep = store.find_materialization(name, "report", "", run_id=failed.run_id)
        assert again is not None and again.id == first.id and again.state == "succeeded"
        assert rep is not None and [m.id for m in store.upstream(rep.id)] == [first.id]
    finally:
        p.close()

    tokens: list[str] = []
    g = _pipeline(parts, tokens, [])
    try:
        gated = g.run("indexed", "d", wait=False)
        g.cancel(gated.run_id)
        gate = g.store.find_gate(gated.run_id, "embedded", "d")
        assert gate is not None and gate.status == "cancelled"
        g.resume(gated.run_id)
        with pytest.raises(fs.SignalError, match="cancelled"):
            g.signal(tokens[0], 1)
        assert g.signal(tokens[1], 3).status == "succeeded"
    finally:
        g.close()
