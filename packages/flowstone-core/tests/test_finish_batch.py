"""``FinishBatch``: steps run one after the other, their finishes recorded together.

Driven through the engine API a worker uses (``StepRunner.run_step(..., batch=...)`` and
``FinishBatch.flush``), against a memory store that offers ``finish_steps`` the way a
plugin's store does (the Postgres implementation is tested against the contract suite and
on real workers in ``integration-tests``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from conftest import Collect, Recorder

import flowstone as fs
from flowstone.defaults.memory_store import MemoryRunStore
from flowstone.engine import FinishBatch
from flowstone.errors import StorageError, UsageError
from flowstone.protocols import ClaimedReads, Finish
from flowstone.records import StepTransition


class BatchingStore(MemoryRunStore):
    """A memory store with ``finish_steps`` (each finish as ``finish_step`` would do it),
    counting the batches it was given; ``fail`` makes every batch fail like a lost
    connection."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.fail = False

    def finish_steps(
        self, finishes: Sequence[Finish], *, sources: Mapping[str, str]
    ) -> list[tuple[StepTransition, ClaimedReads | None] | Exception]:
        if self.fail:
            raise StorageError("connection to the store lost (simulated)")
        self.batches.append([f.asset for f in finishes])
        out: list[tuple[StepTransition, ClaimedReads | None] | Exception] = []
        for f in finishes:
            try:
                if f.then is not None:
                    out.append(self.finish_step_reading(
                        f.run_id, f.asset, f.partition, f.outcome, then=f.then,
                        sources=sources, fence=f.fence,
                    ))  # fmt: skip
                else:
                    out.append((self.finish_step(
                        f.run_id, f.asset, f.partition, f.outcome, fence=f.fence
                    ), None))  # fmt: skip
            except (StorageError, UsageError) as exc:
                out.append(exc)
        return out


def _pipeline(store: MemoryRunStore, recorder: Recorder, n: int = 4) -> tuple[fs.Pipeline, Collect]:
    calls: list[str] = []

    def make(i: int) -> Any:
        def fn() -> int:
            calls.append(f"s{i}")
            return i * 10

        return fs.asset(name=f"s{i}")(fn)

    def total(**shards: int) -> int:
        return sum(shards.values())

    assets = [make(i) for i in range(n)]
    assets.append(fs.asset(name="total", deps=[f"s{i}" for i in range(n)])(total))
    executor = Collect()
    pipeline = fs.Pipeline(
        "batched", assets, store=store, executor=executor, io_managers={"default": "memory"},
        observers=[recorder],
    )  # fmt: skip
    return pipeline, executor


def test_finishes_wait_in_the_batch_and_are_recorded_together(recorder: Recorder) -> None:
    store = BatchingStore()
    pipeline, executor = _pipeline(store, recorder)
    run_id = pipeline.run(wait=False).run_id
    runner = pipeline.runner
    batch = FinishBatch(runner, size=8, seconds=60)
    assert batch.batching
    for step in list(executor.steps):
        assert runner.run_step(run_id, step.asset, step.partition, batch=batch).steps == ()
    # the assets ran, nothing is recorded yet: the steps are still running under claims
    assert len(batch) == 4
    assert {s.asset: s.state for s in store.list_steps(run_id)}["s0"] == "running"
    assert store.list_materializations("batched", run_id=run_id, limit=10) == []
    assert "asset.succeeded" not in recorder.kinds(run_id)

    results = batch.flush()
    assert store.batches == [["s0", "s1", "s2", "s3"]]  # one call for the four
    assert len(batch) == 0
    ready = [s.asset for r in results for s in r.ready]
    assert ready == ["total"]  # released once, by the finish that made it ready
    assert recorder.kinds(run_id).count("asset.succeeded") == 4
    runner.run_step(run_id, "total", "")
    result = pipeline.result(run_id)
    assert result.status == "succeeded"
    # every value, read back through the records the batch wrote
    assert result.value == {"s0": 0, "s1": 10, "s2": 20, "s3": 30, "total": 60}
    assert sorted(m.asset for m in result.materializations) == ["s0", "s1", "s2", "s3", "total"]


