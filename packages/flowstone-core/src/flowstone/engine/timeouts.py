"""Parallel branch timeouts, enforced without holding a worker.

A parallel asset's clock starts when the first step of any of its branches is claimed
(recorded once, first write wins, as a store cursor). The sweeper (``expire_due``) and
the in-process dispatcher then fail the still-unfinished steps of every branch past its
limit; the failure flows to the join like any other: a required branch fails it, an
optional one reaches it as ``BranchFailed``. A worker still running a timed-out step
finds its result discarded (``finish_step`` is applied only once).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from flowstone.dag import AssetGraph
from flowstone.records import StepOutcome, StepRecord

if TYPE_CHECKING:
    from flowstone.pipeline import Pipeline

__all__ = ["branch_index", "enforce_parallel_timeouts", "mark_branch_started"]

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


def _clock_key(run_id: str, parallel: str) -> str:
    return f"parallel-start:{run_id}:{parallel}"


def mark_branch_started(p: Pipeline, run_id: str, asset: str) -> None:
    """Start the clock of every timed parallel ``asset`` belongs to (first write wins)."""
    for parallel, _ in p.branch_index.get(asset, ()):
        key = _clock_key(run_id, parallel)
        if p.store.get_cursor(key) is None:
            p.store.set_cursor(key, datetime.now(UTC).isoformat(), expected=None)


def enforce_parallel_timeouts(
    p: Pipeline, run_id: str, now: datetime | None = None
) -> tuple[list[StepRecord], set[tuple[str, str]]]:
    """Fail the live steps of timed-out branches in ``run_id``.

    Returns the steps that became ready and the (asset, partition) of the steps it failed.
    """
    index: Mapping[str, tuple[tuple[str, str], ...]] = p.branch_index
    if not index:
        return [], set()
    now = now or datetime.now(UTC)
    timed = {parallel for pairs in index.values() for parallel, _ in pairs}
    steps = p.store.list_steps(run_id)
    ready: list[StepRecord] = []
    failed: set[tuple[str, str]] = set()
    for parallel in sorted(timed):
        joins = [s for s in steps if s.asset == parallel and s.state == "pending"]
        raw = p.store.get_cursor(_clock_key(run_id, parallel)) if joins else None
        if raw is None:
            continue
        elapsed = (now - datetime.fromisoformat(raw)).total_seconds()
        spec = p.dag[parallel].parallel
        assert spec is not None
        for branch in spec.branches:
            limit = spec.limit(branch)
            if limit is None or elapsed <= limit:
                continue
            error = f"branch {branch!r} of {parallel!r} timed out after {limit:g}s"
            for s in steps:
                if s.state in _LIVE and (parallel, branch) in index.get(s.asset, ()):
                    mat = p.runner.record(p.dag[s.asset], s, "failed", error=error)
                    outcome = StepOutcome("failed", materialization=mat, error=error)
                    ready.extend(p.runner.complete(run_id, s.asset, s.partition, outcome))
                    failed.add((s.asset, s.partition))
    return ready, failed
