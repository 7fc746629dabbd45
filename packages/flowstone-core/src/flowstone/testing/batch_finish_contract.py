"""The optional :class:`~flowstone.protocols.BatchFinish` part of the run store contract.

Mixed into :class:`~flowstone.testing.store_contract.RunStoreContract`; a store that offers
``finish_steps`` sets ``supports_batch_finish = True`` and these tests check that a batch
behaves exactly like its finishes one by one: each fenced and applied once, the run's status
settled once (the last finish of a run reports it), a refused finish reported without
holding back the others.
"""

from __future__ import annotations

import pytest

from flowstone.errors import StorageError
from flowstone.protocols import BatchFinish, Finish, RunStore
from flowstone.records import Continuation, Fence, RunRecord, StepOutcome, StepSpec
from flowstone.testing._store_helpers import DAY, _create, _diamond, _mat

__all__ = ["BatchFinishContract"]


def _independent(n: int) -> list[StepSpec]:
    return [StepSpec(f"shard{i:02d}", DAY) for i in range(n)]


def _claim_all(store: RunStore, run: RunRecord, assets: list[str]) -> dict[str, Fence]:
    fences = {}
    for asset in assets:
        step = store.claim_step(run.run_id, asset, DAY, owner="w1", lease_seconds=60)
        assert step is not None
        fences[asset] = Fence("w1", step.attempt)
    return fences


def _done(run: RunRecord, asset: str, fence: Fence | None, **kw: object) -> Finish:
    return Finish(run.run_id, asset, DAY, StepOutcome("succeeded", _mat(run, asset)),
                  fence=fence, **kw)  # type: ignore[arg-type]