def test_a_batch_is_due_when_full_or_old() -> None:
    store = BatchingStore()
    pipeline, _ = _pipeline(store, Recorder())
    run_id = pipeline.run(wait=False).run_id
    runner = pipeline.runner
    full = FinishBatch(runner, size=2, seconds=60)
    assert not full.due()
    runner.run_step(run_id, "s0", "", batch=full)
    assert not full.due()
    runner.run_step(run_id, "s1", "", batch=full)
    assert full.due()
    full.flush()
    old = FinishBatch(runner, size=8, seconds=0)
    runner.run_step(run_id, "s2", "", batch=old)
    assert old.due()  # its oldest finish has waited long enough
    old.flush()  # one finish: recorded as a plain finish_step
    assert store.batches == [["s0", "s1"]]
    assert {s.asset: s.state for s in store.list_steps(run_id)}["s2"] == "succeeded"


def test_without_batch_finish_every_finish_is_recorded_at_once() -> None:
    store = MemoryRunStore()  # no finish_steps
    pipeline, _ = _pipeline(store, Recorder())
    run_id = pipeline.run(wait=False).run_id
    batch = FinishBatch(pipeline.runner, size=8, seconds=60)
    assert not batch.batching
    assert pipeline.runner.run_step(run_id, "s0", "", batch=batch).steps == ()
    assert len(batch) == 0
    step = store.get_step(run_id, "s0", "")
    assert step is not None and step.state == "succeeded"
    batching, _ = _pipeline(BatchingStore(), Recorder())
    assert not FinishBatch(batching.runner, size=1, seconds=60).batching  # a batch of 1


def test_a_batch_that_cannot_be_recorded_puts_its_steps_back_to_ready() -> None:
    store = BatchingStore()
    pipeline, _ = _pipeline(store, Recorder())
    run_id = pipeline.run(wait=False).run_id
    runner = pipeline.runner
    batch = FinishBatch(runner, size=8, seconds=60)
    runner.run_step(run_id, "s0", "", batch=batch)
    runner.run_step(run_id, "s1", "", batch=batch)
    store.fail = True
    with pytest.raises(StorageError, match="connection to the store lost"):
        batch.flush()
    states = {s.asset: s.state for s in store.list_steps(run_id)}
    assert states["s0"] == states["s1"] == "ready"  # claimable again at once, not leased
    assert store.list_materializations("batched", run_id=run_id, limit=10) == []
    store.fail = False
    for asset in ("s0", "s1", "s2", "s3"):
        runner.run_step(run_id, asset, "")
    runner.run_step(run_id, "total", "")
    assert pipeline.result(run_id).status == "succeeded"
    mats = store.list_materializations("batched", run_id=run_id, limit=10)
    assert sorted(m.asset for m in mats) == ["s0", "s1", "s2", "s3", "total"]  # each once


def test_finishes_are_recorded_meanwhile_when_the_next_step_runs_long() -> None:
    """A finish waits at most ``seconds``: while the caller runs a long step, a timer
    records what waits and publishes what it made ready (no continuation is claimed)."""
    store = BatchingStore()
    pipeline, executor = _pipeline(store, Recorder(), n=2)
    run_id = pipeline.run(wait=False).run_id
    runner = pipeline.runner
    batch = FinishBatch(runner, size=8, seconds=0.05)
    runner.run_step(run_id, "s0", "", batch=batch, claim_next=True)
    executor.steps.clear()
    with batch.running():  # s1 is a long step: s0's finish does not wait for it
        deadline = time.monotonic() + 10
        while len(batch) and time.monotonic() < deadline:
            time.sleep(0.01)
        recorded = store.get_step(run_id, "s0", "")
        assert recorded is not None and recorded.state == "succeeded"
        runner.run_step(run_id, "s1", "", batch=batch, claim_next=True)
    waiting = store.get_step(run_id, "s1", "")
    assert len(batch) == 1 and waiting is not None and waiting.state == "running"
    results = batch.flush()
    assert [s.asset for r in results for s in r.steps] == ["total"]  # s1's finish made it ready
    runner.run(results[0].steps[0])
    assert pipeline.result(run_id).status == "succeeded"


def test_a_timer_flush_that_fails_leaves_the_finishes_for_the_caller() -> None:
    store = BatchingStore()
    pipeline, _ = _pipeline(store, Recorder(), n=2)
    run_id = pipeline.run(wait=False).run_id
    runner = pipeline.runner
    batch = FinishBatch(runner, size=8, seconds=0.0)
    runner.run_step(run_id, "s0", "", batch=batch)
    runner.run_step(run_id, "s1", "", batch=batch)
    store.fail = True
    with batch.running():
        time.sleep(0.2)  # the timer fires at once and fails
    assert len(batch) == 2  # nothing lost: both still wait
    store.fail = False
    assert [s.asset for r in batch.flush() for s in r.steps] == ["total"]
    assert store.batches == [["s0", "s1"]]
