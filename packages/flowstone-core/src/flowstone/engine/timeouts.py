"""Parallel branch timeouts, enforced without holding a worker.

A parallel asset's clock starts when the first step of any of its branches is claimed
(recorded once, first write wins, as a store step note of kind :data:`CLOCK_NOTE` on
the parallel asset). The sweeper (``expire_due``) and
the in-process dispatcher then fail the still-unfinished steps of every branch past its
limit; the failure flows to the join like any other: a required branch fails it, an
optional one reaches it as ``BranchFailed``. A worker still running a timed-out step
finds its result discarded (``finish_step`` is applied only once).

Both ends of the clock are read from the run store's clock (:func:`store_clock`: the
database's ``now()`` for a Postgres store, the store's one ``clock`` for SQLite and
memory), never from the process's: a worker whose clock runs 400 s fast neither starts a
branch's clock late nor expires a branch early.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from flowstone.dag import AssetGraph
from flowstone.protocols import StoreClock
from flowstone.records import StepOutcome, StepRecord

if TYPE_CHECKING:
    from flowstone.engine.runner import StepRunner

__all__ = ["branch_index", "enforce_parallel_timeouts", "mark_branch_started", "store_clock"]

_LIVE = frozenset({"ready", "running", "waiting"})


def branch_index(dag: AssetGraph) -> dict[str, tuple[tuple[str, str], ...]]:
    """``{asset: ((parallel asset, branch), ...)}`` for parallels that have timeouts.

    A branch is its final asset plus everything the final needs that the parallel
    asset's own (non-branch) dependencies do not need too.
    """
    index: dict[str, list[tuple[str, str]]] = {}
    for a in dag.assets.values():
        if a.parallel is None or not a.parallel.has_timeouts:
            continue
        finals = set(a.parallel.branches.values())
        regular = [d for d in a.deps if d not in finals]
        shared = set(dag.upstream_closure(regular)) if regular else set()
        for branch, final in a.parallel.branches.items():
            for name in dag.upstream_closure([final]):
                if name not in shared:
                    index.setdefault(name, []).append((a.name, branch))
    return {k: tuple(v) for k, v in index.items()}


CLOCK_NOTE = "parallel.started"
"""The step note (:class:`~flowstone.protocols.StepNotes`) holding when a timed parallel
asset's first branch step was claimed, ISO 8601 UTC, on the parallel asset at partition
``""``."""


def store_clock(clock: StoreClock | None) -> datetime:
    """The current time by the run store's clock (the pipeline's detected
    :class:`~flowstone.protocols.StoreClock`, ``runtime.capabilities.store_clock``); a
    store without one (a third-party store) falls back to this process's clock."""
    return clock.clock() if clock is not None else datetime.now(UTC)


def mark_branch_started(runner: StepRunner, run_id: str, asset: str) -> None:
    """Start the clock of every timed parallel ``asset`` belongs to (first write wins),
    at the store's time."""
    rt = runner.runtime
    for parallel, _ in rt.branch_index.get(asset, ()):
        if rt.store.get_step_note(run_id, parallel, "", CLOCK_NOTE) is None:
            started = store_clock(rt.capabilities.store_clock).isoformat()
            rt.store.add_step_note(run_id, parallel, "", CLOCK_NOTE, started)


def enforce_parallel_timeouts(
    runner: StepRunner, run_id: str, now: datetime | None = None
) -> tuple[list[StepRecord], set[tuple[str, str]]]:
    """Fail the live steps of timed-out branches in ``run_id``.

    Elapsed time is measured by the store's clock (:func:`store_clock`), the one the
    branch's start was stamped with; ``now`` overrides it (tests).
    Returns the steps that became ready and the (asset, partition) of the steps it failed.
    """
    rt = runner.runtime
    index: Mapping[str, tuple[tuple[str, str], ...]] = rt.branch_index
    if not index:
        return [], set()
    timed = {parallel for pairs in index.values() for parallel, _ in pairs}
    steps = rt.store.list_steps(run_id)
    ready: list[StepRecord] = []
    failed: set[tuple[str, str]] = set()
    for parallel in sorted(timed):
        joins = [s for s in steps if s.asset == parallel and s.state == "pending"]
        raw = rt.store.get_step_note(run_id, parallel, "", CLOCK_NOTE) if joins else None
        if raw is None:
            continue
        now = now or store_clock(rt.capabilities.store_clock)
        elapsed = (now - datetime.fromisoformat(raw)).total_seconds()
        spec = rt.graph[parallel].parallel
        assert spec is not None
        for branch in spec.branches:
            limit = spec.limit(branch)
            if limit is None or elapsed <= limit:
                continue
            error = f"branch {branch!r} of {parallel!r} timed out after {limit:g}s"
            for s in steps:
                if s.state in _LIVE and (parallel, branch) in index.get(s.asset, ()):
                    mat = runner.build_record(rt.graph[s.asset], s, "failed", error=error)
                    outcome = StepOutcome("failed", materialization=mat, error=error)
                    ready.extend(runner.complete(s, outcome).ready)
                    failed.add((s.asset, s.partition))
    return ready, failed
