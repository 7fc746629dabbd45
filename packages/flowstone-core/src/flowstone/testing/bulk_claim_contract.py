"""The optional :class:`~flowstone.protocols.BulkClaim` part of the run store contract.

Mixed into :class:`~flowstone.testing.store_contract.RunStoreContract`; a store that offers
``claim_steps`` sets ``supports_bulk_claim = True`` and these tests check that each claim is
exactly ``claim_step``'s: a new attempt and lease for the owner, ``None`` where the step is
not claimable (already running, still pending, in a cancelled run or a run of another
pipeline), the results in the order given.
"""

from __future__ import annotations

import pytest

from flowstone.protocols import BulkClaim, RunStore
from flowstone.records import StepSpec
from flowstone.testing._store_helpers import DAY, _create

__all__ = ["BulkClaimContract"]


class BulkClaimContract:
    """``claim_steps``, for stores that declare ``supports_bulk_claim``."""

    supports_bulk_claim: bool = False

    def _bulk_claims(self, store: RunStore) -> BulkClaim:
        if not self.supports_bulk_claim:
            pytest.skip(f"{type(self).__name__}.supports_bulk_claim is False")
        assert isinstance(store, BulkClaim), "supports_bulk_claim is set but claim_steps is missing"
        return store

    def test_claim_steps_claims_each_like_claim_step_in_the_order_given(
        self, store: RunStore
    ) -> None:
        bulk = self._bulk_claims(store)
        chain = [StepSpec("a", DAY), StepSpec("b", DAY), StepSpec("late", DAY, deps=(("a", DAY),))]
        run, _ = _create(store, chain)
        other, _ = _create(store, [StepSpec("x", DAY)])
        held = store.claim_step(run.run_id, "b", DAY, owner="w0", lease_seconds=60)
        assert held is not None
        keys = [(other.run_id, "x", DAY), (run.run_id, "late", DAY), (run.run_id, "a", DAY),
                (run.run_id, "b", DAY), (run.run_id, "no_such_asset", DAY)]  # fmt: skip
        got = bulk.claim_steps(keys, owner="w1", lease_seconds=60, pipeline=None)
        # x and a claimed (attempt 1, w1); late is pending, b held by w0, the last unknown
        assert [None if s is None else (s.run_id, s.asset) for s in got] == [
            (other.run_id, "x"), None, (run.run_id, "a"), None, None
        ]
        for step in (got[0], got[2]):
            assert step is not None
            assert (step.state, step.owner, step.attempt) == ("running", "w1", 1)
            assert step.queued_s is not None and step.queued_s >= 0 and not step.took_over
        steps = {s.asset: (s.state, s.owner) for s in store.list_steps(run.run_id)}
        assert steps == {"a": ("running", "w1"), "b": ("running", "w0"), "late": ("pending", None)}
        # claimed now: a second claim of the same steps gets nothing, like claim_step's
        assert bulk.claim_steps(keys[:1] + keys[2:3], owner="w2", lease_seconds=60) == [None] * 2

    def test_claim_steps_claims_a_step_given_twice_once(self, store: RunStore) -> None:
        bulk = self._bulk_claims(store)
        run, _ = _create(store, [StepSpec("a", DAY)])
        key = (run.run_id, "a", DAY)
        first, second = bulk.claim_steps([key, key], owner="w1", lease_seconds=60)
        assert first is not None and first.attempt == 1 and second is None

    def test_claim_steps_refuses_cancelled_runs_and_other_pipelines(
        self, store: RunStore
    ) -> None:
        bulk = self._bulk_claims(store)
        cancelled, _ = _create(store, [StepSpec("a", DAY)])
        store.cancel_run(cancelled.run_id)
        mine, _ = _create(store, [StepSpec("a", DAY)])
        theirs, _ = _create(store, [StepSpec("a", DAY)])
        keys = [(r.run_id, "a", DAY) for r in (cancelled, mine, theirs)]
        got = bulk.claim_steps(keys, owner="w1", lease_seconds=60, pipeline=mine.pipeline)
        assert [s is not None for s in got] == [False, True, False]
        assert store.get_run(theirs.run_id) is not None
        assert {s.state for s in store.list_steps(theirs.run_id)} == {"ready"}
