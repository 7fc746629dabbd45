"""``run_chain(stop=...)``: a worker that is shutting down runs no continuation after the
step in hand; the step that step's finish claimed goes back to ``ready`` (fenced by its
claim) and is handed off, so another worker runs it (issue 11: a warm shutdown used to run
up to ``FLOWSTONE_INLINE_STEPS`` more steps first)."""

from __future__ import annotations

from typing import Any

import flowstone as fs
from flowstone.engine import run_chain
from flowstone.records import StepRecord
from flowstone.testing import ParkedExecutor


def _chain(ran: list[str]) -> list[fs.AssetDef]:
    @fs.asset
    def a() -> int:
        ran.append("a")
        return 1

    @fs.asset
    def b(a: int) -> int:
        ran.append("b")
        return a + 1

    @fs.asset
    def c(b: int) -> int:
        ran.append("c")
        return b + 1

    return [a, b, c]


def test_a_stopping_chain_hands_its_claimed_continuation_back() -> None:
    ran: list[str] = []
    parked = ParkedExecutor()
    p = fs.Pipeline("chain_stop", _chain(ran), store="memory://", executor=parked)
    try:
        run = p.run("c", wait=False)
        [first] = parked.take()
        handed: list[tuple[StepRecord, ...]] = []
        stopping = {"now": False}

        def stop() -> bool:
            stopping["now"] = True  # the shutdown arrives while "a" runs
            return True

        left = run_chain(p.runner, first, budget=16, hand_off=handed.append, stop=stop)
        assert left == () and ran == ["a"] and stopping["now"]
        [[released]] = handed
        assert (released.asset, released.state) == ("b", "ready")
        stored = p.store.get_step(run.run_id, "b", "")
        assert stored is not None and stored.state == "ready" and stored.owner is None
        # another worker picks it up and the run finishes, each step once
        left = run_chain(p.runner, released, budget=16, hand_off=handed.append)
        assert ran == ["a", "b", "c"] and p.result(run.run_id).status == "succeeded"
    finally:
        p.close()


def test_without_stop_the_chain_runs_through() -> None:
    ran: list[str] = []
    parked = ParkedExecutor()
    p = fs.Pipeline("chain_go", _chain(ran), store="memory://", executor=parked)
    try:
        run = p.run("c", wait=False)
        [first] = parked.take()
        handed: list[Any] = []
        run_chain(p.runner, first, budget=16, hand_off=handed.append, stop=lambda: False)
        assert ran == ["a", "b", "c"] and handed == []
        assert p.result(run.run_id).status == "succeeded"
    finally:
        p.close()
