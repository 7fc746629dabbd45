"""One sweep reaches every run it should, however many pages they span: a pytest suite
run on every store (the memory and SQLite stores in the core's tests, Postgres in
``integration-tests/postgres``).

``recover()`` pages through the waiting runs and ``expire_due()`` through the running ones
(for parallel branch timeouts); each finishes runs as it goes, so those runs leave the
status it pages on. Paged by ``offset``, every run that left shifted the later pages and
a sweep skipped as many runs (5 waiting runs, 2 a page: 3 finished). The suite makes the
engine's page tiny (its private ``_PAGE``) so a handful of runs spans several pages.

Subclass :class:`SweepContract` (name it ``Test...``) and provide the fixture
``sweep_pipeline``: a callable ``(assets, **pipeline_kwargs) -> Pipeline`` on the store
under test, whose pipelines the fixture closes. Importing this module needs pytest.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import flowstone as fs
from flowstone.engine import resume
from flowstone.engine.timeouts import mark_branch_started, store_clock
from flowstone.testing import ParkedExecutor

__all__ = ["RUNS", "SweepContract"]

RUNS = 5
"""Runs each test makes: three pages of two."""
PipelineMaker = Callable[..., fs.Pipeline]


class SweepContract:
    """``recover()`` and ``expire_due()`` finish every due run in one sweep."""

    @pytest.fixture(autouse=True)
    def _small_pages(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(resume, "_PAGE", 2)

    def test_one_recover_sweep_finishes_every_decided_approval(
        self, sweep_pipeline: PipelineMaker
    ) -> None:
        @fs.asset
        def trade(context: fs.Context) -> Any:
            return fs.WaitForApproval(message="big", value=context.partition, timeout=None)

        p = sweep_pipeline([trade])
        runs = [p.run("trade", f"p{i}") for i in range(RUNS)]
        assert {r.status for r in runs} == {"waiting"}
        for approval in p.approvals():  # decided by a process that died before resuming
            p.store.decide_approval(approval.id, "approved", by="ops")
        assert p.recover() == RUNS
        assert [p.result(r.run_id).status for r in runs] == ["succeeded"] * RUNS
        assert [p.get("trade", f"p{i}") for i in range(RUNS)] == [f"p{i}" for i in range(RUNS)]
        assert p.recover() == 0  # nothing was left for the next sweep

    def test_one_expire_due_sweep_times_out_every_late_branch(
        self, sweep_pipeline: PipelineMaker
    ) -> None:
        """A required branch that times out fails its parallel asset (run in-process
        here), so the run fails and leaves ``running`` in the middle of the sweep."""

        @fs.asset
        def maps(context: fs.Context) -> list[str]:
            return [f"tile-{context.partition}"]

        @fs.asset(parallel=fs.Parallel(branches={"maps": "maps"}, timeout=60))
        def front_page(branches: dict[str, Any]) -> int:
            return len(branches)

        parked = ParkedExecutor()  # a queue nobody consumes: every branch stays running
        p = sweep_pipeline([maps, front_page], executor=parked)
        runs = [p.run("front_page", f"p{i}", wait=False) for i in range(RUNS)]
        for step in parked.take():
            held = p.store.claim_step(
                step.run_id, step.asset, step.partition, owner="w1", lease_seconds=600
            )
            assert held is not None
            mark_branch_started(p.runner, step.run_id, step.asset)
        p.use_executor("inprocess")  # the joins the timeouts make ready run in this sweep
        # by the store's clock (a database's now()), 61 s on: past every branch's 60 s
        later = store_clock(p.runtime.capabilities.store_clock) + timedelta(seconds=61)
        assert p.expire_due(later) == RUNS
        maps_states = [
            p.store.get_step(r.run_id, "maps", f"p{i}").state  # type: ignore[union-attr]
            for i, r in enumerate(runs)
        ]
        assert maps_states == ["failed"] * RUNS
        assert [p.result(r.run_id).status for r in runs] == ["failed"] * RUNS
