"""Runs that produced what they were asked for although something failed on the way.

A ``"partial"`` parallel asset joins even when an optional branch failed, and a scatter
under its failure threshold succeeds with some items failed. The store's run-status rule
(:func:`flowstone.store_rules.run_status_from`) sees only step states, so the first kind
of run is stored ``failed``. The outcome a user and a script need is decided here, from
the steps, the same way for every store:

* a run stored ``failed`` (with no run-level error such as a timeout) whose every target
  step succeeded *succeeded with partial failures*: every failed or upstream_failed step
  was tolerated by what depends on it, since the targets were still produced.
  :attr:`RunResult.status <flowstone.runs.RunResult.status>` is then ``succeeded`` and
  :attr:`RunResult.partial_failures <flowstone.runs.RunResult.partial_failures>` lists
  those steps; ``RunResult.stored_status`` keeps what the store holds;
* a succeeded scatter step whose items partly failed is a partial failure too (counted
  by the scatter coordinator, :class:`~flowstone.scatter.ScatterProgress`, or from the
  store's item results);
* a run where a target failed or was never produced stays ``failed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowstone.records import RunRecord, StepRecord
from flowstone.scatter import ScatterProgress

if TYPE_CHECKING:
    from flowstone.pipeline import Pipeline

__all__ = ["PartialFailure", "partial_failures", "target_steps", "targets_succeeded"]

_FAILED = frozenset({"failed", "upstream_failed"})


@dataclass(frozen=True, slots=True)
class PartialFailure:
    """One tolerated failure of a run that succeeded.

    Attributes:
        asset: the asset.
        partition: its encoded partition ("" when unpartitioned).
        error: what failed (for a scatter: how many items, and the first item error).
        failed_items: for a scatter that succeeded with failed items, how many; else 0.
    """

    asset: str
    partition: str
    error: str
    failed_items: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "asset": self.asset,
            "partition": self.partition or None,
            "error": self.error,
            "failed_items": self.failed_items,
        }


def target_steps(run: RunRecord, steps: Sequence[StepRecord]) -> dict[str, StepRecord]:
    """``{target asset: its step}`` (the run's own partition first, as ``.value`` reads)."""
    by_asset: dict[str, StepRecord] = {}
    for s in steps:
        if s.asset in run.targets and (s.asset not in by_asset or s.partition == run.partition):
            by_asset[s.asset] = s
    return by_asset


def targets_succeeded(run: RunRecord, steps: Sequence[StepRecord]) -> bool:
    """Whether every target of ``run`` has a succeeded step."""
    by_asset = target_steps(run, steps)
    return all(
        (s := by_asset.get(t)) is not None and s.state == "succeeded" for t in run.targets
    )


def tolerated(run: RunRecord, steps: Sequence[StepRecord]) -> bool:
    """A run stored ``failed`` whose failures were all tolerated (its targets succeeded)."""
    return run.status == "failed" and run.error is None and targets_succeeded(run, steps)


def partial_failures(
    pipeline: Pipeline, run: RunRecord, steps: Sequence[StepRecord]
) -> tuple[PartialFailure, ...]:
    """The tolerated failures of ``run`` when it succeeded (see the module docstring);
    empty for a run that did not succeed or had none."""
    if run.status != "succeeded" and not tolerated(run, steps):
        return ()
    out = [
        PartialFailure(s.asset, s.partition, f"{s.state}: {s.error or 'no error recorded'}")
        for s in steps
        if s.state in _FAILED
    ]
    for s in steps:
        definition = pipeline.dag.assets.get(s.asset)
        if s.state == "succeeded" and definition is not None and definition.scatter is not None:
            failure = _scatter_failure(pipeline, run.run_id, s)
            if failure is not None:
                out.append(failure)
    return tuple(out)


def _scatter_failure(pipeline: Pipeline, run_id: str, step: StepRecord) -> PartialFailure | None:
    coordinator = pipeline.scatter_coordinator
    first = ""
    if isinstance(coordinator, ScatterProgress):
        counts = coordinator.progress(pipeline, run_id, step.asset, step.partition)
        if counts is None or not counts.failed:
            return None
        failed, total = counts.failed, counts.total
    else:
        items = pipeline.store.load_item_results(run_id, step.asset, step.partition)
        bad = [i for i in items if i.state == "failed"]
        if not bad:
            return None
        failed, total = len(bad), len(items)
        first = f"; first: item {bad[0].index} (key {bad[0].key}): {bad[0].error}"
    of = f" of {total}" if total is not None else ""
    return PartialFailure(
        step.asset, step.partition,
        f"{failed}{of} items failed, tolerated by the failure threshold{first}",
        failed_items=failed,
    )  # fmt: skip
