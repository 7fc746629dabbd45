"""What the engine hands to scatter and parallel coordinators."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowstone.asset import AssetDef
    from flowstone.context import Context
    from flowstone.engine.inputs import DepOutcome
    from flowstone.engine.runner import StepRunner
    from flowstone.runtime import Runtime
    from flowstone.scatter import Batch

__all__ = ["ParallelRequest", "ScatterRequest"]


@dataclass(frozen=True, slots=True)
class ScatterRequest:
    """One scatter step to execute: the asset, its resolved deps, and a context factory
    (``make_context(item, batch)``) for each item or batch. ``runner`` runs the pipeline
    (``runner.runtime`` holds its store, values, events and executor).

    ``previous_run_id`` is set for a ``pipeline.retry_failed_items`` run: the coordinator
    reuses that run's succeeded item results and runs only the other items."""

    runner: StepRunner
    asset: AssetDef
    run_id: str
    partition: str
    key: Any
    deps: Mapping[str, Any]
    attempt: int
    owner: str
    make_context: Callable[[Any, Batch | None], Context]
    previous_run_id: str | None = None


@dataclass(frozen=True, slots=True)
class ParallelRequest:
    """A parallel asset whose branches have all finished: ``outcomes`` per branch name.

    ``attempt`` is the join step's attempt (more than 1: an earlier attempt was claimed
    and did not finish). ``metadata`` starts empty; what a coordinator puts there is added
    to the join's materialization metadata, written once with its value by
    ``finish_step`` (also when the join function then fails)."""

    runtime: Runtime
    asset: AssetDef
    run_id: str
    partition: str
    outcomes: Mapping[str, DepOutcome]
    attempt: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)
