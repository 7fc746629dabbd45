"""Contract tests for the record-keeping roles of a run store: waits (approvals, gates),
the materialization log and lineage, route decisions, ticks and cursors, the audit log and
scatter item results. A base of :class:`~flowstone.testing.store_contract.RunStoreContract`,
so every store's suite runs them."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

import pytest

from flowstone.errors import ApprovalError, SignalError, StorageError
from flowstone.protocols import RunStore
from flowstone.records import Approval, ItemResult, StepOutcome, StepSpec
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
    _try,
    _uid,
)

__all__ = ["StoreRecordsContract"]


class StoreRecordsContract:
    """What a store keeps beside runs and steps (mixed into ``RunStoreContract``)."""

    # --- approvals, gates ----------------------------------------------------------------
    def test_approval_flow(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        _succeed(store, run, "orders")
        store.claim_step(run.run_id, "clean", DAY, owner="w1", lease_seconds=60)
        waiting = store.finish_step(
            run.run_id, "clean", DAY, StepOutcome("waiting", approval=_approval(run, "clean"))
        )
        assert waiting.applied and waiting.ready == () and waiting.run_status is None
        approval = store.find_approval(run.run_id, "clean", DAY)
        assert approval is not None and approval.id > 0 and approval.status == "pending"
        assert approval.metadata == {"amount": 1_250_000}
        assert store.get_approval(approval.id) == approval
        assert [a.id for a in store.list_approvals(pipeline=run.pipeline, status="pending")] == [
            approval.id
        ]
        # a redelivered 'waiting' does not create a second approval
        again = StepOutcome("waiting", approval=_approval(run, "clean"))
        assert not store.finish_step(run.run_id, "clean", DAY, again).applied
        assert len(store.list_approvals(pipeline=run.pipeline)) == 1
        _succeed(store, run, "enrich")
        run_now = store.get_run(run.run_id)
        assert run_now is not None and run_now.status == "waiting"
        decided = store.decide_approval(approval.id, "approved", by="alice", reason="checked")
        assert (decided.status, decided.decided_by, decided.reason) == (
            "approved",
            "alice",
            "checked",
        )
        assert decided.decided_at is not None
        with pytest.raises(ApprovalError, match="approved"):
            store.decide_approval(approval.id, "rejected", by="bob")
        with pytest.raises(ApprovalError):
            store.decide_approval(approval.id + 10_000, "approved")
        done = store.finish_step(
            run.run_id, "clean", DAY, StepOutcome("succeeded", _mat(run, "clean"))
        )
        assert [s.asset for s in done.ready] == ["report"] and done.run_status == "running"
        assert store.list_approvals(pipeline=run.pipeline, status="pending") == []

    def test_approval_decided_once_across_threads(self, store: RunStore) -> None:
        run, _ = _create(store, [StepSpec("trade", DAY)])
        store.finish_step(
            run.run_id, "trade", DAY, StepOutcome("waiting", approval=_approval(run, "trade"))
        )
        approval = store.find_approval(run.run_id, "trade", DAY)
        assert approval is not None

        def decide(who: str) -> bool:
            try:
                store.decide_approval(approval.id, "approved", by=who)
            except ApprovalError:
                return False
            return True

        assert sum(_all_at_once([partial(decide, f"u{i}") for i in range(THREADS)])) == 1

    def test_due_approvals(self, store: RunStore) -> None:
        run, _ = _create(store, [StepSpec("trade", DAY)])
        expires = _now() + timedelta(hours=24)
        store.finish_step(
            run.run_id,
            "trade",
            DAY,
            StepOutcome("waiting", approval=_approval(run, "trade", expires)),
        )

        def mine(found: list[Approval]) -> list[Approval]:
            return [a for a in found if a.run_id == run.run_id]

        assert mine(store.due_approvals(_now())) == []
        due = mine(store.due_approvals(expires + timedelta(seconds=1)))
        # a shared store anchors the deadline at its own clock, keeping the duration
        assert len(due) == 1 and due[0].expires_at is not None
        assert abs(due[0].expires_at - expires) < timedelta(seconds=30)
        store.decide_approval(due[0].id, "expired")
        assert mine(store.due_approvals(expires + timedelta(days=1))) == []

    def test_gate_is_consumed_exactly_once(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60)
        expires = _now() + timedelta(hours=1)
        gate = _gate(run, "orders", expires)
        store.finish_step(run.run_id, "orders", DAY, StepOutcome("waiting", gate=gate))
        saved = store.get_gate(gate.token_hash)
        assert saved is not None and (saved.status, saved.run_id) == ("pending", run.run_id)
        run_now = store.get_run(run.run_id)
        assert run_now is not None and run_now.status == "waiting"
        later = expires + timedelta(seconds=30)  # a shared store anchors it at its clock
        assert [g.token_hash for g in store.due_gates(later) if g.run_id == run.run_id] == [
            gate.token_hash
        ]
        assert [g for g in store.due_gates(_now()) if g.run_id == run.run_id] == []
        payload = {"result": [1, 2, 3], "ok": True}
        consume = partial(store.consume_gate, gate.token_hash, payload=payload, status="signaled")
        results = _all_at_once([partial(_try, consume, SignalError)] * THREADS)
        used = [r for r in results if r is not None]
        assert len(used) == 1 and used[0].payload == payload and used[0].signaled_at is not None
        with pytest.raises(SignalError):
            store.consume_gate(gate.token_hash, payload=None, status="expired")
        with pytest.raises(SignalError):
            store.consume_gate("0" * 64, payload=None, status="signaled")
        done = store.finish_step(
            run.run_id, "orders", DAY, StepOutcome("succeeded", _mat(run, "orders"))
        )
        assert len(done.ready) == 2

    # --- materializations and lineage ----------------------------------------------------
    def test_find_materialization_latest_per_run_and_invalidate(self, store: RunStore) -> None:
        pipeline, base = _uid("sales"), _now()
        mats = []
        for i in range(2):
            run, _ = _create(store, [StepSpec("orders", DAY)], pipeline=pipeline)
            store.claim_step(run.run_id, "orders", DAY, owner="w", lease_seconds=60)
            mat = _mat(run, "orders", finished_at=base + timedelta(minutes=i))
            store.finish_step(run.run_id, "orders", DAY, StepOutcome("succeeded", mat))
            mats.append(mat)
        failed_run, _ = _create(store, [StepSpec("orders", DAY)], pipeline=pipeline)
        bad = _mat(failed_run, "orders", state="failed", finished_at=base + timedelta(hours=1))
        store.finish_step(failed_run.run_id, "orders", DAY, StepOutcome("failed", bad, error="x"))
        latest = store.find_materialization(pipeline, "orders", DAY)
        assert latest is not None and latest.id == mats[1].id
        assert latest.metadata == {"rows": 1200} and latest.location == mats[1].location
        per_run = store.find_materialization(pipeline, "orders", DAY, run_id=failed_run.run_id)
        assert per_run is not None and per_run.state == "failed"
        assert store.find_materialization(pipeline, "orders", "2024-03-02") is None
        listed = store.list_materializations(pipeline, asset="orders")
        assert [m.id for m in listed] == [bad.id, mats[1].id, mats[0].id]
        assert [m.id for m in store.list_materializations(pipeline, run_id=failed_run.run_id)] == [
            bad.id
        ]
        assert len(store.list_materializations(pipeline, limit=1)) == 1
        assert store.invalidate(pipeline, "orders", DAY) == 2
        assert store.invalidate(pipeline, "orders") == 0
        assert store.find_materialization(pipeline, "orders", DAY) is None
        got = store.get_materialization(mats[0].id)
        assert got is not None and got.invalidated

    def test_lineage_upstream_and_downstream(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        ids: dict[str, str] = {}
        for asset, ups in (
            ("orders", ()),
            ("clean", ("orders",)),
            ("enrich", ("orders",)),
            ("report", ("clean", "enrich")),
        ):
            _succeed(store, run, asset, [ids[u] for u in ups])
            found = store.find_materialization(run.pipeline, asset, DAY, run_id=run.run_id)
            assert found is not None
            ids[asset] = found.id
        report = store.get_materialization(ids["report"])
        assert report is not None and report.upstream == (ids["clean"], ids["enrich"])
        assert [m.asset for m in store.upstream(ids["report"])] == ["clean", "enrich"]
        assert sorted(m.asset for m in store.downstream(ids["orders"])) == ["clean", "enrich"]
        assert store.downstream(ids["report"]) == []
        step = store.get_step(run.run_id, "report", DAY)
        assert step is not None and step.materialization_id == ids["report"]

    def test_step_results_return_exactly_the_asked_steps_with_records(
        self, store: RunStore
    ) -> None:
        run, _ = _create(store, _diamond())
        other, _ = _create(store, _diamond())
        _succeed(store, run, "orders")
        _succeed(store, other, "orders")
        keys = [("orders", DAY), ("clean", DAY), ("report", DAY), ("orders", DAY)]
        got = store.get_step_results(run.run_id, [*keys, ("nope", DAY), ("orders", "2024-03-02")])
        assert sorted((s.asset, s.state, m is not None) for s, m in got) == [
            ("clean", "ready", False), ("orders", "succeeded", True), ("report", "pending", False)]
        assert {s.run_id for s, _ in got} == {run.run_id}
        (orders, mat), = ((s, m) for s, m in got if s.asset == "orders")
        assert mat is not None and mat.id == orders.materialization_id
        assert (mat.run_id, mat.asset, mat.state, mat.metadata) == (
            run.run_id, "orders", "succeeded", {"rows": 1200})
        assert mat == store.get_materialization(mat.id)
        assert store.get_step_results(run.run_id, []) == []
        assert store.get_step_results(_uid("run"), keys) == []
        many = [("orders", f"2024-01-{d:02d}") for d in range(1, 29)] * 20  # past SQL limits
        wide, _ = _create(store, [StepSpec(a, p) for a, p in dict.fromkeys(many)])
        assert len(store.get_step_results(wide.run_id, many)) == 28

    def test_materialization_upsert_keeps_one_record_per_step(self, store: RunStore) -> None:
        run, _ = _create(store, [StepSpec("trade", DAY)])
        first = _mat(run, "trade", state="waiting")
        store.finish_step(
            run.run_id,
            "trade",
            DAY,
            StepOutcome("waiting", first, approval=_approval(run, "trade")),
        )
        final = _mat(run, "trade")
        store.finish_step(run.run_id, "trade", DAY, StepOutcome("succeeded", final))
        records = store.list_materializations(run.pipeline, run_id=run.run_id)
        # the record keeps the id it was first written with (lineage and join records
        # that name it stay valid); its content is the last write's
        assert [(m.id, m.state) for m in records] == [(first.id, "succeeded")]
        assert records[0].finished_at == final.finished_at
        step = store.get_step(run.run_id, "trade", DAY)
        assert step is not None and step.materialization_id == first.id
        assert store.get_materialization(final.id) is None

    # --- routing, cursors, ticks -------------------------------------------------------------
    def test_route_decision_first_write_wins_and_prunes(self, store: RunStore) -> None:
        run_id = _uid("run")
        assert store.record_route_decision(run_id, "size", DAY, "small") == "small"
        assert store.record_route_decision(run_id, "size", DAY, "large") == "small"
        assert store.get_route_decision(run_id, "size", DAY) == "small"
        assert store.get_route_decision(run_id, "size", "2024-03-02") is None
        assert store.prune_route_decisions(_now() - timedelta(days=30)) >= 0
        assert store.get_route_decision(run_id, "size", DAY) == "small"
        assert store.prune_route_decisions(_now() + timedelta(seconds=1)) >= 1
        assert store.get_route_decision(run_id, "size", DAY) is None

    def test_old_ticks_are_pruned_by_prefix(self, store: RunStore) -> None:
        schedule, sweep = _uid("schedule:p:nightly"), _uid("celery-sweep:p")
        assert store.claim_tick(schedule, "2024-01-01T00:00:00+00:00")
        assert store.claim_tick(sweep, "100")
        assert store.prune_ticks(_now() - timedelta(hours=1), prefix=schedule) == 0
        assert store.prune_ticks(_now() + timedelta(seconds=1), prefix=schedule) == 1
        assert store.claim_tick(schedule, "2024-01-01T00:00:00+00:00")  # free again
        assert not store.claim_tick(sweep, "100")  # another prefix: untouched
        assert store.prune_ticks(_now() + timedelta(seconds=1), prefix=sweep + "x") == 0

    def test_cursor_compare_and_set(self, store: RunStore) -> None:
        name = _uid("sensor")
        assert store.get_cursor(name) is None
        assert store.set_cursor(name, "offset=10")
        assert not store.set_cursor(name, "offset=99")  # expected None, but one exists
        assert not store.set_cursor(name, "offset=20", expected="offset=5")
        assert store.set_cursor(name, "offset=20", expected="offset=10")
        assert store.get_cursor(name) == "offset=20"
        wins = _all_at_once(
            [
                partial(store.set_cursor, name, f"offset={30 + i}", expected="offset=20")
                for i in range(THREADS)
            ]
        )
        assert sum(wins) == 1

    def test_claim_tick_exactly_once(self, store: RunStore) -> None:
        name = _uid("schedule")
        for tick in ("2024-03-01T00:00:00+00:00", "2024-03-02T00:00:00+00:00"):
            claims = _all_at_once([partial(store.claim_tick, name, tick)] * THREADS)
            assert sum(claims) == 1
        assert not store.claim_tick(name, "2024-03-01T00:00:00+00:00")

    # --- audit and item results --------------------------------------------------------------
    def test_audit_entries_in_order(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        store.append_audit(run.run_id, "note", detail={"by": "alice", "n": [1, 2]})
        store.append_audit(run.run_id, "resource_built", asset="orders", partition=DAY)
        entries = store.list_audit(run.run_id)
        assert [e.kind for e in entries] == ["run_created", "note", "resource_built"]
        assert entries[1].detail == {"by": "alice", "n": [1, 2]}
        assert (entries[2].asset, entries[2].partition, entries[2].detail) == ("orders", DAY, {})
        assert [e.id for e in entries] == sorted(e.id for e in entries)
        assert all(e.at.utcoffset() == timedelta(0) for e in entries)
        with pytest.raises(StorageError, match="detail"):
            store.append_audit(run.run_id, "bad", detail={"when": _now()})

    def test_item_results_upsert_and_load_in_order(self, store: RunStore) -> None:
        run_id = _uid("run")
        store.save_item_results(
            run_id,
            "page",
            DAY,
            [
                ItemResult(2, "k2", "failed", error="timeout"),
                ItemResult(0, "k0", "succeeded", value_json='{"n": 0}'),
            ],
        )
        store.save_item_results(
            run_id,
            "page",
            DAY,
            [
                ItemResult(2, "k2", "succeeded", value_json='"ok"'),
                ItemResult(1, "k1", "succeeded", value_json="[1]"),
            ],
        )
        loaded = store.load_item_results(run_id, "page", DAY)
        assert loaded == [
            ItemResult(0, "k0", "succeeded", value_json='{"n": 0}'),
            ItemResult(1, "k1", "succeeded", value_json="[1]"),
            ItemResult(2, "k2", "succeeded", value_json='"ok"'),
        ]
        assert store.load_item_results(run_id, "page", "2024-03-02") == []
