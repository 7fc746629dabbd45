"""``ClaimedAhead``: a message's steps claimed together, their leases kept until their
turn, given back when they will not run here, and never run once their lease was lost.

Driven through the engine API a Celery worker uses, against the memory store (which has no
``claim_steps``: ``StepRunner.claim_many`` claims one by one; the PostgreSQL bulk claim is
tested against the contract suite and on real workers in ``integration-tests``).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import Collect

import flowstone as fs
from flowstone.defaults.memory_store import MemoryRunStore
from flowstone.engine import ClaimedAhead
from flowstone.errors import StorageError

LEASE = 0.3  # seconds: renewed every 0.1 s while a step waits


def _pipeline(store: MemoryRunStore) -> tuple[fs.Pipeline, Collect]:
    def make(i: int) -> Any:
        return fs.asset(name=f"s{i}")(lambda: i)

    executor = Collect()
    pipeline = fs.Pipeline(
        "ahead", [make(i) for i in range(3)], store=store, executor=executor,
        io_managers={"default": "memory"}, lease_seconds=LEASE,
    )  # fmt: skip
    return pipeline, executor


def _keys(executor: Collect) -> list[tuple[str, str, str]]:
    return [(s.run_id, s.asset, s.partition) for s in executor.steps]


@pytest.fixture
def started() -> tuple[MemoryRunStore, fs.Pipeline, Collect, str]:
    """A run of the three assets, its ready steps dispatched to nobody yet."""
    store = MemoryRunStore()
    pipeline, executor = _pipeline(store)
    return store, pipeline, executor, pipeline.run(wait=False).run_id


Started = tuple[MemoryRunStore, fs.Pipeline, Collect, str]


def test_claimed_steps_keep_their_leases_until_their_turn(started: Started) -> None:
    store, pipeline, executor, run_id = started
    runner = pipeline.runner
    ahead = ClaimedAhead.claim(runner, _keys(executor))
    assert {s.state for s in store.list_steps(run_id)} == {"running"}
    time.sleep(3 * LEASE)  # far longer than a lease: only the renewals keep them
    for run, asset, part in _keys(executor):
        assert store.claim_step(run, asset, part, owner="w2", lease_seconds=60) is None
    for index in range(3):
        step = ahead.take(index)
        assert step is not None and step.attempt == 1
        runner.run_claimed(step)
    assert ahead.release(why="nothing is left") == []
    assert pipeline.result(run_id).status == "succeeded"


def test_a_step_whose_lease_was_lost_while_it_waited_does_not_run_here(
    started: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, pipeline, executor, run_id = started
    monkeypatch.setattr(store, "renew_lease", lambda *a, **kw: False)  # taken over meanwhile
    ahead = ClaimedAhead.claim(pipeline.runner, _keys(executor))
    time.sleep(2 * LEASE)  # the keeper has tried to renew, and was refused
    assert [ahead.take(i) for i in range(3)] == [None, None, None]
    assert {s.state for s in store.list_steps(run_id)} == {"running"}  # not run here


def test_steps_not_taken_are_given_back_ready(started: Started) -> None:
    store, pipeline, executor, run_id = started
    ahead = ClaimedAhead.claim(pipeline.runner, _keys(executor))
    first = ahead.take(0)
    assert first is not None
    released = ahead.release(why="the worker is draining")
    assert sorted(s.asset for s in released) == ["s1", "s2"]
    states = {s.asset: s.state for s in store.list_steps(run_id)}
    assert states == {"s0": "running", "s1": "ready", "s2": "ready"}
    # given back ready: any runner claims them now, on their next attempt
    again = pipeline.runner.claim_many(_keys(executor)[1:], owner="w2")
    assert [s.attempt for s in again if s is not None] == [2, 2]


def test_a_claim_that_fails_gives_back_what_was_claimed_with_it(
    started: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, pipeline, executor, run_id = started
    claim = store.claim_step

    def lost_at_the_third(run: str, asset: str, part: str, **kw: Any) -> Any:
        if asset == "s2":
            raise StorageError("connection to the store lost (simulated)")
        return claim(run, asset, part, **kw)

    monkeypatch.setattr(store, "claim_step", lost_at_the_third)
    with pytest.raises(StorageError, match="connection to the store lost"):
        ClaimedAhead.claim(pipeline.runner, _keys(executor))
    assert {s.state for s in store.list_steps(run_id)} == {"ready"}  # none left claimed
