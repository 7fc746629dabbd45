"""Packing several ready steps of one run into one message (``FLOWSTONE_PACK_STEPS``):
when, in what form, and that each step of a pack is still claimed, recorded and retried on
its own, a redelivered pack changes nothing, and a draining worker (or a pack that ran
out of ``FLOWSTONE_PACK_SECONDS``) hands the steps it did not start back to the broker."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import BatchingMemoryStore, drain

import flowstone as fs
from flowstone.engine import StepRunner
from flowstone.errors import StorageError
from flowstone.records import StepRecord
from flowstone_celery import CelerySettings, FlowstoneCelery, draining, make_app
from flowstone_celery.messages import parse_batch, parse_message
from flowstone_celery.packing import BACKLOG_SECONDS, pack, pack_size
from flowstone_celery.tasks import handle_step

N = 12


def independent(n: int = N, *, fail_once: set[str] | None = None) -> fs.Pipeline:
    """``n`` independent assets ``p00``...; those in ``fail_once`` raise on attempt 1."""
    flaky = fail_once or set()

    def make(i: int) -> Any:
        name = f"p{i:02d}"

        @fs.asset(name=name, retry=fs.RetryPolicy(max_attempts=2, base_delay=0))
        def fn(context: fs.Context) -> int:
            if name in flaky and context.attempt == 1:
                raise RuntimeError(f"{name} fails once")
            return i

        return fn

    return fs.Pipeline(
        "packs", [make(i) for i in range(n)], store="memory://", executor="inprocess"
    )


@pytest.fixture
def packing(settings: CelerySettings) -> Iterator[FlowstoneCelery]:
    """An app that packs: 4 slots, at most 8 steps per message, inline continuations off,
    no dispatch linger (``test_lingering.py``: every message is published at once)."""
    app = make_app(
        settings.model_copy(
            update={"worker_slots": 4, "pack_steps": 8, "inline_steps": 0, "pack_seconds": 3600.0,
                    "dispatch_linger_seconds": 0.0}
        )
    )  # fmt: skip
    yield app
    app.close_pipelines()
    app.close()
    draining.reset()


def bodies(published: list[tuple[Any, Any, Any]]) -> list[list[dict[str, Any]]]:
    return [body if isinstance(body, list) else [body] for body, _, _ in published]


@pytest.mark.parametrize(
    ("ready", "slots", "most", "size"),
    [
        (1, 4, 8, 1),  # fewer steps than slots: one step per message
        (4, 4, 8, 1),  # exactly one step per slot
        (5, 4, 8, 1),  # 5 // 4: packing would leave a slot without a message
        (8, 4, 8, 2),  # two per message, still a message per slot
        (12, 4, 8, 3),
        (2000, 4, 8, 8),  # capped by FLOWSTONE_PACK_STEPS
        (2000, 4, 1, 1),  # packing turned off
        (2000, 1000, 64, 2),
    ],
)
def test_pack_size_keeps_a_message_per_slot(ready: int, slots: int, most: int, size: int) -> None:
    assert pack_size(ready, slots=slots, most=most) == size


@pytest.mark.parametrize(
    ("ready", "backlog", "most", "size"),
    [
        (3, 4, 8, 3),  # every slot has a message waiting: the run's steps share one
        (3, 3, 8, 1),  # a slot is free: one step per message, they run side by side
        (3, 100, 2, 2),  # at most FLOWSTONE_PACK_STEPS
        (3, 100, 1, 1),  # packing turned off
        (1, 100, 8, 1),  # a lone step stays alone
        (12, 100, 8, 8),  # more ready steps than slots, all busy: as few messages as can be
        (12, 0, 8, 3),  # ... with free slots: the usual rule, a message per slot
    ],
)
def test_a_backlog_that_fills_the_slots_packs_even_a_few_steps(
    ready: int, backlog: int, most: int, size: int
) -> None:
    assert pack_size(ready, slots=4, most=most, backlog=backlog) == size


def test_the_executor_packs_a_small_run_behind_a_full_queue(packing: FlowstoneCelery) -> None:
    pipeline = independent(16)
    packing.add_pipeline(pipeline)
    small = ["p00", "p01", "p02"]
    assert packing.executor.backlog() == 0  # no queue yet: nothing waits
    first = pipeline.run(small, wait=False, force=True)  # idle: one step per message
    assert [len(b) for b in bodies(drain(packing))] == [1, 1, 1]
    pipeline.run(wait=False, force=True)  # 16 ready steps on 4 slots: 4 messages wait
    time.sleep(BACKLOG_SECONDS)  # the length read before is stale now
    assert packing.executor.backlog() == 4
    second = pipeline.run(small, wait=False, force=True)
    published = bodies(drain(packing))
    assert [len(b) for b in published] == [4, 4, 4, 4, 3]  # the big run's, then one pack
    assert {item["run_id"] for item in published[-1]} == {second.run_id}
    assert first.run_id != second.run_id


def test_pack_cuts_in_order_and_a_lone_step_stays_a_plain_message() -> None:
    assert pack([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], 5]
    assert pack([1, 2, 3], 1) == [1, 2, 3]


def test_a_run_with_more_ready_steps_than_slots_is_packed(
    packing: FlowstoneCelery,
) -> None:
    pipeline = independent()
    packing.add_pipeline(pipeline)
    run = pipeline.run(wait=False, force=True)
    published = drain(packing)
    # 12 ready steps, 4 slots: 3 per message, 4 messages (one per slot)
    assert [len(b) for b in bodies(published)] == [3, 3, 3, 3]
    for batch in bodies(published):
        # the list body of run_many, read by the same parser; every item a step message
        assert parse_batch(batch) == batch
        assert {parse_message(item).run_id for item in batch} == {run.run_id}
    assert sorted(item["asset"] for b in bodies(published) for item in b) == [
        f"p{i:02d}" for i in range(N)
    ]
    assert {headers["task"] for _, headers, _ in published} == {"flowstone.run_step"}


def test_no_packing_while_every_step_has_a_slot_or_when_turned_off(
    settings: CelerySettings,
) -> None:
    for update in ({"worker_slots": N}, {"worker_slots": 2, "pack_steps": 1}):
        app = make_app(settings.model_copy(update=update))
        pipeline = independent()
        app.add_pipeline(pipeline)
        pipeline.run(wait=False, force=True)
        published = drain(app)
        assert len(published) == N and all(isinstance(b, dict) for b, _, _ in published)
        app.close_pipelines()
        app.close()


def test_delayed_steps_are_never_packed(packing: FlowstoneCelery) -> None:
    later = datetime.now(UTC) + timedelta(seconds=30)
    steps = [StepRecord("run1", f"p{i:02d}", "", "ready", 0) for i in range(8)]
    steps += [
        StepRecord("run1", f"p{i:02d}", "", "ready", 1, not_before=later) for i in range(8, 10)
    ]
    pipeline = independent()
    packing.executor.dispatch(pipeline.runner, "run1", steps)
    pipeline.close()
    published = drain(packing)
    assert [len(b) for b in bodies(published)] == [2, 2, 2, 2, 1, 1]
    assert [headers["eta"] is not None for _, headers, _ in published] == [False] * 4 + [True] * 2


def test_slots_default_to_the_workers_concurrency(settings: CelerySettings) -> None:
    app = make_app(settings.model_copy(update={"worker_slots": None}))
    assert app.executor.slots == (os.cpu_count() or 1)  # a client: its CPU count
    app.worker_slots = 3  # what the worker bootstep records from --concurrency
    assert app.executor.slots == 3
    app.close()
    app = make_app(settings.model_copy(update={"worker_slots": 40}))
    app.worker_slots = 3
    assert app.executor.slots == 40  # FLOWSTONE_WORKER_SLOTS wins
    app.close()


def test_a_packed_run_records_every_step_once_and_redelivery_changes_nothing(
    packing: FlowstoneCelery,
) -> None:
    pipeline = independent(fail_once={"p04"})
    packing.add_pipeline(pipeline)
    run = pipeline.run(wait=False, force=True)
    packs = [body for body, _, _ in drain(packing)]
    for body in packs:
        handle_step(packing, body)
    # p04 failed its first attempt inside a pack: retried on its own, in a message of its own
    (retry,) = drain(packing)
    assert retry[0]["asset"] == "p04"
    handle_step(packing, retry[0])
    assert pipeline.result(run.run_id).status == "succeeded"
    steps = {s.asset: (s.state, s.attempt) for s in pipeline.store.list_steps(run.run_id)}
    expected = {f"p{i:02d}": ("succeeded", 2 if i == 4 else 1) for i in range(N)}
    assert steps == expected
    mats = pipeline.store.list_materializations("packs", run_id=run.run_id)
    assert sorted(m.asset for m in mats) == sorted(expected)
    for body in packs:  # the broker delivers every pack again
        assert handle_step(packing, body) == 0
    assert drain(packing) == []
    assert {
        s.asset: (s.state, s.attempt) for s in pipeline.store.list_steps(run.run_id)
    } == expected
    assert len(pipeline.store.list_materializations("packs", run_id=run.run_id)) == N


def test_a_draining_worker_hands_back_the_steps_of_a_pack_it_did_not_start(
    packing: FlowstoneCelery,
) -> None:
    pipeline = independent()
    packing.add_pipeline(pipeline)
    run = pipeline.run(wait=False, force=True)
    first, *others = [body for body, _, _ in drain(packing)]
    draining.begin()
    assert handle_step(packing, first) == 2  # ran the first step, handed back two
    handed = drain(packing)
    assert [body for body, _, _ in handed] == first[1:]  # one message each, as they were
    states = {s.asset: s.state for s in pipeline.store.list_steps(run.run_id)}
    assert states[first[0]["asset"]] == "succeeded"
    assert {states[b["asset"]] for b in first[1:]} == {"ready"}  # unclaimed, for anyone
    draining.reset()
    for body in [b for b, _, _ in handed] + others:
        handle_step(packing, body)
    assert pipeline.result(run.run_id).status == "succeeded"
    assert {s.attempt for s in pipeline.store.list_steps(run.run_id)} == {1}


def test_a_pack_that_ran_out_of_time_hands_back_the_rest(settings: CelerySettings) -> None:
    app = make_app(
        settings.model_copy(
            update={"worker_slots": 2, "pack_steps": 8, "inline_steps": 0, "pack_seconds": 1e-9}
        )
    )
    pipeline = independent(8)
    app.add_pipeline(pipeline)
    run = pipeline.run(wait=False, force=True)
    packs = [body for body, _, _ in drain(app)]
    assert [len(b) for b in packs] == [4, 4]
    assert handle_step(app, packs[0]) == 3
    handed = [body for body, _, _ in drain(app)]
    assert handed == packs[0][1:]
    for body in [*handed, packs[1]]:
        handle_step(app, body)
    for body in drain(app):  # the second pack handed back its rest too
        handle_step(app, body[0])
    assert pipeline.result(run.run_id).status == "succeeded"
    assert {s.attempt for s in pipeline.store.list_steps(run.run_id)} == {1}
    app.close_pipelines()
    app.close()


def test_a_packs_finishes_are_recorded_together_and_before_an_error_propagates(
    packing: FlowstoneCelery, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BatchingMemoryStore()
    pipeline = fs.Pipeline(
        "packs", independent().dag.assets.values(), store=store, executor="inprocess"
    )
    packing.add_pipeline(pipeline)
    run = pipeline.run(wait=False, force=True)
    first, second, *others = [body for body, _, _ in drain(packing)]
    assert handle_step(packing, first) == 0
    assert store.batches == [[b["asset"] for b in first]]  # one transaction for the pack
    run_claimed = StepRunner.run_claimed
    third = second[2]["asset"]

    def store_lost_at_the_third(self: StepRunner, step: StepRecord, **kw: Any) -> Any:
        if step.asset == third:  # the engine's own store call fails inside the step
            raise StorageError("connection to the store lost (simulated)")
        return run_claimed(self, step, **kw)

    monkeypatch.setattr(StepRunner, "run_claimed", store_lost_at_the_third)
    with pytest.raises(StorageError, match="connection to the store lost"):
        handle_step(packing, second)
    states = {s.asset: s.state for s in store.list_steps(run.run_id)}
    # the two steps that ran before the error are recorded, the rest (claimed with them)
    # given back: nothing is left to a lease
    assert [states[b["asset"]] for b in second] == ["succeeded", "succeeded"] + ["ready"] * (
        len(second) - 2
    )
    monkeypatch.undo()
    store.fail_claims_of = {third}  # now claiming the pack fails: none of it stays claimed
    with pytest.raises(StorageError, match="connection to the store lost"):
        handle_step(packing, second)
    states = {s.asset: s.state for s in store.list_steps(run.run_id)}
    assert [states[b["asset"]] for b in second][2:] == ["ready"] * (len(second) - 2)
    store.fail_claims_of = set()
    for body in [second, *others]:
        handle_step(packing, body)  # Celery retries the message; the rest as usual
    assert pipeline.result(run.run_id).status == "succeeded"
    assert len(store.list_materializations("packs", run_id=run.run_id)) == N


@pytest.mark.parametrize(("inline", "levels"), [(16, 3), (1, 2)])
def test_the_continuations_a_batch_claimed_share_the_next_batch(
    settings: CelerySettings, inline: int, levels: int
) -> None:
    """``run_many``'s message carries the first step of four runs: their finishes are
    one batch, each claims its run's next step, and those four run here and are the
    next batch (not a transaction each); a chain goes on level by level, as far as
    ``FLOWSTONE_INLINE_STEPS`` allows (then the rest is published)."""
    app = make_app(settings.model_copy(update={"batch_steps": 4, "inline_steps": inline}))
    store = BatchingMemoryStore()

    @fs.asset
    def first(context: fs.Context) -> int:
        return int(str(context.partition))

    @fs.asset
    def second(first: int) -> int:
        return first * 10

    @fs.asset
    def third(second: int) -> int:
        return second + 1

    pipeline = fs.Pipeline("levels", [first, second, third], store=store, executor="inprocess")
    app.add_pipeline(pipeline)
    try:
        runs = pipeline.run_many("third", ["1", "2", "3", "4"], wait=False, force=True)
        (message,) = [body for body, _, _ in drain(app)]
        assert [m["asset"] for m in message] == ["first"] * 4
        published = handle_step(app, message)
        assert store.batches == [[a] * 4 for a in ("first", "second", "third")[:levels]]
        if levels < 3:  # the budget ran out: the thirds went to the broker, ready
            assert published == 4
            rest = [body for body, _, _ in drain(app)]
            assert sorted(m["asset"] for b in rest for m in parse_batch(b)) == ["third"] * 4
            for body in rest:
                handle_step(app, body)
        else:
            assert published == 0  # nothing left for the broker
        assert [pipeline.result(r.run_id).status for r in runs] == ["succeeded"] * 4
        assert [pipeline.get("third", k) for k in "1234"] == [11, 21, 31, 41]
        assert {s.attempt for r in runs for s in store.list_steps(r.run_id)} == {1}
    finally:
        app.close_pipelines()
        app.close()
