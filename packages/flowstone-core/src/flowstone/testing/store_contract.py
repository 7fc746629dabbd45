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

Time-dependent rules (re-send backoff, queue waits) are tested without sleeping: the hook
``let_time_pass(store, run_ids, seconds)`` moves the store's ``clock`` attribute forward by
default; a store on a database's clock overrides it to move those runs' step timestamps
back instead (see the Postgres suite in ``integration-tests/postgres``).

Optional capabilities are declared, not guessed: set the class flags your store offers
(each ``False`` by default; a flag set on a store without the capability fails)::

    class TestPostgresRunStore(RunStoreContract):
        supports_get_runs = True           # flowstone.protocols.BulkRunReads
        supports_batch_finish = True       # flowstone.protocols.BatchFinish
        supports_bulk_run_creation = True  # flowstone.protocols.BulkRunCreation
        supports_bulk_claim = True         # flowstone.protocols.BulkClaim

The rules pinned here are the ones in :mod:`flowstone.store_rules`; a store that uses
that module gets most of them for free.

The suite uses only the protocol, and unique run ids, pipeline names, cursor and tick
names in every test, so it also passes against a database shared between tests and
between runs of the suite. Importing this module needs pytest (a test dependency only).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest

from flowstone.errors import (
    RunNotFoundError,
    StorageError,
    UsageError,
)
from flowstone.protocols import BulkRunReads, ContinuationReads, RunStore
from flowstone.records import (
    Continuation,
    StepOutcome,
    StepRecord,
    StepSpec,
    StepTransition,
)
from flowstone.testing._store_helpers import (
    DAY,
    REPETITIONS,
    THREADS,
    _all_at_once,
    _create,
    _diamond,
    _mat,
    _now,
    _succeed,
    _uid,
)
from flowstone.testing.batch_finish_contract import BatchFinishContract
from flowstone.testing.bulk_claim_contract import BulkClaimContract
from flowstone.testing.bulk_creation_contract import BulkCreationContract
from flowstone.testing.store_paging_contract import StorePagingContract
from flowstone.testing.store_records_contract import StoreRecordsContract
from flowstone.testing.store_rules_contract import StoreRulesContract

__all__ = ["RunStoreContract"]