class BatchFinishContract:
    """``finish_steps``, for stores that declare ``supports_batch_finish``."""

    supports_batch_finish: bool = False

    def _batching(self, store: RunStore) -> BatchFinish:
        if not self.supports_batch_finish:
            pytest.skip(f"{type(self).__name__}.supports_batch_finish is False")
        assert isinstance(store, BatchFinish), (
            "supports_batch_finish is set but finish_steps is missing"
        )
        return store

    def test_batch_finish_records_each_step_and_settles_the_run_once(
        self, store: RunStore
    ) -> None:
        batching = self._batching(store)
        run, _ = _create(store, _independent(5))
        assets = [f"shard{i:02d}" for i in range(5)]
        fences = _claim_all(store, run, assets)
        first = batching.finish_steps(
            [_done(run, a, fences[a]) for a in assets[:3]], sources={}
        )
        assert [r[0].applied for r in first if not isinstance(r, Exception)] == [True] * 3
        # two steps still running: the run is not settled
        assert all(not isinstance(r, Exception) and r[0].run_status is None for r in first)
        got = store.get_run(run.run_id)
        assert got is not None and got.status == "running"
        last = batching.finish_steps([_done(run, a, fences[a]) for a in assets[3:]], sources={})
        statuses = [r[0].run_status for r in last if not isinstance(r, Exception)]
        assert statuses == [None, "succeeded"]  # reported once, by the run's last finish
        got = store.get_run(run.run_id)
        assert got is not None and got.status == "succeeded"
        steps = {s.asset: s.state for s in store.list_steps(run.run_id)}
        assert steps == dict.fromkeys(assets, "succeeded")
        mats = store.list_materializations(run.pipeline, run_id=run.run_id, limit=10)
        assert sorted(m.asset for m in mats) == assets

    def test_batch_finish_is_fenced_and_applied_once_per_step(self, store: RunStore) -> None:
        batching = self._batching(store)
        run, _ = _create(store, _independent(3))
        fences = _claim_all(store, run, ["shard00", "shard01", "shard02"])
        stale = Fence("w1", fences["shard01"].attempt + 7)  # not the claim that holds it
        results = batching.finish_steps(
            [_done(run, "shard00", fences["shard00"]), _done(run, "shard01", stale),
             _done(run, "shard02", fences["shard02"])],
            sources={},
        )  # fmt: skip
        applied = [not isinstance(r, Exception) and r[0].applied for r in results]
        assert applied == [True, False, True]
        again = batching.finish_steps([_done(run, "shard00", fences["shard00"])], sources={})
        assert not isinstance(again[0], Exception) and not again[0][0].applied  # duplicate
        steps = {s.asset: s.state for s in store.list_steps(run.run_id)}
        assert steps == {"shard00": "succeeded", "shard01": "running", "shard02": "succeeded"}
        mats = store.list_materializations(run.pipeline, run_id=run.run_id, limit=10)
        assert sorted(m.asset for m in mats) == ["shard00", "shard02"]
        got = store.get_run(run.run_id)
        assert got is not None and got.status == "running"

    def test_batch_finish_reports_a_missing_step_and_records_the_others(
        self, store: RunStore
    ) -> None:
        batching = self._batching(store)
        run, _ = _create(store, _independent(2))
        fences = _claim_all(store, run, ["shard00", "shard01"])
        results = batching.finish_steps(
            [_done(run, "shard00", fences["shard00"]), _done(run, "no_such_asset", None),
             _done(run, "shard01", fences["shard01"])],
            sources={},
        )  # fmt: skip
        assert isinstance(results[1], StorageError)
        assert "no_such_asset" in str(results[1])
        ok = [r for r in results if not isinstance(r, Exception)]
        assert [r[0].applied for r in ok] == [True, True]
        assert ok[-1][0].run_status == "succeeded"
        got = store.get_run(run.run_id)
        assert got is not None and got.status == "succeeded"

    def test_batch_finish_releases_and_claims_dependents_like_finish_step(
        self, store: RunStore
    ) -> None:
        batching = self._batching(store)
        run, _ = _create(store, _diamond())
        (orders,) = _claim_all(store, run, ["orders"]).values()
        (result,) = batching.finish_steps(
            [_done(run, "orders", orders, then=Continuation("w1", 60))], sources={}
        )
        assert not isinstance(result, Exception)
        transition, _ = result
        # the first dependent (by asset) is claimed for the caller, the other is ready
        assert transition.claimed is not None and transition.claimed.asset == "clean"
        assert transition.claimed.state == "running"
        assert [s.asset for s in transition.ready] == ["enrich"]
        assert transition.run_status is None
        enrich = store.claim_step(run.run_id, "enrich", DAY, owner="w2", lease_seconds=60)
        assert enrich is not None
        results = batching.finish_steps(
            [_done(run, "clean", Fence("w1", transition.claimed.attempt)),
             _done(run, "enrich", Fence("w2", enrich.attempt))],
            sources={},
        )  # fmt: skip
        ready = [s.asset for r in results if not isinstance(r, Exception) for s in r[0].ready]
        assert ready == ["report"]  # released once, by the finish that made it ready
        assert {s.asset: s.state for s in store.list_steps(run.run_id)}["report"] == "ready"

    def test_batch_finish_holds_many_runs_each_settled_once(self, store: RunStore) -> None:
        # a pack of run_many's steps: finishes of three runs interleaved, of two shapes
        # (with and without a continuation), in one batch; the results keep the order
        batching = self._batching(store)
        done, busy = _create(store, _independent(2))[0], _create(store, _independent(2))[0]
        diamond, _ = _create(store, _diamond())
        (orders,) = _claim_all(store, diamond, ["orders"]).values()
        fences = {
            run.run_id: _claim_all(store, run, ["shard00", "shard01"]) for run in (done, busy)
        }
        results = batching.finish_steps(
            [_done(done, "shard00", fences[done.run_id]["shard00"]),
             _done(diamond, "orders", orders, then=Continuation("w1", 60)),
             _done(busy, "shard01", fences[busy.run_id]["shard01"]),
             _done(done, "shard01", fences[done.run_id]["shard01"])],
            sources={},
        )  # fmt: skip
        assert not any(isinstance(r, Exception) for r in results)
        transitions = [r[0] for r in results if not isinstance(r, Exception)]
        assert [t.applied for t in transitions] == [True] * 4
        # only the finished run changed status, reported by its last finish in the batch
        assert [t.run_status for t in transitions] == [None, None, None, "succeeded"]
        claimed = transitions[1].claimed
        assert claimed is not None and (claimed.run_id, claimed.asset) == (
            diamond.run_id, "clean"
        )
        assert [s.asset for s in transitions[1].ready] == ["enrich"]
        assert [t.claimed for t in (transitions[0], transitions[2], transitions[3])] == [None] * 3
        statuses = {}
        for run in (done, busy, diamond):
            got = store.get_run(run.run_id)
            assert got is not None
            statuses[run.run_id] = got.status
        assert statuses == {
            done.run_id: "succeeded", busy.run_id: "running", diamond.run_id: "running"
        }
        assert {s.asset: s.state for s in store.list_steps(busy.run_id)} == {
            "shard00": "running", "shard01": "succeeded"
        }
        for run, assets in ((done, ["shard00", "shard01"]), (busy, ["shard01"]),
                            (diamond, ["orders"])):  # fmt: skip
            mats = store.list_materializations(run.pipeline, run_id=run.run_id, limit=10)
            assert sorted(m.asset for m in mats) == assets
