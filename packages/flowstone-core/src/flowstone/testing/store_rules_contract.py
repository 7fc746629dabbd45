"""Contract tests for the rules of :mod:`flowstone.store_rules` and the roles added with them.

:class:`StoreRulesContract` is a base of :class:`~flowstone.testing.store_contract.
RunStoreContract`, so every store's suite runs it; it pins the places where the memory,
SQLite and Postgres stores once drifted apart (an approval on a non-waiting outcome was
dropped by one and refused by the others; audit entries, error types, naive datetimes and
the reported run status differed), the fencing of a claim (a stale runner can neither renew
nor commit) and the pipeline a claim must belong to, plus step notes and the default IO
manager.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial

import pytest

from flowstone.errors import ApprovalError, SignalError, StorageError, UsageError
from flowstone.protocols import Closeable, ContinuationReads, IOManager, RunStore, StorageKey
from flowstone.records import Continuation, Fence, StepOutcome, StepSpec
from flowstone.testing._store_helpers import (
    DAY,
    THREADS,
    _all_at_once,
    _approval,
    _create,
    _diamond,
    _gate,
    _mat,
    _now,
    _succeed,
    _uid,
)

__all__ = ["StoreRulesContract"]


_STATUS_KINDS = frozenset({"run_running", "run_waiting", "run_succeeded", "run_failed"})


def _kinds(store: RunStore, run_id: str) -> list[str]:
    return [e.kind for e in store.list_audit(run_id)]


class StoreRulesContract:
    """The rules every run store applies the same way (mixed into ``RunStoreContract``)."""

    # --- outcomes -------------------------------------------------------------------------
    def test_an_approval_or_gate_on_a_non_waiting_outcome_is_refused(
        self, store: RunStore
    ) -> None:
        run, _ = _create(store, _diamond())
        store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60)
        for outcome in (
            StepOutcome("succeeded", _mat(run, "orders"), approval=_approval(run, "orders")),
            StepOutcome("failed", error="x", gate=_gate(run, "orders")),
        ):
            with pytest.raises(UsageError, match="waiting"):
                store.finish_step(run.run_id, "orders", DAY, outcome)
        step = store.get_step(run.run_id, "orders", DAY)
        assert step is not None and step.state == "running"
        assert store.find_approval(run.run_id, "orders", DAY) is None
        assert store.find_materialization(run.pipeline, "orders", DAY, run_id=run.run_id) is None
        assert _kinds(store, run.run_id) == ["run_created"]

    def test_waiting_records_are_bound_to_the_step_and_pending(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        other = _uid("run")
        approval = replace(_approval(run, "orders"), run_id=other, asset="x", status="approved")
        store.finish_step(run.run_id, "orders", DAY, StepOutcome("waiting", approval=approval))
        saved = store.find_approval(run.run_id, "orders", DAY)
        assert saved is not None and (saved.run_id, saved.asset, saved.status) == (
            run.run_id, "orders", "pending")  # fmt: skip
        gate = replace(_gate(run, "clean"), run_id=other, status="signaled")
        store.finish_step(run.run_id, "orders", DAY, StepOutcome("succeeded", _mat(run, "orders")))
        store.finish_step(run.run_id, "clean", DAY, StepOutcome("waiting", gate=gate))
        found = store.get_gate(gate.token_hash)
        assert found is not None and (found.run_id, found.asset, found.status) == (
            run.run_id, "clean", "pending")  # fmt: skip

    def test_an_upstream_listed_twice_is_recorded_once(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60)
        stale = replace(_mat(run, "orders"), invalidated=True)  # only invalidate() does that
        store.finish_step(run.run_id, "orders", DAY, StepOutcome("succeeded", stale))
        up = store.find_materialization(run.pipeline, "orders", DAY)
        assert up is not None and up.id == stale.id and not up.invalidated
        _succeed(store, run, "clean", [up.id, up.id])
        clean = store.find_materialization(run.pipeline, "clean", DAY, run_id=run.run_id)
        assert clean is not None and clean.upstream == (up.id,)
        assert [m.asset for m in store.downstream(up.id)] == ["clean"]

    def test_the_newest_record_is_the_last_written(self, store: RunStore) -> None:
        """Not the latest ``finished_at``: that is a worker's clock; the store's own order
        decides. A record written again (waiting -> succeeded) is the newest again, with
        the new content under the id it was first written with."""
        pipeline = _uid("sales")
        first, _ = _create(store, [StepSpec("trade", DAY)], pipeline=pipeline)
        waiting = _mat(first, "trade", state="waiting")
        store.finish_step(first.run_id, "trade", DAY, StepOutcome(
            "waiting", waiting, approval=_approval(first, "trade")))
        second, _ = _create(store, [StepSpec("trade", DAY)], pipeline=pipeline)
        _succeed(store, second, "trade")
        behind = _now() - timedelta(hours=1)  # a skewed worker clock
        done = _mat(first, "trade", finished_at=behind)
        store.finish_step(first.run_id, "trade", DAY, StepOutcome("succeeded", done))
        newest = store.find_materialization(pipeline, "trade", DAY)
        assert newest is not None and newest.id == waiting.id
        assert newest.state == "succeeded" and newest.finished_at == done.finished_at
        step = store.get_step(first.run_id, "trade", DAY)
        assert step is not None and step.materialization_id == waiting.id
        listed = store.list_materializations(pipeline, asset="trade")
        assert [m.run_id for m in listed] == [first.run_id, second.run_id]

    def test_finish_errors_say_what_to_do(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        with pytest.raises(UsageError, match="only ready, running or waiting"):
            store.finish_step(run.run_id, "report", DAY, StepOutcome("succeeded"))
        with pytest.raises(StorageError, match="part of the run's plan"):
            store.finish_step(run.run_id, "nope", DAY, StepOutcome("succeeded"))

    def test_what_a_step_keeps_after_each_transition(self, store: RunStore) -> None:
        """A claim clears ``not_before`` (it has been honoured); finishing and cancelling
        clear the owner and the lease (nobody holds the step any more)."""
        run, _ = _create(store, _diamond())
        store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60)
        store.retry_step(run.run_id, "orders", DAY, delay_seconds=0, error="HTTP 503")
        claimed = store.claim_step(run.run_id, "orders", DAY, owner="w2", lease_seconds=60)
        assert claimed is not None and claimed.not_before is None
        # what the claim reported (queued_s, took_over) is not kept with the step
        kept = replace(claimed, queued_s=None, took_over=False)
        assert store.get_step(run.run_id, "orders", DAY) == kept
        store.finish_step(run.run_id, "orders", DAY, StepOutcome("succeeded", _mat(run, "orders")))
        done = store.get_step(run.run_id, "orders", DAY)
        assert done is not None and (done.owner, done.lease_expires_at) == (None, None)
        store.claim_step(run.run_id, "clean", DAY, owner="w3", lease_seconds=60)
        store.cancel_run(run.run_id)
        cancelled = store.get_step(run.run_id, "clean", DAY)
        assert cancelled is not None and (cancelled.state, cancelled.owner) == ("cancelled", None)
        assert cancelled.lease_expires_at is None

    # --- plans ----------------------------------------------------------------------------
    def test_plan_rules(self, store: RunStore) -> None:
        twice = [StepSpec("orders", DAY), StepSpec("orders", DAY)]
        with pytest.raises(UsageError, match="twice"):
            _create(store, twice)
        old, _ = _create(store, [StepSpec("orders", DAY)])
        _succeed(store, old, "orders")
        reused = store.find_materialization(old.pipeline, "orders", DAY)
        assert reused is not None
        plan = [
            StepSpec("orders", DAY),
            # reused although its dep is recomputed: it waits for nothing
            StepSpec("clean", DAY, deps=(("orders", DAY),), state="succeeded",
                     reused_materialization_id=reused.id),
            StepSpec("report", DAY, deps=(("orders", DAY), ("orders", DAY), ("clean", DAY))),
        ]  # fmt: skip
        run, ready = _create(store, plan)
        assert [s.asset for s in ready] == ["orders"]
        steps = {s.asset: s for s in store.list_steps(run.run_id)}
        assert (steps["clean"].state, steps["clean"].remaining_deps) == ("succeeded", 0)
        assert (steps["report"].state, steps["report"].remaining_deps) == ("pending", 1)
        assert [s.asset for s in _succeed(store, run, "orders").ready] == ["report"]

    # --- the run status -------------------------------------------------------------------
    def test_run_status_is_reported_only_when_it_changes(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        _succeed(store, run, "orders")
        waits = StepOutcome("waiting", approval=_approval(run, "clean"))
        assert store.finish_step(run.run_id, "clean", DAY, waits).run_status is None  # running
        became = _succeed(store, run, "enrich")
        assert became.run_status == "waiting"
        saved = store.get_run(run.run_id)
        assert saved is not None and saved.status == "waiting"
        other, _ = _create(store, [StepSpec("a", DAY), StepSpec("b", DAY)])
        store.finish_step(other.run_id, "a", DAY, StepOutcome("waiting", gate=_gate(other, "a")))
        # "b" fails while "a" waits: running -> waiting (a failure does not end a waiting run)
        failed = store.finish_step(other.run_id, "b", DAY, StepOutcome("failed", error="boom"))
        assert failed.run_status == "waiting"
        done = store.finish_step(run.run_id, "clean", DAY, StepOutcome("succeeded"))
        assert done.run_status == "running" and [s.asset for s in done.ready] == ["report"]
        assert _succeed(store, run, "report").run_status == "succeeded"

    def test_waiting_unchanged_is_not_reported(self, store: RunStore) -> None:
        run, _ = _create(store, [StepSpec("a", DAY), StepSpec("b", DAY), StepSpec("c", DAY)])
        store.finish_step(run.run_id, "a", DAY, StepOutcome("waiting", gate=_gate(run, "a")))
        first = StepOutcome("waiting", gate=_gate(run, "b"))
        assert store.finish_step(run.run_id, "b", DAY, first).run_status is None  # "c" ready
        assert store.finish_step(run.run_id, "c", DAY, StepOutcome("skipped")).run_status == (
            "waiting"
        )
        assert store.finish_step(run.run_id, "b", DAY, StepOutcome("failed")).run_status is None
        saved = store.get_run(run.run_id)
        assert saved is not None and saved.status == "waiting"

    def test_a_cancelled_run_stays_cancelled_when_a_late_step_finishes(
        self, store: RunStore
    ) -> None:
        run, _ = _create(store, _diamond())
        store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60)
        store.set_run_status(run.run_id, "cancelled", error="stopped by hand")
        late = store.finish_step(
            run.run_id, "orders", DAY, StepOutcome("succeeded", _mat(run, "orders"))
        )
        assert late.applied and late.run_status is None
        saved = store.get_run(run.run_id)
        assert saved is not None and (saved.status, saved.error) == ("cancelled", "stopped by hand")
        assert store.claim_step(run.run_id, "clean", DAY, owner="w1", lease_seconds=60) is None

    def test_reopen_with_nothing_to_reopen_takes_the_status_of_its_steps(
        self, store: RunStore
    ) -> None:
        run, _ = _create(store, [StepSpec("orders", DAY)])
        _succeed(store, run, "orders")
        store.set_run_status(run.run_id, "failed", error="marked by hand")
        assert store.reopen_run(run.run_id) == ()
        saved = store.get_run(run.run_id)
        assert saved is not None and (saved.status, saved.error) == ("succeeded", None)

    # --- audit ----------------------------------------------------------------------------
    def test_every_transition_is_audited_alike(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60)
        retried = store.retry_step(run.run_id, "orders", DAY, delay_seconds=0, error="HTTP 503")
        assert retried is not None and retried.not_before is not None
        later = retried.not_before
        store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=0)
        mat = _mat(run, "orders")
        store.finish_step(run.run_id, "orders", DAY, StepOutcome("succeeded", mat))
        store.finish_step(
            run.run_id, "clean", DAY, StepOutcome("waiting", approval=_approval(run, "clean"))
        )
        approval = store.find_approval(run.run_id, "clean", DAY)
        assert approval is not None
        store.decide_approval(approval.id, "approved", by="alice", reason="ok")
        gate = _gate(run, "enrich")
        store.finish_step(run.run_id, "enrich", DAY, StepOutcome("waiting", gate=gate))
        store.consume_gate(gate.token_hash, payload={"ok": True}, status="signaled")
        assert store.cancel_run(run.run_id)
        store.reopen_run(run.run_id)
        # the run_<status> entries of finish_step's status changes are left out: the
        # Postgres store does not write them (yet)
        entries = [e for e in store.list_audit(run.run_id) if e.kind not in _STATUS_KINDS]
        assert [e.kind for e in entries] == [
            "run_created", "step_retry", "step_succeeded", "step_waiting", "approval_approved",
            "step_waiting", "gate_signaled", "run_cancelled", "run_reopened",
        ]  # fmt: skip
        by_kind = {e.kind: e for e in entries}
        assert by_kind["run_created"].detail["steps"] == 4
        retry = by_kind["step_retry"]
        assert (retry.asset, retry.detail["attempt"], retry.detail["error"]) == (
            "orders", 1, "HTTP 503")  # fmt: skip
        assert datetime.fromisoformat(retry.detail["not_before"]) == later
        assert by_kind["step_succeeded"].detail["materialization_id"] == mat.id
        assert by_kind["approval_approved"].detail == {
            "approval_id": approval.id, "by": "alice", "reason": "ok"}  # fmt: skip
        assert by_kind["gate_signaled"].asset == "enrich"
        assert by_kind["run_reopened"].detail == {"steps": 3}  # clean, enrich, report

    # --- waits ----------------------------------------------------------------------------
    def test_wait_errors_alike(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        with pytest.raises(ApprovalError, match="does not exist"):
            store.decide_approval(987_654_321, "approved")
        store.finish_step(
            run.run_id, "orders", DAY, StepOutcome("waiting", approval=_approval(run, "orders"))
        )
        approval = store.find_approval(run.run_id, "orders", DAY)
        assert approval is not None
        store.decide_approval(approval.id, "approved", by="alice")
        with pytest.raises(ApprovalError, match="already approved by alice"):
            store.decide_approval(approval.id, "rejected")
        with pytest.raises(SignalError, match="unknown signal token"):
            store.consume_gate("f" * 64, payload=None, status="signaled")

    def test_an_unencodable_signal_payload_leaves_the_gate_pending(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        gate = _gate(run, "orders")
        store.finish_step(run.run_id, "orders", DAY, StepOutcome("waiting", gate=gate))
        for bad in ({"at": _now()}, {"x": float("nan")}):
            with pytest.raises(StorageError, match="signal payload"):
                store.consume_gate(gate.token_hash, payload=bad, status="signaled")
        found = store.get_gate(gate.token_hash)
        assert found is not None and found.status == "pending"
        assert store.consume_gate(gate.token_hash, payload=[1], status="signaled").payload == [1]

    # --- times ----------------------------------------------------------------------------
    def test_naive_datetimes_are_refused(self, store: RunStore) -> None:
        naive = datetime(2024, 3, 1, 12, 0)
        run, _ = _create(store, [StepSpec("orders", DAY)])
        store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60)
        calls: list[Callable[[], object]] = [
            partial(store.stale_steps, naive, ready_for_seconds=60),
            partial(store.due_approvals, naive),
            partial(store.due_gates, naive),
            partial(store.prune_route_decisions, naive),
        ]
        calls.append(partial(_create, store, [StepSpec("orders", DAY)], created_at=naive))
        for call in calls:
            with pytest.raises(UsageError, match="timezone-aware"):
                call()
        step = store.get_step(run.run_id, "orders", DAY)
        assert step is not None and step.state == "running"

    def test_a_new_run_is_updated_when_written(self, store: RunStore) -> None:
        before = _now()
        run, _ = _create(store, [StepSpec("orders", DAY)], created_at=before - timedelta(days=1))
        saved = store.get_run(run.run_id)
        assert saved is not None and saved.created_at == run.created_at
        assert saved.updated_at >= before

    # --- fencing ----------------------------------------------------------------------------
    def test_a_stale_runner_can_neither_renew_nor_commit(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        a = store.claim_step(run.run_id, "orders", DAY, owner="wa", lease_seconds=0)
        assert a is not None and (a.owner, a.attempt) == ("wa", 1)
        b = store.claim_step(run.run_id, "orders", DAY, owner="wb", lease_seconds=60)
        assert b is not None and (b.owner, b.attempt) == ("wb", 2)  # A's lease expired
        renew = partial(store.renew_lease, run.run_id, "orders", DAY, lease_seconds=60)
        assert not renew(owner="wa", attempt=1)
        assert not renew(owner="wb", attempt=1)  # the attempt is checked, not only the owner
        assert renew(owner="wb", attempt=2)
        mine, theirs = _mat(run, "orders"), _mat(run, "orders")
        lost = store.finish_step(
            run.run_id, "orders", DAY, StepOutcome("succeeded", mine), fence=Fence("wa", 1)
        )
        assert not lost.applied and lost.ready == ()  # refused: nothing written, nothing ready
        step = store.get_step(run.run_id, "orders", DAY)
        assert step is not None and (step.state, step.owner, step.attempt) == ("running", "wb", 2)
        assert store.find_materialization(run.pipeline, "orders", DAY, run_id=run.run_id) is None
        assert "step_succeeded" not in _kinds(store, run.run_id)
        won = store.finish_step(
            run.run_id, "orders", DAY, StepOutcome("succeeded", theirs), fence=Fence("wb", 2)
        )
        assert won.applied and {r.asset for r in won.ready} == {"clean", "enrich"}
        saved = store.find_materialization(run.pipeline, "orders", DAY, run_id=run.run_id)
        assert saved is not None and (saved.id, saved.location) == (theirs.id, theirs.location)
        # once finished, no fence holds any more (a late duplicate changes nothing)
        again = StepOutcome("failed", _mat(run, "orders", state="failed"), error="late")
        assert not store.finish_step(run.run_id, "orders", DAY, again, fence=Fence("wb", 2)).applied
        assert not renew(owner="wb", attempt=2)

    def test_a_fence_refuses_a_released_step(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        store.claim_step(run.run_id, "orders", DAY, owner="wa", lease_seconds=60)
        store.retry_step(run.run_id, "orders", DAY, delay_seconds=0, error="retry")
        outcome = StepOutcome("succeeded", _mat(run, "orders"))
        stale = store.finish_step(run.run_id, "orders", DAY, outcome, fence=Fence("wa", 1))
        assert not stale.applied
        # without a fence (a resume path) the state alone decides, as before
        assert store.finish_step(run.run_id, "orders", DAY, outcome).applied

    def test_a_stale_runner_cannot_send_the_step_back(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        store.claim_step(run.run_id, "orders", DAY, owner="wa", lease_seconds=0)
        store.claim_step(run.run_id, "orders", DAY, owner="wb", lease_seconds=60)
        retry = partial(store.retry_step, run.run_id, "orders", DAY, delay_seconds=0)
        assert not retry(error="a's retry policy", fence=Fence("wa", 1))
        step = store.get_step(run.run_id, "orders", DAY)
        assert step is not None and (step.state, step.owner, step.attempt) == ("running", "wb", 2)
        assert "step_retry" not in _kinds(store, run.run_id)
        assert retry(error="b's retry policy", fence=Fence("wb", 2))
        step = store.get_step(run.run_id, "orders", DAY)
        assert step is not None and step.state == "ready"

    def test_a_stale_continuation_finish_is_fenced(self, store: RunStore) -> None:
        if not isinstance(store, ContinuationReads):
            pytest.skip("the store has no finish_step_reading (ContinuationReads)")
        run, _ = _create(store, _diamond())
        store.claim_step(run.run_id, "orders", DAY, owner="wa", lease_seconds=0)
        store.claim_step(run.run_id, "orders", DAY, owner="wb", lease_seconds=60)
        outcome = StepOutcome("succeeded", _mat(run, "orders"))
        then = Continuation("wa", 60)
        lost, reads = store.finish_step_reading(
            run.run_id, "orders", DAY, outcome, then=then, sources={}, fence=Fence("wa", 1)
        )
        assert not lost.applied and lost.claimed is None and reads is None
        clean = store.get_step(run.run_id, "clean", DAY)
        assert clean is not None and clean.state == "pending"

    def test_a_claim_for_another_pipeline_is_refused(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        claim = partial(store.claim_step, run.run_id, "orders", DAY, lease_seconds=60)
        assert claim(owner="billing", pipeline=_uid("billing")) is None
        step = store.get_step(run.run_id, "orders", DAY)
        assert step is not None and (step.state, step.attempt) == ("ready", 0)
        claimed = claim(owner="reports", pipeline=run.pipeline)
        assert claimed is not None and claimed.attempt == 1

    # --- step notes -----------------------------------------------------------------------
    def test_step_notes_are_written_once(self, store: RunStore) -> None:
        run_id = _uid("run")
        assert store.get_step_note(run_id, "enrich", "", "parallel.started") is None
        assert store.add_step_note(run_id, "enrich", "", "parallel.started", "t1") == "t1"
        assert store.add_step_note(run_id, "enrich", "", "parallel.started", "t2") == "t1"
        assert store.get_step_note(run_id, "enrich", "", "parallel.started") == "t1"
        # another kind, partition or asset is another note
        assert store.add_step_note(run_id, "enrich", "", "other", "o") == "o"
        assert store.add_step_note(run_id, "enrich", "a:b", "parallel.started", "p") == "p"
        assert store.get_step_note(run_id, "report", "", "parallel.started") is None
        with pytest.raises(UsageError, match="string"):
            store.add_step_note(run_id, "enrich", "", "bad", 42)  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="kind"):
            store.add_step_note(run_id, "enrich", "", "", "v")

    def test_racing_step_notes_agree_on_one(self, store: RunStore) -> None:
        run_id = _uid("run")
        add = store.add_step_note
        stood = _all_at_once(
            [partial(add, run_id, "join", DAY, "k", f"w{i}") for i in range(THREADS)]
        )
        assert len(set(stood)) == 1 and stood[0] == store.get_step_note(run_id, "join", DAY, "k")

    # --- the default IO manager -------------------------------------------------------------------
    def test_default_io_manager_keeps_values(self, store: RunStore) -> None:
        manager = store.default_io_manager()
        assert isinstance(manager, IOManager)
        key = StorageKey(_uid("sales"), "orders", DAY, _uid("run"))
        try:
            location = manager.store(key, {"rows": [1, 2, 3]})
            assert manager.load(location) == {"rows": [1, 2, 3]}
            assert manager.exists(location)
        finally:
            if isinstance(manager, Closeable):  # a pool of its own, say
                manager.close()