class RunStoreContract(
    StoreRecordsContract,
    StoreRulesContract,
    StorePagingContract,
    BatchFinishContract,
    BulkClaimContract,
    BulkCreationContract,
):
    """Behaviour every run store must have. Subclass and implement :meth:`make_store`.

    Attributes:
        supports_get_runs: the store offers ``get_runs``
            (:class:`~flowstone.protocols.BulkRunReads`).
        supports_continuation_reads: the store offers ``finish_step_reading``
            (:class:`~flowstone.protocols.ContinuationReads`).
        supports_batch_finish: the store offers ``finish_steps``
            (:class:`~flowstone.protocols.BatchFinish`).
        supports_bulk_run_creation: the store offers ``create_runs``
            (:class:`~flowstone.protocols.BulkRunCreation`).
        supports_bulk_claim: the store offers ``claim_steps``
            (:class:`~flowstone.protocols.BulkClaim`).
    """

    supports_get_runs: bool = False
    supports_continuation_reads: bool = False

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

    def let_time_pass(self, store: RunStore, run_ids: Sequence[str], seconds: float) -> None:
        """Make ``seconds`` pass for the steps of ``run_ids``, as the store's clock sees
        them (the hook the re-send and queue-wait tests use instead of sleeping).

        The default moves the store's ``clock`` attribute forward (the memory and SQLite
        stores read the time there, in one place). A store on a database's clock
        overrides it, moving those runs' step timestamps back by ``seconds`` instead.
        """
        clock = getattr(store, "clock", None)
        if not callable(clock):
            pytest.fail(
                f"{type(store).__name__} has no clock attribute; override "
                f"{type(self).__name__}.let_time_pass to age the steps of runs"
            )
        store.clock = lambda: clock() + timedelta(seconds=seconds)  # type: ignore[attr-defined]

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
        if not self.supports_get_runs:
            pytest.skip(f"{type(self).__name__}.supports_get_runs is False")
        assert isinstance(store, BulkRunReads), "supports_get_runs is set but get_runs is missing"
        get_runs = store.get_runs
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
        assert store.retry_step(run.run_id, "orders", DAY, delay_seconds=0, error="x") is None
        retried = {}
        for asset, delay in (("orders", 3600.0), ("refunds", 0.0)):
            store.claim_step(run.run_id, asset, DAY, owner="w1", lease_seconds=60)
            retried[asset] = store.retry_step(
                run.run_id, asset, DAY, delay_seconds=delay, error="HTTP 503 from the API"
            )
        step = store.get_step(run.run_id, "orders", DAY)
        assert step is not None and step == retried["orders"]
        assert (step.state, step.error) == ("ready", "HTTP 503 from the API")
        # not_before is the store's own now (the retry's updated_at) plus the delay
        assert step.not_before is not None and step.updated_at is not None
        assert step.not_before - step.updated_at == timedelta(hours=1)
        assert store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=60) is None
        again = store.claim_step(run.run_id, "refunds", DAY, owner="w2", lease_seconds=60)
        assert again is not None and again.attempt == 2

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

    def test_continuation_reads_if_offered_match_get_step_results(self, store: RunStore) -> None:
        """``finish_step_reading`` is optional; a store that offers it returns the claimed
        step's dependency records exactly as ``get_step_results`` reads them."""
        if not self.supports_continuation_reads:
            pytest.skip(f"{type(self).__name__}.supports_continuation_reads is False")
        assert isinstance(store, ContinuationReads), (
            "supports_continuation_reads is set but finish_step_reading is missing"
        )
        run, _ = _create(store, _diamond())
        _succeed(store, run, "orders")
        _succeed(store, run, "enrich")
        store.claim_step(run.run_id, "clean", DAY, owner="w1", lease_seconds=60)
        done, reads = store.finish_step_reading(
            run.run_id, "clean", DAY, StepOutcome("succeeded", _mat(run, "clean")),
            then=Continuation("w1", 60), sources={},
        )  # fmt: skip
        assert done.claimed is not None and done.claimed.asset == "report"
        assert reads is not None
        deps = [("clean", DAY), ("enrich", DAY)]
        expected = sorted(store.get_step_results(run.run_id, deps), key=lambda r: r[0].asset)
        got = sorted(reads.inputs, key=lambda r: r[0].asset)
        assert [(s.asset, s.state, m) for s, m in got] == [
            (s.asset, s.state, m) for s, m in expected
        ]
        assert all(m is not None and m.state == "succeeded" for _, m in got)
        # nothing claimed, nothing read
        store.claim_step(run.run_id, "report", DAY, owner="w1", lease_seconds=60)
        last, none = store.finish_step_reading(
            run.run_id, "report", DAY, StepOutcome("succeeded", _mat(run, "report")),
            then=Continuation("w1", 60), sources={},
        )  # fmt: skip
        assert last.claimed is None and none is None and last.run_status == "succeeded"

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

    # --- re-sends (the sweeper) and what a claim reports ------------------------------------
    def test_a_backlog_is_resent_with_backoff_not_every_sweep(self, store: RunStore) -> None:
        """200 steps nobody claims, 8 sweeps one recover interval apart: each step is sent
        again after 1, 3 and 7 intervals (the interval doubled per re-send), 600 messages
        in all, not 1,600 (issue 11, defect 5)."""
        steps = [StepSpec(f"a{i:03d}", DAY) for i in range(200)]
        run, _ = _create(store, steps)
        other, _ = _create(store, [StepSpec("orders", DAY)])  # another pipeline's step
        sent: dict[str, list[int]] = {}
        for sweep in range(1, 9):
            self.let_time_pass(store, [run.run_id, other.run_id], 30)
            for step in store.resend_steps(ready_for_seconds=30, pipeline=run.pipeline):
                assert step.run_id == run.run_id and step.state == "ready"
                sent.setdefault(step.asset, []).append(sweep)
        assert sorted(sent) == sorted(s.asset for s in steps)
        assert {tuple(v) for v in sent.values()} == {(1, 3, 7)}
        assert sum(len(v) for v in sent.values()) == 600
        orders = store.get_step(other.run_id, "orders", DAY)
        assert orders is not None and orders.state == "ready"  # left to its own sweeper

    def test_a_sweep_is_bounded_and_a_claim_resets_the_backoff(self, store: RunStore) -> None:
        run, _ = _create(store, [StepSpec(f"a{i:02d}", DAY) for i in range(12)])
        self.let_time_pass(store, [run.run_id], 60)
        first = store.resend_steps(ready_for_seconds=30, pipeline=run.pipeline, limit=5)
        second = store.resend_steps(ready_for_seconds=30, pipeline=run.pipeline, limit=5)
        third = store.resend_steps(ready_for_seconds=30, pipeline=run.pipeline, limit=5)
        keys = [s.asset for s in first + second + third]
        assert (len(first), len(second), len(third)) == (5, 5, 2)
        assert len(set(keys)) == 12  # each batch takes steps not re-sent yet
        assert store.resend_steps(ready_for_seconds=30, pipeline=run.pipeline) == []
        # a worker claims one, lets its lease expire: re-sent at once, the count reset
        store.claim_step(run.run_id, "a00", DAY, owner="w1", lease_seconds=0)
        again = store.resend_steps(ready_for_seconds=30, pipeline=run.pipeline)
        assert [(s.asset, s.state) for s in again] == [("a00", "running")]
        assert store.resend_steps(ready_for_seconds=30, pipeline=run.pipeline) == []
        # released by a retry, it waits the interval again, not the backed-off time
        store.claim_step(run.run_id, "a00", DAY, owner="w2", lease_seconds=60)
        store.retry_step(run.run_id, "a00", DAY, delay_seconds=0, error="HTTP 503")
        assert store.resend_steps(ready_for_seconds=30, pipeline=run.pipeline) == []
        self.let_time_pass(store, [run.run_id], 31)
        due = store.resend_steps(ready_for_seconds=30, pipeline=run.pipeline)
        assert [s.asset for s in due] == ["a00"]

    def test_concurrent_sweeps_resend_each_step_once(self, store: RunStore) -> None:
        """Sweepers racing over one backlog split it: each due step is re-sent by exactly
        one of them (the stamp is taken in the same statement as the selection)."""
        run, _ = _create(store, [StepSpec(f"a{i:03d}", DAY) for i in range(100)])
        self.let_time_pass(store, [run.run_id], 60)
        sweep = partial(store.resend_steps, ready_for_seconds=30, pipeline=run.pipeline, limit=40)
        sent = [s.asset for found in _all_at_once([sweep] * THREADS) for s in found]
        assert len(sent) == len(set(sent)) == 100  # each once, none left out
        assert sweep() == []

    def test_a_claim_reports_its_wait_and_take_over(self, store: RunStore) -> None:
        run, _ = _create(store, [StepSpec("orders", DAY), StepSpec("refunds", DAY)])
        self.let_time_pass(store, [run.run_id], 120)
        first = store.claim_step(run.run_id, "orders", DAY, owner="w1", lease_seconds=0)
        assert first is not None and first.took_over is False
        assert first.queued_s is not None and 120 <= first.queued_s < 3600
        taken = store.claim_step(run.run_id, "orders", DAY, owner="w2", lease_seconds=0)
        assert taken is not None and (taken.took_over, taken.queued_s) == (True, None)
        mine = store.claim_step(run.run_id, "orders", DAY, owner="w2", lease_seconds=60)
        assert mine is not None and mine.took_over is False  # its own expired lease
        plain = store.get_step(run.run_id, "orders", DAY)
        assert plain is not None and (plain.queued_s, plain.took_over) == (None, False)
        # a retried step waits from its not_before, not from when it was sent back
        store.claim_step(run.run_id, "refunds", DAY, owner="w1", lease_seconds=60)
        store.retry_step(run.run_id, "refunds", DAY, delay_seconds=100, error="HTTP 503")
        self.let_time_pass(store, [run.run_id], 160)
        retried = store.claim_step(run.run_id, "refunds", DAY, owner="w1", lease_seconds=60)
        assert retried is not None and retried.queued_s is not None
        assert 60 <= retried.queued_s < 100
