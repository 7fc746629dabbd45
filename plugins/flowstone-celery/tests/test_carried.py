"""Carried finishes (``flowstone_celery.carried``): the join a pack completed is recorded in
the next pack's finish transaction, or by the watcher thread once it has waited
``FLOWSTONE_FINISH_BATCH_SECONDS``, or before the pool process exits; a direct
``handle_step`` call still records everything before it returns; a failed claim of the
next pack does not lose what was carried."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import BatchingMemoryStore, drain

import flowstone as fs
from flowstone.engine import StepRunner
from flowstone.records import StepRecord
from flowstone_celery import CelerySettings, FlowstoneCelery, draining, make_app
from flowstone_celery.tasks import handle_step, record_carried

BRANCHES = ("left", "middle", "right")


def joins(store: BatchingMemoryStore) -> fs.Pipeline:
    """Three root branches and a join reading all three, partitioned by parent."""

    def branch(name: str, factor: int) -> Any:
        @fs.asset(name=name)
        def fn(context: fs.Context) -> int:
            return int(str(context.partition)) * factor

        return fn

    @fs.asset
    def joined(left: int, middle: int, right: int) -> int:
        return left + middle + right

    return fs.Pipeline(
        "carry",
        [branch(name, k) for k, name in enumerate(BRANCHES, 1)] + [joined],
        store=store, executor="inprocess",
    )  # fmt: skip


@pytest.fixture
def store() -> BatchingMemoryStore:
    return BatchingMemoryStore()


@pytest.fixture
def carrying(settings: CelerySettings, store: BatchingMemoryStore) -> Iterator[FlowstoneCelery]:
    """One slot, so each run's three branches travel as one pack; carried finishes wait
    a minute (the watcher does not record them behind the test's back)."""
    app = make_app(settings.model_copy(update={"worker_slots": 1, "finish_batch_seconds": 60.0}))
    app.add_pipeline(joins(store))
    yield app
    app.close_pipelines()
    app.close()
    draining.reset()


def packs(app: FlowstoneCelery, parents: list[str]) -> tuple[list[fs.RunResult], list[Any]]:
    pipeline = app.pipelines["carry"]
    runs = [pipeline.run("joined", p, force=True, wait=False) for p in parents]
    messages: list[Any] = [body for body, _, _ in drain(app)]
    assert [[m["asset"] for m in body] for body in messages] == [list(BRANCHES)] * len(parents)
    return runs, messages


def states(store: BatchingMemoryStore, run: fs.RunResult) -> dict[str, str]:
    return {s.asset: s.state for s in store.list_steps(run.run_id)}


def test_a_packs_join_is_recorded_with_the_next_packs_finishes(
    carrying: FlowstoneCelery, store: BatchingMemoryStore
) -> None:
    (first, second), (one, two) = packs(carrying, ["1", "2"])
    assert handle_step(carrying, one, carry=True) == 0
    # the branches and the join ran; the join's finish waits, its step still running
    assert store.batches == [list(BRANCHES)]
    assert states(store, first)["joined"] == "running"
    assert len(carrying.carried) == 1
    assert handle_step(carrying, two, carry=True) == 0
    # one transaction: the first run's join and the second run's branches
    assert store.batches == [list(BRANCHES), ["joined", *BRANCHES]]
    pipeline = carrying.pipelines["carry"]
    assert pipeline.result(first.run_id).status == "succeeded"
    assert pipeline.get("joined", "1") == 1 + 2 + 3
    assert states(store, second)["joined"] == "running"
    record_carried(carrying)  # what a pool process does before it exits
    assert len(carrying.carried) == 0
    assert pipeline.result(second.run_id).status == "succeeded"
    assert pipeline.get("joined", "2") == 2 * (1 + 2 + 3)
    assert {s.attempt for r in (first, second) for s in store.list_steps(r.run_id)} == {1}
    assert drain(carrying) == []


def test_the_watcher_records_a_carried_finish_once_it_has_waited(
    settings: CelerySettings, store: BatchingMemoryStore
) -> None:
    app = make_app(settings.model_copy(update={"worker_slots": 1, "finish_batch_seconds": 0.05}))
    app.add_pipeline(joins(store))
    try:
        (run,), (message,) = packs(app, ["3"])
        handle_step(app, message, carry=True)
        deadline = time.monotonic() + 10
        while app.pipelines["carry"].result(run.run_id).status != "succeeded":
            assert time.monotonic() < deadline, "the carried join was never recorded"
            time.sleep(0.01)
        # (a lone finish is recorded on its own, not as a batch of one)
        assert store.batches == [list(BRANCHES)]
        assert app.pipelines["carry"].get("joined", "3") == 18
        assert {s.attempt for s in store.list_steps(run.run_id)} == {1}
    finally:
        app.close_pipelines()
        app.close()


def test_without_carry_a_message_records_everything_before_it_returns(
    carrying: FlowstoneCelery, store: BatchingMemoryStore
) -> None:
    (run,), (message,) = packs(carrying, ["4"])
    handle_step(carrying, message)
    assert store.batches == [list(BRANCHES)]
    assert carrying.pipelines["carry"].result(run.run_id).status == "succeeded"
    assert len(carrying.carried) == 0


def test_a_worker_that_starts_draining_during_the_join_carries_nothing(
    carrying: FlowstoneCelery, store: BatchingMemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    (run,), (message,) = packs(carrying, ["5"])
    run_claimed = StepRunner.run_claimed

    def drain_during_the_join(self: StepRunner, step: StepRecord, **kw: Any) -> Any:
        if step.asset == "joined":
            draining.begin()  # the first SIGTERM arrives while the join runs
        return run_claimed(self, step, **kw)

    monkeypatch.setattr(StepRunner, "run_claimed", drain_during_the_join)
    assert handle_step(carrying, message, carry=True) == 0
    # the pool process may exit right after this message: the join is recorded now
    assert len(carrying.carried) == 0
    assert carrying.pipelines["carry"].result(run.run_id).status == "succeeded"


def test_a_failed_claim_of_the_next_pack_records_what_was_carried(
    carrying: FlowstoneCelery, store: BatchingMemoryStore
) -> None:
    (first, second), (one, two) = packs(carrying, ["6", "7"])
    handle_step(carrying, one, carry=True)
    store.fail_claims_of = {"middle"}
    with pytest.raises(fs.StorageError, match="connection to the store lost"):
        handle_step(carrying, two, carry=True)
    # the first run's join is recorded anyway; none of the second pack stays claimed
    assert carrying.pipelines["carry"].result(first.run_id).status == "succeeded"
    assert len(carrying.carried) == 0
    assert set(states(store, second).values()) == {"ready", "pending"}
    store.fail_claims_of = set()
    handle_step(carrying, two, carry=True)  # Celery retries the message
    record_carried(carrying)
    assert carrying.pipelines["carry"].result(second.run_id).status == "succeeded"
    assert len(store.list_materializations("carry", run_id=second.run_id)) == 4
