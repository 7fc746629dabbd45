"""The :class:`~flowstone.protocols.RunStore` contract suite every run store must pass.

Subclass :class:`RunStoreContract` in a test module (the subclass name must start with
``Test`` so pytest collects it) and implement the hook ``make_store(self, tmp_path)``
returning a fresh, empty-or-shared store; the suite closes it after each test::

    from flowstone.testing.store_contract import RunStoreContract
    from flowstone_io_postgres import PostgresRunStore

    class TestPostgresRunStore(RunStoreContract):
        def make_store(self, tmp_path):
            return PostgresRunStore("postgresql://postgres@127.0.0.1/flowstone_test")

If building the store needs other fixtures, override the ``store`` fixture instead.

The suite uses only the protocol, and unique run ids, pipeline names, cursor and tick
names in every test, so it also passes against a database shared between tests and
between runs of the suite. Importing this module needs pytest (a test dependency only).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from flowstone.errors import (
    ApprovalError,
    RunNotFoundError,
    SignalError,
    StorageError,
    UsageError,
)
from flowstone.protocols import RunStore
from flowstone.records import (
    Approval,
    Continuation,
    Gate,
    ItemResult,
    MaterializationRecord,
    RunRecord,
    StepOutcome,
    StepRecord,
    StepSpec,
    StepTransition,
)

__all__ = ["RunStoreContract"]

T = TypeVar("T")
REPETITIONS = 20
THREADS = 8
DAY = "2024-03-01"


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _now() -> datetime:
    return datetime.now(UTC)


def _diamond(partition: str = DAY) -> list[StepSpec]:
    """orders -> (clean, enrich) -> report"""
    return [
        StepSpec("orders", partition),
        StepSpec("clean", partition, deps=(("orders", partition),)),
        StepSpec("enrich", partition, deps=(("orders", partition),)),
        StepSpec("report", partition, deps=(("clean", partition), ("enrich", partition))),
    ]


def _create(
    store: RunStore,
    steps: Sequence[StepSpec],
    *,
    pipeline: str | None = None,
    created_at: datetime | None = None,
) -> tuple[RunRecord, tuple[StepRecord, ...]]:
    at = created_at or _now()
    run = RunRecord(
        run_id=_uid("run"),
        pipeline=pipeline or _uid("sales"),
        targets=(steps[-1].asset,) if steps else (),
        partition=DAY,
        status="running",
        created_at=at,
        updated_at=at,
        tags={"team": "finance"},
    )
    return run, store.create_run(run, steps)


def _mat(
    run: RunRecord,
    asset: str,
    *,
    state: Any = "succeeded",
    upstream: Sequence[str] = (),
    finished_at: datetime | None = None,
    metadata: dict[str, Any] | None = None,
) -> MaterializationRecord:
    return MaterializationRecord(
        id=_uid("mat"),
        pipeline=run.pipeline,
        run_id=run.run_id,
        asset=asset,
        partition=run.partition,
        state=state,
        io_manager="fs",
        location=f"/data/{run.pipeline}/{asset}/{run.run_id}.json",
        started_at=_now(),
        finished_at=finished_at or _now(),
        upstream=tuple(upstream),
        metadata=metadata if metadata is not None else {"rows": 1200},
    )


def _succeed(
    store: RunStore, run: RunRecord, asset: str, upstream: Sequence[str] = ()
) -> StepTransition:
    assert store.claim_step(run.run_id, asset, DAY, owner="w1", lease_seconds=60) is not None
    return store.finish_step(
        run.run_id, asset, DAY, StepOutcome("succeeded", _mat(run, asset, upstream=upstream))
    )


def _all_at_once(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run the calls in threads released together by a barrier; re-raise any failure."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _approval(run: RunRecord, asset: str, expires_at: datetime | None = None) -> Approval:
    return Approval(
        id=0,
        pipeline=run.pipeline,
        run_id=run.run_id,
        asset=asset,
        partition=DAY,
        message="trade above 1M EUR needs sign-off",
        status="pending",
        created_at=_now(),
        expires_at=expires_at,
        io_manager="fs",
        location=f"/data/{asset}.json",
        metadata={"amount": 1_250_000},
    )


def _gate(run: RunRecord, asset: str, expires_at: datetime | None = None) -> Gate:
    return Gate(
        token_hash=uuid.uuid4().hex + uuid.uuid4().hex,
        pipeline=run.pipeline,
        run_id=run.run_id,
        asset=asset,
        partition=DAY,
        status="pending",
        created_at=_now(),
        expires_at=expires_at,
        metadata={"job": "embed-42"},
    )


class RunStoreContract:
    """Behaviour every run store must have. Subclass and implement :meth:`make_store`."""

    def make_store(self, tmp_path: Path) -> RunStore:
        """Return the store under test (the hook subclasses implement)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement make_store(self, tmp_path) -> RunStore"
        )

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[RunStore]:
        created = self.make_store(tmp_path)
        yield created
        created.close()

    # --- runs and plans ------------------------------------------------------------------
    def test_store_is_named_and_reachable(self, store: RunStore) -> None:
        assert isinstance(store.name, str) and store.name
        store.ping()

    def test_create_run_returns_roots_and_records_the_plan(self, store: RunStore) -> None:
        run, ready = _create(store, _diamond())
        assert [(s.asset, s.state, s.remaining_deps) for s in ready] == [("orders", "ready", 0)]
        steps = {s.asset: s for s in store.list_steps(run.run_id)}
        assert [s.asset for s in store.list_steps(run.run_id)] == [
            "orders",
            "clean",
            "enrich",
            "report",
        ]
        assert (steps["clean"].state, steps["clean"].remaining_deps) == ("pending", 1)
        assert (steps["report"].state, steps["report"].remaining_deps) == ("pending", 2)
        saved = store.get_run(run.run_id)
        assert saved is not None
        assert (saved.status, saved.targets, saved.tags) == (
            "running",
            ("report",),
            {"team": "finance"},
        )
        assert saved.created_at.tzinfo is not None and saved.created_at.utcoffset() == timedelta(0)
        assert [e.kind for e in store.list_audit(run.run_id)] == ["run_created"]

    def test_reused_steps_count_as_satisfied(self, store: RunStore) -> None:
        old, _ = _create(store, [StepSpec("orders", DAY)])
        first = _succeed(store, old, "orders")
        assert first.run_status == "succeeded"
        reused = store.find_materialization(old.pipeline, "orders", DAY)
        assert reused is not None
        plan = [
            StepSpec("orders", DAY, state="succeeded", reused_materialization_id=reused.id),
            StepSpec("clean", DAY, deps=(("orders", DAY),)),
        ]
        run, ready = _create(store, plan, pipeline=old.pipeline)
        assert [(s.asset, s.remaining_deps) for s in ready] == [("clean", 0)]
        orders = store.get_step(run.run_id, "orders", DAY)
        assert orders is not None
        assert (orders.state, orders.materialization_id) == ("succeeded", reused.id)

    def test_run_with_nothing_to_do_succeeds_at_once(self, store: RunStore) -> None:
        plan = [StepSpec("orders", DAY, state="succeeded", reused_materialization_id="m-old")]
        run, ready = _create(store, plan)
        saved = store.get_run(run.run_id)
        assert ready == () and saved is not None and saved.status == "succeeded"

    def test_bad_plans_and_duplicate_runs_are_rejected(self, store: RunStore) -> None:
        bad = [StepSpec("clean", DAY, deps=(("orders", DAY),))]
        with pytest.raises((UsageError, StorageError), match="orders"):
            run, _ = _create(store, bad)
        run, _ = _create(store, _diamond())
        with pytest.raises(StorageError, match=run.run_id):
            store.create_run(run, _diamond())
        assert len(store.list_steps(run.run_id)) == 4

    def test_list_runs_filters_and_orders_newest_first(self, store: RunStore) -> None:
        pipeline, base = _uid("sales"), _now()
        runs = [
            _create(
                store,
                [StepSpec("orders", DAY)],
                pipeline=pipeline,
                created_at=base + timedelta(minutes=i),
            )[0]
            for i in range(3)
        ]
        _create(store, [StepSpec("orders", DAY)])  # another pipeline
        store.set_run_status(runs[0].run_id, "failed", error="disk full")
        listed = store.list_runs(pipeline=pipeline)
        assert [r.run_id for r in listed] == [r.run_id for r in reversed(runs)]
        assert [r.run_id for r in store.list_runs(pipeline=pipeline, limit=2)] == [
            runs[2].run_id,
            runs[1].run_id,
        ]
        failed = store.list_runs(pipeline=pipeline, status="failed")
        assert [(r.run_id, r.error) for r in failed] == [(runs[0].run_id, "disk full")]
        assert all(r.status == "failed" for r in store.list_runs(status="failed"))

    def test_get_runs_if_offered_matches_get_run(self, store: RunStore) -> None:
        """``get_runs`` is optional; a store that offers it must agree with ``get_run``."""
        get_runs = getattr(store, "get_runs", None)
        if get_runs is None:
            pytest.skip(f"{type(store).__name__} has no get_runs (optional)")
        runs = [_create(store, [StepSpec("orders", DAY)])[0] for _ in range(3)]
        store.set_run_status(runs[1].run_id, "failed", error="disk full")
        ids = [runs[2].run_id, "no-such-run", runs[0].run_id, runs[1].run_id, runs[2].run_id]
        got = {r.run_id: r for r in get_runs(ids)}
        assert sorted(got) == sorted(r.run_id for r in runs)  # unknown left out, no repeats
        for run in runs:
            assert got[run.run_id] == store.get_run(run.run_id)
        assert got[runs[1].run_id].error == "disk full"
        assert get_runs([]) == []

    def test_unknown_runs(self, store: RunStore) -> None:
        assert store.get_run("no-such-run") is None
        assert store.list_steps("no-such-run") == []
        with pytest.raises(RunNotFoundError):
            store.set_run_status("no-such-run", "failed")
        with pytest.raises(RunNotFoundError):
            store.cancel_run("no-such-run")

    # --- claiming -------------------------------------------------------------------------
    def test_claim_moves_ready_to_running_with_a_lease(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        assert store.claim_step(run.run_id, "clean", DAY, owner="w1", lease_seconds=60) is None
        before = _now()
        step = store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60)
        assert step is not None
        assert (step.state, step.attempt, step.owner) == ("running", 1, "w1")
        assert step.lease_expires_at is not None
        assert step.lease_expires_at >= before + timedelta(seconds=59)
        # a live lease keeps others out
        assert store.claim_step(run.run_id, "orders", DAY, owner="w2", lease_seconds=60) is None

    def test_claim_is_exclusive_across_threads(self, store: RunStore) -> None:
        for _ in range(REPETITIONS):
            run, _ = _create(store, [StepSpec("orders", DAY)])
            claims = _all_at_once(
                [
                    partial(
                        store.claim_step, run.run_id, "orders", DAY, owner=f"w{i}", lease_seconds=60
                    )
                    for i in range(THREADS)
                ]
            )
            won = [c for c in claims if c is not None]
            assert len(won) == 1 and won[0].attempt == 1

    def test_expired_lease_is_reclaimed_and_old_owner_loses_it(self, store: RunStore) -> None:
        run, _ = _create(store, [StepSpec("orders", DAY)])
        # a lease of 0 s is expired as soon as it is granted
        assert store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=0) is not None
        again = store.claim_step(run.run_id, "orders", DAY, owner="w2", lease_seconds=60)
        assert again is not None and (again.attempt, again.owner) == (2, "w2")
        assert not store.renew_lease(run.run_id, "orders", DAY, owner="w1", lease_seconds=60)
        assert store.renew_lease(run.run_id, "orders", DAY, owner="w2", lease_seconds=120)
        renewed = store.get_step(run.run_id, "orders", DAY)
        assert renewed is not None and renewed.lease_expires_at is not None
        assert again.lease_expires_at is not None
        assert renewed.lease_expires_at > again.lease_expires_at

    def test_retry_step_waits_for_not_before(self, store: RunStore) -> None:
        run, _ = _create(store, [StepSpec("orders", DAY), StepSpec("refunds", DAY)])
        assert not store.retry_step(run.run_id, "orders", DAY, not_before=_now(), error="x")
        later = _now() + timedelta(hours=1)
        for asset, not_before in (("orders", later), ("refunds", _now() - timedelta(seconds=1))):
            store.claim_step(run.run_id, asset, DAY, owner="w1", lease_seconds=60)
            assert store.retry_step(
                run.run_id, asset, DAY, not_before=not_before, error="HTTP 503 from the API"
            )
        step = store.get_step(run.run_id, "orders", DAY)
        assert step is not None
        assert (step.state, step.error, step.not_before) == (
            "ready",
            "HTTP 503 from the API",
            later,
        )
        assert store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60) is None
        retried = store.claim_step(run.run_id, "refunds", DAY, owner="w2", lease_seconds=60)
        assert retried is not None and retried.attempt == 2

    # --- finishing ------------------------------------------------------------------------
    def test_finish_releases_dependents_and_settles_the_run(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        first = _succeed(store, run, "orders")
        assert first.applied and first.run_status is None
        assert sorted(s.asset for s in first.ready) == ["clean", "enrich"]
        assert all(s.state == "ready" and s.remaining_deps == 0 for s in first.ready)
        assert _succeed(store, run, "clean").ready == ()
        joined = _succeed(store, run, "enrich")
        assert [s.asset for s in joined.ready] == ["report"]
        last = _succeed(store, run, "report")
        assert (last.ready, last.run_status) == ((), "succeeded")
        saved = store.get_run(run.run_id)
        assert saved is not None and saved.status == "succeeded"
        kinds = [e.kind for e in store.list_audit(run.run_id)]
        assert kinds.count("step_succeeded") == 4 and kinds[0] == "run_created"

    def test_finish_from_ready_without_running(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        skipped = store.finish_step(
            run.run_id, "orders", DAY, StepOutcome("skipped", _mat(run, "orders", state="skipped"))
        )
        assert skipped.applied and len(skipped.ready) == 2

    def test_join_is_released_exactly_once_under_concurrency(self, store: RunStore) -> None:
        for _ in range(REPETITIONS):
            middles = [f"region_{i}" for i in range(THREADS)]
            plan = [StepSpec("orders", DAY)]
            plan += [StepSpec(m, DAY, deps=(("orders", DAY),)) for m in middles]
            plan.append(StepSpec("report", DAY, deps=tuple((m, DAY) for m in middles)))
            run, _ = _create(store, plan)
            _succeed(store, run, "orders")
            for m in middles:
                store.claim_step(run.run_id, m, DAY, owner="w", lease_seconds=60)
            # every completion delivered twice at once, as a redelivering broker would
            outcomes = [StepOutcome("succeeded", _mat(run, m)) for m in middles]
            results = _all_at_once(
                [
                    partial(store.finish_step, run.run_id, m, DAY, o)
                    for m, o in zip(middles * 2, outcomes * 2, strict=True)
                ]
            )
            assert sum(r.applied for r in results) == THREADS
            released = [s.asset for r in results for s in r.ready]
            assert released == ["report"]
            report = store.get_step(run.run_id, "report", DAY)
            assert report is not None and (report.state, report.remaining_deps) == ("ready", 0)

    def test_diamond_join_from_two_threads(self, store: RunStore) -> None:
        for _ in range(REPETITIONS):
            run, _ = _create(store, _diamond())
            _succeed(store, run, "orders")
            for asset in ("clean", "enrich"):
                store.claim_step(run.run_id, asset, DAY, owner="w", lease_seconds=60)
            results = _all_at_once(
                [
                    partial(
                        store.finish_step,
                        run.run_id,
                        a,
                        DAY,
                        StepOutcome("succeeded", _mat(run, a)),
                    )
                    for a in ("clean", "enrich")
                ]
            )
            assert [s.asset for r in results for s in r.ready] == ["report"]

    def test_finish_claims_the_continuation_it_asks_for(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        before = _now()
        store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60)
        done = store.finish_step(
            run.run_id, "orders", DAY, StepOutcome("succeeded", _mat(run, "orders")),
            then=Continuation("w1", 60),
        )
        claimed = done.claimed
        assert claimed is not None
        assert (claimed.asset, claimed.state, claimed.owner, claimed.attempt) == (
            "clean", "running", "w1", 1)
        assert claimed.lease_expires_at is not None and claimed.lease_expires_at > before
        assert [s.asset for s in done.ready] == ["enrich"]
        assert store.claim_step(run.run_id, "clean", DAY, owner="w2", lease_seconds=60) is None
        stored = store.get_step(run.run_id, "clean", DAY)
        assert stored is not None and (stored.state, stored.owner) == ("running", "w1")
        # nothing became ready: nothing claimed
        store.claim_step(run.run_id, "enrich", DAY, owner="w2", lease_seconds=60)
        waiting = store.finish_step(
            run.run_id, "enrich", DAY, StepOutcome("succeeded", _mat(run, "enrich")),
            then=Continuation("w2", 60),
        )
        assert waiting.applied and waiting.claimed is None and waiting.ready == ()
        last = store.finish_step(
            run.run_id, "clean", DAY, StepOutcome("succeeded", _mat(run, "clean")),
            then=Continuation("w1", 60),
        )
        assert last.claimed is not None and last.claimed.asset == "report" and last.ready == ()
        final = store.finish_step(
            run.run_id, "report", DAY, StepOutcome("succeeded", _mat(run, "report")),
            then=Continuation("w1", 60),
        )
        assert final.claimed is None and final.run_status == "succeeded"

    def test_a_join_is_claimed_by_exactly_one_racing_finisher(self, store: RunStore) -> None:
        for _ in range(REPETITIONS):
            run, _ = _create(store, _diamond())
            _succeed(store, run, "orders")
            for asset in ("clean", "enrich"):
                store.claim_step(run.run_id, asset, DAY, owner=asset, lease_seconds=60)
            transitions = _all_at_once([
                partial(
                    store.finish_step, run.run_id, asset, DAY,
                    StepOutcome("succeeded", _mat(run, asset)), then=Continuation(asset, 60),
                )
                for asset in ("clean", "enrich")
            ])
            claims = [t.claimed for t in transitions if t.claimed is not None]
            assert len(claims) == 1 and claims[0].asset == "report"
            assert all(t.ready == () for t in transitions)
            report = store.get_step(run.run_id, "report", DAY)
            assert report is not None and report.state == "running"
            assert report.owner == claims[0].owner and report.attempt == 1

    def test_a_cancelled_run_hands_out_no_continuation(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60)
        assert store.cancel_run(run.run_id)
        late = store.finish_step(
            run.run_id, "orders", DAY, StepOutcome("succeeded", _mat(run, "orders")),
            then=Continuation("w1", 60),
        )
        assert not late.applied and late.claimed is None and late.ready == ()
        assert {s.state for s in store.list_steps(run.run_id)} == {"cancelled"}

    def test_redelivered_finish_changes_nothing(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        _succeed(store, run, "orders")
        audit = store.list_audit(run.run_id)
        step = store.get_step(run.run_id, "orders", DAY)
        again = store.finish_step(
            run.run_id, "orders", DAY, StepOutcome("failed", _mat(run, "orders", state="failed"))
        )
        assert again == StepTransition(applied=False)
        assert store.get_step(run.run_id, "orders", DAY) == step
        found = store.find_materialization(run.pipeline, "orders", DAY, run_id=run.run_id)
        assert found is not None and found.state == "succeeded"
        assert store.list_audit(run.run_id) == audit

    def test_finish_rejects_unknown_and_unreleased_steps(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        with pytest.raises(StorageError, match="no_such_asset"):
            store.finish_step(run.run_id, "no_such_asset", DAY, StepOutcome("succeeded"))
        with pytest.raises(UsageError, match="pending"):
            store.finish_step(run.run_id, "report", DAY, StepOutcome("succeeded"))
        with pytest.raises(UsageError):
            store.finish_step(run.run_id, "orders", DAY, StepOutcome("waiting"))

    def test_unencodable_metadata_is_rejected_and_nothing_written(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60)
        bad = _mat(run, "orders", metadata={"schema": object()})
        with pytest.raises(StorageError, match="metadata"):
            store.finish_step(run.run_id, "orders", DAY, StepOutcome("succeeded", bad))
        step = store.get_step(run.run_id, "orders", DAY)
        assert step is not None and step.state == "running"
        assert store.find_materialization(run.pipeline, "orders", DAY, run_id=run.run_id) is None

    def test_run_status_failed_after_failure_propagates(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60)
        failed = store.finish_step(
            run.run_id,
            "orders",
            DAY,
            StepOutcome("failed", _mat(run, "orders", state="failed"), error="ValueError: bad row"),
        )
        # the store releases dependents of any terminal step; the engine decides their fate
        assert sorted(s.asset for s in failed.ready) == ["clean", "enrich"]
        assert failed.run_status is None
        store.finish_step(run.run_id, "clean", DAY, StepOutcome("upstream_failed"))
        last = store.finish_step(run.run_id, "enrich", DAY, StepOutcome("upstream_failed"))
        assert [s.asset for s in last.ready] == ["report"]
        end = store.finish_step(run.run_id, "report", DAY, StepOutcome("upstream_failed"))
        assert end.run_status == "failed"
        orders = store.get_step(run.run_id, "orders", DAY)
        assert orders is not None and orders.error == "ValueError: bad row"

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
        assert len(due) == 1 and due[0].expires_at == expires
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
        assert [g.token_hash for g in store.due_gates(expires) if g.run_id == run.run_id] == [
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
        assert [(m.id, m.state) for m in records] == [(final.id, "succeeded")]
        step = store.get_step(run.run_id, "trade", DAY)
        assert step is not None and step.materialization_id == final.id

    # --- cancel / reopen / sweep -------------------------------------------------------------
    def test_cancel_run(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60)
        assert store.cancel_run(run.run_id)
        assert {s.state for s in store.list_steps(run.run_id)} == {"cancelled"}
        saved = store.get_run(run.run_id)
        assert saved is not None and saved.status == "cancelled"
        assert not store.cancel_run(run.run_id)
        late = store.finish_step(
            run.run_id, "orders", DAY, StepOutcome("succeeded", _mat(run, "orders"))
        )
        assert not late.applied
        assert store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60) is None

    def test_reopen_failed_run(self, store: RunStore) -> None:
        run, _ = _create(store, _diamond())
        _succeed(store, run, "orders")
        store.claim_step(run.run_id, "clean", DAY, owner="w1", lease_seconds=60)
        store.finish_step(run.run_id, "clean", DAY, StepOutcome("failed", error="boom"))
        _succeed(store, run, "enrich")
        end = store.finish_step(run.run_id, "report", DAY, StepOutcome("upstream_failed"))
        assert end.run_status == "failed"
        assert store.reopen_run(_create(store, _diamond())[0].run_id) == ()  # still running
        ready = store.reopen_run(run.run_id)
        assert [(s.asset, s.state, s.attempt, s.error) for s in ready] == [
            ("clean", "ready", 0, None)
        ]
        report = store.get_step(run.run_id, "report", DAY)
        assert report is not None and (report.state, report.remaining_deps) == ("pending", 1)
        saved = store.get_run(run.run_id)
        assert saved is not None and saved.status == "running"
        assert _succeed(store, run, "clean").ready[0].asset == "report"
        assert _succeed(store, run, "report").run_status == "succeeded"

    def test_stale_steps(self, store: RunStore) -> None:
        run, _ = _create(store, [StepSpec("orders", DAY), StepSpec("refunds", DAY)])
        store.claim_step(run.run_id, "refunds", DAY, owner="w1", lease_seconds=0)
        cancelled, _ = _create(store, [StepSpec("orders", DAY)])
        store.cancel_run(cancelled.run_id)
        later = _now() + timedelta(hours=1)

        def mine(found: list[StepRecord]) -> list[str]:
            return sorted(s.asset for s in found if s.run_id in (run.run_id, cancelled.run_id))

        assert mine(store.stale_steps(later, ready_for_seconds=60)) == ["orders", "refunds"]
        assert mine(store.stale_steps(_now(), ready_for_seconds=3600)) == ["refunds"]
        store.claim_step(run.run_id, "refunds", DAY, owner="w2", lease_seconds=7200)
        assert mine(store.stale_steps(later, ready_for_seconds=60)) == ["orders"]

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


def _try(call: Callable[[], T], error: type[BaseException]) -> T | None:
    try:
        return call()
    except error:
        return None
