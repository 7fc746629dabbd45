"""The optional :class:`~flowstone.protocols.BulkRunCreation` part of the run store contract.

Mixed into :class:`~flowstone.testing.store_contract.RunStoreContract`; a store that offers
``create_runs`` sets ``supports_bulk_run_creation = True`` and these tests check that it
creates each run exactly as ``create_run`` does, and all of them or none.
"""

from __future__ import annotations

import dataclasses

import pytest

from flowstone.errors import FlowStoneError
from flowstone.protocols import BulkRunCreation, RunStore
from flowstone.records import StepSpec
from flowstone.testing._store_helpers import DAY, _create, _diamond, _uid

__all__ = ["BulkCreationContract"]


class BulkCreationContract:
    """``create_runs``, for stores that declare ``supports_bulk_run_creation``."""

    supports_bulk_run_creation: bool = False

    def _bulk(self, store: RunStore) -> BulkRunCreation:
        if not self.supports_bulk_run_creation:
            pytest.skip(f"{type(self).__name__}.supports_bulk_run_creation is False")
        assert isinstance(store, BulkRunCreation), (
            "supports_bulk_run_creation is set but create_runs is missing"
        )
        return store

    def test_create_runs_creates_each_run_like_create_run(self, store: RunStore) -> None:
        bulk = self._bulk(store)
        model, ready_one = _create(store, _diamond())  # the same plan, created alone
        runs = [dataclasses.replace(model, run_id=_uid("run")) for _ in range(3)]
        independent = [StepSpec("a", DAY), StepSpec("b", DAY)]
        plans = [(runs[0], _diamond()), (runs[1], independent), (runs[2], _diamond())]
        created = bulk.create_runs(plans)
        assert [[s.asset for s in ready] for ready in created] == [
            [s.asset for s in ready_one], ["a", "b"], [s.asset for s in ready_one]
        ]
        for (run, steps), ready in zip(plans, created, strict=True):
            assert all(s.run_id == run.run_id and s.state == "ready" for s in ready)
            got = store.get_run(run.run_id)
            assert got is not None and got.status == "running"
            assert sorted(s.asset for s in store.list_steps(run.run_id)) == sorted(
                s.asset for s in steps
            )

    def test_create_runs_creates_all_or_none(self, store: RunStore) -> None:
        bulk = self._bulk(store)
        existing, _ = _create(store, _diamond())
        fresh = dataclasses.replace(existing, run_id=_uid("run"))
        with pytest.raises(FlowStoneError):  # the second one exists already
            bulk.create_runs([(fresh, _diamond()), (existing, _diamond())])
        assert store.get_run(fresh.run_id) is None  # the first was not left behind
        assert store.list_steps(fresh.run_id) == []
